"""The Node: wires storage, the gateway, the admin socket and the services into one nursery.

``async with Node.start(config) as node`` is the whole lifecycle: it takes the data-folder
lock, opens the database (migrations), binds the gateway and the admin socket (so a port in
use fails here, as a ConfigError, not later inside a task), serves, and on exit cancels
every task, closes sessions with NODE_SHUTDOWN and lets the storage writer flush.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import trio
from nacl.signing import SigningKey
from trio_websocket import WebSocketServer

from . import log, system
from .admin import AdminServer, bind_admin_socket
from .auth.service import Accounts
from .chats.compaction import Compaction
from .chats.service import Chats
from .config import Config, ConfigError, check_writable
from .gateway import Gateway
from .interfaces import Background
from .keyfile import load_or_create_key
from .lock import DataDirLock
from .lookup import Lookup
from .media.service import Media
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
WS_MESSAGE_QUEUE = 8  # messages trio-websocket buffers per connection before backpressure
WS_RECEIVE_BUFFER = 64 * 1024
LOCK_PATIENCE = 0.5  # seconds a starting node waits out a "is it running?" probe (lock.py)


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
        self.ratelimit = RateLimiter(
            {k: Rule.parse(v) for k, v in config.values["ratelimit"].items()}
        )
        self.router = Router(rate_check=self.ratelimit.check, present=directory.present)
        # long-running service loops (sweeps, expiry) started in the node's nursery by start()
        self.background: list[Background] = [self.events.run]
        system.register(self.router, self.describe)
        self.accounts = Accounts(config, identity, db, self.hub, directory, self.events)
        self.accounts.register(self.router)
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
        self.gateway = Gateway(config, identity, self.router, self.hub)
        self.background.append(self.gateway.heartbeats)
        self.started_at = time.time()
        self.host, self.port = config.listen

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
        return f"ws://{host}:{self.port}/"

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
        check_writable(config.data_dir)
        lock = DataDirLock(config.data_dir)
        if not lock.acquire(patience=LOCK_PATIENCE):
            raise ConfigError(f"{config.data_dir}: another node is already running on it")
        try:
            identity = load_or_create_key(config.key_path)
            config.media_dir.mkdir(exist_ok=True)
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
                server = WebSocketServer(
                    node.gateway.handle,
                    listeners,
                    message_queue_size=WS_MESSAGE_QUEUE,
                    max_message_size=config.get("limits", "frame_max_bytes"),
                    receive_buffer_size=WS_RECEIVE_BUFFER,
                    connect_timeout=config.get("timeouts", "handshake"),
                    disconnect_timeout=2,
                )
                async with trio.open_nursery() as nursery:
                    await nursery.start(server.run)
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
