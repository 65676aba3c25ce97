"""SQL of the secret-chat queues and prekeys, and their tables (the ``secret`` schema).

Why a registered :class:`~node.storage.Schema` of its own (``schema_versions`` row
``secret``) rather than core migration 7: the secret tables are numbered on their own, so
they never race another feature for the next core migration number, and storage still
never imports the service (node/app.py hands the schema over, as federation does its own).

Every function here runs inside a read or a write job (a connection handed in), does SQL
only and returns plain data. Payloads are opaque bytes: nothing here looks inside one, and
none is ever logged.

Tables (docs/secret-chats.md section 3):

* ``secret_queue``: what waits for a device of this node (messages and node notices).
  ``payload`` is set to NULL when the device acknowledges the item ("deleted for good";
  the writer's secure_delete zeroes the freed bytes); the row itself stays, without
  payload, until its ``expires`` so that a resend of the same (sender, sender device, id)
  is recognised and answered the same instead of being queued a second time.
* ``secret_keys``: each device's signed prekey (replaced on rotation).
* ``secret_one_time``: unused one-time prekeys, handed out once each, oldest first.
* ``secret_contacts``: which remote or local devices a device of this node exchanged
  envelopes with (routing metadata the node sees anyway): who to tell when it is revoked.
* ``secret_waiting``: how many items wait per device (the bound), kept by triggers.

The secret outbox (envelopes for devices of other nodes) is federation's
(``fed_secret_outbox`` in federation/schema.py): its ``secret_forward`` writes it inside
``secret.send``'s write job, so the node's tables hold only what concerns its own devices.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from ..storage import Migration, Schema

KINDS = ("message", "expired", "failed", "revoked")

SCHEMA = Schema(
    "secret",
    (
        Migration(
            1,
            "secret queues, prekeys, contacts",
            """
            CREATE TABLE secret_queue(
                qid INTEGER PRIMARY KEY AUTOINCREMENT,
                device_id INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
                kind TEXT NOT NULL
                    CHECK (kind IN ('message', 'expired', 'failed', 'revoked')),
                sender TEXT NOT NULL,
                sender_device INTEGER NOT NULL,
                msg_id INTEGER NOT NULL,
                payload BLOB,
                sent REAL NOT NULL,
                expires REAL NOT NULL,
                count INTEGER NOT NULL DEFAULT 0,
                acked INTEGER NOT NULL DEFAULT 0
            );
            CREATE UNIQUE INDEX secret_queue_once
                ON secret_queue(device_id, sender, sender_device, msg_id, kind)
                WHERE msg_id != 0;
            CREATE INDEX secret_queue_waiting ON secret_queue(device_id, qid) WHERE acked = 0;
            CREATE INDEX secret_queue_expires ON secret_queue(expires);
            CREATE TABLE secret_keys(
                device_id INTEGER PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
                spk_id INTEGER NOT NULL,
                spk_key BLOB NOT NULL,
                spk_sig BLOB NOT NULL,
                updated REAL NOT NULL
            );
            CREATE TABLE secret_one_time(
                n INTEGER PRIMARY KEY AUTOINCREMENT,
                device_id INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
                id INTEGER NOT NULL,
                key BLOB NOT NULL,
                UNIQUE (device_id, id)
            );
            CREATE TABLE secret_contacts(
                device_id INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
                peer TEXT NOT NULL,
                peer_device INTEGER NOT NULL,
                last REAL NOT NULL,
                PRIMARY KEY (device_id, peer, peer_device)
            ) WITHOUT ROWID;
            """,
        ),
        # How many items wait per device, kept by triggers in the queue's own transactions:
        # the bound check of every send was a COUNT over the device's waiting items
        # (measured ~1 ms of writer time per send at 8,000 waiting), now one row read.
        Migration(
            2,
            "waiting items per device",
            """
            CREATE TABLE secret_waiting(
                device_id INTEGER PRIMARY KEY,
                n INTEGER NOT NULL
            );
            INSERT INTO secret_waiting(device_id, n)
                SELECT device_id, COUNT(*) FROM secret_queue WHERE acked = 0 GROUP BY device_id;
            CREATE TRIGGER secret_waiting_put AFTER INSERT ON secret_queue
            WHEN NEW.acked = 0 BEGIN
                INSERT INTO secret_waiting(device_id, n) VALUES (NEW.device_id, 1)
                    ON CONFLICT(device_id) DO UPDATE SET n = n + 1;
            END;
            CREATE TRIGGER secret_waiting_ack AFTER UPDATE OF acked ON secret_queue
            WHEN OLD.acked = 0 AND NEW.acked != 0 BEGIN
                UPDATE secret_waiting SET n = n - 1 WHERE device_id = OLD.device_id;
            END;
            CREATE TRIGGER secret_waiting_gone AFTER DELETE ON secret_queue
            WHEN OLD.acked = 0 BEGIN
                UPDATE secret_waiting SET n = n - 1 WHERE device_id = OLD.device_id;
            END;
            """,
        ),
    ),
)


class QueueFull(Exception):
    """The recipient device's queue holds ``queue_max`` waiting items."""


@dataclass(frozen=True)
class Item:
    """One queued item as the device reads it (a SecretItem, docs section 3)."""

    qid: int
    device_id: int  # the recipient device (not part of the wire form)
    kind: str
    sender: str  # canonical address: the sender, or for notices the other device's user
    sender_device: int
    msg_id: int
    payload: bytes
    sent: float
    count: int

    def wire(self, sender: str | None = None) -> dict[str, Any]:
        """The SecretItem; ``sender`` overrides the address (its display form)."""
        return {
            "qid": self.qid,
            "kind": self.kind,
            "from": self.sender if sender is None else sender,
            "device": self.sender_device,
            "id": self.msg_id,
            "payload": self.payload,
            "sent": self.sent,
            "count": self.count,
        }


# --- devices and users of this node -----------------------------------------------------


def local_user(conn: sqlite3.Connection, name: str) -> int | None:
    """The id of this node's (unbanned) user ``name``."""
    row = conn.execute(
        "SELECT u.id FROM users u JOIN nodes n ON n.id = u.node "
        "WHERE u.name = ? AND n.state = 'self' AND u.banned = 0",
        (name,),
    ).fetchone()
    return int(row[0]) if row else None


def live_device(conn: sqlite3.Connection, user_id: int, device_id: int) -> bool:
    """True if ``device_id`` is a device of ``user_id`` that is not revoked."""
    return (
        conn.execute(
            "SELECT 1 FROM devices WHERE id = ? AND user_id = ? AND revoked IS NULL",
            (device_id, user_id),
        ).fetchone()
        is not None
    )


def device_owner(conn: sqlite3.Connection, device_id: int) -> tuple[int, str] | None:
    """(user id, user name) of a device of this node, revoked or not."""
    row = conn.execute(
        "SELECT u.id, u.name FROM devices d JOIN users u ON u.id = d.user_id "
        "JOIN nodes n ON n.id = u.node WHERE d.id = ? AND n.state = 'self'",
        (device_id,),
    ).fetchone()
    return (int(row[0]), str(row[1])) if row else None


def device_public_key(conn: sqlite3.Connection, device_id: int) -> bytes | None:
    row = conn.execute("SELECT public_key FROM devices WHERE id = ?", (device_id,)).fetchone()
    return bytes(row[0]) if row else None


# --- prekeys ----------------------------------------------------------------------------


def publish_keys(
    conn: sqlite3.Connection,
    device_id: int,
    spk: dict[str, Any] | None,
    one_time: list[dict[str, Any]],
    keep_max: int,
    now: float,
) -> int:
    """Store a (new) signed prekey and add one-time prekeys; beyond ``keep_max`` unused ones
    the oldest go (the device holds their private halves in vain, which costs nothing).
    Returns how many one-time prekeys are left unused."""
    if spk is not None:
        conn.execute(
            "INSERT INTO secret_keys(device_id, spk_id, spk_key, spk_sig, updated) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(device_id) DO UPDATE SET "
            "spk_id = excluded.spk_id, spk_key = excluded.spk_key, "
            "spk_sig = excluded.spk_sig, updated = excluded.updated",
            (device_id, spk["id"], spk["key"], spk["sig"], now),
        )
    conn.executemany(
        "INSERT INTO secret_one_time(device_id, id, key) VALUES (?, ?, ?) "
        "ON CONFLICT(device_id, id) DO UPDATE SET key = excluded.key",
        [(device_id, k["id"], k["key"]) for k in one_time],
    )
    left = one_time_left(conn, device_id)
    if left > keep_max:
        conn.execute(
            "DELETE FROM secret_one_time WHERE n IN (SELECT n FROM secret_one_time "
            "WHERE device_id = ? ORDER BY n LIMIT ?)",
            (device_id, left - keep_max),
        )
        left = keep_max
    return left


def one_time_left(conn: sqlite3.Connection, device_id: int) -> int:
    row = conn.execute(
        "SELECT COUNT(*) FROM secret_one_time WHERE device_id = ?", (device_id,)
    ).fetchone()
    return int(row[0])


def signed_prekey_id(conn: sqlite3.Connection, device_id: int) -> int | None:
    row = conn.execute(
        "SELECT spk_id FROM secret_keys WHERE device_id = ?", (device_id,)
    ).fetchone()
    return int(row[0]) if row else None


def take_bundles(conn: sqlite3.Connection, user_id: int) -> list[dict[str, Any]]:
    """The key bundles of a user's live devices that published a signed prekey, taking
    (deleting) the oldest one-time prekey of each: run in a write job, so two callers
    never get the same one-time prekey."""
    rows = conn.execute(
        "SELECT d.id, d.public_key, d.name, k.spk_id, k.spk_key, k.spk_sig "
        "FROM devices d JOIN secret_keys k ON k.device_id = d.id "
        "WHERE d.user_id = ? AND d.revoked IS NULL ORDER BY d.id",
        (user_id,),
    ).fetchall()
    out: list[dict[str, Any]] = []
    for device_id, public_key, name, spk_id, spk_key, spk_sig in rows:
        otk = conn.execute(
            "DELETE FROM secret_one_time WHERE n = (SELECT n FROM secret_one_time "
            "WHERE device_id = ? ORDER BY n LIMIT 1) RETURNING id, key",
            (device_id,),
        ).fetchone()
        out.append(
            {
                "device": int(device_id),
                "key": bytes(public_key),
                "name": str(name),
                "signed_prekey": {"id": int(spk_id), "key": bytes(spk_key), "sig": bytes(spk_sig)},
                "one_time": None if otk is None else {"id": int(otk[0]), "key": bytes(otk[1])},
            }
        )
    return out


# --- queues -----------------------------------------------------------------------------


def queue_put(
    conn: sqlite3.Connection,
    device_id: int,
    kind: str,
    sender: str,
    sender_device: int,
    msg_id: int,
    payload: bytes,
    sent: float,
    expires: float,
    count: int = 0,
    queue_max: int | None = None,
) -> tuple[int, bool]:
    """Queue an item for a device: (qid, True), or (qid, False) if the same (sender,
    sender device, id, kind) is already there (waiting or acknowledged: a resend).
    ``queue_max`` (messages only) raises :class:`QueueFull` at the bound."""
    if msg_id != 0:
        row = conn.execute(
            "SELECT qid FROM secret_queue WHERE device_id = ? AND sender = ? "
            "AND sender_device = ? AND msg_id = ? AND kind = ? AND msg_id != 0",
            (device_id, sender, sender_device, msg_id, kind),
        ).fetchone()
        if row is not None:
            return int(row[0]), False
    if queue_max is not None and waiting(conn, device_id) >= queue_max:
        raise QueueFull
    cur = conn.execute(
        "INSERT INTO secret_queue(device_id, kind, sender, sender_device, msg_id, payload, "
        "sent, expires, count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (device_id, kind, sender, sender_device, msg_id, payload, sent, expires, count),
    )
    assert cur.lastrowid is not None
    return int(cur.lastrowid), True


def merge_expired(
    conn: sqlite3.Connection,
    device_id: int,
    about: str,
    about_device: int,
    last_id: int,
    count: int,
    now: float,
    expires: float,
) -> int | None:
    """Add ``count`` to an unread ``expired`` notice of a device about the same other
    device, so a device away for long finds one notice per chat, not one per sweep; its
    qid, or None if there is none to add to."""
    row = conn.execute(
        "SELECT qid FROM secret_queue WHERE device_id = ? AND kind = 'expired' AND acked = 0 "
        "AND sender = ? AND sender_device = ? ORDER BY qid DESC LIMIT 1",
        (device_id, about, about_device),
    ).fetchone()
    if row is None:
        return None
    conn.execute(
        "UPDATE secret_queue SET count = count + ?, msg_id = ?, sent = ?, expires = ? "
        "WHERE qid = ?",
        (count, last_id, now, expires, row[0]),
    )
    return int(row[0])


def waiting(conn: sqlite3.Connection, device_id: int) -> int:
    """Items waiting (not acknowledged) for a device (kept by the queue's triggers)."""
    row = conn.execute("SELECT n FROM secret_waiting WHERE device_id = ?", (device_id,)).fetchone()
    return int(row[0]) if row else 0


def _item(row: tuple[Any, ...]) -> Item:
    qid, device_id, kind, sender, sender_device, msg_id, payload, sent, count = row
    return Item(
        int(qid),
        int(device_id),
        str(kind),
        str(sender),
        int(sender_device),
        int(msg_id),
        bytes(payload or b""),
        float(sent),
        int(count),
    )


_ITEM_COLS = "qid, device_id, kind, sender, sender_device, msg_id, payload, sent, count"


def item(conn: sqlite3.Connection, qid: int) -> Item | None:
    row = conn.execute(
        f"SELECT {_ITEM_COLS} FROM secret_queue WHERE qid = ? AND acked = 0", (qid,)
    ).fetchone()
    return _item(row) if row else None


def fetch(conn: sqlite3.Connection, device_id: int, limit: int) -> list[Item]:
    """What waits for a device, oldest first."""
    rows = conn.execute(
        f"SELECT {_ITEM_COLS} FROM secret_queue WHERE device_id = ? AND acked = 0 "
        "ORDER BY qid LIMIT ?",
        (device_id, limit),
    ).fetchall()
    return [_item(r) for r in rows]


def ack(conn: sqlite3.Connection, device_id: int, qids: list[int]) -> int:
    """Drop the payloads of a device's items (notices without an id: the whole row);
    another device's qids are not touched. Returns how many were acknowledged."""
    n = 0
    for qid in dict.fromkeys(qids):
        cur = conn.execute(
            "DELETE FROM secret_queue WHERE qid = ? AND device_id = ? AND acked = 0 AND msg_id = 0",
            (qid, device_id),
        )
        if cur.rowcount == 0:
            cur = conn.execute(
                "UPDATE secret_queue SET payload = NULL, acked = 1 "
                "WHERE qid = ? AND device_id = ? AND acked = 0",
                (qid, device_id),
            )
        n += cur.rowcount
    return n


def next_expiry(conn: sqlite3.Connection) -> float | None:
    row = conn.execute("SELECT MIN(expires) FROM secret_queue").fetchone()
    return None if row is None or row[0] is None else float(row[0])


@dataclass(frozen=True)
class Expired:
    """Messages from one sender device to one recipient device that passed the TTL."""

    device_id: int  # the recipient, a device of this node
    sender: str
    sender_device: int
    count: int
    last_id: int


def take_expired(conn: sqlite3.Connection, now: float, limit: int) -> tuple[list[Expired], int]:
    """Delete up to ``limit`` items past their ``expires``; returns the unacknowledged
    messages among them grouped per (recipient device, sender device), and how many rows
    went (acknowledged rows and notices go without a word)."""
    rows = conn.execute(
        "SELECT qid, device_id, kind, sender, sender_device, msg_id, acked FROM secret_queue "
        "WHERE expires <= ? ORDER BY expires LIMIT ?",
        (now, limit),
    ).fetchall()
    groups: dict[tuple[int, str, int], list[int]] = {}
    for _qid, device_id, kind, sender, sender_device, msg_id, acked in rows:
        if kind == "message" and not acked:
            key = (int(device_id), str(sender), int(sender_device))
            groups.setdefault(key, []).append(int(msg_id))
    conn.executemany("DELETE FROM secret_queue WHERE qid = ?", [(r[0],) for r in rows])
    out = [Expired(d, s, sd, len(ids), ids[-1]) for (d, s, sd), ids in groups.items()]
    return out, len(rows)


# --- contacts and revocation --------------------------------------------------------------


def touch_contact(
    conn: sqlite3.Connection, device_id: int, peer: str, peer_device: int, now: float
) -> None:
    conn.execute(
        "INSERT INTO secret_contacts(device_id, peer, peer_device, last) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(device_id, peer, peer_device) DO UPDATE SET last = excluded.last",
        (device_id, peer, peer_device, now),
    )


def contacts_of(conn: sqlite3.Connection, device_id: int) -> list[tuple[str, int]]:
    rows = conn.execute(
        "SELECT peer, peer_device FROM secret_contacts WHERE device_id = ? ORDER BY peer",
        (device_id,),
    ).fetchall()
    return [(str(p), int(d)) for p, d in rows]


def drop_device(conn: sqlite3.Connection, device_id: int) -> None:
    """Everything secret of a device: its queue, prekeys and contacts; and the other
    devices' contact rows naming it are left to them (they learn from the notice)."""
    tables = ("secret_queue", "secret_keys", "secret_one_time", "secret_contacts")
    for table in (*tables, "secret_waiting"):
        conn.execute(f"DELETE FROM {table} WHERE device_id = ?", (device_id,))


def revoked_with_data(conn: sqlite3.Connection) -> list[int]:
    """Revoked devices that still have secret rows (the sweep's backstop for revocations
    whose clean-up did not run, e.g. a crash between the revocation and its clean-up)."""
    rows = conn.execute(
        "SELECT d.id FROM devices d WHERE d.revoked IS NOT NULL AND ("
        "EXISTS (SELECT 1 FROM secret_keys k WHERE k.device_id = d.id) OR "
        "EXISTS (SELECT 1 FROM secret_one_time o WHERE o.device_id = d.id) OR "
        "EXISTS (SELECT 1 FROM secret_contacts c WHERE c.device_id = d.id) OR "
        "EXISTS (SELECT 1 FROM secret_queue q WHERE q.device_id = d.id AND q.acked = 0))"
    ).fetchall()
    return [int(r[0]) for r in rows]
