"""Ed25519 identities (nodes and devices) and their printable fingerprints."""

from __future__ import annotations

import base64
import hashlib

from nacl.signing import VerifyKey

FINGERPRINT_BYTES = 20  # 160 bits: short enough to read aloud, far beyond brute force


def fingerprint(public_key: bytes) -> str:
    """The printable id of a public key: base32 of a BLAKE2b digest, lower case, 32 chars."""
    digest = hashlib.blake2b(public_key, digest_size=FINGERPRINT_BYTES).digest()
    return base64.b32encode(digest).decode().lower()


def normalize_fingerprint(text: str) -> str:
    """Accept fingerprints pasted with spaces, dashes or upper case."""
    return "".join(ch for ch in text.lower() if ch.isalnum())


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        VerifyKey(public_key).verify(message, signature)
    except Exception:
        return False
    return True
