"""Federation benchmark: real node processes (federation/cluster.py), load in its own process.

Phases (each prints into ONE JSON document on stdout):

1. ``lag``: three nodes n1..n3, one group homed on n1 with members on all three
   (``--senders-per-node`` senders + 1 listener per node). Open loop: message k is due at
   t0 + k/RATE for each rate in ``--rates`` (``--seconds`` each), round-robin over all senders
   of all nodes. Bodies are 100 bytes ``phase|sender_node|sender|k|t_ns|xxx`` carrying the send
   time; lag = receipt time at a listener - that time, per (sender node -> listener node),
   overall across nodes (sender node != listener node), for the same node and by path
   (``lag_by_path``: home_local, home_to_replica, replica_to_home, replica_to_itself,
   replica_to_replica). A message of a replica's user goes: outbox -> fed.post -> home
   sequences it -> poke with the events (a live replica; else poke, then a pull) -> each
   replica verifies and applies them -> push. The load is split over ``--procs`` processes
   (2 by default: one could not keep a 500 msgs/s schedule here). Lost = acknowledged
   messages a listener never received (counted after a drain wait, and again at the very
   end). ``fed_calls_answered``: fed.poke / fed.pull / fed.post each node answered (its
   /metrics), so a run shows whether replicas were pushed to or pulled.
2. ``tput``: the same group, its senders in closed loops (one call in flight each) for
   ``--tput-seconds``; msgs/s sequenced at the home (n1's SQLite, read-only) during the window
   and until every acknowledged message is sequenced; against the same number of senders and
   listeners in a group whose members are all on n1. Target: cross-node >= 50% of one node.
3. ``catchup``: a chat homed on n1 with a member on n2; n2 is killed (SIGKILL) while
   ``--catchup-events`` messages are added on n1 (4 senders, ``--flood-inflight`` calls in
   flight each), then restarted; events/s from the restart until n2's chain head (its
   SQLite, read-only) equals the home's. Target >= 20,000 events/s.
4. ``bytes``: a second cluster of two nodes; n2's link to n1 runs through
   federation/faultproxy.py (its own process; n1's ``[federation] public_url`` is the proxy, so
   n1's fed.hello keeps n2 dialling the proxy). Bytes both ways on that link (n2's pulls and
   their answers; n1's pokes travel on n1's own link to n2 and are not counted) divided by the
   events replicated: live (one sender on n1 at ``--bytes-rate``) and in catch-up batches.
5. ``assist``: a third cluster; with the home n1 stopped, a replica (n3) that missed
   ``--assist-events`` events fills the gap from another replica (n2): events/s; then
   ``--assist-queued`` posts queued on n2 while n1 is down: seconds from n1's restart until
   the last of them is sequenced.

CPU per node (and of the load process) per phase from /proc/PID/stat (utime+stime).

    python3 scripts/bench_federation.py                  # full run, a few minutes on 2 cores
    python3 scripts/bench_federation.py --quick          # ~30 s smoke run (not run by CI)
    python3 scripts/bench_federation.py --median a.json b.json c.json   # medians of runs
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio
from nacl.signing import SigningKey

# this checkout's code, whatever `pip install -e` elsewhere points at
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from federation.cluster import Cluster  # noqa: E402
from node import config  # noqa: E402
from node.client import Client  # noqa: E402
from node.protocol.errors import RpcError  # noqa: E402
from node.ratelimit import DEFAULT_RULES  # noqa: E402
from scripts.bench import JsonWorker, Proc, _lines, lat, machine, median_of  # noqa: E402

BODY_LEN = 100
POLL = 0.02  # seconds between looks at a node's SQLite
DRAIN_TIMEOUT = 30.0
# a benchmark signs in many devices and sends thousands of calls per device: lift the limits
BENCH_EXTRA: dict[str, dict[str, Any]] = {
    "limits": {"max_sessions": 30000, "max_inflight": 256},
    "ratelimit": {name: "1000000/1" for name in DEFAULT_RULES},
}


# --- small helpers ----------------------------------------------------------------------------
def head_seq(data: Path, chat_id: str) -> int:
    """The chat's chain head in a node's database (read-only; 0 if absent or unreadable)."""
    try:
        conn = sqlite3.connect(f"file:{data / 'fedgram.db'}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return 0
    try:
        row = conn.execute("SELECT max(seq) FROM events WHERE chat_id = ?", (chat_id,)).fetchone()
        return int(row[0] or 0)
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def sql(data: Path, query: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{data / 'fedgram.db'}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(query, args).fetchall()
    finally:
        conn.close()


def make_body(phase: str, node: int, sender: int, k: int) -> str:
    head = f"{phase}|{node}|{sender}|{k}|{time.time_ns()}|"
    return head + "x" * (BODY_LEN - len(head))


FED_CALLS = ("fed.poke", "fed.pull", "fed.post")


def fed_calls(url: str) -> dict[str, int]:
    """fed.poke / fed.pull / fed.post calls a node answered OK so far, from its /metrics
    (``fedgram_requests_total``; loopback may scrape by default). Empty if unreachable."""
    import urllib.request

    http = url.replace("ws://", "http://", 1).rstrip("/") + "/metrics"
    try:
        with urllib.request.urlopen(http, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = dict.fromkeys(FED_CALLS, 0)
    for line in text.splitlines():
        if line.startswith("fedgram_requests_total{") and 'code="OK"' in line:
            for m in FED_CALLS:
                if f'method="{m}"' in line:
                    out[m] = int(float(line.rsplit(" ", 1)[1]))
    return out


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat (idle and iowait are not busy)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)


def medians(runs: list[Any]) -> Any:
    """scripts/bench.py's median_of over the keys every run has (older runs may lack some)."""
    if isinstance(runs[0], dict):
        keys = [k for k in runs[0] if all(isinstance(r, dict) and k in r for r in runs)]
        return {k: medians([r[k] for r in runs]) for k in keys}
    return median_of(runs)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class CpuMeter:
    """utime+stime deltas of named processes (nodes, load workers, proxy)."""

    def __init__(self, procs: dict[str, int]) -> None:
        self.pids = dict(procs)
        self.t0 = time.perf_counter()
        self.c0 = {k: self._cpu(p) for k, p in self.pids.items()}
        self.m0 = machine_ticks()

    @staticmethod
    def _cpu(pid: int) -> float:
        try:
            return Proc(pid).cpu_s()
        except (OSError, IndexError):
            return 0.0

    def read(self, *, restarted: dict[str, int] | None = None) -> dict[str, Any]:
        """CPU seconds and share of a core since construction. ``restarted``: processes
        that were replaced meanwhile (their whole CPU counts, from 0)."""
        span = time.perf_counter() - self.t0
        out: dict[str, Any] = {}
        for k, pid in self.pids.items():
            if restarted and k in restarted:
                used = self._cpu(restarted[k])
            else:
                used = self._cpu(pid) - self.c0[k]
            out[k] = {"cpu_s": round(used, 2), "cpu_util": round(used / span, 3)}
        busy, total = (b - a for a, b in zip(self.m0, machine_ticks(), strict=True))
        cores = os.cpu_count() or 1
        ours = sum(v["cpu_util"] for v in out.values())
        # the whole machine (every session on it): busy cores, and what was not ours
        out["machine_busy_cores"] = round(cores * busy / max(1, total), 2)
        out["others_cores"] = round(max(0.0, cores * busy / max(1, total) - ours), 2)
        return out


# --- the load process ---------------------------------------------------------------------------
# Members live in load-worker processes (``--procs``). The coordinator (this process) sets up,
# starts each phase and computes the figures; workers speak JSON lines on stdin/stdout.


class Listener:
    """What one listener received: (phase, sender node, sender, k) -> lag in ms."""

    def __init__(self, node: int) -> None:
        self.node = node
        self.got: dict[tuple[str, int, int, int], float] = {}
        self.dups = 0

    def on_text(self, text: str, t_ns: int) -> None:
        parts = text.split("|", 5)
        if len(parts) != 6:
            return
        try:
            key = (parts[0], int(parts[1]), int(parts[2]), int(parts[3]))
            sent = int(parts[4])
        except ValueError:
            return
        if key in self.got:
            self.dups += 1
        else:
            self.got[key] = (t_ns - sent) / 1e6


async def load_worker(spec_text: str) -> None:
    spec = json.loads(spec_text)
    members: dict[str, dict[str, Any]] = {m["key"]: m for m in spec["members"]}
    clients: dict[str, Client] = {}
    listeners: dict[str, Listener] = {}
    deliveries = {"n": 0}
    stdin = trio.lowlevel.FdStream(os.dup(0))

    def out(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    async def drain(key: str, c: Client) -> None:
        lst = listeners.get(key)
        async for u in c.updates():
            if u.get("type") != "chat.event":
                continue
            text = u.get("event", {}).get("body", {}).get("text")
            if not isinstance(text, str):
                continue
            if lst is not None:
                lst.on_text(text, time.time_ns())
            else:
                deliveries["n"] += 1

    async def send(key: str, chat: str, text: str) -> None:
        p = {"chat": chat, "random_id": secrets.randbits(63), "text": text}
        await clients[key].call("messages.send", p, timeout=120)

    async with AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        for key, m in members.items():
            c = await stack.enter_async_context(Client.connect(m["url"]))
            await c.sign_in(m["name"], m["code"], SigningKey.generate(), "bench")
            clients[key] = c
            if m["role"] == "listener":
                listeners[key] = Listener(int(m["node"]))
            nursery.start_soon(drain, key, c)
        out({"ready": True})
        async for line in _lines(stdin):
            cmd = json.loads(line)
            what = cmd["cmd"]
            if what == "rate":
                out(await _open_loop(cmd, members, send))
            elif what == "closed":
                out(await _closed_loop(cmd, send))
            elif what == "flood":
                out(await _flood(cmd, send))
            elif what == "count":
                ph = cmd["phase"]
                out({k: sum(1 for x in lst.got if x[0] == ph) for k, lst in listeners.items()})
            elif what == "collect":
                ph = cmd["phase"]
                out(
                    {
                        k: {
                            "node": lst.node,
                            "dups": lst.dups,
                            "got": [[*x[1:], v] for x, v in lst.got.items() if x[0] == ph],
                        }
                        for k, lst in listeners.items()
                    }
                )
            elif what == "stop":
                out({"deliveries_to_senders": deliveries["n"]})
                nursery.cancel_scope.cancel()
                return


def _trio_time(wall: float) -> float:
    return trio.current_time() + (wall - time.time())


async def _open_loop(cmd: dict[str, Any], members: dict[str, Any], send: Any) -> dict[str, Any]:
    """Message k is due at t0 + k/rate from sender k % len(order) (the global schedule);
    this worker sends those of its own senders, each in its own task (open loop)."""
    order: list[str] = cmd["order"]
    rate, n, chat, phase = float(cmd["rate"]), int(cmd["n"]), cmd["chat"], cmd["phase"]
    t0 = _trio_time(cmd["t0"])
    acked: dict[str, int] = {}
    ack_ms: list[float] = []
    late_ms: list[float] = []
    errors: list[str] = []

    async def one(key: str, text: str) -> None:
        t = time.perf_counter()
        try:
            await send(key, chat, text)
        except RpcError as e:
            errors.append(str(e.code))
            return
        ack_ms.append((time.perf_counter() - t) * 1000)
        node = str(members[key]["node"])
        acked[node] = acked.get(node, 0) + 1

    async with trio.open_nursery() as nursery:
        for k in range(n):
            key = order[k % len(order)]
            if key not in members:
                continue
            due = t0 + k / rate
            await trio.sleep_until(due)
            late_ms.append((trio.current_time() - due) * 1000)
            m = members[key]
            nursery.start_soon(one, key, make_body(phase, m["node"], m["idx"], k))
        t_last = trio.current_time()
    return {
        "acked_by_node": acked,
        "ack_ms": ack_ms,
        "late_ms": late_ms,
        "errors": errors[:5],
        "n_errors": len(errors),
        "send_span_s": t_last - t0,
    }


async def _closed_loop(cmd: dict[str, Any], send: Any) -> dict[str, Any]:
    """Each sender: one call in flight, next as soon as it is acknowledged, until t_end."""
    chat, phase = cmd["chat"], cmd["phase"]
    t_start, t_end = _trio_time(cmd["t0"]), _trio_time(cmd["t0"] + cmd["seconds"])
    acked: dict[str, int] = {}
    ack_ms: list[float] = []

    async def loop(key: str, node: int, idx: int) -> None:
        await trio.sleep_until(t_start)
        k = 0
        while trio.current_time() < t_end:
            t = time.perf_counter()
            await send(key, chat, make_body(phase, node, idx, k))
            ack_ms.append((time.perf_counter() - t) * 1000)
            acked[str(node)] = acked.get(str(node), 0) + 1
            k += 1

    async with trio.open_nursery() as nursery:
        for key, node, idx in cmd["senders"]:
            nursery.start_soon(loop, key, node, idx)
    return {"acked_by_node": acked, "ack_ms": ack_ms}


async def _flood(cmd: dict[str, Any], send: Any) -> dict[str, Any]:
    """``n`` messages as fast as they go: each sender keeps ``inflight`` calls in flight."""
    chat, phase, n = cmd["chat"], cmd["phase"], int(cmd["n"])
    senders = cmd["senders"]
    left = {"n": n}
    t0 = time.perf_counter()

    async def lane(key: str, node: int, idx: int) -> None:
        while left["n"] > 0:
            left["n"] -= 1
            k = left["n"]
            await send(key, chat, make_body(phase, node, idx, k))

    async with trio.open_nursery() as nursery:
        for key, node, idx in senders:
            for _ in range(int(cmd["inflight"])):
                nursery.start_soon(lane, key, node, idx)
    return {"elapsed_s": time.perf_counter() - t0}


class Worker(JsonWorker):
    """One load process of this benchmark: some members of some nodes."""

    def __init__(self, members: list[dict[str, Any]]) -> None:
        self.keys = {m["key"] for m in members}
        argv = [__file__, "--load-worker", json.dumps({"members": members})]
        super().__init__(argv, f"{len(members)} members")


class Load:
    """All load workers of one cluster, asked together."""

    def __init__(self, members: list[dict[str, Any]], procs: int) -> None:
        procs = max(1, min(procs, len(members)))
        shares = [members[i::procs] for i in range(procs)]
        self.workers = [Worker(s) for s in shares if s]

    async def start(self) -> None:
        for w in self.workers:
            await w.ask(None)

    async def all(self, cmd: dict[str, Any]) -> list[dict[str, Any]]:
        replies: list[dict[str, Any]] = [{} for _ in self.workers]

        async def one(i: int, w: Worker) -> None:
            replies[i] = await w.ask(cmd)

        async with trio.open_nursery() as n:
            for i, w in enumerate(self.workers):
                n.start_soon(one, i, w)
        return replies

    async def merged(self, cmd: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for r in await self.all(cmd):
            out.update(r)
        return out

    def pids(self) -> dict[str, int]:
        return {f"load{i}": w.proc.pid for i, w in enumerate(self.workers)}

    def close(self) -> None:
        for w in self.workers:
            w.close()


def merge_counts(replies: list[dict[str, Any]], field: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in replies:
        for k, v in r.get(field, {}).items():
            out[k] = out.get(k, 0) + int(v)
    return out


# --- set-up ---------------------------------------------------------------------------------------
async def wait_head(data: Path, chat_id: str, at_least: int, timeout: float) -> bool:
    with trio.move_on_after(timeout):
        while head_seq(data, chat_id) < at_least:
            await trio.sleep(POLL)
        return True
    return False


async def create_group(cluster: Cluster, owner: str, members: list[str], title: str) -> str:
    """A group created by ``owner`` (a user of n1, signed in here for the call only)."""
    code = await cluster.add_user(1, owner)
    async with Client.connect(cluster.node(1).url) as c:
        await c.sign_in(owner, code, SigningKey.generate(), "bench-setup")
        g = await c.call("chats.createGroup", {"title": title, "members": members})
    return str(g["chat"]["id"])


async def member_spec(
    cluster: Cluster, node: int, name: str, role: str, idx: int, key: str
) -> dict[str, Any]:
    code = await cluster.add_user(node, name)
    return {
        "key": key,
        "node": node,
        "idx": idx,
        "name": name,
        "code": code,
        "role": role,
        "url": cluster.node(node).url,
    }


async def fresh_codes(cluster: Cluster, members: list[dict[str, Any]]) -> None:
    for m in members:
        m["code"] = await cluster.add_user(m["node"], m["name"])


def address(cluster: Cluster, node: int, name: str) -> str:
    return name if node == 1 else f"{name}@{cluster.node(node).name}"


# --- phase 1: lag ---------------------------------------------------------------------------------
# (sender node -> listener node) by the hops a message takes; n1 is the group's home
PATH_ORDER = [
    "home_local",  # n1 -> n1: sequenced and pushed on the home, no federation
    "home_to_replica",  # n1 -> n2/n3: the home's push (or poke + pull) to a replica
    "replica_to_home",  # n2/n3 -> n1: outbox, fed.post, sequenced on the home
    "replica_to_itself",  # n2 -> n2: fed.post to the home, then back to the sender's node
    "replica_to_replica",  # n2 -> n3: fed.post to the home, then on to the other replica
]
PATHS = {
    "n1->n1": "home_local",
    "n1->n2": "home_to_replica",
    "n1->n3": "home_to_replica",
    "n2->n1": "replica_to_home",
    "n3->n1": "replica_to_home",
    "n2->n2": "replica_to_itself",
    "n3->n3": "replica_to_itself",
    "n2->n3": "replica_to_replica",
    "n3->n2": "replica_to_replica",
}


def lag_figures(
    collected: dict[str, Any], acked_by_node: dict[str, int], nodes: list[int]
) -> dict[str, Any]:
    pairs: dict[str, list[float]] = {}
    cross: list[float] = []
    same: list[float] = []
    received: dict[str, int] = {}
    dups = 0
    for info in collected.values():
        ln = int(info["node"])
        dups += int(info["dups"])
        for snode, _sidx, _k, ms in info["got"]:
            pairs.setdefault(f"n{snode}->n{ln}", []).append(ms)
            (same if snode == ln else cross).append(ms)
            received[f"n{snode}->n{ln}"] = received.get(f"n{snode}->n{ln}", 0) + 1
    acked_total = sum(acked_by_node.values())
    lost = {}
    for s in nodes:
        for ln in nodes:
            k = f"n{s}->n{ln}"
            lost[k] = acked_by_node.get(str(s), 0) - received.get(k, 0)
    paths: dict[str, list[float]] = {}
    for pair, v in pairs.items():
        paths.setdefault(PATHS[pair], []).extend(v)
    return {
        "lag_cross_node": lat(cross),
        "lag_same_node": lat(same),
        "lag_by_path": {k: lat(paths[k]) for k in PATH_ORDER if k in paths},
        "lag_by_pair": {k: lat(v) for k, v in sorted(pairs.items())},
        "acked": acked_total,
        "lost": sum(lost.values()),
        "lost_by_pair": lost,
        "listener_duplicates": dups,
    }


async def wait_delivered(load: Load, phase: str, want: int, timeout: float) -> float:
    t0 = time.perf_counter()
    with trio.move_on_after(timeout):
        while True:
            counts = await load.merged({"cmd": "count", "phase": phase})
            if all(v >= want for v in counts.values()):
                break
            await trio.sleep(0.1)
    return time.perf_counter() - t0


async def lag_phase(
    load: Load,
    chat: str,
    order: list[str],
    rate: float,
    seconds: float,
    procs: dict[str, int],
    urls: dict[str, str],
    phase: str = "",
) -> dict[str, Any]:
    phase = phase or f"lag{int(rate)}"
    n = int(rate * seconds)
    calls0 = {k: await trio.to_thread.run_sync(fed_calls, u) for k, u in urls.items()}
    cpu = CpuMeter(procs)
    t0 = time.time() + 0.3
    replies = await load.all(
        {
            "cmd": "rate",
            "phase": phase,
            "rate": rate,
            "n": n,
            "chat": chat,
            "order": order,
            "t0": t0,
        }
    )
    t_sent = time.time()
    acked = merge_counts(replies, "acked_by_node")
    drain_s = await wait_delivered(load, phase, sum(acked.values()), DRAIN_TIMEOUT)
    cpu_out = cpu.read()
    calls: dict[str, dict[str, int]] = {}
    for k, u in urls.items():  # what each node answered its peers during this rate
        now = await trio.to_thread.run_sync(fed_calls, u)
        calls[k] = {m: now.get(m, 0) - calls0[k].get(m, 0) for m in FED_CALLS}
    collected = await load.merged({"cmd": "collect", "phase": phase})
    figs = lag_figures(collected, acked, [1, 2, 3])
    ack_ms = [x for r in replies for x in r["ack_ms"]]
    late = [x for r in replies for x in r["late_ms"]]
    span = max(r["send_span_s"] for r in replies)
    return {
        "offered_msgs_per_s": rate,
        "messages": n,
        "achieved_send_rate": round(n / span, 1) if span > 0 else None,
        "acked_rate": round(sum(acked.values()) / max(1e-9, t_sent - t0), 1),
        "send_errors": sum(r["n_errors"] for r in replies),
        "ack_latency": lat(ack_ms),
        "client_send_late": lat(late),
        **figs,
        "drain_after_last_send_s": round(drain_s, 3),
        "cpu": cpu_out,
        # answered by each node: n2/n3 answer the home's pokes (with the events, for a live
        # replica), n1 answers the replicas' pulls (catch-up, gaps) and their posts
        "fed_calls_answered": calls,
        "loadavg_after": loadavg(),  # the box is shared: how busy it was (1, 5, 15 min)
    }


# --- phase 2: throughput --------------------------------------------------------------------------
async def tput_phase(
    cluster: Cluster,
    load: Load,
    chat: str,
    senders: list[list[Any]],
    seconds: float,
    procs: dict[str, int],
    label: str,
) -> dict[str, Any]:
    home = cluster.node(1).data
    h0 = head_seq(home, chat)
    cpu = CpuMeter(procs)
    t0 = time.time() + 0.3
    heads: dict[str, float] = {}

    async def sample_heads() -> None:
        await trio.sleep_until(_trio_time(t0))
        heads["h_start"] = head_seq(home, chat)
        await trio.sleep_until(_trio_time(t0 + seconds))
        heads["h_end"] = head_seq(home, chat)

    async with trio.open_nursery() as n:
        n.start_soon(sample_heads)
        replies = await load.all(
            {
                "cmd": "closed",
                "phase": f"tput_{label}",
                "chat": chat,
                "senders": senders,
                "t0": t0,
                "seconds": seconds,
            }
        )
    acked = merge_counts(replies, "acked_by_node")
    total = sum(acked.values())
    # every acknowledged message sequenced at the home (replicas' outboxes drained)
    with trio.move_on_after(60):
        while head_seq(home, chat) < h0 + total:
            await trio.sleep(POLL)
    t_all = time.time()
    cpu_out = cpu.read()
    h_all = head_seq(home, chat)
    ack_ms = [x for r in replies for x in r["ack_ms"]]
    window = heads["h_end"] - heads["h_start"]
    return {
        "senders": len(senders),
        "seconds": seconds,
        "acked": total,
        "acked_by_node": acked,
        "acked_msgs_per_s": round(total / seconds, 1),
        "sequenced_in_window": int(window),
        "sequenced_msgs_per_s": round(window / seconds, 1),
        "all_sequenced": h_all - h0 >= total,
        "all_sequenced_after_s": round(t_all - t0, 2),
        "sequenced_msgs_per_s_until_all": round((h_all - h0) / (t_all - t0), 1),
        "ack_latency": lat(ack_ms),
        "cpu": cpu_out,
    }


# --- phase 3: catch-up ----------------------------------------------------------------------------
async def catchup_phase(
    cluster: Cluster,
    load: Load,
    chat: str,
    senders: list[list[Any]],
    events: int,
    inflight: int,
    procs: dict[str, int],
    replica: int = 2,
) -> dict[str, Any]:
    home, rep = cluster.node(1).data, cluster.node(replica).data
    cluster.kill(replica)
    await cluster.wait_exit(replica)
    before = head_seq(rep, chat)
    cpu_fill = CpuMeter({k: v for k, v in procs.items() if k != f"n{replica}"})
    r = await load.all(
        {
            "cmd": "flood",
            "phase": "catchup",
            "chat": chat,
            "n": events,
            "senders": senders,
            "inflight": inflight,
        }
    )
    fill_s = max(x["elapsed_s"] for x in r)
    fill_cpu = cpu_fill.read()
    target = head_seq(home, chat)
    cpu = CpuMeter(procs)  # the replica counts from 0: its restarted process
    t0 = time.perf_counter()
    await cluster.restart(replica)
    t_ready = time.perf_counter()
    new_pid = cluster.node(replica).process.pid  # type: ignore[union-attr]
    progress: list[tuple[float, int]] = []
    done = False
    with trio.move_on_after(600):
        while True:
            h = head_seq(rep, chat)
            progress.append((time.perf_counter() - t0, h))
            if h >= target:
                done = True
                break
            await trio.sleep(POLL)
    t_done = time.perf_counter()
    cpu_out = cpu.read(restarted={f"n{replica}": new_pid})
    caught = progress[-1][1] - before
    first_move = next((t for t, h in progress if h > before), None)
    return {
        "events_added_while_down": events,
        "fill_s": round(fill_s, 2),
        "fill_msgs_per_s": round(events / fill_s, 1),
        "fill_cpu": fill_cpu,
        "replica_head_before": before,
        "home_head": target,
        "caught_up": done,
        "events_caught_up": caught,
        "restart_to_ready_s": round(t_ready - t0, 3),
        "restart_to_first_applied_s": None if first_move is None else round(first_move, 3),
        "restart_to_caught_up_s": round(t_done - t0, 3),
        "events_per_s_from_restart": round(caught / (t_done - t0), 1),
        "events_per_s_from_ready": round(caught / max(1e-9, t_done - t_ready), 1),
        "events_per_s_from_first_applied": (
            None if first_move is None else round(caught / max(1e-9, t_done - t0 - first_move), 1)
        ),
        "cpu": cpu_out,
    }


# --- the three-node cluster (phases 1-3) ----------------------------------------------------------
async def three_nodes(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    spn = args.senders_per_node
    async with Cluster.running(
        folder / "c3", 3, 0, log_level="warning", extra_config=BENCH_EXTRA
    ) as cluster:
        nodes = [1, 2, 3]
        t_setup = time.perf_counter()
        members: list[dict[str, Any]] = []
        # group G: spn senders + 1 listener on each node, homed on n1
        g_keys: dict[int, list[str]] = {}
        for i in nodes:
            for s in range(spn):
                members.append(await member_spec(cluster, i, f"g{i}s{s}", "sender", s, f"g{i}s{s}"))
            members.append(await member_spec(cluster, i, f"g{i}l", "listener", 0, f"g{i}l"))
            g_keys[i] = [f"g{i}s{s}" for s in range(spn)]
        g_names = [address(cluster, m["node"], m["name"]) for m in members if m["key"] != "g1s0"]
        chat_g = await create_group(cluster, "g1s0", g_names, "federated")
        # group S: the same shape, every member on n1
        s_members: list[dict[str, Any]] = []
        for i in nodes:
            for s in range(spn):
                s_members.append(
                    await member_spec(cluster, 1, f"s{i}s{s}", "sender", s, f"s{i}s{s}")
                )
            s_members.append(await member_spec(cluster, 1, f"s{i}l", "sink", 0, f"s{i}l"))
        chat_s = await create_group(
            cluster, "s1s0", [m["name"] for m in s_members if m["key"] != "s1s0"], "one-node"
        )
        # chat C (catch-up): 4 flooding senders on n1 and one member on n2
        c_members = [
            await member_spec(cluster, 1, f"flood{k}", "sender", k, f"flood{k}") for k in range(4)
        ]
        await cluster.add_user(2, "catcher")
        chat_c = await create_group(
            cluster,
            "flood0",
            [
                *(m["name"] for m in c_members if m["key"] != "flood0"),
                address(cluster, 2, "catcher"),
            ],
            "catch-up",
        )
        for i in (2, 3):
            if not await wait_head(cluster.node(i).data, chat_g, 1, 30):
                raise SystemExit(f"n{i} did not replicate the group")
        await wait_head(cluster.node(2).data, chat_c, 1, 30)
        # sign in only the members of the phases that run (idle sessions cost the load too)
        everyone = list(members)
        if "tput" in args.phases:
            everyone += s_members
        if "catchup" in args.phases:
            everyone += c_members
        await fresh_codes(cluster, everyone)  # the set-up sign-ins used codes of their own
        load = Load(everyone, args.procs)
        try:
            await load.start()
            out["setup_s"] = round(time.perf_counter() - t_setup, 2)
            procs = {f"n{i}": cluster.node(i).process.pid for i in nodes}  # type: ignore[union-attr]
            procs.update(load.pids())
            # warm-up: every sender a few messages, links and caches hot
            order = [g_keys[i][s] for s in range(spn) for i in nodes]  # n1, n2, n3, n1, ...
            urls = {f"n{i}": cluster.node(i).url for i in nodes}
            await lag_phase(load, chat_g, order, 50, 1.0, procs, urls, "warm")
            await trio.sleep(1.0)
            if "lag" in args.phases:
                out["lag"] = {}
                for rate in args.rates:
                    out["lag"][f"{int(rate)}_msgs_per_s"] = await lag_phase(
                        load, chat_g, order, rate, args.seconds, procs, urls
                    )
                    await trio.sleep(1.5)
            if "tput" in args.phases:
                g_send = [[k, i, s] for i in nodes for s, k in enumerate(g_keys[i])]
                s_send = [[m["key"], 1, m["idx"]] for m in s_members if m["role"] == "sender"]
                cross = await tput_phase(
                    cluster, load, chat_g, g_send, args.tput_seconds, procs, "cross"
                )
                await trio.sleep(1.5)
                single = await tput_phase(
                    cluster, load, chat_s, s_send, args.tput_seconds, procs, "single"
                )
                out["throughput"] = {
                    "cross_node": cross,
                    "single_node": single,
                    "ratio_sequenced": round(
                        cross["sequenced_msgs_per_s"] / max(1e-9, single["sequenced_msgs_per_s"]), 3
                    ),
                    "ratio_until_all_sequenced": round(
                        cross["sequenced_msgs_per_s_until_all"]
                        / max(1e-9, single["sequenced_msgs_per_s_until_all"]),
                        3,
                    ),
                    "target_ratio": 0.5,
                }
                await trio.sleep(1.5)
            if "lag" in args.phases:
                # late arrivals: what is still missing now, after everything else
                for r in out["lag"].values():
                    phase = f"lag{int(r['offered_msgs_per_s'])}"
                    collected = await load.merged({"cmd": "collect", "phase": phase})
                    got = sum(len(v["got"]) for v in collected.values())
                    r["lost_at_end"] = r["acked"] * len(collected) - got
            if "catchup" in args.phases:
                f_send = [[m["key"], 1, m["idx"]] for m in c_members]
                out["catchup"] = await catchup_phase(
                    cluster, load, chat_c, f_send, args.catchup_events, args.flood_inflight, procs
                )
            await load.all({"cmd": "stop"})
        finally:
            load.close()
    return out


# --- phase 5: peer assist (three nodes, the home stopped) ----------------------------------------
async def assist_phase(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Gap fill from a fellow replica, and the queued posts' flush when the home returns.

    A group homed on n1 with 4 flooders on n1, a member on n2 and one on n3. n3 is stopped
    (SIGKILL) while ``--assist-events`` messages are added; n2 replicates them; then n1 is
    stopped (SIGKILL) and n3 restarted: events/s until n3's head equals n2's (every event
    from n2's copy, verified against n1's key). Then a client on n2 sends
    ``--assist-queued`` posts (each answered "pending": queued in n2's outbox); n1 is
    restarted: seconds from its restart (and from its admin socket answering) until its
    head includes the last of them."""
    out: dict[str, Any] = {}
    async with Cluster.running(
        folder / "assist", 3, 0, log_level="warning", extra_config=BENCH_EXTRA
    ) as cluster:
        flooders = [
            await member_spec(cluster, 1, f"af{k}", "sender", k, f"af{k}") for k in range(4)
        ]
        await cluster.add_user(2, "keeper")
        await cluster.add_user(3, "gapper")
        chat = await create_group(
            cluster,
            "af0",
            [
                *(m["name"] for m in flooders if m["key"] != "af0"),
                address(cluster, 2, "keeper"),
                address(cluster, 3, "gapper"),
            ],
            "assist",
        )
        n1, n2, n3 = (cluster.node(i).data for i in (1, 2, 3))
        for d in (n2, n3):
            if not await wait_head(d, chat, 1, 30):
                raise SystemExit("a replica did not get the group")
        await fresh_codes(cluster, flooders)
        cluster.kill(3)
        await cluster.wait_exit(3)
        before = head_seq(n3, chat)
        load = Load(flooders, args.procs)
        try:
            await load.start()
            senders = [[m["key"], 1, m["idx"]] for m in flooders]
            cmd = {"cmd": "flood", "phase": "assist", "chat": chat, "senders": senders}
            await load.all({**cmd, "n": args.assist_events, "inflight": args.flood_inflight})
            await load.all({"cmd": "stop"})
        finally:
            load.close()
        target = head_seq(n1, chat)
        if not await wait_head(n2, chat, target, 600):
            raise SystemExit("n2 did not replicate the flood")
        cluster.kill(1)  # the home is gone from here on
        await cluster.wait_exit(1)
        t0 = time.perf_counter()
        await cluster.restart(3)
        t_ready = time.perf_counter()
        filled = await wait_head(n3, chat, target, 600)
        t_done = time.perf_counter()
        gap = head_seq(n3, chat) - before
        out["gap_fill"] = {
            "events_missed": target - before,
            "events_filled": gap,
            "filled": filled,
            "from": "n2 (a fellow replica); the home n1 stopped",
            "restart_to_filled_s": round(t_done - t0, 3),
            "events_per_s_from_restart": round(gap / (t_done - t0), 1),
            "events_per_s_from_ready": round(gap / max(1e-9, t_done - t_ready), 1),
        }
        code = await cluster.add_user(2, "keeper")  # a member on n2: a fresh sign-in code
        async with Client.connect(cluster.node(2).url) as c:
            await c.sign_in("keeper", code, SigningKey.generate(), "bench")
            pending = 0
            t_q = time.perf_counter()
            for k in range(args.assist_queued):
                p = {"chat": chat, "random_id": secrets.randbits(63), "text": f"queued {k}"}
                r = await c.call("messages.send", p, timeout=60)
                pending += bool(r.get("pending"))
            queue_s = time.perf_counter() - t_q
        t1 = time.perf_counter()
        await cluster.restart(1)
        t1_ready = time.perf_counter()
        want = target + args.assist_queued
        flushed = await wait_head(n1, chat, want, 600)
        t1_done = time.perf_counter()
        out["queued_flush"] = {
            "posts_queued": args.assist_queued,
            "answered_pending": pending,
            "queue_s": round(queue_s, 3),
            "all_sequenced": flushed,
            "home_restart_to_last_sequenced_s": round(t1_done - t1, 3),
            "home_ready_to_last_sequenced_s": round(t1_done - t1_ready, 3),
            "home_head": head_seq(n1, chat),
        }
    return out


# --- phase 4: bytes on the wire (two nodes, n2 -> n1 through the fault proxy) ---------------------
class ProxyProcess:
    """``python -m federation.faultproxy`` in its own process (its CPU is its own)."""

    def __init__(self, target_port: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "federation.faultproxy", "--target", f"127.0.0.1:{target_port}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert self.proc.stdout is not None
        self.port = int(json.loads(self.proc.stdout.readline())["port"])

    def stats(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return dict(json.loads(self.proc.stdout.readline()))

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wire(s0: dict[str, Any], s1: dict[str, Any], events: int) -> dict[str, Any]:
    up, down = s1["bytes_up"] - s0["bytes_up"], s1["bytes_down"] - s0["bytes_down"]
    return {
        "events": events,
        "bytes_up": up,
        "bytes_down": down,
        "bytes_per_event": round((up + down) / max(1, events), 1),
        "bytes_down_per_event": round(down / max(1, events), 1),
        "bytes_up_per_event": round(up / max(1, events), 1),
    }


async def bytes_phase(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    cluster = Cluster(folder / "c2", 2, 0, log_level="warning", extra_config=BENCH_EXTRA)
    n1, n2 = cluster.node(1), cluster.node(2)
    proxy = ProxyProcess(n1.port)
    proxy_url = f"ws://127.0.0.1:{proxy.port}/"
    # n1 as `fedgram init` would make it (Cluster.prepare), announcing the proxy as its URL
    over = config.merge(
        {
            "node": {"name": "n1", "listen": f"127.0.0.1:{n1.port}", "log_level": "warning"},
            "federation": {"peering": "open", "retry_max": 5.0, "public_url": proxy_url},
        },
        BENCH_EXTRA,
    )
    config.init_data_dir(n1.data, over, exist_ok=False)
    out: dict[str, Any] = {"proxy": "n2's link to n1 (n2's pulls and their answers)"}
    try:
        await cluster.start(peer=False)
        await cluster.admin(1, "admin.peerAdd", {"url": n2.url, "pin": n2.node_id})
        await cluster.admin(2, "admin.peerAdd", {"url": proxy_url, "pin": n1.node_id})
        await cluster.wait_links_up()
        peer_url = {p["name"]: p["url"] for p in await cluster.peers(2)}
        out["n2_dials_n1_at"] = peer_url.get("n1")
        members = [
            await member_spec(cluster, 1, "w1s", "sender", 0, "w1s"),
            await member_spec(cluster, 2, "w2l", "listener", 0, "w2l"),
        ]
        chat = await create_group(cluster, "w1o", ["w1s", address(cluster, 2, "w2l")], "wire")
        await wait_head(n2.data, chat, 1, 30)
        await fresh_codes(cluster, members)
        load = Load(members, 1)
        try:
            await load.start()
            procs = {"n1": n1.process.pid, "n2": n2.process.pid, "proxy": proxy.proc.pid}  # type: ignore[union-attr]
            procs.update(load.pids())
            await trio.sleep(0.5)
            # live: one sender on n1 at --bytes-rate; every event pulled shortly after its poke
            h0 = head_seq(n1.data, chat)
            s0 = proxy.stats()
            cpu = CpuMeter(procs)
            t0 = time.time() + 0.2
            n = args.bytes_events
            await load.all(
                {
                    "cmd": "rate",
                    "phase": "wire",
                    "rate": args.bytes_rate,
                    "n": n,
                    "chat": chat,
                    "order": ["w1s"],
                    "t0": t0,
                }
            )
            target = head_seq(n1.data, chat)
            await wait_head(n2.data, chat, target, 60)
            await trio.sleep(0.5)
            live = wire(s0, proxy.stats(), target - h0)
            live["rate_msgs_per_s"] = args.bytes_rate
            live["cpu"] = cpu.read()
            rows = sql(
                n1.data,
                "SELECT avg(length(raw)), avg(length(sig)), avg(length(content)) FROM events "
                "WHERE chat_id = ? AND seq > ?",
                chat,
                h0,
            )
            raw_len, sig_len, content_len = (round(float(x or 0), 1) for x in rows[0])
            live["stored_bytes_per_event"] = {
                "raw": raw_len,
                "sig": sig_len,
                "content": content_len,
                "total": round(raw_len + sig_len + content_len, 1),
            }
            out["live"] = live
            # catch-up batches: n2 down while --bytes-catchup-events are added, then restarted
            s0 = proxy.stats()
            catch = await catchup_phase(
                cluster,
                load,
                chat,
                [["w1s", 1, 0]],
                args.bytes_catchup_events,
                args.flood_inflight,
                {k: v for k, v in procs.items() if k != "proxy"},
            )
            await trio.sleep(0.5)
            batches = wire(s0, proxy.stats(), catch["events_caught_up"])
            batches["catchup_events_per_s_through_proxy"] = catch["events_per_s_from_restart"]
            batches["caught_up"] = catch["caught_up"]
            out["catchup_batches"] = batches
            await load.all({"cmd": "stop"})
        finally:
            load.close()
    finally:
        with trio.CancelScope(shield=True):
            await cluster.stop()
        proxy.close()
    return out


# --- main -----------------------------------------------------------------------------------------
async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.perf_counter()
    out: dict[str, Any] = {
        "server": "fedgram-federation",
        "machine": machine(),
        "loadavg_start": loadavg(),
        "options": {
            "rates": args.rates,
            "seconds": args.seconds,
            "tput_seconds": args.tput_seconds,
            "senders_per_node": args.senders_per_node,
            "catchup_events": args.catchup_events,
            "bytes_events": args.bytes_events,
            "bytes_rate": args.bytes_rate,
            "assist_events": args.assist_events,
            "assist_queued": args.assist_queued,
            "procs": args.procs,
            "quick": args.quick,
        },
    }
    folder = Path(tempfile.mkdtemp(prefix="fedgram-fedbench-"))
    try:
        if {"lag", "tput", "catchup"} & set(args.phases):
            out.update(await three_nodes(args, folder))
        if "bytes" in args.phases:
            out["bytes"] = await bytes_phase(args, folder)
        if "assist" in args.phases:
            out["assist"] = await assist_phase(args, folder)
    finally:
        if args.keep:
            print(f"kept {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    out["loadavg_end"] = loadavg()
    out["wall_s"] = round(time.perf_counter() - t_start, 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rates", default="100,200,500", help="lag phase offered rates, msgs/s total")
    p.add_argument("--rate", type=float, help="one lag rate only (instead of --rates)")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per lag rate (10)")
    p.add_argument("--tput-seconds", type=float, default=10.0, help="throughput window (10)")
    p.add_argument("--senders-per-node", type=int, default=3, help="group senders per node (3)")
    p.add_argument("--catchup-events", type=int, default=100_000, help="added while n2 is down")
    p.add_argument("--flood-inflight", type=int, default=8, help="calls in flight per flooder")
    p.add_argument("--bytes-events", type=int, default=2000, help="live events for the bytes phase")
    p.add_argument("--bytes-rate", type=float, default=200.0, help="their rate, msgs/s (200)")
    p.add_argument(
        "--bytes-catchup-events", type=int, default=3000, help="catch-up events through the proxy"
    )
    p.add_argument(
        "--assist-events", type=int, default=100_000, help="missed, filled from a replica"
    )
    p.add_argument("--assist-queued", type=int, default=1000, help="posts queued, home down")
    p.add_argument(
        "--procs", type=int, default=2, help="load processes (2: one GIL could not offer 500/s)"
    )
    p.add_argument(
        "--phases",
        default="lag,tput,catchup,bytes,assist",
        help="any of lag,tput,catchup,bytes,assist",
    )
    p.add_argument("--quick", action="store_true", help="a ~30 s smoke run (small counts)")
    p.add_argument("--keep", action="store_true", help="keep the nodes' temp folder")
    p.add_argument("--median", nargs="+", metavar="JSON", help="medians of earlier runs' output")
    p.add_argument("--load-worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.load_worker:
        trio.run(load_worker, args.load_worker)
        return
    if args.median:
        runs = [json.loads(Path(f).read_text()) for f in args.median]
        print(json.dumps({"runs": len(runs), "median": medians(runs)}, indent=2))
        return
    args.rates = [args.rate] if args.rate else [float(x) for x in args.rates.split(",") if x]
    args.phases = {x.strip() for x in args.phases.split(",") if x.strip()}
    if args.quick:
        args.rates = [args.rate or 100.0]
        args.seconds, args.tput_seconds = 3.0, 3.0
        args.catchup_events, args.bytes_events, args.bytes_catchup_events = 3000, 300, 1000
        args.assist_events, args.assist_queued = 3000, 100
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    print(json.dumps(trio.run(main_async, args), indent=2))


if __name__ == "__main__":
    main()
