"""The device's own record of its secret chats: ``secret.db`` in the profile folder.

Secret chats live on the device and nowhere else (docs/secret-chats.md §6): the node holds
ciphertext only until this device acknowledges it, so what this file holds is the chat.
It keeps

* ``chats``: one row per secret chat (the peer, the bound device, the ratchet session, the
  state ``requested`` | ``incoming`` | ``active`` | ``taken`` | ``closed``, the default
  self-destruct timer);
* ``candidates``: the initiator's session with each device of the peer while the request
  is open (the first to accept is bound, the others are dropped);
* ``messages``: the history, in and out, with a state (``queued`` | ``sent`` |
  ``delivered`` | ``read`` | ``received`` | ``expired`` | ``deleted`` | ``failed``);
* ``outq``: envelopes encrypted but not yet taken by the node. They are written in the same
  transaction as the session state that produced them, so a crash never makes the ratchet
  reuse a key nor loses a message: what is in ``outq`` is sent again (``secret.send`` is
  idempotent per envelope id);
* ``envelopes``: which message each sent envelope carried (``failed`` notices name it);
* ``seen``: envelope ids already processed, so an item delivered again after a crash between
  our commit and our ``secret.ack`` is acknowledged quietly rather than reported as a
  replay;
* ``prekeys``: this device's signed-prekey and one-time-prekey privates, kept until used.

Every change that must survive is a transaction committed before the caller acts on it
(acknowledges to the node, tells the user). ``secure_delete`` zeroes what is deleted, so a
destroyed message's text does not linger in free pages of the file.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2

FILE_NAME = "secret.db"
SEEN_KEEP = 9 * 86400.0  # longer than the node's [secret] ttl default (7 days)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v);
CREATE TABLE IF NOT EXISTS prekeys (
    kind TEXT NOT NULL, id INTEGER NOT NULL, private BLOB NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (kind, id));
CREATE TABLE IF NOT EXISTS chats (
    id TEXT PRIMARY KEY, peer TEXT NOT NULL, peer_device INTEGER, role TEXT NOT NULL,
    state TEXT NOT NULL, session BLOB, ttl INTEGER, fingerprint TEXT, reason TEXT,
    created REAL NOT NULL, updated REAL NOT NULL);
CREATE INDEX IF NOT EXISTS chats_peer ON chats (peer, peer_device);
CREATE TABLE IF NOT EXISTS candidates (
    chat_id TEXT NOT NULL, device INTEGER NOT NULL, session BLOB NOT NULL,
    PRIMARY KEY (chat_id, device));
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, chat_id TEXT NOT NULL, mid INTEGER NOT NULL,
    out INTEGER NOT NULL, kind TEXT NOT NULL, text TEXT, file BLOB, ttl INTEGER,
    sent REAL NOT NULL, state TEXT NOT NULL, read_at REAL, delete_at REAL,
    UNIQUE (chat_id, out, mid));
CREATE INDEX IF NOT EXISTS messages_delete ON messages (delete_at) WHERE delete_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS outq (
    n INTEGER PRIMARY KEY AUTOINCREMENT, chat_id TEXT NOT NULL, peer TEXT NOT NULL,
    device INTEGER NOT NULL, env_id INTEGER NOT NULL, payload BLOB NOT NULL, mid INTEGER);
CREATE TABLE IF NOT EXISTS envelopes (
    env_id INTEGER PRIMARY KEY, chat_id TEXT NOT NULL, mid INTEGER, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS seen (
    sender TEXT NOT NULL, device INTEGER NOT NULL, id INTEGER NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (sender, device, id));
"""


@dataclass
class ChatRow:
    """A secret chat as stored; ``session`` is the ratchet state (None once closed)."""

    id: str
    peer: str
    peer_device: int | None
    role: str  # "initiator" | "responder"
    state: str  # "requested" | "incoming" | "active" | "taken" | "closed"
    session: bytes | None
    ttl: int | None
    fingerprint: str | None
    reason: str | None
    created: float
    updated: float

    def public(self) -> dict[str, Any]:
        """What the SDK returns and the CLI prints (no key material)."""
        return {
            "id": self.id,
            "peer": self.peer,
            "peer_device": self.peer_device,
            "role": self.role,
            "state": self.state,
            "ttl": self.ttl,
            "reason": self.reason,
            "created": self.created,
            "updated": self.updated,
        }


_CHAT_COLS = (
    "id, peer, peer_device, role, state, session, ttl, fingerprint, reason, created, updated"
)
_MSG_COLS = "seq, chat_id, mid, out, kind, text, file, ttl, sent, state, read_at, delete_at"


def _chat(row: Any) -> ChatRow:
    return ChatRow(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        bytes(row[5]) if row[5] is not None else None,
        row[6],
        row[7],
        row[8],
        row[9],
        row[10],
    )


def _message(row: Any) -> dict[str, Any]:
    return {
        "seq": row[0],
        "chat": row[1],
        "id": row[2],
        "out": bool(row[3]),
        "kind": row[4],
        "text": row[5],
        "file": cbor2.loads(row[6]) if row[6] else None,
        "ttl": row[7],
        "sent": row[8],
        "state": row[9],
        "read_at": row[10],
        "delete_at": row[11],
    }


class SecretStore:
    """The SQLite file; every method is a short synchronous statement or transaction (the
    file is local and small: running them on the event loop keeps session updates and the
    envelopes they produce in one atomic step with no checkpoint in between)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = folder / FILE_NAME
        if not self.path.exists():
            # created owner-only: it holds session keys and the plaintext history
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed transaction is on disk before we acknowledge to the node
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA secure_delete=ON")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(_SCHEMA)
        self._durable = True
        self._savepoints = 0

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def tx(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction: committed on success, rolled back on any exception. Inside
        another it is a savepoint (a batch of items is one commit, each item's failure
        undoes only its own part).

        ``durable``: the commit is on disk before this returns (fsync). Everything the
        device acts on afterwards (an ack to the node, an envelope sent) must be; mere
        bookkeeping after the fact (an envelope the node took, a state shown) may skip the
        fsync: a crash loses at most a redone, idempotent step."""
        if self.db.in_transaction:
            self._savepoints += 1
            name = f"sp{self._savepoints}"
            self.db.execute(f"SAVEPOINT {name}")
            try:
                yield self.db
            except BaseException:
                self.db.execute(f"ROLLBACK TO {name}")
                self.db.execute(f"RELEASE {name}")
                raise
            self.db.execute(f"RELEASE {name}")
            return
        if durable != self._durable:
            self.db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._durable = durable
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def forget_wiped(self) -> None:
        """After wiping content or keys: fold the WAL into the file and truncate it, so the
        old pages (a destroyed text, a spent ratchet state) do not linger in the log.
        ``secure_delete`` has already zeroed them in the main file."""
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # --- meta ---------------------------------------------------------------------------
    def meta(self, key: str) -> Any:
        row = self.db.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, c: sqlite3.Connection, key: str, value: Any) -> None:
        c.execute("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", (key, value))

    # --- prekeys ------------------------------------------------------------------------
    def add_prekeys(self, c: sqlite3.Connection, kind: str, privates: dict[int, bytes]) -> None:
        now = time.time()
        c.executemany(
            "INSERT OR REPLACE INTO prekeys (kind, id, private, created) VALUES (?, ?, ?, ?)",
            [(kind, i, p, now) for i, p in privates.items()],
        )

    def prekey(self, kind: str, key_id: int) -> bytes | None:
        row = self.db.execute(
            "SELECT private FROM prekeys WHERE kind = ? AND id = ?", (kind, key_id)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def prekeys(self, kind: str) -> dict[int, bytes]:
        rows = self.db.execute(
            "SELECT id, private FROM prekeys WHERE kind = ? ORDER BY id DESC", (kind,)
        ).fetchall()
        return {int(r[0]): bytes(r[1]) for r in rows}

    def drop_prekey(self, c: sqlite3.Connection, kind: str, key_id: int) -> None:
        c.execute("DELETE FROM prekeys WHERE kind = ? AND id = ?", (kind, key_id))

    def drop_old_signed(self, c: sqlite3.Connection, keep: int, older_than: float) -> None:
        """Old signed prekeys go once no first envelope made with them can still arrive."""
        c.execute(
            "DELETE FROM prekeys WHERE kind = 'spk' AND id != ? AND created < ?",
            (keep, older_than),
        )

    # --- chats --------------------------------------------------------------------------
    def add_chat(self, c: sqlite3.Connection, chat: ChatRow) -> None:
        c.execute(
            f"INSERT INTO chats ({_CHAT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                chat.id,
                chat.peer,
                chat.peer_device,
                chat.role,
                chat.state,
                chat.session,
                chat.ttl,
                chat.fingerprint,
                chat.reason,
                chat.created,
                chat.updated,
            ),
        )

    def chat(self, chat_id: str) -> ChatRow | None:
        row = self.db.execute(f"SELECT {_CHAT_COLS} FROM chats WHERE id = ?", (chat_id,)).fetchone()
        return None if row is None else _chat(row)

    def chats(self) -> list[ChatRow]:
        rows = self.db.execute(f"SELECT {_CHAT_COLS} FROM chats ORDER BY updated DESC").fetchall()
        return [_chat(r) for r in rows]

    def chats_with(self, peer: str, device: int) -> list[ChatRow]:
        """Open chats whose bound device is this one, or that sent it a request (a late
        answer from a device that did not get the chat still opens, and is ignored)."""
        rows = self.db.execute(
            f"SELECT {_CHAT_COLS} FROM chats WHERE peer = ? AND state != 'closed' AND "
            "(peer_device = ? OR id IN (SELECT chat_id FROM candidates WHERE device = ?)) "
            "ORDER BY updated DESC",
            (peer, device, device),
        ).fetchall()
        return [_chat(r) for r in rows]

    def update_chat(self, c: sqlite3.Connection, chat_id: str, **fields: Any) -> None:
        fields["updated"] = time.time()
        cols = ", ".join(f"{k} = ?" for k in fields)
        c.execute(f"UPDATE chats SET {cols} WHERE id = ?", (*fields.values(), chat_id))

    # --- candidates (an open request's sessions, one per device of the peer) ------------
    def add_candidate(
        self, c: sqlite3.Connection, chat_id: str, device: int, session: bytes
    ) -> None:
        c.execute(
            "INSERT OR REPLACE INTO candidates (chat_id, device, session) VALUES (?, ?, ?)",
            (chat_id, device, session),
        )

    def candidates(self, chat_id: str) -> dict[int, bytes]:
        rows = self.db.execute(
            "SELECT device, session FROM candidates WHERE chat_id = ? ORDER BY device",
            (chat_id,),
        ).fetchall()
        return {int(r[0]): bytes(r[1]) for r in rows}

    def drop_candidates(self, c: sqlite3.Connection, chat_id: str) -> None:
        c.execute("DELETE FROM candidates WHERE chat_id = ?", (chat_id,))

    # --- messages -----------------------------------------------------------------------
    def add_message(
        self,
        c: sqlite3.Connection,
        chat_id: str,
        mid: int,
        out: bool,
        kind: str,
        text: str | None,
        file: dict[str, Any] | None,
        ttl: int | None,
        sent: float,
        state: str,
    ) -> bool:
        """Record a message; False if it was already there (a duplicate is not new)."""
        cur = c.execute(
            "INSERT OR IGNORE INTO messages "
            "(chat_id, mid, out, kind, text, file, ttl, sent, state) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                chat_id,
                mid,
                int(out),
                kind,
                text,
                cbor2.dumps(file) if file is not None else None,
                ttl,
                sent,
                state,
            ),
        )
        return cur.rowcount > 0

    def message(self, chat_id: str, mid: int, out: bool) -> dict[str, Any] | None:
        row = self.db.execute(
            f"SELECT {_MSG_COLS} FROM messages WHERE chat_id = ? AND mid = ? AND out = ?",
            (chat_id, mid, int(out)),
        ).fetchone()
        return None if row is None else _message(row)

    def find_message(self, chat_id: str, mid: int) -> dict[str, Any] | None:
        """A message by id, whichever direction (ids are random 63-bit numbers)."""
        row = self.db.execute(
            f"SELECT {_MSG_COLS} FROM messages WHERE chat_id = ? AND mid = ? ORDER BY out DESC",
            (chat_id, mid),
        ).fetchone()
        return None if row is None else _message(row)

    def by_seq(self, chat_id: str, seq: int) -> dict[str, Any] | None:
        """A message by its local number (``seq``, what the CLI shows) in that chat."""
        row = self.db.execute(
            f"SELECT {_MSG_COLS} FROM messages WHERE chat_id = ? AND seq = ?", (chat_id, seq)
        ).fetchone()
        return None if row is None else _message(row)

    def history(self, chat_id: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Oldest first; with ``limit``, the newest ``limit`` messages."""
        if limit is None:
            rows = self.db.execute(
                f"SELECT {_MSG_COLS} FROM messages WHERE chat_id = ? ORDER BY seq", (chat_id,)
            ).fetchall()
        else:
            rows = self.db.execute(
                f"SELECT {_MSG_COLS} FROM messages WHERE chat_id = ? ORDER BY seq DESC LIMIT ?",
                (chat_id, limit),
            ).fetchall()
            rows.reverse()
        return [_message(r) for r in rows]

    def set_state(
        self, c: sqlite3.Connection, chat_id: str, mids: list[int], out: bool, state: str,
        only_from: tuple[str, ...] = (),
    ) -> list[int]:  # fmt: skip
        """Set the state of some messages (only those now in ``only_from``, if given);
        returns the ids changed."""
        changed = []
        for mid in mids:
            q = "UPDATE messages SET state = ? WHERE chat_id = ? AND mid = ? AND out = ?"
            args: list[Any] = [state, chat_id, mid, int(out)]
            if only_from:
                q += f" AND state IN ({', '.join('?' * len(only_from))})"
                args.extend(only_from)
            if c.execute(q, args).rowcount:
                changed.append(mid)
        return changed

    def mark_read(
        self, c: sqlite3.Connection, chat_id: str, mids: list[int], out: bool, at: float
    ) -> list[int]:
        """Read at ``at``: messages with a timer get their deletion time (read + ttl)."""
        changed = []
        for mid in mids:
            cur = c.execute(
                "UPDATE messages SET state = 'read', read_at = ?, "
                "delete_at = CASE WHEN ttl IS NOT NULL THEN ? + ttl END "
                "WHERE chat_id = ? AND mid = ? AND out = ? "
                "AND state IN ('queued', 'sent', 'delivered', 'received')",
                (at, at, chat_id, mid, int(out)),
            )
            if cur.rowcount:
                changed.append(mid)
        return changed

    def unread_in(self, chat_id: str) -> list[int]:
        rows = self.db.execute(
            "SELECT mid FROM messages WHERE chat_id = ? AND out = 0 AND state = 'received' "
            "ORDER BY seq",
            (chat_id,),
        ).fetchall()
        return [int(r[0]) for r in rows]

    def wipe(self, c: sqlite3.Connection, chat_id: str, mids: list[int], state: str) -> list[int]:
        """Destroy messages' content (both directions), keeping a tombstone row."""
        changed = []
        for mid in mids:
            cur = c.execute(
                "UPDATE messages SET text = NULL, file = NULL, state = ?, delete_at = NULL "
                "WHERE chat_id = ? AND mid = ? AND state != ?",
                (state, chat_id, mid, state),
            )
            if cur.rowcount:
                changed.append(mid)
        return changed

    def due(self, now: float) -> dict[str, list[int]]:
        """Messages whose self-destruct time has come, by chat."""
        rows = self.db.execute(
            "SELECT chat_id, mid FROM messages WHERE delete_at IS NOT NULL AND delete_at <= ?",
            (now,),
        ).fetchall()
        out: dict[str, list[int]] = {}
        for chat_id, mid in rows:
            out.setdefault(chat_id, []).append(int(mid))
        return out

    def next_due(self) -> float | None:
        row = self.db.execute(
            "SELECT MIN(delete_at) FROM messages WHERE delete_at IS NOT NULL"
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def wipe_chat(self, c: sqlite3.Connection, chat_id: str) -> None:
        """Everything of a chat that was not ours to keep (a request taken elsewhere)."""
        c.execute("DELETE FROM messages WHERE chat_id = ?", (chat_id,))
        c.execute("DELETE FROM outq WHERE chat_id = ?", (chat_id,))

    def oldest_sent(self, chat_id: str, count: int) -> list[int]:
        rows = self.db.execute(
            "SELECT mid FROM messages WHERE chat_id = ? AND out = 1 AND state IN "
            "('queued', 'sent') ORDER BY seq LIMIT ?",
            (chat_id, count),
        ).fetchall()
        return [int(r[0]) for r in rows]

    # --- the outgoing queue -------------------------------------------------------------
    def enqueue(
        self,
        c: sqlite3.Connection,
        chat_id: str,
        peer: str,
        device: int,
        env_id: int,
        payload: bytes,
        mid: int | None,
    ) -> None:
        c.execute(
            "INSERT INTO outq (chat_id, peer, device, env_id, payload, mid) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (chat_id, peer, device, env_id, payload, mid),
        )
        c.execute(
            "INSERT OR REPLACE INTO envelopes (env_id, chat_id, mid, created) VALUES (?, ?, ?, ?)",
            (env_id, chat_id, mid, time.time()),
        )

    def outq(self, limit: int = 500) -> list[tuple[int, str, str, int, int, bytes, int | None]]:
        rows = self.db.execute(
            "SELECT n, chat_id, peer, device, env_id, payload, mid FROM outq ORDER BY n LIMIT ?",
            (limit,),
        ).fetchall()
        return [(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), r[6]) for r in rows]

    def outq_size(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM outq").fetchone()[0])

    def dequeue(self, c: sqlite3.Connection, n: int) -> None:
        c.execute("DELETE FROM outq WHERE n = ?", (n,))

    def envelope(self, env_id: int) -> tuple[str, int | None] | None:
        row = self.db.execute(
            "SELECT chat_id, mid FROM envelopes WHERE env_id = ?", (env_id,)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    # --- envelopes already processed ----------------------------------------------------
    def seen(self, sender: str, device: int, env_id: int) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM seen WHERE sender = ? AND device = ? AND id = ?",
            (sender, device, env_id),
        ).fetchone()
        return row is not None

    def mark_seen(self, c: sqlite3.Connection, sender: str, device: int, env_id: int) -> None:
        c.execute(
            "INSERT OR IGNORE INTO seen (sender, device, id, at) VALUES (?, ?, ?, ?)",
            (sender, device, env_id, time.time()),
        )

    def prune(self, now: float) -> None:
        """Forget old bookkeeping (processed ids, sent-envelope map) past any redelivery."""
        with self.tx() as c:
            c.execute("DELETE FROM seen WHERE at < ?", (now - SEEN_KEEP,))
            c.execute("DELETE FROM envelopes WHERE created < ?", (now - SEEN_KEEP,))
