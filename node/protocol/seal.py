"""Per-direction AEAD sealing of frames after the handshake.

ChaCha20-Poly1305 (IETF) with the nonce taken from a counter that both sides keep: the counter
is never sent, so a replayed, dropped, reordered or tampered frame fails authentication, and
the session is closed (the counters can no longer agree).  Keys are per session and per
direction, so a counter nonce never repeats under one key.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from nacl import bindings
from nacl.exceptions import CryptoError

_TAG = 16
_nonce = struct.Struct("<4xQ").pack  # 4 zero bytes, then the counter (little-endian)


def _public_encrypt(m: bytes, nonce: bytes, key: bytes) -> bytes:
    return bytes(bindings.crypto_aead_chacha20poly1305_ietf_encrypt(m, None, nonce, key))


def _public_decrypt(c: bytes, nonce: bytes, key: bytes) -> bytes:
    return bytes(bindings.crypto_aead_chacha20poly1305_ietf_decrypt(c, None, nonce, key))


def _direct() -> tuple[
    Callable[[bytes, bytes, bytes], bytes], Callable[[bytes, bytes, bytes], bytes]
]:
    """The same libsodium calls through PyNaCl's cffi module without the argument checks of
    ``nacl.bindings`` (which we already guarantee: 32-byte key, 12-byte nonce): every frame
    pays them twice, and they were 2.8 us of a 100 us ping round trip (measured; direct is
    1.1 us). ``nacl._sodium`` is PyNaCl's private module, so the public binding stays the
    fallback if it ever moves."""
    from nacl._sodium import ffi, lib

    enc_fn = lib.crypto_aead_chacha20poly1305_ietf_encrypt
    dec_fn = lib.crypto_aead_chacha20poly1305_ietf_decrypt
    null = ffi.NULL
    # libsodium writes every byte of the output: zero-filling it first (ffi.new does) is a
    # wasted pass over each ~1 MiB media frame
    new = ffi.new_allocator(should_clear_after_alloc=False)

    # The length out-parameters may be NULL (libsodium then does not report them): the
    # output's length is known, and two cffi allocations fewer halved a seal (4.1 -> 1.9 us
    # for a 250-byte push, measured: a node seals one per member per push round)
    def encrypt(m: bytes, nonce: bytes, key: bytes) -> bytes:
        out = new("unsigned char[]", len(m) + _TAG)
        enc_fn(out, null, m, len(m), null, 0, null, nonce, key)
        sealed: bytes = ffi.buffer(out)[:]
        return sealed

    def decrypt(c: bytes, nonce: bytes, key: bytes) -> bytes:
        if len(c) < _TAG:
            raise ValueError("frame shorter than its tag")
        out = new("unsigned char[]", len(c) - _TAG)
        if dec_fn(out, null, null, c, len(c), null, 0, nonce, key) != 0:
            raise CryptoError("decryption failed")
        plain: bytes = ffi.buffer(out)[:]
        return plain

    return encrypt, decrypt


try:
    _encrypt, _decrypt = _direct()
except (ImportError, AttributeError):  # pragma: no cover - only if PyNaCl reorganises
    _encrypt, _decrypt = _public_encrypt, _public_decrypt


class SealError(Exception):
    """The frame did not authenticate under the expected key and counter."""


class Sealer:
    __slots__ = ("_counter", "_key")

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._counter = 0

    def seal(self, plaintext: bytes) -> bytes:
        nonce = _nonce(self._counter)
        self._counter += 1
        return _encrypt(plaintext, nonce, self._key)


class Opener:
    __slots__ = ("_counter", "_key")

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._counter = 0

    def open(self, sealed: bytes) -> bytes:
        nonce = _nonce(self._counter)
        try:
            plain = _decrypt(sealed, nonce, self._key)
        except (CryptoError, ValueError, TypeError) as e:
            raise SealError("frame failed authentication") from e
        self._counter += 1
        return plain
