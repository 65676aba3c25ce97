"""A local federation of real node processes: ``fedgram dev cluster`` and multi-node tests.

Each node is a real ``python -m cli run`` subprocess on its own data folder (``n1`` ..
``nN`` under one directory) and its own port on 127.0.0.1, so what runs here is what
runs in production: separate processes, real sockets, real signals. Faults are injected
from outside (:meth:`Cluster.kill`, :meth:`Cluster.restart`, federation/faultproxy.py),
never by reaching into a node.

Set-up goes through the same functions as ``fedgram init`` (config.init_data_dir, the
node key) with ``[federation] peering = "open"``, so the nodes accept each other without
an admin's approval. Talking to a node goes through its admin socket
(:class:`node.client.admin.AdminClient`), as ``fedgram status`` and the admin commands do.

Every wait is bounded: start-up, readiness, links coming up and stopping each have a
timeout, and a node that does not stop within ``stop_timeout`` of SIGTERM gets SIGKILL.

No orphans: on Linux each node asks the kernel for SIGTERM when the process that started
it dies (PR_SET_PDEATHSIG, set by a tiny launcher before it execs the node), so a cluster
that is itself killed -9, or a test runner that dies, does not leave nodes behind. The
signal follows the *thread* that forked, so nodes are forked from the trio thread itself
(a plain Popen, a few milliseconds), not from a worker thread that may end any time.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import trio

from node import config
from node.client.admin import AdminClient
from node.lock import node_running
from node.protocol.errors import ErrorCode, RpcError

#: demo users, one per node: ``alice@n1``, ``bob@n2``, ``carol@n3`` ... then ``user11@n11``
DEMO_USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy")
LOG_FILE = "node.log"
DEFAULT_BASE_PORT = 7600
POLL = 0.05  # seconds between looks at a process or an admin socket

# argv: PARENT_PID ARGS...: die with the parent (Linux), then become `python ARGS...`
_LAUNCHER = """
import os, signal, sys
if sys.platform.startswith("linux"):
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)  # the cluster went away before the signal was armed
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


class ClusterError(Exception):
    """A node could not be set up, did not start, or did not become ready in time."""


def _first(group: BaseExceptionGroup[Exception]) -> Exception:
    """The first failure of nodes started side by side: what the caller reports."""
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


def demo_user(index: int) -> str:
    """The demo user of node ``index`` (1-based): a readable name for the walk-through."""
    return DEMO_USERS[index - 1] if index <= len(DEMO_USERS) else f"user{index}"


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports that were free a moment ago (bound, read, released together,
    so the kernel hands out different ones). Another process may still take one before
    the node binds it; the node then fails to start and says so in its log."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class ClusterNode:
    """One node of the cluster: where it lives, where it listens, its process."""

    index: int  # 1-based: n1 is index 1
    name: str
    data: Path
    port: int
    node_id: str = ""
    url: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.data / LOG_FILE

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def wait(self) -> int:
        """Until the process ends (unbounded: callers put the bound); its exit code."""
        proc = self.process
        if proc is None:
            raise ClusterError(f"{self.name} was never started")
        while (code := proc.poll()) is None:
            await trio.sleep(POLL)
        return code

    def log_tail(self, lines: int = 1) -> str:
        """The last lines the node wrote (why it failed to start, usually)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(ln.strip() for ln in text.splitlines()[-lines:] if ln.strip())


class Cluster:
    """N node processes on 127.0.0.1, peered with each other.

    ``base_port``: node K listens on ``base_port + K`` (so n1 on 7601 with the default
    7600); 0 picks free ports. A data folder that already exists is reused as it is (its
    config.toml, and so its port, wins: the peers it knows dial it there).

    Use as ``async with Cluster.running(...) as cluster`` or ``await start()`` /
    ``await stop()`` (stop is safe to call twice and after a failed start).
    """

    def __init__(
        self,
        data_dir: Path,
        n: int,
        base_port: int = DEFAULT_BASE_PORT,
        *,
        log_level: str = "info",
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        link_timeout: float = 15.0,
        extra_config: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        if n < 1:
            raise ClusterError("a cluster needs at least one node")
        self.data_dir = data_dir.expanduser().absolute()
        self.n = n
        self.base_port = base_port
        self.log_level = log_level
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.link_timeout = link_timeout
        self.extra_config = extra_config or {}
        ports = free_ports(n) if base_port == 0 else [base_port + k for k in range(1, n + 1)]
        self.nodes = [
            ClusterNode(k, f"n{k}", self.data_dir / f"n{k}", ports[k - 1]) for k in range(1, n + 1)
        ]

    # --- the whole cluster ---------------------------------------------------------------
    @classmethod
    @asynccontextmanager
    async def running(
        cls, data_dir: Path, n: int, base_port: int = 0, **options: Any
    ) -> AsyncIterator[Cluster]:
        """A started, peered cluster, stopped on the way out whatever happens."""
        cluster = cls(data_dir, n, base_port, **options)
        try:
            await cluster.start()
            yield cluster
        finally:
            with trio.CancelScope(shield=True):
                await cluster.stop()

    async def start(self, *, peer: bool = True) -> None:
        """Prepare the data folders, start every node, wait until each answers on its admin
        socket, then (``peer``) peer every pair and wait for all links to be up. On any
        failure the nodes already started are stopped before the error is raised."""
        try:
            self.prepare()
            try:
                async with trio.open_nursery() as nursery:
                    for node in self.nodes:
                        nursery.start_soon(self._start_node, node)
            except ExceptionGroup as group:
                raise _first(group) from None  # one reason, not a group of N
            if peer:
                await self.peer_all()
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.stop()
            raise

    async def stop(self) -> None:
        """SIGTERM every running node, wait up to ``stop_timeout``, SIGKILL what is left."""
        async with trio.open_nursery() as nursery:
            for node in self.nodes:
                nursery.start_soon(self._stop_node, node)

    def prepare(self) -> None:
        """Create (or keep) each node's data folder with its config and key, as
        ``fedgram init --data D --name nK --listen 127.0.0.1:PORT`` would, plus
        ``[federation] peering = "open"``."""
        from node.keyfile import load_or_create_key
        from node.protocol.identity import fingerprint

        for node in self.nodes:
            if (node.data / config.CONFIG_FILE).exists():
                cfg = config.load(node.data)
                node.name = cfg.name
                node.port = cfg.listen[1]
            else:
                over: dict[str, dict[str, Any]] = {
                    "node": {
                        "name": node.name,
                        "listen": f"127.0.0.1:{node.port}",
                        "log_level": self.log_level,
                    },
                    # a dev cluster: nodes accept each other, and find a restarted one fast
                    "federation": {"peering": "open", "retry_max": 5.0},
                }
                cfg = config.init_data_dir(
                    node.data, config.merge(over, self.extra_config), exist_ok=False
                )
            node.node_id = fingerprint(bytes(load_or_create_key(cfg.key_path).verify_key))

    async def peer_all(self) -> None:
        """Every node adds every other (admin.peerAdd, pinned to the id it has), then wait
        until every node has its link to every other up."""
        for a in self.nodes:
            for b in self.nodes:
                if a is not b:
                    await self.admin(a.index, "admin.peerAdd", {"url": b.url, "pin": b.node_id})
        await self.wait_links_up()

    async def wait_links_up(self, timeout: float | None = None) -> None:
        """Wait until each running node lists each other running node with link ``up``."""
        live = [x for x in self.nodes if x.running]
        limit = timeout or self.link_timeout
        missing: list[str] = []
        with trio.move_on_after(limit):
            while True:
                missing = []
                for node in live:
                    peers = await self.peers(node.index)
                    up = {p["node_id"] for p in peers if p["link"] == "up"}
                    others = [o for o in live if o is not node]
                    missing += [f"{node.name}->{o.name}" for o in others if o.node_id not in up]
                if not missing:
                    return
                await trio.sleep(0.1)
        raise ClusterError(f"links not up after {limit:.0f}s: {', '.join(missing)}")

    # --- one node ------------------------------------------------------------------------
    def node(self, i: int) -> ClusterNode:
        """Node ``i``, 1-based like its name (``node(1)`` is n1)."""
        if not 1 <= i <= self.n:
            raise ClusterError(f"no node n{i} in a cluster of {self.n}")
        return self.nodes[i - 1]

    @property
    def urls(self) -> list[str]:
        return [x.url for x in self.nodes]

    @property
    def data_dirs(self) -> list[Path]:
        return [x.data for x in self.nodes]

    async def admin(self, i: int, method: str, params: dict[str, Any] | None = None) -> Any:
        """Call an admin method of node ``i`` over its admin socket."""
        async with AdminClient.connect(self.node(i).data) as admin:
            return await admin.call(method, params or {}, timeout=self.link_timeout)

    async def peers(self, i: int) -> list[dict[str, Any]]:
        return list((await self.admin(i, "admin.peerList"))["peers"])

    async def add_user(self, i: int, name: str) -> str:
        """Create user ``name`` on node ``i`` (already there is fine: a reused cluster) and
        return a fresh login code for it."""
        return str((await self.add_user_code(i, name))["code"])

    async def add_user_code(self, i: int, name: str) -> dict[str, Any]:
        """:meth:`add_user`, answering admin.userCode's ``{code, expires_in}``."""
        try:
            await self.admin(i, "admin.userAdd", {"name": name})
        except RpcError as e:
            if e.code != ErrorCode.NAME_TAKEN:
                raise
        return dict(await self.admin(i, "admin.userCode", {"name": name}))

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to node ``i``'s process (SIGKILL: a crash; SIGSTOP: a hang)."""
        proc = self.node(i).process
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)

    async def wait_exit(self, i: int, timeout: float | None = None) -> int:
        """Wait for node ``i``'s process to end; its exit code."""
        with trio.fail_after(timeout or self.stop_timeout):
            return await self.node(i).wait()

    async def restart(self, i: int) -> None:
        """Stop node ``i`` (if running) and start it again on the same folder and port;
        returns once it answers on its admin socket (its links come up on their own)."""
        node = self.node(i)
        await self._stop_node(node)
        await self._start_node(node)

    # --- processes -----------------------------------------------------------------------
    async def _start_node(self, node: ClusterNode) -> None:
        if node.running:
            return
        node.data.mkdir(parents=True, exist_ok=True)
        # the node's stdout and stderr go to its log: never to our stdout (a reader of the
        # cluster's output must see only the cluster's), never to a pipe nobody reads
        node._log = open(node.log_path, "ab")  # noqa: SIM115 - closed in _stop_node
        run = ["-m", "cli", "run", "--data", str(node.data)]
        node.process = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *run],
            stdin=subprocess.DEVNULL,
            stdout=node._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        await self._wait_ready(node)

    async def _wait_ready(self, node: ClusterNode) -> None:
        """Poll the admin socket until ``admin.status`` answers (the node is serving)."""
        proc = node.process
        assert proc is not None
        with trio.move_on_after(self.start_timeout):
            while True:
                if proc.poll() is not None:
                    raise ClusterError(
                        f"{node.name} exited with code {proc.returncode} while starting: "
                        f"{node.log_tail() or 'no output'} (log: {node.log_path})"
                    )
                if node_running(node.data):
                    try:
                        async with AdminClient.connect(node.data, timeout=2) as admin:
                            st = await admin.call("admin.status", timeout=5)
                    except RpcError:
                        pass  # the lock is taken before the socket listens: try again
                    else:
                        node.url, node.node_id = str(st["url"]), str(st["node_id"])
                        return
                await trio.sleep(POLL)
        raise ClusterError(
            f"{node.name} did not answer on its admin socket within {self.start_timeout:.0f}s "
            f"(log: {node.log_path})"
        )

    async def _stop_node(self, node: ClusterNode) -> None:
        proc = node.process
        try:
            if proc is None or proc.poll() is not None:
                return
            proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(self.stop_timeout):
                await node.wait()
                return
            proc.kill()  # it did not stop in time: no more waiting
            with trio.move_on_after(self.stop_timeout):
                await node.wait()
        finally:
            if node._log is not None:
                node._log.close()
                node._log = None
