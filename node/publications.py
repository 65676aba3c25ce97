"""Committed changes, published in commit order to whoever subscribes.

The node's one "committed events" stream (node/interfaces.py's CommittedEvents): the
updates hub subscribes to push to online sessions; federation subscribes to replicate.
Services only :meth:`Publications.commit` their write jobs and never learn who listens.
"""

from __future__ import annotations

import itertools
import sqlite3

import trio

from . import log
from .interfaces import Caller, Effects, Job, Storage, Subscriber, T

STALL_SECONDS = 2.0
"""How long a missing ticket may hold back the ones after it. Only a bug can leave a ticket
unreleased (every write path releases its ticket, failed or not); if one does, later pushes
go out after this delay and members fill the hole with getDifference, as after any gap."""

_log = log.get("publications")
Ready = tuple[Effects, "Caller | None"] | None


class Publications:
    """Releases committed changes to the subscribers in commit order.

    Why: the tasks whose jobs one group commit carried wake in scheduler order, not in the
    order their jobs ran, so if each pushed its own event, one chat's events went out of seq
    order (measured: ~1,800 of 5,000 pushes in the reference workload's concurrent phase
    arrived after a higher seq, ~450 looked like gaps to the listener).

    How: a write job takes a *ticket* as its last step (in the storage writer thread; jobs
    run one at a time there, in commit order, so tickets are in commit order). After the
    commit its task hands the ticket back with what the change caused (a failed job hands
    back ``None``), and the tickets are published strictly one after the other. A task
    never waits for this: it releases and goes on to send its reply.

    Publishing happens in a task of its own (:meth:`run`), not in the releasing task: the
    tasks of one commit wake together, each releases its ticket and writes its reply to its
    socket before it first yields, and the publisher runs after them. So the sender's
    acknowledgement is still not queued behind the fan-out, yet a slow socket (whose reply
    send blocks) holds back nobody's pushes. Without the task running (an offline admin
    command), release publishes at once."""

    def __init__(self) -> None:
        self._tickets = itertools.count(1)
        self._next = 1  # the ticket to publish next
        self._ready: dict[int, Ready] = {}  # released, waiting for ``_next``
        self._waiting_since = 0.0  # since when ``_ready`` waits for this ``_next``
        self._wake = trio.Event()
        self._running = False
        self._subscribers: list[Subscriber] = []
        self.skipped = 0  # tickets given up on after STALL_SECONDS (a bug if ever non-zero)

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    async def commit(self, db: Storage, job: Job[T], origin: Caller | None = None) -> T:
        """Run a change as one write job; once committed, publish what it caused (its
        :class:`Effects`) in commit order. The caller goes on without waiting for that.

        The wait for the commit is shielded: a session closing meanwhile must still learn
        the outcome and release the job's ticket, or every later publication would wait."""
        fx = Effects()

        def run(conn: sqlite3.Connection) -> T:
            fx.reset()
            result = job(conn, fx)
            fx.ticket = next(self._tickets)  # last: a job that raised takes none
            return result

        try:
            with trio.CancelScope(shield=True):
                result = await db.write(run)
        except BaseException:
            if fx.ticket is not None:  # the job ran but its transaction did not commit
                self._release(fx.ticket, None)
            raise
        assert fx.ticket is not None
        self._release(fx.ticket, (fx, origin))
        return result

    def _release(self, ticket: int, ready: Ready) -> None:
        if ticket < self._next:  # given up on earlier: late is better than never
            self._publish(ready)
            return
        if not self._ready:
            self._waiting_since = trio.current_time()
        self._ready[ticket] = ready
        if self._running:
            self._wake.set()
        else:
            self._drain()

    def _drain(self) -> None:
        advanced = False
        while self._next in self._ready:
            ready = self._ready.pop(self._next)
            self._next += 1
            advanced = True
            self._publish(ready)
        if advanced:
            self._waiting_since = trio.current_time()

    def _publish(self, ready: Ready) -> None:
        """One change to every subscriber; a failing one (a bug) is logged and stops
        neither the others nor later changes."""
        if ready is None:
            return
        fx, origin = ready
        for subscriber in self._subscribers:
            try:
                subscriber(fx, origin)
            except Exception:
                _log.exception("a subscriber failed on a committed change")

    async def run(self) -> None:
        """The publisher task (in the node's nursery)."""
        self._running = True
        try:
            while True:
                if self._ready:
                    deadline = self._waiting_since + STALL_SECONDS
                    with trio.move_on_at(deadline):
                        await self._wake.wait()
                    if self._next not in self._ready and trio.current_time() >= deadline:
                        _log.warning(
                            "publication ticket never released; publishing past it",
                            extra={"kv": {"ticket": self._next}},
                        )
                        self.skipped += 1
                        self._next += 1
                        self._waiting_since = trio.current_time()
                else:
                    await self._wake.wait()
                self._wake = trio.Event()
                self._drain()
        finally:
            self._running = False
            self._drain()
