"""Chat-log replication: what the home serves (``fed.pull``) and how a replica applies it.

Pull is the only data path: the home pokes a replica ("chat X is at seq N"), the replica
pulls what it lacks after its own head (its cursor is simply the chat's ``last_seq``) in
batches, verifies them and applies them with the same ``log.apply`` as local events. After
any disconnect the replica pulls everything after its cursor; nothing depends on a poke
arriving (Matrix's "latest event only" catch-up is the failure this avoids).

What a replica may see: the home ships the whole chain (every event's signed bytes, so the
replica can verify it from GENESIS and rebuild members, roles, titles and pins with
``apply``), but the erasable *content* (texts, media addresses) only of events from the
earliest join of that node's current members on: the chain stays whole, the history before
they joined stays on the home, exactly as if it had been erased.

These functions run inside database jobs (reader or writer threads); no I/O of their own.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from nacl.signing import VerifyKey

from node.address import Address, AddressError, canonical
from node.chats import events, log, store
from node.chats.events import ChainError, Sealed
from node.chats.store import Home
from node.interfaces import Effects
from node.nodes import ADDRESS_KEYS
from node.protocol.codec import DecodeError
from node.protocol.errors import ErrorCode, RpcError
from node.protocol.identity import fingerprint

from . import peers

PULL_EVENTS = 1000  # events per pull batch by default
PULL_BYTES = 768 * 1024  # a batch stays well under the 1 MiB frame


# --- the home's side ---------------------------------------------------------------------
def replica_nodes(conn: sqlite3.Connection, chat_id: str) -> set[str]:
    """The other nodes with current members in a chat: its replicas."""
    rows = conn.execute(
        "SELECT DISTINCT n.fingerprint FROM chat_members m JOIN users u ON u.id = m.user_id "
        "JOIN nodes n ON n.id = u.node WHERE m.chat_id = ? AND m.state = 'member' "
        "AND n.state != 'self'",
        (chat_id,),
    ).fetchall()
    return {str(r[0]) for r in rows}


def chats_replicated_by(conn: sqlite3.Connection, peer_row: int) -> list[tuple[str, int]]:
    """Chats homed here with current members on the peer: (chat, head) to poke it about."""
    rows = conn.execute(
        "SELECT DISTINCT c.id, c.last_seq FROM chat_members m JOIN users u ON u.id = m.user_id "
        "JOIN chats c ON c.id = m.chat_id WHERE u.node = ? AND m.state = 'member' "
        "AND c.home = (SELECT fingerprint FROM nodes WHERE state = 'self')",
        (peer_row,),
    ).fetchall()
    return [(str(r[0]), int(r[1])) for r in rows]


def serve_pull(
    conn: sqlite3.Connection,
    home: Home,
    peer: peers.Peer,
    chat_id: str,
    after: int | None,
    limit: int,
) -> dict[str, Any]:
    """``fed.pull``: events after ``after`` for a node with members in the chat.

    The home serves its log; a replica serves its copy (a relay: what it verified and
    applied, up to its own head), so replicas fill each other's gaps while the home is
    unreachable. A copy from a relay is as trustworthy as one from the home: the puller
    checks the chain and the home's signature either way. A relay ships content only where
    its own copy has it (its members' view); where the puller may see content the relay
    never received, the batch stops and the rest waits for the home."""
    chat = store.get_chat(conn, chat_id)
    if chat is None:
        raise RpcError(ErrorCode.CHAT_NOT_FOUND, f"no chat {chat_id} here")
    visible_from, until = _entitled(conn, chat_id, peer)
    own_from = 0  # the home holds every event's content (until erased)
    if chat.home != home.node_id:
        if peer.node_id == chat.home:
            raise RpcError(ErrorCode.NOT_A_REPLICA, "the home has the whole log")
        own_from, own_until = _entitled(conn, chat_id, _self_peer(conn, home))
        if own_until < chat.last_seq:  # we left: our copy ends at our leave
            raise RpcError(ErrorCode.NOT_A_REPLICA, f"this node no longer follows {chat_id}")
        until = min(until, chat.last_seq)
    start = after or 0
    rows = conn.execute(
        "SELECT seq, raw, sig, content FROM events WHERE chat_id = ? AND seq > ? AND seq <= ? "
        "ORDER BY seq LIMIT ?",
        (chat_id, start, until, limit),
    ).fetchall()
    out: list[list[Any]] = []
    size = 0
    named: set[str] = set()
    withheld = False
    for seq, raw, sig, content in rows:
        if visible_from <= seq < own_from:
            withheld = True  # content the puller may see that this relay never had:
            break  # the home's to ship
        shown = content if seq >= visible_from else None
        size += len(raw) + len(sig) + (len(shown) if shown else 0) + 16
        if out and size > PULL_BYTES:
            break
        out.append([bytes(raw), bytes(sig), None if shown is None else bytes(shown)])
        named |= _addresses(events.open_event(bytes(raw)))
    header = None
    if after is None:
        header = {"id": chat.id, "kind": chat.kind, "home": chat.home, "created": chat.created}
    users, nodes = _directory(conn, named)
    if withheld:
        until = start + len(out)  # "this is all I can give": the puller stops here
    return {"chat": header, "events": out, "head": until, "users": users, "nodes": nodes}


def _self_peer(conn: sqlite3.Connection, home: Home) -> peers.Peer:
    """This node as a Peer (the row its own users hang off), to ask what it is entitled to."""
    row = conn.execute("SELECT id, public_key, name FROM nodes WHERE state = 'self'").fetchone()
    return peers.Peer(
        int(row[0]), home.node_id, bytes(row[1] or b""), str(row[2]), "self", None, 0.0, 0.0, None
    )


def _entitled(conn: sqlite3.Connection, chat_id: str, peer: peers.Peer) -> tuple[int, int]:
    """What a node may pull of a chat: content from the earliest join of its members, and
    events up to the head while it has members, else up to the event that removed the
    last of them (so it learns of the removal, and of nothing after)."""
    rows = conn.execute(
        "SELECT m.joined_seq, m.state, u.name FROM chat_members m JOIN users u "
        "ON u.id = m.user_id WHERE m.chat_id = ? AND u.node = ?",
        (chat_id, peer.row),
    ).fetchall()
    current = [int(r[0]) for r in rows if r[1] == "member"]
    head = int(conn.execute("SELECT last_seq FROM chats WHERE id = ?", (chat_id,)).fetchone()[0])
    if current:
        return min(current), head
    gone = {canonical(str(r[2]), peer.node_id) for r in rows if r[1] != "member"}
    if gone:
        for seq, raw in conn.execute(
            "SELECT seq, raw FROM events WHERE chat_id = ? AND kind IN ('leave', 'remove', "
            "'ban') ORDER BY seq DESC",
            (chat_id,),
        ):
            body = events.open_event(bytes(raw)).get("body")
            if isinstance(body, dict) and body.get("user") in gone:
                return min(int(r[0]) for r in rows), int(seq)
    raise RpcError(ErrorCode.NOT_A_REPLICA, f"node {peer.name} has no members in {chat_id}")


def _addresses(ev: dict[str, Any]) -> set[str]:
    """Every address an event names (its sender, and users in its body)."""
    found: set[str] = set()
    if isinstance(ev.get("sender"), str):
        found.add(ev["sender"])
    body = ev.get("body")
    if isinstance(body, dict):
        for k, v in body.items():
            if k not in ADDRESS_KEYS:
                continue
            for x in v if isinstance(v, list) else [v]:
                if isinstance(x, str):
                    found.add(x)
    return found


def _directory(
    conn: sqlite3.Connection, addresses: set[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    users: dict[str, Any] = {}
    nodes: dict[str, Any] = {}
    for text in addresses:
        try:
            a = Address.parse(text)
        except AddressError:
            continue
        row = conn.execute(
            "SELECT u.display_name, u.created, n.public_key, n.name FROM users u "
            "JOIN nodes n ON n.id = u.node WHERE u.name = ? AND n.fingerprint = ?",
            (a.name, a.node),
        ).fetchone()
        if row is None:
            continue
        users[text] = {"name": a.name, "display_name": str(row[0]), "created": float(row[1])}
        if row[2] is not None:
            nodes[a.node] = {"key": bytes(row[2]), "name": str(row[3])}
    return users, nodes


# --- the replica's side ------------------------------------------------------------------
@dataclass(frozen=True)
class Batch:
    """A pulled batch, verified against the head it was pulled after."""

    chat_id: str
    header: dict[str, Any] | None
    prev_hash: bytes
    first_seq: int
    items: list[tuple[Sealed, bytes | None]]
    decoded: list[dict[str, Any]]  # the events of ``items``, as verification decoded them
    head: int
    users: dict[str, Any]
    nodes: dict[str, Any]


def verify_pulled(
    pulled: dict[str, Any],
    chat_id: str,
    home_key: bytes,
    prev_hash: bytes,
    after: int,
) -> Batch:
    """Check a ``fed.pull`` answer before anything of it is stored (runs in a thread: it
    hashes every event and checks the home's signature on the batch's last). Raises
    RpcError(EVENT_INVALID) saying what failed."""
    try:
        raw_events = pulled["events"]
        items: list[tuple[Sealed, bytes | None]] = []
        for entry in raw_events:
            raw, sig, content = entry
            if not (
                isinstance(raw, bytes)
                and isinstance(sig, bytes)
                and (content is None or isinstance(content, bytes))
            ):
                raise ChainError("an event entry is not [raw, sig, content]")
            items.append((Sealed(raw, events.event_hash(raw), sig), content))
        decoded: list[dict[str, Any]] = []
        if items:
            decoded = events.verify_batch(
                prev_hash, items, VerifyKey(home_key), chat=chat_id, first_seq=after + 1
            )
        header = pulled.get("chat")
        if header is not None and (
            not isinstance(header, dict) or header.get("id") != chat_id or after != 0
        ):
            raise ChainError("a chat header that does not fit the pull")
        users, nodes = pulled.get("users") or {}, pulled.get("nodes") or {}
        head = pulled.get("head")
        if not isinstance(users, dict) or not isinstance(nodes, dict) or not isinstance(head, int):
            raise ChainError("malformed users, nodes or head")
    except (ChainError, ValueError, TypeError, KeyError, DecodeError) as e:
        raise RpcError(ErrorCode.EVENT_INVALID, f"chat {chat_id}: {e}") from None
    return Batch(chat_id, header, prev_hash, after + 1, items, decoded, head, users, nodes)


def apply_batch(
    conn: sqlite3.Connection, fx: Effects, home: Home, home_id: str, batch: Batch
) -> int:
    """Store a verified batch (inside one write job): the nodes and users it names, the
    chat's row on a first pull, then every event through ``log.apply``. Returns the
    chat's head here afterwards."""
    for node_id, info in batch.nodes.items():
        key = info.get("key") if isinstance(info, dict) else None
        if not isinstance(key, bytes) or fingerprint(key) != node_id:
            raise RpcError(ErrorCode.EVENT_INVALID, f"node {node_id}: key does not match its id")
        if node_id != home.node_id:
            peers.remember(conn, key, str(info.get("name") or "node"), "known")
    for text, info in batch.users.items():
        _remember_user(conn, home, text, info)
    chat = store.get_chat(conn, batch.chat_id)
    if chat is None:
        h = batch.header
        if h is None:
            raise RpcError(ErrorCode.EVENT_INVALID, f"chat {batch.chat_id}: unknown here")
        if h.get("home") != home_id or h.get("kind") not in ("private", "group", "channel"):
            raise RpcError(ErrorCode.EVENT_INVALID, f"chat {batch.chat_id}: bad header")
        chat = store.insert_chat(conn, batch.chat_id, str(h["kind"]), home_id)
        created = h.get("created")
        if isinstance(created, int | float):
            conn.execute("UPDATE chats SET created = ? WHERE id = ?", (created, chat.id))
    if chat.home != home_id:
        raise RpcError(ErrorCode.EVENT_INVALID, f"chat {chat.id} is homed on {chat.home}")
    skip = chat.last_seq - (batch.first_seq - 1)  # another pull got there first
    joint = batch.prev_hash if skip == 0 else None
    if 0 < skip <= len(batch.items):
        joint = batch.items[skip - 1][0].hash  # must be the event we already have there
    if skip < 0 or joint is None or joint != chat.last_hash:
        raise RpcError(ErrorCode.EVENT_INVALID, f"chat {chat.id}: batch does not follow the head")
    run: list[tuple[Sealed, bytes | None, dict[str, Any], dict[str, Any] | None]] = []
    try:
        for (sealed, content), ev in zip(batch.items[skip:], batch.decoded[skip:], strict=True):
            cbody = _content_body(content)
            if ev.get("kind") == "message" and not (cbody or {}).get("media"):
                run.append((sealed, content, ev, cbody))  # a plain message: the bulk path
                continue
            log.apply_messages(conn, home, chat, run, fx)
            run = []
            log.apply(conn, home, sealed, content, fx, chat=chat, decoded=ev, write_head=False)
        log.apply_messages(conn, home, chat, run, fx)
    except log.LogError as e:
        raise RpcError(ErrorCode.EVENT_INVALID, f"chat {chat.id}: {e}") from None
    log.write_chat_head(conn, chat.id, chat.last_seq, chat.last_hash)  # once a batch
    if chat.kind == "private":
        _private_pair(conn, chat.id)
    return chat.last_seq


def _content_body(content: bytes | None) -> dict[str, Any] | None:
    """A verified content record's body (verify_next decoded it once already)."""
    if content is None:
        return None
    try:
        return events.open_content(content)
    except DecodeError as e:
        raise log.LogError(f"undecodable content ({e})") from None


def _remember_user(conn: sqlite3.Connection, home: Home, text: str, info: Any) -> None:
    try:
        a = Address.parse(text)
    except AddressError:
        return
    if a.node == home.node_id or not isinstance(info, dict):
        return  # our own users are ours to know, never a peer's to tell
    node = conn.execute("SELECT id FROM nodes WHERE fingerprint = ?", (a.node,)).fetchone()
    if node is None:
        return
    remember_user(conn, int(node[0]), a.name, info)


def remember_user(conn: sqlite3.Connection, node_row: int, name: str, info: dict[str, Any]) -> int:
    """A remote user as a row (insert, or refresh the display name)."""
    display = str(info.get("display_name") or "")[:128]
    created = info.get("created")
    created = float(created) if isinstance(created, int | float) else time.time()
    conn.execute(
        "INSERT INTO users(node, name, display_name, created) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(name, node) DO UPDATE SET display_name = excluded.display_name",
        (node_row, name, display, created),
    )
    row = conn.execute(
        "SELECT id FROM users WHERE node = ? AND name = ?", (node_row, name)
    ).fetchone()
    return int(row[0])


def _private_pair(conn: sqlite3.Connection, chat_id: str) -> None:
    ids = [
        int(r[0])
        for r in conn.execute(
            "SELECT user_id FROM chat_members WHERE chat_id = ? ORDER BY user_id", (chat_id,)
        ).fetchall()
    ]
    if len(ids) == 2:
        conn.execute(
            "INSERT OR IGNORE INTO private_chats(user_lo, user_hi, chat_id) VALUES (?, ?, ?)",
            (ids[0], ids[1], chat_id),
        )


def user_address(conn: sqlite3.Connection, user_id: int) -> str | None:
    row = conn.execute(
        "SELECT u.name, n.fingerprint FROM users u JOIN nodes n ON n.id = u.node WHERE u.id = ?",
        (user_id,),
    ).fetchone()
    return canonical(row[0], row[1]) if row else None
