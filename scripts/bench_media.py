"""Media throughput: upload and download a large file over loopback through the real node.

Starts a node (`fedgram run`, fresh data folder) in its own process, writes a file of
``--mib`` random MiB (default 1024) in a temp folder, uploads it with the SDK
(``upload_file``: parts of the node's part size, ``--parallel`` in flight), downloads it back
(``download_file``), checks the SHA-256, and samples the node's RSS during both transfers
(streaming, not buffering, keeps it flat). ``--runs N`` repeats upload and download N times
on the same node (a new upload id each time: every byte travels again) and gives medians.

Besides MB/s it reports CPU seconds per GiB moved, for the node (from /proc) and for this
process (the SDK client), and the load average: on a shared box the CPU per GiB is the
figure to compare, the rate is whatever CPU the box left us. Prints ONE JSON document.

    python3 scripts/bench_media.py [--mib 1024] [--parallel 8] [--runs 1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from nacl.signing import SigningKey

# this checkout's code, whatever `pip install -e` elsewhere points at
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from node.client import Client, media
from node.client.admin import AdminClient
from node.client.media import download_file, upload_file
from scripts.node_process import start_node

CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def make_file(path: Path, mib: int) -> str:
    h = hashlib.sha256()
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(mib):
            chunk = block[i % 251 :] + block[: i % 251]  # distinct MiBs, cheap to make
            h.update(chunk)
            f.write(chunk)
    return h.hexdigest()


async def measure(pid: int, mib: int, fn: Any, *args: Any, **kw: Any) -> dict[str, Any]:
    """Run a transfer while sampling the node's RSS every 50 ms."""
    samples: list[float] = []
    done = trio.Event()

    async def sample() -> None:
        while not done.is_set():
            samples.append(rss_mib(pid))
            await trio.sleep(0.05)

    c0, own0 = cpu_s(pid), own_cpu_s()
    async with trio.open_nursery() as n:
        n.start_soon(sample)
        t0 = time.perf_counter()
        await fn(*args, **kw)
        elapsed = time.perf_counter() - t0
        done.set()
    gib = mib / 1024
    return {
        "seconds": round(elapsed, 2),
        "mb_per_s": round(mib * (1 << 20) / 1e6 / elapsed, 1),
        "node_cpu_s_per_gib": round((cpu_s(pid) - c0) / gib, 2),
        "client_cpu_s_per_gib": round((own_cpu_s() - own0) / gib, 2),
        "node_rss_mib_max": max(samples),
        "node_rss_mib_min": min(samples),
    }


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        k: round(statistics.median(r[k] for r in runs), 2)
        for k in ("mb_per_s", "node_cpu_s_per_gib", "client_cpu_s_per_gib", "node_rss_mib_max")
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fedgram-bench-media-") as tmp_name:
        tmp = Path(tmp_name)
        src = tmp / "big.bin"
        sha = await trio.to_thread.run_sync(make_file, src, args.mib)
        node, url, data = start_node(
            tmp,
            '[node]\nname = "bench"\nlisten = "127.0.0.1:0"\nlog_level = "warning"\n'
            f"[media]\nquota_bytes = 0\nfile_max_bytes = {max(2 << 30, (args.mib + 1) << 20)}\n",
        )
        load_before = os.getloadavg()
        ups: list[dict[str, Any]] = []
        downs: list[dict[str, Any]] = []
        verified = True
        try:
            async with AdminClient.connect(data) as admin:
                await admin.call("admin.userAdd", {"name": "bench"})
                code = (await admin.call("admin.userCode", {"name": "bench"}))["code"]
            rss_idle = rss_mib(node.pid)
            async with Client.connect(url) as c:
                await c.sign_in("bench", code, SigningKey.generate(), "bench")
                part = (await c.call("media.uploadStatus", {"upload_id": "bench-0"}))["part_size"]
                info: dict[str, Any] = {}

                async def up(upload_id: str) -> None:
                    info.update(await upload_file(c, src, upload_id, parallel=args.parallel))

                for run in range(args.runs):
                    ups.append(await measure(node.pid, args.mib, up, f"bench-{run}"))
                    verified = verified and info["sha256"] == sha
                    out = tmp / "copy.bin"
                    out.unlink(missing_ok=True)
                    downs.append(
                        await measure(
                            node.pid,
                            args.mib,
                            download_file,
                            c,
                            info["media_id"],
                            out,
                            parallel=args.parallel,
                        )
                    )
                    # outside the timing: the copy's bytes (download_file checked them too)
                    same = await trio.to_thread.run_sync(_sha256_file, out)
                    verified = verified and same == sha
                rss_after = rss_mib(node.pid)
        finally:
            node.terminate()
            node.wait(30)
    return {
        "benchmark": "media",
        "machine": {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "file_mib": args.mib,
        "part_kib": part // 1024,
        # the SDK's default (a copy of this script also runs against older checkouts)
        "download_chunk_kib": getattr(media, "DOWNLOAD_CHUNK", 512 * 1024) // 1024,
        "parts_in_flight": args.parallel,
        "runs": args.runs,
        "upload": medians(ups),
        "download": medians(downs),
        "upload_runs": ups,
        "download_runs": downs,
        "node_rss_mib_idle": rss_idle,
        "node_rss_mib_after": rss_after,
        "sha256_verified": verified,
        "target": ">= 250 MB/s each way",
    }


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mib", type=int, default=1024, help="file size in MiB")
    p.add_argument("--parallel", type=int, default=8, help="parts in flight")
    p.add_argument("--runs", type=int, default=1, help="upload+download rounds (medians)")
    print(json.dumps(trio.run(run, p.parse_args()), indent=2))


if __name__ == "__main__":
    main()
