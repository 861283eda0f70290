"""Analytics: revenue and orders per one-minute window, per product, in total — bounded.

Consumes ``order.confirmed`` from the orders topic (key: order id; and the older
``analytics.record`` command from the analytics topic). Each partition keeps its own
aggregates in ``analytics_records``: ``total``, ``window/<minute>`` (windows older than
:data:`~app.domain.analytics.KEEP_MINUTES` are pruned; ``pruned`` is where the last pruning
stopped) and ``product/<product>``. It marks the order counted (:func:`tables.put_counted`,
in the order's record of what its confirmation caused, shared with the notifications
stage) so an order is counted once even if its confirmation arrives twice (a replay under
at-least-once); the mark holds the
``analytics.order_recorded`` event it also sends to the orders topic. The summary adds
every partition's aggregates across the cluster.
"""

from __future__ import annotations

import logging
import time

from agents._wiring import envelopes, on_partition, order_id_of, send
from app.domain import analytics as domain
from app.domain.common import ANALYTICS, ORDERS, Emit
from app.engine.step import Step
from app.main import engine
from schemas.envelope import Envelope
from tables import ANALYTICS as STORE
from tables import counted, put_counted

STAGE = "analytics"
log = logging.getLogger("orderstream.analytics")


def handle(step: Step, env: Envelope) -> None:
    """Add one confirmed order to this partition's aggregates, once."""
    p = env["payload"]
    order_id = on_partition(step, order_id_of(env))
    if counted(step, order_id):
        return
    domain.admit(p, time.time())  # one past the bounds (written by hand) is dead-lettered, never counted
    window = domain.window_start(p["confirmed_at"])
    total = step.get(STORE, "total") or domain.empty_total()
    step.put(STORE, "total", domain.add_total(total, p))
    previous = step.get(STORE, f"window/{window}")
    step.put(STORE, f"window/{window}", domain.add_window(previous or domain.empty_window(), p))
    if previous is None:
        _prune(step, window, p["confirmed_at"])
    for item in p["items"]:
        pid = str(item["product_id"])
        step.put(STORE, f"product/{pid}", domain.add_line(step.get(STORE, f"product/{pid}"), item, p.get("currency")))
    recorded = {"order_id": order_id, "total_cents": int(p["total_cents"]), "currency": p.get("currency")}
    outs = envelopes(
        [Emit(ORDERS, order_id, "analytics.order_recorded", "order", order_id, recorded)], env, stage=STAGE
    )
    put_counted(step, order_id, outs[0][2])
    send(step, outs)
    log.info("counted order %s: %s cents %s", order_id, recorded["total_cents"], recorded["currency"])


def _prune(step: Step, opened: str, confirmed_at: str) -> None:
    """Delete the windows older than the kept span, starting where the last pruning stopped.

    ``pruned`` is the horizon the last pruning reached (no window before it is left), so a
    pruning never seeks across the windows deleted before it: RocksDB steps over every
    deleted key on a seek until a compaction drops it, and a month of one-minute windows is
    43,200 of them. A window opened before the horizon (a late confirmation) moves it back.
    """
    horizon = step.get(STORE, "pruned") or ""
    horizon = min(horizon, opened) if horizon else ""
    cutoff = domain.oldest_kept(confirmed_at)
    for key, _ in step.scan(STORE, "window/", horizon):
        if key[len("window/") :] >= cutoff:
            break
        step.put(STORE, key, None)
    step.put(STORE, "pruned", max(horizon, cutoff))


engine.route(STAGE, ORDERS, {"order.confirmed"}, handle)
engine.route(STAGE, ANALYTICS, {"analytics.record"}, handle)
