"""Payment decisions and the retry policy around the simulated gateway (SPEC §2 test cards)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.domain import payments
from app.domain.common import ORDERS, Emit
from app.gateway import Charged, Declined, SimulatedGateway, TransientGatewayError
from schemas.envelope import Envelope, make

ORDER_ID = "ord-1"
PAYMENT_ID = f"pay_{ORDER_ID}"


def charge_cmd() -> Envelope:
    payload = {
        "order_id": ORDER_ID,
        "payment_id": PAYMENT_ID,
        "token": "tok_ok_abc",
        "last4": "4242",
        "amount_cents": 2999,
        "currency": "USD",
    }
    return make("payment.charge", "payment", PAYMENT_ID, payload, correlation_id=ORDER_ID)


def result(type_: str, **extra: Any) -> Envelope:
    payload = {"order_id": ORDER_ID, "payment_id": PAYMENT_ID, "amount_cents": 2999, "currency": "USD", **extra}
    return make(type_, "payment", PAYMENT_ID, payload, correlation_id=ORDER_ID)


# --- charge_requested / result_arrived ---------------------------------------------------------


def test_first_charge_request_starts_a_gateway_call() -> None:
    cmd = charge_cmd()

    decision = payments.charge_requested(None, cmd)

    assert decision.start_charge
    assert decision.emits == []
    assert decision.record == {
        "order_id": ORDER_ID,
        "payment_id": PAYMENT_ID,
        "status": "charging",
        "amount_cents": 2999,
        "currency": "USD",
        "last4": "4242",
        "command": cmd,
    }


def test_a_repeated_charge_request_while_charging_waits() -> None:
    record = payments.charge_requested(None, charge_cmd()).record

    decision = payments.charge_requested(record, charge_cmd())

    assert decision == payments.Decision()


def test_a_repeated_charge_request_after_the_result_re_emits_the_known_result() -> None:
    outcome = result("payment.processed", charge_id="ch_1")
    record = payments.result_arrived(payments.charge_requested(None, charge_cmd()).record, outcome).record

    decision = payments.charge_requested(record, charge_cmd())

    assert not decision.start_charge
    assert decision.record is None
    assert decision.emits == [payments.forward(outcome)]


@pytest.mark.parametrize(
    ("type_", "status"), [("payment.processed", "processed"), ("payment.failed", "failed")], ids=["processed", "failed"]
)
def test_the_first_result_is_recorded_and_forwarded_to_the_order(type_: str, status: str) -> None:
    outcome = result(type_)
    record = payments.charge_requested(None, charge_cmd()).record

    decision = payments.result_arrived(record, outcome)

    assert decision.record is not None
    assert decision.record["status"] == status
    assert decision.record["result"] == outcome
    assert "command" not in decision.record
    assert decision.emits == [Emit(ORDERS, ORDER_ID, type_, "payment", PAYMENT_ID, outcome["payload"])]


def test_a_later_copy_of_a_result_is_ignored() -> None:
    record = payments.result_arrived(None, result("payment.processed", charge_id="ch_1")).record

    decision = payments.result_arrived(record, result("payment.failed", reason="card_declined"))

    assert decision == payments.Decision()


def test_a_result_without_a_record_still_records_and_forwards() -> None:
    decision = payments.result_arrived(None, result("payment.failed", reason="card_declined"))

    assert decision.record is not None
    assert decision.record["status"] == "failed"
    assert [e.type for e in decision.emits] == ["payment.failed"]


# --- result_payload ----------------------------------------------------------------------------


def test_result_payload_of_a_charge() -> None:
    type_, payload = payments.result_payload(charge_cmd()["payload"], Charged("ch_1"), attempts=1)

    assert type_ == "payment.processed"
    assert payload == {
        "order_id": ORDER_ID,
        "payment_id": PAYMENT_ID,
        "amount": "29.99",
        "amount_cents": 2999,
        "currency": "USD",
        "last4": "4242",
        "attempts": 1,
        "charge_id": "ch_1",
    }


def test_result_payload_of_a_decline_carries_the_reason() -> None:
    type_, payload = payments.result_payload(charge_cmd()["payload"], Declined("card_declined"), attempts=2)

    assert type_ == "payment.failed"
    assert payload["reason"] == "card_declined"
    assert payload["attempts"] == 2
    assert "charge_id" not in payload


def test_result_payload_amount_is_exact_for_large_amounts() -> None:
    command = {**charge_cmd()["payload"], "amount_cents": 2**53 + 1}

    _, payload = payments.result_payload(command, Charged("ch_1"), attempts=1)

    assert payload["amount"] == "90071992547409.93"


# --- charge_with_retries against the simulated gateway -----------------------------------------


class SleepRecorder:
    """A fake ``asyncio.sleep`` that records the delays it was asked for."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def charge(
    card_number: str,
    *,
    gateway: Any = None,
    timeout: float = 1.0,
    max_attempts: int = 4,
    backoff: float = 0.1,
    sleep: SleepRecorder | None = None,
) -> tuple[Charged | Declined, int]:
    """Tokenize ``card_number`` and run one charge with retries to its end."""
    gw = gateway or SimulatedGateway()
    command = {**charge_cmd()["payload"], "token": gw.tokenize(card_number).token}
    return asyncio.run(
        payments.charge_with_retries(
            gw, command, timeout=timeout, max_attempts=max_attempts, backoff=backoff, sleep=sleep or SleepRecorder()
        )
    )


def test_a_good_card_is_charged_at_the_first_attempt() -> None:
    sleep = SleepRecorder()

    outcome, attempts = charge("4242424242424242", sleep=sleep)

    assert isinstance(outcome, Charged)
    assert outcome.charge_id.startswith("ch_")
    assert attempts == 1
    assert sleep.delays == []


@pytest.mark.parametrize(
    ("card_number", "reason"),
    [("4000000000000002", "card_declined"), ("4000000000009995", "insufficient_funds")],
)
def test_a_declining_card_is_declined_without_retries(card_number: str, reason: str) -> None:
    sleep = SleepRecorder()

    outcome, attempts = charge(card_number, sleep=sleep)

    assert outcome == Declined(reason)
    assert attempts == 1
    assert sleep.delays == []


def test_transient_errors_are_retried_with_doubling_backoff_until_charged() -> None:
    sleep = SleepRecorder()

    outcome, attempts = charge("4000000000000119", backoff=0.1, sleep=sleep)

    assert isinstance(outcome, Charged)
    assert attempts == 3
    assert sleep.delays == pytest.approx([0.1, 0.2])


def test_a_hanging_gateway_times_out_as_gateway_timeout() -> None:
    outcome, attempts = charge("4000000000000341", timeout=0.05)

    assert outcome == Declined("gateway_timeout")
    assert attempts == 1


def test_transient_errors_past_max_attempts_decline_with_the_error_code() -> None:
    sleep = SleepRecorder()

    outcome, attempts = charge("4000000000000119", max_attempts=2, backoff=0.1, sleep=sleep)

    assert outcome == Declined("processing_error")
    assert attempts == 2
    assert sleep.delays == pytest.approx([0.1])


class AlwaysTransient(SimulatedGateway):
    """A gateway that never gets past a transient error."""

    async def charge(self, token: str, amount_cents: int, currency: str, *, idempotency_key: str) -> Charged | Declined:
        raise TransientGatewayError("rate_limited")


def test_every_attempt_backs_off_twice_as_long_as_the_one_before() -> None:
    sleep = SleepRecorder()

    outcome, attempts = charge("4242424242424242", gateway=AlwaysTransient(), max_attempts=4, backoff=0.05, sleep=sleep)

    assert outcome == Declined("rate_limited")
    assert attempts == 4
    assert sleep.delays == pytest.approx([0.05, 0.1, 0.2])


def test_the_same_idempotency_key_never_charges_twice() -> None:
    gateway = SimulatedGateway()

    first, _ = charge("4000000000000119", gateway=gateway)
    again, attempts = charge("4000000000000119", gateway=gateway)

    assert isinstance(first, Charged)
    assert again == first
    assert attempts == 1


def test_tokens_never_contain_the_card_number() -> None:
    card = SimulatedGateway().tokenize("4242424242424242")

    assert "4242424242424242" not in card.token
    assert card.last4 == "4242"


# --- refund_of ------------------------------------------------------------------------------


def refund(charge_id: str | None) -> Envelope:
    payload = {"order_id": ORDER_ID, "payment_id": PAYMENT_ID, "charge_id": charge_id}
    return make("payment.refund", "payment", PAYMENT_ID, payload, correlation_id=ORDER_ID)


def test_a_refund_gives_back_the_charge_the_order_made_once() -> None:
    record = payments.result_arrived(None, result("payment.processed", charge_id="ch_1")).record
    assert payments.refund_of(record, refund("ch_1")) == "ch_1"
    assert payments.refund_of({**(record or {}), "refunded": True}, refund("ch_1")) is None
    assert payments.refund_of(record, refund(None)) is None


def test_a_refund_naming_another_charge_than_the_order_s_is_refused() -> None:
    """A forged payment.processed made the saga refund whatever charge it named (probe 21)."""
    record = payments.result_arrived(None, result("payment.processed", charge_id="ch_1")).record
    with pytest.raises(ValueError, match="not the one this order's payment made"):
        payments.refund_of(record, refund("ch_forged"))


def test_a_refund_that_overtook_the_record_of_its_charge_is_given_back() -> None:
    # At least once, the saga's refund can be read before the charge's result is recorded again.
    assert payments.refund_of(None, refund("ch_1")) == "ch_1"
    charging = payments.charge_requested(None, charge_cmd()).record
    assert payments.refund_of(charging, refund("ch_1")) == "ch_1"


def test_a_record_holding_only_a_refund_does_not_break_the_charge_or_its_result() -> None:
    """A record written by a refund has no status: the charge then failed on it (KeyError; probe 21)."""
    record = {"order_id": ORDER_ID, "refunded": True}
    assert payments.charge_requested(record, charge_cmd()) == payments.Decision()
    assert payments.result_arrived(record, result("payment.processed", charge_id="ch_1")).record is not None
