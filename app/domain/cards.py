"""Card checks done at the edge, before anything is produced."""

from __future__ import annotations

import re

_EXPIRY = re.compile(r"^(0[1-9]|1[0-2])/(\d{2})$")


def luhn_valid(number: str) -> bool:
    """Whether ``number`` (digits only) passes the Luhn checksum."""
    if not number.isdigit() or not 12 <= len(number) <= 19:
        return False
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def normalize_number(raw: str) -> str:
    """Drop spaces and dashes people type into card numbers."""
    return raw.replace(" ", "").replace("-", "")


def expiry_valid(expiry: str, year: int, month: int) -> bool:
    """Whether ``MM/YY`` is well-formed and not in the past relative to ``year``/``month``."""
    m = _EXPIRY.match(expiry)
    if not m:
        return False
    exp_month, exp_year = int(m.group(1)), 2000 + int(m.group(2))
    return (exp_year, exp_month) >= (year, month)


def expiry_pattern(year: int, month: int) -> str:
    """A regular expression matching exactly the ``MM/YY`` that :func:`expiry_valid` accepts in ``year``/``month``.

    For the OpenAPI document, so that what it offers is what the edge accepts this month: the
    months left of this year, then every later year up to 2099 (``YY`` is 20YY).
    """
    yy = year - 2000
    options = []
    if 0 <= yy <= 99:
        options.append(f"({'|'.join(f'{m:02d}' for m in range(month, 13))})/{yy:02d}")
    later = [f"{y:02d}" for y in range(max(yy + 1, 0), 100)]
    if later:
        options.append(f"(0[1-9]|1[0-2])/({'|'.join(later)})")
    return f"^({'|'.join(options)})$" if options else "^(?!)"
