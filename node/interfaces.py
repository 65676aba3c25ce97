"""The small interfaces services are built with, instead of the whole node.

Why: a service that takes the ``Node`` reaches through it for anything (auth called
``node.chats``...), which ties every service to every other and to the application object,
and leaves nothing for a second consumer to plug into. Each service now receives exactly
these, and the application (node/app.py) wires concrete objects to them:

* :class:`Caller` and :class:`CallContext`: who made a request and over what (the gateway's
  sessions are callers; the admin socket has none);
* :class:`Sessions`: the online sessions, as the updates hub keeps them (sign-in lists a
  session, revocation closes a user's, handlers push to users and chats);
* :class:`Effects` and :class:`CommittedEvents`: what a committed change caused, published
  in commit order to whoever subscribes — the hub today (pushes to online sessions),
  federation tomorrow (replication to peers), without the service knowing either;
* :class:`UserDirectory`: addresses in and out (a local name's canonical address, this
  node's id, canonical -> display for what leaves the node).

This module holds no behaviour and imports nothing of the node but the error codes, so it
sits just above the protocol on the ground floor: everything may import it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from .protocol import frames
from .protocol.errors import ErrorCode

T = TypeVar("T")
Transport = Literal["ws", "admin"]


class Caller(Protocol):
    """A live, handshaken connection as services see it (the gateway's Session)."""

    id: int
    ip: str
    role: str  # "client" or "node": what the peer proved in the handshake
    transcript_hash: bytes
    peer_identity: bytes | None  # the peer's proven key (a node's), if any
    user_id: int | None  # set once signed in
    device_id: int | None
    device_name: str

    def push(self, updates: frames.Updates) -> bool: ...
    def resync(self) -> None: ...
    def close(self, reason: ErrorCode) -> None: ...


@dataclass
class CallContext:
    """One request: how it came (``ws`` for the gateway, ``admin`` for the admin socket)
    and from whom (None on the admin socket). ``extra`` is per-call scratch a handler may
    leave for the transport."""

    transport: Transport
    session: Caller | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Sessions(Protocol):
    """The online sessions by user and chat (node/updates.py's Hub)."""

    async def attach(self, session: Caller) -> None: ...
    def detach(self, session: Caller) -> None: ...
    def online_devices(self, user_id: int) -> set[int]: ...
    def push_to_user(
        self, user_id: int, updates: list[dict[str, Any]], exclude: Caller | None = None
    ) -> int: ...
    def push_to_chat(
        self,
        chat_id: str,
        updates: list[dict[str, Any]],
        exclude: Caller | None = None,
        exclude_user: int | None = None,
    ) -> int: ...
    def close_user(
        self, user_id: int, reason: ErrorCode, device_id: int | None = None, keep: int | None = None
    ) -> int: ...


@dataclass
class Effects:
    """What a committed change causes: chat events (client form, with their seq), pts
    updates to users, membership changes (the hub's online index, federation's replica
    set); ``erased`` says content was erased (the search index and the WAL need
    compacting); ``ticket`` is the change's place in commit order, taken at the end of the
    job (see :class:`CommittedEvents`)."""

    chat_events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    user_updates: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    membership: list[tuple[str, int, bool]] = field(default_factory=list)
    # pushes that are not stored (read receipts: chat.readOutbox), sent after the change's
    # chat events so a receipt never arrives before the message that caused it
    pushes: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    # nodes this change queued federation outbox rows for (posts to a chat's home, secret
    # envelopes): their pumps are woken by this change's publication, never before it
    # commits (a pump woken by an earlier commit reads before these rows exist)
    posts_to: set[str] = field(default_factory=set)
    envelopes_to: set[str] = field(default_factory=set)
    erased: bool = False
    ticket: int | None = None

    def reset(self) -> None:
        self.chat_events.clear()
        self.user_updates.clear()
        self.membership.clear()
        self.pushes.clear()
        self.posts_to.clear()
        self.envelopes_to.clear()
        self.erased = False
        self.ticket = None


Subscriber = Callable[[Effects, "Caller | None"], None]
"""Called once per committed change, in commit order, on the event loop; must not block.
``origin`` is the session that made the change (its own echo is usually skipped)."""

Job = Callable[[sqlite3.Connection, Effects], T]


class Storage(Protocol):
    """The database as services use it (node/storage/database.py's Database)."""

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...
    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...


class CommittedEvents(Protocol):
    """Committed changes, published in commit order to every subscriber."""

    def subscribe(self, subscriber: Subscriber) -> None: ...
    async def commit(self, db: Storage, job: Job[T], origin: Caller | None = None) -> T: ...


class UserDirectory(Protocol):
    """Addresses: canonical ones (``name@<node id>``) inside the node and in everything
    signed, display ones (``name@<petname>``) for people. Backed by the nodes table, so it
    changes when a peer is added: hold the directory, never a snapshot of it."""

    @property
    def self_id(self) -> str: ...
    def canonical_of(self, name: str) -> str: ...
    def present(self, obj: Any) -> Any: ...


Background = Callable[[], Awaitable[None]]
"""A long-running service loop (sweeps, expiry) that the node starts in its nursery."""

BackgroundTasks = Sequence[Background]


class Federated(Protocol):
    """What the node's services ask of federation when a chat or user lives on another node
    (node/remote.py holds the slot federation fills; without it, these refuse)."""

    async def ensure_user(self, node_id: str, name: str) -> None:
        """Make the remote user ``name@node_id`` a row here (asked of their node and cached);
        raises RpcError (USER_NOT_FOUND, PEER_UNREACHABLE...)."""
        ...

    def forward_post(
        self,
        conn: sqlite3.Connection,
        fx: Effects,
        chat_id: str,
        home: str,
        sender_id: int,
        random_id: int,
        params: dict[str, Any],
    ) -> None:
        """Inside the send's write job: queue the post for the chat's home (a durable outbox
        row, committed with the job), idempotent by (chat, sender, random_id)."""
        ...

    async def start_private(self, home: str, me: str, other: str) -> str:
        """Ask ``home`` (another node) to open the private chat of canonical addresses
        ``me`` and ``other``; answers its id once this node replicates it."""
        ...

    async def cancel_post(self, chat_id: str, sender_id: int, random_id: int) -> bool | None:
        """Drop a post still in the outbox: True if dropped, False if it already left for
        the home (it is in flight), None if there is no such post queued."""
        ...

    async def act(self, home: str, sender: str, method: str, params: dict[str, Any]) -> Any:
        """Make a call (an edit, a pin, a join...) on ``home`` as this node's user
        ``sender``; answers the home's result once this node replicated what it did."""
        ...

    async def fetch_media(
        self, node_id: str, sha256: str, offset: int, length: int, *, opaque: bool = False
    ) -> tuple[bytes, int]:
        """One range of the file with SHA-256 ``sha256`` (hex) from node ``node_id``
        (fed.media): its bytes and the whole file's size as that node says, unverified (the
        caller verifies the assembled file). ``opaque``: only a file that node marked
        opaque (a secret chat's ciphertext) will do, never one readable by the chat rule.
        Raises RpcError (PEER_UNREACHABLE, MEDIA_NOT_FOUND, NOT_A_REPLICA...)."""
        ...


class SecretRelay(Protocol):
    """What the node's secret-chat queues ask of federation for a device on another node
    (docs/secret-chats.md section 4; node/remote.py holds the slot, else FEDERATION_OFF)."""

    def secret_forward(self, conn: sqlite3.Connection, fx: Effects, item: dict[str, Any]) -> None:
        """Inside ``secret.send``'s write job: store one envelope for a device on another
        node in the durable secret outbox (committed with the job; idempotent by sender,
        sender device and id) and forward it once the job commits. ``item`` has the
        fields of a ``fed.secretPut`` item."""
        ...

    async def secret_keys(self, address: str) -> dict[str, Any]:
        """``secret.getKeys`` for a user of another node (canonical ``address``), asked of
        that node directly or through a peer linked to it (``fed.secretKeys``)."""
        ...
