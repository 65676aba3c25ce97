"""The chats service: chats.*, messages.*, updates.* and admin.chat* handlers, wired.

Handlers are grouped by concern, each a thin layer over the chat log (log.py): check
authorization, build a draft, hand it to ``log.sequence``; derived state is the log's.

* ``membership.py``: chats.* (create, members, roles, bans, invites, dialogs);
* ``messages.py``: messages.* (send, edit, delete, pin, read, typing, search);
* ``sync.py``: chats.history, updates.getState/getDifference;
* ``chat_admin.py``: admin.chat* (list, show, export, verify);
* ``compaction.py``: after erasures, the search index and the WAL are compacted.

Every change is one write job (:meth:`Chats.write`) that sequences events and updates
derived state in one transaction; pushes go out only after the commit and in commit order
(see node/interfaces.py's Effects and node/publications.py). Reads use the reader pool.
Authorization happens inside the job, on the same snapshot the change is made on, so a
member removed a millisecond earlier cannot slip a message in.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TypeVar

from nacl.signing import SigningKey

from .. import log as log_
from ..config import Config
from ..interfaces import CallContext, Caller, CommittedEvents, Effects, Sessions, Storage
from ..nodes import Directory
from ..protocol.errors import RpcError
from ..remote import RemoteSlot
from ..rpc import Router
from . import log, store
from .chat_admin import ChatAdmin
from .compaction import Compaction
from .handlers import Shared
from .membership import Membership
from .messages import Messages
from .store import Home
from .sync import Sync

T = TypeVar("T")
_log = log_.get("chats")


class Chats:
    def __init__(
        self,
        config: Config,
        identity: SigningKey,
        node_id: str,
        db: Storage,
        sessions: Sessions,
        events: CommittedEvents,
        compaction: Compaction,
        directory: Directory,
        remote: RemoteSlot,
    ) -> None:
        self.db = db
        self.hub = sessions
        self.events = events
        self.home = Home(
            key=identity,
            node_id=node_id,
            edit_window=float(config.get("chats", "edit_window")),
            max_group_members=int(config.get("chats", "max_group_members")),
        )
        self.difference_limit = int(config.get("chats", "difference_limit"))
        self.compaction = compaction
        events.subscribe(self._compact_after)
        shared = Shared(
            db, sessions, self.home, self.write, self.difference_limit, directory, remote
        )
        self.shared = shared
        self.messages = Messages(shared)
        self.membership = Membership(shared)
        self.handlers = (self.membership, self.messages, Sync(shared), ChatAdmin(shared))

    def register(self, router: Router) -> None:
        for group in self.handlers:
            for name, fn in group.methods().items():
                router.add(name, fn)

    async def chats_of(self, user_id: int) -> set[str]:
        """The chats a user is a member of (the hub loads it when they come online)."""
        return await self.db.read(lambda c: store.chats_of_user(c, user_id))

    # --- plumbing -----------------------------------------------------------------------
    async def write(self, ctx: CallContext, job: Callable[[sqlite3.Connection, Effects], T]) -> T:
        """Run a change as one write job; once committed, what it caused is published in
        commit order (pushes, replication) while this task goes on to reply.

        A change of a chat homed on another node fails in the job (HomeElsewhere: nothing
        was written); the call is then made on the home, as this user, through federation,
        and answers what the home answered once this node has the result replicated."""
        try:
            return await self.events.commit(self.db, job, ctx.session)
        except log.HomeElsewhere as e:
            call = ctx.extra.get("call")
            if call is None or ctx.extra.get("forwarded") or ctx.session is None:
                raise  # a call a peer made here for its user is never forwarded on
            if ctx.session.user_id is None:
                raise
            uid = ctx.session.user_id
            me = await self.db.read(lambda c: store.address(c, self.home, uid))
            assert me is not None
            method, params = call
            result: T = await self.shared.remote.act(e.home, me, method, params)
            return result

    def _compact_after(self, fx: Effects, origin: Caller | None) -> None:
        if fx.erased:
            self.compaction.erased()

    async def leave_remote_chats(self, user_id: int) -> None:
        """Before a user is removed from this node: leave the chats homed on other nodes
        through their homes (best effort: a home that cannot be reached keeps them as a
        member until it learns otherwise; this node stops replicating for them anyway)."""

        def remote_chats(c: sqlite3.Connection) -> tuple[str | None, list[tuple[str, str]]]:
            rows = c.execute(
                "SELECT c.id, c.home FROM chat_members m JOIN chats c ON c.id = m.chat_id "
                "WHERE m.user_id = ? AND m.state = 'member' AND c.home != ?",
                (user_id, self.home.node_id),
            ).fetchall()
            return store.address(c, self.home, user_id), [(str(a), str(b)) for a, b in rows]

        me, chats = await self.db.read(remote_chats)
        for chat_id, home in chats:
            try:
                await self.shared.remote.act(home, str(me), "chats.leave", {"chat": chat_id})
            except RpcError as e:
                log_.event(_log, "remote.leave_failed", chat=chat_id, why=str(e.code))

    def on_user_removed(self, conn: sqlite3.Connection, fx: Effects, user_id: int) -> None:
        """Inside the job that deletes a user from the node: they leave every chat (an event
        each, so the other members see it), and a group or channel they owned passes to an
        admin, else to the longest-standing member (a role event by the node itself)."""
        rows = conn.execute(
            "SELECT chat_id, role FROM chat_members WHERE user_id = ? AND state = 'member'",
            (user_id,),
        ).fetchall()
        for chat_id, role in rows:
            chat = store.get_chat(conn, chat_id)
            assert chat is not None
            if chat.home != self.home.node_id:
                continue  # left through its home before (leave_remote_chats)
            user = store.address(conn, self.home, user_id)
            log.sequence(conn, self.home, chat, log.Draft("leave", user_id, {"user": user}), fx)
            if role != "owner":
                continue
            heir = conn.execute(
                "SELECT user_id FROM chat_members WHERE chat_id = ? AND state = 'member' "
                "ORDER BY role = 'admin' DESC, joined_seq, user_id LIMIT 1",
                (chat_id,),
            ).fetchone()
            if heir is not None:
                body = {"user": store.address(conn, self.home, heir[0]), "role": "owner"}
                log.sequence(conn, self.home, chat, log.Draft("role", None, body), fx)
        # the leave events above looked the user up (and cached them) before their row goes
        self.home.user_ids.clear()
