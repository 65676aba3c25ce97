"""Coalescing, the bounded send queue, the worker pool and retries of push notifications.

Why this shape:

* **Coalescing** per (endpoint, chat): a burst of messages is one push. Each event pushes
  the pending notification's deadline to ``quiet`` seconds after it (a trailing debounce),
  but never past ``cap`` seconds after the first one, so a chat that never falls quiet is
  still notified. The count says how many arrived. A notification that still waits in
  the queue when the next one of its chat is due takes that one in (the count adds up)
  instead of queueing a second: when the node pushes slower than chats are busy, pushes
  get fewer and bigger, and the queue holds at most one per (endpoint, chat).
* **A bounded queue and a bounded pool**: at most ``workers`` POSTs are in flight, each
  with a ``timeout``; what waits is bounded by ``queue_max`` (beyond it a notification is
  dropped and counted: a push is a hint, the messages themselves wait on the node). So a
  slow or dead endpoint can hold at most one worker for one timeout per attempt, and never
  the node's sends, which only append to an in-memory table here.
* **Retries are scheduled, not slept**: a failed attempt (connection refused, timeout,
  408/429/5xx) goes back into a timer heap with capped exponential backoff and frees its
  worker at once; after ``retries`` retries it is dropped and counted as failed. A 404 or
  410 means the distributor forgot the endpoint: it is unregistered.
* **Structured**: :meth:`Notifier.run` owns its nursery (workers, the scheduler, the HTTP
  client); the node runs it in its own nursery and cancelling that stops everything.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from .. import log
from . import payload
from .http import HttpError, HttpPool
from .store import Endpoint

_log = log.get("push")

HEADERS = {
    "content-type": "application/octet-stream",
    # RFC 8030 (Web Push; UnifiedPush distributors accept it): keep it a day, deliver now
    "ttl": "86400",
    "urgency": "high",
}


@dataclass
class Pending:
    """A notification being coalesced for one endpoint and one chat (or "secret")."""

    endpoint: Endpoint
    kind: str
    chat: str | None
    title: str | None
    sender: str | None
    preview: str | None
    count: int
    ts: float
    first: float  # trio clock of the first event
    due: float = 0.0


@dataclass
class Job:
    """One POST to make (and remake, on a retryable failure)."""

    endpoint_id: int
    url: str
    body: bytes  # b"": sealed by the worker that takes it, from ``pending``
    attempt: int = 0
    key: tuple[int, str] | None = None
    pending: Pending | None = None  # while queued, later events of its chat merge into it


@dataclass
class Stats:
    sent: int = 0
    failed: int = 0  # given up on: retries spent, or an answer that is not worth retrying
    dropped: int = 0  # the queue (or the coalescing table) was full
    unregistered: int = 0  # 404/410: the endpoint was forgotten
    retried: int = 0
    skipped_online: int = 0  # the device came online before its push was due

    def wire(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Outcome:
    """What one POST came to: ``ok``, ``gone`` (404/410), ``retry`` or ``fail``."""

    result: str
    status: int | None = None
    error: str = ""


@dataclass
class Settings:
    quiet: float
    cap: float
    timeout: float
    workers: int
    queue_max: int
    retries: int
    retry_base: float
    retry_max: float
    max_rate: float = 0.0  # POSTs per second at most; 0: no cap


class Notifier:
    def __init__(
        self,
        settings: Settings,
        online: Callable[[int, int], bool],
        unregister: Callable[[int], Awaitable[None]],
    ) -> None:
        self.s = settings
        self._online = online  # (user id, device id) -> has a live session
        self._unregister = unregister  # delete an endpoint 404/410 told us is gone
        self.stats = Stats()
        self._pending: dict[tuple[int, str], Pending] = {}
        self._next_slot = 0.0  # max_rate: when the next POST may start (trio clock)
        self._timers: list[tuple[float, int, tuple[int, str]]] = []  # (due, n, pending key)
        self._retries: list[tuple[float, int, Job]] = []  # (due, n, job)
        self._n = itertools.count()
        self._wake = trio.Event()
        self._send, self._recv = trio.open_memory_channel[Job](settings.queue_max)
        self._gone: set[int] = set()  # endpoints unregistered while work for them waited
        self._waiting: dict[tuple[int, str], Job] = {}  # queued, not yet taken by a worker
        self._client: HttpPool | None = None

    # --- in (on the event loop, never blocking) -------------------------------------------
    def add(
        self,
        endpoint: Endpoint,
        kind: str,
        ts: float,
        count: int = 1,
        chat: str | None = None,
        title: str | None = None,
        sender: str | None = None,
        preview: str | None = None,
    ) -> None:
        """One more event for an endpoint: start or extend its pending notification."""
        key = (endpoint.id, chat if chat is not None else kind)
        now = trio.current_time()
        p = self._pending.get(key)
        if p is None:
            if len(self._pending) >= self.s.queue_max:
                self.stats.dropped += 1
                return
            p = self._pending[key] = Pending(
                endpoint, kind, chat, title, sender, preview, 0, ts, first=now
            )
        p.count += count
        p.ts = max(p.ts, ts)
        p.endpoint = endpoint  # a re-registration's new key
        p.title = title if title is not None else p.title
        p.sender = sender if sender is not None else p.sender
        p.preview = preview if preview is not None else p.preview
        due = min(now + self.s.quiet, p.first + self.s.cap)
        if due != p.due:
            p.due = due
            heapq.heappush(self._timers, (due, next(self._n), key))
            self._wake.set()

    def forget(self, endpoint_id: int) -> None:
        """An endpoint was removed: nothing more goes to it (queued work is skipped)."""
        self._gone.add(endpoint_id)
        for key in [k for k in self._pending if k[0] == endpoint_id]:
            del self._pending[key]
        for key in [k for k in self._waiting if k[0] == endpoint_id]:
            del self._waiting[key]

    def pending(self) -> int:
        return len(self._pending)

    def queued(self) -> int:
        return self._send.statistics().current_buffer_used + len(self._retries)

    # --- the tasks ------------------------------------------------------------------------
    async def run(self) -> None:
        """The scheduler and the worker pool, with one keep-alive pool of connections."""
        pool = HttpPool(per_origin=self.s.workers)
        self._client = pool
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._scheduler)
                for _ in range(self.s.workers):
                    nursery.start_soon(self._worker, pool)
        finally:
            self._client = None
            with trio.CancelScope(shield=True):
                await pool.aclose()

    async def _scheduler(self) -> None:
        """Moves what is due from the timers to the queue: coalesced notifications whose
        window closed, and retries whose backoff is over."""
        while True:
            now = trio.current_time()
            while self._timers and self._timers[0][0] <= now:
                due, _, key = heapq.heappop(self._timers)
                p = self._pending.get(key)
                if p is not None and p.due == due:
                    del self._pending[key]
                    self._flush(p)
            while self._retries and self._retries[0][0] <= now:
                _, _, job = heapq.heappop(self._retries)
                self._enqueue(job)
            nxt = min(
                self._timers[0][0] if self._timers else math.inf,
                self._retries[0][0] if self._retries else math.inf,
            )
            self._wake = trio.Event()
            with trio.move_on_at(nxt):
                await self._wake.wait()

    def _flush(self, p: Pending) -> None:
        try:
            self._flush_one(p)
        except Exception:  # a bug must cost this notification, never the scheduler
            self.stats.failed += 1
            _log.exception("building a push notification failed")

    def _flush_one(self, p: Pending) -> None:
        e = p.endpoint
        if e.id in self._gone:
            return
        if p.kind != "test" and self._online(e.user_id, e.device_id):
            self.stats.skipped_online += 1  # it came back and has the messages already
            return
        key = (e.id, p.chat if p.chat is not None else p.kind)
        waiting = self._waiting.get(key)
        if waiting is not None and waiting.pending is not None:
            # its previous notification still waits for a worker (the node is pushing
            # slower than chats are busy): one push says it all, the queue does not grow
            q = waiting.pending
            q.count += p.count
            q.ts = max(q.ts, p.ts)
            q.endpoint = p.endpoint
            q.title = p.title if p.title is not None else q.title
            q.sender = p.sender if p.sender is not None else q.sender
            q.preview = p.preview if p.preview is not None else q.preview
            return
        job = Job(e.id, e.url, b"", key=key, pending=p)
        if self._enqueue(job):
            self._waiting[key] = job

    def _enqueue(self, job: Job) -> bool:
        if job.endpoint_id in self._gone:
            return False
        try:
            self._send.send_nowait(job)
        except trio.WouldBlock:
            self.stats.dropped += 1
            log.event(_log, "push.dropped", logging.DEBUG, endpoint=job.endpoint_id)
            return False
        return True

    def _seal(self, job: Job) -> bool:
        """Seal a queued notification as it is now (merged events included); False when
        it is no longer to be sent (the device came online meanwhile)."""
        p = job.pending
        assert p is not None
        e = p.endpoint
        if p.kind != "test" and self._online(e.user_id, e.device_id):
            self.stats.skipped_online += 1
            return False
        fields = payload.build(p.kind, p.count, p.ts, p.chat, p.title, p.sender, p.preview)
        job.url, job.body, job.pending = e.url, payload.seal(fields, e.key), None
        return True

    async def _worker(self, client: HttpPool) -> None:
        async for job in self._recv:
            if job.key is not None and self._waiting.get(job.key) is job:
                del self._waiting[job.key]
            if job.endpoint_id in self._gone:
                continue
            if not job.body:
                try:
                    if not self._seal(job):
                        continue
                except Exception:  # a bug costs this notification, never the worker
                    self.stats.failed += 1
                    _log.exception("sealing a push notification failed")
                    continue
            await self._pace()
            out = await self.post(client, job.url, job.body)
            await self._settle(job, out)

    async def _pace(self) -> None:
        """``max_rate``: each POST takes the next free slot, 1/rate apart, and waits for it.
        Taking a slot has no checkpoint, so concurrent workers never share one; jobs that
        wait meanwhile stay queued, where later events of their chat merge into them."""
        if self.s.max_rate <= 0:
            return
        now = trio.current_time()
        slot = max(now, self._next_slot)
        self._next_slot = slot + 1.0 / self.s.max_rate
        if slot > now:
            await trio.sleep_until(slot)

    async def _settle(self, job: Job, out: Outcome) -> None:
        if out.result == "ok":
            self.stats.sent += 1
        elif out.result == "gone":
            await self._gone_endpoint(job.endpoint_id, out)
        elif out.result == "retry" and job.attempt < self.s.retries:
            job.attempt += 1
            self.stats.retried += 1
            wait = min(self.s.retry_base * 2 ** (job.attempt - 1), self.s.retry_max)
            heapq.heappush(self._retries, (trio.current_time() + wait, next(self._n), job))
            self._wake.set()
        else:
            self.stats.failed += 1
            log.event(
                _log,
                "push.failed",
                logging.INFO,
                endpoint=job.endpoint_id,
                attempts=job.attempt + 1,
                status=out.status,
                why=out.error[:200],
            )

    async def _gone_endpoint(self, endpoint_id: int, out: Outcome) -> None:
        if endpoint_id in self._gone:
            return
        self.forget(endpoint_id)
        self.stats.unregistered += 1
        log.event(_log, "push.unregistered", endpoint=endpoint_id, status=out.status)
        try:
            await self._unregister(endpoint_id)
        except Exception:  # the next 404/410 tries again; nothing else depends on it
            _log.exception("unregistering a push endpoint failed")

    async def post(self, client: HttpPool | None, url: str, body: bytes) -> Outcome:
        """One POST, bounded by the timeout; never raises for what the endpoint does."""
        if client is None:  # the notifier is not running (an offline node): a one-off
            one = HttpPool(per_origin=0)
            try:
                return await self.post(one, url, body)
            finally:
                await one.aclose()
        try:
            with trio.fail_after(self.s.timeout):
                status = await client.post(url, body, HEADERS)
        except trio.TooSlowError:
            return Outcome("retry", None, "timeout")
        except (HttpError, OSError) as e:  # refused, reset, DNS, TLS (ssl.SSLError)
            return Outcome("retry", None, f"{type(e).__name__}: {e}")
        except Exception as e:  # anything else is not worth a retry, and costs no worker
            return Outcome("fail", None, f"{type(e).__name__}: {e}")
        if 200 <= status < 300:
            return Outcome("ok", status)
        if status in (404, 410):
            return Outcome("gone", status, f"HTTP {status}")
        if status in (408, 425, 429) or status >= 500:
            return Outcome("retry", status, f"HTTP {status}")
        return Outcome("fail", status, f"HTTP {status}")

    async def test(self, endpoint: Endpoint, ts: float) -> Outcome:
        """``account.testPush``: one "test" notification now, outside the queue, and what
        came of it (a 404/410 unregisters the endpoint as for any push)."""
        body = payload.seal(payload.build("test", 1, ts), endpoint.key)
        out = await self.post(self._client, endpoint.url, body)
        if out.result == "ok":
            self.stats.sent += 1
        elif out.result == "gone":
            await self._gone_endpoint(endpoint.id, out)
        else:
            self.stats.failed += 1
        return out

    def snapshot(self) -> dict[str, Any]:
        return {**self.stats.wire(), "queued": self.queued(), "pending": self.pending()}
