"""The fault suite, long form: ``python3 scripts/chaos.py --seed S --minutes M``.

Starts real nodes (3 by default) with a fault proxy on every directed link, drives clients
on every node while a schedule drawn from the seed cuts, stalls, corrupts and duplicates
links and kill -9s nodes, then heals everything and checks what every node stored (see
federation/chaos.py). Prints the JSON report on stdout (progress on stderr) and exits 1
unless the report says ``"ok": true``. A failing run is replayed with the same seed (and
the same --mean-gap/--max-duration/--max-down), or exactly with ``--replay REPORT.json``,
which runs the schedule the report lists.

The nodes' folders (and their logs) are kept: in ``--data`` if given (it must be empty or
new), else in a temporary folder named in the report.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path
from typing import Any

import trio

# this checkout's code, whatever `pip install -e` elsewhere points at
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from federation.chaos import Fault, dumps, run_chaos  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/chaos.py", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--seed", type=int, help="the schedule's seed (replayable)")
    p.add_argument("--minutes", type=float, help="length of the fault phase")
    p.add_argument(
        "--replay",
        type=Path,
        metavar="REPORT",
        help="run the schedule of an earlier report (its seed, minutes and nodes) exactly",
    )
    p.add_argument("--nodes", type=int, default=3, help="node processes (3)")
    p.add_argument("--data", type=Path, help="folder for the nodes (empty or new)")
    p.add_argument(
        "--converge-timeout", type=float, default=120.0, help="seconds to wait after the heal"
    )
    p.add_argument("--mean-gap", type=float, default=2.0, help="seconds between faults (2)")
    p.add_argument("--max-duration", type=float, default=8.0, help="longest fault, s (8)")
    p.add_argument("--max-down", type=int, default=1, help="nodes killed/hung at once (1)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    schedule: list[Fault] | None = None
    if args.replay:
        try:
            old: dict[str, Any] = json.loads(args.replay.read_text())
            schedule = [Fault.from_description(d) for d in old["schedule"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            p.error(f"--replay {args.replay}: not a chaos report ({e})")
        args.seed, args.minutes, args.nodes = old["seed"], old["minutes"], old["nodes"]
    if args.seed is None or args.minutes is None:
        p.error("--seed and --minutes are required (or --replay REPORT)")
    if args.minutes <= 0 or args.nodes < 2 or args.mean_gap <= 0 or args.max_duration <= 0:
        p.error("--minutes, --mean-gap, --max-duration must be > 0 and --nodes >= 2")
    if not 1 <= args.max_down < args.nodes:
        p.error("--max-down must be at least 1 and leave one node up")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    report = trio.run(
        lambda: run_chaos(
            args.seed,
            args.minutes,
            nodes=args.nodes,
            data_dir=args.data,
            schedule=schedule,
            converge_timeout=args.converge_timeout,
            mean_gap=args.mean_gap,
            max_duration=args.max_duration,
            max_down=args.max_down,
            log=log,
        )
    )
    print(dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
