"""admin.chat*: the node operator's view of chats (list, show, export, verify the log), and
purging one from this node."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from nacl.signing import VerifyKey

from .. import log as log_
from .. import nodes
from ..address import canonical
from ..interfaces import Effects
from ..protocol.errors import ErrorCode, RpcError
from ..storage import at_batch_end
from . import store
from .events import ChainError, verify_chain
from .handlers import Handler, Handlers, Params
from .store import Chat

if TYPE_CHECKING:
    from ..interfaces import CallContext

_log = log_.get("chats")


class ChatAdmin(Handlers):
    def methods(self) -> dict[str, Handler]:
        return {
            "admin.chatList": self.admin_list,
            "admin.chatShow": self.admin_show,
            "admin.chatExport": self.admin_export,
            "admin.chatVerify": self.admin_verify,
            "admin.chatPurge": self.admin_purge,
        }

    async def admin_list(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        def job(c: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = c.execute(
                "SELECT id, kind, title, members, last_seq, created, home FROM chats "
                "ORDER BY created"
            )
            return [
                {
                    "id": r[0],
                    "kind": r[1],
                    "title": r[2],
                    "members": r[3],
                    "last_seq": r[4],
                    "created": r[5],
                    "home": r[6],
                }
                for r in rows
            ]

        return {"chats": await self.db.read(job)}

    def _need_chat(self, c: sqlite3.Connection, chat_id: str) -> Chat:
        chat = store.get_chat(c, chat_id)
        if chat is None:
            raise RpcError(ErrorCode.CHAT_NOT_FOUND, f"no chat {chat_id}")
        return chat

    @staticmethod
    def _home_key(c: sqlite3.Connection, chat: Chat) -> bytes:
        """The key of the chat's home node (the signer of its log), from the nodes table: this
        node's own for chats made here, a peer's for a replica."""
        key = nodes.public_key(c, chat.home)
        if key is None:  # a chat only arrives from a node this one knows
            raise RpcError(ErrorCode.INTERNAL, f"chat {chat.id}: home node {chat.home} unknown")
        return key

    async def admin_show(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        def job(c: sqlite3.Connection) -> dict[str, Any]:
            chat = self._need_chat(c, p["chat"])
            members = [
                {"user": canonical(r[0], r[3]), "role": r[1], "state": r[2]}
                for r in c.execute(
                    "SELECT u.name, m.role, m.state, n.fingerprint FROM chat_members m "
                    "JOIN users u ON u.id = m.user_id JOIN nodes n ON n.id = u.node "
                    "WHERE m.chat_id = ? ORDER BY m.state, u.name LIMIT 100",
                    (chat.id,),
                )
            ]
            last = store.history(
                c, 0, chat.id, store.Member(0, "member", "member", 1, 0), None, None, 20
            )
            return {
                "id": chat.id,
                "kind": chat.kind,
                "title": chat.title,
                "about": chat.about,
                "home": chat.home,
                "created": chat.created,
                "members": chat.members,
                "last_seq": chat.last_seq,
                "pinned_seq": chat.pinned_seq,
                "member_list": members,
                "last_events": last,
            }

        return await self.db.read(job)

    async def admin_export(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        def job(c: sqlite3.Connection) -> dict[str, Any]:
            chat = self._need_chat(c, p["chat"])
            rows = c.execute(
                "SELECT seq, raw, hash, sig, content FROM events WHERE chat_id = ? AND seq > ? "
                "ORDER BY seq LIMIT ?",
                (chat.id, p.get("after", 0), p.get("limit", 1000)),
            )
            # content: the record raw's content_hash commits to; None if erased or never any
            return {
                "events": [
                    {"seq": r[0], "raw": r[1], "hash": r[2], "sig": r[3], "content": r[4]}
                    for r in rows
                ],
                "home_key": self._home_key(c, chat),
            }

        return await self.db.read(job)

    async def admin_verify(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        def job(c: sqlite3.Connection) -> dict[str, Any]:
            chat = self._need_chat(c, p["chat"])
            key = VerifyKey(self._home_key(c, chat))
            rows = c.execute(
                "SELECT seq, raw, hash, sig, content FROM events WHERE chat_id = ? ORDER BY seq",
                (chat.id,),
            )
            try:
                n = verify_chain(key, chat.id, rows)
            except ChainError as e:
                return {"ok": False, "events": chat.last_seq, "error": str(e)}
            if n != chat.last_seq:
                return {
                    "ok": False,
                    "events": n,
                    "error": f"log ends at {n}, head says {chat.last_seq}",
                }
            return {"ok": True, "events": n, "error": None}

        return await self.db.read(job)

    async def admin_purge(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        """Remove a chat and everything of it from this node: its log (events, content,
        search index), members, invites, per-user "deleted for me" marks, media references,
        and the media rows only its messages carried (their bytes go with the next media
        sweep, which ``fedgram chat purge`` runs at once). Each local member gets a
        ``chat.left`` update (reason ``purged``) so their devices drop the dialog.

        Federation: a chat homed on another node (a replica here) is first left through its
        home by each local member, or the home would send it again; if the home cannot be
        reached, nothing is purged (try again later). A chat homed here is gone for good on
        this node; other nodes' replicas keep the copy they hold (no node can make another
        forget), but can no longer post to it or pull from it."""
        chat_id = p["chat"]

        def look(c: sqlite3.Connection) -> tuple[Chat, list[str]]:
            chat = self._need_chat(c, chat_id)
            local = [
                str(store.address(c, self.home, int(r[0])))
                for r in c.execute(
                    "SELECT m.user_id FROM chat_members m JOIN users u ON u.id = m.user_id "
                    f"WHERE m.chat_id = ? AND m.state = 'member' AND u.node = {nodes.SELF_ROW}",
                    (chat_id,),
                )
            ]
            return chat, local

        chat, local = await self.db.read(look)
        left = 0
        if chat.home != self.home.node_id:
            for member in local:
                try:
                    await self.shared.remote.act(
                        chat.home, member, "chats.leave", {"chat": chat_id}
                    )
                except RpcError as e:
                    raise RpcError(
                        e.code,
                        f"the chat's home ({chat.home}) must hear that {member} left before "
                        f"this node forgets the chat, or it would send it again: {e.message}; "
                        "nothing was purged, try again when it is reachable",
                        e.retry_after,
                    ) from None
                left += 1

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            self._need_chat(c, chat_id)
            members = [
                int(r[0])
                for r in c.execute(
                    "SELECT user_id FROM chat_members WHERE chat_id = ? AND state = 'member'",
                    (chat_id,),
                )
            ]
            for uid in members:
                store.add_update(c, fx, uid, "chat.left", {"chat": chat_id, "reason": "purged"})
                fx.membership.append((chat_id, uid, False))
            # media rows that no message outside this chat carries go with it
            only_here = [
                str(r[0])
                for r in c.execute(
                    "SELECT DISTINCT r.media_id FROM media_refs r WHERE r.chat_id = ? "
                    "AND NOT EXISTS (SELECT 1 FROM media_refs o WHERE o.media_id = r.media_id "
                    "AND o.chat_id != ?)",
                    (chat_id, chat_id),
                )
            ]
            c.execute("DELETE FROM media_refs WHERE chat_id = ?", (chat_id,))
            c.executemany("DELETE FROM media WHERE id = ?", [(m,) for m in only_here])
            events = c.execute("SELECT count(*) FROM events WHERE chat_id = ?", (chat_id,))
            n_events = int(events.fetchone()[0])
            # by rowid, with the index's other writes at the batch's end (after the inserts
            # of this batch's earlier sends to the chat)
            ids = c.execute("SELECT id FROM events WHERE chat_id = ?", (chat_id,)).fetchall()
            at_batch_end(c, store.FTS_DELETE, ids)
            c.execute("DELETE FROM events WHERE chat_id = ?", (chat_id,))
            c.execute("DELETE FROM hidden_messages WHERE chat_id = ?", (chat_id,))
            c.execute("DELETE FROM private_chats WHERE chat_id = ?", (chat_id,))
            # posts of this node's users still queued for the chat's home (federation's
            # outbox, when the node runs federation): the chat is gone, so are they
            if c.execute("SELECT 1 FROM sqlite_master WHERE name = 'fed_outbox'").fetchone():
                c.execute("DELETE FROM fed_outbox WHERE chat_id = ?", (chat_id,))
            c.execute("DELETE FROM chats WHERE id = ?", (chat_id,))  # members, invites cascade
            fx.erased = True  # compact the search index and the WAL (secure_delete zeroes)
            return {"events": n_events, "members": len(members), "media": len(only_here)}

        out = await self.write(ctx, job)
        log_.event(_log, "chat.purged", chat=chat_id, home=chat.home, **out)
        return {"chat": chat_id, "home": chat.home, "left_home": left, **out}
