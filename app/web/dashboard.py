"""The live dashboard at ``/``: one self-contained page that polls the JSON API every 2 s.

The page (``static/dashboard.html``) carries its own CSS and JavaScript, loads
nothing from elsewhere and only calls this worker's public endpoints, so it works
offline and behind any proxy. It is read once, at import.

Flow (orders/s, placed→final latency, consumer lag, per-worker throughput) comes from
``GET /dashboard/data``. Every worker samples its own Prometheus registry every
``INTERVAL`` seconds on a wall-clock grid and keeps the last ``HISTORY`` samples, so a
freshly opened page shows the last minutes at once; ``/dashboard/data`` gathers every
worker's samples (``GET /_local/dashboard``) and turns them into rates and quantiles.
A metric family a worker does not export yet is ``None`` in its samples and shows as
"no data yet"; it never breaks the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Sample = dict[str, Any]

PAGE = (Path(__file__).parent / "static" / "dashboard.html").read_bytes()

INTERVAL = 2.0  # seconds between samples, aligned to the wall clock so workers' samples line up
HISTORY = 300  # samples kept per worker: 10 minutes
QUANTILE_WINDOW = 5  # latency quantiles over the last 5 intervals (10 s), as a rate()[10s] would

PLACED = "orderstream_orders_placed_total"
OUTCOMES = "orderstream_order_outcomes_total"
EVENTS = "orderstream_events_processed_total"
LATENCY_BUCKETS = "orderstream_order_latency_seconds_bucket"
LAG = "orderstream_consumer_lag"
# Label values of the events counter that are results, not handled messages: not throughput.
NOT_THROUGHPUT = frozenset({"replayed", "duplicate", "dedupe_pruned"})

# Inline script and style only; fetches to this origin only; nothing else may load.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


# --- sampling (pure: a registry in, a JSON-ready sample out) ----------------------------


_SUFFIX = {"counter": "_total", "histogram": "_bucket"}


def _values(registry: CollectorRegistry) -> dict[str, list[tuple[Mapping[str, str], float]]]:
    """Samples by series name; a registered counter or histogram with no labelled child yet is ``[]``."""
    out: dict[str, list[tuple[Mapping[str, str], float]]] = {}
    for family in registry.collect():
        if family.type in _SUFFIX:
            out.setdefault(family.name + _SUFFIX[family.type], [])
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, float(s.value)))
    return out


def _counter(rows: Iterable[tuple[Mapping[str, str], float]] | None) -> float | None:
    return None if rows is None else sum(v for _, v in rows)


def _total(rows: Iterable[tuple[Mapping[str, str], float]] | None) -> float | None:
    rows = list(rows or ())
    return sum(v for _, v in rows) if rows else None


def sample(registry: CollectorRegistry, t: float, at: float | None = None) -> Sample:
    """Read the flow counters of ``registry`` as one sample for grid point ``t``, read at ``at``.

    ``None`` marks a family the registry does not export (yet); a lag gauge without any
    partition is ``None`` too (nothing measured), a counter without children is 0.
    """
    values = _values(registry)
    events = values.get(EVENTS)
    rows = values.get(LATENCY_BUCKETS)
    buckets: dict[str, float] = defaultdict(float)
    for labels, v in rows or ():
        buckets[labels.get("le", "+Inf")] += v
    return {
        "t": t,
        "at": t if at is None else at,
        "placed": _counter(values.get(PLACED)),
        "finished": _counter(values.get(OUTCOMES)),
        "events": None
        if events is None
        else sum(v for labels, v in events if not NOT_THROUGHPUT.intersection(labels.values())),
        # [[le, cumulative count], ...] by bound; the le stays a string ("+Inf" is not JSON)
        "buckets": None if rows is None else sorted(buckets.items(), key=lambda kv: float(kv[0])),
        "lag": _total(values.get(LAG)),
    }


class Sampler:
    """Keep the last ``HISTORY`` samples of this worker's registry, one every ``INTERVAL`` seconds."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.samples: deque[Sample] = deque(maxlen=HISTORY)
        self._task: asyncio.Task[None] | None = None

    def take(self, now: float | None = None) -> None:
        """Take one sample, stamped with the grid point nearest ``now``."""
        at = time.time() if now is None else now
        t = round(at / INTERVAL) * INTERVAL
        if self.samples and self.samples[-1]["t"] >= t:
            return
        self.samples.append(sample(self.registry, t, at))

    async def run(self) -> None:
        """Sample on the grid until cancelled."""
        while True:
            self.take()
            now = time.time()
            await asyncio.sleep(INTERVAL - now % INTERVAL + 0.01)

    def start(self) -> None:
        """Start sampling in the running loop (once)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        """Stop sampling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


# --- deriving flow (pure: samples in, chart series out) --------------------------------


def _increase(a: float | None, b: float | None) -> float | None:
    """Counter increase from ``a`` to ``b``; a counter that went down restarted from 0."""
    if a is None or b is None:
        return None
    return b - a if b >= a else b


def _bucket_increase(a: Sequence[Sequence[Any]] | None, b: Sequence[Sequence[Any]] | None) -> dict[str, float] | None:
    if a is None or b is None:
        return None
    before = {le: v for le, v in a}
    now = {le: v for le, v in b}
    if any(now[le] < before.get(le, 0.0) for le in now):  # restarted
        return dict(now)
    return {le: now[le] - before.get(le, 0.0) for le in now}


def quantile(q: float, buckets: Mapping[str, float]) -> float | None:
    """The ``q`` quantile of a cumulative histogram, interpolated as PromQL's ``histogram_quantile``."""
    bounds = sorted((float(le), n) for le, n in buckets.items())
    if not bounds or bounds[-1][1] <= 0:
        return None
    rank = q * bounds[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in bounds:
        if count >= rank:
            if math.isinf(upper):
                return lower  # beyond the highest finite bound: that bound, as Prometheus answers
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def _read_at(s: Sample) -> float:
    return float(s["at"] if "at" in s else s["t"])


def _steps(samples: Sequence[Sample]) -> list[tuple[float, float, Sample, Sample]]:
    """Consecutive pairs of one worker's samples as ``(grid point, seconds between the reads, before, after)``.

    The grid point lines workers up; the read times make the rate exact when a busy
    event loop read a sample late.
    """
    return [
        (b["t"], max(_read_at(b) - _read_at(a), 0.1), a, b) for a, b in itertools.pairwise(samples) if b["t"] > a["t"]
    ]


def worker_series(samples: Sequence[Sample]) -> dict[str, Any]:
    """One worker's throughput over time: events handled and orders placed per second, and its lag."""
    steps = _steps(samples)

    def rate(field: str) -> list[float | None]:
        out = []
        for _, dt, a, b in steps:
            inc = _increase(a[field], b[field])
            out.append(None if inc is None else inc / dt)
        return out

    return {
        "t": [t for t, *_ in steps],
        "events_per_s": rate("events"),
        "placed_per_s": rate("placed"),
        "lag": samples[-1]["lag"] if samples else None,
    }


def flow(by_worker: Mapping[str, Sequence[Sample]]) -> dict[str, Any]:
    """The cluster's flow: every worker's per-interval increases summed at each grid point.

    Latency quantiles come from the histogram increases over the last
    ``QUANTILE_WINDOW`` intervals; a point where no order finished is ``None`` (a gap).
    """
    placed: dict[float, float] = defaultdict(float)
    finished: dict[float, float] = defaultdict(float)
    seen_placed: set[float] = set()
    seen_finished: set[float] = set()
    latency: dict[float, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    seen_latency = False
    lag: dict[float, float] = defaultdict(float)
    seen_lag: set[float] = set()
    times: set[float] = set()
    for samples in by_worker.values():
        for t, dt, a, b in _steps(samples):
            times.add(t)
            if (inc := _increase(a["placed"], b["placed"])) is not None:
                placed[t] += inc / dt
                seen_placed.add(t)
            if (inc := _increase(a["finished"], b["finished"])) is not None:
                finished[t] += inc / dt
                seen_finished.add(t)
            if (incs := _bucket_increase(a["buckets"], b["buckets"])) is not None:
                seen_latency = True
                for le, n in incs.items():
                    latency[t][le] += n
            if b["lag"] is not None:
                lag[t] += b["lag"]
                seen_lag.add(t)
    ts = sorted(times)
    p50: list[float | None] = []
    p99: list[float | None] = []
    for i, t in enumerate(ts):
        window: dict[str, float] = defaultdict(float)
        for u in ts[max(0, i - QUANTILE_WINDOW + 1) : i + 1]:
            if t - u < QUANTILE_WINDOW * INTERVAL:
                for le, n in latency.get(u, {}).items():
                    window[le] += n
        p50.append(quantile(0.5, window))
        p99.append(quantile(0.99, window))
    return {
        "t": ts,
        "placed_per_s": [placed[t] if t in seen_placed else None for t in ts],
        "finished_per_s": [finished[t] if t in seen_finished else None for t in ts],
        "latency_p50": p50,
        "latency_p99": p99,
        "lag": [lag[t] if t in seen_lag else None for t in ts],
        "families": {
            "placed": bool(seen_placed),
            "finished": bool(seen_finished),
            "latency": seen_latency,
            "lag": bool(seen_lag),
        },
    }


def dashboard_data(by_worker: Mapping[str, Sequence[Sample]], missing: Mapping[str, str]) -> dict[str, Any]:
    """The body of ``GET /dashboard/data``."""
    return {
        "interval": INTERVAL,
        "flow": flow(by_worker),
        "workers": [{"url": url, **worker_series(samples)} for url, samples in sorted(by_worker.items())],
        "missing": [{"url": url, "error": error} for url, error in sorted(missing.items())],
    }


# --- HTTP -----------------------------------------------------------------------------


_sampler: Sampler | None = None


def sampler() -> Sampler:
    """This worker's sampler over ``app.metrics.REGISTRY``."""
    global _sampler
    if _sampler is None:
        from app.metrics import REGISTRY

        _sampler = Sampler(REGISTRY)
    return _sampler


async def index(request: web.Request) -> web.Response:
    """Serve the dashboard page."""
    return web.Response(body=PAGE, content_type="text/html", charset="utf-8", headers=HEADERS)


def _json(data: Any) -> web.Response:
    from app import codec

    return web.Response(body=codec.dumps(data), content_type="application/json", headers={"Cache-Control": "no-store"})


async def local_samples(request: web.Request) -> web.Response:
    """``GET /_local/dashboard``: this worker's samples (peers only)."""
    from app.web import guard

    guard.require_peer(request)
    s = sampler()
    s.start()
    return _json({"samples": list(s.samples)})


async def data(request: web.Request) -> web.Response:
    """``GET /dashboard/data``: the cluster's flow and each worker's throughput, from every worker's samples."""
    from app import codec
    from app.web import guard, routing

    s = sampler()
    s.start()
    me = routing.my_url()
    by_worker: dict[str, Sequence[Sample]] = {me: list(s.samples)}
    missing: dict[str, str] = {}

    async def one(url: str) -> None:
        try:
            async with asyncio.timeout(3):
                headers = {routing.FORWARDED: me, **guard.internal_headers()}
                async with routing.session().get(url + "/_local/dashboard", headers=headers) as resp:
                    if resp.status != 200:
                        missing[url] = f"answered {resp.status}"
                        return
                    by_worker[url] = codec.loads(await resp.read())["samples"]
        except Exception as exc:  # noqa: BLE001  # one silent worker must not blank the page
            missing[url] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    await asyncio.gather(*(one(u) for u in routing.workers() if u != me))
    return _json(dashboard_data(by_worker, missing))


@web.middleware
async def serve_dashboard_at_root(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer ``GET /`` with the dashboard.

    Faust's production blueprint already owns ``/`` (a bare ``{"status": "OK"}``), and
    aiohttp routes to the first match, so the dashboard takes the path here instead.
    """
    if request.path == "/" and request.method in ("GET", "HEAD"):
        return await index(request)
    return await handler(request)


async def _start_sampling(web_app: web.Application) -> None:
    sampler().start()


async def _stop_sampling(web_app: web.Application) -> None:
    await sampler().stop()


def register(web_app: web.Application) -> None:
    """Serve the dashboard at ``/`` and its data; sample this worker's metrics while the server runs."""
    web_app.middlewares.append(serve_dashboard_at_root)
    web_app.router.add_get("/dashboard/data", data)
    web_app.router.add_get("/_local/dashboard", local_samples)
    web_app.on_startup.append(_start_sampling)
    web_app.on_cleanup.append(_stop_sampling)
