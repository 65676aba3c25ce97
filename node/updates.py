"""The updates hub: which sessions are online, which chats they are in, and pushing to them.

A push is encoded once and queued on every target session without waiting
(:meth:`Session.push`): a slow session is marked behind and re-syncs instead of
slowing the sender. For chats the hub keeps an index chat -> online members, so a message
in a group of 200,000 with 50 members online costs 50 queue operations, not 200,000 lookups.

Committed changes reach the hub through :class:`Publications`, in commit order, so one chat's
events are pushed in seq order (see there).

The index is loaded from the database when a user's first session comes online. Membership
changes that commit while that load is running are recorded and replayed on top of it; each
change states the final membership of one (chat, user) pair, so replaying one that the load
already saw is harmless, and a removal can never be lost to the race (a removed member must
stop receiving the chat's events at once).
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from . import log
from .protocol import frames
from .protocol.errors import ErrorCode

if TYPE_CHECKING:
    from .gateway import Session

ChatLoader = Callable[[int], Awaitable[set[str]]]
Publish = Callable[[], None]
STALL_SECONDS = 2.0
"""How long a missing ticket may hold back the ones after it. Only a bug can leave a ticket
unreleased (every write path releases its ticket, failed or not); if one does, later pushes
go out after this delay and members fill the hole with getDifference, as after any gap."""

_log = log.get("updates")


class Publications:
    """Releases committed changes to the hub in commit order.

    Why: the tasks whose jobs one group commit carried wake in scheduler order, not in the
    order their jobs ran, so if each pushed its own event, one chat's events went out of seq
    order (measured: ~1,800 of 5,000 pushes in the reference workload's concurrent phase
    arrived after a higher seq, ~450 looked like gaps to the listener).

    How: a write job takes a *ticket* as its last step (:meth:`take`, in the storage writer
    thread; jobs run one at a time there, in commit order, so tickets are in commit order).
    After the commit its task hands the ticket back with what to push (:meth:`release`; a
    failed job hands back ``None``), and the tickets are published strictly one after the
    other. A task never waits for this: it releases and goes on to send its reply.

    Publishing happens in a task of its own (:meth:`run`), not in the releasing task: the
    tasks of one commit wake together, each releases its ticket and writes its reply to its
    socket before it first yields, and the publisher runs after them. So the sender's
    acknowledgement is still not queued behind the fan-out (the old "reply before push"),
    yet a slow socket (whose reply send blocks) holds back nobody's pushes. Without the task
    running (an offline admin command), release publishes at once."""

    def __init__(self) -> None:
        self._tickets = itertools.count(1)
        self._next = 1  # the ticket to publish next
        self._ready: dict[int, Publish | None] = {}  # released, waiting for ``_next``
        self._waiting_since = 0.0  # since when ``_ready`` waits for this ``_next``
        self._wake = trio.Event()
        self._running = False
        self.skipped = 0  # tickets given up on after STALL_SECONDS (a bug if ever non-zero)

    def take(self) -> int:
        """Called at the end of a write job, inside the transaction (writer thread)."""
        return next(self._tickets)

    def release(self, ticket: int, publish: Publish | None) -> None:
        """After the commit (or the failure) of the job that took ``ticket``."""
        if ticket < self._next:  # given up on earlier: late is better than never
            _run(publish)
            return
        if not self._ready:
            self._waiting_since = trio.current_time()
        self._ready[ticket] = publish
        if self._running:
            self._wake.set()
        else:
            self._drain()

    def _drain(self) -> None:
        advanced = False
        while self._next in self._ready:
            publish = self._ready.pop(self._next)
            self._next += 1
            advanced = True
            _run(publish)
        if advanced:
            self._waiting_since = trio.current_time()

    async def run(self) -> None:
        """The publisher task (in the node's nursery)."""
        self._running = True
        try:
            while True:
                if self._ready:
                    deadline = self._waiting_since + STALL_SECONDS
                    with trio.move_on_at(deadline):
                        await self._wake.wait()
                    if self._next not in self._ready and trio.current_time() >= deadline:
                        _log.warning(
                            "publication ticket never released; publishing past it",
                            extra={"kv": {"ticket": self._next}},
                        )
                        self.skipped += 1
                        self._next += 1
                        self._waiting_since = trio.current_time()
                else:
                    await self._wake.wait()
                self._wake = trio.Event()
                self._drain()
        finally:
            self._running = False
            self._drain()


def _run(publish: Publish | None) -> None:
    """One publication; a failing one (a bug) is logged and does not stop the others."""
    if publish is None:
        return
    try:
        publish()
    except Exception:
        _log.exception("publishing a committed change failed")


class Hub:
    def __init__(self) -> None:
        self._by_user: dict[int, dict[int, Session]] = {}
        self._chats_of: dict[int, set[str]] = {}  # online user -> chats they are in
        self._online_in: dict[str, set[int]] = {}  # chat -> its online members
        self._loading: dict[int, tuple[trio.Event, list[tuple[str, bool]]]] = {}
        self.chat_loader: ChatLoader | None = None
        self.publications = Publications()
        # how updates look to clients (the node sets it: addresses in display form)
        self.present: Callable[[Any], Any] = lambda updates: updates

    # --- sessions -------------------------------------------------------------------------
    async def attach(self, session: Session) -> None:
        uid = session.user_id
        assert uid is not None
        self._by_user.setdefault(uid, {})[session.id] = session
        if uid in self._chats_of or self.chat_loader is None:
            return
        if uid in self._loading:
            await self._loading[uid][0].wait()
            return
        done = trio.Event()
        self._loading[uid] = (done, [])
        try:
            chats = await self.chat_loader(uid)
        finally:
            _, changes = self._loading.pop(uid)
            done.set()
        if uid not in self._by_user:
            return  # every session left while we loaded
        for chat_id, is_member in changes:
            (chats.add if is_member else chats.discard)(chat_id)
        self._chats_of[uid] = chats
        for chat_id in chats:
            self._online_in.setdefault(chat_id, set()).add(uid)

    def detach(self, session: Session) -> None:
        uid = session.user_id
        if uid is None:
            return
        sessions = self._by_user.get(uid)
        if sessions is None:
            return
        sessions.pop(session.id, None)
        if sessions:
            return
        del self._by_user[uid]
        for chat_id in self._chats_of.pop(uid, ()):
            online = self._online_in.get(chat_id)
            if online is not None:
                online.discard(uid)
                if not online:
                    del self._online_in[chat_id]

    def member_changed(self, chat_id: str, user_id: int, is_member: bool) -> None:
        """Called after a membership change committed."""
        if user_id in self._loading:
            self._loading[user_id][1].append((chat_id, is_member))
        chats = self._chats_of.get(user_id)
        if chats is None:
            return
        if is_member:
            chats.add(chat_id)
            self._online_in.setdefault(chat_id, set()).add(user_id)
        else:
            chats.discard(chat_id)
            online = self._online_in.get(chat_id)
            if online is not None:
                online.discard(user_id)
                if not online:
                    del self._online_in[chat_id]

    def sessions_of(self, user_id: int) -> list[Session]:
        return list(self._by_user.get(user_id, {}).values())

    def online_devices(self, user_id: int) -> set[int]:
        return {s.device_id for s in self.sessions_of(user_id) if s.device_id is not None}

    # --- pushing --------------------------------------------------------------------------
    def push_to_user(
        self, user_id: int, updates: list[dict[str, Any]], exclude: Session | None = None
    ) -> int:
        """Queue updates for every online session of a user; returns how many took it."""
        targets = [s for s in self.sessions_of(user_id) if s is not exclude]
        if not targets:
            return 0
        items = frames.encode_updates(self.present(updates))
        return sum(1 for s in targets if s.push(items))

    def push_to_chat(
        self,
        chat_id: str,
        updates: list[dict[str, Any]],
        exclude: Session | None = None,
        exclude_user: int | None = None,
    ) -> int:
        """Queue updates for every online session of every member of a chat."""
        online = self._online_in.get(chat_id)
        if not online:
            return 0
        items = frames.encode_updates(self.present(updates))
        n = 0
        for uid in online:
            if uid == exclude_user:
                continue
            for s in self._by_user.get(uid, {}).values():
                if s is not exclude and s.push(items):
                    n += 1
        return n

    def close_user(
        self, user_id: int, reason: ErrorCode, device_id: int | None = None, keep: int | None = None
    ) -> int:
        """Close a user's sessions (all, or one device's), except device ``keep``."""
        n = 0
        for s in self.sessions_of(user_id):
            if (device_id is None or s.device_id == device_id) and s.device_id != keep:
                s.close(reason)
                n += 1
        return n
