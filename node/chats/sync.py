"""chats.history and updates.*: what a device reads to catch up (pts and per-chat seq)."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

import cbor2

from . import receipts, store
from .handlers import Handler, Handlers, Params, caller

if TYPE_CHECKING:
    from ..interfaces import CallContext

TOTAL_EVENTS_PER_DIFFERENCE = 5_000
UPDATES_PER_DIFFERENCE = 1_000


class Sync(Handlers):
    def methods(self) -> dict[str, Handler]:
        return {
            "chats.history": self.history,
            "updates.getState": self.get_state,
            "updates.getDifference": self.get_difference,
        }

    async def history(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = caller(ctx)

        def job(c: sqlite3.Connection) -> dict[str, Any]:
            chat, m = store.need_member(c, p["chat"], uid)
            evs = store.history(
                c, uid, chat.id, m, p.get("before"), p.get("after"), p.get("limit", 50)
            )
            return {
                "events": evs,
                "last_seq": chat.last_seq,
                "read_seq": m.read_seq,
                "read_outbox": store.read_outbox(c, chat, uid),
                "read_by": receipts.read_by(c, chat.id, uid, evs),
            }

        return await self.db.read(job)

    async def get_state(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = caller(ctx)
        if ctx.session is not None:
            ctx.session.resync()  # before reading: what is pushed from now on is not missed

        def job(c: sqlite3.Connection) -> dict[str, Any]:
            rows = c.execute(
                "SELECT c.id, c.last_seq FROM chat_members m JOIN chats c ON c.id = m.chat_id "
                "WHERE m.user_id = ? AND m.state = 'member'",
                (uid,),
            )
            return {"pts": store.current_pts(c, uid), "chats": dict(rows.fetchall())}

        return await self.db.read(job)

    async def get_difference(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = caller(ctx)
        if ctx.session is not None:
            ctx.session.resync()  # before reading: what is pushed from now on is not missed
        known: dict[str, int] = p["chats"]
        limit = self.shared.difference_limit

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

        return await self.db.read(job)
