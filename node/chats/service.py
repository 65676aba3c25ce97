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
(see :class:`store.Effects`, :class:`updates.Publications`). Reads use the reader pool.
Authorization happens inside the job, on the same snapshot the change is made on, so a
member removed a millisecond earlier cannot slip a message in.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import trio

from . import log, store
from .chat_admin import ChatAdmin
from .compaction import Compaction
from .membership import Membership
from .messages import Messages
from .store import Effects, Home
from .sync import Sync

if TYPE_CHECKING:
    from ..app import Node
    from ..gateway import Session
    from ..rpc import CallContext, Router

T = TypeVar("T")


class Chats:
    def __init__(self, node: Node) -> None:
        self.node = node
        cfg = node.config
        self.home = Home(
            key=node.identity,
            node_id=node.node_id,
            edit_window=float(cfg.get("chats", "edit_window")),
            max_group_members=int(cfg.get("chats", "max_group_members")),
        )
        self.difference_limit = int(cfg.get("chats", "difference_limit"))
        self._publications = node.hub.publications
        self.compaction = Compaction(node.db)
        node.hub.chat_loader = self._chats_of
        node.background.append(self._publications.run)
        node.background.append(self.compaction.run)
        self.handlers = (Membership(self), Messages(self), Sync(self), ChatAdmin(self))

    def register(self, router: Router) -> None:
        for group in self.handlers:
            for name, fn in group.methods().items():
                router.add(name, fn)

    async def _chats_of(self, user_id: int) -> set[str]:
        return await self.node.db.read(lambda c: store.chats_of_user(c, user_id))

    # --- plumbing -----------------------------------------------------------------------
    async def write(self, ctx: CallContext, job: Callable[[sqlite3.Connection, Effects], T]) -> T:
        """Run a change; once committed, hand what it caused to the publications, which push
        it in commit order (this task goes on to reply without waiting for that).

        The wait for the commit is shielded: a session closing meanwhile must still learn
        the outcome and release the job's ticket, or every later push would wait for it."""
        fx = Effects()
        publications = self._publications

        def run(conn: sqlite3.Connection) -> T:
            fx.reset()
            result = job(conn, fx)
            fx.ticket = publications.take()  # last: a job that raised takes none
            return result

        try:
            with trio.CancelScope(shield=True):
                result = await self.node.db.write(run)
        except BaseException:
            if fx.ticket is not None:  # the job ran but its transaction did not commit
                publications.release(fx.ticket, None)
            raise
        self._released(fx, ctx.session)
        return result

    def _released(self, fx: Effects, origin: Session | None) -> None:
        assert fx.ticket is not None
        self._publications.release(fx.ticket, lambda: self._publish(fx, origin))
        if fx.erased:
            self.compaction.erased()

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
        # the caller's job ends right after this; its commit hands fx to :meth:`publish`
        fx.ticket = self._publications.take()

    def publish(self, fx: Effects) -> None:
        """Push what a committed change outside this service (a user removal) caused."""
        if fx.ticket is None:
            self._publish(fx, None)
        else:
            self._released(fx, None)

    def _publish(self, fx: Effects, origin: Session | None) -> None:
        hub = self.node.hub
        # joins first (new members see the event that added them), leaves last (leavers see
        # the event that removed them)
        for chat_id, uid, is_member in fx.membership:
            if is_member:
                hub.member_changed(chat_id, uid, True)
        for chat_id, ev in fx.chat_events:
            hub.push_to_chat(chat_id, [{"type": "chat.event", "event": ev}], exclude=origin)
        for chat_id, uid, is_member in fx.membership:
            if not is_member:
                hub.member_changed(chat_id, uid, False)
        for uid, upd in fx.user_updates:
            hub.push_to_user(uid, [{"type": "user.update", **upd}], exclude=origin)
