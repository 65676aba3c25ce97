"""SQL for accounts. Every function takes a sqlite3 connection and runs inside one
``Database.write``/``read`` job, so each is one atomic step of the group-committed log."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from ..nodes import SELF_ROW
from ..protocol.errors import ErrorCode, RpcError

# The tables are made by migrations (node/storage/schema_v1.py, migration 5 in
# node/storage/migrations.py). ``users`` holds the users of every node this one knows
# (UNIQUE(name, node)); accounts are the rows on this node (``node = SELF_ROW``): only they
# have devices, login codes and passwords, so every lookup by name here is local.


@dataclass(frozen=True)
class User:
    id: int
    name: str
    display_name: str
    is_admin: bool
    banned: bool
    password_hash: bytes | None
    created: float


_USER_COLS = "id, name, display_name, is_admin, banned, password_hash, created"


def _user(row: Any) -> User:
    return User(row[0], row[1], row[2], bool(row[3]), bool(row[4]), row[5], row[6])


def user_by_name(conn: sqlite3.Connection, name: str) -> User | None:
    """The account called ``name`` on this node."""
    row = conn.execute(
        f"SELECT {_USER_COLS} FROM users WHERE name = ? AND node = {SELF_ROW}", (name,)
    ).fetchone()
    return _user(row) if row else None


def user_by_id(conn: sqlite3.Connection, user_id: int) -> User | None:
    row = conn.execute(f"SELECT {_USER_COLS} FROM users WHERE id = ?", (user_id,)).fetchone()
    return _user(row) if row else None


def need_user(conn: sqlite3.Connection, name: str) -> User:
    u = user_by_name(conn, name)
    if u is None:
        raise RpcError(ErrorCode.USER_NOT_FOUND, f"no user {name!r}")
    return u


def create_user(conn: sqlite3.Connection, name: str, display_name: str, is_admin: bool) -> User:
    try:
        cur = conn.execute(
            "INSERT INTO users(node, name, display_name, is_admin, created) "
            f"VALUES ({SELF_ROW}, ?, ?, ?, ?)",
            (name, display_name, int(is_admin), time.time()),
        )
    except sqlite3.IntegrityError:
        raise RpcError(ErrorCode.NAME_TAKEN, f"{name!r} is taken") from None
    u = user_by_id(conn, int(cur.lastrowid or 0))
    assert u is not None
    return u


def list_users(conn: sqlite3.Connection) -> list[tuple[User, int]]:
    rows = conn.execute(
        f"SELECT {', '.join('u.' + c.strip() for c in _USER_COLS.split(','))}, "
        "(SELECT COUNT(*) FROM devices d WHERE d.user_id = u.id AND d.revoked IS NULL) "
        f"FROM users u WHERE u.node = {SELF_ROW} ORDER BY u.name"
    ).fetchall()
    return [(_user(r), int(r[7])) for r in rows]


def set_code(
    conn: sqlite3.Connection,
    name: str,
    user_id: int | None,
    code_hash: bytes,
    ttl: float,
    attempts: int,
) -> None:
    """Store NAME's login code (replacing any earlier one); ``user_id`` None: a decoy."""
    now = time.time()
    conn.execute("DELETE FROM login_codes WHERE expires < ?", (now,))
    conn.execute(
        "INSERT OR REPLACE INTO login_codes(name, user_id, code_hash, expires, attempts_left) "
        "VALUES (?, ?, ?, ?, ?)",
        (name, user_id, code_hash, now + ttl, attempts),
    )


def check_code(
    conn: sqlite3.Connection, name: str, owner: int | None, matches: Any
) -> RpcError | None:
    """Check NAME's code for user ``owner`` (None: no usable user of that name), spending an
    attempt unless it is right. A decoy, or a code issued to another holder of the name,
    is never right, and costs and answers exactly what a wrong code does.

    Returns the error instead of raising it: a raising job is rolled back, and the spent
    attempt must be committed, or guessing would cost nothing."""
    row = conn.execute(
        "SELECT user_id, code_hash, expires, attempts_left FROM login_codes WHERE name = ?",
        (name,),
    ).fetchone()
    if row is None or row[2] < time.time() or row[3] <= 0:
        return RpcError(ErrorCode.CODE_EXPIRED)
    right = matches(row[1])  # compared whatever the owner: the same work either way
    if not right or owner is None or row[0] != owner:
        left = row[3] - 1
        if left <= 0:
            conn.execute("DELETE FROM login_codes WHERE name = ?", (name,))
        else:
            conn.execute("UPDATE login_codes SET attempts_left = ? WHERE name = ?", (left, name))
        return RpcError(ErrorCode.CODE_INVALID, f"wrong code; {max(left, 0)} attempts left")
    return None


def spend_attempt(conn: sqlite3.Connection, name: str) -> None:
    """A wrong second factor costs an attempt of the code, too."""
    conn.execute("UPDATE login_codes SET attempts_left = attempts_left - 1 WHERE name = ?", (name,))


def delete_code(conn: sqlite3.Connection, name: str) -> None:
    conn.execute("DELETE FROM login_codes WHERE name = ?", (name,))


def delete_codes_of(conn: sqlite3.Connection, user_id: int) -> None:
    conn.execute("DELETE FROM login_codes WHERE user_id = ?", (user_id,))


@dataclass(frozen=True)
class DeviceRow:
    id: int
    user_id: int
    name: str
    created: float
    last_seen: float
    revoked: float | None


def add_device(conn: sqlite3.Connection, user_id: int, public_key: bytes, name: str) -> int:
    now = time.time()
    try:
        cur = conn.execute(
            "INSERT INTO devices(user_id, public_key, name, created, last_seen) "
            "VALUES (?, ?, ?, ?, ?)",
            (user_id, public_key, name, now, now),
        )
    except sqlite3.IntegrityError:
        raise RpcError(ErrorCode.DEVICE_KEY_IN_USE) from None
    conn.execute("UPDATE users SET last_seen = ? WHERE id = ?", (now, user_id))
    return int(cur.lastrowid or 0)


def device_by_key(conn: sqlite3.Connection, public_key: bytes) -> DeviceRow | None:
    row = conn.execute(
        "SELECT id, user_id, name, created, last_seen, revoked FROM devices WHERE public_key = ?",
        (public_key,),
    ).fetchone()
    return DeviceRow(*row) if row else None


def device_by_id(conn: sqlite3.Connection, device_id: int) -> DeviceRow | None:
    row = conn.execute(
        "SELECT id, user_id, name, created, last_seen, revoked FROM devices WHERE id = ?",
        (device_id,),
    ).fetchone()
    return DeviceRow(*row) if row else None


def devices_of(conn: sqlite3.Connection, user_id: int) -> list[DeviceRow]:
    rows = conn.execute(
        "SELECT id, user_id, name, created, last_seen, revoked FROM devices "
        "WHERE user_id = ? AND revoked IS NULL ORDER BY id",
        (user_id,),
    ).fetchall()
    return [DeviceRow(*r) for r in rows]


def touch_device(conn: sqlite3.Connection, device_id: int) -> None:
    now = time.time()
    conn.execute("UPDATE devices SET last_seen = ? WHERE id = ?", (now, device_id))
    conn.execute(
        "UPDATE users SET last_seen = ? WHERE id = (SELECT user_id FROM devices WHERE id = ?)",
        (now, device_id),
    )


def mark_seen(conn: sqlite3.Connection, online: dict[int, set[int]], now: float) -> None:
    """Users (and their devices) online right now: last seen ``now`` (migration 8)."""
    conn.executemany("UPDATE users SET last_seen = ? WHERE id = ?", [(now, u) for u in online])
    conn.executemany(
        "UPDATE devices SET last_seen = ? WHERE id = ?",
        [(now, d) for devices in online.values() for d in devices],
    )


def last_seen(conn: sqlite3.Connection) -> dict[int, float | None]:
    """Every local user's last seen (None: never signed in)."""
    rows = conn.execute(f"SELECT id, last_seen FROM users WHERE node = {SELF_ROW}")
    return {int(u): (float(t) if t is not None else None) for u, t in rows}


def revoke_devices(
    conn: sqlite3.Connection, user_id: int, device_id: int | None = None, keep: int | None = None
) -> list[int]:
    """Revoke one device (or all but ``keep``); returns the ids revoked."""
    ids = [
        d.id
        for d in devices_of(conn, user_id)
        if (device_id is None or d.id == device_id) and d.id != keep
    ]
    now = time.time()
    conn.executemany("UPDATE devices SET revoked = ? WHERE id = ?", [(now, i) for i in ids])
    return ids


def create_invite(
    conn: sqlite3.Connection, token_hash: bytes, uses: int, expires: float | None
) -> None:
    conn.execute(
        "INSERT INTO invites(token_hash, uses_left, expires, created) VALUES (?,?,?,?)",
        (token_hash, uses, expires, time.time()),
    )


def use_invite(conn: sqlite3.Connection, token_hash: bytes) -> None:
    row = conn.execute(
        "SELECT uses_left, expires FROM invites WHERE token_hash = ?", (token_hash,)
    ).fetchone()
    if row is None or row[0] <= 0 or (row[1] is not None and row[1] < time.time()):
        raise RpcError(ErrorCode.INVITE_INVALID)
    conn.execute("UPDATE invites SET uses_left = uses_left - 1 WHERE token_hash = ?", (token_hash,))
