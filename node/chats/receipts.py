"""Sender-side read receipts: how far the other members have read (like Telegram's
updateReadHistoryOutbox and messages.getMessageReadParticipants).

A member's read position is one row (``chat_members.read_seq``), so receipts are derived,
never stored per message: "read by N" for message S is the count of other members whose
``read_seq`` is at least S. Migration 9 indexes ``chat_members(chat_id, read_seq)``, so each
question is a range of that index, and every one is bounded for a chat of 200,000 members:

* the dialog's ``read_outbox`` (highest position read by someone other than the caller)
  walks the index from the top and stops at the first row that is not the caller's;
* counts stop at :data:`READ_COUNT_CAP` (a client shows "read by 1000+");
* the list of who read a message is given only for chats of at most
  :data:`READERS_LIST_MAX_MEMBERS` members (Telegram lists readers of small groups only);
* the push a read causes goes to the senders of the messages it newly covers, found in at
  most :data:`NOTICE_SCAN` events; in a chat of more than :data:`SMALL_CHAT` members it is
  sent only when the read moves past everyone else's (the read outbox of the senders moves),
  so a message read by 200,000 people does not cost its sender 200,000 pushes.

Joining counts everything before the join as read (log.py), so a member added later counts
as a reader of what came before: the same rule that makes their unread count start at 0.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from .store import Chat, read_outbox

__all__ = ["notified_by_read", "read_by", "read_count", "read_outbox", "readers"]

READ_COUNT_CAP = 1000  # "read by N" counts stop here
READERS_LIST_MAX_MEMBERS = 200  # messages.readers lists names only in chats this small
SMALL_CHAT = 100  # above this, a read notifies senders only when it passes everyone else's
NOTICE_SCAN = 1000  # most events looked at to find whom a read notifies


def read_count(conn: sqlite3.Connection, chat_id: str, seq: int, sender_id: int | None) -> int:
    """Members other than the message's sender who have read it, capped at READ_COUNT_CAP
    (the index range is walked only that far)."""
    row = conn.execute(
        "SELECT COUNT(*) FROM (SELECT 1 FROM chat_members WHERE chat_id = ? AND read_seq >= ? "
        "AND user_id IS NOT ? LIMIT ?)",
        (chat_id, seq, sender_id, READ_COUNT_CAP),
    ).fetchone()
    return int(row[0])


def read_by(
    conn: sqlite3.Connection, chat_id: str, user_id: int, events: list[dict[str, Any]]
) -> dict[str, int]:
    """For a history page: seq (as text, a map key on the wire) -> how many others read it,
    for the caller's own live messages on it (at most a page's worth of capped counts)."""
    seqs = [ev["seq"] for ev in events if ev["kind"] == "message" and not ev["deleted"]]
    if not seqs:
        return {}
    marks = ",".join("?" * len(seqs))
    mine = conn.execute(
        f"SELECT seq FROM events WHERE chat_id = ? AND sender_id = ? AND seq IN ({marks})",
        (chat_id, user_id, *seqs),
    ).fetchall()
    if not mine:
        return {}
    # One walk of the read index, from the top, at most READ_COUNT_CAP + 1 rows: the rows
    # not fetched read no further than the last one fetched, so a message above it has its
    # exact count among them and one at or below it has at least the cap.
    lo = min(s for (s,) in mine)
    marks_read = [
        int(r[0])
        for r in conn.execute(
            "SELECT read_seq FROM chat_members WHERE chat_id = ? AND read_seq >= ? "
            "AND user_id != ? ORDER BY read_seq DESC LIMIT ?",
            (chat_id, lo, user_id, READ_COUNT_CAP + 1),
        )
    ]
    return {str(s): min(READ_COUNT_CAP, sum(1 for r in marks_read if r >= s)) for (s,) in mine}


def readers(
    conn: sqlite3.Connection, chat: Chat, seq: int, sender_id: int | None, limit: int
) -> list[tuple[int, int]]:
    """(user id, read position) of members other than the sender who read message ``seq``,
    furthest read first; empty for chats above READERS_LIST_MAX_MEMBERS."""
    if chat.members > READERS_LIST_MAX_MEMBERS:
        return []
    rows = conn.execute(
        "SELECT user_id, read_seq FROM chat_members WHERE chat_id = ? AND read_seq >= ? "
        "AND user_id IS NOT ? AND state = 'member' ORDER BY read_seq DESC, user_id LIMIT ?",
        (chat.id, seq, sender_id, limit),
    ).fetchall()
    return [(int(u), int(r)) for u, r in rows]


def notified_by_read(
    conn: sqlite3.Connection, chat: Chat, reader_id: int, old: int, new: int
) -> list[int]:
    """Whom a read by ``reader_id`` from ``old`` to ``new`` tells (inside the job, before
    the new position is written): the senders of the messages it newly covers (the newest
    NOTICE_SCAN of them are looked at). In a chat above SMALL_CHAT members a sender is told
    only if the read moves their read_outbox, i.e. nobody but them and the reader had read
    that far: the three furthest read positions (the read index's top) decide it."""
    if new <= old:
        return []
    # one row however many senders: every row fetched is another step of the statement,
    # which the sqlite3 module takes with the GIL released and must then take back from
    # the event loop (this runs in every send under load: issue 17)
    found = conn.execute(
        "SELECT group_concat(DISTINCT sender_id) FROM (SELECT sender_id FROM events "
        "WHERE chat_id = ? AND seq > ? AND seq <= ? AND kind = 'message' AND deleted = 0 "
        "ORDER BY seq DESC LIMIT ?) WHERE sender_id IS NOT NULL AND sender_id != ?",
        (chat.id, old, new, NOTICE_SCAN, reader_id),
    ).fetchone()[0]
    senders = [int(x) for x in found.split(",")] if found else []
    if chat.members <= SMALL_CHAT or not senders:
        return senders
    top = conn.execute(
        "SELECT user_id, read_seq FROM chat_members WHERE chat_id = ? "
        "ORDER BY read_seq DESC LIMIT 3",
        (chat.id,),
    ).fetchall()

    def outbox_of(sender: int) -> int:
        return next((int(r) for u, r in top if u not in (sender, reader_id)), 0)

    return [s for s in senders if outbox_of(s) < new]
