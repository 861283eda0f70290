"""Train the zstd dictionary the engine compresses its records with (``app/engine/records-1.zdict``).

    python scripts/record_dictionary.py [--orders 6000] [--output app/engine/records-1.zdict]

Runs a mixed workload through every stage's real adapter (:func:`app.bench.steps.run`
with ``mixed=True``: one to four lines, rejected and cancelled orders too), takes every
record value it wrote, trains a dictionary on half of them and prints, on the other half,
the compressed size and cost against plain deflate. A dictionary in use is never changed:
records in RocksDB and in changelogs name the dictionary they were written with (one
marker byte), so a new one is a new file with a new marker in :mod:`app.engine.store`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import time
import zlib
from pathlib import Path

import orjson
import zstandard

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "app" / "engine" / "records-1.zdict"


def samples(orders: int) -> list[bytes]:
    """The JSON of every record a mixed run of ``orders`` orders left in its database."""
    from app.bench.steps import run
    from app.engine.store import CHECKPOINT, INDEX, PartitionDB, decode_record

    logging.disable(logging.INFO)  # the notifier logs every confirmation
    figures = asyncio.run(run(orders, 500, mixed=True))
    workdir = Path(figures["workdir"])
    db = PartitionDB(workdir / "p0", 0)
    local = (CHECKPOINT.encode(), INDEX.encode())  # bookkeeping, never a record
    out = [
        orjson.dumps(decode_record(value))
        for key, value in db.db.items()
        if isinstance(key, bytes) and isinstance(value, bytes) and not key.startswith(local)
    ]
    db.close()
    shutil.rmtree(workdir, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """Train, compare, write."""
    parser = argparse.ArgumentParser(prog="python scripts/record_dictionary.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=6000)
    parser.add_argument("--size", type=int, default=16384, help="dictionary bytes")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    records = samples(args.orders)
    train, held_out = records[0::2], records[1::2]
    dictionary = zstandard.train_dictionary(args.size, train, level=1)
    compressor = zstandard.ZstdCompressor(level=1, dict_data=dictionary, write_checksum=False, write_dict_id=False)
    raw = sum(len(r) for r in held_out)
    for name, fn in (
        ("zstd + dictionary", compressor.compress),
        ("deflate level 1", lambda data: zlib.compress(data, 1, -11)),
    ):
        started = time.perf_counter()
        size = sum(len(fn(r)) for r in held_out)
        took = (time.perf_counter() - started) / len(held_out) * 1e6
        print(f"{name:18s} {size / raw:.3f} of {raw / len(held_out):.0f} B per record, {took:.1f} µs per record")
    args.output.write_bytes(dictionary.as_bytes())
    print(f"{len(records)} records; dictionary of {len(dictionary.as_bytes())} B written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
