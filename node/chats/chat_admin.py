"""admin.chat*: the node operator's view of chats (list, show, export, verify the log)."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from nacl.signing import VerifyKey

from .. import nodes
from ..address import canonical
from ..protocol.errors import ErrorCode, RpcError
from . import store
from .events import ChainError, verify_chain
from .handlers import Handler, Handlers, Params
from .store import Chat

if TYPE_CHECKING:
    from ..interfaces import CallContext


class ChatAdmin(Handlers):
    def methods(self) -> dict[str, Handler]:
        return {
            "admin.chatList": self.admin_list,
            "admin.chatShow": self.admin_show,
            "admin.chatExport": self.admin_export,
            "admin.chatVerify": self.admin_verify,
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
