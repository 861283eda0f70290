"""The benchmark's pure parts: percentiles, /proc parsing, topic kinds, per-order figures, ratios.

Nothing here touches Kafka, a process or the clock, so every figure the report prints
can be checked in a unit test.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

FINAL_TYPES = frozenset({"order.confirmed", "order.rejected", "order.cancelled"})
CHANGELOG_MARK = "-changelog"


def percentile(values: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile (0-100) of ``values``, interpolating between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError("q must be between 0 and 100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    """Return p50/p95/p99/max of latencies given in seconds, in milliseconds (None when empty)."""
    if not seconds:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    ms = sorted(s * 1000 for s in seconds)
    return {
        "p50": round(percentile(ms, 50), 1),
        "p95": round(percentile(ms, 95), 1),
        "p99": round(percentile(ms, 99), 1),
        "max": round(ms[-1], 1),
    }


# --- /proc ----------------------------------------------------------------------------


def cpu_ticks(stat_text: str) -> int:
    """Return utime + stime (clock ticks) from the text of ``/proc/<pid>/stat``."""
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = stat_text[stat_text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(rest[11]) + int(rest[12])


def vm_rss_bytes(status_text: str) -> int | None:
    """Return VmRSS in bytes from the text of ``/proc/<pid>/status``, or None when absent."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            unit = parts[2].lower() if len(parts) > 2 else "kb"
            factor = {"kb": 1024, "mb": 1024**2, "b": 1}.get(unit, 1024)
            return int(parts[1]) * factor
    return None


# --- topics and produced records -------------------------------------------------------


def topic_kind(topic: str, app_id: str) -> str | None:
    """Classify one of the app's topics: ``changelog``, ``events`` or ``other``; None when not the app's."""
    if not (topic.startswith(f"{app_id}.") or topic.startswith(f"{app_id}-")):
        return None
    if CHANGELOG_MARK in topic:
        return "changelog"
    if topic.startswith(f"{app_id}."):
        return "events"
    return "other"


def window_index(offset: int, edges: Sequence[int]) -> int | None:
    """Return which window ``offset`` falls in, given the partition's offsets at each window edge.

    ``edges`` holds the end offset before the first window and after each window, so window
    ``i`` covers ``edges[i] <= offset < edges[i + 1]``; None outside every window.
    """
    if not edges or offset < edges[0] or offset >= edges[-1]:
        return None
    return bisect.bisect_right(edges, offset) - 1


def per_order(total: float, orders: int) -> float | None:
    """Return ``total / orders`` rounded for the report, or None when no order counts."""
    return round(total / orders, 2) if orders > 0 else None


def produced_summary(
    per_topic: Mapping[str, Mapping[str, Any]], confirmed: int, completed: int | None = None
) -> dict[str, Any]:
    """Sum per-topic counts into events / changelogs / other, per confirmed order (and per completed one)."""
    kinds: dict[str, dict[str, int]] = {}
    for counts in per_topic.values():
        acc = kinds.setdefault(str(counts["kind"]), {"records": 0, "bytes": 0, "markers": 0, "aborted": 0})
        for name in ("records", "bytes", "markers", "aborted"):
            acc[name] += int(counts.get(name) or 0)
    total = {name: sum(k[name] for k in kinds.values()) for name in ("records", "bytes", "markers", "aborted")}
    per = {
        f"{kind}_{name}": per_order(counts[name], confirmed)
        for kind, counts in sorted(kinds.items())
        for name in ("records", "bytes")
    }
    per["total_records"] = per_order(total["records"], confirmed)
    per["total_bytes"] = per_order(total["bytes"], confirmed)
    per["markers"] = per_order(total["markers"], confirmed)
    out: dict[str, Any] = {"by_kind": kinds, "total": total, "per_confirmed_order": per}
    if completed is not None:
        # Under overload orders time out and are cancelled: their records still count here.
        out["per_completed_order"] = {
            "total_records": per_order(total["records"], completed),
            "total_bytes": per_order(total["bytes"], completed),
        }
    return out


# --- ratios and formatting -------------------------------------------------------------


def ratio(value: float | None, ceiling: float | None) -> float | None:
    """Return ``value / ceiling`` (None when either is missing or the ceiling is zero)."""
    if value is None or ceiling is None or ceiling == 0:
        return None
    return round(value / ceiling, 3)


def format_ratio(value: float | None, ceiling: float | None) -> str:
    """Render ``value`` as a multiple of the ceiling, e.g. ``0.31 × ceiling``; ``-`` when unknown."""
    r = ratio(value, ceiling)
    if r is None:
        return "- × ceiling"
    return f"{r:.2f} × ceiling" if r < 100 else f"{r:,.0f} × ceiling"


def fmt_num(value: float | None, unit: str = "", digits: int = 0) -> str:
    """Render a number with thousands separators, or ``-`` when unknown."""
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{unit}"


def parse_rates(text: str) -> list[float | None]:
    """Parse ``500,1000,max`` into offered rates per second; None means flat out."""
    rates: list[float | None] = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        if part in ("max", "flat", "inf"):
            rates.append(None)
            continue
        value = float(part)
        if value <= 0:
            raise ValueError(f"a rate must be positive or 'max': {part}")
        rates.append(value)
    if not rates:
        raise ValueError("no rate given")
    return rates


def parse_windows(text: str) -> list[int]:
    """Parse ``1000,10000,100000`` into increasing order counts (window edges)."""
    edges = [int(p) for p in text.split(",") if p.strip()]
    if not edges or any(e <= 0 for e in edges) or edges != sorted(set(edges)):
        raise ValueError("windows must be increasing positive order counts, e.g. 1000,10000")
    return edges


def rate_label(rate: float | None) -> str:
    """Return ``max`` or the rate as a short string."""
    return "max" if rate is None else f"{rate:g}/s"


def config_name(engine: str, guarantee: str | None, workers: int) -> str:
    """Return e.g. ``orderstream ALO 2w`` or ``ceiling ALO 2p``."""
    short = {"at_least_once": "ALO", "exactly_once": "EOS"}.get(guarantee or "", guarantee or "")
    suffix = "p" if engine == "ceiling" else "w"
    return f"{engine} {short} {workers}{suffix}".replace("  ", " ")


REPORT_RUN_KEYS = (
    "name",
    "engine",
    "guarantee",
    "workers",
    "offered_rate",
    "orders",
    "sent",
    "completed",
    "missing",
    "outcomes",
    "duplicates",
    "completed_per_s",
    "latency_ms",
    "cpu",
    "rss_mb",
    "produced",
)


def check_run(run: Mapping[str, Any]) -> list[str]:
    """Return what is missing or inconsistent in one run of the report (empty when sane)."""
    problems = [f"missing key {k}" for k in REPORT_RUN_KEYS if k not in run]
    if problems:
        return problems
    if run["completed"] + run["missing"] != run["sent"]:
        problems.append("completed + missing != sent")
    if sum(run["outcomes"].values()) != run["completed"]:
        problems.append("outcomes do not add up to completed")
    if run["completed"] and not run["completed_per_s"]:
        problems.append("completed but no rate")
    lat = run["latency_ms"]
    known = [lat[k] for k in ("p50", "p95", "p99", "max") if lat.get(k) is not None]
    if known != sorted(known):
        problems.append("latency percentiles not increasing")
    return problems


def run_lines(run: Mapping[str, Any], ceiling: Mapping[str, Any] | None) -> list[str]:
    """Render one run as a few terminal lines, each figure with its ratio to the ceiling."""
    c = ceiling or {}
    lat, clat = run["latency_ms"], c.get("latency_ms", {})
    cpu, ccpu = run.get("cpu") or {}, c.get("cpu") or {}
    per = (run.get("produced") or {}).get("per_confirmed_order") or {}
    cper = (c.get("produced") or {}).get("per_confirmed_order") or {}
    is_ceiling = run["engine"] == "ceiling"

    def vs(value: float | None, base: float | None) -> str:
        return "" if is_ceiling else f" = {format_ratio(value, base)}"

    head = f"{run['name']} @ {rate_label(run['offered_rate'])}"
    lines = [
        f"{head}: {fmt_num(run['completed_per_s'])} orders/s{vs(run['completed_per_s'], c.get('completed_per_s'))}"
        f"  ({run['completed']:,} of {run['sent']:,} completed, {run['missing']:,} missing, "
        f"{', '.join(f'{k} {v:,}' for k, v in sorted(run['outcomes'].items())) or 'no outcome'}"
        + (f", {run['duplicates']:,} duplicate outcomes" if run.get("duplicates") else "")
        + ")",
        "  placed→final "
        + "  ".join(
            f"{k} {fmt_num(lat.get(k), ' ms', 1)}" + ("" if is_ceiling else f" ({ratio(lat.get(k), clat.get(k))}×)")
            for k in ("p50", "p95", "p99", "max")
        ),
        f"  CPU per order: {cpu.get('process_label', 'worker')} {fmt_num(cpu.get('worker_ms_per_order'), ' ms', 3)}"
        f"{vs(cpu.get('worker_ms_per_order'), ccpu.get('worker_ms_per_order'))}, "
        f"broker {fmt_num(cpu.get('broker_ms_per_order'), ' ms', 3)}"
        f"{vs(cpu.get('broker_ms_per_order'), ccpu.get('broker_ms_per_order'))}, "
        f"driver {fmt_num(cpu.get('driver_ms_per_order'), ' ms', 3)}"
        f"  (cores used: {fmt_num(cpu.get('worker_cores'), '', 2)} + broker {fmt_num(cpu.get('broker_cores'), '', 2)})",
    ]
    if per:
        lines.append(
            f"  produced per confirmed order: events {fmt_num(per.get('events_records'), '', 1)} records / "
            f"{fmt_num(per.get('events_bytes'), ' B')}, changelogs {fmt_num(per.get('changelog_records'), '', 1)}"
            f" records / {fmt_num(per.get('changelog_bytes'), ' B')}, total {fmt_num(per.get('total_records'), '', 1)}"
            f" records{vs(per.get('total_records'), cper.get('total_records'))} / "
            f"{fmt_num(per.get('total_bytes'), ' B')}{vs(per.get('total_bytes'), cper.get('total_bytes'))}"
            + (f", {per['markers']:.2f} txn markers" if per.get("markers") else "")
        )
    topics = (run.get("produced") or {}).get("per_topic") or {}
    if topics and not is_ceiling:
        app_id = str(run.get("app_id") or "")
        lines.append(
            "  per topic (records, bytes per confirmed order): "
            + ", ".join(
                f"{t.removeprefix(app_id).lstrip('.-')} {fmt_num(v.get('records_per_order'), '', 1)}"
                f"/{fmt_num(v.get('bytes_per_order'), ' B')}"
                for t, v in topics.items()
            )
        )
    rss = run.get("rss_mb") or {}
    load = run.get("loadavg_1_5_15")
    if rss or load:
        lines.append(
            "  RSS "
            + (", ".join(f"{k} {v:,.0f} MB" for k, v in rss.items()) or "-")
            + (f"; machine load average {load[0]:.1f}" if load else "")
        )
    for w in run.get("windows") or []:
        wp = w["per_confirmed_order"]
        lines.append(
            f"  window orders {w['first']:,}-{w['last']:,}: {fmt_num(wp.get('total_records'), '', 2)} records, "
            f"{fmt_num(wp.get('total_bytes'), ' B')} per confirmed order "
            f"(events {fmt_num(wp.get('events_records'), '', 2)}, "
            f"changelogs {fmt_num(wp.get('changelog_records'), '', 2)})"
        )
    if run.get("topics_went_quiet") and not all(run["topics_went_quiet"]):
        lines.append("  warning: the topics were still moving at the settle timeout; records may be undercounted")
    if run.get("error"):
        lines.append(f"  ERROR: {run['error']}")
    return lines


def ceiling_for(runs: Iterable[Mapping[str, Any]], rate: float | None) -> Mapping[str, Any] | None:
    """Return the ceiling run at the same offered rate, else the flat-out one, else any."""
    ceilings = [r for r in runs if r["engine"] == "ceiling" and not r.get("error")]
    for r in ceilings:
        if r["offered_rate"] == rate:
            return r
    for r in ceilings:
        if r["offered_rate"] is None:
            return r
    return ceilings[0] if ceilings else None


def vs_ceiling(run: Mapping[str, Any], ceiling: Mapping[str, Any] | None) -> dict[str, float | None]:
    """Return each headline figure of ``run`` divided by the ceiling's."""
    c = ceiling or {}
    cpu, ccpu = run.get("cpu") or {}, c.get("cpu") or {}
    per = (run.get("produced") or {}).get("per_confirmed_order") or {}
    cper = (c.get("produced") or {}).get("per_confirmed_order") or {}
    out = {
        "completed_per_s": ratio(run.get("completed_per_s"), c.get("completed_per_s")),
        "worker_ms_per_order": ratio(cpu.get("worker_ms_per_order"), ccpu.get("worker_ms_per_order")),
        "broker_ms_per_order": ratio(cpu.get("broker_ms_per_order"), ccpu.get("broker_ms_per_order")),
        "records_per_order": ratio(per.get("total_records"), cper.get("total_records")),
        "bytes_per_order": ratio(per.get("total_bytes"), cper.get("total_bytes")),
    }
    for k in ("p50", "p95", "p99", "max"):
        out[f"latency_{k}"] = ratio((run.get("latency_ms") or {}).get(k), (c.get("latency_ms") or {}).get(k))
    return out
