"""Ed25519 key files: the node's ``node.key`` and a device's key in a client profile.

File I/O, so it lives outside ``node/protocol`` (which is sans-I/O): the protocol works with
keys, this module keeps them on disk.
"""

from __future__ import annotations

import os
from pathlib import Path

from nacl.signing import SigningKey

SEED_BYTES = 32


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
    if len(seed) != SEED_BYTES:
        raise ValueError(
            f"{path}: not a Fedgram key (expected {SEED_BYTES} bytes, found {len(seed)})"
        )
    return SigningKey(seed)
