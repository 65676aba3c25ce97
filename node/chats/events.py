"""Signed, hash-chained chat events: the unit that federation will ship between nodes.

An event is a canonical-CBOR map ``{v, chat, seq, kind, sender, ts, body, rid, prev}`` plus,
for an event that carries user content (a message, an edit), ``content_hash``. Its ``hash``
is BLAKE2b-256 of those exact bytes (``raw``), ``prev`` is the hash of the event before it in
the same chat (32 zero bytes before seq 1), and ``sig`` is the home node's Ed25519 signature
over ``hash``. Because raw bytes are kept as signed, any node holding a copy can prove to
another that the log is the home node's and that nothing was inserted, dropped or changed:
:func:`verify_chain` checks exactly that.

**Content is committed to, not signed in.** What a user wrote or attached (text, media, a
forwarded message's origin) is NOT in ``raw``. It is a separate *content* record, canonical
CBOR ``{nonce, body}`` with a fresh random 16-byte ``nonce``, and ``raw`` holds only
``content_hash = BLAKE2b-256(content, person="fedgram-content")``. So content can be erased
(delete for everyone; the text an edit replaced) on every node that holds it while ``raw``,
the chain and the signatures stay intact and verifiable, as Matrix redactions keep event
hashes. When the content is present, a verifier checks it against ``content_hash``; when it
was erased, the log still verifies and shows that *something* was said, by whom and when.

The nonce is what makes erasure real: without it, ``content_hash`` of a short text ("yes",
"ok", a PIN, a phone number) could be confirmed by anyone holding the log by hashing guesses.
With 128 random bits hashed in, and the nonce erased together with the content, the hash that
stays says nothing about what the content was.

Federation ships an event as ``{raw, hash, sig, content}`` where ``content`` is the content
record's bytes, or ``None`` when this event's content was erased (or it never had any: then
``raw`` has no ``content_hash``). A replica verifies the chain and signature from ``raw``
alone, and the content, when present, against ``content_hash``. An ``edit`` event's content
is the message's whole new content and tells every holder to erase the content it replaces
(the original's, or the previous edit's); a ``delete`` event tells every holder to erase the
target message's content and that of all its edits.

**The format is frozen** (version 2): this is what federation ships, so a change is a new
``FORMAT_VERSION``. Addresses are users' canonical addresses; ``sender`` is None for an
event of the node itself. ``body`` (signed, stays) and ``content`` (erasable) per kind, the
one declared list :data:`KINDS` (:func:`verify_next`, ``log.sequence`` and ``log.apply``
refuse any other):

=========  ====================================================  ==========================
kind       body                                                  content
=========  ====================================================  ==========================
create     kind (private|group|channel), title, about,           --
           members? [address] (the creator is the sender)
message    reply_to? seq; ``rid`` is the sender's random_id      text?, fwd? {chat, seq,
                                                                 sender, ts}, media? [item]
edit       target seq                                            the message's whole new
                                                                 content
delete     target seq                                            --
pin        target seq                                            --
unpin      target seq                                            --
title      title                                                 --
about      about                                                 --
join       user (the sender, by invite)                          --
add        users [address]                                       --
leave      user                                                  --
remove     user                                                  --
ban        user (member or not)                                  --
unban      user                                                  --
role       user, role (owner|admin|member); a new owner's        --
           sender becomes admin; sender None: the node's heir
=========  ====================================================  ==========================

A media ``item`` names the bytes by content address, never by a node's row id:
``{sha256 (hex), size, mime, name, kind, width?, height?}``; any node can fetch the file
from one that holds it and check it against ``sha256`` and ``size``.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import cbor2
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from ..protocol.codec import DecodeError, decode

FORMAT_VERSION = 2  # 2: user content moved out of raw, behind content_hash
GENESIS = bytes(32)
NONCE_BYTES = 16
# BLAKE2b personalisation: a content hash can never be mistaken for an event hash
CONTENT_PERSON = b"fedgram-content"

# Kinds of event a chat log holds; "message" and "edit" are the ones that carry user content.
MESSAGE = "message"
EDIT = "edit"
KINDS = (
    "create",
    MESSAGE,
    EDIT,
    "delete",
    "pin",
    "unpin",
    "title",
    "about",
    "join",
    "leave",
    "add",
    "remove",
    "ban",
    "unban",
    "role",
)


@dataclass(frozen=True)
class Sealed:
    """An event as stored and shipped: the signed bytes and their proof."""

    raw: bytes
    hash: bytes
    sig: bytes


def event_hash(raw: bytes) -> bytes:
    return hashlib.blake2b(raw, digest_size=32).digest()


def content_hash(content: bytes) -> bytes:
    return hashlib.blake2b(content, digest_size=32, person=CONTENT_PERSON).digest()


def seal_content(body: dict[str, Any]) -> tuple[bytes, bytes]:
    """A content record for ``body`` with a fresh nonce: ``(content bytes, content_hash)``."""
    content = cbor2.dumps({"nonce": secrets.token_bytes(NONCE_BYTES), "body": body}, canonical=True)
    return content, content_hash(content)


def open_content(content: bytes) -> dict[str, Any]:
    """The body of a content record (hardened decode: a peer's bytes once federation lands)."""
    obj = decode(content, max_depth=24)
    if not isinstance(obj, dict) or set(obj) != {"nonce", "body"}:
        raise DecodeError("content is not a {nonce, body} map")
    nonce, body = obj["nonce"], obj["body"]
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES or not isinstance(body, dict):
        raise DecodeError("content has a bad nonce or body")
    return body


def seal_event(
    key: SigningKey,
    *,
    chat: str,
    seq: int,
    kind: str,
    sender: str | None,
    ts: float,
    body: dict[str, Any],
    random_id: int | None,
    prev: bytes,
    content_hash: bytes | None = None,
) -> Sealed:
    """Build, hash and sign one event (runs in the storage writer thread: it is cheap)."""
    ev: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "chat": chat,
        "seq": seq,
        "kind": kind,
        "sender": sender,
        "ts": ts,
        "body": body,
        "rid": random_id,
        "prev": prev,
    }
    if content_hash is not None:
        ev["content_hash"] = content_hash
    raw = cbor2.dumps(ev, canonical=True)
    h = event_hash(raw)
    return Sealed(raw, h, key.sign(h).signature)


def open_event(raw: bytes) -> dict[str, Any]:
    """Decode stored raw bytes (our own, or a peer's once federation lands: hardened decode)."""
    obj = decode(raw, max_depth=24)
    if not isinstance(obj, dict):
        raise DecodeError("event is not a map")
    return obj


class ChainError(Exception):
    """The log does not verify; the message says at which seq and why."""


def verify_next(
    prev_hash: bytes,
    sealed: Sealed,
    home_key: VerifyKey,
    content: bytes | None = None,
    *,
    chat: str | None = None,
    seq: int | None = None,
    signature: bool = True,
) -> dict[str, Any]:
    """Check ONE event that arrives after the event whose hash is ``prev_hash`` (GENESIS
    before seq 1): the hash is the hash of its raw bytes, raw decodes and is of this format
    version, its kind is one of :data:`KINDS`, it chains to ``prev_hash``, the home node
    signed it, and ``content`` (if present) matches its ``content_hash`` and decodes.
    ``chat``/``seq``, when given, must be what the event names (a replica knows which
    chat it follows and which seq comes next). Returns the decoded event.

    This is what a replica runs on each event as it arrives, before :func:`log.apply`; a
    tampered, reordered, dropped or foreign-signed event fails here."""
    where = f"seq {seq}" if seq is not None else "event"
    if event_hash(sealed.raw) != sealed.hash:
        raise ChainError(f"{where}: hash does not match the event bytes")
    try:
        ev = open_event(sealed.raw)
    except DecodeError as e:
        raise ChainError(f"{where}: undecodable ({e})") from None
    if ev.get("v") != FORMAT_VERSION:
        raise ChainError(f"{where}: unknown event format {ev.get('v')!r}")
    if (chat is not None and ev.get("chat") != chat) or (seq is not None and ev.get("seq") != seq):
        raise ChainError(f"{where}: event names chat/seq {ev.get('chat')}/{ev.get('seq')}")
    if ev.get("kind") not in KINDS:
        raise ChainError(f"{where}: unknown event kind {ev.get('kind')!r}")
    if ev.get("prev") != prev_hash:
        raise ChainError(f"{where}: prev hash does not chain to the event before it")
    if signature:
        try:
            home_key.verify(sealed.hash, sealed.sig)
        except BadSignatureError:
            raise ChainError(f"{where}: signature does not verify") from None
    committed = ev.get("content_hash")
    if committed is not None and (not isinstance(committed, bytes) or len(committed) != 32):
        raise ChainError(f"{where}: malformed content_hash")
    if content is not None:
        if committed is None:
            raise ChainError(f"{where}: content present but the event commits to none")
        if content_hash(content) != committed:
            raise ChainError(f"{where}: content does not match the signed content_hash")
        try:
            open_content(content)
        except DecodeError as e:
            raise ChainError(f"{where}: undecodable content ({e})") from None
    return ev


def verify_batch(
    prev_hash: bytes,
    batch: list[tuple[Sealed, bytes | None]],
    home_key: VerifyKey,
    *,
    chat: str,
    first_seq: int,
) -> list[dict[str, Any]]:
    """Check a run of consecutive events that follows ``prev_hash``: every event as
    :func:`verify_next` does, but the home's signature only on the LAST one. Each event's
    hash covers its ``prev``, so a valid signature on the last hash vouches for the whole
    run: one Ed25519 verification per batch instead of one per event (what makes a
    replica's catch-up fast). Returns the decoded events."""
    out: list[dict[str, Any]] = []
    for i, (sealed, content) in enumerate(batch):
        last = i == len(batch) - 1
        out.append(
            verify_next(
                prev_hash,
                sealed,
                home_key,
                content,
                chat=chat,
                seq=first_seq + i,
                signature=last,
            )
        )
        prev_hash = sealed.hash
    return out


def verify_chain(
    home_key: VerifyKey,
    chat: str,
    rows: Iterable[tuple[int, bytes, bytes, bytes, bytes | None]],
) -> int:
    """Check a whole log given as ``(seq, raw, hash, sig, content)`` in seq order; returns
    the count. ``content`` is the content record, or None if erased or never there.

    Seqs must be 1, 2, 3, ... with no gap, and each event must pass :func:`verify_next`
    after the one before it (content that was erased is fine: the event still commits to
    it)."""
    prev = GENESIS
    n = 0
    for seq, raw, h, sig, content in rows:
        n += 1
        if seq != n:
            raise ChainError(f"seq {n} missing (found {seq})")
        verify_next(prev, Sealed(raw, h, sig), home_key, content, chat=chat, seq=seq)
        prev = h
    return n
