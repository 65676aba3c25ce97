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
from typing import Any, TypeVar

import trio
from nacl.signing import SigningKey

# this checkout's code, whatever `pip install -e` elsewhere points at
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from node.client import Client
from node.client.admin import AdminClient
from scripts.light_receiver import LightReceiver
from scripts.node_process import REPO, start_node

T = TypeVar("T")
BODY_LEN = 100
WARMUP = 50
SEQ_N = 1000
N_SENDERS = 10
CONC_TOTAL = 5000
SEND_INFLIGHT = 32  # the fan-out sender's unanswered sends at most (under the node's max_inflight)
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
        self.proc, self.url, self.data = start_node(tmp, BENCH_CONFIG)
        self.pid = self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)


async def sign_in_many(
    url: str, data: Path, names: list[str], stack: AsyncExitStack, create: bool = True
) -> list[Client]:
    """Users (created over the admin socket unless they exist), each signed in on its own
    new device."""
    clients: list[Client] = []
    async with AdminClient.connect(data) as admin:
        for name in names:
            if create:
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
# The members live in load-worker processes (``--procs``, default 3): sender 0, whose acks
# are the sequential phase's critical path, alone in the first; the other nine senders and
# the listener spread over the rest. The coordinator (this process) sets up, starts each
# phase and collects the figures; workers talk JSON lines over stdin/stdout.


def assign(procs: int) -> list[list[int]]:
    """Member indexes per worker: 0..9 are senders, 10 the listener."""
    if procs <= 1:
        return [list(range(N_SENDERS + 1))]
    rest = list(range(1, N_SENDERS + 1))
    return [[0]] + [rest[i :: procs - 1] for i in range(procs - 1)]


async def load_worker(args: argparse.Namespace) -> None:
    """One load process: sign in its members, drain their pushes, run send loops on
    command, report acks, listener latencies and deliveries."""
    spec = json.loads(args.load_worker)
    names: dict[int, str] = {int(k): v for k, v in spec["names"].items()}
    chat: str = spec["chat"]
    collector = Collector()
    stdin = trio.lowlevel.FdStream(os.dup(0))
    lines = _lines(stdin)

    def out(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    async with AsyncExitStack() as stack:
        clients = dict(
            zip(
                names,
                await sign_in_many(
                    args.url, Path(args.data), list(names.values()), stack, create=False
                ),
                strict=True,
            )
        )
        nursery = await stack.enter_async_context(trio.open_nursery())
        for i, c in clients.items():
            if i == N_SENDERS:
                nursery.start_soon(drain, c, collector.got)
            else:

                def count(_text: str, _t: int, who: str = names[i]) -> None:
                    d = collector.member_deliveries
                    d[who] = d.get(who, 0) + 1

                nursery.start_soon(drain, c, count)

        async def send_loop(i: int, phase: str, n: int, acks: list[float]) -> None:
            c = clients[i]
            for seq in range(n):
                body = make_body(phase, i, seq)
                t = time.perf_counter()
                params = {"chat": chat, "random_id": secrets.randbits(63), "text": body}
                await c.call("messages.send", params)
                acks.append((time.perf_counter() - t) * 1000)

        out({"ready": True})
        k0 = client_cpu_s()
        async for line in lines:
            cmd = json.loads(line)
            if cmd["cmd"] == "send":
                acks: list[float] = []
                async with trio.open_nursery() as n:
                    for i in cmd["senders"]:
                        n.start_soon(send_loop, i, cmd["phase"], cmd["n"], acks)
                out({"acks": acks})
            elif cmd["cmd"] == "wait":
                with trio.move_on_after(60):
                    while len(collector.phase(cmd["phase"])) < cmd["n"]:
                        await trio.sleep(0.005)
                out({"e2e": collector.phase(cmd["phase"])})
            elif cmd["cmd"] == "stop":
                await trio.sleep(0.5)
                out(
                    {
                        "deliveries": collector.member_deliveries,
                        "dups": collector.dups,
                        "listener_received": len(collector.e2e),
                        "cpu_s": client_cpu_s() - k0,
                    }
                )
                nursery.cancel_scope.cancel()
                return


async def _lines(stream: trio.abc.ReceiveStream) -> Any:
    buf = b""
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode()


class JsonWorker:
    """A load process the coordinator speaks to in JSON lines over its stdin/stdout (the
    load runs in its own process so its CPU is not the node's, nor the coordinator's)."""

    def __init__(self, argv: list[str], label: str) -> None:
        self.label = label
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )

    async def ask(self, cmd: dict[str, Any] | None) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if cmd is not None:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        line = await trio.to_thread.run_sync(self.proc.stdout.readline)
        if not line:
            raise SystemExit(f"load worker {self.label} died ({self.proc.wait()})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def cpu_s(self) -> float:
        return Proc(self.proc.pid).cpu_s()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Worker(JsonWorker):
    """One load process of the reference workload: some of the group's members."""

    def __init__(self, nut: NodeUnderTest, names: dict[int, str], chat: str) -> None:
        spec = json.dumps({"names": names, "chat": chat})
        self.members = sorted(names)
        argv = [__file__, "--load-worker", spec, "--url", nut.url, "--data", str(nut.data)]
        super().__init__(argv, str(self.members))


async def reference_run(nut: NodeUnderTest, procs: int) -> dict[str, Any]:
    proc = Proc(nut.pid)
    tag = secrets.token_hex(3)
    names = {i: f"b{tag}s{i}" for i in range(N_SENDERS)} | {N_SENDERS: f"b{tag}listener"}
    t_setup = time.perf_counter()
    async with AsyncExitStack() as stack:
        (owner,) = await sign_in_many(nut.url, nut.data, [names[0]], stack)
        async with AdminClient.connect(nut.data) as admin:
            for i in range(1, N_SENDERS + 1):
                await admin.call("admin.userAdd", {"name": names[i]})
        members = [names[i] for i in range(1, N_SENDERS + 1)]
        group = await owner.call("chats.createGroup", {"title": "bench", "members": members})
        chat = group["chat"]["id"]
    workers = [Worker(nut, {i: names[i] for i in share}, chat) for share in assign(procs)]
    try:
        for w in workers:
            await w.ask(None)  # ready
        setup_s = time.perf_counter() - t_setup
        by_sender = {i: w for w in workers for i in w.members if i < N_SENDERS}
        listener = next(w for w in workers if N_SENDERS in w.members)

        async def send(phase: str, per_sender: int, senders: list[int]) -> list[float]:
            acks: list[float] = []

            async def one(w: Worker, mine: list[int]) -> None:
                r = await w.ask({"cmd": "send", "phase": phase, "n": per_sender, "senders": mine})
                acks.extend(r["acks"])

            async with trio.open_nursery() as n:
                for w in workers:
                    mine = [i for i in senders if by_sender.get(i) is w]
                    if mine:
                        n.start_soon(one, w, mine)
            return acks

        def cpu_all() -> float:
            return sum(w.cpu_s() for w in workers)

        async def phase(name: str, per_sender: int, senders: list[int]) -> dict[str, Any]:
            total = per_sender * len(senders)
            c0, k0, t0 = proc.cpu_s(), cpu_all(), time.perf_counter()
            acks = await send(name, per_sender, senders)
            t1 = time.perf_counter()
            e2e = (await listener.ask({"cmd": "wait", "phase": name, "n": total}))["e2e"]
            c1, k1, t2 = proc.cpu_s(), cpu_all(), time.perf_counter()
            return {
                "messages": total,
                "elapsed_s": round(t1 - t0, 3),
                "msgs_per_s": round(total / (t1 - t0), 1),
                "ack_latency": lat(acks),
                "e2e_latency": lat(e2e),
                "listener_received": len(e2e),
                "listener_missing": total - len(e2e),
                "server_cpu_s": round(c1 - c0, 2),
                "server_cpu_ms_per_msg": round((c1 - c0) * 1000 / total, 3),
                "server_cpu_util": round((c1 - c0) / (t2 - t0), 3),
                "client_cpu_s": round(k1 - k0, 2),
                "client_cpu_util": round((k1 - k0) / (t2 - t0), 3),
            }

        cpu_start = proc.cpu_s()
        await phase("warm", WARMUP, [0])
        await trio.sleep(1.0)
        seq_res = await phase("seq", SEQ_N, [0])
        seq_res["server_rss_mib_after"] = proc.rss_mib()
        await trio.sleep(2.0)
        per = CONC_TOTAL // N_SENDERS
        conc_res = await phase("conc", per, list(range(N_SENDERS)))
        conc_res["senders"] = N_SENDERS
        reports = [await w.ask({"cmd": "stop"}) for w in workers]
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.proc.kill()
            w.proc.wait()
    total = WARMUP + SEQ_N + CONC_TOTAL
    deliveries = {k: v for r in reports for k, v in r["deliveries"].items()}
    # every sender gets every other member's message pushed; its own come back as acks
    expected = {names[i]: total - (WARMUP + SEQ_N if i == 0 else 0) - per for i in range(N_SENDERS)}
    stored = count_stored(nut.data, chat)
    return {
        "setup_s": round(setup_s, 2),
        "load_processes": len(workers),
        "sequential": seq_res,
        "concurrent": conc_res,
        "listener_duplicates": sum(r["dups"] for r in reports),
        "deliveries": {
            "per_message": N_SENDERS + 1,
            "listener_received": sum(r["listener_received"] for r in reports),
            "every_sender_received_every_other_message": all(
                deliveries.get(k, 0) >= v for k, v in expected.items()
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


async def fanout_run(
    nut: NodeUnderTest,
    members: int,
    seconds: float,
    procs: int = 2,
    rate: float = 50.0,
) -> dict[str, Any]:
    """A group of N online members, one sender at RATE msgs/s: delivery latency to everyone.

    The sender is an open loop: message k leaves at t0 + k/RATE on trio's clock whether or
    not the earlier ones were answered (up to ``SEND_INFLIGHT`` unanswered; the figure says
    if that held it back). Until issue 17's third session the pacing compared perf_counter
    with trio's clock, which has another origin, so it never slept: each send waited only
    for the previous answer, and "50 msgs/s" was ~20 with 1,000 members.

    Receivers are :class:`LightReceiver` connections (signed in, then only counting
    updates), so the figure is the node's: from just before ``messages.send`` to the push
    arriving on each member's socket. Full SDK clients would measure Python decoding 50,000
    pushes a second on the same two cores instead. With ``procs`` > 0 the receivers run in
    that many processes of their own (scripts/light_receiver.py), where the arrival is the
    kernel's receive time stamp (``delivery_latency``) and the time the receiver had read
    the frame is reported beside it (``delivery_latency_read``: it adds the receivers' own
    queueing on the shared cores)."""
    proc = Proc(nut.pid)
    tag = secrets.token_hex(3)
    names = [f"f{tag}m{i}" for i in range(members)]
    n = int(seconds * rate)
    async with AsyncExitStack() as stack:
        (sender,) = await sign_in_many(nut.url, nut.data, names[:1], stack)
        keys = await bind_devices(nut.url, nut.data, names[1:])
        g = await sender.call("chats.createGroup", {"title": "fanout", "members": names[1:]})
        chat = g["chat"]["id"]
        workers: list[trio.Process] = []
        receivers: list[LightReceiver] = []
        nursery = await stack.enter_async_context(trio.open_nursery())
        if procs > 0:
            for part in range(procs):
                w = await trio.lowlevel.open_process(
                    [sys.executable, str(Path(__file__).parent / "light_receiver.py")],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    cwd=Path(__file__).resolve().parent.parent,
                    env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
                )
                seeds = [bytes(k).hex() for k in keys[part::procs]]
                cfg = {
                    "url": nut.url,
                    "seeds": seeds,
                    "expected": n,
                    "timeout": seconds + 30,
                }
                assert w.stdin is not None
                await w.stdin.send_all((json.dumps(cfg) + "\n").encode())
                workers.append(w)
            for w in workers:
                assert w.stdout is not None
                line = await _read_line(w.stdout)
                assert line.strip() == b"ready", line
        else:
            receivers = await open_light(nut.url, keys)
            for r in receivers:
                nursery.start_soon(r.listen)
        await trio.sleep(1)
        sent_ns: list[int] = [0] * n
        acks: list[float] = []
        late: list[float] = []  # how far behind its time each send started
        room = trio.CapacityLimiter(SEND_INFLIGHT)

        async def send(i: int) -> None:
            t = time.perf_counter()
            sent_ns[i] = time.time_ns()
            body = make_body("fan", 0, i)
            try:
                await sender.call(
                    "messages.send", {"chat": chat, "random_id": secrets.randbits(63), "text": body}
                )
            finally:
                room.release_on_behalf_of(i)
            acks.append((time.perf_counter() - t) * 1000)

        c0, k0 = proc.cpu_s(), client_cpu_s()
        w0 = sum(Proc(w.pid).cpu_s() for w in workers)
        t0 = time.perf_counter()
        tick0 = trio.current_time()  # trio's clock, not perf_counter: it has its own origin
        async with trio.open_nursery() as sends:
            for i in range(n):
                await trio.sleep_until(tick0 + i / rate)
                await room.acquire_on_behalf_of(i)
                late.append((trio.current_time() - (tick0 + i / rate)) * 1000)
                sends.start_soon(send, i)
            last_start = trio.current_time() - tick0
        arrivals: list[list[int]] = []
        read: list[list[int]] = []
        if workers:
            w1 = sum(Proc(w.pid).cpu_s() for w in workers)  # before they print and exit
            for w in workers:
                assert w.stdout is not None
                for got, seen in json.loads(await _read_line(w.stdout, limit=1 << 30)):
                    arrivals.append(got)
                    read.append(seen)
                await w.wait()
        else:
            with trio.move_on_after(30):
                while sum(len(r.arrivals) for r in receivers) < n * len(receivers):
                    await trio.sleep(0.05)
            w1 = w0
            arrivals = read = [r.arrivals for r in receivers]
        span = time.perf_counter() - t0
        c1, k1 = proc.cpu_s(), client_cpu_s()
        nursery.cancel_scope.cancel()
        for r in receivers:
            await r.aclose()

    # each member gets the pushes in send order, one update per message: the k-th is message k
    def since_sent(times: list[list[int]]) -> list[float]:
        return [(t - sent_ns[k]) / 1e6 for ts in times for k, t in enumerate(ts[:n])]

    e2e = since_sent(arrivals)
    return {
        "members_online": members,
        "messages": n,
        "rate_msgs_per_s": rate,
        "sent_msgs_per_s": round((n - 1) / last_start, 1) if n > 1 else 0.0,
        "send_started_late_ms": lat(late),
        "send_ack_latency": lat(acks),
        "receiver_processes": procs,
        "deliveries_expected": n * (members - 1),
        "deliveries_received": len(e2e),
        "delivery_latency": lat(e2e),
        "delivery_latency_read": lat(since_sent(read)),
        "server_cpu_util": round((c1 - c0) / span, 3),
        "server_cpu_ms_per_msg": round((c1 - c0) * 1000 / n, 2),
        "client_cpu_util": round((k1 - k0) / span, 3),
        "receiver_processes_cpu_util": round((w1 - w0) / span, 3),
        "server_rss_mib": proc.rss_mib(),
    }


async def _read_line(stream: trio.abc.ReceiveStream, limit: int = 1 << 16) -> bytes:
    buf = b""
    while not buf.endswith(b"\n") and len(buf) < limit:
        chunk = await stream.receive_some(1 << 20)
        if not chunk:
            break
        buf += chunk
    return buf


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


async def on_fresh_node(args: argparse.Namespace, fn: Callable[[NodeUnderTest], Awaitable[T]]) -> T:
    """Run one measurement against a node started for it (or the running one: --url)."""
    with tempfile.TemporaryDirectory(prefix="fedgram-bench-") as tmp:
        nut = NodeUnderTest(args, Path(tmp))
        try:
            return await fn(nut)
        finally:
            nut.stop()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    runs = [
        await on_fresh_node(args, lambda nut: reference_run(nut, args.procs))
        for _ in range(args.runs)
    ]
    extra: dict[str, Any] = {}
    if args.fanout:
        extra["fanout"] = await on_fresh_node(
            args,
            lambda nut: fanout_run(
                nut,
                args.fanout,
                args.fanout_seconds,
                args.fanout_procs,
                args.fanout_rate,
            ),
        )
    if args.idle:
        extra["idle"] = await on_fresh_node(args, lambda nut: idle_run(nut, args.idle))
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
    p.add_argument(
        "--fanout-procs",
        type=int,
        default=2,
        help="processes for the fan-out receivers (0: in this process, as before issue 17)",
    )
    p.add_argument(
        "--fanout-rate", type=float, default=50.0, help="messages per second to the fan-out group"
    )
    p.add_argument("--procs", type=int, default=1, help="load processes for the reference workload")
    p.add_argument("--load-worker", help=argparse.SUPPRESS)
    p.add_argument("--idle", type=int, default=0, help="also: N idle signed-in connections")
    args = p.parse_args()
    if bool(args.url) != bool(args.data):
        p.error("--url and --data go together")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.load_worker:
        trio.run(load_worker, args)
        return
    print(json.dumps(trio.run(main_async, args), indent=2))


if __name__ == "__main__":
    main()
