"""Signed, hash-chained chat events: the unit that federation will ship between nodes.

An event is a canonical-CBOR map ``{v, chat, seq, kind, sender, ts, body, rid, prev}``. Its
``hash`` is BLAKE2b-256 of those exact bytes (``raw``), ``prev`` is the hash of the event
before it in the same chat (32 zero bytes before seq 1), and ``sig`` is the home node's
Ed25519 signature over ``hash``. Because raw bytes are kept as signed, any node holding a copy
can prove to another that the log is the home node's and that nothing was inserted, dropped or
changed: :func:`verify_chain` checks exactly that.

Edits and deletes are later events that name an earlier ``seq``; the raw message is never
rewritten (the derived "current state" lives beside it in the database).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import cbor2
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from ..protocol.codec import DecodeError, decode

FORMAT_VERSION = 1
GENESIS = bytes(32)

# Kinds of event a chat log holds; "message" is the only one that carries user content.
MESSAGE = "message"
KINDS = (
    "create",
    MESSAGE,
    "edit",
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
) -> Sealed:
    """Build, hash and sign one event (runs in the storage writer thread: it is cheap)."""
    raw = cbor2.dumps(
        {
            "v": FORMAT_VERSION,
            "chat": chat,
            "seq": seq,
            "kind": kind,
            "sender": sender,
            "ts": ts,
            "body": body,
            "rid": random_id,
            "prev": prev,
        },
        canonical=True,
    )
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


def verify_chain(
    home_key: VerifyKey, chat: str, rows: Iterable[tuple[int, bytes, bytes, bytes]]
) -> int:
    """Check a whole log given as ``(seq, raw, hash, sig)`` in seq order; returns the count.

    Checks: seqs are 1, 2, 3, ... with no gap; each raw decodes, names this chat and its seq;
    its hash is the hash of its raw bytes; it points at the previous hash; the home node
    signed it."""
    prev = GENESIS
    n = 0
    for seq, raw, h, sig in rows:
        n += 1
        if seq != n:
            raise ChainError(f"seq {n} missing (found {seq})")
        if event_hash(raw) != h:
            raise ChainError(f"seq {seq}: hash does not match the event bytes")
        try:
            ev = open_event(raw)
        except DecodeError as e:
            raise ChainError(f"seq {seq}: undecodable ({e})") from None
        if ev.get("chat") != chat or ev.get("seq") != seq:
            raise ChainError(f"seq {seq}: event names chat/seq {ev.get('chat')}/{ev.get('seq')}")
        if ev.get("prev") != prev:
            raise ChainError(f"seq {seq}: prev hash does not chain to seq {seq - 1}")
        try:
            home_key.verify(h, sig)
        except BadSignatureError:
            raise ChainError(f"seq {seq}: signature does not verify") from None
        prev = h
    return n
