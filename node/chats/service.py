"""Chats, messages and sync: the handlers of chats.*, messages.*, updates.* and admin.chat*.

Every change is one write job that appends signed events and updates derived state in one
transaction; pushes go out only after the commit and in commit order (see
:class:`store.Effects`, :class:`updates.Publications`). Reads use the reader pool.
Authorization happens inside the job, on the same snapshot the change is made on, so a
member removed a millisecond earlier cannot slip a message in.

Erasing content (delete for everyone, the text an edit replaced) clears it from its row and
from the search index in the job itself; :meth:`Chats.compact` then, in the background,
merges the search index's segments (SQLite FTS5 only marks a deleted row's words as deleted
until the segments holding them are merged) and truncates the WAL (which still holds the
pages as they were before), so the words are gone from the files, not just from the answers.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import cbor2
import trio

from .. import log
from ..protocol.errors import ErrorCode, RpcError
from . import store
from .events import EDIT, MESSAGE, ChainError, verify_chain
from .store import ADMIN_ROLES, Chat, Effects, Home

if TYPE_CHECKING:
    from ..app import Node
    from ..gateway import Session
    from ..rpc import CallContext, Router

T = TypeVar("T")
Params = dict[str, Any]
TYPING_ABSORB = 3.0  # seconds: repeated typing notices within this window are not re-sent
TYPING_MEMORY = 10_000  # most (user, chat) typing stamps kept
TOTAL_EVENTS_PER_DIFFERENCE = 5_000
UPDATES_PER_DIFFERENCE = 1_000
CONTENT_KEYS = ("text", "media", "fwd")  # what a message's erasable content holds
# Compaction after erasures (see Chats.compact). A round rewrites the whole search index in
# small steps: measured ~0.65 s of writer time per 100,000 messages, steps of <= ~25 ms.
FTS_MERGE_PAGES = 16  # search-index pages merged per write job
COMPACT_DEBOUNCE = 1.0  # seconds: a burst of edits/deletes shares one round
COMPACT_MIN_GAP = 10.0  # seconds between rounds at least ...
COMPACT_DUTY = 10.0  # ... and at least this many times the last round's duration
WAL_TRUNCATE_TRIES = 5
_log = log.get("chats")


def _uid(ctx: CallContext) -> int:
    assert ctx.session is not None and ctx.session.user_id is not None
    return ctx.session.user_id


def _fts_query(text: str) -> str:
    """User words to an FTS5 expression: every word must match, the last one as a prefix.
    Quoting each token means no user input is ever parsed as FTS syntax."""
    words = re.findall(r"\w+", text)
    if not words:
        raise RpcError(ErrorCode.SEARCH_QUERY_EMPTY)
    quoted = [f'"{w}"' for w in words[:16]]
    quoted[-1] += "*"
    return " ".join(quoted)


def _merge_step(conn: sqlite3.Connection) -> bool:
    """One bounded merge of the search index's segments; False once there was nothing left
    to merge (the special INSERT itself counts as one change)."""
    before = conn.total_changes
    conn.execute(
        "INSERT INTO events_fts(events_fts, rank) VALUES ('merge', ?)", (-FTS_MERGE_PAGES,)
    )
    return conn.total_changes - before > 1


def _truncate_wal(path: Path) -> bool:
    """Checkpoint the WAL into the database and truncate it to zero bytes (thread).

    Its own short-lived connection: a checkpoint cannot run inside the writer's transaction
    and the pool's readers are read-only. TRUNCATE waits for the writer and for readers on
    older snapshots (at most the busy timeout, while writers wait too), so a busy node is
    retried a little later instead of stalling."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout = 200")
        for _ in range(WAL_TRUNCATE_TRIES):
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if busy == 0:
                return True
            time.sleep(0.05)
        _log.info("WAL truncation after an erasure deferred: the database stayed busy")
        return False
    finally:
        conn.close()


class Chats:
    def __init__(self, node: Node) -> None:
        self.node = node
        cfg = node.config
        self.home = Home(
            key=node.identity,
            node_id=node.node_id,
            node_name=cfg.name,
            edit_window=float(cfg.get("chats", "edit_window")),
            max_group_members=int(cfg.get("chats", "max_group_members")),
        )
        self.difference_limit = int(cfg.get("chats", "difference_limit"))
        self._typing: dict[tuple[int, str], float] = {}
        self._publications = node.hub.publications
        node.hub.chat_loader = self._chats_of
        node.background.append(self._publications.run)
        node.background.append(self.compact)
        self._erased = trio.Event()  # set when content was erased since the last compaction
        self._compacting = False
        self.compactions = 0  # finished compaction rounds
        self.compact_min_gap = COMPACT_MIN_GAP  # tests shorten it

    async def _chats_of(self, user_id: int) -> set[str]:
        return await self.node.db.read(lambda c: store.chats_of_user(c, user_id))

    # --- plumbing -----------------------------------------------------------------------
    async def _write(self, ctx: CallContext, job: Callable[[sqlite3.Connection, Effects], T]) -> T:
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
            self._erased.set()

    # --- erasure compaction ---------------------------------------------------------------
    async def compact(self) -> None:
        """Background task: after content was erased, merge the search index until no segment
        still holds the erased words, then truncate the WAL, which holds the pages as they
        were before the erasure. (Rows themselves are overwritten with zeros by SQLite's
        secure_delete, which the writer connection enables.)

        So erased words leave the files about a second after the erasure when the node is
        quiet, and within COMPACT_MIN_GAP (or ten times the last round, on a big index) plus
        one round when erasures keep coming."""
        while True:
            await self._erased.wait()
            await trio.sleep(COMPACT_DEBOUNCE)
            self._erased = trio.Event()  # erasures from now on ask for another round
            self._compacting = True
            started = trio.current_time()
            try:
                finished = await self._merge_search_index()
                truncated = await trio.to_thread.run_sync(_truncate_wal, self.node.db.path)
            finally:
                self._compacting = False
            if finished and truncated:
                self.compactions += 1
            else:
                self._erased.set()  # not done: the next round continues
            # rounds rewrite the whole index: never more than ~1/COMPACT_DUTY of the writer
            took = trio.current_time() - started
            await trio.sleep(max(self.compact_min_gap, COMPACT_DUTY * took))

    @property
    def erasure_pending(self) -> bool:
        """Content was erased and the compaction that clears its traces has not finished."""
        return self._compacting or self._erased.is_set()

    async def _merge_search_index(self) -> bool:
        """Incremental FTS5 'merge' steps (small write jobs between everyone else's) until the
        index is one segment, in which deleted entries no longer exist. Bounded: under a
        steady stream of new messages it may not settle, then the next round continues."""
        pages: int = await self.node.db.read(
            lambda c: c.execute("SELECT COUNT(*) FROM events_fts_data").fetchone()[0]
        )
        for _ in range(2 * pages // FTS_MERGE_PAGES + 8):
            if not await self.node.db.write(_merge_step):
                return True
        return False

    def on_user_removed(self, conn: sqlite3.Connection, fx: Effects, user_id: int) -> None:
        """Inside the job that deletes a user from the node: they leave every chat (an event
        each, so the other members see it), and a group or channel they owned passes to an
        admin, else to the longest-standing member."""
        rows = conn.execute(
            "SELECT chat_id, role FROM chat_members WHERE user_id = ? AND state = 'member'",
            (user_id,),
        ).fetchall()
        for chat_id, role in rows:
            chat = store.get_chat(conn, chat_id)
            assert chat is not None
            store.end_membership(conn, self.home, fx, chat, user_id, user_id, "left")
            if role != "owner":
                continue
            heir = conn.execute(
                "SELECT user_id FROM chat_members WHERE chat_id = ? AND state = 'member' "
                "ORDER BY role = 'admin' DESC, joined_seq, user_id LIMIT 1",
                (chat_id,),
            ).fetchone()
            if heir is not None:
                user = store.address(conn, self.home, heir[0])
                store.append(
                    conn, self.home, fx, chat, "role", None, {"user": user, "role": "owner"}
                )
                conn.execute(
                    "UPDATE chat_members SET role = 'owner' WHERE chat_id = ? AND user_id = ?",
                    (chat_id, heir[0]),
                )
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

    def register(self, router: Router) -> None:
        for name, fn in {
            "chats.list": self.list,
            "chats.get": self.get,
            "chats.startPrivate": self.start_private,
            "chats.createGroup": self.create_group,
            "chats.createChannel": self.create_channel,
            "chats.members": self.members,
            "chats.addMembers": self.add_members,
            "chats.kick": self.kick,
            "chats.unban": self.unban,
            "chats.setRole": self.set_role,
            "chats.leave": self.leave,
            "chats.edit": self.edit_chat,
            "chats.createInvite": self.create_invite,
            "chats.join": self.join,
            "chats.updateDialog": self.update_dialog,
            "chats.history": self.history,
            "messages.send": self.send,
            "messages.edit": self.edit,
            "messages.delete": self.delete,
            "messages.pin": self.pin,
            "messages.unpin": self.unpin,
            "messages.read": self.read,
            "messages.setTyping": self.set_typing,
            "messages.search": self.search,
            "updates.getState": self.get_state,
            "updates.getDifference": self.get_difference,
            "admin.chatList": self.admin_list,
            "admin.chatShow": self.admin_show,
            "admin.chatExport": self.admin_export,
            "admin.chatVerify": self.admin_verify,
        }.items():
            router.add(name, fn)

    # --- chats.* ------------------------------------------------------------------------
    async def list(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = _uid(ctx)
        archived = p.get("archived")
        return {
            "chats": await self.node.db.read(lambda c: store.dialogs(c, self.home, uid, archived))
        }

    async def get(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = _uid(ctx)

        def job(c: sqlite3.Connection) -> dict[str, Any]:
            store.need_member(c, p["chat"], uid)
            return store.dialog(c, self.home, p["chat"], uid)

        return {"chat": await self.node.db.read(job)}

    async def start_private(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = _uid(ctx)

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            ref = p["user"].lstrip("@")
            try:
                peer = next(iter(store.user_ids(c, self.home, [ref]).values()))
            except RpcError as e:
                raise RpcError(ErrorCode.PEER_INVALID, e.message) from None
            if peer == uid:
                raise RpcError(ErrorCode.PEER_INVALID, "a private chat needs another user")
            lo, hi = sorted((uid, peer))
            # the chat of these two accounts (a removed account's rows went with it)
            row = c.execute(
                "SELECT chat_id FROM private_chats WHERE user_lo = ? AND user_hi = ?", (lo, hi)
            ).fetchone()
            created = row is None
            if created:
                chat_id = store.new_private_chat_id(c, self.home, uid, peer)
                store.create_chat(c, self.home, fx, chat_id, "private", uid, "", "", [peer])
                c.execute(
                    "INSERT INTO private_chats(user_lo, user_hi, chat_id) VALUES (?, ?, ?)",
                    (lo, hi, chat_id),
                )
            else:
                chat_id = row[0]
            return {"chat": store.dialog(c, self.home, chat_id, uid), "created": created}

        return await self._write(ctx, job)

    async def _create(self, ctx: CallContext, p: Params, kind: str) -> dict[str, Any]:
        uid = _uid(ctx)
        names = list(p.get("members", []))

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            ids = list(store.user_ids(c, self.home, [n.lstrip("@") for n in names]).values())
            if kind == "group" and len(set(ids) | {uid}) > self.home.max_group_members:
                raise RpcError(ErrorCode.CHAT_TOO_BIG)
            chat_id = store.new_chat_id()
            store.create_chat(
                c, self.home, fx, chat_id, kind, uid, p["title"], p.get("about", ""), ids
            )
            return {"chat": store.dialog(c, self.home, chat_id, uid)}

        return await self._write(ctx, job)

    async def create_group(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        return await self._create(ctx, p, "group")

    async def create_channel(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        return await self._create(ctx, p, "channel")

    async def members(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = _uid(ctx)
        state = p.get("state", "member")

        def job(c: sqlite3.Connection) -> dict[str, Any]:
            store.need_member(c, p["chat"], uid)
            rows = c.execute(
                "SELECT u.name, u.display_name, m.role, m.state FROM chat_members m "
                "JOIN users u ON u.id = m.user_id WHERE m.chat_id = ? AND m.state = ? "
                "ORDER BY CASE m.role WHEN 'owner' THEN 0 WHEN 'admin' THEN 1 ELSE 2 END, "
                "u.name LIMIT ? OFFSET ?",
                (p["chat"], state, p.get("limit", 200), p.get("offset", 0)),
            ).fetchall()
            count = c.execute(
                "SELECT COUNT(*) FROM chat_members WHERE chat_id = ? AND state = ?",
                (p["chat"], state),
            ).fetchone()[0]
            node = self.home.node_name
            return {
                "members": [
                    {"user": f"{r[0]}@{node}", "display_name": r[1], "role": r[2], "state": r[3]}
                    for r in rows
                ],
                "count": count,
            }

        return await self.node.db.read(job)

    async def add_members(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = _uid(ctx)

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            chat, m = store.need_member(c, p["chat"], uid)
            if chat.kind == "private":
                raise RpcError(ErrorCode.CHAT_ADMIN_REQUIRED, "private chats have two members")
            if chat.kind == "channel" and m.role not in ADMIN_ROLES:
                raise RpcError(ErrorCode.CHAT_ADMIN_REQUIRED)
            ids = list(store.user_ids(c, self.home, [u.lstrip("@") for u in p["users"]]).values())
            if m.role not in ADMIN_ROLES:
                for target in ids:  # members may add, but only admins may re-admit the banned
                    t = store.get_member(c, chat.id, target)
                    if t is not None and t.state == "banned":
                        raise RpcError(ErrorCode.USER_BANNED_IN_CHAT)
            ev = store.add_members(c, self.home, fx, chat, uid, ids)
            return {"seq": ev["seq"] if ev else None}

        return await self._write(ctx, job)

    def _target(self, c: sqlite3.Connection, ref: str) -> int:
        return next(iter(store.user_ids(c, self.home, [ref.lstrip("@")]).values()))

    async def kick(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = _uid(ctx)

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            chat, me = store.need_admin(c, p["chat"], uid)
            target = self._target(c, p["user"])
            t = store.get_member(c, chat.id, target)
            if target == uid:
                raise RpcError(ErrorCode.CHAT_ADMIN_REQUIRED, "use chats.leave to leave")
            if t is not None and t.role in ADMIN_ROLES and me.role != "owner":
                raise RpcError(ErrorCode.CHAT_OWNER_REQUIRED, "only the owner removes admins")
            if t is not None and t.role == "owner":
                raise RpcError(ErrorCode.CHAT_OWNER_REQUIRED, "the owner cannot be removed")
            state = "banned" if p.get("ban") else "kicked"
            ev = store.end_membership(c, self.home, fx, chat, uid, target, state)
            return {"seq": ev["seq"]}

        return await self._write(ctx, job)

    async def unban(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = _uid(ctx)

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            chat, _ = store.need_admin(c, p["chat"], uid)
            target = self._target(c, p["user"])
            t = store.get_member(c, chat.id, target)
            if t is None or t.state != "banned":
                raise RpcError(ErrorCode.NOT_A_MEMBER, "that user is not banned here")
            user = store.address(c, self.home, target)
            ev = store.append(c, self.home, fx, chat, "unban", uid, {"user": user})
            c.execute(
                "UPDATE chat_members SET state = 'kicked' WHERE chat_id = ? AND user_id = ?",
                (chat.id, target),
            )
            return {"seq": ev["seq"]}

        return await self._write(ctx, job)

    async def set_role(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = _uid(ctx)

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            chat, me = store.need_admin(c, p["chat"], uid)
            if me.role != "owner":
                raise RpcError(ErrorCode.CHAT_OWNER_REQUIRED)
            target = self._target(c, p["user"])
            t = store.get_member(c, chat.id, target)
            if t is None or t.state != "member":
                raise RpcError(ErrorCode.NOT_A_MEMBER, "that user is not a member")
            if target == uid:
                raise RpcError(ErrorCode.CHAT_OWNER_REQUIRED, "hand ownership to someone else")
            role = p["role"]
            user = store.address(c, self.home, target)
            ev = store.append(c, self.home, fx, chat, "role", uid, {"user": user, "role": role})
            set_role = "UPDATE chat_members SET role = ? WHERE chat_id = ? AND user_id = ?"
            c.execute(set_role, (role, chat.id, target))
            if role == "owner":
                c.execute(set_role, ("admin", chat.id, uid))
            return {"seq": ev["seq"]}

        return await self._write(ctx, job)

    async def leave(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = _uid(ctx)

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            chat, m = store.need_member(c, p["chat"], uid)
            if chat.kind == "private":
                raise RpcError(ErrorCode.CANNOT_LEAVE_PRIVATE)
            if m.role == "owner" and chat.members > 1:
                raise RpcError(ErrorCode.OWNER_CANNOT_LEAVE)
            ev = store.end_membership(c, self.home, fx, chat, uid, uid, "left")
            return {"seq": ev["seq"]}

        return await self._write(ctx, job)

    async def edit_chat(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = _uid(ctx)

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            chat, _ = store.need_admin(c, p["chat"], uid)
            seqs = []
            for key in ("title", "about"):
                if key in p and p[key] != getattr(chat, key):
                    ev = store.append(c, self.home, fx, chat, key, uid, {key: p[key]})
                    c.execute(f"UPDATE chats SET {key} = ? WHERE id = ?", (p[key], chat.id))
                    seqs.append(ev["seq"])
            return {"seqs": seqs}

        return await self._write(ctx, job)

    async def create_invite(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = _uid(ctx)

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            chat, _ = store.need_admin(c, p["chat"], uid)
            token = store.create_invite(c, chat.id, uid, p.get("uses"), p.get("expires_in"))
            return {"invite": token}

        return await self._write(ctx, job)

    async def join(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = _uid(ctx)

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            chat = store.get_chat(c, store.use_invite(c, p["invite"]))
            if chat is None:
                raise RpcError(ErrorCode.CHAT_INVITE_INVALID)
            ev = store.add_members(c, self.home, fx, chat, uid, [uid], kind="join")
            assert ev is not None
            return {"chat": store.dialog(c, self.home, chat.id, uid), "seq": ev["seq"]}

        return await self._write(ctx, job)

    async def update_dialog(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = _uid(ctx)

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            store.need_member(c, p["chat"], uid)
            for key in ("pinned", "muted", "archived"):
                if key in p:
                    c.execute(
                        f"UPDATE chat_members SET {key} = ? WHERE chat_id = ? AND user_id = ?",
                        (int(p[key]), p["chat"], uid),
                    )
            row = c.execute(
                "SELECT pinned, muted, archived FROM chat_members WHERE chat_id = ? "
                "AND user_id = ?",
                (p["chat"], uid),
            ).fetchone()
            body = {
                "chat": p["chat"],
                "pinned": bool(row[0]),
                "muted": bool(row[1]),
                "archived": bool(row[2]),
            }
            return {"pts": store.add_update(c, fx, uid, "dialog.updated", body)}

        return await self._write(ctx, job)

    async def history(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = _uid(ctx)

        def job(c: sqlite3.Connection) -> dict[str, Any]:
            chat, m = store.need_member(c, p["chat"], uid)
            evs = store.history(
                c, uid, chat.id, m, p.get("before"), p.get("after"), p.get("limit", 50)
            )
            return {"events": evs, "last_seq": chat.last_seq, "read_seq": m.read_seq}

        return await self.node.db.read(job)

    # --- messages.* ---------------------------------------------------------------------
    async def send(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = _uid(ctx)
        rid: int = p["random_id"]

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            chat, m = store.need_member(c, p["chat"], uid)
            if chat.kind == "channel" and m.role not in ADMIN_ROLES:
                raise RpcError(ErrorCode.CHAT_WRITE_FORBIDDEN)
            dup = c.execute(
                "SELECT seq, ts FROM events WHERE chat_id = ? AND sender_id = ? AND random_id = ?",
                (chat.id, uid, rid),
            ).fetchone()
            if dup is not None:
                return {"seq": dup[0], "ts": dup[1], "duplicate": True}
            body: dict[str, Any] = {}  # signed as is: stays when the message is deleted
            content: dict[str, Any] = {}  # committed to by hash: erased when it is deleted
            media: list[dict[str, Any]] = list(p.get("media", []))
            text = p.get("text", "")
            if "reply_to" in p:
                if not m.joined_seq <= p["reply_to"] <= chat.last_seq:
                    raise RpcError(ErrorCode.MESSAGE_NOT_FOUND, "reply_to is not in this chat")
                body["reply_to"] = p["reply_to"]
            if "forward_from" in p:
                src = p["forward_from"]
                _, src_m = store.need_member(c, src["chat"], uid)
                orig = store.event_out(
                    store.need_message(c, src["chat"], src["seq"], src_m.joined_seq).row
                )
                fwd = orig["body"].get("fwd") or {
                    "chat": src["chat"],
                    "seq": src["seq"],
                    "sender": orig["sender"],
                    "ts": orig["ts"],
                }
                content["fwd"] = fwd
                text = text or orig["body"].get("text", "")
                media = media or [
                    {"media_id": x["media_id"], "kind": x["kind"]}
                    for x in orig["body"].get("media", [])
                ]
            if text:
                content["text"] = text
            if media:
                from ..media.store import attach_to_message

                content["media"] = attach_to_message(c, uid, chat.id, chat.last_seq + 1, media)
            if not text and not media:
                raise RpcError(ErrorCode.MESSAGE_EMPTY)
            ev = store.append(
                c, self.home, fx, chat, MESSAGE, uid, body, random_id=rid, content=content
            )
            c.execute(
                "UPDATE chat_members SET read_seq = ? WHERE chat_id = ? AND user_id = ?",
                (ev["seq"], chat.id, uid),
            )
            return {"seq": ev["seq"], "ts": ev["ts"], "duplicate": False}

        return await self._write(ctx, job)

    async def edit(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = _uid(ctx)

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            chat, m = store.need_member(c, p["chat"], uid)
            msg = store.need_message(c, chat.id, p["seq"], m.joined_seq)
            if msg.sender_id != uid:
                raise RpcError(ErrorCode.MESSAGE_NOT_EDITABLE)
            if time.time() - msg.ts > self.home.edit_window:
                raise RpcError(ErrorCode.EDIT_WINDOW_EXPIRED)
            current = store.event_out(msg.row)["body"]
            if not p["text"] and not current.get("media"):
                raise RpcError(ErrorCode.MESSAGE_EMPTY)
            # the edit's content is the message's whole new content (attachments and forward
            # origin carried over), so the content it replaces can be erased entirely
            content = {k: current[k] for k in CONTENT_KEYS if k in current}
            content["text"] = p["text"]
            store.unindex(c, msg.id)
            ev = store.append(
                c,
                self.home,
                fx,
                chat,
                EDIT,
                uid,
                {"target": p["seq"]},
                target=p["seq"],
                content=content,
                index=msg.id,
            )
            store.apply_edit(c, fx, msg, ev["seq"], ev["ts"])
            return {"seq": ev["seq"]}

        return await self._write(ctx, job)

    async def delete(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = _uid(ctx)

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
            ev = store.append(
                c, self.home, fx, chat, "delete", uid, {"target": p["seq"]}, target=p["seq"]
            )
            store.apply_delete(c, fx, msg)
            if chat.pinned_seq == p["seq"]:
                c.execute("UPDATE chats SET pinned_seq = NULL WHERE id = ?", (chat.id,))
            return {"seq": ev["seq"], "pts": None}

        return await self._write(ctx, job)

    def _pinner(self, c: sqlite3.Connection, chat_id: str, uid: int) -> tuple[Chat, store.Member]:
        chat, m = store.need_member(c, chat_id, uid)
        if chat.kind != "private" and m.role not in ADMIN_ROLES:
            raise RpcError(ErrorCode.CHAT_ADMIN_REQUIRED)
        return chat, m

    async def pin(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = _uid(ctx)

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            chat, m = self._pinner(c, p["chat"], uid)
            store.need_message(c, chat.id, p["seq"], m.joined_seq)
            ev = store.append(
                c, self.home, fx, chat, "pin", uid, {"target": p["seq"]}, target=p["seq"]
            )
            c.execute("UPDATE chats SET pinned_seq = ? WHERE id = ?", (p["seq"], chat.id))
            return {"seq": ev["seq"]}

        return await self._write(ctx, job)

    async def unpin(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = _uid(ctx)

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            chat, _ = self._pinner(c, p["chat"], uid)
            if chat.pinned_seq is None:
                raise RpcError(ErrorCode.MESSAGE_NOT_FOUND, "nothing is pinned")
            target = chat.pinned_seq
            ev = store.append(
                c, self.home, fx, chat, "unpin", uid, {"target": target}, target=target
            )
            c.execute("UPDATE chats SET pinned_seq = NULL WHERE id = ?", (chat.id,))
            return {"seq": ev["seq"]}

        return await self._write(ctx, job)

    async def read(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = _uid(ctx)

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            chat, m = store.need_member(c, p["chat"], uid)
            seq = min(p.get("seq", chat.last_seq), chat.last_seq)
            pts = None
            if seq > m.read_seq:
                c.execute(
                    "UPDATE chat_members SET read_seq = ? WHERE chat_id = ? AND user_id = ?",
                    (seq, chat.id, uid),
                )
                body = {"chat": chat.id, "read_seq": seq}
                pts = store.add_update(c, fx, uid, "chat.read", body)
            read_seq = max(seq, m.read_seq)
            return {
                "read_seq": read_seq,
                "unread": store.unread(c, chat.id, uid, read_seq),
                "pts": pts,
            }

        return await self._write(ctx, job)

    async def set_typing(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = _uid(ctx)
        chat_id = p["chat"]
        now = time.monotonic()
        last = self._typing.get((uid, chat_id))
        if last is not None and now - last < TYPING_ABSORB:
            return {}
        name = await self.node.db.read(
            lambda c: (store.need_member(c, chat_id, uid), store.address(c, self.home, uid))[1]
        )
        if len(self._typing) >= TYPING_MEMORY:
            self._typing = {k: t for k, t in self._typing.items() if now - t < TYPING_ABSORB}
            if len(self._typing) >= TYPING_MEMORY:
                self._typing.clear()
        self._typing[(uid, chat_id)] = now
        self.node.hub.push_to_chat(
            chat_id, [{"type": "chat.typing", "chat": chat_id, "user": name}], exclude_user=uid
        )
        return {}

    async def search(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = _uid(ctx)
        match = _fts_query(p["query"])
        chat_id = p.get("chat")

        def job(c: sqlite3.Connection) -> dict[str, Any]:
            if chat_id is not None:
                store.need_member(c, chat_id, uid)
            return {"results": store.search(c, uid, match, chat_id, p.get("limit", 50))}

        return await self.node.db.read(job)

    # --- updates.* ----------------------------------------------------------------------
    async def get_state(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = _uid(ctx)
        if ctx.session is not None:
            ctx.session.resync()  # before reading: what is pushed from now on is not missed

        def job(c: sqlite3.Connection) -> dict[str, Any]:
            rows = c.execute(
                "SELECT c.id, c.last_seq FROM chat_members m JOIN chats c ON c.id = m.chat_id "
                "WHERE m.user_id = ? AND m.state = 'member'",
                (uid,),
            )
            return {"pts": store.current_pts(c, uid), "chats": dict(rows.fetchall())}

        return await self.node.db.read(job)

    async def get_difference(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = _uid(ctx)
        if ctx.session is not None:
            ctx.session.resync()  # before reading: what is pushed from now on is not missed
        known: dict[str, int] = p["chats"]
        limit = self.difference_limit

        def job(c: sqlite3.Connection) -> dict[str, Any]:
            rows = c.execute(
                "SELECT pts, kind, body, ts FROM user_updates WHERE user_id = ? AND pts > ? "
                "ORDER BY pts LIMIT ?",
                (uid, p["pts"], UPDATES_PER_DIFFERENCE + 1),
            ).fetchall()
            complete = len(rows) <= UPDATES_PER_DIFFERENCE
            rows = rows[:UPDATES_PER_DIFFERENCE]
            updates = [{"pts": r[0], "kind": r[1], "ts": r[3], **cbor2.loads(r[2])} for r in rows]
            pts = rows[-1][0] if rows else max(p["pts"], store.current_pts(c, uid))
            heads = c.execute(
                "SELECT c.id, c.last_seq, m.joined_seq FROM chat_members m JOIN chats c "
                "ON c.id = m.chat_id WHERE m.user_id = ? AND m.state = 'member' ORDER BY c.id",
                (uid,),
            ).fetchall()
            evs: list[dict[str, Any]] = []
            too_long: dict[str, int] = {}
            held: dict[str, int] = {}
            for chat_id, last_seq, joined_seq in heads:
                have = max(known.get(chat_id, 0), joined_seq - 1)
                if last_seq <= have:
                    held[chat_id] = last_seq
                    continue
                if last_seq - have > limit:
                    too_long[chat_id] = last_seq
                    continue
                if len(evs) + (last_seq - have) > TOTAL_EVENTS_PER_DIFFERENCE:
                    complete = False
                    held[chat_id] = have
                    continue
                evs.extend(store.events_after(c, uid, chat_id, have, last_seq - have))
                held[chat_id] = last_seq
            return {
                "updates": updates,
                "events": evs,
                "too_long": too_long,
                "pts": pts,
                "chats": held,
                "complete": complete,
            }

        return await self.node.db.read(job)

    # --- admin.chat* --------------------------------------------------------------------
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

        return {"chats": await self.node.db.read(job)}

    def _need_chat(self, c: sqlite3.Connection, chat_id: str) -> Chat:
        chat = store.get_chat(c, chat_id)
        if chat is None:
            raise RpcError(ErrorCode.CHAT_NOT_FOUND, f"no chat {chat_id}")
        return chat

    async def admin_show(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        def job(c: sqlite3.Connection) -> dict[str, Any]:
            chat = self._need_chat(c, p["chat"])
            node = self.home.node_name
            members = [
                {"user": f"{r[0]}@{node}", "role": r[1], "state": r[2]}
                for r in c.execute(
                    "SELECT u.name, m.role, m.state FROM chat_members m JOIN users u "
                    "ON u.id = m.user_id WHERE m.chat_id = ? ORDER BY m.state, u.name LIMIT 100",
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

        return await self.node.db.read(job)

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
                "home_key": bytes(self.node.identity.verify_key),
            }

        return await self.node.db.read(job)

    async def admin_verify(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        key = self.node.identity.verify_key

        def job(c: sqlite3.Connection) -> dict[str, Any]:
            chat = self._need_chat(c, p["chat"])
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

        return await self.node.db.read(job)
