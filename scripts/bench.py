"""The reference workload (issue 6), the same one Prosody and Synapse were measured on.

One group of 11 members: 10 senders and 1 listener, each its own user, device and SDK
connection. Bodies are exactly 100 ASCII bytes ``phase|sender|seq|t_ns|xxx...`` carrying the
send time. Warm-up of 50 messages (not counted), then:

1. sequential: sender 0 sends 1,000 messages, each waiting for its acknowledgement (the node
   answers ``messages.send`` only after the transaction committed: WAL + synchronous=FULL);
2. concurrent: the 10 senders in parallel, 500 each, each a closed loop.

The listener receives every message; end-to-end latency = receipt time - the send time in the
body. Every member receives every message: the senders drain their pushes too, and the
script counts those deliveries. Afterwards it reports the node's CPU (from /proc) per
message, its RSS, and counts the messages in the node's database.

Optional scale figures: ``--fanout N`` (a group of N online members, one sender at 50
msgs/s, delivery latency to all members) and ``--idle N`` (N idle signed-in connections,
node RSS per connection).

The node runs as its own process (``fedgram run`` on a fresh data folder) unless
``--url``/``--data`` name a running one; load clients run in this process (its CPU is
reported: on 2 cores, client and node share the machine).

    python3 scripts/bench.py [--runs 3] [--fanout 1000] [--idle 10000]

Prints ONE JSON document (medians with min-max when --runs > 1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio
from nacl.signing import SigningKey

# this checkout's code, whatever `pip install -e` elsewhere points at
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from node.client import Client
from node.client.admin import AdminClient
from scripts.light_receiver import LightReceiver

REPO = Path(__file__).resolve().parent.parent
BODY_LEN = 100
WARMUP = 50
SEQ_N = 1000
N_SENDERS = 10
CONC_TOTAL = 5000
CLK_TCK = os.sysconf("SC_CLK_TCK")
# lift per-name/IP sign-in limits: the bench signs in many devices from one address
BENCH_CONFIG = """
[node]
name = "bench"
listen = "127.0.0.1:0"
log_level = "warning"

[limits]
max_sessions = 30000

[ratelimit]
signin_per_name = "1000000/1"
signin_per_ip = "1000000/1"
code_per_name = "1000000/1"
code_per_ip = "1000000/1"
authorize_per_ip = "1000000/1"
"""


# --- measuring ------------------------------------------------------------------------------
def pct(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile, as the Prosody/Synapse baseline computes it."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100.0 * len(s) + 0.5) - 1))
    return s[k]


def lat(ms: list[float]) -> dict[str, Any]:
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 50) or 0, 3),
        "p90_ms": round(pct(ms, 90) or 0, 3),
        "p99_ms": round(pct(ms, 99) or 0, 3),
        "max_ms": round(max(ms), 3),
        "mean_ms": round(sum(ms) / len(ms), 3),
    }


class Proc:
    """CPU and memory of the node process from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu_s(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / CLK_TCK

    def _kib(self, key: str) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        return 0

    def rss_mib(self) -> float:
        return round(self._kib("VmRSS") / 1024, 1)

    def hwm_mib(self) -> float:
        return round(self._kib("VmHWM") / 1024, 1)


def client_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def make_body(phase: str, sender: int, seq: int) -> str:
    head = f"{phase}|{sender}|{seq}|{time.time_ns()}|"
    return head + "x" * (BODY_LEN - len(head))


class Collector:
    """What the listener (and, as a count, every other member) received."""

    def __init__(self) -> None:
        self.e2e: dict[tuple[str, int, int], float] = {}
        self.dups = 0
        self.member_deliveries: dict[str, int] = {}

    def got(self, text: str, t_recv_ns: int) -> None:
        parts = text.split("|", 4)
        if len(parts) != 5:
            return
        key = (parts[0], int(parts[1]), int(parts[2]))
        if key in self.e2e:
            self.dups += 1
            return
        self.e2e[key] = (t_recv_ns - int(parts[3])) / 1e6

    def phase(self, name: str) -> list[float]:
        return [v for k, v in self.e2e.items() if k[0] == name]


# --- the node -------------------------------------------------------------------------------
class NodeUnderTest:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.proc: subprocess.Popen[str] | None = None
        if args.url:
            self.url, self.data = args.url, Path(args.data)
            pid_file = self.data / "node.lock"
            self.pid = int(pid_file.read_text().split()[0]) if pid_file.exists() else 0
            return
        self.data = tmp / "node"
        cfg = tmp / "bench.toml"
        cfg.write_text(BENCH_CONFIG)
        cli = [sys.executable, "-m", "cli"]
        subprocess.run(
            [*cli, "init", "--data", str(self.data), "--config", str(cfg)],
            check=True,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
        )
        self.proc = subprocess.Popen(
            [*cli, "run", "--data", str(self.data)], stdout=subprocess.PIPE, text=True, cwd=REPO
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "listening on" in line:
                self.url = line.rsplit(" ", 1)[1].strip()
                break
        else:
            raise SystemExit(f"node did not start ({self.proc.wait()})")
        self.pid = self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)


async def sign_in_many(
    url: str, data: Path, names: list[str], stack: AsyncExitStack
) -> list[Client]:
    """Users created over the admin socket, each signed in on its own device."""
    clients: list[Client] = []
    async with AdminClient.connect(data) as admin:
        for name in names:
            await admin.call("admin.userAdd", {"name": name})
            code = (await admin.call("admin.userCode", {"name": name}))["code"]
            c = await stack.enter_async_context(Client.connect(url))
            await c.sign_in(name, code, SigningKey.generate(), "bench")
            clients.append(c)
    return clients


async def drain(c: Client, on_message: Callable[[str, int], None]) -> None:
    """Read a member's pushes for as long as it is connected."""
    async for u in c.updates():
        if u.get("type") == "chat.event":
            body = u["event"]["body"]
            if "text" in body:
                on_message(body["text"], time.time_ns())


# --- the reference workload ------------------------------------------------------------------
async def reference_run(nut: NodeUnderTest) -> dict[str, Any]:
    proc = Proc(nut.pid)
    collector = Collector()
    tag = secrets.token_hex(3)
    async with AsyncExitStack() as stack:
        t_setup = time.perf_counter()
        names = [f"b{tag}s{i}" for i in range(N_SENDERS)] + [f"b{tag}listener"]
        clients = await sign_in_many(nut.url, nut.data, names, stack)
        senders, listener = clients[:N_SENDERS], clients[N_SENDERS]
        group = await senders[0].call("chats.createGroup", {"title": "bench", "members": names[1:]})
        chat = group["chat"]["id"]
        setup_s = time.perf_counter() - t_setup
        nursery = await stack.enter_async_context(trio.open_nursery())
        nursery.start_soon(drain, listener, collector.got)
        for i, s in enumerate(senders):

            def count(text: str, _t: int, who: str = names[i]) -> None:
                collector.member_deliveries[who] = collector.member_deliveries.get(who, 0) + 1

            nursery.start_soon(drain, s, count)

        async def send_loop(i: int, phase: str, n: int, acks: list[float]) -> None:
            c = senders[i]
            for seq in range(n):
                body = make_body(phase, i, seq)
                t = time.perf_counter()
                await c.call(
                    "messages.send",
                    {"chat": chat, "random_id": secrets.randbits(63), "text": body},
                )
                acks.append((time.perf_counter() - t) * 1000)

        async def wait_listener(phase: str, n: int) -> None:
            with trio.move_on_after(60):
                while len(collector.phase(phase)) < n:
                    await trio.sleep(0.01)

        async def phase(
            name: str, run: Callable[[list[float]], Awaitable[None]], n: int
        ) -> dict[str, Any]:
            acks: list[float] = []
            c0, k0, t0 = proc.cpu_s(), client_cpu_s(), time.perf_counter()
            await run(acks)
            t1 = time.perf_counter()
            await wait_listener(name, n)
            c1, k1, t2 = proc.cpu_s(), client_cpu_s(), time.perf_counter()
            e2e = collector.phase(name)
            return {
                "messages": n,
                "elapsed_s": round(t1 - t0, 3),
                "msgs_per_s": round(n / (t1 - t0), 1),
                "ack_latency": lat(acks),
                "e2e_latency": lat(e2e),
                "listener_received": len(e2e),
                "listener_missing": n - len(e2e),
                "server_cpu_s": round(c1 - c0, 2),
                "server_cpu_ms_per_msg": round((c1 - c0) * 1000 / n, 3),
                "server_cpu_util": round((c1 - c0) / (t2 - t0), 3),
                "client_cpu_s": round(k1 - k0, 2),
                "client_cpu_util": round((k1 - k0) / (t2 - t0), 3),
            }

        cpu_start = proc.cpu_s()
        await send_loop(0, "warm", WARMUP, [])
        await wait_listener("warm", WARMUP)
        await trio.sleep(1.0)
        seq_res = await phase("seq", lambda acks: send_loop(0, "seq", SEQ_N, acks), SEQ_N)
        seq_res["server_rss_mib_after"] = proc.rss_mib()
        await trio.sleep(2.0)
        per = CONC_TOTAL // N_SENDERS

        async def concurrent(acks: list[float]) -> None:
            async with trio.open_nursery() as n:
                for i in range(N_SENDERS):
                    n.start_soon(send_loop, i, "conc", per, acks)

        conc_res = await phase("conc", concurrent, per * N_SENDERS)
        conc_res["senders"] = N_SENDERS
        await trio.sleep(0.5)
        total = WARMUP + SEQ_N + CONC_TOTAL
        # each sender gets every message of the others pushed (its own come back as acks)
        pushed_expected = {
            names[i]: total - (WARMUP + SEQ_N if i == 0 else 0) - per for i in range(N_SENDERS)
        }
        nursery.cancel_scope.cancel()
    stored = count_stored(nut.data, chat)
    return {
        "setup_s": round(setup_s, 2),
        "sequential": seq_res,
        "concurrent": conc_res,
        "listener_duplicates": collector.dups,
        "deliveries": {
            "per_message": 11,
            "listener_received": len(collector.e2e),
            "senders_received_all_pushes": all(
                collector.member_deliveries.get(k, 0) >= v for k, v in pushed_expected.items()
            ),
        },
        "stored_messages": stored,
        "expected_messages": total,
        "none_missing": stored == total,
        "server_cpu_s_workload": round(proc.cpu_s() - cpu_start, 2),
        "server_rss_mib_after": proc.rss_mib(),
        "server_peak_rss_mib": proc.hwm_mib(),
    }


def count_stored(data: Path, chat: str) -> int:
    """Messages of the bench chat in the node's database (read-only, beside the running node)."""
    conn = sqlite3.connect(f"file:{data / 'fedgram.db'}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT COUNT(*) FROM events WHERE chat_id = ? AND kind = 'message'", (chat,)
        ).fetchone()
        return int(row[0])
    finally:
        conn.close()


# --- scale figures ---------------------------------------------------------------------------
async def bind_devices(url: str, data: Path, names: list[str]) -> list[SigningKey]:
    """Create users and sign each in once on a new device key (closed again right away)."""
    keys: list[SigningKey] = []
    async with AdminClient.connect(data) as admin:
        for name in names:
            await admin.call("admin.userAdd", {"name": name})
            code = (await admin.call("admin.userCode", {"name": name}))["code"]
            key = SigningKey.generate()
            async with Client.connect(url) as c:
                await c.sign_in(name, code, key, "bench")
            keys.append(key)
    return keys


async def open_light(url: str, keys: list[SigningKey], per_key: int = 1) -> list[LightReceiver]:
    out: list[LightReceiver] = []
    limiter = trio.CapacityLimiter(64)

    async def one(key: SigningKey) -> None:
        async with limiter:
            out.append(await LightReceiver.connect(url, key))

    async with trio.open_nursery() as n:
        for key in keys:
            for _ in range(per_key):
                n.start_soon(one, key)
    return out


async def fanout_run(nut: NodeUnderTest, members: int, seconds: float) -> dict[str, Any]:
    """A group of N online members, one sender at 50 msgs/s: delivery latency to everyone.

    Receivers are :class:`LightReceiver` connections (signed in, then only timestamping
    frames), so the figure is the node's: from just before ``messages.send`` to the push
    arriving on each member's socket. Full SDK clients would measure Python decoding 50,000
    pushes a second on the same two cores instead."""
    proc = Proc(nut.pid)
    tag = secrets.token_hex(3)
    names = [f"f{tag}m{i}" for i in range(members)]
    n = int(seconds * 50)
    async with AsyncExitStack() as stack:
        (sender,) = await sign_in_many(nut.url, nut.data, names[:1], stack)
        keys = await bind_devices(nut.url, nut.data, names[1:])
        g = await sender.call("chats.createGroup", {"title": "fanout", "members": names[1:]})
        chat = g["chat"]["id"]
        receivers = await open_light(nut.url, keys)
        nursery = await stack.enter_async_context(trio.open_nursery())
        for r in receivers:
            nursery.start_soon(r.listen)
        await trio.sleep(1)
        sent_ns: list[int] = []
        c0, k0 = proc.cpu_s(), client_cpu_s()
        t0 = time.perf_counter()
        for i in range(n):
            await trio.sleep_until(t0 + i / 50)
            sent_ns.append(time.time_ns())
            await sender.call(
                "messages.send",
                {"chat": chat, "random_id": secrets.randbits(63), "text": make_body("fan", 0, i)},
            )
        with trio.move_on_after(30):
            while sum(len(r.arrivals) for r in receivers) < n * len(receivers):
                await trio.sleep(0.05)
        span = time.perf_counter() - t0
        c1, k1 = proc.cpu_s(), client_cpu_s()
        nursery.cancel_scope.cancel()
        for r in receivers:
            await r.aclose()
    # each member gets the pushes in send order, one frame each: the k-th frame is message k
    e2e = [(t - sent_ns[k]) / 1e6 for r in receivers for k, t in enumerate(r.arrivals[:n])]
    return {
        "members_online": members,
        "messages": n,
        "rate_msgs_per_s": 50,
        "deliveries_expected": n * (members - 1),
        "deliveries_received": len(e2e),
        "delivery_latency": lat(e2e),
        "server_cpu_util": round((c1 - c0) / span, 3),
        "client_cpu_util": round((k1 - k0) / span, 3),
        "server_rss_mib": proc.rss_mib(),
    }


async def idle_run(nut: NodeUnderTest, connections: int) -> dict[str, Any]:
    """N idle signed-in connections (100 per device): what each costs the node in RSS."""
    proc = Proc(nut.pid)
    tag = secrets.token_hex(3)
    names = [f"i{tag}u{i}" for i in range(max(1, connections // 100))]
    keys = await bind_devices(nut.url, nut.data, names)
    await trio.sleep(1)
    rss0 = proc.rss_mib()
    t0 = time.perf_counter()
    receivers = await open_light(nut.url, keys, per_key=connections // len(keys))
    connect_s = time.perf_counter() - t0
    await trio.sleep(2)
    rss1 = proc.rss_mib()
    for r in receivers:
        await r.aclose()
    return {
        "connections": len(receivers),
        "connect_s": round(connect_s, 2),
        "node_rss_mib_before": rss0,
        "node_rss_mib_with_connections": rss1,
        "node_rss_kib_per_connection": round((rss1 - rss0) * 1024 / len(receivers), 1),
    }


# --- runs and medians -----------------------------------------------------------------------
def median_of(runs: list[Any]) -> Any:
    """Medians (with min-max) of every number across runs; other values from the first run."""
    first = runs[0]
    if isinstance(first, dict):
        return {k: median_of([r[k] for r in runs]) for k in first}
    if isinstance(first, bool) or not isinstance(first, int | float) or len(runs) == 1:
        return first
    return {"median": round(statistics.median(runs), 3), "min": min(runs), "max": max(runs)}


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="fedgram-bench-") as tmp:
            nut = NodeUnderTest(args, Path(tmp))
            try:
                runs.append(await reference_run(nut))
            finally:
                nut.stop()
    if args.fanout:
        with tempfile.TemporaryDirectory(prefix="fedgram-bench-") as tmp:
            nut = NodeUnderTest(args, Path(tmp))
            try:
                extra["fanout"] = await fanout_run(nut, args.fanout, args.fanout_seconds)
            finally:
                nut.stop()
    if args.idle:
        with tempfile.TemporaryDirectory(prefix="fedgram-bench-") as tmp:
            nut = NodeUnderTest(args, Path(tmp))
            try:
                extra["idle"] = await idle_run(nut, args.idle)
            finally:
                nut.stop()
    out: dict[str, Any] = {
        "server": "fedgram",
        "workload": "11 members (10 senders + 1 listener), 100-byte bodies, 50 warm-up, "
        "1000 sequential + 5000 concurrent",
        "machine": machine(),
        "runs": args.runs,
    }
    if runs:
        out["result"] = median_of(runs)
    return {**out, **extra}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--runs", type=int, default=1, help="repeat; report medians with min-max (0: skip)"
    )
    p.add_argument("--url", help="use a running node (with --data for its admin socket)")
    p.add_argument("--data", help="the running node's data folder")
    p.add_argument("--fanout", type=int, default=0, help="also: a group of N online members")
    p.add_argument("--fanout-seconds", type=float, default=10.0)
    p.add_argument("--idle", type=int, default=0, help="also: N idle signed-in connections")
    args = p.parse_args()
    if bool(args.url) != bool(args.data):
        p.error("--url and --data go together")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(json.dumps(trio.run(main_async, args), indent=2))


if __name__ == "__main__":
    main()
