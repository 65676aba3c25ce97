"""SQL for chats. Every function runs inside one ``Database.write``/``read`` job on the job's
connection, so an operation (append an event, apply it to derived state, record the per-user
updates it causes) is one atomic step of the group-committed log.

Write jobs also fill an :class:`Effects` with what must be pushed once the transaction has
committed (an acknowledged change is on disk before anyone is told of it).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import secrets
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

import cbor2
from nacl.signing import SigningKey

from ..address import Address, AddressError, canonical
from ..interfaces import Effects
from ..media import store as media_store
from ..protocol.errors import ErrorCode, RpcError
from ..storage import at_batch_end
from ..tokens import new_token
from . import events
from .events import GENESIS, MESSAGE

ADMIN_ROLES = ("owner", "admin")
UNREAD_CAP = 9999


ADDRESS_CACHE = 50_000


@dataclass(frozen=True)
class Home:
    """What a write job needs to know about this node to sequence and sign events."""

    key: SigningKey
    node_id: str
    edit_window: float
    max_group_members: int
    # user id -> canonical address: a user's name and node never change and ids are never
    # reused (AUTOINCREMENT), so this cache is never stale; used from the writer thread
    addresses: dict[int, str] = field(default_factory=dict, compare=False, repr=False)
    # canonical address -> user id, the inverse (log.user_id): a removed user's address may
    # name someone new later, so a removal clears it (Chats.on_user_removed)
    user_ids: dict[str, int] = field(default_factory=dict, compare=False, repr=False)


@dataclass
class Chat:
    id: str
    kind: str
    home: str
    title: str
    about: str
    created: float
    last_seq: int
    last_hash: bytes
    members: int
    pinned_seq: int | None


@dataclass(frozen=True)
class Member:
    user_id: int
    role: str
    state: str
    joined_seq: int
    read_seq: int


def new_chat_id() -> str:
    return base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


@dataclass(frozen=True)
class Account:
    """A user as a private chat id sees them: their address and their account's creation
    stamp (the incarnation: a removed account's name may be given to someone new)."""

    address: str
    created: float


def private_chat_id(a: Account, b: Account, attempt: int = 0) -> str:
    """The id of the private chat between two accounts: BLAKE2b over both addresses AND both
    accounts' creation stamps, ordered by address.

    Deterministic, so once federation lands the two users' nodes derive the same id for the
    same pair without talking (concurrent "start" on both sides converges on one chat).
    The stamps are what tells a re-created account from the removed one that had its name:
    ``alice@n1`` removed and added again is a new person with a new ``created``, so their
    chat with bob gets a new id and the old chat, with the first alice's messages, stays
    bob's alone. Both sides know the stamp: on this node it is ``users.created``; a remote
    account's stamp travels with its address in the user directory that federation keeps.
    The addresses are canonical (``name@<node id>``, node/address.py), never the petnames
    people type, which differ from node to node. Private chats made before addresses were
    canonical keep the ids they were given (``private_chats`` finds them; ids are never
    re-derived).

    Why not a counter of earlier chats between the two addresses: it is only deterministic
    while both nodes hold the same set of old chats, and a node that stops replicating a chat
    once its last local member is gone would count differently and hand out the removed
    person's chat id again. A stamp depends only on the two accounts.

    ``attempt`` > 0 is a local fallback for an id that is somehow taken (it never is for two
    distinct stamps, short of a BLAKE2b collision); it keeps chats.startPrivate answering
    instead of failing, at the price of that one pair not converging across nodes."""
    (lo_addr, lo_created), (hi_addr, hi_created) = sorted(
        ((a.address, a.created), (b.address, b.created))
    )
    text = f"private\0{lo_addr}\0{lo_created.hex()}\0{hi_addr}\0{hi_created.hex()}"
    if attempt:
        text += f"\0{attempt}"
    digest = hashlib.blake2b(text.encode(), digest_size=16).digest()
    return base64.b32encode(digest).decode().rstrip("=").lower()


def account(conn: sqlite3.Connection, home: Home, user_id: int) -> Account:
    row = conn.execute(
        "SELECT u.name, n.fingerprint, u.created FROM users u JOIN nodes n ON n.id = u.node "
        "WHERE u.id = ?",
        (user_id,),
    ).fetchone()
    assert row is not None, f"user #{user_id} vanished inside the job"
    return Account(canonical(row[0], row[1]), float(row[2]))


def new_private_chat_id(conn: sqlite3.Connection, home: Home, a: int, b: int) -> str:
    """A private chat id for two local accounts that have none yet."""
    me, other = account(conn, home, a), account(conn, home, b)
    for attempt in itertools.count():
        chat_id = private_chat_id(me, other, attempt)
        if get_chat(conn, chat_id) is None:
            return chat_id
    raise AssertionError("unreachable")


def address(conn: sqlite3.Connection, home: Home, user_id: int | None) -> str | None:
    """A user's canonical address (``name@<node id>``), as signed events carry it."""
    if user_id is None:
        return None
    cached = home.addresses.get(user_id)
    if cached is not None:
        return cached
    row = conn.execute(
        "SELECT u.name, n.fingerprint FROM users u JOIN nodes n ON n.id = u.node WHERE u.id = ?",
        (user_id,),
    ).fetchone()
    if row is None:
        return None
    if len(home.addresses) >= ADDRESS_CACHE:
        home.addresses.clear()
    home.addresses[user_id] = found = canonical(row[0], row[1])
    return found


def user_ids(conn: sqlite3.Connection, home: Home, names: list[str]) -> dict[str, int]:
    """Resolve what people type (``name``, ``name@petname``, ``name@<node id>``) to user ids,
    keyed by canonical address: users of this node, and remote users already cached as rows
    (handlers ask federation to fetch those first); unknown names fail as one."""
    out: dict[str, int] = {}
    missing: list[str] = []
    for raw in names:
        try:
            a = Address.parse(raw)
        except AddressError:
            missing.append(raw)
            continue
        node = conn.execute(
            "SELECT fingerprint, state FROM nodes WHERE "
            + ("state = 'self'" if not a.node else "fingerprint = ? OR name = ? COLLATE NOCASE"),
            () if not a.node else (a.node, a.node),
        ).fetchone()
        if node is None:
            raise RpcError(ErrorCode.USER_NOT_FOUND, f"{raw}: no node {a.node!r} is known here")
        if node[1] == "blocked":
            raise RpcError(ErrorCode.USER_NOT_FOUND, f"{raw}: node {a.node!r} is blocked here")
        row = conn.execute(
            "SELECT u.id, u.banned FROM users u JOIN nodes n ON n.id = u.node "
            "WHERE u.name = ? AND n.fingerprint = ?",
            (a.name, node[0]),
        ).fetchone()
        if row is None or row[1]:
            missing.append(raw)
        else:
            out[canonical(a.name, node[0])] = int(row[0])
    if missing:
        raise RpcError(ErrorCode.USER_NOT_FOUND, f"no such user: {', '.join(missing[:10])}")
    return out


# --- reading chats and members --------------------------------------------------------------
_CHAT_COLS = "id, kind, home, title, about, created, last_seq, last_hash, members, pinned_seq"


def get_chat(conn: sqlite3.Connection, chat_id: str) -> Chat | None:
    row = conn.execute(f"SELECT {_CHAT_COLS} FROM chats WHERE id = ?", (chat_id,)).fetchone()
    return Chat(*row) if row else None


def get_member(conn: sqlite3.Connection, chat_id: str, user_id: int) -> Member | None:
    row = conn.execute(
        "SELECT user_id, role, state, joined_seq, read_seq FROM chat_members "
        "WHERE chat_id = ? AND user_id = ?",
        (chat_id, user_id),
    ).fetchone()
    return Member(*row) if row else None


_NEED_MEMBER = (
    f"SELECT {', '.join('c.' + col for col in _CHAT_COLS.split(', '))}, "
    "m.user_id, m.role, m.state, m.joined_seq, m.read_seq FROM chats c "
    "LEFT JOIN chat_members m ON m.chat_id = c.id AND m.user_id = ? WHERE c.id = ?"
)
_N_CHAT_COLS = len(_CHAT_COLS.split(", "))


def need_member(conn: sqlite3.Connection, chat_id: str, user_id: int) -> tuple[Chat, Member]:
    """The chat and the caller's active membership, or the stable refusal. One statement:
    every send starts here, in the writer thread, and each statement there is a GIL
    round trip with the event loop (issue 17)."""
    row = conn.execute(_NEED_MEMBER, (user_id, chat_id)).fetchone()
    if row is None:
        raise RpcError(ErrorCode.CHAT_NOT_FOUND, f"no chat {chat_id}")
    if row[_N_CHAT_COLS] is None or row[_N_CHAT_COLS + 2] != "member":
        raise RpcError(ErrorCode.NOT_A_MEMBER, f"not a member of {chat_id}")
    return Chat(*row[:_N_CHAT_COLS]), Member(*row[_N_CHAT_COLS:])


def need_admin(conn: sqlite3.Connection, chat_id: str, user_id: int) -> tuple[Chat, Member]:
    chat, m = need_member(conn, chat_id, user_id)
    if chat.kind == "private" or m.role not in ADMIN_ROLES:
        raise RpcError(ErrorCode.CHAT_ADMIN_REQUIRED)
    return chat, m


def chats_of_user(conn: sqlite3.Connection, user_id: int) -> set[str]:
    rows = conn.execute(
        "SELECT chat_id FROM chat_members WHERE user_id = ? AND state = 'member'", (user_id,)
    )
    return {r[0] for r in rows}


# --- per-user updates ----------------------------------------------------------------------
def add_update(
    conn: sqlite3.Connection, fx: Effects, user_id: int, kind: str, body: dict[str, Any]
) -> int:
    """Append to a user's pts log (chat-list changes, read marks, dialog settings)."""
    row = conn.execute(
        "SELECT COALESCE(MAX(pts), 0) FROM user_updates WHERE user_id = ?", (user_id,)
    ).fetchone()
    pts = int(row[0]) + 1
    ts = time.time()
    conn.execute(
        "INSERT INTO user_updates(user_id, pts, kind, body, ts) VALUES (?, ?, ?, ?, ?)",
        (user_id, pts, kind, cbor2.dumps(body), ts),
    )
    fx.user_updates.append((user_id, {"pts": pts, "kind": kind, "ts": ts, **body}))
    return pts


def current_pts(conn: sqlite3.Connection, user_id: int) -> int:
    row = conn.execute(
        "SELECT COALESCE(MAX(pts), 0) FROM user_updates WHERE user_id = ?", (user_id,)
    ).fetchone()
    return int(row[0])


# An event as clients see it needs its own row and, for an edited message, the content of the
# edit that is current (the message's own content was erased when it was replaced).
_EV_COLS = "e.chat_id, e.seq, e.kind, e.ts, e.raw, e.content, e.edited_ts, e.deleted, ed.content"
_EDIT_JOIN = "LEFT JOIN events ed ON ed.chat_id = e.chat_id AND ed.seq = e.edit_seq"
_EV_FROM = f"events e {_EDIT_JOIN}"
_HIDDEN = (  # deleted "for me" by the user bound to ?
    "EXISTS (SELECT 1 FROM hidden_messages h WHERE h.user_id = ? "
    "AND h.chat_id = e.chat_id AND h.seq = e.seq)"
)


def event_out(conn: sqlite3.Connection, row: Any) -> dict[str, Any]:
    """A stored event as clients see it: the signed body plus the content that is current
    (the latest edit's, else its own); deleted messages have an empty body. An event whose
    content was erased (a superseded edit) shows its signed body alone. Attachments get
    this node's media ids (see media.store.with_local_ids)."""
    chat_id, seq, kind, ts, raw, content, edited_ts, deleted, edit_content = row
    ev = events.open_event(raw)
    body: dict[str, Any] = {}
    if not deleted:
        body = dict(ev.get("body") or {})
        current = edit_content if edit_content is not None else content
        if current is not None:
            body.update(events.open_content(current))
        if body.get("media"):
            ref = body["target"] if kind == "edit" else seq
            body["media"] = media_store.with_local_ids(conn, chat_id, ref, body["media"])
    return {
        "chat": chat_id,
        "seq": seq,
        "kind": kind,
        "sender": ev.get("sender"),
        "ts": ts,
        "body": body,
        "edited": edited_ts,
        "deleted": bool(deleted),
    }


@dataclass(frozen=True)
class Stored:
    """One stored event with what changes to it need: its row for :func:`event_out`, its
    sender, its rowid (the search index key) and the edit now current."""

    row: Any
    sender_id: int | None
    id: int
    edit_seq: int | None

    @property
    def chat_id(self) -> str:
        return str(self.row[0])

    @property
    def seq(self) -> int:
        return int(self.row[1])

    @property
    def kind(self) -> str:
        return str(self.row[2])

    @property
    def ts(self) -> float:
        return float(self.row[3])

    @property
    def deleted(self) -> bool:
        return bool(self.row[7])

    def content(self) -> dict[str, Any]:
        """The message's current content body (its latest edit's, else its own); empty
        once erased."""
        current = self.row[8] if self.row[8] is not None else self.row[5]
        return events.open_content(current) if current is not None else {}


def get_event(conn: sqlite3.Connection, chat_id: str, seq: int) -> Stored | None:
    row = conn.execute(
        f"SELECT {_EV_COLS}, e.sender_id, e.id, e.edit_seq FROM {_EV_FROM} "
        "WHERE e.chat_id = ? AND e.seq = ?",
        (chat_id, seq),
    ).fetchone()
    return Stored(row[:9], row[9], row[10], row[11]) if row else None


def need_message(conn: sqlite3.Connection, chat_id: str, seq: int, min_seq: int = 1) -> Stored:
    ev = get_event(conn, chat_id, seq)
    if ev is None or ev.kind != MESSAGE or ev.deleted or seq < min_seq:
        raise RpcError(ErrorCode.MESSAGE_NOT_FOUND, f"no message {seq} in {chat_id}")
    return ev


# The full-text index is written at the end of the write batch (storage.at_batch_end: FTS5
# flushes at every savepoint release); inserts and deletes keep their order there.
FTS_INSERT = "INSERT INTO events_fts(rowid, text) VALUES (?, ?)"
FTS_DELETE = "DELETE FROM events_fts WHERE rowid = ?"


def unindex(conn: sqlite3.Connection, rowid: int) -> None:
    at_batch_end(conn, FTS_DELETE, [(rowid,)])


def history(
    conn: sqlite3.Connection,
    user_id: int,
    chat_id: str,
    member: Member,
    before: int | None,
    after: int | None,
    limit: int,
) -> list[dict[str, Any]]:
    """A page of the log, newest first when paging backwards, oldest first when forwards.

    Edit and delete events are folded into their targets, so they are not listed here;
    messages deleted "for me" are left out."""
    lo = max(member.joined_seq, (after or 0) + 1)
    where = "e.chat_id = ? AND e.seq >= ? AND e.kind NOT IN ('edit', 'delete')"
    args: list[Any] = [chat_id, lo]
    if before is not None:
        where += " AND e.seq < ?"
        args.append(before)
    where += f" AND NOT {_HIDDEN}"
    args.append(user_id)
    order = "ASC" if after is not None and before is None else "DESC"
    rows = conn.execute(
        f"SELECT {_EV_COLS} FROM {_EV_FROM} WHERE {where} ORDER BY e.seq {order} LIMIT ?",
        (*args, limit),
    ).fetchall()
    out = [event_out(conn, r) for r in rows]
    if order == "DESC":
        out.reverse()
    return out


def events_after(
    conn: sqlite3.Connection, user_id: int, chat_id: str, after: int, limit: int
) -> list[dict[str, Any]]:
    """The raw log after a seq (edit/delete events included: a syncing client applies them)."""
    rows = conn.execute(
        f"SELECT {_EV_COLS}, {_HIDDEN} FROM {_EV_FROM} "
        "WHERE e.chat_id = ? AND e.seq > ? ORDER BY e.seq LIMIT ?",
        (user_id, chat_id, after, limit),
    ).fetchall()
    out = []
    for r in rows:
        ev = event_out(conn, r[:9])
        if r[9]:
            ev["body"], ev["deleted"] = {}, True
        out.append(ev)
    return out


# --- dialogs ------------------------------------------------------------------------------
def unread(conn: sqlite3.Connection, chat_id: str, user_id: int, read_seq: int) -> int:
    row = conn.execute(
        "SELECT COUNT(*) FROM (SELECT 1 FROM events WHERE chat_id = ? AND seq > ? "
        "AND kind = 'message' AND deleted = 0 AND (sender_id IS NULL OR sender_id != ?) "
        "LIMIT ?)",
        (chat_id, read_seq, user_id, UNREAD_CAP),
    ).fetchone()
    return int(row[0])


def muted_now(muted: bool, until: float | None) -> bool:
    """A dialog is muted when set so and its timed mute (if any) has not run out."""
    return muted and (until is None or until > time.time())


def read_outbox(conn: sqlite3.Connection, chat: Chat, user_id: int) -> int:
    """How far the caller's messages are read (receipts.py): in a private chat the other
    user's read position, in a group or channel the highest position read by anyone but
    the caller. Walks the chat_members_read index from the top: at most two rows are read
    whatever the chat's size."""
    row = conn.execute(
        "SELECT read_seq FROM chat_members WHERE chat_id = ? AND user_id != ? "
        "ORDER BY read_seq DESC LIMIT 1",
        (chat.id, user_id),
    ).fetchone()
    return int(row[0]) if row else 0


def private_peer(conn: sqlite3.Connection, home: Home, chat_id: str, user_id: int) -> Any:
    """The other user of a private chat: their address as the caller reads it (name@petname,
    for the dialog's ``peer`` and untitled title) and their display name."""
    row = conn.execute(
        "SELECT u.name, n.fingerprint, n.name, u.display_name FROM private_chats p JOIN users u "
        "ON u.id = CASE WHEN p.user_lo = ? THEN p.user_hi ELSE p.user_lo END "
        "JOIN nodes n ON n.id = u.node WHERE p.chat_id = ?",
        (user_id, chat_id),
    ).fetchone()
    return (Address(row[0], row[1]).display(row[2]), row[3]) if row else (None, "")


def dialog(conn: sqlite3.Connection, home: Home, chat_id: str, user_id: int) -> dict[str, Any]:
    """One entry of the caller's chat list."""
    chat = get_chat(conn, chat_id)
    m = get_member(conn, chat_id, user_id)
    assert chat is not None and m is not None
    flags = conn.execute(
        "SELECT pinned, muted, archived, muted_until FROM chat_members "
        "WHERE chat_id = ? AND user_id = ?",
        (chat_id, user_id),
    ).fetchone()
    title, peer = chat.title, None
    if chat.kind == "private":
        peer, display = private_peer(conn, home, chat_id, user_id)
        title = display or peer or ""
    last = conn.execute(
        f"SELECT {_EV_COLS} FROM {_EV_FROM} WHERE e.chat_id = ? "
        "AND e.kind NOT IN ('edit', 'delete') AND e.seq >= ? ORDER BY e.seq DESC LIMIT 1",
        (chat_id, m.joined_seq),
    ).fetchone()
    return {
        "id": chat.id,
        "kind": chat.kind,
        "title": title,
        "about": chat.about,
        "peer": peer,
        "home": chat.home,
        "role": m.role,
        "members": chat.members,
        "last_seq": chat.last_seq,
        "read_seq": m.read_seq,
        "unread": unread(conn, chat_id, user_id, m.read_seq),
        "read_outbox": read_outbox(conn, chat, user_id),
        "pinned_seq": chat.pinned_seq,
        "pinned": bool(flags[0]),
        "muted": muted_now(bool(flags[1]), flags[3]),
        "muted_until": flags[3],
        "archived": bool(flags[2]),
        "last": event_out(conn, last) if last else None,
    }


def dialogs(
    conn: sqlite3.Connection, home: Home, user_id: int, archived: bool | None
) -> list[dict[str, Any]]:
    out = [dialog(conn, home, cid, user_id) for cid in chats_of_user(conn, user_id)]
    if archived is not None:
        out = [d for d in out if d["archived"] == archived]
    # pinned first, then most recent activity
    out.sort(key=lambda d: (not d["pinned"], -(d["last"]["ts"] if d["last"] else 0.0)))
    return out


# --- chats ------------------------------------------------------------------------------
def insert_chat(conn: sqlite3.Connection, chat_id: str, kind: str, home_id: str) -> Chat:
    """The chat's row before its first event: what the home writes when it creates a chat,
    and what a replica records when it starts following one (apply fills in the rest)."""
    conn.execute(
        "INSERT INTO chats(id, kind, home, created, last_hash, members) VALUES (?, ?, ?, ?, ?, 0)",
        (chat_id, kind, home_id, time.time(), GENESIS),
    )
    chat = get_chat(conn, chat_id)
    assert chat is not None
    return chat


# --- invites --------------------------------------------------------------------------------
def _token_hash(token: str) -> bytes:
    return hashlib.blake2b(token.encode(), digest_size=32).digest()


def create_invite(
    conn: sqlite3.Connection, chat_id: str, creator_id: int, uses: int | None, ttl: float | None
) -> str:
    token = new_token()
    now = time.time()
    conn.execute(
        "INSERT INTO chat_invites(token_hash, chat_id, creator_id, uses_left, expires, created) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (_token_hash(token), chat_id, creator_id, uses, now + ttl if ttl else None, now),
    )
    return token


def use_invite(conn: sqlite3.Connection, token: str) -> str:
    """The chat an invite opens; consumes one use. Unknown, revoked, used up or expired
    invites all answer the same code (a guess learns nothing)."""
    h = _token_hash(token)
    row = conn.execute(
        "SELECT chat_id, uses_left, expires, revoked FROM chat_invites WHERE token_hash = ?",
        (h,),
    ).fetchone()
    if row is None or row[3] or (row[1] is not None and row[1] <= 0):
        raise RpcError(ErrorCode.CHAT_INVITE_INVALID)
    if row[2] is not None and row[2] < time.time():
        raise RpcError(ErrorCode.CHAT_INVITE_INVALID)
    if row[1] is not None:
        conn.execute("UPDATE chat_invites SET uses_left = uses_left - 1 WHERE token_hash = ?", (h,))
    return str(row[0])


INVITE_ID_LEN = 16  # hex digits of the token's hash that name an invite in listings


def list_invites(conn: sqlite3.Connection, chat_id: str) -> list[dict[str, Any]]:
    """A chat's invites, newest first. The token itself is not stored (only its hash), so
    an invite is named by the first hex digits of that hash: enough to revoke it, useless
    to join with."""
    now = time.time()
    rows = conn.execute(
        "SELECT token_hash, creator_id, created, uses_left, expires, revoked FROM chat_invites "
        "WHERE chat_id = ? ORDER BY created DESC LIMIT 10000",
        (chat_id,),
    ).fetchall()
    return [
        {
            "id": bytes(h).hex()[:INVITE_ID_LEN],
            "creator_id": creator,
            "created": created,
            "uses_left": uses,
            "expires": expires,
            "revoked": bool(revoked),
            "usable": not revoked
            and (uses is None or uses > 0)
            and (expires is None or expires >= now),
        }
        for h, creator, created, uses, expires, revoked in rows
    ]


def revoke_invite(conn: sqlite3.Connection, chat_id: str, ref: str, home_id: str) -> str:
    """Revoke one of a chat's invites, named by its id (list_invites) or given as the link
    (``token.home``, or a bare token); returns its id. An invite of another chat, or none,
    is CHAT_INVITE_INVALID."""
    ref = ref.strip()
    rows: list[Any]
    if len(ref) == INVITE_ID_LEN and all(ch in "0123456789abcdef" for ch in ref):
        lo = bytes.fromhex(ref)  # the hashes starting so: a range of the primary key
        hi = (int.from_bytes(lo, "big") + 1).to_bytes(len(lo) + 1, "big")[-len(lo) :]
        rows = conn.execute(
            "SELECT token_hash FROM chat_invites WHERE token_hash >= ? "
            + ("AND token_hash < ? " if hi > lo else "AND ? IS NOT NULL ")
            + "AND chat_id = ?",
            (lo, hi, chat_id),
        ).fetchall()
    else:
        token, _, home = ref.rpartition(".")
        if not token:
            token, home = home, home_id
        if home != home_id:
            raise RpcError(ErrorCode.CHAT_INVITE_INVALID, "that link is for another node's chat")
        rows = conn.execute(
            "SELECT token_hash FROM chat_invites WHERE chat_id = ? AND token_hash = ?",
            (chat_id, _token_hash(token)),
        ).fetchall()
    if len(rows) != 1:
        raise RpcError(ErrorCode.CHAT_INVITE_INVALID, "no such invite in this chat")
    conn.execute("UPDATE chat_invites SET revoked = 1 WHERE token_hash = ?", (rows[0][0],))
    return bytes(rows[0][0]).hex()[:INVITE_ID_LEN]


# --- search ---------------------------------------------------------------------------------
def search(
    conn: sqlite3.Connection, user_id: int, match: str, chat_id: str | None, limit: int
) -> list[dict[str, Any]]:
    """Full-text search limited to chats the caller can read now, newest first."""
    sql = (
        f"SELECT {_EV_COLS} FROM events_fts f JOIN events e ON e.id = f.rowid "
        f"{_EDIT_JOIN} JOIN chat_members m ON m.chat_id = e.chat_id AND m.user_id = ? "
        "AND m.state = 'member' "
        "WHERE events_fts MATCH ? AND e.deleted = 0 AND e.seq >= m.joined_seq "
        "AND NOT EXISTS (SELECT 1 FROM hidden_messages h WHERE h.user_id = m.user_id "
        "AND h.chat_id = e.chat_id AND h.seq = e.seq)"
    )
    args: list[Any] = [user_id, match]
    if chat_id is not None:
        sql += " AND e.chat_id = ?"
        args.append(chat_id)
    sql += " ORDER BY e.id DESC LIMIT ?"
    args.append(limit)
    return [event_out(conn, r) for r in conn.execute(sql, args)]
