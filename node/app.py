"""The Node: wires storage, the gateway, the admin socket and the services into one nursery.

``async with Node.start(config) as node`` is the whole lifecycle: it takes the data-folder
lock, opens the database (migrations), binds the gateway and the admin socket (so a port in
use fails here, as a ConfigError, not later inside a task), serves, and on exit cancels
every task, closes sessions with NODE_SHUTDOWN and lets the storage writer flush.
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import trio
from nacl.signing import SigningKey

from . import __version__, log, system, tls
from .admin import AdminServer, bind_admin_socket
from .admin_sessions import SessionList
from .auth.service import Accounts
from .chats.compaction import Compaction
from .chats.service import Chats
from .config import SPEC, Config, ConfigError, check_writable, parse_networks
from .gateway import Gateway
from .httpd import Front
from .interfaces import Background
from .keyfile import load_or_create_key
from .lock import DataDirLock
from .lookup import Lookup
from .media.service import Media
from .metrics import Metrics
from .nodes import Directory, ensure_self
from .protocol.identity import fingerprint
from .publications import Publications
from .push.service import PushService
from .push.store import SCHEMA as PUSH_SCHEMA
from .ratelimit import RateLimiter, Rule
from .remote import RemoteSlot
from .rpc import Router
from .secret.service import SecretService
from .secret.store import SCHEMA as SECRET_SCHEMA
from .storage import Database, Schema
from .updates import Hub

_log = log.get("node")
LOCK_PATIENCE = 0.5  # seconds a starting node waits out a "is it running?" probe (lock.py)
# The storage writer thread takes the GIL back from the event loop after every SQLite step
# and every fsync; when the loop runs Python without a system call it waits up to the
# interpreter's switch interval (5 ms by default). 0.5 ms: measured (issue 17, 8 alternating
# bench rounds on 2 cores) sequential sends 337 -> 367 msgs/s and ack p50 2.81 -> 2.43 ms in
# 7 rounds of 8, concurrent unchanged.
GIL_SWITCH_INTERVAL = 0.0005
# What a config reload (SIGHUP) applies to the running node: whole sections, or
# (section, key). Everything else is read once at start (sockets, storage, services' cached
# settings) and needs a restart; a reload says so (config.reload_ignored) and keeps it.
LIVE_SECTIONS = frozenset({"ratelimit", "accounts", "metrics"})
LIVE_KEYS = frozenset(
    {
        ("node", "log_level"),
        ("node", "log_format"),
        ("node", "log_file"),
        ("limits", "max_sessions"),  # checked at each new connection
        ("limits", "max_inflight"),  # read by each new session
        ("limits", "session_queue"),  # read by each new session
    }
)


class Part(Protocol):
    """Something built on the node that the node runs without importing it (federation):
    ``fedgram run`` hands it over. It brings its tables (``schema``) and, attached to the
    built node, registers its handlers, fills slots and adds its background tasks."""

    name: str  # the schema's ``part`` for the methods it serves
    schema: Schema | None

    def attach(self, node: Node) -> None: ...


class Node:
    """The application object: builds each service with the small interfaces it uses
    (node/interfaces.py) and owns what they share. Nothing below imports this module."""

    def __init__(
        self,
        config: Config,
        identity: SigningKey,
        db: Database,
        directory: Directory,
        parts: Sequence[Part] = (),
    ) -> None:
        self.config = config
        self.identity = identity
        self.node_id = fingerprint(bytes(identity.verify_key))
        self.db = db
        # the nodes table as addresses are formatted and resolved (node/nodes.py)
        self.directory = directory
        self.hub = Hub(present=directory.present)  # pushes leave with display addresses
        # committed changes in commit order: the hub subscribes (federation may too)
        self.events = Publications()
        self.events.subscribe(self.hub.on_committed)
        # request counters, latency histograms and gauges served as GET /metrics
        self.metrics = Metrics(self.node_id, config.name)
        self.ratelimit = RateLimiter(
            {k: Rule.parse(v) for k, v in config.values["ratelimit"].items()}
        )
        self.router = Router(rate_check=self.ratelimit.check, present=directory.present)
        # long-running service loops (sweeps, expiry) started in the node's nursery by start()
        self.background: list[Background] = [self.events.run]
        system.register(self.router, self.describe)
        self.accounts = Accounts(config, identity, db, self.hub, directory, self.events)
        self.accounts.register(self.router)
        self.background.append(self.accounts.run)  # last seen, once a minute
        SessionList(lambda: self.gateway.sessions.values(), db).register(self.router)
        # what needs another node goes through this slot; federation fills it (remote.py)
        self.remote = RemoteSlot()
        compaction = Compaction(db)
        self.chats = Chats(
            config,
            identity,
            self.node_id,
            db,
            self.hub,
            self.events,
            compaction,
            directory,
            self.remote,
        )
        self.chats.register(self.router)
        self.hub.chat_loader = self.chats.chats_of
        self.accounts.removal.append(self.chats.on_user_removed)
        self.accounts.before_removal.append(self.chats.leave_remote_chats)
        self.background.append(compaction.run)
        self.media = Media(config, db)
        self.media.register(self.router)
        self.background.append(self.media.run)
        Lookup(db, directory, self.remote).register(self.router)
        # secret chats: ciphertext queues per device; federation reaches it as node.secret
        self.secret = SecretService(
            config, db, self.events, self.hub, directory, self.remote, erased=compaction.erased
        )
        self.secret.register(self.router)
        self.accounts.revocation.append(self.secret.on_revoked)
        self.accounts.removal.append(self.secret.on_user_removed)
        self.background.append(self.secret.run)
        # push notifications for devices with no live session (node/push)
        self.push = PushService(config, db, self.hub, directory)
        self.push.register(self.router)
        self.events.subscribe(self.push.on_committed)
        self.secret.offline = self.push.secret_waiting
        self.accounts.revocation.append(self.push.on_revoked)
        self.background.append(self.push.run)
        self.parts = parts
        for part in parts:
            part.attach(self)
        missing = self.router.missing(frozenset({"node", *(p.name for p in parts)}))
        if missing:
            raise RuntimeError(f"schema methods without a handler: {', '.join(missing)}")
        self.gateway = Gateway(config, identity, self.router, self.hub, self.metrics)
        self.background += [self.gateway.heartbeats, self.gateway.flusher]
        self.started_at = time.time()
        self.host, self.port = config.listen
        self._allow = parse_networks(config.get("metrics", "allow"))
        self.metrics.gauge(
            "sessions",
            "Sessions now (handshaken WebSocket connections: clients and peer nodes).",
            self._sessions,
        )
        self.metrics.gauge(
            "handshakes_pending", "Connections in their handshake now.", self._handshakes
        )
        self.metrics.gauge(
            "storage_write_queue",
            "Write jobs waiting for the storage writer now.",
            lambda: db.stats["queued"],
        )
        self.metrics.gauge("db_bytes", "Database file plus its WAL, in bytes.", db.size_bytes)
        self.metrics.gauge(
            "ratelimit_buckets", "Partly spent rate-limit buckets held.", self._buckets
        )
        self._push_metrics()

    def _push_metrics(self) -> None:
        """Push notifications (issue 16): the notifier's counts since start and its queue."""
        what = {
            "endpoints": "Push endpoints registered (devices that want notifications).",
            "queued": "Push notifications waiting for a worker now.",
            "pending": "Push notifications being coalesced (waiting for a quiet moment) now.",
            "sent": "Push notifications delivered since start.",
            "failed": "Push notifications given up on (retries spent) since start.",
            "dropped": "Push notifications dropped because the queue was full, since start.",
            "unregistered": "Push endpoints forgotten after a 404/410, since start.",
        }
        for key, doc in what.items():
            self.metrics.gauge(f"push_{key}", doc, self._push_stat(key))

    def _push_stat(self, key: str) -> Callable[[], float]:
        return lambda: float(self.push.stats()[key])

    def _sessions(self) -> float:
        return len(self.gateway.sessions)

    def _handshakes(self) -> float:
        return self.gateway.pending

    def _buckets(self) -> float:
        return self.ratelimit.size

    def health(self) -> tuple[int, dict[str, Any]]:
        """GET /health: 200 while serving, 503 once shutting down (a load balancer stops
        sending new clients here)."""
        down = self.gateway.shutting_down
        return 503 if down else 200, {
            "status": "shutting_down" if down else "ok",
            "version": __version__,
            "node_id": self.node_id,
            "name": self.config.name,
            "uptime": round(time.time() - self.started_at, 3),
            "sessions": len(self.gateway.sessions),
        }

    async def scrape(self) -> bytes:
        """GET /metrics: the counters, the gauges and what needs a database read (media
        bytes), as Prometheus text."""

        def media(conn: sqlite3.Connection) -> tuple[int, int]:
            stored = conn.execute(
                "SELECT COALESCE(SUM(size), 0) FROM (SELECT MAX(size) AS size FROM media "
                "GROUP BY sha256)"
            ).fetchone()[0]
            parts = conn.execute("SELECT COALESCE(SUM(size), 0) FROM media_parts").fetchone()[0]
            return int(stored), int(parts)

        stored, parts = await self.db.read(media)
        return self.metrics.render(
            {
                **await self.metrics.read_async(),
                "fedgram_media_bytes": ("Bytes of stored media files (each file once).", stored),
                "fedgram_media_upload_bytes": ("Bytes of unfinished uploads' parts.", parts),
                "fedgram_uptime_seconds": (
                    "Seconds since the node started.",
                    time.time() - self.started_at,
                ),
            }
        )

    def reload(self, new: Config) -> tuple[list[str], list[str]]:
        """Apply a re-read configuration (SIGHUP): what can change live is changed in place
        (every reader of ``config.get`` sees it at once; the rate limiter and accounts are
        told); the rest keeps its old value until a restart. Returns (changed, ignored) as
        ``section.key`` names, and logs them."""
        changed: list[str] = []
        ignored: list[str] = []
        for section, keys in SPEC.items():
            for key in keys:
                old, val = self.config.values[section][key], new.values[section][key]
                if old == val:
                    continue
                if section in LIVE_SECTIONS or (section, key) in LIVE_KEYS:
                    self.config.values[section][key] = val
                    changed.append(f"{section}.{key}")
                else:
                    ignored.append(f"{section}.{key}")
        if any(k.startswith("ratelimit.") for k in changed):
            self.ratelimit.update(
                {k: Rule.parse(v) for k, v in self.config.values["ratelimit"].items()}
            )
        if any(k.startswith("accounts.") for k in changed):
            self.accounts.reconfigure(self.config)
        self._allow = parse_networks(self.config.get("metrics", "allow"))
        if changed:
            log.event(_log, "config.reloaded", changed=",".join(changed))
        else:
            log.event(_log, "config.reloaded", changed="none")
        if ignored:
            log.event(_log, "config.reload_ignored", keys=",".join(ignored), why="needs a restart")
        return changed, ignored

    def describe(self) -> dict[str, Any]:
        """What ``system.info`` and ``admin.status`` say of this node."""
        return {
            "node_id": self.node_id,
            "name": self.config.name,
            "listen": f"{self.host}:{self.port}",
            "url": self.url,
            "uptime": time.time() - self.started_at,
            "sessions": len(self.gateway.sessions),
            "db_bytes": self.db.size_bytes(),
            "data_dir": str(self.config.data_dir),
            "push": self.push.stats(),
        }

    @staticmethod
    async def _self_row(config: Config, identity: SigningKey, db: Database) -> Directory:
        """This node's row of the nodes table says its key and its configured name (a
        rename in the config changes the petname and nothing signed)."""
        key = bytes(identity.verify_key)
        book = await db.write(lambda c: ensure_self(c, fingerprint(key), key, config.name))
        return Directory(book)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "wss" if self.config.tls else "ws"
        return f"{scheme}://{host}:{self.port}/"

    @classmethod
    @asynccontextmanager
    async def offline(cls, config: Config, parts: Sequence[Part] = ()) -> AsyncIterator[Node]:
        """The node's services on its database, without gateway or admin socket.

        Admin commands use this when no node is running, so the very same handlers act
        on the database (the data-folder lock keeps a node from starting meanwhile)."""
        check_writable(config.data_dir)
        lock = DataDirLock(config.data_dir)
        if not lock.acquire(patience=LOCK_PATIENCE):
            raise ConfigError(f"{config.data_dir}: a node is running on it; use its socket")
        try:
            identity = load_or_create_key(config.key_path)
            async with Database.open(config.db_path, schemas=_schemas(parts)) as db:
                directory = await cls._self_row(config, identity, db)
                yield cls(config, identity, db, directory, parts)
        finally:
            lock.release()

    @classmethod
    @asynccontextmanager
    async def start(cls, config: Config, parts: Sequence[Part] = ()) -> AsyncIterator[Node]:
        sys.setswitchinterval(GIL_SWITCH_INTERVAL)  # the process's: a node owns it
        check_writable(config.data_dir)
        lock = DataDirLock(config.data_dir)
        if not lock.acquire(patience=LOCK_PATIENCE):
            raise ConfigError(f"{config.data_dir}: another node is already running on it")
        try:
            identity = load_or_create_key(config.key_path)
            config.media_dir.mkdir(exist_ok=True)
            ssl_context = tls.server_context(config)  # a bad certificate fails here
            tls.check_ca(config)
            host, port = config.listen
            try:
                listeners = await trio.open_tcp_listeners(port, host=host)
            except OSError as e:
                raise ConfigError(
                    f"[node] listen = {host}:{port}: cannot listen ({e.strerror})"
                ) from None
            admin_sock = bind_admin_socket(config.admin_socket)
            async with Database.open(
                config.db_path,
                schemas=_schemas(parts),
                readers=config.get("storage", "readers"),
                batch_max=config.get("storage", "batch_max"),
            ) as db:
                directory = await cls._self_row(config, identity, db)
                node = cls(config, identity, db, directory, parts)
                node.port = listeners[0].socket.getsockname()[1]
                front = Front(
                    node.gateway.handle,
                    timeout=lambda: float(config.get("timeouts", "handshake")),
                    metrics=node.metrics,
                    health=node.health,
                    scrape=node.scrape,
                    enabled=lambda: bool(config.get("metrics", "enabled")),
                    allow=lambda: node._allow,
                    ssl_context=ssl_context,
                )
                async with trio.open_nursery() as nursery:
                    await nursery.start(trio.serve_listeners, front.handle, listeners)
                    await nursery.start(
                        AdminServer(
                            node.router, admin_sock, config.get("limits", "frame_max_bytes")
                        ).serve
                    )
                    for task in node.background:
                        nursery.start_soon(task)
                    log.event(
                        _log,
                        "node.started",
                        node_id=node.node_id,
                        name=config.name,
                        url=node.url,
                        data=str(config.data_dir),
                    )
                    try:
                        yield node
                    finally:
                        with trio.CancelScope(shield=True):
                            await node.gateway.close_all(timeout=1.0)
                        nursery.cancel_scope.cancel()
            log.event(_log, "node.stopped", node_id=node.node_id)
        finally:
            with contextlib.suppress(OSError):
                config.admin_socket.unlink()
            lock.release()


def _schemas(parts: Sequence[Part]) -> list[Schema]:
    """The node's own registered schemas (the secret queues', push endpoints'), then the
    parts'."""
    return [SECRET_SCHEMA, PUSH_SCHEMA, *(p.schema for p in parts if p.schema is not None)]
