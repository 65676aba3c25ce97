"""Prekeys: the X25519 keys a device publishes so others can start a chat while it is away.

A device publishes one *signed prekey* (rotated now and then) and a batch of *one-time
prekeys*. The signed prekey is signed by the Ed25519 device key over
``b"fedgram-spk\\x00" + id.to_bytes(8, "big") + key`` (docs/secret-chats.md §2), so a node
serving the bundle cannot substitute its own key without the device key: the domain prefix
keeps this signature from being mistaken for any other the device key makes, and the id is
signed so a node cannot relabel an old key as a new one. One-time prekeys are unsigned: a
node that withholds or swaps them only removes the optional fourth DH (a swapped one makes
the first envelope fail to open on the device, it never lets the node read it).
"""

from __future__ import annotations

from typing import Any

import nacl.bindings
import nacl.exceptions
import nacl.utils
from nacl.signing import SigningKey, VerifyKey

from .errors import KeysInvalid

SPK_CONTEXT = b"fedgram-spk\x00"
"""Domain separation prefix of the signed-prekey signature (contract, §2)."""

MAX_KEY_ID = 2**63 - 1
"""Prekey ids are non-negative and fit 8 bytes (signed 64-bit in the node's database)."""


def x25519_keypair() -> tuple[bytes, bytes]:
    """A fresh random X25519 key pair ``(private, public)``."""
    private = nacl.utils.random(32)
    return private, nacl.bindings.crypto_scalarmult_base(private)


def spk_message(key_id: int, key: bytes) -> bytes:
    """The exact bytes the device key signs for a signed prekey."""
    return SPK_CONTEXT + key_id.to_bytes(8, "big") + key


def _check_id(key_id: object) -> int:
    if isinstance(key_id, bool) or not isinstance(key_id, int) or not 0 <= key_id <= MAX_KEY_ID:
        raise KeysInvalid(f"prekey id must be an integer in 0..2**63-1, not {key_id!r}")
    return key_id


def make_signed_prekey(device_key: SigningKey, key_id: int) -> tuple[bytes, dict[str, Any]]:
    """A new signed prekey: ``(private32, {"id", "key", "sig"})``; publish the bundle only."""
    _check_id(key_id)
    private, public = x25519_keypair()
    sig = device_key.sign(spk_message(key_id, public)).signature
    return private, {"id": key_id, "key": public, "sig": sig}


def make_one_time(start_id: int, n: int) -> tuple[dict[int, bytes], list[dict[str, Any]]]:
    """``n`` one-time prekeys with ids ``start_id ..``: ``({id: private}, [{"id", "key"}])``.

    The device keeps the privates until one is used by a first envelope, then deletes it:
    that deletion is what makes the fourth DH protect a chat's first messages even against
    a later theft of the device's keys.
    """
    _check_id(start_id)
    if n < 0:
        raise ValueError("n must be >= 0")
    _check_id(start_id + max(n - 1, 0))
    privates: dict[int, bytes] = {}
    bundles: list[dict[str, Any]] = []
    for key_id in range(start_id, start_id + n):
        private, public = x25519_keypair()
        privates[key_id] = private
        bundles.append({"id": key_id, "key": public})
    return privates, bundles


def verify_bundle(device_pub: bytes, spk: dict[str, Any]) -> None:
    """Check a signed prekey against the device key it claims; raise ``KeysInvalid`` if not.

    Both the node (at ``secret.publishKeys``) and the initiating device (before any key
    agreement) call this: the node to refuse garbage early, the device because it trusts
    only the device key, never the node that served the bundle.
    """
    if not isinstance(device_pub, bytes) or len(device_pub) != 32:
        raise KeysInvalid("device key must be 32 bytes")
    if not isinstance(spk, dict):
        raise KeysInvalid("signed prekey must be a map {id, key, sig}")
    key_id = _check_id(spk.get("id"))
    key, sig = spk.get("key"), spk.get("sig")
    if not isinstance(key, bytes) or len(key) != 32:
        raise KeysInvalid("signed prekey key must be 32 bytes")
    if not isinstance(sig, bytes) or len(sig) != 64:
        raise KeysInvalid("signed prekey signature must be 64 bytes")
    try:
        VerifyKey(device_pub).verify(spk_message(key_id, key), sig)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError) as e:
        raise KeysInvalid("signed prekey signature does not verify with the device key") from e


def check_one_time(otk: dict[str, Any]) -> tuple[int, bytes]:
    """A one-time prekey bundle's ``(id, key)``, or ``KeysInvalid`` if it is malformed."""
    if not isinstance(otk, dict):
        raise KeysInvalid("one-time prekey must be a map {id, key}")
    key_id = _check_id(otk.get("id"))
    key = otk.get("key")
    if not isinstance(key, bytes) or len(key) != 32:
        raise KeysInvalid("one-time prekey key must be 32 bytes")
    return key_id, key


__all__ = [
    "SPK_CONTEXT",
    "check_one_time",
    "make_one_time",
    "make_signed_prekey",
    "spk_message",
    "verify_bundle",
    "x25519_keypair",
]
