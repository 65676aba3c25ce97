"""messages.*: send, edit, delete, pin, read marks, typing, search.

Each change: check the caller may, build a draft, sequence it (log.py applies it)."""

from __future__ import annotations

import re
import sqlite3
import time
from typing import TYPE_CHECKING, Any

from ..interfaces import Effects
from ..media import store as media_store
from ..protocol.errors import ErrorCode, RpcError
from . import log, receipts, store
from .events import EDIT, MESSAGE
from .handlers import Handler, Handlers, Params, Shared, caller
from .store import ADMIN_ROLES, Chat

if TYPE_CHECKING:
    from ..interfaces import CallContext

TYPING_ABSORB = 3.0  # seconds: repeated typing notices within this window are not re-sent
TYPING_MEMORY = 10_000  # most (user, chat) typing stamps kept
CONTENT_KEYS = ("text", "media", "fwd")  # what a message's erasable content holds


def _by_address(item: dict[str, Any]) -> dict[str, Any]:
    """An attachment as a message's content records it: content address and description
    (contents written before media were addressed by content also held a local id)."""
    return {k: v for k, v in item.items() if k != "media_id"}


def _fts_query(text: str) -> str:
    """User words to an FTS5 expression: every word must match, the last one as a prefix.
    Quoting each token means no user input is ever parsed as FTS syntax."""
    words = re.findall(r"\w+", text)
    if not words:
        raise RpcError(ErrorCode.SEARCH_QUERY_EMPTY)
    quoted = [f'"{w}"' for w in words[:16]]
    quoted[-1] += "*"
    return " ".join(quoted)


class Messages(Handlers):
    def __init__(self, shared: Shared) -> None:
        super().__init__(shared)
        self._typing: dict[tuple[int, str], float] = {}

    def methods(self) -> dict[str, Handler]:
        return {
            "messages.send": self.send,
            "messages.edit": self.edit,
            "messages.delete": self.delete,
            "messages.pin": self.pin,
            "messages.unpin": self.unpin,
            "messages.read": self.read,
            "messages.cancel": self.cancel,
            "messages.setTyping": self.set_typing,
            "messages.search": self.search,
            "messages.readers": self.readers,
        }

    async def send(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = caller(ctx)
        rid: int = p["random_id"]

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            chat, m = store.need_member(c, p["chat"], uid)
            if chat.kind == "channel" and m.role not in ADMIN_ROLES:
                raise RpcError(ErrorCode.CHAT_WRITE_FORBIDDEN)
            homed_here = chat.home == self.home.node_id
            # A retried send answers what the first one did. A plain one here learns it
            # from the random_id index refusing the insert (one statement fewer per send:
            # issue 17); one with media or a forward looks first, since those checks could
            # fail on the retry (the source deleted meanwhile) though the send succeeded.
            if not homed_here or "media" in p or "forward_from" in p:
                dup = _sent(c, chat.id, uid, rid)
                if dup is not None:
                    return dup
            body, content = self._compose(c, chat, m, uid, p)
            if not homed_here:
                # homed elsewhere: queued durably for the home, which sequences it (log.py)
                self.shared.remote.forward_post(
                    c, fx, chat.id, chat.home, uid, rid, {**body, **content}
                )
                return {"seq": None, "ts": time.time(), "duplicate": False, "pending": True}
            # sending reads the chat up to one's own message (log.py): that is a read
            # receipt for the messages before it, told to their senders like messages.read
            told = receipts.notified_by_read(c, chat, uid, m.read_seq, chat.last_seq)
            draft = log.Draft(MESSAGE, uid, body, content, rid)
            try:
                done = log.sequence(c, self.home, chat, draft, fx)
            except sqlite3.IntegrityError as e:
                dup = _sent(c, chat.id, uid, rid) if _RANDOM_ID_CLASH in str(e) else None
                if dup is None:
                    raise
                return dup  # nothing of this attempt was written: the insert is its first
            self._read_notice(c, fx, chat.id, uid, done.seq, told)
            return {"seq": done.seq, "ts": done.ts, "duplicate": False, "pending": False}

        return await self.write(ctx, job)

    async def cancel(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = caller(ctx)
        rid: int = p["random_id"]

        def sequenced(c: sqlite3.Connection) -> int | None:
            store.need_member(c, p["chat"], uid)
            row = c.execute(
                "SELECT seq FROM events WHERE chat_id = ? AND sender_id = ? AND random_id = ?",
                (p["chat"], uid, rid),
            ).fetchone()
            return None if row is None else int(row[0])

        seq = await self.db.read(sequenced)
        if seq is not None:
            return {"cancelled": False, "seq": seq}
        dropped = await self.shared.remote.cancel_post(p["chat"], uid, rid)
        if dropped is None:
            raise RpcError(ErrorCode.MESSAGE_NOT_FOUND, "no queued post with that random_id")
        return {"cancelled": dropped, "seq": None}

    def _compose(
        self, c: sqlite3.Connection, chat: Chat, m: store.Member, uid: int, p: Params
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """A message's signed ``body`` (stays when it is deleted) and erasable ``content``
        (committed to by hash) from a send's parameters, checked against what the sender
        may see; media as content addresses, so any node can fetch and verify them."""
        body: dict[str, Any] = {}
        content: dict[str, Any] = {}
        media: list[dict[str, Any]] = list(p.get("media", []))
        attached: list[dict[str, Any]] = []
        text = p.get("text", "")
        if "reply_to" in p:
            if not m.joined_seq <= p["reply_to"] <= chat.last_seq:
                raise RpcError(ErrorCode.MESSAGE_NOT_FOUND, "reply_to is not in this chat")
            body["reply_to"] = p["reply_to"]
        if "forward_from" in p:
            src = p["forward_from"]
            _, src_m = store.need_member(c, src["chat"], uid)
            msg = store.need_message(c, src["chat"], src["seq"], src_m.joined_seq)
            orig = msg.content()
            content["fwd"] = orig.get("fwd") or {
                "chat": src["chat"],
                "seq": src["seq"],
                "sender": store.event_out(c, msg.row)["sender"],
                "ts": msg.ts,
            }
            text = text or orig.get("text", "")
            if not media:  # the original's attachments, by content address
                attached = [_by_address(x) for x in orig.get("media", [])]
        if text:
            content["text"] = text
        if media:
            attached = media_store.describe(c, uid, media)
        if attached:
            content["media"] = attached
        if not text and not attached:
            raise RpcError(ErrorCode.MESSAGE_EMPTY)
        return body, content

    def post_from_peer(
        self, c: sqlite3.Connection, fx: Effects, chat_id: str, uid: int, rid: int, p: Params
    ) -> dict[str, Any]:
        """A post forwarded by the node of user ``uid`` (fed.post), inside a write job on
        this, the chat's home: authorized as a local member's send, idempotent by
        random_id. ``p`` holds the body and content the sender's node composed (checked
        by the federation handler's schema)."""
        chat, m = store.need_member(c, chat_id, uid)
        if chat.home != self.home.node_id:
            raise RpcError(ErrorCode.CHAT_NOT_FOUND, f"chat {chat_id} is not homed here")
        if chat.kind == "channel" and m.role not in ADMIN_ROLES:
            raise RpcError(ErrorCode.CHAT_WRITE_FORBIDDEN)
        dup = c.execute(
            "SELECT seq FROM events WHERE chat_id = ? AND sender_id = ? AND random_id = ?",
            (chat.id, uid, rid),
        ).fetchone()
        if dup is not None:
            return {"seq": dup[0], "duplicate": True}
        body: dict[str, Any] = {}
        if "reply_to" in p:
            if not 1 <= p["reply_to"] <= chat.last_seq:
                raise RpcError(ErrorCode.MESSAGE_NOT_FOUND, "reply_to is not in this chat")
            body["reply_to"] = p["reply_to"]
        content = {k: p[k] for k in ("text", "media", "fwd") if p.get(k)}
        if not content.get("text") and not content.get("media"):
            raise RpcError(ErrorCode.MESSAGE_EMPTY)
        told = receipts.notified_by_read(c, chat, uid, m.read_seq, chat.last_seq)
        done = log.sequence(c, self.home, chat, log.Draft(MESSAGE, uid, body, content, rid), fx)
        self._read_notice(c, fx, chat.id, uid, done.seq, told)  # as for a local send
        return {"seq": done.seq, "duplicate": False}

    async def edit(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = caller(ctx)

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            chat, m = store.need_member(c, p["chat"], uid)
            msg = store.need_message(c, chat.id, p["seq"], m.joined_seq)
            if msg.sender_id != uid:
                raise RpcError(ErrorCode.MESSAGE_NOT_EDITABLE)
            if time.time() - msg.ts > self.home.edit_window:
                raise RpcError(ErrorCode.EDIT_WINDOW_EXPIRED)
            current = msg.content()
            if not p["text"] and not current.get("media"):
                raise RpcError(ErrorCode.MESSAGE_EMPTY)
            # the edit's content is the message's whole new content (attachments and forward
            # origin carried over), so the content it replaces can be erased entirely
            content = {k: current[k] for k in CONTENT_KEYS if k in current}
            if "media" in content:
                content["media"] = [_by_address(x) for x in content["media"]]
            content["text"] = p["text"]
            draft = log.Draft(EDIT, uid, {"target": p["seq"]}, content)
            return {"seq": log.sequence(c, self.home, chat, draft, fx).seq}

        return await self.write(ctx, job)

    async def delete(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = caller(ctx)

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            chat, m = store.need_member(c, p["chat"], uid)
            msg = store.need_message(c, chat.id, p["seq"], m.joined_seq)
            if not p.get("for_everyone", True):
                c.execute(
                    "INSERT OR IGNORE INTO hidden_messages(user_id, chat_id, seq) VALUES (?, ?, ?)",
                    (uid, chat.id, p["seq"]),
                )
                body = {"chat": chat.id, "seq": p["seq"]}
                return {"seq": None, "pts": store.add_update(c, fx, uid, "message.hidden", body)}
            is_admin = chat.kind != "private" and m.role in ADMIN_ROLES
            if msg.sender_id != uid and not is_admin:
                raise RpcError(ErrorCode.MESSAGE_DELETE_FORBIDDEN)
            draft = log.Draft("delete", uid, {"target": p["seq"]})
            return {"seq": log.sequence(c, self.home, chat, draft, fx).seq, "pts": None}

        return await self.write(ctx, job)

    def _pinner(self, c: sqlite3.Connection, chat_id: str, uid: int) -> tuple[Chat, store.Member]:
        chat, m = store.need_member(c, chat_id, uid)
        if chat.kind != "private" and m.role not in ADMIN_ROLES:
            raise RpcError(ErrorCode.CHAT_ADMIN_REQUIRED)
        return chat, m

    async def pin(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = caller(ctx)

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            chat, m = self._pinner(c, p["chat"], uid)
            store.need_message(c, chat.id, p["seq"], m.joined_seq)
            draft = log.Draft("pin", uid, {"target": p["seq"]})
            return {"seq": log.sequence(c, self.home, chat, draft, fx).seq}

        return await self.write(ctx, job)

    async def unpin(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = caller(ctx)

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            chat, _ = self._pinner(c, p["chat"], uid)
            if chat.pinned_seq is None:
                raise RpcError(ErrorCode.MESSAGE_NOT_FOUND, "nothing is pinned")
            draft = log.Draft("unpin", uid, {"target": chat.pinned_seq})
            return {"seq": log.sequence(c, self.home, chat, draft, fx).seq}

        return await self.write(ctx, job)

    async def read(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = caller(ctx)

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            chat, m = store.need_member(c, p["chat"], uid)
            seq = min(p.get("seq", chat.last_seq), chat.last_seq)
            pts = None
            if seq > m.read_seq:
                told = receipts.notified_by_read(c, chat, uid, m.read_seq, seq)
                c.execute(
                    "UPDATE chat_members SET read_seq = ? WHERE chat_id = ? AND user_id = ?",
                    (seq, chat.id, uid),
                )
                body = {"chat": chat.id, "read_seq": seq}
                pts = store.add_update(c, fx, uid, "chat.read", body)
                self._read_notice(c, fx, chat.id, uid, seq, told)
            read_seq = max(seq, m.read_seq)
            return {
                "read_seq": read_seq,
                "unread": store.unread(c, chat.id, uid, read_seq),
                "pts": pts,
            }

        return await self.write(ctx, job)

    def read_from_peer(
        self, c: sqlite3.Connection, fx: Effects, chat_id: str, uid: int, seq: int
    ) -> int | None:
        """A member's read position as another node reports it (fed.read), inside a write
        job: moved forward only, the local senders it covers told as for a local read. On
        the chat's home the position is capped at the log's head (a replica never has
        more); a replica takes the home's word (it may be behind the home). Returns the new
        position, or None when nothing moved (not a member, not further)."""
        chat = store.get_chat(c, chat_id)
        m = store.get_member(c, chat_id, uid) if chat is not None else None
        if chat is None or m is None or m.state != "member":
            return None
        if chat.home == self.home.node_id:
            seq = min(seq, chat.last_seq)
        if seq <= m.read_seq:
            return None
        told = receipts.notified_by_read(c, chat, uid, m.read_seq, seq)
        c.execute(
            "UPDATE chat_members SET read_seq = ? WHERE chat_id = ? AND user_id = ?",
            (seq, chat_id, uid),
        )
        self._read_notice(c, fx, chat_id, uid, seq, told)
        return seq

    def _read_notice(
        self,
        c: sqlite3.Connection,
        fx: Effects,
        chat_id: str,
        reader: int,
        seq: int,
        told: list[int],
    ) -> None:
        """The chat.readOutbox push a read causes, to the senders it tells. Not stored
        (like typing): it leaves with the change once committed, after its chat events; a
        device that misses it finds the position in its dialog and history."""
        if not told:
            return
        who = store.address(c, self.home, reader)
        push = {"type": "chat.readOutbox", "chat": chat_id, "user": who, "read_seq": seq}
        fx.pushes.extend((user_id, push) for user_id in told)

    async def readers(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = caller(ctx)
        limit = p.get("limit", 100)

        def job(c: sqlite3.Connection) -> dict[str, Any]:
            chat, m = store.need_member(c, p["chat"], uid)
            msg = store.need_message(c, chat.id, p["seq"], m.joined_seq)
            rows = receipts.readers(c, chat, msg.seq, msg.sender_id, limit)
            out = []
            for user_id, read_seq in rows:
                name = c.execute(
                    "SELECT display_name FROM users WHERE id = ?", (user_id,)
                ).fetchone()
                out.append(
                    {
                        "user": store.address(c, self.home, user_id),
                        "display_name": name[0] if name else "",
                        "read_seq": read_seq,
                    }
                )
            return {
                "count": receipts.read_count(c, chat.id, msg.seq, msg.sender_id),
                "readers": out,
                "listed": chat.members <= receipts.READERS_LIST_MAX_MEMBERS,
            }

        return await self.db.read(job)

    async def set_typing(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = caller(ctx)
        chat_id = p["chat"]
        now = time.monotonic()
        last = self._typing.get((uid, chat_id))
        if last is not None and now - last < TYPING_ABSORB:
            return {}
        name = await self.db.read(
            lambda c: (store.need_member(c, chat_id, uid), store.address(c, self.home, uid))[1]
        )
        if len(self._typing) >= TYPING_MEMORY:
            self._typing = {k: t for k, t in self._typing.items() if now - t < TYPING_ABSORB}
            if len(self._typing) >= TYPING_MEMORY:
                self._typing.clear()
        self._typing[(uid, chat_id)] = now
        self.hub.push_to_chat(
            chat_id, [{"type": "chat.typing", "chat": chat_id, "user": name}], exclude_user=uid
        )
        return {}

    async def search(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = caller(ctx)
        match = _fts_query(p["query"])
        chat_id = p.get("chat")

        def job(c: sqlite3.Connection) -> dict[str, Any]:
            if chat_id is not None:
                store.need_member(c, chat_id, uid)
            return {"results": store.search(c, uid, match, chat_id, p.get("limit", 50))}

        return await self.db.read(job)


_RANDOM_ID_CLASH = "events.chat_id, events.sender_id, events.random_id"
"""In SQLite's message when the events_random unique index refuses an insert."""


def _sent(c: sqlite3.Connection, chat_id: str, uid: int, rid: int) -> dict[str, Any] | None:
    """The answer to the send of ``rid`` by ``uid`` already in ``chat_id``, if any."""
    row = c.execute(
        "SELECT seq, ts FROM events WHERE chat_id = ? AND sender_id = ? AND random_id = ?",
        (chat_id, uid, rid),
    ).fetchone()
    if row is None:
        return None
    return {"seq": row[0], "ts": row[1], "duplicate": True, "pending": False}
