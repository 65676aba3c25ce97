"""Secret chats on the device: prekeys, sessions (X3DH + Double Ratchet) and file keys.

Pure crypto, no I/O: the SDK (``chats.py``) stores what these return and moves envelopes
through the node's ``secret.*`` methods. See docs/secret-chats.md §5 and §7.
"""

from __future__ import annotations

from .errors import (
    KeysInvalid,
    OutOfWindow,
    Replayed,
    SecretError,
    StateInvalid,
    Tampered,
    TooLarge,
    UnknownPrekey,
)

__all__ = [
    "KeysInvalid",
    "OutOfWindow",
    "Replayed",
    "SecretError",
    "StateInvalid",
    "Tampered",
    "TooLarge",
    "UnknownPrekey",
]
