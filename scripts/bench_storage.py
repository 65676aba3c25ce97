"""Benchmark the storage engine: single-row commits versus group commit.

Prints ONE JSON document. Every case writes 200-byte BLOB rows into a fresh database in a
temp folder, WAL + synchronous=FULL (the engine's settings), for ``--seconds`` each:

* ``plain_sqlite3_single_row``: stdlib sqlite3, no trio, BEGIN/INSERT/COMMIT in a loop. The
  ceiling for one-row transactions on this disk, to judge the cost of the thread hop.
* ``trio_single_row``: one task awaiting ``db.write`` sequentially, so one job per COMMIT.
* ``group_commit_10`` / ``group_commit_100``: that many tasks writing concurrently through
  the one writer; ``commits_per_s`` comes from the engine's own counters, so
  ``rows_per_commit`` shows how much batching really happened.

Latencies are per ``await db.write`` (queueing + batch + fsync), in milliseconds. Machines
here vary ±30% run to run: compare cases from the same run, not with old figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

# this checkout's code, whatever `pip install -e` elsewhere points at
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from node.storage import MIGRATIONS, Database, Migration

ROW = bytes(range(200))
TABLE_SQL = "CREATE TABLE bench(id INTEGER PRIMARY KEY, b BLOB NOT NULL)"
BENCH_MIGRATIONS = [*MIGRATIONS, Migration(len(MIGRATIONS) + 1, "bench", TABLE_SQL)]
WARMUP = 50


def insert(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO bench(b) VALUES (?)", (ROW,))


def percentile_ms(samples: list[float], q: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)


def plain_sqlite3(path: Path, seconds: float) -> dict[str, Any]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(TABLE_SQL)

    def one() -> None:
        conn.execute("BEGIN IMMEDIATE")
        insert(conn)
        conn.execute("COMMIT")

    for _ in range(WARMUP):
        one()
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        one()
        n += 1
    elapsed = time.perf_counter() - start
    conn.close()
    return {"commits_per_s": round(n / elapsed), "rows_per_s": round(n / elapsed)}


async def through_engine(path: Path, seconds: float, writers: int) -> dict[str, Any]:
    async with Database.open(path, migrations=BENCH_MIGRATIONS) as db:
        for _ in range(WARMUP):
            await db.write(insert)
        latencies: list[float] = []
        before = db.stats
        start = time.perf_counter()
        deadline = start + seconds

        async def writer() -> None:
            while (t0 := time.perf_counter()) < deadline:
                await db.write(insert)
                latencies.append(time.perf_counter() - t0)

        async with trio.open_nursery() as nursery:
            for _ in range(writers):
                nursery.start_soon(writer)
        elapsed = time.perf_counter() - start
        after = db.stats
    rows = len(latencies)
    commits = after["commits"] - before["commits"]
    return {
        "writers": writers,
        "rows_per_s": round(rows / elapsed),
        "commits_per_s": round(commits / elapsed),
        "rows_per_commit": round(rows / commits, 1) if commits else 0,
        "max_batch": after["max_batch"],
        "p50_ms": percentile_ms(latencies, 0.50),
        "p99_ms": percentile_ms(latencies, 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each case")
    args = parser.parse_args()
    seconds: float = args.seconds

    result: dict[str, Any] = {
        "machine": {
            "nproc": len(os.sched_getaffinity(0)),  # what `nproc` prints
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "trio": trio.__version__,
            "platform": platform.platform(),
        },
        "settings": {
            "journal_mode": "wal",
            "synchronous": "FULL",
            "row_bytes": len(ROW),
            "seconds_per_case": seconds,
        },
    }
    with tempfile.TemporaryDirectory(prefix="fedgram-bench-") as tmp:
        folder = Path(tmp)
        result["plain_sqlite3_single_row"] = plain_sqlite3(folder / "plain.sqlite", seconds)
        result["trio_single_row"] = trio.run(through_engine, folder / "single.sqlite", seconds, 1)
        for writers in (10, 100):
            result[f"group_commit_{writers}"] = trio.run(
                through_engine, folder / f"group{writers}.sqlite", seconds, writers
            )
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
