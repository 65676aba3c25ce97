"""Media throughput: upload and download a large file over loopback through the real node.

Starts a node (`fedgram run`, fresh data folder) in its own process, writes a file of
``--mib`` random MiB (default 1024) in a temp folder, uploads it with the SDK
(``upload_file``: 512 KiB parts, ``--parallel`` in flight), downloads it back
(``download_file``), checks the SHA-256, and samples the node's RSS during both transfers
(streaming, not buffering, keeps it flat). Prints ONE JSON document.

    python3 scripts/bench_media.py [--mib 1024] [--parallel 8]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from nacl.signing import SigningKey

# this checkout's code, whatever `pip install -e` elsewhere points at
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from node.client import Client
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


def make_file(path: Path, mib: int) -> str:
    h = hashlib.sha256()
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(mib):
            chunk = block[i % 251 :] + block[: i % 251]  # distinct MiBs, cheap to make
            h.update(chunk)
            f.write(chunk)
    return h.hexdigest()


async def measure(
    pid: int, fn: Any, *args: Any, **kw: Any
) -> tuple[float, float, list[float], float]:
    """Run a transfer while sampling the node's RSS every 50 ms."""
    samples: list[float] = []
    done = trio.Event()

    async def sample() -> None:
        while not done.is_set():
            samples.append(rss_mib(pid))
            await trio.sleep(0.05)

    c0 = cpu_s(pid)
    async with trio.open_nursery() as n:
        n.start_soon(sample)
        t0 = time.perf_counter()
        await fn(*args, **kw)
        elapsed = time.perf_counter() - t0
        done.set()
    return elapsed, cpu_s(pid) - c0, samples, time.perf_counter()


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
        try:
            async with AdminClient.connect(data) as admin:
                await admin.call("admin.userAdd", {"name": "bench"})
                code = (await admin.call("admin.userCode", {"name": "bench"}))["code"]
            rss_idle = rss_mib(node.pid)
            async with Client.connect(url) as c:
                await c.sign_in("bench", code, SigningKey.generate(), "bench")
                info: dict[str, Any] = {}

                async def up() -> None:
                    info.update(await upload_file(c, src, "bench", parallel=args.parallel))

                up_s, up_cpu, up_rss, _ = await measure(node.pid, up)
                assert info["sha256"] == sha
                out = tmp / "copy.bin"
                down_s, down_cpu, down_rss, _ = await measure(
                    node.pid, download_file, c, info["media_id"], out, parallel=args.parallel
                )
                rss_after = rss_mib(node.pid)
            ok = await trio.to_thread.run_sync(
                lambda: hashlib.sha256(out.read_bytes()).hexdigest() == sha
            )
        finally:
            node.terminate()
            node.wait(30)
    mb = args.mib * (1 << 20) / 1e6
    return {
        "benchmark": "media",
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version()},
        "file_mib": args.mib,
        "part_kib": 512,
        "parts_in_flight": args.parallel,
        "upload": {
            "seconds": round(up_s, 2),
            "mb_per_s": round(mb / up_s, 1),
            "node_cpu_s": round(up_cpu, 2),
            "node_rss_mib_max": max(up_rss),
            "node_rss_mib_min": min(up_rss),
        },
        "download": {
            "seconds": round(down_s, 2),
            "mb_per_s": round(mb / down_s, 1),
            "node_cpu_s": round(down_cpu, 2),
            "node_rss_mib_max": max(down_rss),
            "node_rss_mib_min": min(down_rss),
        },
        "node_rss_mib_idle": rss_idle,
        "node_rss_mib_after": rss_after,
        "sha256_verified": ok,
        "client_cpu_s": round(resource.getrusage(resource.RUSAGE_SELF).ru_utime, 2),
        "target": ">= 100 MB/s each way",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mib", type=int, default=1024, help="file size in MiB")
    p.add_argument("--parallel", type=int, default=8, help="parts in flight")
    print(json.dumps(trio.run(run, p.parse_args()), indent=2))


if __name__ == "__main__":
    main()
