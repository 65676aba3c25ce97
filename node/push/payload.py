"""The push payload: small JSON, sealed to the device's X25519 key (PyNaCl ``SealedBox``).

Why sealed: the POST crosses a push distributor (a UnifiedPush server, ntfy, a webhook
relay) that should learn nothing but timing and size. A sealed box needs only the device's
public key, so the node holds nothing that could open a payload afterwards, and the device
opens it with its private key alone (``fedgram client push open``).

Fields (version 1): ``v``, ``kind`` ("message", "secret" or "test"), ``count`` (how many new
since the last push of this chat), ``ts`` (the newest one's time); for "message" also
``chat`` (its id), ``chat_title`` (groups and channels), ``from`` (the newest one's sender,
name@node) and, only when the user allows previews, ``preview`` (the newest message's first
characters). "secret" carries nothing else: no chat, no sender, no content.
"""

from __future__ import annotations

import json
from typing import Any

from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

VERSION = 1
BODY_MAX = 4096  # bytes on the wire: what UnifiedPush guarantees to carry
SEAL_OVERHEAD = 48  # an ephemeral X25519 key (32) and the MAC (16)
PREVIEW_CHARS = 100
TITLE_CHARS = 100
KINDS = ("message", "secret", "test")


class PayloadError(Exception):
    """A payload that does not open with this key, or is not a push payload."""


def check_key(key: bytes) -> bool:
    """Whether ``key`` is an X25519 public key a payload can be sealed to (32 bytes, not a
    low-order point, which libsodium refuses)."""
    if len(key) != 32:
        return False
    try:
        SealedBox(PublicKey(key)).encrypt(b"x")
    except (CryptoError, ValueError, TypeError):
        return False
    return True


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def build(
    kind: str,
    count: int,
    ts: float,
    chat: str | None = None,
    chat_title: str | None = None,
    sender: str | None = None,
    preview: str | None = None,
) -> dict[str, Any]:
    """The payload's fields; a "secret" one never carries chat, sender or content whatever
    the caller passes."""
    out: dict[str, Any] = {"v": VERSION, "kind": kind, "count": count, "ts": round(ts, 3)}
    if kind == "secret":
        return out
    if chat is not None:
        out["chat"] = chat
    if chat_title:
        out["chat_title"] = _clip(chat_title, TITLE_CHARS)
    if sender is not None:
        out["from"] = sender
    if preview is not None:
        out["preview"] = _clip(preview, PREVIEW_CHARS)
    return out


def seal(fields: dict[str, Any], key: bytes) -> bytes:
    """The POST body: the JSON sealed to ``key``, at most BODY_MAX bytes (the preview, then
    the title, give way if a long address makes it too big)."""
    fields = dict(fields)
    for drop in (None, "preview", "chat_title", "from"):
        if drop is not None:
            fields.pop(drop, None)
        plain = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()
        if len(plain) + SEAL_OVERHEAD <= BODY_MAX:
            return bytes(SealedBox(PublicKey(key)).encrypt(plain))
    raise ValueError("push payload too big")  # only chat ids of kilobytes could get here


def open_sealed(body: bytes, private_key: bytes) -> dict[str, Any]:
    """What a device does with a push body: open it with its private key and check it."""
    try:
        plain = SealedBox(PrivateKey(private_key)).decrypt(body)
    except (CryptoError, ValueError, TypeError) as e:
        raise PayloadError(
            "this payload does not open with this key (not for this device, or damaged)"
        ) from e
    try:
        fields = json.loads(plain)
    except ValueError as e:
        raise PayloadError("the payload opened but is not JSON") from e
    if not isinstance(fields, dict) or fields.get("kind") not in KINDS:
        raise PayloadError("the payload opened but is not a Fedgram push")
    return fields
