"""The payment gateway: an interface, a simulated implementation, and the card tokenizer.

Card numbers stop here. The HTTP edge exchanges a number for a token and its last
four digits; only the token travels on. The simulated gateway follows the
well-known test-card convention (SPEC §2), and like real test tokens
(``tok_chargeDeclined``) its tokens name the behaviour they trigger, so any worker
can charge a token minted by another.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class CardToken:
    """What the edge keeps of a card."""

    token: str
    last4: str


@dataclass(frozen=True)
class Charged:
    """The gateway took the money."""

    charge_id: str


@dataclass(frozen=True)
class Declined:
    """The gateway refused, for good."""

    reason: str


class TransientGatewayError(Exception):
    """A failure worth retrying."""

    def __init__(self, code: str = "processing_error") -> None:
        super().__init__(code)
        self.code = code


class PaymentGateway(Protocol):
    """What orderstream needs of a payment provider."""

    def tokenize(self, card_number: str) -> CardToken:
        """Exchange a card number for a token."""
        ...

    async def charge(self, token: str, amount_cents: int, currency: str, *, idempotency_key: str) -> Charged | Declined:
        """Charge a token once per idempotency key.

        ``amount_cents`` is in hundredths of the currency's unit whatever its own minor unit
        (¥300 is 30000): orderstream keeps every amount so. An adapter for a provider that
        takes ISO 4217 minor units converts (JPY ÷ 100; a three-decimal currency × 10).
        """
        ...

    async def refund(self, charge_id: str, *, idempotency_key: str) -> None:
        """Give a charge back."""
        ...


TEST_CARDS = {
    "4000000000000002": "declined",
    "4000000000009995": "nofunds",
    "4000000000000119": "flaky",
    "4000000000000341": "hang",
}


class SimulatedGateway:
    """The test-card gateway of SPEC §2, deterministic and in-process."""

    transient_failures = 2

    def __init__(self) -> None:
        self._attempts: dict[str, int] = {}
        self._charges: dict[str, Charged | Declined] = {}

    def tokenize(self, card_number: str) -> CardToken:
        """Mint a token naming the card's test behaviour (never the number)."""
        kind = TEST_CARDS.get(card_number, "ok")
        return CardToken(token=f"tok_{kind}_{uuid.uuid4().hex}", last4=card_number[-4:])

    async def charge(self, token: str, amount_cents: int, currency: str, *, idempotency_key: str) -> Charged | Declined:
        """Charge per the token's behaviour; the same idempotency key gets the same answer."""
        known = self._charges.get(idempotency_key)
        if known is not None:
            return known
        kind = token.split("_")[1] if token.count("_") >= 2 else "invalid"
        outcome: Charged | Declined
        if kind == "hang":
            await asyncio.Event().wait()  # never answers; the caller's timeout ends it
        if kind == "flaky":
            seen = self._attempts.get(idempotency_key, 0) + 1
            self._attempts[idempotency_key] = seen
            if seen <= self.transient_failures:
                raise TransientGatewayError("processing_error")
        if kind == "declined":
            outcome = Declined("card_declined")
        elif kind == "nofunds":
            outcome = Declined("insufficient_funds")
        elif kind in ("ok", "flaky"):
            outcome = Charged(charge_id=f"ch_{uuid.uuid5(uuid.NAMESPACE_OID, idempotency_key).hex[:24]}")
        else:
            outcome = Declined("invalid_token")
        self._charges[idempotency_key] = outcome
        return outcome

    async def refund(self, charge_id: str, *, idempotency_key: str) -> None:
        """Refunds always succeed in the simulation."""
        return None
