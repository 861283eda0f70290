"""What a list page costs as the history grows: ``GET /orders`` pages over 1,000 and 100,000 orders.

    python -m app.bench.pages

Writes orders into one partition database the way commits do (their derived indexes
included), then times pages of 50 by status, by user and unfiltered at the start, the
middle and the end of each index. A page is one RocksDB seek plus one read per row, so
its cost should not depend on how many orders the partition holds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any


def _state(i: int) -> dict[str, Any]:
    status = ("confirmed", "rejected", "cancelled", "shipped")[i % 4]
    return {
        "order_id": f"o{i:09d}",
        "user_id": f"u{i % 1000}",
        "status": status,
        "items": [{"product_id": "p", "quantity": 1, "price_cents": 100}],
        "total_cents": 100,
        "currency": "USD",
        "created_at": "2026-12-01T00:00:00.000Z",
        "updated_at": "2026-12-01T00:00:01.000Z",
        "payment": {"status": "charged", "last4": "4242", "payment_id": f"pay_{i}"},
        "lines": {"p": "committed"},
        "deadline": None,
    }


def measure(orders: int, pages: int = 200) -> dict[str, float]:
    """Microseconds per page of 50 over a partition holding ``orders`` orders."""
    import orjson

    from app.engine.store import PartitionDB
    from tables import ORDERS, index_order, order_rows

    db = PartitionDB(Path(tempfile.mkdtemp(prefix="pages-bench-")) / "p0", 0, index_order)
    batch: dict[str, tuple[Any, bytes | None]] = {}
    for i in range(orders):
        entry = {"events": [], "state": _state(i)}
        batch[f"log/o{i:09d}/000000"] = (entry, orjson.dumps(entry))
        if len(batch) == 5000:
            db.apply({ORDERS: batch}, {})
            batch = {}
    db.apply({ORDERS: batch}, {})
    out = {}
    for name, query in (("all", {}), ("by status", {"status": "confirmed"}), ("by user", {"user_id": "u7"})):
        cursors = ["", f"o{orders // 2:09d}", f"o{max(orders - 60, 0):09d}"]
        started = time.perf_counter()
        for n in range(pages):
            rows = list(
                order_rows(
                    db, status=query.get("status"), user_id=query.get("user_id"), cursor=cursors[n % 3], limit=50
                )
            )
            assert rows or query.get("user_id")
        out[name] = (time.perf_counter() - started) / pages * 1e6
    db.close()
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the figures for each size."""
    parser = argparse.ArgumentParser(prog="python -m app.bench.pages", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,100000", help="orders in the partition, comma-separated")
    args = parser.parse_args(argv)
    for size in (int(s) for s in args.sizes.split(",")):
        figures = measure(size)
        print(f"{size:>9,} orders: " + ", ".join(f"{k} {v:,.0f} µs/page" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
