"""Secret files: encrypted on the device with a one-time key, uploaded as opaque bytes.

The media path (and every node on the way) stores only the ciphertext; the key, the
ciphertext's SHA-256 and the plaintext size travel inside a secret message (``meta``). Why
chunks: files go up to 2 GB, so they are sealed in 64 KiB pieces that can be streamed, each
with XChaCha20-Poly1305 under the file's key. A chunk's nonce is a random 16-byte base plus
its 8-byte index, and its associated data says its index and whether it is the last one, so
chunks cannot be reordered, dropped, duplicated or cut off at a chunk boundary without the
decryption failing. The SHA-256 in ``meta`` lets a receiver refuse a wrong download before
decrypting anything.

Format: ``b"FGF\\x01" + base(16) + chunk_0 + .. + chunk_n`` where every chunk but the last
seals exactly CHUNK plaintext bytes (CHUNK + 16 bytes on disk) and the last seals 0..CHUNK
bytes (an empty file is one empty final chunk).
"""

from __future__ import annotations

import hashlib
import hmac
import io
from typing import IO, Any

import nacl.bindings
import nacl.exceptions
import nacl.utils

from .errors import Tampered

MAGIC = b"FGF\x01"
CHUNK = 64 * 1024
"""Plaintext bytes per chunk."""
TAG = 16
_AD_PREFIX = b"fedgram-file-v1\x00"
HEADER = len(MAGIC) + 16


def _ad(index: int, final: bool) -> bytes:
    return _AD_PREFIX + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


def _nonce(base: bytes, index: int) -> bytes:
    return base + index.to_bytes(8, "big")


def _read_full(src: IO[bytes], n: int) -> bytes:
    """Up to ``n`` bytes, reading again after short reads (pipes, sockets) until EOF."""
    parts: list[bytes] = []
    left = n
    while left > 0:
        b = src.read(left)
        if not b:
            break
        parts.append(b)
        left -= len(b)
    return b"".join(parts)


def encrypt_stream(src: IO[bytes], dst: IO[bytes]) -> dict[str, Any]:
    """Encrypt ``src`` to ``dst`` under a fresh key; returns ``meta`` {key, sha256, size}.

    Reads one chunk ahead so the last chunk is known when it is sealed.
    """
    key = nacl.utils.random(32)
    base = nacl.utils.random(16)
    digest = hashlib.sha256()

    def out(b: bytes) -> None:
        digest.update(b)
        dst.write(b)

    out(MAGIC + base)
    size = 0
    index = 0
    cur = _read_full(src, CHUNK)
    while True:
        nxt = _read_full(src, CHUNK) if len(cur) == CHUNK else b""
        final = not nxt
        out(
            nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
                cur, _ad(index, final), _nonce(base, index), key
            )
        )
        size += len(cur)
        index += 1
        if final:
            break
        cur = nxt
    return {"key": key, "sha256": digest.hexdigest(), "size": size}


def _check_meta(meta: dict[str, Any]) -> tuple[bytes, str, int]:
    try:
        key, sha, size = meta["key"], meta["sha256"], meta["size"]
    except (KeyError, TypeError) as e:
        raise Tampered("file meta lacks key, sha256 or size") from e
    if not (isinstance(key, bytes) and len(key) == 32):
        raise Tampered("file key must be 32 bytes")
    if not (isinstance(sha, str) and len(sha) == 64):
        raise Tampered("file sha256 must be 64 hex digits")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise Tampered("file size must be a non-negative integer")
    return key, sha.lower(), size


def decrypt_stream(src: IO[bytes], dst: IO[bytes], meta: dict[str, Any]) -> int:
    """Decrypt ``src`` into ``dst``; returns the plaintext size; ``Tampered`` on any fault.

    Each chunk is authenticated before it is written, but truncation, a wrong digest or a
    wrong size are only known at the end: on ``Tampered`` the caller must discard ``dst``.
    """
    key, sha, size = _check_meta(meta)
    digest = hashlib.sha256()
    head = _read_full(src, HEADER)
    digest.update(head)
    if len(head) != HEADER or head[: len(MAGIC)] != MAGIC:
        raise Tampered("not an encrypted Fedgram file")
    base = head[len(MAGIC) :]
    written = 0
    index = 0
    cur = _read_full(src, CHUNK + TAG)
    while True:
        digest.update(cur)
        nxt = _read_full(src, CHUNK + TAG) if len(cur) == CHUNK + TAG else b""
        final = not nxt
        try:
            plain = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                cur, _ad(index, final), _nonce(base, index), key
            )
        except (nacl.exceptions.CryptoError, ValueError, TypeError) as e:
            raise Tampered(f"file chunk {index} does not authenticate (altered or cut)") from e
        written += len(plain)
        if written > size:
            raise Tampered("the file is longer than its meta says")
        dst.write(plain)
        index += 1
        if final:
            break
        cur = nxt
    if not hmac.compare_digest(digest.hexdigest(), sha):
        raise Tampered("the file's SHA-256 differs from its meta")
    if written != size:
        raise Tampered("the file's size differs from its meta")
    return written


def encrypt_file(data: bytes) -> tuple[bytes, dict[str, Any]]:
    """``(ciphertext, {"key": 32 bytes, "sha256": hex of ciphertext, "size": len(data)})``."""
    dst = io.BytesIO()
    meta = encrypt_stream(io.BytesIO(data), dst)
    return dst.getvalue(), meta


def decrypt_file(ciphertext: bytes, meta: dict[str, Any]) -> bytes:
    """The plaintext of :func:`encrypt_file`'s output; ``Tampered`` if anything is off.

    The digest is checked first, so a wrong or altered download is refused before any
    decryption.
    """
    _key, sha, _size = _check_meta(meta)
    if not hmac.compare_digest(hashlib.sha256(ciphertext).hexdigest(), sha):
        raise Tampered("the file's SHA-256 differs from its meta")
    dst = io.BytesIO()
    decrypt_stream(io.BytesIO(ciphertext), dst, meta)
    return dst.getvalue()


__all__ = ["CHUNK", "decrypt_file", "decrypt_stream", "encrypt_file", "encrypt_stream"]
