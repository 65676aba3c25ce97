"""The TTL sweeper: wakes when the oldest secret item expires and has it swept.

Why a loop that sleeps until the next ``expires`` instead of a fixed interval: a queue item
must go (and both devices hear of it) when its TTL runs out, not up to an interval later,
and a node with nothing queued should not wake at all but every ``IDLE_CHECK`` seconds. A
send that queues something expiring before the planned wake-up nudges it (:meth:`soon`),
so a short ``[secret] ttl`` (tests) is honoured to within a scheduler tick.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import trio

from .. import log

IDLE_CHECK = 60.0  # seconds between sweeps when nothing is due (revocation backstop too)
RETRY_AFTER_FAILURE = 5.0
# a sweep runs this long after the first expiry it is for, so that a burst of messages
# (sent within it) expires in one sweep and is reported in one notice with its count
SLACK = 0.25  # a failed sweep (disk full...) is retried after this

_log = log.get("secret")


class Sweeper:
    """Owned by the secret service; :meth:`run` is one of the node's background tasks."""

    def __init__(
        self,
        next_expiry: Callable[[], Awaitable[float | None]],
        sweep: Callable[[float], Awaitable[None]],
    ) -> None:
        self._next_expiry = next_expiry
        self._sweep = sweep
        self._wake = trio.Event()
        self._planned = float("inf")  # wall-clock time of the next planned sweep
        self.sweeps = 0  # finished sweeps (tests wait on it)

    def soon(self, expires: float) -> None:
        """Something now expires at ``expires``: wake earlier than planned if need be."""
        if expires + SLACK < self._planned:
            self._planned = expires + SLACK
            self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                nxt = await self._next_expiry()
            except Exception:
                _log.exception("secret sweep: cannot read the next expiry")
                nxt = time.time() + RETRY_AFTER_FAILURE
            now = time.time()
            due = now + IDLE_CHECK if nxt is None else min(nxt + SLACK, now + IDLE_CHECK)
            self._planned = due
            with trio.move_on_after(max(0.0, due - now)):
                await self._wake.wait()
            self._wake = trio.Event()
            now = time.time()
            if now < self._planned:
                continue  # nudged by a send: re-plan with the new earliest expiry
            self._planned = float("inf")
            try:
                await self._sweep(now)
            except Exception:
                _log.exception("secret sweep failed; retrying")
                await trio.sleep(RETRY_AFTER_FAILURE)
            self.sweeps += 1
