"""The chat-log engine: sequence at home, apply everywhere.

A chat's state is its log folded event by event. Two entry points write it:

* :func:`sequence` runs ONLY on the chat's home node (``chat.home == home.node_id``): it
  gives a :class:`Draft` the next ``seq``, the previous hash and a timestamp, seals its
  content, signs the event (events.py) and hands it to :func:`apply`. So sequencing is
  seal + store + apply, nothing else.
* :func:`apply` folds ANY event into the derived state by its kind: the ``events`` row and
  search index, current text (edits), deletions and erasure, pins, title and about,
  membership, roles and bans, media references, the chat's head. The same code runs for
  an event this node just sequenced and for one received from the home node, so a replica
  is the home's state replayed. :func:`receive` is the replica's entry: ``verify_next``
  against the chat's head, then ``apply``.

Authorization is NOT apply's business: the home checked it when it sequenced (handlers in
this package check, then build a draft); a replica trusts what the home signed and checks
the signature. apply refuses only what it cannot fold: an unknown kind (one declared list,
``events.KINDS``), an event out of order, a malformed body, a target that is not a message,
a user or chat this node does not know.

What a replica must know before it applies a chat's first event: the chat (its row: id,
kind, home, created; ``last_seq`` 0 and ``last_hash`` GENESIS), and every user the events
name (rows of ``users``: the user directory federation keeps). apply creates everything
else: events, members, roles, title, pins, media references, per-user updates.

**messages.send when the chat's home is another node** (federation builds this path; the
handler already branches on ``chat.home``): the node does not wait for the home. It stores
the post in a persistent outbox and answers at once ``{"seq": null, "pending": true}``
with the client's ``random_id``; the home's seq reaches the client later as the ordinary
``chat.event`` push when the sequenced event is replicated back, and a resend with the same
``random_id`` answers ``{"seq": N, "duplicate": true}`` once it has been sequenced. A reply
with a ``seq`` means acknowledged by the home; ``pending`` means queued. Waiting with a
timeout was rejected: a home that is down or partitioned would turn every send into a
timeout error the client must retry, while the outbox already makes the post durable.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..interfaces import Effects
from ..media import store as media_store
from ..protocol.codec import DecodeError
from ..protocol.errors import ErrorCode, RpcError
from ..storage import at_batch_end
from . import events, store
from .events import EDIT, KINDS, MESSAGE, ChainError, Sealed
from .store import FTS_INSERT, Chat, Home


class LogError(Exception):
    """An event that this node cannot sequence or fold into its state."""


class HomeElsewhere(RpcError):
    """A change asked of a replica: only the chat's home sequences it. The chats service
    forwards the call to the home (federation) when it can; otherwise the caller reads
    CHAT_WRITE_FORBIDDEN."""

    def __init__(self, chat_id: str, home: str) -> None:
        super().__init__(ErrorCode.CHAT_WRITE_FORBIDDEN, f"chat {chat_id} lives on node {home}")
        self.home = home


@dataclass(frozen=True)
class Draft:
    """What a handler wants in the log: the kind, who (None: the node itself), the signed
    ``body`` (stays when content is erased) and the erasable ``content`` (text, media
    content addresses, forward origin)."""

    kind: str
    sender_id: int | None
    body: dict[str, Any] = field(default_factory=dict)
    content: dict[str, Any] | None = None
    random_id: int | None = None


@dataclass(frozen=True)
class Sequenced:
    """A sequenced event: what federation ships (``sealed`` + ``content``, the record or
    None) and, for the handler's answer, its seq, ts and the event as clients see it."""

    sealed: Sealed
    content: bytes | None
    seq: int
    ts: float
    event: dict[str, Any]


def sequence(
    conn: sqlite3.Connection, home: Home, chat: Chat, draft: Draft, fx: Effects | None = None
) -> Sequenced:
    """Seal the next event of ``chat`` from ``draft``, store it and apply it. Only the chat's
    home sequences; ``chat`` is updated in place (head, members, pins, title)."""
    if draft.kind not in KINDS:
        raise LogError(f"unknown event kind {draft.kind!r}")
    if chat.home != home.node_id:  # a replica: only its home changes the chat
        raise HomeElsewhere(chat.id, chat.home)
    seq, ts = chat.last_seq + 1, time.time()
    record, committed = (None, None)
    if draft.content is not None:
        record, committed = events.seal_content(draft.content)
    sender = store.address(conn, home, draft.sender_id)
    sealed = events.seal_event(
        home.key,
        chat=chat.id,
        seq=seq,
        kind=draft.kind,
        sender=sender,
        ts=ts,
        body=draft.body,
        random_id=draft.random_id,
        prev=chat.last_hash,
        content_hash=committed,
    )
    # what apply would decode, hash and look up again is at hand: it was just made from it
    made = _Made(seq, ts, draft, draft.content, sender)
    ev = apply(conn, home, sealed, record, fx, chat=chat, _made=made)
    return Sequenced(sealed, record, seq, ts, ev)


@dataclass(frozen=True)
class _Made:
    """An event :func:`sequence` just sealed, as :func:`apply` would read it back."""

    seq: int
    ts: float
    draft: Draft
    content: dict[str, Any] | None
    sender: str | None


def receive(
    conn: sqlite3.Connection,
    home: Home,
    sealed: Sealed,
    content: bytes | None,
    home_key: Any,
    fx: Effects | None = None,
) -> dict[str, Any]:
    """A replica's step: verify the event against the chat's head (``verify_next``), then
    apply it. ``home_key`` is the chat's home node's VerifyKey."""
    ev = events.open_event(sealed.raw)
    chat = store.get_chat(conn, str(ev.get("chat")))
    if chat is None:
        raise LogError(f"unknown chat {ev.get('chat')!r}")
    events.verify_next(
        chat.last_hash, sealed, home_key, content, chat=chat.id, seq=chat.last_seq + 1
    )
    return apply(conn, home, sealed, content, fx, chat=chat)


@dataclass
class _Applying:
    """One event being folded: what the per-kind functions need."""

    conn: sqlite3.Connection
    home: Home
    fx: Effects
    chat: Chat
    seq: int
    ts: float
    sender_id: int | None
    body: dict[str, Any]
    content: dict[str, Any] | None
    rowid: int

    def user(self, addr: Any) -> int:
        return user_id(self.conn, self.home, addr)

    def target(self) -> store.Stored:
        """The message an edit/delete/pin refers to (live: not deleted)."""
        seq = self.body.get("target")
        if not isinstance(seq, int) or not 0 < seq < self.seq:
            raise LogError(f"seq {self.seq}: target {seq!r} is not an earlier seq")
        msg = store.get_event(self.conn, self.chat.id, seq)
        if msg is None or msg.kind != MESSAGE or msg.deleted:
            raise LogError(f"seq {self.seq}: target {seq!r} is not a live message")
        return msg


def apply(
    conn: sqlite3.Connection,
    home: Home,
    sealed: Sealed,
    content: bytes | None,
    fx: Effects | None = None,
    *,
    chat: Chat | None = None,
    _made: _Made | None = None,
    decoded: dict[str, Any] | None = None,
    write_head: bool = True,
) -> dict[str, Any]:
    """Fold one event (this node's or a peer's; verified by the caller) into the derived
    state; returns it as clients see it and queues its push on ``fx``. Events must come in
    seq order. ``content`` is the event's content record, or None (never any, or erased).

    ``_made`` is for :func:`sequence` only: the event it has just sealed, so the bytes
    need not be decoded and hashed again, nor the sender looked up by the address just
    made from its id (the same fields, the same checks; measured ~10% of a send's job).
    ``decoded``: the event's bytes already decoded (a replica verified them just before).
    ``write_head=False``: the caller writes the chat's head (last_seq, last_hash) itself
    once after a batch (the in-memory ``chat`` is advanced either way)."""
    fx = fx if fx is not None else Effects()
    if _made is not None and chat is not None:
        d = _made.draft
        return _fold(
            conn,
            home,
            sealed,
            content,
            fx,
            chat,
            d.kind,
            d.body,
            _made.content,
            _made.seq,
            _made.ts,
            d.random_id,
            _made.sender,
            d.sender_id,
        )
    try:
        ev = decoded if decoded is not None else events.open_event(sealed.raw)
        cbody = events.open_content(content) if content is not None else None
    except DecodeError as e:
        raise LogError(f"undecodable event or content ({e})") from None
    kind, body = ev.get("kind"), ev.get("body")
    if kind not in KINDS:
        raise LogError(f"unknown event kind {kind!r}")
    if not isinstance(body, dict):
        raise LogError("event body is not a map")
    if chat is None:
        chat = store.get_chat(conn, str(ev.get("chat")))
        if chat is None:
            raise LogError(f"unknown chat {ev.get('chat')!r}: record it before its log")
    seq, ts, rid = ev.get("seq"), ev.get("ts"), ev.get("rid")
    if ev.get("chat") != chat.id or seq != chat.last_seq + 1:
        raise LogError(f"event {ev.get('chat')}/{seq} is not the next of {chat.id}")
    if content is not None and ev.get("content_hash") != events.content_hash(content):
        raise LogError(f"seq {seq}: content does not match its content_hash")
    if not isinstance(ts, (int, float)) or not (rid is None or isinstance(rid, int)):
        raise LogError(f"seq {seq}: malformed ts or rid")
    sender = ev.get("sender")
    sender_id = None if sender is None else user_id(conn, home, sender)
    return _fold(
        conn,
        home,
        sealed,
        content,
        fx,
        chat,
        kind,
        body,
        cbody,
        seq,
        ts,
        rid,
        sender,
        sender_id,
        write_head,
    )


def _fold(
    conn: sqlite3.Connection,
    home: Home,
    sealed: Sealed,
    content: bytes | None,
    fx: Effects,
    chat: Chat,
    kind: str,
    body: dict[str, Any],
    cbody: dict[str, Any] | None,
    seq: int,
    ts: float,
    rid: int | None,
    sender: str | None,
    sender_id: int | None,
    write_head: bool = True,
) -> dict[str, Any]:
    """Store one checked event and fold it into the derived state by its kind."""
    target = body.get("target") if isinstance(body.get("target"), int) else None
    cur = conn.execute(
        "INSERT INTO events(chat_id, seq, kind, sender_id, ts, random_id, target_seq, raw, "
        "hash, sig, content) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (chat.id, seq, kind, sender_id, ts, rid, target, *_sealed(sealed), content),
    )
    if write_head:
        write_chat_head(conn, chat.id, seq, sealed.hash)
    chat.last_seq, chat.last_hash = seq, sealed.hash
    rowid = int(cur.lastrowid or 0)
    a = _Applying(conn, home, fx, chat, seq, float(ts), sender_id, body, cbody, rowid)
    media = _media_items(a)
    _APPLY[kind](a)
    view_body = {**body, **cbody} if cbody else dict(body)
    if media:  # as clients see it: with this node's media ids, now that refs exist
        ref_seq = target if kind == EDIT and target is not None else seq
        view_body["media"] = media_store.with_local_ids(conn, chat.id, ref_seq, media)
    out = {
        "chat": chat.id,
        "seq": seq,
        "kind": kind,
        "sender": sender,
        "ts": ts,
        "body": view_body,
        "edited": None,
        "deleted": False,
    }
    fx.chat_events.append((chat.id, out))
    return out


def apply_messages(
    conn: sqlite3.Connection,
    home: Home,
    chat: Chat,
    run: list[tuple[Sealed, bytes | None, dict[str, Any], dict[str, Any] | None]],
    fx: Effects,
) -> None:
    """:func:`apply` for a run of consecutive plain ``message`` events (no media) that a
    replica received together: the same checks and the same rows (event, search text, the
    sender's read position, the push), written with one statement per table instead of per
    event, and the chat's head left to the caller. Why: per-event statements were most of
    a replica's catch-up time (benchmark: ~100 us per event). Anything else goes through
    :func:`apply`; so does a run of one. Each item: the event, its content record, the
    event and the content body decoded (the caller decoded both to pick the run)."""
    if len(run) < 2:
        for sealed, content, ev, _ in run:
            apply(conn, home, sealed, content, fx, chat=chat, decoded=ev, write_head=False)
        return
    rows: list[tuple[Any, ...]] = []
    texts: list[tuple[int, str]] = []  # (seq, text)
    read_upto: dict[int, int] = {}
    outs: list[dict[str, Any]] = []
    seq = chat.last_seq
    for sealed, content, ev, cbody in run:
        seq += 1
        body, ts, rid = ev.get("body"), ev.get("ts"), ev.get("rid")
        if ev.get("chat") != chat.id or ev.get("seq") != seq or ev.get("kind") != MESSAGE:
            raise LogError(f"event {ev.get('chat')}/{ev.get('seq')} is not the next of {chat.id}")
        if not isinstance(body, dict):
            raise LogError("event body is not a map")
        if not isinstance(ts, (int, float)) or not (rid is None or isinstance(rid, int)):
            raise LogError(f"seq {seq}: malformed ts or rid")
        if (content is None) != (cbody is None):
            raise LogError(f"seq {seq}: content and its decoded body disagree")
        if content is not None:
            if ev.get("content_hash") != events.content_hash(content):
                raise LogError(f"seq {seq}: content does not match its content_hash")
            if cbody and cbody.get("media"):
                raise LogError(f"seq {seq}: media in a plain run")  # the caller's mistake
        sender = ev.get("sender")
        sender_id = None if sender is None else user_id(conn, home, sender)
        rows.append(
            (
                chat.id,
                seq,
                MESSAGE,
                sender_id,
                ts,
                rid,
                None,
                sealed.raw,
                sealed.hash,
                sealed.sig,
                content,
            )
        )
        text = (cbody or {}).get("text")
        if text:
            texts.append((seq, str(text)))
        if sender_id is not None:
            read_upto[sender_id] = seq
        outs.append(
            {
                "chat": chat.id,
                "seq": seq,
                "kind": MESSAGE,
                "sender": sender,
                "ts": ts,
                "body": {**body, **cbody} if cbody else dict(body),
                "edited": None,
                "deleted": False,
            }
        )
    conn.executemany(
        "INSERT INTO events(chat_id, seq, kind, sender_id, ts, random_id, target_seq, raw, "
        "hash, sig, content) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    if texts:
        ids = dict(
            conn.execute(
                "SELECT seq, id FROM events WHERE chat_id = ? AND seq BETWEEN ? AND ?",
                (chat.id, texts[0][0], texts[-1][0]),
            ).fetchall()
        )
        at_batch_end(conn, FTS_INSERT, [(ids[s], t) for s, t in texts])
    conn.executemany(
        "UPDATE chat_members SET read_seq = MAX(read_seq, ?) WHERE chat_id = ? AND user_id = ?",
        [(upto, chat.id, uid) for uid, upto in read_upto.items()],
    )
    last = run[-1][0]
    chat.last_seq, chat.last_hash = seq, last.hash
    fx.chat_events.extend((chat.id, out) for out in outs)


def write_chat_head(conn: sqlite3.Connection, chat_id: str, seq: int, h: bytes) -> None:
    conn.execute("UPDATE chats SET last_seq = ?, last_hash = ? WHERE id = ?", (seq, h, chat_id))


def _sealed(s: Sealed) -> tuple[bytes, bytes, bytes]:
    return s.raw, s.hash, s.sig


def user_id(conn: sqlite3.Connection, home: Home, addr: Any) -> int:
    """The local user an address in an event names (the inverse of ``store.address``); a
    node learns users before the events that name them."""
    if isinstance(addr, str) and "@" in addr:
        cached = home.user_ids.get(addr)
        if cached is not None:
            return cached
        rows = conn.execute("SELECT id FROM users WHERE name = ?", (addr.partition("@")[0],))
        for (uid,) in rows.fetchall():
            if store.address(conn, home, uid) == addr:
                if len(home.user_ids) >= store.ADDRESS_CACHE:
                    home.user_ids.clear()
                home.user_ids[addr] = int(uid)
                return int(uid)
    raise LogError(f"unknown user {addr!r}")


def _media_items(a: _Applying) -> list[dict[str, Any]]:
    items = (a.content or {}).get("media") or []
    if not isinstance(items, list):
        raise LogError(f"seq {a.seq}: media is not a list")
    for it in items:
        sha = it.get("sha256") if isinstance(it, dict) else None
        if not (
            isinstance(sha, str)
            and len(sha) == 64
            and isinstance(it.get("size"), int)
            and isinstance(it.get("mime"), str)
        ):
            raise LogError(f"seq {a.seq}: a media item lacks its content address")
        try:
            bytes.fromhex(sha)
        except ValueError:
            raise LogError(f"seq {a.seq}: media sha256 is not hex") from None
    return items


def _index(a: _Applying, rowid: int) -> None:
    text = (a.content or {}).get("text")
    if text:
        at_batch_end(a.conn, FTS_INSERT, [(rowid, str(text))])


def _set_chat(a: _Applying, column: str, value: Any) -> None:
    assert column in ("title", "about", "pinned_seq", "members")
    a.conn.execute(f"UPDATE chats SET {column} = ? WHERE id = ?", (value, a.chat.id))
    setattr(a.chat, column, value)


# --- membership -------------------------------------------------------------------------
def _add_members(a: _Applying, members: list[tuple[int, str]]) -> None:
    """(Re-)activate memberships; history stays visible from seq 1 (like Telegram groups)
    and everything up to this event counts as read."""
    added = 0
    for uid, role in members:
        m = store.get_member(a.conn, a.chat.id, uid)
        if m is not None and m.state == "member":
            continue
        a.conn.execute(
            "INSERT INTO chat_members(chat_id, user_id, role, state, joined_seq, read_seq) "
            "VALUES (?, ?, ?, 'member', 1, ?) ON CONFLICT(chat_id, user_id) DO UPDATE SET "
            "state = 'member', role = excluded.role, read_seq = excluded.read_seq",
            (a.chat.id, uid, role, a.seq),
        )
        store.add_update(a.conn, a.fx, uid, "chat.joined", {"chat": a.chat.id})
        a.fx.membership.append((a.chat.id, uid, True))
        added += 1
    if added:
        _set_chat(a, "members", a.chat.members + added)


def _end_membership(a: _Applying, state: str) -> None:
    """Leave, remove or ban the user the event names (a ban also covers a non-member)."""
    uid = a.user(a.body.get("user"))
    m = store.get_member(a.conn, a.chat.id, uid)
    if m is None:
        if state != "banned":
            return
        a.conn.execute(
            "INSERT INTO chat_members(chat_id, user_id, role, state, joined_seq) "
            "VALUES (?, ?, 'member', 'banned', 1)",
            (a.chat.id, uid),
        )
        return
    a.conn.execute(
        "UPDATE chat_members SET state = ?, role = 'member' WHERE chat_id = ? AND user_id = ?",
        (state, a.chat.id, uid),
    )
    if m.state == "member":
        _set_chat(a, "members", a.chat.members - 1)
        store.add_update(a.conn, a.fx, uid, "chat.left", {"chat": a.chat.id, "reason": state})
        a.fx.membership.append((a.chat.id, uid, False))


# --- one function per kind ----------------------------------------------------------------
def _create(a: _Applying) -> None:
    if a.seq != 1 or a.body.get("kind") != a.chat.kind or a.sender_id is None:
        raise LogError(f"seq {a.seq}: a create event opens its chat, of its kind, by someone")
    _set_chat(a, "title", str(a.body.get("title", "")))
    _set_chat(a, "about", str(a.body.get("about", "")))
    creator_role = "member" if a.chat.kind == "private" else "owner"
    others = [a.user(u) for u in a.body.get("members", [])]
    _add_members(a, [(a.sender_id, creator_role), *((u, "member") for u in others)])


def _message(a: _Applying) -> None:
    _index(a, a.rowid)
    if a.content and a.content.get("media"):
        media_store.refer(a.conn, a.chat.id, a.seq, a.sender_id, a.content["media"])
    if a.sender_id is not None:  # one's own message is read
        a.conn.execute(
            "UPDATE chat_members SET read_seq = MAX(read_seq, ?) WHERE chat_id = ? AND user_id = ?",
            (a.seq, a.chat.id, a.sender_id),
        )


def _erase(conn: sqlite3.Connection, chat_id: str, seq: int) -> None:
    conn.execute(
        "UPDATE events SET content = NULL WHERE chat_id = ? AND seq = ? AND content IS NOT NULL",
        (chat_id, seq),
    )


def _edit(a: _Applying) -> None:
    """The edit's content is now the message's: its text is indexed under the message's
    row, and the content it replaces (the previous edit's, else the original's) is erased.
    At most one event per message holds content: the current one."""
    msg = a.target()
    store.unindex(a.conn, msg.id)
    _index(a, msg.id)
    _erase(a.conn, a.chat.id, msg.edit_seq if msg.edit_seq is not None else msg.seq)
    a.conn.execute(
        "UPDATE events SET edit_seq = ?, edited_ts = ? WHERE id = ?", (a.seq, a.ts, msg.id)
    )
    if a.content and a.content.get("media"):
        media_store.refer(a.conn, a.chat.id, msg.seq, msg.sender_id, a.content["media"])
    a.fx.erased = True


def _delete(a: _Applying) -> None:
    """Delete for everyone: the message's content and its current edit's are erased and its
    text leaves the search index; the signed events (who sent what when, hashes) stay."""
    msg = a.target()
    media = msg.content().get("media")
    if media:
        media_store.unrefer(a.conn, a.chat.id, msg.seq, media)
    a.conn.execute("UPDATE events SET content = NULL, deleted = 1 WHERE id = ?", (msg.id,))
    if msg.edit_seq is not None:
        _erase(a.conn, a.chat.id, msg.edit_seq)
    store.unindex(a.conn, msg.id)
    if a.chat.pinned_seq == msg.seq:
        _set_chat(a, "pinned_seq", None)
    a.fx.erased = True


def _pin(a: _Applying) -> None:
    _set_chat(a, "pinned_seq", a.target().seq)


def _unpin(a: _Applying) -> None:
    _set_chat(a, "pinned_seq", None)


def _title(a: _Applying) -> None:
    _set_chat(a, "title", str(a.body.get("title", "")))


def _about(a: _Applying) -> None:
    _set_chat(a, "about", str(a.body.get("about", "")))


def _join(a: _Applying) -> None:
    _add_members(a, [(a.user(a.body.get("user")), "member")])


def _add(a: _Applying) -> None:
    users = a.body.get("users")
    if not isinstance(users, list):
        raise LogError(f"seq {a.seq}: an add event lists its users")
    _add_members(a, [(a.user(u), "member") for u in users])


def _unban(a: _Applying) -> None:
    a.conn.execute(
        "UPDATE chat_members SET state = 'kicked' WHERE chat_id = ? AND user_id = ? "
        "AND state = 'banned'",
        (a.chat.id, a.user(a.body.get("user"))),
    )


def _role(a: _Applying) -> None:
    """A new role; handing over ownership makes the old owner (the sender) an admin. A role
    event without sender is the node's: an heir after the owner's account was removed."""
    role = a.body.get("role")
    if role not in ("owner", "admin", "member"):
        raise LogError(f"seq {a.seq}: unknown role {role!r}")
    uid = a.user(a.body.get("user"))
    set_role = "UPDATE chat_members SET role = ? WHERE chat_id = ? AND user_id = ?"
    a.conn.execute(set_role, (role, a.chat.id, uid))
    if role == "owner" and a.sender_id is not None and a.sender_id != uid:
        a.conn.execute(set_role, ("admin", a.chat.id, a.sender_id))


_APPLY: dict[str, Callable[[_Applying], None]] = {
    "create": _create,
    MESSAGE: _message,
    EDIT: _edit,
    "delete": _delete,
    "pin": _pin,
    "unpin": _unpin,
    "title": _title,
    "about": _about,
    "join": _join,
    "leave": lambda a: _end_membership(a, "left"),
    "add": _add,
    "remove": lambda a: _end_membership(a, "kicked"),
    "ban": lambda a: _end_membership(a, "banned"),
    "unban": _unban,
    "role": _role,
}
assert set(_APPLY) == set(KINDS), "every declared kind is applied, and only those"

__all__ = ["ChainError", "Draft", "LogError", "Sequenced", "apply", "receive", "sequence"]
