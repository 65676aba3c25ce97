"""Ed25519 identities (nodes and devices) and their printable fingerprints."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from nacl.signing import SigningKey, VerifyKey

FINGERPRINT_BYTES = 20  # 160 bits: short enough to read aloud, far beyond brute force


def fingerprint(public_key: bytes) -> str:
    """The printable id of a public key: base32 of a BLAKE2b digest, lower case, 32 chars."""
    digest = hashlib.blake2b(public_key, digest_size=FINGERPRINT_BYTES).digest()
    return base64.b32encode(digest).decode().lower()


def normalize_fingerprint(text: str) -> str:
    """Accept fingerprints pasted with spaces, dashes or upper case."""
    return "".join(ch for ch in text.lower() if ch.isalnum())


def load_or_create_key(path: Path) -> SigningKey:
    """Load a 32-byte Ed25519 seed, creating it with mode 0600 on first use.

    O_EXCL makes creation race-free; the mode is set at creation so the key is never
    readable by others, not even for a moment.
    """
    try:
        seed = path.read_bytes()
    except FileNotFoundError:
        key = SigningKey.generate()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, bytes(key))
            os.fsync(fd)
        finally:
            os.close(fd)
        return key
    if len(seed) != 32:
        raise ValueError(f"{path}: not a Fedgram key (expected 32 bytes, found {len(seed)})")
    return SigningKey(seed)


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        VerifyKey(public_key).verify(message, signature)
    except Exception:
        return False
    return True
