"""The reference workload against the XMPP anchors, in one sitting, as ratios.

Runs, for each of ``--rounds`` rounds, Prosody (``../shared/anchors/prosody/run.sh``),
ejabberd (``../shared/anchors/ejabberd/run.sh``) and Fedgram (``scripts/bench.py --runs 1``)
one after the other, so every server meets the same state of a noisy machine (alternating
rounds; the order rotates each round). All three drive the same workload: a group of 11
(10 senders + 1 listener), 100-byte bodies, 1,000 sequential sends then 5,000 from 10
closed loops, every message stored before it is delivered. Prints ONE JSON document: every
run's figures, the medians per server, Fedgram's ratios to each anchor (of the medians, and
round by round), and with ``--floor`` the machine's own costs before and after the sitting
(scripts/bench_floor.py: a loopback send, an fdatasync, a WAL commit, a seal).

    python3 scripts/bench_vs_anchors.py [--rounds 3] [--anchors prosody,ejabberd] [--out DIR]
        [--floor]

The anchors install their server from Debian packages the first time (root, apt).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ANCHORS = REPO.parent / "shared" / "anchors"

# (label, path in the JSON, lower is better)
FIGURES = [
    ("sequential msgs/s", ("sequential", "msgs_per_s"), False),
    ("sequential ack p50 ms", ("sequential", "ack_latency", "p50_ms"), True),
    ("sequential ack p99 ms", ("sequential", "ack_latency", "p99_ms"), True),
    ("sequential e2e p50 ms", ("sequential", "e2e_latency", "p50_ms"), True),
    ("concurrent msgs/s", ("concurrent", "msgs_per_s"), False),
    ("concurrent ack p50 ms", ("concurrent", "ack_latency", "p50_ms"), True),
    ("concurrent e2e p50 ms", ("concurrent", "e2e_latency", "p50_ms"), True),
    ("concurrent e2e p99 ms", ("concurrent", "e2e_latency", "p99_ms"), True),
    ("sequential server CPU ms/msg", ("sequential", "server_cpu_ms_per_msg"), True),
    ("concurrent server CPU ms/msg", ("concurrent", "server_cpu_ms_per_msg"), True),
    ("server RSS MiB after", ("server_rss_mib_after",), True),
]


def dig(doc: dict[str, Any], path: tuple[str, ...]) -> float | None:
    cur: Any = doc
    for key in path:
        if not isinstance(cur, dict) or key not in cur:
            return None
        cur = cur[key]
    return float(cur) if isinstance(cur, int | float) else None


def cpu_per_msg(doc: dict[str, Any]) -> None:
    """The anchors report CPU seconds per phase; derive ms per message like bench.py's."""
    for phase in ("sequential", "concurrent"):
        p = doc.get(phase)
        if isinstance(p, dict) and "server_cpu_ms_per_msg" not in p and p.get("messages"):
            p["server_cpu_ms_per_msg"] = round(1000 * p["server_cpu_s"] / p["messages"], 3)


def our_script(name: str, *args: str) -> dict[str, Any]:
    """Run one of scripts/ and return the JSON document it prints."""
    res = subprocess.run(
        [sys.executable, str(REPO / "scripts" / name), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        raise SystemExit(f"{name} failed:\n{res.stderr[-2000:]}")
    doc: dict[str, Any] = json.loads(res.stdout)
    return doc


def run_one(server: str, out: Path) -> dict[str, Any]:
    t0 = time.time()
    if server == "fedgram":
        doc: dict[str, Any] = our_script("bench.py", "--runs", "1")["result"]
        out.write_text(json.dumps(doc, indent=1))
    else:
        script = ANCHORS / server / "run.sh"
        res = subprocess.run(["bash", str(script), str(out)], capture_output=True, text=True)
        if res.returncode != 0 or not out.exists():
            raise SystemExit(f"{script} failed:\n{res.stdout[-1500:]}\n{res.stderr[-1500:]}")
        doc = json.loads(out.read_text())
        cpu_per_msg(doc)
    doc["_started"] = time.strftime("%H:%M:%S", time.gmtime(t0))
    doc["_load_avg"] = os.getloadavg()[0]
    return doc


def floor() -> dict[str, Any]:
    """The machine's own costs now (scripts/bench_floor.py, shortened): the box's speed moves
    within a sitting, and these say by how much without any server in the picture."""
    doc = our_script("bench_floor.py", "--rounds", "50")
    return {
        "at": time.strftime("%H:%M:%S", time.gmtime()),
        "loopback_send_us": doc["loopback_send"]["cpu_us_per_send"],
        "fdatasync_4k_p50_ms": doc["fdatasync_4k"]["p50_ms"],
        "sqlite_commit_p50_ms": doc["sqlite_commit"]["p50_ms"],
        "seal_250b_us": doc["crypto"]["seal_250b_us"],
    }


def per_round(runs: dict[str, list[dict[str, Any]]], anchor: str) -> dict[str, Any]:
    """Fedgram's rate over the anchor's, round by round (both met the same minutes of the
    box), and the median of those: steadier than a ratio of medians when the box drifts."""
    out: dict[str, Any] = {}
    for label in ("sequential msgs/s", "concurrent msgs/s"):
        path = next(p for lab, p, _ in FIGURES if lab == label)
        ratios = []
        for f_doc, a_doc in zip(runs["fedgram"], runs[anchor], strict=False):
            f, a = dig(f_doc, path), dig(a_doc, path)
            if f and a:
                ratios.append(round(f / a, 2))
        out[label] = {"rounds": ratios, "median": statistics.median(ratios) if ratios else None}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--anchors", default="prosody,ejabberd")
    ap.add_argument("--out", type=Path, default=None, help="keep every run's JSON here")
    ap.add_argument(
        "--floor", action="store_true", help="measure the machine's floor before and after"
    )
    args = ap.parse_args()
    floors = [floor()] if args.floor else []
    servers = [*args.anchors.split(","), "fedgram"]
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="fedgram-anchors-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in servers}
    for r in range(args.rounds):
        order = servers[r % len(servers) :] + servers[: r % len(servers)]
        for server in order:
            doc = run_one(server, out_dir / f"{server}-{r + 1}.json")
            runs[server].append(doc)
            print(f"round {r + 1}: {server} done", file=sys.stderr)
    if args.floor:
        floors.append(floor())
    medians: dict[str, dict[str, float | None]] = {}
    for server, docs in runs.items():
        medians[server] = {}
        for label, path, _ in FIGURES:
            values = [v for d in docs if (v := dig(d, path)) is not None]
            medians[server][label] = round(statistics.median(values), 3) if values else None
    ratios: dict[str, dict[str, float | None]] = {}
    for anchor in servers[:-1]:
        ratios[anchor] = {}
        for label, _, lower_better in FIGURES:
            f, a = medians["fedgram"][label], medians[anchor][label]
            if f is None or a is None or f == 0 or a == 0:
                ratios[anchor][label] = None
            else:  # > 1 means Fedgram is better by that factor
                ratios[anchor][label] = round(a / f if lower_better else f / a, 2)
    print(
        json.dumps(
            {
                "benchmark": "reference workload vs anchors",
                "nproc": os.cpu_count(),
                "rounds": args.rounds,
                "runs_dir": str(out_dir),
                "medians": medians,
                "fedgram_better_by": ratios,
                "fedgram_better_by_round": {a: per_round(runs, a) for a in servers[:-1]},
                **({"floor": floors} if floors else {}),
                "runs": {
                    s: [
                        {
                            "started": d["_started"],
                            "load_avg": d["_load_avg"],
                            **{lab: dig(d, p) for lab, p, _ in FIGURES},
                        }
                        for d in docs
                    ]
                    for s, docs in runs.items()
                },
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
