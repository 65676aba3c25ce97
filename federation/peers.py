"""Peers in the database: rows of the node's ``nodes`` table plus ``fed_peers``.

A node is its key: the id is the key's fingerprint, and what another node calls itself is
only a suggestion for the local petname (a collision gets a distinct one, as ``nodes``
does for this node's own name). States: ``peer`` (links allowed both ways), ``pending``
(it asked; an admin approves), ``blocked`` (refused), ``known`` (named by a peer's chats;
no link agreement).
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass

from node.nodes import free_name
from node.protocol.errors import ErrorCode, RpcError
from node.protocol.identity import fingerprint

_NAME_RE = re.compile(r"[^a-z0-9_-]+")


@dataclass(frozen=True)
class Peer:
    row: int  # nodes.id
    node_id: str
    key: bytes
    name: str
    state: str
    url: str | None
    first_seen: float
    last_seen: float
    last_error: str | None


_COLS = (
    "n.id, n.fingerprint, n.public_key, n.name, n.state, p.url, n.first_seen, n.last_seen, "
    "p.last_error FROM nodes n LEFT JOIN fed_peers p ON p.node = n.id"
)


def _peer(row: tuple[object, ...]) -> Peer:
    r = list(row)
    return Peer(
        int(r[0]),  # type: ignore[call-overload]
        str(r[1]),
        bytes(r[2]),  # type: ignore[call-overload]
        str(r[3]),
        str(r[4]),
        None if r[5] is None else str(r[5]),
        float(r[6]),  # type: ignore[arg-type]
        float(r[7]),  # type: ignore[arg-type]
        None if r[8] is None else str(r[8]),
    )


def get(conn: sqlite3.Connection, node_id: str) -> Peer | None:
    row = conn.execute(
        f"SELECT {_COLS} WHERE n.fingerprint = ? AND n.state != 'self'", (node_id,)
    ).fetchone()
    return _peer(row) if row else None


def all_peers(conn: sqlite3.Connection) -> list[Peer]:
    rows = conn.execute(f"SELECT {_COLS} WHERE n.state != 'self' ORDER BY n.name").fetchall()
    return [_peer(r) for r in rows]


def find(conn: sqlite3.Connection, ref: str) -> Peer:
    """A peer by node id, a unique id prefix (6+ characters) or petname."""
    ref = ref.strip()
    rows = conn.execute(
        f"SELECT {_COLS} WHERE n.state != 'self' AND "
        "(n.fingerprint = ? OR n.name = ? COLLATE NOCASE OR "
        "(length(?) >= 6 AND substr(n.fingerprint, 1, length(?)) = ?))",
        (ref, ref, ref, ref, ref),
    ).fetchall()
    if len(rows) != 1:
        why = "matches several nodes" if rows else "is not a known node"
        raise RpcError(ErrorCode.PEER_UNKNOWN, f"{ref!r} {why}")
    return _peer(rows[0])


def petname(hint: str) -> str:
    """A petname from what a node calls itself (letters, digits, - and _ only)."""
    return _NAME_RE.sub("-", hint.strip().lower()).strip("-")[:32] or "node"


def remember(
    conn: sqlite3.Connection,
    key: bytes,
    name_hint: str,
    state: str,
    url: str | None = None,
    *,
    url_from_admin: bool = False,
) -> Peer:
    """Record a node by its key (insert, or raise its state: known < pending < peer; a
    blocked node stays blocked unless ``state`` is 'peer' from an admin) and where to
    dial it. Returns it.

    Where to dial: what an admin gave (``url_from_admin``) replaces what was known; what a
    node announces of itself is used only while nothing is known (an admin may reach it
    through a proxy or a NAT address it cannot know)."""
    node_id = fingerprint(key)
    now = time.time()
    row = conn.execute("SELECT id, state FROM nodes WHERE fingerprint = ?", (node_id,)).fetchone()
    if row is not None and row[1] == "self":
        raise RpcError(ErrorCode.PEER_INVALID, "that is this node itself")
    if row is None:
        base = petname(name_hint)
        taken = conn.execute(
            "SELECT 1 FROM nodes WHERE name = ? COLLATE NOCASE", (base,)
        ).fetchone()
        name = free_name(conn, base, node_id) if taken else base
        cur = conn.execute(
            "INSERT INTO nodes(fingerprint, public_key, name, state, first_seen, last_seen) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (node_id, key, name, state, now, now),
        )
        node_row = int(cur.lastrowid or 0)
    else:
        node_row = int(row[0])
        rank = {"known": 0, "pending": 1, "peer": 2, "blocked": 3}
        current = str(row[1])
        new = state if rank.get(state, 0) > rank.get(current, 0) else current
        if current == "blocked" and state != "peer":
            new = "blocked"
        if current == "blocked" and state == "peer":
            new = "peer"
        conn.execute("UPDATE nodes SET state = ?, last_seen = ? WHERE id = ?", (new, now, node_row))
    if url is not None or state in ("peer", "pending"):
        keep = (
            "COALESCE(excluded.url, fed_peers.url)"
            if url_from_admin
            else "COALESCE(fed_peers.url, excluded.url)"
        )
        conn.execute(
            "INSERT INTO fed_peers(node, url, added) VALUES (?, ?, ?) "
            f"ON CONFLICT(node) DO UPDATE SET url = {keep}",
            (node_row, url, now),
        )
    peer = get(conn, node_id)
    assert peer is not None
    return peer


def set_state(conn: sqlite3.Connection, node_id: str, state: str) -> Peer:
    conn.execute(
        "UPDATE nodes SET state = ? WHERE fingerprint = ? AND state != 'self'", (state, node_id)
    )
    peer = get(conn, node_id)
    if peer is None:
        raise RpcError(ErrorCode.PEER_UNKNOWN, node_id)
    return peer


def forget_link(conn: sqlite3.Connection, node_id: str) -> None:
    """Drop how to reach a node and its approval; its users and chats stay (they are
    part of this node's chats' history), as a 'known' node."""
    conn.execute(
        "DELETE FROM fed_peers WHERE node = (SELECT id FROM nodes WHERE fingerprint = ?)",
        (node_id,),
    )
    conn.execute(
        "UPDATE nodes SET state = 'known' WHERE fingerprint = ? AND state != 'self'", (node_id,)
    )


def note_error(conn: sqlite3.Connection, node_id: str, error: str | None) -> None:
    conn.execute(
        "UPDATE fed_peers SET last_error = ? "
        "WHERE node = (SELECT id FROM nodes WHERE fingerprint = ?)",
        (error, node_id),
    )
    if error is None:
        conn.execute("UPDATE nodes SET last_seen = ? WHERE fingerprint = ?", (time.time(), node_id))
