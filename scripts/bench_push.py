"""Push notifications under load (issue 16): how many pushes per second the node sustains to
a local receiver, and what that load adds to the reference workload's send latency.

One sitting, one node process (``fedgram run`` on a fresh data folder, the reference
bench's config plus short coalescing windows), a real HTTP receiver in a process of its own
(scripts/push_receiver.py) on 127.0.0.1; pushes are counted by the node (``sent``, each a
POST the receiver answered 200):

1. **baseline**: the reference workload (scripts/bench.py: 11 members, 1,000 sequential
   + 5,000 concurrent sends), no push endpoint on the node;
2. **push load alone**: E offline devices (default 500), each with an endpoint on the
   receiver, all in one group; a loader sends to that group in a closed loop (paced to
   ``--rate`` messages/s). With ``coalesce_quiet`` 0.05 s and ``coalesce_max`` 0.2 s every
   endpoint is due a push about every 0.2 s (2,500/s for 500), more than the node can
   send: what it sends per second is what it sustains (a notification still queued takes
   the next one of its chat in, so the queue stays bounded);
3. **reference workload with push load**: 1 again while 2 runs.

    python3 scripts/bench_push.py [--endpoints 500] [--seconds 20] [--rate 50]

Prints ONE JSON document.
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio
from nacl.public import PrivateKey
from nacl.signing import SigningKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from node.client import Client
from node.client.admin import AdminClient
from scripts.bench import BENCH_CONFIG, NodeUnderTest, Proc, machine, reference_run
from scripts.node_process import start_node

PUSH_CONFIG = """
[push]
coalesce_quiet = 0.05
coalesce_max = 0.2
workers = 16
queue_max = 1000000
timeout = 5.0
"""


async def status(data: Path) -> dict[str, Any]:
    async with AdminClient.connect(data) as admin:
        st: dict[str, Any] = await admin.call("admin.status")
        return st


async def offline_endpoints(url: str, data: Path, n: int, receiver: str) -> list[str]:
    """N users, each with one device that registered an endpoint and went offline."""
    tag = secrets.token_hex(3)
    names = [f"p{tag}u{i}" for i in range(n)]
    async with AdminClient.connect(data) as admin:
        codes = []
        for name in names:
            await admin.call("admin.userAdd", {"name": name})
            codes.append((await admin.call("admin.userCode", {"name": name}))["code"])
    limit = trio.CapacityLimiter(16)

    async def one(i: int) -> None:
        async with limit, Client.connect(url) as c:
            await c.sign_in(names[i], codes[i], SigningKey.generate(), "phone")
            key = bytes(PrivateKey.generate().public_key)
            await c.call("account.registerPush", {"url": f"{receiver}/d{i}", "key": key})

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    return names


async def loader(c: Client, chat: str, rate: float, stop: trio.Event, sent: list[int]) -> None:
    """Send to the push group, paced to ``rate`` messages/s, until ``stop``."""
    gap = 1.0 / rate
    nxt = trio.current_time()
    while not stop.is_set():
        await c.call(
            "messages.send",
            {"chat": chat, "random_id": secrets.randbits(63), "text": f"load {sent[0]}"},
        )
        sent[0] += 1
        nxt += gap
        await trio.sleep(max(0.0, nxt - trio.current_time()))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"machine": machine(), "max_rate": args.max_rate}
    with tempfile.TemporaryDirectory(prefix="fedgram-bench-push-") as tmp:
        cfg = BENCH_CONFIG + PUSH_CONFIG + f"max_rate = {float(args.max_rate)}\n"
        proc, url, data = start_node(Path(tmp), cfg)
        nut = NodeUnderTest(argparse.Namespace(url=url, data=str(data)), Path(tmp))
        nut.pid = proc.pid
        node = Proc(proc.pid)
        rx = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("push_receiver.py"))],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert rx.stdout is not None
        receiver = f"http://127.0.0.1:{int(rx.stdout.readline())}"
        try:
            async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
                ref = await reference_run(nut, args.procs)
                out["baseline"] = _latency(ref)

                t0 = time.perf_counter()
                names = await offline_endpoints(url, data, args.endpoints, receiver)
                async with AdminClient.connect(data) as admin:
                    await admin.call("admin.userAdd", {"name": "pushowner"})
                    code = (await admin.call("admin.userCode", {"name": "pushowner"}))["code"]
                owner = await stack.enter_async_context(Client.connect(url))
                await owner.sign_in("pushowner", code, SigningKey.generate(), "bench")
                g = await owner.call("chats.createGroup", {"title": "load", "members": names})
                chat = g["chat"]["id"]
                setup_s = time.perf_counter() - t0

                # 2. push load alone
                stop, sent = trio.Event(), [0]
                nursery.start_soon(loader, owner, chat, args.rate, stop, sent)
                await trio.sleep(3.0)  # into the steady state
                c0, s0 = node.cpu_s(), await status(data)
                t_a = time.perf_counter()
                await trio.sleep(args.seconds)
                c1, s1 = node.cpu_s(), await status(data)
                t_b = time.perf_counter()
                pushed = s1["push"]["sent"] - s0["push"]["sent"]
                out["push_load"] = {
                    "endpoints": args.endpoints,
                    "loader_msgs_per_s": args.rate,
                    "setup_s": round(setup_s, 1),
                    "window_s": round(t_b - t_a, 1),
                    "pushes_per_s": round(pushed / (t_b - t_a), 1),
                    "loader_sent_per_s": round(sent[0] / (t_b - t_a + 3.0), 1),
                    "node_cpu_util": round((c1 - c0) / (t_b - t_a), 3),
                    "node_cpu_ms_per_push": round((c1 - c0) * 1000 / max(1, pushed), 3),
                    "queued_at_end": s1["push"]["queued"],
                    "pending_at_end": s1["push"]["pending"],
                    "dropped": s1["push"]["dropped"],
                    "failed": s1["push"]["failed"],
                }

                # 3. the reference workload while the push load runs
                s2, t_c = await status(data), time.perf_counter()
                ref2 = await reference_run(nut, args.procs)
                s3, t_d = await status(data), time.perf_counter()
                stop.set()
                out["with_push_load"] = {
                    **_latency(ref2),
                    "pushes_per_s_meanwhile": round(
                        (s3["push"]["sent"] - s2["push"]["sent"]) / (t_d - t_c), 1
                    ),
                }
                out["push_stats_end"] = (await status(data))["push"]
                nursery.cancel_scope.cancel()
        finally:
            proc.terminate()
            proc.wait(30)
            rx.kill()
            rx.wait()
    return out


def _latency(ref: dict[str, Any]) -> dict[str, Any]:
    """The figures of a reference run this bench compares."""
    return {
        "sequential_ack": ref["sequential"]["ack_latency"],
        "sequential_msgs_per_s": ref["sequential"]["msgs_per_s"],
        "concurrent_ack": ref["concurrent"]["ack_latency"],
        "concurrent_e2e": ref["concurrent"]["e2e_latency"],
        "concurrent_msgs_per_s": ref["concurrent"]["msgs_per_s"],
        "none_missing": ref["none_missing"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--endpoints", type=int, default=500, help="offline devices with endpoints")
    p.add_argument("--seconds", type=float, default=20.0, help="push-only measuring window")
    p.add_argument("--rate", type=float, default=50.0, help="loader messages/s to the group")
    p.add_argument("--procs", type=int, default=1, help="load processes (reference workload)")
    p.add_argument(
        "--max-rate",
        type=float,
        default=300.0,
        help="[push] max_rate of the node (the default, 300; 0: no cap, to see the capacity)",
    )
    print(json.dumps(trio.run(run, p.parse_args()), indent=2))


if __name__ == "__main__":
    main()
