"""Account passwords (the optional second factor), kept only as argon2id hashes.

argon2id is memory-hard on purpose (64 MiB, ~0.1 s), so it runs in a worker thread and at
most two at a time: a burst of sign-ins must neither stall the event loop nor eat RAM.
"""

from __future__ import annotations

import nacl.pwhash
import trio
from nacl.exceptions import InvalidkeyError

_LIMITER = trio.CapacityLimiter(2)
_OPS = nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE
_MEM = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE


async def hash_password(password: str) -> bytes:
    data = password.encode()
    return await trio.to_thread.run_sync(
        lambda: bytes(nacl.pwhash.argon2id.str(data, opslimit=_OPS, memlimit=_MEM)),
        limiter=_LIMITER,
    )


async def check_password(stored: bytes, password: str) -> bool:
    data = password.encode()

    def verify() -> bool:
        try:
            return bool(nacl.pwhash.verify(stored, data))
        except InvalidkeyError:
            return False

    return await trio.to_thread.run_sync(verify, limiter=_LIMITER)
