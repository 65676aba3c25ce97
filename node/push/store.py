"""SQL of push endpoints and per-user push settings, and their tables (the ``push`` schema).

Why a registered :class:`~node.storage.Schema` (``schema_versions`` row ``push``) rather
than a core migration: numbered on its own, it never races another feature for the next
core migration number (the way node/secret does it; node/app.py hands it over).

Every function runs inside a read or write job (a connection handed in), does SQL only and
returns plain data.

Tables:

* ``push_endpoints``: where to POST a notification for one device of this node (a
  UnifiedPush endpoint or any webhook URL) and the device's X25519 public key the payload
  is sealed to. Unique per (device, url): registering again updates the key.
* ``push_settings``: a user's choice of message previews (absent: the node's default,
  ``[push] previews``).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from ..storage import Migration, Schema

SCHEMA = Schema(
    "push",
    (
        Migration(
            1,
            "push endpoints and settings",
            """
            CREATE TABLE push_endpoints(
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
                device_id INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
                url TEXT NOT NULL,
                key BLOB NOT NULL,
                created REAL NOT NULL,
                UNIQUE (device_id, url)
            );
            CREATE INDEX push_endpoints_user ON push_endpoints(user_id);
            CREATE TABLE push_settings(
                user_id INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
                previews INTEGER NOT NULL
            );
            """,
        ),
    ),
)


@dataclass(frozen=True)
class Endpoint:
    id: int
    user_id: int
    device_id: int
    url: str
    key: bytes
    created: float

    def wire(self, this_device: int | None = None) -> dict[str, Any]:
        """As ``account.listPush`` shows it (the key is the device's public key: no secret)."""
        return {
            "id": self.id,
            "device_id": self.device_id,
            "url": self.url,
            "key": self.key,
            "created": self.created,
            "this_device": self.device_id == this_device,
        }


@dataclass(frozen=True)
class Target:
    """An endpoint a chat event is to be pushed to (what the member query answers)."""

    endpoint: Endpoint
    name: str  # the user's local name (to skip the sender)
    previews: bool


_COLS = "p.id, p.user_id, p.device_id, p.url, p.key, p.created"


def _endpoint(row: Any) -> Endpoint:
    return Endpoint(int(row[0]), int(row[1]), int(row[2]), str(row[3]), bytes(row[4]), row[5])


class TooMany(Exception):
    """The user has ``max_per_user`` endpoints already."""


def register(
    conn: sqlite3.Connection,
    user_id: int,
    device_id: int,
    url: str,
    key: bytes,
    now: float,
    max_per_user: int,
) -> tuple[Endpoint, bool]:
    """Add (or, for the same device and URL, re-key) an endpoint: (it, whether it is new)."""
    row = conn.execute(
        f"SELECT {_COLS} FROM push_endpoints p WHERE p.device_id = ? AND p.url = ?",
        (device_id, url),
    ).fetchone()
    if row is not None:
        conn.execute("UPDATE push_endpoints SET key = ? WHERE id = ?", (key, row[0]))
        return Endpoint(int(row[0]), user_id, device_id, url, key, row[5]), False
    (n,) = conn.execute(
        "SELECT COUNT(*) FROM push_endpoints WHERE user_id = ?", (user_id,)
    ).fetchone()
    if n >= max_per_user:
        raise TooMany
    cur = conn.execute(
        "INSERT INTO push_endpoints(user_id, device_id, url, key, created) VALUES (?, ?, ?, ?, ?)",
        (user_id, device_id, url, key, now),
    )
    return Endpoint(int(cur.lastrowid or 0), user_id, device_id, url, key, now), True


def of_user(conn: sqlite3.Connection, user_id: int) -> list[Endpoint]:
    rows = conn.execute(
        f"SELECT {_COLS} FROM push_endpoints p WHERE p.user_id = ? ORDER BY p.id", (user_id,)
    ).fetchall()
    return [_endpoint(r) for r in rows]


def get(conn: sqlite3.Connection, user_id: int, endpoint_id: int) -> Endpoint | None:
    row = conn.execute(
        f"SELECT {_COLS} FROM push_endpoints p WHERE p.id = ? AND p.user_id = ?",
        (endpoint_id, user_id),
    ).fetchone()
    return None if row is None else _endpoint(row)


def remove(conn: sqlite3.Connection, endpoint_id: int, user_id: int | None = None) -> bool:
    """Delete an endpoint (only of ``user_id`` when given): whether there was one."""
    if user_id is None:
        cur = conn.execute("DELETE FROM push_endpoints WHERE id = ?", (endpoint_id,))
    else:
        cur = conn.execute(
            "DELETE FROM push_endpoints WHERE id = ? AND user_id = ?", (endpoint_id, user_id)
        )
    return cur.rowcount > 0


def remove_devices(conn: sqlite3.Connection, device_ids: list[int]) -> int:
    """Drop the endpoints of revoked devices (a revoked device is no one's to notify)."""
    n = 0
    for did in device_ids:
        n += conn.execute("DELETE FROM push_endpoints WHERE device_id = ?", (did,)).rowcount
    return n


def count(conn: sqlite3.Connection) -> int:
    (n,) = conn.execute("SELECT COUNT(*) FROM push_endpoints").fetchone()
    return int(n)


def previews(conn: sqlite3.Connection, user_id: int) -> bool | None:
    """The user's preview choice; None: never chosen (the node's default applies)."""
    row = conn.execute(
        "SELECT previews FROM push_settings WHERE user_id = ?", (user_id,)
    ).fetchone()
    return None if row is None else bool(row[0])


def set_previews(conn: sqlite3.Connection, user_id: int, on: bool) -> None:
    conn.execute(
        "INSERT INTO push_settings(user_id, previews) VALUES (?, ?) "
        "ON CONFLICT(user_id) DO UPDATE SET previews = excluded.previews",
        (user_id, int(on)),
    )


def chat_targets(
    conn: sqlite3.Connection, chat_id: str, default_previews: bool, endpoints: int
) -> tuple[str, str, list[Target]]:
    """(chat kind, chat title, the endpoints to notify of a message in ``chat_id``).

    ONE query joining the push table with the chat's membership, walked from the smaller
    side: a chat with more members than the node has endpoints (``endpoints``; a group of
    200,000) is walked from the endpoints, each probing the membership by its primary key
    (chat, user); a small chat is walked from its members, each probing the endpoints by
    user. Never a lookup per member. Members who left, were removed or muted the dialog,
    and revoked devices, are not targets; the caller skips the sender and online devices."""
    head = conn.execute(
        "SELECT kind, title, members FROM chats WHERE id = ?", (chat_id,)
    ).fetchone()
    if head is None:
        return "", "", []
    # CROSS JOIN: SQLite keeps the order written, the driving table outside
    if int(head[2] or 0) > endpoints:
        tables = (
            "push_endpoints p CROSS JOIN chat_members m ON m.chat_id = ?2 AND m.user_id = p.user_id"
        )
    else:
        tables = "chat_members m CROSS JOIN push_endpoints p ON p.user_id = m.user_id"
    rows = conn.execute(
        f"SELECT {_COLS}, u.name, COALESCE(s.previews, ?1) FROM {tables} "
        "JOIN devices d ON d.id = p.device_id "
        "JOIN users u ON u.id = p.user_id "
        "LEFT JOIN push_settings s ON s.user_id = p.user_id "
        "WHERE m.chat_id = ?2 AND m.state = 'member' AND d.revoked IS NULL "
        # muted for good, or for a while that has not run out (chats.updateDialog mute_for)
        "AND NOT (m.muted = 1 AND (m.muted_until IS NULL OR m.muted_until > ?3))",
        (int(default_previews), chat_id, time.time()),
    ).fetchall()
    targets = [Target(_endpoint(r), str(r[6]), bool(r[7])) for r in rows]
    return str(head[0]), str(head[1]), targets


def device_targets(conn: sqlite3.Connection, device_id: int) -> list[Endpoint]:
    """The endpoints of one live device (a secret item waits for it)."""
    rows = conn.execute(
        f"SELECT {_COLS} FROM push_endpoints p JOIN devices d ON d.id = p.device_id "
        "WHERE p.device_id = ? AND d.revoked IS NULL",
        (device_id,),
    ).fetchall()
    return [_endpoint(r) for r in rows]
