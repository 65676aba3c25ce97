"""The fault suite: real node processes, a fault proxy on every link, a seeded schedule.

Why this exists: the federation promises (DESIGN.md §5-6) that a peer that is down, slow
or partitioned costs only delay, that an acknowledged message is never lost, and that a
post is sequenced exactly once. Unit tests check each mechanism in isolation; this runs
them all at once against what really breaks links: resets, stalls, holes in a stream,
connections cut mid-frame, replayed handshakes, and kill -9.

The set-up: ``nodes`` real ``python -m cli run`` processes (:class:`Cluster`); for every
ordered pair (i, j) a :class:`FaultProxy`, and node i peers node j at that proxy's URL,
pinned to j's node id. A node makes its calls on the link it dialled (links.py), so the
proxy i->j carries everything i asks of j, and a fault on it is a fault of that direction
of the pair only. The proxy URL is set by ``admin.peerAdd`` (``url_from_admin``), which
wins over the URL a node announces in ``fed.hello``; peering is done twice so that a
hello racing the first round cannot leave a direct link behind, and the set-up checks
that every link really runs through its proxy.

Meanwhile one user per node sends into a group homed on each node and into a private
chat with each other user, recording every send's ``random_id`` and its answer:
sequenced (with its seq, on the chat's home), queued (pending in the sender node's
outbox), or unknown (the connection died before the answer; resent with the same
``random_id`` later, as a real client does: sends are idempotent).

A schedule (:func:`plan`) is drawn from ``random.Random(seed)`` before anything runs, so
a failing run is replayed by its seed: the report prints the schedule. Wall-clock timing
is real, so a replay meets the same faults in the same order, not byte-identical traffic.

At the end every proxy is healed, killed nodes are restarted, and the suite waits
(bounded) until all replicas of every chat have the home's head and every outbox is
empty; then it stops the nodes and reads their SQLite files directly: every acknowledged
message present exactly once on every replica that should have it, the same seq and hash
everywhere, each copy's hash chain and signatures verified (node/chats/events.py), every
queued post arrived once or still visibly queued, and no node process died unless the
schedule killed it.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio
from nacl.signing import SigningKey, VerifyKey

from node.chats.events import ChainError, open_event, verify_chain
from node.client import Client
from node.protocol.errors import ErrorCode, RpcError

from .cluster import Cluster, ClusterError
from .faultproxy import FaultProxy

#: fault kinds: on one directed link (proxy), on a node's every link, or on the process
LINK_KINDS = ("cut", "pause", "refuse", "blackhole", "delay", "drop", "cut_after", "dup_connect")
NODE_KINDS = ("partition", "kill", "hang")
KINDS = LINK_KINDS + NODE_KINDS
#: kinds that share one undo on a link must not overlap there (a resume ends both)
_CLASS = {"pause": "flow", "partition": "flow", "refuse": "admit", "blackhole": "admit"}
#: a node killed is busy this much longer than its down time (its restart takes a while);
#: a hung one (SIGSTOP, then SIGCONT) a little longer (it has work to catch up on)
RESTART_MARGIN = 4.0
HANG_MARGIN = 1.0
#: nodes' federation settings for the run: calls on a stalled link give up (and the link
#: reconnects) after link_timeout; a dead peer is retried at least every retry_max
NODE_FEDERATION = {"link_timeout": 4.0, "retry_max": 2.0}
SEND_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0
DB_FILE = "fedgram.db"


# --------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class Fault:
    """One scheduled fault: when (seconds into the fault phase), what, where, how long.

    ``target``: ``(i, j)`` (1-based) for the link node i dials to node j, ``(k,)`` for
    node k. ``arg``: the delay in seconds, cut_after's byte count, drop's direction or
    dup_connect's mode."""

    at: float
    kind: str
    target: tuple[int, ...]
    duration: float
    arg: float | int | str | None = None

    @classmethod
    def from_description(cls, d: dict[str, Any]) -> Fault:
        """The fault a report's schedule line describes (replaying a report exactly,
        even after :func:`plan` changed)."""
        kind = str(d["kind"])
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        nodes = str(d["target"]).replace("n", "").split("->")
        target = tuple(int(x) for x in nodes)
        if len(target) != (2 if kind in LINK_KINDS else 1):
            raise ValueError(f"{kind} needs a {'link' if kind in LINK_KINDS else 'node'}")
        raw = d.get("arg")
        arg: float | int | str | None = None if raw is None else str(raw)
        if kind == "delay":
            arg = float(d["arg"])
        elif kind == "cut_after":
            arg = int(d["arg"])
        return cls(float(d["at"]), kind, target, float(d["duration"]), arg)

    def describe(self) -> dict[str, Any]:
        where = f"n{self.target[0]}->n{self.target[1]}" if len(self.target) == 2 else None
        return {
            "at": round(self.at, 3),
            "kind": self.kind,
            "target": where or f"n{self.target[0]}",
            "duration": round(self.duration, 3),
            "arg": self.arg,
        }


def plan(
    seed: int,
    seconds: float,
    nodes: int = 3,
    *,
    mean_gap: float = 2.0,
    min_each: int = 0,
    max_duration: float = 8.0,
    max_down: int = 1,
) -> list[Fault]:
    """The fault schedule of a run, drawn from ``random.Random(seed)`` alone.

    About ``seconds / mean_gap`` faults (at least ``min_each`` of every kind, so a short
    run still meets each), at uniform times over the whole run, each lasting up
    to ``max_duration`` (one still on at the end is cleared by the final heal). Two
    faults with the same undo never overlap on one link (a resume would end both
    early); at most ``max_down`` nodes are killed at a time, and a
    node is not killed again while it restarts. A fault with no free target at its time
    waits for the first one that frees up (or is dropped if that is past the end)."""
    rng = random.Random(seed)
    count = max(int(seconds / mean_gap), min_each * len(KINDS))
    kinds = [k for k in KINDS for _ in range(min_each)]
    kinds += [rng.choice(KINDS) for _ in range(count - len(kinds))]
    rng.shuffle(kinds)
    horizon = max(seconds, 0.1)  # what is still on at the end is healed by the final heal
    times = sorted(rng.uniform(0.0, horizon) for _ in kinds)
    links = [(i, j) for i in range(1, nodes + 1) for j in range(1, nodes + 1) if i != j]
    busy: dict[tuple[str, tuple[int, ...]], float] = {}  # (class, link or node) -> until
    down: list[tuple[float, float]] = []  # kill windows (start, end incl. restart)
    out: list[Fault] = []
    for at, kind in zip(times, kinds, strict=True):
        cls = _CLASS.get(kind, kind)
        duration = rng.uniform(0.5, max_duration)
        arg: float | int | str | None = None
        if kind == "delay":
            arg = round(rng.uniform(0.02, 1.0), 3)
        elif kind == "cut_after":
            arg = rng.randint(1, 3000)
        elif kind == "drop":
            arg = rng.choice(("up", "down", "both"))
        elif kind == "dup_connect":
            arg = rng.choice(("hold", "close"))
            duration = max(duration, 2.0)  # long enough for the cut link to redial into it
        if kind in LINK_KINDS:
            options: list[tuple[int, ...]] = list(links)
        else:
            options = [(k,) for k in range(1, nodes + 1)]
        rng.shuffle(options)

        def touched(target: tuple[int, ...], k: str = kind) -> list[tuple[int, ...]]:
            # a partition pauses every link to and from its node
            if k != "partition":
                return [target]
            return [link for link in links if target[0] in link]

        def free_from(target: tuple[int, ...], c: str = cls, k: str = kind) -> float:
            when = max((busy.get((c, t), 0.0) for t in touched(target, k)), default=0.0)
            if k in ("kill", "hang"):
                when = max(when, busy.get(("node", target), 0.0))
            return when

        start, target = min(((max(at, free_from(t)), t) for t in options), key=lambda x: x[0])
        if kind in ("kill", "hang"):
            while sum(1 for s, e in down if s <= start < e) >= max_down:
                start = min(e for s, e in down if s <= start < e)
        if kind == "cut":
            duration = 0.0
        if start >= horizon:
            continue  # no room left before the end
        if kind in ("kill", "hang"):
            margin = RESTART_MARGIN if kind == "kill" else HANG_MARGIN
            down.append((start, start + duration + margin))
            busy[("node", target)] = start + duration + margin
        elif kind != "cut":
            for t in touched(target):
                busy[(cls, t)] = start + duration
        out.append(Fault(round(start, 3), kind, target, round(duration, 3), arg))
    out.sort(key=lambda f: f.at)
    return out


# ------------------------------------------------------------------------------ sends


@dataclass
class Send:
    """One message a client sent and what it was told."""

    node: int  # the sender's node (1-based)
    sender: str  # canonical address
    chat: str
    random_id: int
    outcome: str = "unknown"  # sequenced | queued | unknown | refused:<CODE>
    seq: int | None = None
    attempts: int = 0


@dataclass
class User:
    """A sending user: one per node, signed in once; its device key re-authorizes every
    new session after a reconnect (what a real client's stored key does)."""

    node: int
    name: str
    address: str
    key: SigningKey
    url: str
    node_id: str
    chats: list[str] = field(default_factory=list)


def _lost_connection(e: RpcError) -> bool:
    return e.code in (ErrorCode.CONNECTION_LOST, ErrorCode.TIMEOUT)


async def _send_once(client: Client, s: Send) -> None:
    """One attempt; updates ``s`` from the answer. Connection failures propagate (the
    caller reconnects and resends the same random_id); any other refusal is recorded."""
    s.attempts += 1
    try:
        r = await client.call(
            "messages.send",
            {"chat": s.chat, "random_id": s.random_id, "text": f"chaos {s.random_id}"},
            timeout=SEND_TIMEOUT,
        )
    except RpcError as e:
        if _lost_connection(e):
            raise
        s.outcome = f"refused:{e.code}"
        return
    if r.get("pending"):
        s.outcome = "queued"
    else:
        s.outcome, s.seq = "sequenced", int(r["seq"])


# ------------------------------------------------------------------------------- run


class Chaos:
    """One run: the cluster, its proxies, the users, the schedule, the bookkeeping."""

    def __init__(
        self,
        seed: int,
        seconds: float,
        data_dir: Path,
        *,
        nodes: int = 3,
        schedule: list[Fault] | None = None,
        send_gap: tuple[float, float] = (0.03, 0.12),
        converge_timeout: float = 120.0,
        log: Callable[[str], None] | None = None,
        log_level: str = "info",
    ) -> None:
        if nodes < 2:
            raise ValueError("a fault suite needs at least 2 nodes")
        self.seed = seed
        self.seconds = seconds
        self.data_dir = data_dir
        self.n = nodes
        self.schedule = plan(seed, seconds, nodes) if schedule is None else schedule
        self.send_gap = send_gap
        self.converge_timeout = converge_timeout
        self._log = log or (lambda _msg: None)
        self.cluster = Cluster(
            data_dir,
            nodes,
            0,
            log_level=log_level,
            extra_config={"federation": dict(NODE_FEDERATION)},
        )
        self.proxies: dict[tuple[int, int], FaultProxy] = {}
        self.users: list[User] = []
        self.groups: dict[str, int] = {}  # chat -> home node
        self.privates: dict[str, tuple[int, int]] = {}  # chat -> its two nodes
        self.sends: list[Send] = []
        self.injected: Counter[str] = Counter()
        self.skipped: list[dict[str, Any]] = []
        self.kills: list[dict[str, Any]] = []
        self.crashed: list[dict[str, Any]] = []
        self.client_errors: Counter[str] = Counter()
        self.restart_failures: list[dict[str, Any]] = []
        self.down: set[int] = set()  # nodes killed or hung by the schedule, not yet back
        self.start_time = 0.0

    def say(self, msg: str) -> None:
        self._log(f"[chaos {time.strftime('%H:%M:%S')}] {msg}")

    # --- set-up ---------------------------------------------------------------------------
    def proxy_url(self, i: int, j: int) -> str:
        return f"ws://127.0.0.1:{self.proxies[(i, j)].port}/"

    async def setup(self, nursery: trio.Nursery) -> None:
        """Start the nodes, a proxy per directed link (served in ``nursery``), peer them
        through the proxies, sign a user in on each node and create the chats; returns
        once every chat is replicated to every node that should hold it. (Public so a
        test can build this world and then inject one fault by hand.)"""
        cluster = self.cluster
        await cluster.start(peer=False)
        for a in cluster.nodes:
            for b in cluster.nodes:
                if a is not b:
                    proxy = FaultProxy("127.0.0.1", b.port)
                    await nursery.start(proxy.serve)
                    self.proxies[(a.index, b.index)] = proxy
        # twice: a fed.hello of round one may start a link to the URL a node announces
        # (direct); round two's peerAdd replaces any such link by one through the proxy
        for _ in range(2):
            for (i, j), _proxy in sorted(self.proxies.items()):
                b = cluster.node(j)
                await cluster.admin(
                    i, "admin.peerAdd", {"url": self.proxy_url(i, j), "pin": b.node_id}
                )
            await cluster.wait_links_up()
        await self._check_proxied()
        for a in cluster.nodes:
            name = f"chaos{a.index}"
            code = await cluster.add_user(a.index, name)
            user = User(
                a.index, name, f"{name}@{a.node_id}", SigningKey.generate(), a.url, a.node_id
            )
            async with Client.connect(a.url, pin=a.node_id, timeout=CONNECT_TIMEOUT) as client:
                await client.sign_in(name, code, user.key, "chaos")
            self.users.append(user)
        for u in self.users:  # a group homed on every node, everybody in it
            others = [v.address for v in self.users if v is not u]
            async with self.client(u) as client:
                g = await client.call(
                    "chats.createGroup", {"title": f"G{u.node}", "members": others}
                )
            self.groups[str(g["chat"]["id"])] = u.node
        for u in self.users:  # a private chat for every pair
            for v in self.users:
                if u.node < v.node:
                    async with self.client(u) as client:
                        r = await client.call("chats.startPrivate", {"user": v.address})
                    self.privates[str(r["chat"]["id"])] = (u.node, v.node)
        for u in self.users:
            u.chats = [c for c in self.groups] + [
                c for c, pair in self.privates.items() if u.node in pair
            ]
            async with self.client(u) as client:
                with trio.fail_after(30):
                    for chat in u.chats:  # replicated here: a send can be queued
                        while True:
                            try:
                                await client.call("chats.get", {"chat": chat})
                                break
                            except RpcError as e:
                                if _lost_connection(e):
                                    raise
                                await trio.sleep(0.1)
        self.say(
            f"cluster up: {self.n} nodes, {len(self.proxies)} proxies, "
            f"{len(self.groups)} groups, {len(self.privates)} private chats"
        )

    async def _check_proxied(self) -> None:
        bypassed = await self._bypassed(10.0)
        if bypassed:
            raise ClusterError(f"links bypass their proxies: {'; '.join(bypassed)}")

    async def _bypassed(self, wait: float) -> list[str]:
        """Links that do not run through their proxy: a node that would dial a peer at
        another URL than the proxy's, or a proxy without a connection after ``wait``
        seconds (a node keeps one link per peer, so an idle proxy means a link that
        bypasses it). Checked after set-up and again at the end: restarts bring new
        fed.hello's, which must not replace the admin's URL."""
        out: list[str] = []
        for i in range(1, self.n + 1):
            for p in await self.cluster.peers(i):
                j = next(x.index for x in self.cluster.nodes if x.node_id == p["node_id"])
                if p["url"] != self.proxy_url(i, j):
                    out.append(f"n{i} dials n{j} at {p['url']}")
        with trio.move_on_after(wait):
            while any(p.active == 0 for p in self.proxies.values()):
                await trio.sleep(0.1)
        out += [f"n{i}->n{j}: no connection" for (i, j), p in self.proxies.items() if not p.active]
        return out

    @contextlib.asynccontextmanager
    async def client(self, u: User) -> AsyncIterator[Client]:
        """A session of ``u`` on its node, authorized with its device key."""
        async with Client.connect(u.url, pin=u.node_id, timeout=CONNECT_TIMEOUT) as client:
            await client.authorize(u.key)
            yield client

    # --- the fault phase ------------------------------------------------------------------
    def _links_of(self, f: Fault) -> list[FaultProxy]:
        """The proxies a link fault acts on: one, or every link to and from a node."""
        if f.kind == "partition":
            return [p for (i, j), p in self.proxies.items() if f.target[0] in (i, j)]
        return [self.proxies[(f.target[0], f.target[1])]]

    async def _inject(self, f: Fault) -> None:
        """Apply one fault, hold it for its duration, undo it."""
        if f.kind == "kill":
            await self._kill(f)
            return
        if f.kind == "hang":
            await self._hang(f)
            return
        proxies = self._links_of(f)
        for p in proxies:
            if f.kind == "cut":
                p.cut()
            elif f.kind in ("pause", "partition"):
                p.pause()
            elif f.kind in ("refuse", "blackhole"):
                p.block("refuse" if f.kind == "refuse" else "blackhole")
                p.cut()  # the live link goes too: an outage, not just a closed door
            elif f.kind == "delay":
                assert isinstance(f.arg, float)
                p.delay(f.arg)
            elif f.kind == "drop":
                p.drop("up" if f.arg == "up" else "down" if f.arg == "down" else "both", f.duration)
            elif f.kind == "cut_after":
                assert isinstance(f.arg, int)
                p.cut_after(f.arg)
            elif f.kind == "dup_connect":
                p.dup_connect("close" if f.arg == "close" else "hold")
                p.cut()  # the link redials now, and its redial is duplicated
        self.injected[f.kind] += 1
        if f.kind in ("cut", "drop", "cut_after"):
            return  # instantaneous, self-expiring, or armed until it fires
        await trio.sleep(f.duration)
        for p in proxies:
            if f.kind in ("pause", "partition"):
                p.resume()
            elif f.kind in ("refuse", "blackhole"):
                p.unblock()
            elif f.kind == "delay":
                p.delay(0)
            elif f.kind == "dup_connect":
                p.dup_connect(None)

    async def _kill(self, f: Fault) -> None:
        """kill -9 node k, leave it dead for the fault's duration, start it again."""
        k = f.target[0]
        if k in self.down or not self.cluster.node(k).running:
            self.skipped.append({**f.describe(), "why": "node not running"})
            return
        self.down.add(k)
        self.cluster.kill(k, signal.SIGKILL)
        self.injected["kill"] += 1
        t = trio.current_time() - self.start_time
        self.kills.append({"node": f"n{k}", "at": round(t, 3), "down_for": f.duration})
        await self.cluster.wait_exit(k, 10)
        await trio.sleep(f.duration)  # the phase may end here: the final step restarts it
        with trio.CancelScope(shield=True):  # a start is not left half done
            if await self._restart(k):
                self.down.discard(k)  # else it stays down: no watchdog retries

    async def _hang(self, f: Fault) -> None:
        """SIGSTOP node k for the fault's duration, then SIGCONT: a hung host. Unlike a
        dead one, its kernel still accepts connections (the listen backlog), so peers
        and clients meet silence, not resets: only their timeouts can save them."""
        k = f.target[0]
        if k in self.down or not self.cluster.node(k).running:
            self.skipped.append({**f.describe(), "why": "node not running"})
            return
        self.down.add(k)
        self.cluster.kill(k, signal.SIGSTOP)
        self.injected["hang"] += 1
        try:
            await trio.sleep(f.duration)
        finally:  # the phase may end here: it goes on running all the same
            self.cluster.kill(k, signal.SIGCONT)
            self.down.discard(k)

    async def _restart(self, k: int) -> bool:
        """Start node k again; a start that fails (a port not yet released) is retried. A
        node that will not start is a finding, not the end of the run: it is recorded
        and the run goes on to its report (which then cannot be ok)."""
        why = ""
        for attempt in range(5):
            try:
                await self.cluster.restart(k)
                return True
            except ClusterError as e:
                why = str(e)
                self.say(f"restart of n{k} failed ({e}); attempt {attempt + 1}")
                await trio.sleep(1.0)
        self.restart_failures.append({"node": f"n{k}", "error": why[:500]})
        return False

    async def _scheduler(self, until: float) -> None:
        """Inject the schedule's faults on time until ``until``: what is still on then
        (a partition, a node still down) is left for the final heal to clear."""
        with trio.move_on_at(until):
            async with trio.open_nursery() as nursery:
                for f in self.schedule:
                    await trio.sleep_until(self.start_time + f.at)
                    nursery.start_soon(self._inject, f)

    async def _watchdog(self, stop: trio.Event) -> None:
        """A node that is gone without the schedule killing it crashed: record it (with
        its log's last lines) and start it again so the run goes on."""
        while not stop.is_set():
            for node in self.cluster.nodes:
                if node.index in self.down or node.running or node.process is None:
                    continue
                code = node.process.returncode
                self.crashed.append(
                    {
                        "node": node.name,
                        "exit_code": code,
                        "at": round(trio.current_time() - self.start_time, 3),
                        "log_tail": node.log_tail(5),
                    }
                )
                self.say(f"{node.name} died on its own (exit {code}); restarting it")
                self.down.add(node.index)
                if await self._restart(node.index):
                    self.down.discard(node.index)
            with trio.move_on_after(0.25):
                await stop.wait()

    async def _sender(self, u: User, until: float) -> None:
        """Send into ``u``'s chats until ``until``; after a lost connection, reconnect
        and resend the same random_id first (an idempotent retry, as a client does)."""
        rng = random.Random(f"{self.seed}/sender/{u.node}")
        pending: Send | None = None
        while trio.current_time() < until:
            try:
                async with self.client(u) as client:
                    while trio.current_time() < until:
                        if pending is None:
                            pending = Send(
                                u.node, u.address, rng.choice(u.chats), rng.getrandbits(63)
                            )
                            self.sends.append(pending)
                        await _send_once(client, pending)
                        pending = None
                        await trio.sleep(rng.uniform(*self.send_gap))
            except RpcError as e:
                self.client_errors[str(e.code)] += 1
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
                self.client_errors[type(e).__name__] += 1
            except Exception as e:  # an SDK failure is reported, and must not end the run
                self.client_errors[f"{type(e).__name__}: {e}"[:200]] += 1
            await trio.sleep(0.2)

    async def _resend_unknown(self, timeout: float) -> None:
        """After the heal: every send whose answer was lost is sent again with its
        random_id, so its fate becomes known (sequenced, queued) instead of unknown."""
        with trio.move_on_after(timeout):
            for u in self.users:
                todo = [s for s in self.sends if s.node == u.node and s.outcome == "unknown"]
                while todo:
                    try:
                        async with self.client(u) as client:
                            while todo:
                                await _send_once(client, todo[0])
                                todo.pop(0)
                    except RpcError as e:
                        self.client_errors[str(e.code)] += 1
                        await trio.sleep(0.5)
                    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
                        self.client_errors[type(e).__name__] += 1
                        await trio.sleep(0.5)

    # --- convergence ----------------------------------------------------------------------
    def replicas(self, chat: str) -> list[int]:
        """The nodes that hold (should hold) a copy of ``chat``."""
        if chat in self.groups:
            return list(range(1, self.n + 1))
        return list(self.privates[chat])

    def _heads(self, k: int) -> dict[str, tuple[int, bytes]]:
        db = self.cluster.node(k).data / DB_FILE
        with _ro(db) as c:
            rows = c.execute(
                "SELECT chat_id, max(seq), count(*) FROM events GROUP BY chat_id"
            ).fetchall()
            out = {}
            for chat, top, n in rows:
                h = c.execute(
                    "SELECT hash FROM events WHERE chat_id = ? AND seq = ?", (chat, top)
                ).fetchone()
                out[str(chat)] = (int(n), bytes(h[0]))
            return out

    def _outbox(self, k: int) -> int:
        with _ro(self.cluster.node(k).data / DB_FILE) as c:
            return int(c.execute("SELECT count(*) FROM fed_outbox").fetchone()[0])

    def _converged(self) -> bool:
        try:
            heads = {k: self._heads(k) for k in range(1, self.n + 1)}
            if any(self._outbox(k) for k in range(1, self.n + 1)):
                return False
        except sqlite3.Error:
            return False  # a node's file mid-restart: ask again
        for chat in [*self.groups, *self.privates]:
            seen = {heads[k].get(chat) for k in self.replicas(chat)}
            if len(seen) != 1 or None in seen:
                return False
        return True

    async def _await_convergence(self, start: float) -> tuple[bool, float]:
        """Wait (bounded) until every replica has its home's head and every outbox is
        empty; whether it happened, and how long after ``start`` (the heal)."""
        with trio.move_on_after(self.converge_timeout):
            while not await trio.to_thread.run_sync(self._converged):
                await trio.sleep(0.5)
            return True, trio.current_time() - start
        return False, trio.current_time() - start

    # --- the whole run --------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        report: dict[str, Any]
        async with trio.open_nursery() as nursery:
            try:
                await self.setup(nursery)
                self.start_time = trio.current_time()
                until = self.start_time + self.seconds
                stop = trio.Event()
                self.say(f"fault phase: {self.seconds:.0f}s, {len(self.schedule)} faults")
                async with trio.open_nursery() as phase:
                    phase.start_soon(self._watchdog, stop)
                    # the senders stop by themselves at `until` (a send or a connect is
                    # bounded by its timeout); the scheduler once its last fault is undone
                    async with trio.open_nursery() as work:
                        for u in self.users:
                            work.start_soon(self._sender, u, until)
                        work.start_soon(self._scheduler, until)
                    stop.set()
                heal_time = trio.current_time()
                heal_at = heal_time - self.start_time
                self.say("healing every link, restarting what is down")
                for p in self.proxies.values():
                    p.heal()
                for node in self.cluster.nodes:  # no node left stopped (hang's own undo ran)
                    self.cluster.kill(node.index, signal.SIGCONT)
                alive_at_end = {x.index: x.running for x in self.cluster.nodes}
                for node in self.cluster.nodes:  # not killed by the schedule yet not running
                    if node.index not in self.down and not node.running and node.process:
                        self.crashed.append(
                            {
                                "node": node.name,
                                "exit_code": node.process.returncode,
                                "at": round(trio.current_time() - self.start_time, 3),
                                "log_tail": node.log_tail(5),
                            }
                        )
                for node in self.cluster.nodes:
                    if not node.running:
                        await self._restart(node.index)
                self.down.clear()
                if all(x.running for x in self.cluster.nodes):
                    await self._resend_unknown(30.0)
                    converged, took = await self._await_convergence(heal_time)
                    bypassed = await self._bypassed(10.0)
                else:  # a node would not start: nothing to wait for
                    converged, took, bypassed = False, 0.0, []
                self.say(f"converged: {converged} after {took:.1f}s")
                healed_for = trio.current_time() - heal_time
            finally:
                for node in self.cluster.nodes:  # a stopped node could not obey SIGTERM
                    self.cluster.kill(node.index, signal.SIGCONT)
                with trio.CancelScope(shield=True):
                    await self.cluster.stop()
                nursery.cancel_scope.cancel()
        exit_codes = {
            x.name: (x.process.returncode if x.process is not None else None)
            for x in self.cluster.nodes
        }
        journal = self.data_dir / "proxies.log"
        journal.write_text(
            "".join(
                f"{line[: line.index(' ')]} n{i}->n{j} {line[line.index(' ') + 1 :]}\n"
                for (i, j), p in self.proxies.items()
                for line in p.journal
            )
        )
        lines = sorted(journal.read_text().splitlines())
        journal.write_text("\n".join(lines) + "\n")  # one timeline, all links
        report = self.check()
        report["proxy_journal"] = str(journal)
        report.update(
            converged=converged,
            convergence_seconds=round(took, 2),
            healed_for_seconds=round(healed_for, 2),
            healed_at_seconds=round(heal_at, 2),
            alive_at_end={f"n{k}": v for k, v in alive_at_end.items()},
            proxy_bypassed=bypassed,
            stop_exit_codes=exit_codes,
        )
        report["ok"] = bool(
            converged
            and report["lost"] == 0
            and report["duplicated"] == 0
            and report["diverged"] == 0
            and report["chain_errors"] == 0
            and report["reordered"] == 0
            and not self.crashed
            and not self.restart_failures
            and not bypassed
        )
        return report

    # --- the checks, on the stopped nodes' files ------------------------------------------
    def check(self) -> dict[str, Any]:
        """Compare what every node stored with what every client was told."""
        index = {x.node_id: x.index for x in self.cluster.nodes}
        logs: dict[int, dict[str, list[tuple[int, bytes, str | None, int | None]]]] = {}
        outboxes: dict[int, set[tuple[str, str, int]]] = {}
        chain_errors: list[dict[str, Any]] = []
        homes: dict[str, int] = {}
        chats = [*self.groups, *self.privates]
        for node in self.cluster.nodes:
            k = node.index
            logs[k] = {}
            with _ro(node.data / DB_FILE) as c:
                keys = {
                    str(f): bytes(pk)
                    for f, pk in c.execute(
                        "SELECT fingerprint, public_key FROM nodes WHERE fingerprint IS NOT NULL"
                    )
                }
                for chat in chats:
                    row = c.execute(
                        "SELECT home, last_seq FROM chats WHERE id = ?", (chat,)
                    ).fetchone()
                    if row is None:
                        continue
                    homes.setdefault(chat, index.get(str(row[0]), 0))
                    rows = c.execute(
                        "SELECT seq, raw, hash, sig, content FROM events "
                        "WHERE chat_id = ? ORDER BY seq",
                        (chat,),
                    ).fetchall()
                    try:
                        n = verify_chain(VerifyKey(keys[str(row[0])]), chat, rows)
                        if n != int(row[1]):
                            raise ChainError(f"log ends at {n}, the chat's head says {row[1]}")
                    except (ChainError, KeyError) as e:
                        chain_errors.append({"node": node.name, "chat": chat, "error": str(e)})
                    entries = []
                    for seq, raw, h, _sig, _content in rows:
                        ev = open_event(bytes(raw))
                        sender = ev.get("sender") if ev.get("kind") == "message" else None
                        entries.append((int(seq), bytes(h), sender, ev.get("rid")))
                    logs[k][chat] = entries
                outboxes[k] = {
                    (str(chat), str(addr), int(rid))
                    for chat, addr, rid in c.execute(
                        "SELECT o.chat_id, u.name || '@' || n.fingerprint, o.random_id "
                        "FROM fed_outbox o JOIN users u ON u.id = o.sender_id "
                        "JOIN nodes n ON n.id = u.node"
                    )
                }
        # same seq, same hash on every replica as on the home
        diverged: list[dict[str, Any]] = []
        for chat in chats:
            home = homes.get(chat, 0)
            want = [(s, h) for s, h, _, _ in logs.get(home, {}).get(chat, [])]
            for k in self.replicas(chat):
                got = [(s, h) for s, h, _, _ in logs[k].get(chat, [])]
                if got != want:
                    first = next(
                        (i + 1 for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                        None,
                    )
                    diverged.append(
                        {
                            "chat": chat,
                            "node": f"n{k}",
                            "home": f"n{home}",
                            "events": len(got),
                            "home_events": len(want),
                            "first_different_seq": first,
                        }
                    )
        # every message: where it is, how often
        where: dict[tuple[str, str, int], dict[int, list[int]]] = {}
        for k, per_chat in logs.items():
            for chat, entries in per_chat.items():
                for seq, _h, sender, rid in entries:
                    if sender is not None and rid is not None:
                        where.setdefault((chat, str(sender), int(rid)), {}).setdefault(
                            k, []
                        ).append(seq)
        lost: list[dict[str, Any]] = []
        duplicated: list[dict[str, Any]] = []
        still_queued = 0
        ack_mismatch: list[dict[str, Any]] = []
        reordered: list[dict[str, Any]] = []
        last_seq: dict[tuple[str, str], tuple[int, int]] = {}  # (chat, sender) -> seq, rid
        outcomes: Counter[str] = Counter()
        sent_keys = set()
        for s in self.sends:
            key = (s.chat, s.sender, s.random_id)
            sent_keys.add(key)
            outcomes[s.outcome.split(":")[0]] += 1
            copies = where.get(key, {})
            home = homes.get(s.chat, 0)
            if any(len(v) > 1 for v in copies.values()):
                duplicated.append({**asdict(s), "copies": {f"n{k}": v for k, v in copies.items()}})
            if s.outcome == "queued" and home not in copies and key in outboxes.get(s.node, set()):
                still_queued += 1
                continue
            if s.outcome in ("sequenced", "queued"):
                missing = [f"n{k}" for k in self.replicas(s.chat) if k not in copies]
                if missing:
                    lost.append({**asdict(s), "missing_on": missing})
            if s.outcome == "sequenced" and copies.get(home) and copies[home][0] != s.seq:
                ack_mismatch.append({**asdict(s), "stored_seq": copies[home][0]})
            if s.outcome in ("sequenced", "queued") and copies.get(home):
                # one client sends one at a time (a lost answer is resent before the next),
                # so its messages must be sequenced in the order it sent them: queued
                # posts "flow, in order" (issue 13), direct sends trivially
                stream = (s.chat, s.sender)
                seq = copies[home][0]
                before = last_seq.get(stream)
                if before is not None and seq < before[0]:
                    reordered.append(
                        {**asdict(s), "stored_seq": seq, "after": before[1], "after_seq": before[0]}
                    )
                last_seq[stream] = (seq, s.random_id)
        phantoms = [
            {"chat": c, "sender": a, "random_id": r}
            for (c, a, r) in where
            if (c, a, r) not in sent_keys
        ]
        stats = {f"n{i}->n{j}": p.stats() for (i, j), p in sorted(self.proxies.items())}
        log_errors = {x.name: _log_errors(x.log_path) for x in self.cluster.nodes}
        effects = {
            "dropped_bytes": sum(p.dropped_up + p.dropped_down for p in self.proxies.values()),
            "mid_frame_resets": sum(p.mid_cuts for p in self.proxies.values()),
            "duplicate_connections": sum(p.dups for p in self.proxies.values()),
            "connections_cut": sum(p.cuts for p in self.proxies.values()),
            "connections_refused": sum(p.refused for p in self.proxies.values()),
            "proxied_connections": sum(p.connections for p in self.proxies.values()),
        }
        return {
            "seed": self.seed,
            "minutes": round(self.seconds / 60, 3),
            "nodes": self.n,
            "faults": dict(sorted(self.injected.items())),
            "faults_total": sum(self.injected.values()),
            "fault_effects": effects,
            "kills": len(self.kills),
            "kill_log": self.kills,
            "skipped_faults": self.skipped,
            "messages": {
                "sent": len(self.sends),
                "acked": outcomes["sequenced"] + outcomes["queued"],
                "sequenced": outcomes["sequenced"],
                "queued": outcomes["queued"],
                "unknown": outcomes["unknown"],
                "refused": outcomes["refused"],
                "still_queued": still_queued,
            },
            "lost": len(lost),
            "duplicated": len(duplicated),
            "diverged": len(diverged) + len(ack_mismatch),
            "reordered": len(reordered),
            "chain_errors": len(chain_errors),
            "phantoms": len(phantoms),
            "crashed": self.crashed,
            "restart_failures": self.restart_failures,
            "client_errors": dict(self.client_errors),
            # not part of ok (a peer that vanished is logged), but where node bugs show
            "node_log_errors": sum(v["count"] for v in log_errors.values()),
            "details": {
                "lost": lost[:20],
                "duplicated": duplicated[:20],
                "diverged": diverged[:20],
                "ack_seq_mismatch": ack_mismatch[:20],
                "reordered": reordered[:20],
                "chain_errors": chain_errors[:20],
                "phantoms": phantoms[:20],
                "node_log_errors": log_errors,
            },
            "proxies": stats,
            "schedule": [f.describe() for f in self.schedule],
            "data_dir": str(self.data_dir),
        }


@contextlib.contextmanager
def _ro(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to a node's database (running or not)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        yield conn
    finally:
        conn.close()


def _log_errors(path: Path, keep: int = 5) -> dict[str, Any]:
    """Tracebacks and error-level lines in a node's log: not a verdict by themselves (a
    killed peer is logged), but where a node bug shows first."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"count": 0, "first": []}
    bad = [ln for ln in lines if "Traceback" in ln or '"level": "error"' in ln or " ERROR " in ln]
    return {"count": len(bad), "first": [ln[:300] for ln in bad[:keep]]}


async def run_chaos(
    seed: int,
    minutes: float,
    *,
    nodes: int = 3,
    data_dir: Path | None = None,
    schedule: list[Fault] | None = None,
    mean_gap: float = 2.0,
    max_duration: float = 8.0,
    max_down: int = 1,
    converge_timeout: float = 120.0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the fault suite for ``minutes`` of faults; the JSON-ready report.

    ``data_dir``: where the nodes live (must not hold a previous run); a fresh temporary
    folder if None (kept: its path is in the report, with the nodes' logs). Without a
    ``schedule``, :func:`plan` draws one from the seed with ``mean_gap``,
    ``max_duration`` and ``max_down`` (the report records them: a replay needs them)."""
    if data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix=f"fedgram-chaos-{seed}-"))
    elif data_dir.exists() and any(data_dir.iterdir()):
        raise ValueError(f"{data_dir} is not empty: a run needs fresh nodes")
    seconds = minutes * 60
    drawn = schedule is None
    if schedule is None:
        schedule = plan(
            seed, seconds, nodes, mean_gap=mean_gap, max_duration=max_duration, max_down=max_down
        )
    run = Chaos(
        seed,
        seconds,
        data_dir,
        nodes=nodes,
        schedule=schedule,
        converge_timeout=converge_timeout,
        log=log,
    )
    report = await run.run()
    report["plan"] = (
        {"mean_gap": mean_gap, "max_duration": max_duration, "max_down": max_down}
        if drawn
        else "given (replayed)"
    )
    return report


def dumps(report: dict[str, Any]) -> str:
    """The report as JSON (bytes, e.g. a hash, as hex)."""
    return json.dumps(report, indent=2, sort_keys=False, default=_jsonable)


def _jsonable(obj: object) -> Any:
    if isinstance(obj, bytes):
        return obj.hex()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    raise TypeError(f"not JSON: {type(obj).__name__}")
