"""Analytics as pure functions over per-partition partial aggregates.

Revenue is reported in :data:`~app.domain.common.DEFAULT_CURRENCY`; orders in another
currency count as orders and units, and their revenue is totalled per currency apart
(``others``), never added to it. Each partition keeps its own totals, one-minute tumbling windows (only the last
:data:`KEEP_MINUTES`) and per-product totals, each in its own record, so no record grows
with time; the summary adds the partials of every partition across the cluster, so no
single partition is a hot spot and every partial moves with its partition on rebalance.
"""

from __future__ import annotations

import re
from datetime import UTC, timedelta
from typing import Any

from app.domain.common import DEFAULT_CURRENCY, MAX_TOTAL_CENTS, check_lines, from_cents
from schemas.envelope import parse_ts

Partial = dict[str, Any]
WINDOW_SECONDS = 60
#: Windows older than this many minutes (before the newest order's) are pruned.
KEEP_MINUTES = 120


def _currency(payload: dict[str, Any]) -> str:
    return str(payload.get("currency") or DEFAULT_CURRENCY)


#: What an ISO 4217 code looks like.
CURRENCY_CODE = re.compile(r"[A-Z]{3}")

#: How far ahead of this worker's clock a confirmation may be stamped (clocks of two machines
#: differ); one later is refused: its window would prune every window before it.
MAX_CLOCK_AHEAD_SECONDS = 24 * 3600
#: No order was confirmed before 2000-01-01T00:00:00Z; one stamped earlier is refused (probe 25:
#: an instant in year 1 could not be turned into a window, after the handler had written).
EARLIEST_CONFIRMED_AT = 946_684_800.0


def admit(payload: dict[str, Any], now: float) -> None:
    """Refuse (raise ``ValueError``) a confirmation no saga could have sent, before it is counted.

    Lines and total past the order bounds (:func:`~app.domain.common.check_lines`), a
    currency that is no ISO 4217 code, or a ``confirmed_at`` more than
    :data:`MAX_CLOCK_AHEAD_SECONDS` ahead of ``now`` or before :data:`EARLIEST_CONFIRMED_AT`:
    one written on a topic by hand would otherwise overflow the aggregates every worker
    merges, prune every window, or have no window at all.
    """
    check_lines(payload.get("items") or [])
    if not 0 <= int(payload.get("total_cents") or 0) <= MAX_TOTAL_CENTS:
        raise ValueError(f"a confirmed total is 0 to {from_cents(MAX_TOTAL_CENTS)}")
    if not CURRENCY_CODE.fullmatch(_currency(payload)):
        # Its shape only: the saga took the order in a currency then in circulation (one withdrawn
        # since must still be counted).
        raise ValueError("a confirmed order's currency is no ISO 4217 code")
    try:
        at = parse_ts(payload["confirmed_at"]).astimezone(UTC).timestamp()
    except OverflowError:
        at = -1.0  # an instant that is no UTC date (year 1 at +01:00): long before the earliest
    if at > now + MAX_CLOCK_AHEAD_SECONDS:
        raise ValueError(f"confirmed_at {payload['confirmed_at']} is more than a day ahead of this worker's clock")
    if at < EARLIEST_CONFIRMED_AT:
        raise ValueError(f"confirmed_at {payload['confirmed_at']} is before 2000: no order was confirmed then")


def empty_total() -> dict[str, Any]:
    """A partition's totals before any order: revenue in :data:`DEFAULT_CURRENCY`, others apart."""
    return {"orders": 0, "revenue_cents": 0, "currency": DEFAULT_CURRENCY}


def add_total(total: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    """Add one confirmed order to a partition's totals; revenue in another currency goes to ``others``."""
    out = {**total, "orders": total["orders"] + 1, "currency": DEFAULT_CURRENCY}
    currency, cents = _currency(payload), int(payload["total_cents"])
    if currency == DEFAULT_CURRENCY:
        out["revenue_cents"] = total["revenue_cents"] + cents
    else:
        others = dict(total.get("others") or {})
        others[currency] = others.get(currency, 0) + cents
        out["others"] = others
    return out


def empty_window() -> dict[str, int]:
    """A window before any order."""
    return {"orders": 0, "revenue_cents": 0}


def add_window(window: dict[str, int], payload: dict[str, Any]) -> dict[str, int]:
    """Add one confirmed order to its one-minute window (its revenue only in :data:`DEFAULT_CURRENCY`)."""
    cents = int(payload["total_cents"]) if _currency(payload) == DEFAULT_CURRENCY else 0
    return {"orders": window["orders"] + 1, "revenue_cents": window["revenue_cents"] + cents}


def add_line(product: dict[str, int] | None, item: dict[str, Any], currency: str | None = None) -> dict[str, int]:
    """Add one order line to its product's totals (revenue only in :data:`DEFAULT_CURRENCY`)."""
    prev = product or {"units": 0, "revenue_cents": 0}
    qty = int(item["quantity"])
    cents = qty * int(item["price_cents"]) if (currency or DEFAULT_CURRENCY) == DEFAULT_CURRENCY else 0
    return {"units": prev["units"] + qty, "revenue_cents": prev["revenue_cents"] + cents}


def oldest_kept(timestamp: str) -> str:
    """The start of the oldest window kept once an order at ``timestamp`` is recorded."""
    start = parse_ts(timestamp).astimezone(UTC).replace(second=0, microsecond=0) - timedelta(minutes=KEEP_MINUTES)
    return start.isoformat().replace("+00:00", "Z")


def empty_partial() -> Partial:
    """Return an empty per-partition aggregate."""
    return {**empty_total(), "windows": {}, "products": {}}


def window_start(timestamp: str) -> str:
    """Return the start of the one-minute tumbling window holding ``timestamp``."""
    if len(timestamp) == 24 and timestamp[-1] == "Z" and timestamp[10] == "T":
        return timestamp[:17] + "00Z"  # the envelopes' own UTC form, 2026-12-02T01:13:04.937Z: no parsing
    ts = parse_ts(timestamp).astimezone(UTC)
    start = ts.replace(second=0, microsecond=0)
    return start.isoformat().replace("+00:00", "Z")


def record(partial: Partial, payload: dict[str, Any]) -> Partial:
    """Add one confirmed order to a partition's aggregate (as the stage does, key by key)."""
    out = {**add_total(partial, payload), "windows": dict(partial["windows"]), "products": dict(partial["products"])}
    w = window_start(payload["confirmed_at"])
    out["windows"][w] = add_window(out["windows"].get(w) or empty_window(), payload)
    for item in payload["items"]:
        pid = str(item["product_id"])
        out["products"][pid] = add_line(out["products"].get(pid), item, _currency(payload))
    return out


def merge(partials: list[Partial]) -> Partial:
    """Add partials from many partitions into one."""
    out = empty_partial()
    others: dict[str, int] = {}
    for p in partials:
        out["orders"] += p["orders"]
        out["revenue_cents"] += p["revenue_cents"]
        for currency, cents in (p.get("others") or {}).items():
            others[currency] = others.get(currency, 0) + cents
        for w, v in p["windows"].items():
            cur = out["windows"].get(w, {"orders": 0, "revenue_cents": 0})
            out["windows"][w] = {k: cur[k] + v[k] for k in cur}
        for pid, v in p["products"].items():
            cur = out["products"].get(pid, {"units": 0, "revenue_cents": 0})
            out["products"][pid] = {k: cur[k] + v[k] for k in cur}
    if others:
        out["others"] = others
    return out


def merge_counts(counts: list[dict[str, int]]) -> dict[str, int]:
    """Add status counters from many partitions."""
    out: dict[str, int] = {}
    for c in counts:
        for status, n in c.items():
            out[status] = out.get(status, 0) + n
    return {k: v for k, v in sorted(out.items()) if v}


def summary(partial: Partial, by_status: dict[str, int], top: int = 10, minutes: int = 60) -> dict[str, Any]:
    """Render the cluster-wide aggregate as ``GET /analytics/summary`` returns it."""
    windows = sorted(partial["windows"].items())[-minutes:]
    products = sorted(partial["products"].items(), key=lambda kv: (-kv[1]["revenue_cents"], kv[0]))[:top]
    return {
        "orders_by_status": by_status,
        "revenue": {
            "total": from_cents(partial["revenue_cents"]),
            "currency": DEFAULT_CURRENCY,
            # Every currency apart (the one above included when it has revenue): never added together.
            "by_currency": {
                c: from_cents(cents)
                for c, cents in sorted(
                    {DEFAULT_CURRENCY: partial["revenue_cents"], **partial.get("others", {})}.items()
                )
                if cents
            },
        },
        "orders_recorded": partial["orders"],
        "revenue_per_minute": [
            {"window_start": w, "orders": v["orders"], "revenue": from_cents(v["revenue_cents"])} for w, v in windows
        ],
        "top_products": [
            {"product_id": pid, "units": v["units"], "revenue": from_cents(v["revenue_cents"])} for pid, v in products
        ],
    }


def status_delta(counts: dict[str, int], old: str | None, new: str) -> dict[str, int]:
    """Move one order from status ``old`` to ``new`` in a partition's counters."""
    out = dict(counts)
    if old == new:
        return out
    if old is not None:
        out[old] = out.get(old, 0) - 1
    out[new] = out.get(new, 0) + 1
    return out
