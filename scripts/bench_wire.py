"""Benchmark the wire: `system.ping` round trips through the whole node stack, against a bare
echo server on the same WebSocket layer (node/websocket.py), so the cost of our layers
(handshake-derived AEAD sealing, CBOR, schema validation, routing, rate limiting) shows as a
ratio.

Prints ONE JSON document. Both servers run as separate processes (the node through the real
``fedgram run``, the echo server through this script with ``--serve-echo``), and the clients
all run in this process, so the two cases share exactly the same client-side conditions. Each
client is a closed loop: the next request leaves when the previous answer is back.

    python3 scripts/bench_wire.py [--seconds 5] [--clients 1,10,100]

On a 2-core machine the client process and the server process compete for the same cores;
compare the two cases from the same run, not with old figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import trio

# this checkout's code, whatever `pip install -e` elsewhere points at
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from node import websocket
from node.client import Client
from scripts.node_process import start_node

# an echo payload about the size of a sealed system.ping request (CBOR envelope + 16-byte tag)
ECHO_PAYLOAD = bytes(48)


def percentile_ms(samples: list[float], q: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)


async def serve_echo(port_file: Path) -> None:
    """The baseline: accept, then send every binary message straight back."""

    async def handler(stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some(8192)
            if not chunk:
                return
            head += chunk
        ws = await websocket.accept(stream, head, max_message=1 << 20, handshake_budget=False)
        if ws is None:
            return
        try:
            while True:
                await ws.send(bytes(await ws.receive()))
        except Exception:
            return

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port_file.write_text(str(listeners[0].socket.getsockname()[1]))


@asynccontextmanager
async def _echo_client(url: str) -> AsyncIterator[websocket.WebSocket]:
    host, port = url.split("//", 1)[1].strip("/").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    ws = await websocket.connect(stream, f"{host}:{port}", "/", max_message=1 << 20)
    try:
        yield ws
    finally:
        await ws.aclose()


def start_echo(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port_file = tmp / "echo.port"
    proc = subprocess.Popen([sys.executable, __file__, "--serve-echo", str(port_file)])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text():
            return proc, f"ws://127.0.0.1:{port_file.read_text()}/"
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("echo server did not start")


def start_bench_node(tmp: Path) -> tuple[subprocess.Popen[str], str]:
    """A real node in a fresh data folder, with the per-IP ping limit lifted for the bench."""
    proc, url, _ = start_node(
        tmp,
        '[node]\nname = "bench"\nlisten = "127.0.0.1:0"\nlog_level = "warning"\n\n'
        '[ratelimit]\nsystem_per_ip = "100000000/1"\n',
    )
    return proc, url


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def closed_loops(
    clients: int,
    seconds: float,
    open_one: Callable[[], Any],
    round_trip: Callable[[Any], Awaitable[None]],
) -> dict[str, Any]:
    """Run ``clients`` closed loops for ``seconds`` after a short warm-up; gather latencies."""
    samples: list[float] = []
    measuring = False
    stop = trio.Event()

    async def one(ready: trio.Semaphore) -> None:
        async with open_one() as conn:
            for _ in range(20):  # warm-up
                await round_trip(conn)
            ready.release()
            while not stop.is_set():
                t0 = time.perf_counter()
                await round_trip(conn)
                if measuring and not stop.is_set():
                    samples.append(time.perf_counter() - t0)

    ready = trio.Semaphore(0, max_value=clients)
    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(one, ready)
        for _ in range(clients):
            await ready.acquire()
        measuring = True
        t0 = time.perf_counter()
        await trio.sleep(seconds)
        stop.set()
        elapsed = time.perf_counter() - t0
    return {
        "clients": clients,
        "round_trips": len(samples),
        "per_s": round(len(samples) / elapsed),
        "p50_ms": percentile_ms(samples, 0.50),
        "p99_ms": percentile_ms(samples, 0.99),
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    counts = [int(x) for x in args.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="fedgram-bench-wire-") as tmp_name:
        tmp = Path(tmp_name)
        echo_proc, echo_url = start_echo(tmp)
        node_proc, node_url = start_bench_node(tmp)
        try:

            def open_echo() -> Any:
                return _echo_client(echo_url)

            async def echo_rt(ws: Any) -> None:
                await ws.send(ECHO_PAYLOAD)
                await ws.receive()

            def open_node() -> Any:
                return Client.connect(node_url, pin=None)

            async def ping_rt(c: Client) -> None:
                await c.call("system.ping", {"ping_id": 7})

            results: dict[str, Any] = {"echo": [], "fedgram": []}
            node_cpu0 = cpu_seconds(node_proc.pid)
            for n in counts:
                results["echo"].append(await closed_loops(n, args.seconds, open_echo, echo_rt))
                results["fedgram"].append(await closed_loops(n, args.seconds, open_node, ping_rt))
            node_cpu = cpu_seconds(node_proc.pid) - node_cpu0
            pings = sum(r["round_trips"] for r in results["fedgram"])
        finally:
            for p in (echo_proc, node_proc):
                p.terminate()
                p.wait(15)
    ratios = {
        str(e["clients"]): round(f["per_s"] / e["per_s"], 3)
        for e, f in zip(results["echo"], results["fedgram"], strict=True)
    }
    return {
        "benchmark": "wire",
        "machine": {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "seconds_per_case": args.seconds,
        "echo": results["echo"],
        "fedgram_ping": results["fedgram"],
        "ratio_fedgram_to_echo": ratios,
        "target": "ratio >= 0.6 at 10 clients",
        "target_met": ratios.get("10", 0) >= 0.6 if "10" in ratios else None,
        "node_cpu_ms_per_ping": round(node_cpu * 1000 / max(pings, 1), 4),
        "client_process_cpu_s": round(resource.getrusage(resource.RUSAGE_SELF).ru_utime, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per case")
    p.add_argument("--clients", default="1,10,100", help="comma-separated client counts")
    p.add_argument("--serve-echo", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_echo:
        trio.run(serve_echo, args.serve_echo)
        return
    print(json.dumps(trio.run(bench, args), indent=2))


if __name__ == "__main__":
    main()
