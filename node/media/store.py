"""SQL for media. A *media* row is one finished, verified upload (name, mime, uploader) of a
content-addressed blob: many rows may share one blob (the same bytes uploaded twice are
stored once). Messages name their attachments by content address (SHA-256, size, mime), not
by a row id; ``media_refs`` binds each message to the local row that serves those bytes
(derived state, written by the chat log's ``apply``); reading a media needs being its
uploader or being able to read one of those messages.

An *opaque* row (migration 7) holds bytes its uploader declared encrypted on the device (a
secret chat's file, docs/secret-chats.md 6.6). It is readable by content address alone
(:func:`find_opaque`): the SHA-256 of ciphertext under a one-time key is a capability
nobody can guess, and the node holds nothing that could decrypt it. An ordinary row never
becomes readable that way, and no answer tells whether one exists.

Every function runs inside one ``Database.write``/``read`` job.
"""

from __future__ import annotations

import base64
import secrets
import sqlite3
import time
from typing import Any

from ..protocol.errors import ErrorCode, RpcError

# The tables are made by migration 4, frozen in node/storage/schema_v1.py (MEDIA); a change
# to them is a new migration in node/storage/migrations.py.

_COLS = "id, sha256, size, mime, name, width, height, uploader_id, created, opaque"
# what an opaque row fetched from another node is described as: the real name and type
# travel inside the secret message, never to a node
OPAQUE_NAME = ""
OPAQUE_MIME = "application/octet-stream"


def new_media_id() -> str:
    return base64.b32encode(secrets.token_bytes(15)).decode().lower()


def _out(row: Any) -> dict[str, Any]:
    out = {
        "media_id": row[0],
        "sha256": bytes(row[1]).hex(),
        "size": row[2],
        "mime": row[3],
        "name": row[4],
        "created": row[8],
    }
    if row[5] is not None and row[6] is not None:
        out["width"], out["height"] = row[5], row[6]
    if row[9]:
        out["opaque"] = True
    return out


def get(conn: sqlite3.Connection, media_id: str) -> Any:
    return conn.execute(f"SELECT {_COLS} FROM media WHERE id = ?", (media_id,)).fetchone()


def may_read(conn: sqlite3.Connection, user_id: int, media_id: str, uploader: int | None) -> bool:
    """The uploader, or a member who can read a (not deleted) message carrying it."""
    if uploader == user_id:
        return True
    row = conn.execute(
        "SELECT 1 FROM media_refs r "
        "JOIN chat_members m ON m.chat_id = r.chat_id AND m.user_id = ? AND m.state = 'member' "
        "JOIN events e ON e.chat_id = r.chat_id AND e.seq = r.seq AND e.deleted = 0 "
        "WHERE r.media_id = ? AND r.seq >= m.joined_seq LIMIT 1",
        (user_id, media_id),
    ).fetchone()
    return row is not None


def need_readable(conn: sqlite3.Connection, user_id: int, media_id: str) -> dict[str, Any]:
    row = get(conn, media_id)
    if row is None:
        raise RpcError(ErrorCode.MEDIA_NOT_FOUND, f"no media {media_id}")
    if not may_read(conn, user_id, media_id, row[7]):
        raise RpcError(ErrorCode.MEDIA_FORBIDDEN)
    return _out(row)


def describe(
    conn: sqlite3.Connection, user_id: int, items: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Inside the message-send job: check the sender may use each media and return what the
    message's content records of it: its content address (``sha256`` hex, ``size``,
    ``mime``) with its description (``name``, ``kind``, image ``width``/``height``). No
    node-local id: any node holding the event can fetch the bytes by address and verify
    them. The chat log's ``apply`` records the references (:func:`refer`)."""
    out = []
    for item in items:
        meta = need_readable(conn, user_id, item["media_id"])
        meta.pop("created")
        meta.pop("media_id")
        meta.pop("opaque", None)  # a node-local fact about the upload, not the file's address
        out.append({**meta, "kind": item["kind"]})
    return out


def _address(item: dict[str, Any]) -> tuple[bytes, int, str, str]:
    return bytes.fromhex(item["sha256"]), int(item["size"]), item["mime"], item.get("name", "")


def refer(
    conn: sqlite3.Connection,
    chat_id: str,
    seq: int,
    sender_id: int | None,
    items: list[dict[str, Any]],
) -> None:
    """Derived state of a message carrying ``items`` (content addresses, see
    :func:`describe`): each is bound to the local media row holding those bytes with the
    same description (the sender's own upload first, else the oldest), so that the chat's
    readers may download it.

    A node without such a row (a replica, or the home of a chat whose sender uploaded on
    their own node) makes one with no uploader: its bytes may not be here yet, but the
    readers need a media id now, and the first of them to ask makes the node fetch the
    file from a node that holds it (service.Media), verified against this very address.
    Such a row charges nobody's quota; it lives as long as a readable message carries it."""
    for item in items:
        sha, size, mime, name = _address(item)
        row = conn.execute(
            "SELECT id FROM media WHERE sha256 = ? AND size = ? AND mime = ? AND name = ? "
            "ORDER BY uploader_id IS ? DESC, created, id LIMIT 1",
            (sha, size, mime, name, sender_id),
        ).fetchone()
        if row is not None:
            media_id = row[0]
        else:
            media_id = new_media_id()
            w, h = item.get("width"), item.get("height")
            dims = (w, h) if isinstance(w, int) and isinstance(h, int) else (None, None)
            conn.execute(
                f"INSERT INTO media({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, 0)",
                (media_id, sha, size, mime, name, *dims, time.time()),
            )
        conn.execute(
            "INSERT OR IGNORE INTO media_refs(media_id, chat_id, seq) VALUES (?, ?, ?)",
            (media_id, chat_id, seq),
        )


def unrefer(conn: sqlite3.Connection, chat_id: str, seq: int, items: list[dict[str, Any]]) -> None:
    """A message deleted for everyone carries its attachments no more."""
    for sha in {_address(item)[0] for item in items}:
        conn.execute(
            "DELETE FROM media_refs WHERE media_id IN (SELECT id FROM media WHERE sha256 = ?) "
            "AND chat_id = ? AND seq = ?",
            (sha, chat_id, seq),
        )


def with_local_ids(
    conn: sqlite3.Connection, chat_id: str, seq: int, items: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Attachments as clients see them: each with ``media_id``, this node's handle for the
    file (the row that message ``seq`` is bound to), or None while this node does not hold
    it. Looked up by content address (the media_sha index), then the ref's primary key."""
    out = []
    for item in items:
        media_id = item.get("media_id")  # contents written before addresses held one
        try:
            sha, size, mime, name = _address(item)
        except (KeyError, TypeError, ValueError):
            sha = None
        if sha is not None:
            row = conn.execute(
                "SELECT m.id FROM media m JOIN media_refs r ON r.media_id = m.id "
                "AND r.chat_id = ? AND r.seq = ? WHERE m.sha256 = ? AND m.size = ? "
                "AND m.mime = ? AND m.name = ? LIMIT 1",
                (chat_id, seq, sha, size, mime, name),
            ).fetchone()
            media_id = row[0] if row else media_id
        out.append({**item, "media_id": media_id})
    return out


def sources(conn: sqlite3.Connection, sha256: bytes) -> list[str]:
    """The other nodes that may hold a file, best first: the homes of the chats whose
    messages carry it (every post passed through them), then the nodes of those messages'
    senders (a file uploaded on the sender's own node may never have been fetched by the
    home). Node ids (fingerprints), without this node."""
    homes = conn.execute(
        "SELECT DISTINCT c.home FROM media m JOIN media_refs r ON r.media_id = m.id "
        "JOIN chats c ON c.id = r.chat_id WHERE m.sha256 = ?",
        (sha256,),
    ).fetchall()
    senders = conn.execute(
        "SELECT DISTINCT n.fingerprint FROM media m JOIN media_refs r ON r.media_id = m.id "
        "JOIN events e ON e.chat_id = r.chat_id AND e.seq = r.seq "
        "JOIN users u ON u.id = e.sender_id JOIN nodes n ON n.id = u.node "
        "WHERE m.sha256 = ? AND n.state != 'self'",
        (sha256,),
    ).fetchall()
    me = conn.execute("SELECT fingerprint FROM nodes WHERE state = 'self'").fetchone()
    out: list[str] = []
    for (node_id,) in [*homes, *senders]:
        if node_id and node_id not in out and (me is None or node_id != me[0]):
            out.append(str(node_id))
    return out


def node_may_fetch(conn: sqlite3.Connection, node_row: int, sha256: bytes) -> bool:
    """A peer may read a file's bytes only if one of its users is a current member of a
    chat with a readable (not deleted) message carrying it, sent since they joined: the
    same rule as a local reader's (:func:`may_read`), for any of the peer's users."""
    row = conn.execute(
        "SELECT 1 FROM media m JOIN media_refs r ON r.media_id = m.id "
        "JOIN chat_members cm ON cm.chat_id = r.chat_id AND cm.state = 'member' "
        "JOIN users u ON u.id = cm.user_id AND u.node = ? "
        "JOIN events e ON e.chat_id = r.chat_id AND e.seq = r.seq AND e.deleted = 0 "
        "WHERE m.sha256 = ? AND r.seq >= cm.joined_seq LIMIT 1",
        (node_row, sha256),
    ).fetchone()
    return row is not None


def used_bytes(conn: sqlite3.Connection, user_id: int) -> int:
    """A user's quota use: each distinct blob they uploaded counts once."""
    row = conn.execute(
        "SELECT COALESCE(SUM(size), 0) FROM (SELECT DISTINCT sha256, size FROM media "
        "WHERE uploader_id = ?)",
        (user_id,),
    ).fetchone()
    return int(row[0])


def charge(conn: sqlite3.Connection, user_id: int, sha256: bytes, size: int) -> int:
    """What storing this content adds to the user's quota use: nothing if they already have
    it (each distinct file counts once per user), else its size."""
    row = conn.execute(
        "SELECT 1 FROM media WHERE uploader_id = ? AND sha256 = ? LIMIT 1", (user_id, sha256)
    ).fetchone()
    return 0 if row else size


def quota_use(conn: sqlite3.Connection, user_id: int) -> int:
    """Finished files (each distinct one once) plus the parts of unfinished uploads."""
    row = conn.execute(
        "SELECT COALESCE(SUM(size), 0) FROM media_parts WHERE user_id = ?", (user_id,)
    ).fetchone()
    return used_bytes(conn, user_id) + int(row[0])


def part_budget(
    conn: sqlite3.Connection, user_id: int, upload_id: str, with_quota: bool
) -> tuple[int, int, bool]:
    """What a new part is checked against: the user's quota use (0 unless ``with_quota``),
    how many uploads they have in progress, and whether this upload is one of them."""
    uploads = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(upload_id = ?), 0) FROM media_uploads WHERE user_id = ?",
        (upload_id, user_id),
    ).fetchone()
    use = quota_use(conn, user_id) if with_quota else 0
    return use, int(uploads[0]), bool(uploads[1])


def insert(
    conn: sqlite3.Connection,
    user_id: int,
    sha256: bytes,
    size: int,
    mime: str,
    name: str,
    dims: tuple[int, int] | None,
    opaque: bool = False,
) -> dict[str, Any]:
    """A finished upload's row; ``opaque``: the uploader declared the bytes encrypted on
    the device, so anyone naming their SHA-256 may read them (:func:`find_opaque`)."""
    media_id = new_media_id()
    w, h = dims if dims else (None, None)
    conn.execute(
        f"INSERT INTO media({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (media_id, sha256, size, mime, name, w, h, user_id, time.time(), int(opaque)),
    )
    row = get(conn, media_id)
    return _out(row)


def find_opaque(conn: sqlite3.Connection, sha256: bytes, size: int) -> dict[str, Any] | None:
    """The newest opaque row with this content address, or None: whether an ordinary row
    has it is not this function's business (and must not show in any answer)."""
    row = conn.execute(
        f"SELECT {_COLS} FROM media WHERE sha256 = ? AND size = ? AND opaque = 1 "
        "ORDER BY created DESC LIMIT 1",
        (sha256, size),
    ).fetchone()
    return _out(row) if row is not None else None


def is_opaque(conn: sqlite3.Connection, sha256: bytes) -> bool:
    """True if some row declares these bytes client-encrypted (a peer may then read them by
    hash; the fetching node verifies the size)."""
    row = conn.execute(
        "SELECT 1 FROM media WHERE sha256 = ? AND opaque = 1 LIMIT 1", (sha256,)
    ).fetchone()
    return row is not None


def has_plain(conn: sqlite3.Connection, sha256: bytes) -> bool:
    """True if an ordinary (not opaque) row names these bytes: this node then never makes
    an opaque row for them, or a reader who knows only the hash of a chat's file could get
    it by declaring it a secret one."""
    row = conn.execute(
        "SELECT 1 FROM media WHERE sha256 = ? AND opaque = 0 LIMIT 1", (sha256,)
    ).fetchone()
    return row is not None


def adopt_opaque(conn: sqlite3.Connection, sha256: bytes, size: int) -> dict[str, Any] | None:
    """After fetching an opaque file from another node (its bytes verified and placed):
    the row that serves and keeps it here, made once, with no uploader (it charges nobody's
    quota) and no name, its ``created`` the fetch time (the gc keeps it [secret] ttl from
    then). None if an ordinary row names these bytes (:func:`has_plain`)."""
    found = find_opaque(conn, sha256, size)
    if found is not None:
        return found
    if has_plain(conn, sha256):
        return None
    media_id = new_media_id()
    conn.execute(
        f"INSERT INTO media({_COLS}) VALUES (?, ?, ?, ?, ?, NULL, NULL, NULL, ?, 1)",
        (media_id, sha256, size, OPAQUE_MIME, OPAQUE_NAME, time.time()),
    )
    return _out(get(conn, media_id))


def touch_upload(conn: sqlite3.Connection, user_id: int, upload_id: str) -> float:
    """Register an upload on its first part; returns when it started (for expiry)."""
    conn.execute(
        "INSERT OR IGNORE INTO media_uploads(user_id, upload_id, created) VALUES (?, ?, ?)",
        (user_id, upload_id, time.time()),
    )
    row = conn.execute(
        "SELECT created FROM media_uploads WHERE user_id = ? AND upload_id = ?",
        (user_id, upload_id),
    ).fetchone()
    return float(row[0])


def add_part(conn: sqlite3.Connection, user_id: int, upload_id: str, idx: int, size: int) -> None:
    """Record a part whose bytes are already on disk (fsynced): acknowledged means durable.
    The upload row is (re)made too: a sweep may have expired it while the part was written."""
    touch_upload(conn, user_id, upload_id)
    conn.execute(
        "INSERT OR REPLACE INTO media_parts(user_id, upload_id, idx, size) VALUES (?, ?, ?, ?)",
        (user_id, upload_id, idx, size),
    )


def parts(conn: sqlite3.Connection, user_id: int, upload_id: str) -> dict[int, int]:
    rows = conn.execute(
        "SELECT idx, size FROM media_parts WHERE user_id = ? AND upload_id = ?",
        (user_id, upload_id),
    )
    return {int(r[0]): int(r[1]) for r in rows}


def upload_started(conn: sqlite3.Connection, user_id: int, upload_id: str) -> float | None:
    row = conn.execute(
        "SELECT created FROM media_uploads WHERE user_id = ? AND upload_id = ?",
        (user_id, upload_id),
    ).fetchone()
    return float(row[0]) if row else None


def end_upload(conn: sqlite3.Connection, user_id: int, upload_id: str) -> None:
    conn.execute(
        "DELETE FROM media_uploads WHERE user_id = ? AND upload_id = ?", (user_id, upload_id)
    )


def expired_uploads(conn: sqlite3.Connection, before: float) -> list[tuple[int, str]]:
    rows = conn.execute(
        "SELECT user_id, upload_id FROM media_uploads WHERE created < ?", (before,)
    ).fetchall()
    conn.execute("DELETE FROM media_uploads WHERE created < ?", (before,))
    return [(int(r[0]), str(r[1])) for r in rows]


def drop_unattached(conn: sqlite3.Connection, before: float, opaque_before: float) -> int:
    """Media older than the upload TTL that no readable message carries are garbage: never
    attached (the uploader had upload_ttl to send it), or carried only by messages deleted
    for everyone (no one but the uploader could read it any more). An opaque row (a secret
    chat's file) is carried by no message at all: its key waits in a device's queue up to
    [secret] ttl, so the row lives until ``opaque_before``. Their refs go with them (ON
    DELETE CASCADE); the files follow in the disk sweep once no row names their hash."""
    cur = conn.execute(
        "DELETE FROM media WHERE created < CASE opaque WHEN 1 THEN ? ELSE ? END "
        "AND NOT EXISTS (SELECT 1 FROM media_refs r JOIN events e ON e.chat_id = r.chat_id "
        "AND e.seq = r.seq AND e.deleted = 0 WHERE r.media_id = media.id)",
        (opaque_before, before),
    )
    return cur.rowcount


def live_blobs(conn: sqlite3.Connection) -> set[str]:
    return {bytes(r[0]).hex() for r in conn.execute("SELECT DISTINCT sha256 FROM media")}


def active_uploads(conn: sqlite3.Connection) -> set[tuple[int, str]]:
    return {
        (int(r[0]), str(r[1])) for r in conn.execute("SELECT user_id, upload_id FROM media_uploads")
    }


def stats(conn: sqlite3.Connection) -> dict[str, int]:
    media, blobs, refs = conn.execute(
        "SELECT COUNT(*), COUNT(DISTINCT sha256), (SELECT COUNT(*) FROM media_refs) FROM media"
    ).fetchone()
    uploads = conn.execute("SELECT COUNT(*) FROM media_uploads").fetchone()[0]
    return {"media": media, "blobs": blobs, "refs": refs, "uploads_in_progress": uploads}
