"""Per-direction AEAD sealing of frames after the handshake.

ChaCha20-Poly1305 (IETF) with the nonce taken from a counter that both sides keep: the counter
is never sent, so a replayed, dropped, reordered or tampered frame fails authentication, and
the session is closed (the counters can no longer agree).  Keys are per session and per
direction, so a counter nonce never repeats under one key.
"""

from __future__ import annotations

from nacl import bindings
from nacl.exceptions import CryptoError

_ZERO4 = b"\x00\x00\x00\x00"
_encrypt = bindings.crypto_aead_chacha20poly1305_ietf_encrypt
_decrypt = bindings.crypto_aead_chacha20poly1305_ietf_decrypt


class SealError(Exception):
    """The frame did not authenticate under the expected key and counter."""


class Sealer:
    __slots__ = ("_counter", "_key")

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._counter = 0

    def seal(self, plaintext: bytes) -> bytes:
        nonce = _ZERO4 + self._counter.to_bytes(8, "little")
        self._counter += 1
        return bytes(_encrypt(plaintext, None, nonce, self._key))


class Opener:
    __slots__ = ("_counter", "_key")

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._counter = 0

    def open(self, sealed: bytes) -> bytes:
        nonce = _ZERO4 + self._counter.to_bytes(8, "little")
        try:
            plain = bytes(_decrypt(sealed, None, nonce, self._key))
        except (CryptoError, ValueError, TypeError) as e:
            raise SealError("frame failed authentication") from e
        self._counter += 1
        return plain
