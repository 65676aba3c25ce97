"""SQLite for a trio process: one group-committing writer, a small pool of readers.

Why this shape:

* aiosqlite only works on asyncio (under trio it dies on its first ``await``), so stdlib
  ``sqlite3`` is driven through threads. A thread hop costs 50-150 µs, so a hop per
  statement would be slow; instead a whole transaction runs per hop.
* SQLite allows one writer at a time, and with ``synchronous=FULL`` every COMMIT is an
  fsync. So every write is a *job* (a plain function of the connection) sent to ONE writer
  task, which takes everything queued (up to ``batch_max``), runs it in ONE transaction in
  ONE thread hop and wakes each caller only after COMMIT returned. Acknowledged therefore
  means durable, and the fsync is paid once per batch instead of once per write: under load
  batches grow by themselves, because jobs pile up while the previous batch is on disk.
* Each job runs inside its own SAVEPOINT, so a job that raises is undone alone and only its
  caller sees the exception; its batch-mates commit as if it had never run.
* A job may leave statements for the end of its batch (:func:`at_batch_end`): they run once
  every job has, in the order they were left, and only those of jobs that succeeded. The
  full-text index is written that way: FTS5 flushes its pending terms to a new segment at
  every savepoint RELEASE, which cost more than the insert itself (measured, issue 17).
* WAL lets readers run beside the writer, so reads use separate read-only connections, one
  thread hop per call, each call one snapshot.

The writer is ONE dedicated OS thread (a queue in, ``TrioToken.run_sync_soon`` out)
rather than ``trio.to_thread.run_sync`` with a ``CapacityLimiter(1)``. Measured on the 2-vCPU
dev VM (alternating runs): an empty hop costs 99-122 µs against 134-157 µs, which gives one
sequential writer 2,650-2,900 instead of 2,370-2,530 commits/s and 10 concurrent writers
3-8% more; at 100 writers, where batches are large, they tie. It also means every use of the
writer connection (open, migrations, batches, close) happens on one thread, and the writer
can never be starved by other ``to_thread`` users filling trio's default 40-thread limiter.
Jobs go straight into that thread's queue and the thread takes its next batch from it the
moment a COMMIT returns, without waiting for the event loop to hand it over: measured under
10 concurrent senders (issue 17), the loop-side hand-over left the writer idle a quarter of
the time (0.6 ms p50 between batches) and added a task wake-up each way to every write.
Reads use ``to_thread`` with a private limiter: they are spread over several connections.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import trio

from .migrations import MIGRATIONS, Migration, Schema, check_sequence

T = TypeVar("T")
R = TypeVar("R")

_log = logging.getLogger("fedgram.storage")
BUSY_TIMEOUT_MS = 10_000
"""How long a connection waits for a lock held by another process (e.g. an admin tool)."""

# The writer's own transaction-control statements carry a comment so that their text differs
# from anything a job would write: the authorizer below is consulted only when a statement is
# compiled, and sqlite3 caches compiled statements by their exact text, so a job's plain
# "COMMIT" must never hit our cached, already-authorized one.
_SAVEPOINT_NAME = "fedgram_writer_job"
_BEGIN = "BEGIN IMMEDIATE /* fedgram writer */"
_COMMIT = "COMMIT /* fedgram writer */"
_ROLLBACK = "ROLLBACK /* fedgram writer */"
_SAVEPOINT = f"SAVEPOINT {_SAVEPOINT_NAME} /* fedgram writer */"
_RELEASE = f"RELEASE {_SAVEPOINT_NAME} /* fedgram writer */"
_ROLLBACK_TO = f"ROLLBACK TO {_SAVEPOINT_NAME} /* fedgram writer */"


Deferred = list[tuple[str, list[tuple[Any, ...]]]]


class _Tail(threading.local):
    """In the writer thread, while a job runs: the statements it left for the batch's end."""

    job: Deferred | None = None


_tail = _Tail()


def at_batch_end(conn: sqlite3.Connection, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """Inside a write job: run ``sql`` for each of ``rows`` after every job of this batch
    has run, just before its COMMIT, if this job succeeds (its savepoint rolled back, they
    are dropped with it). Statements left this way run in the order they were left, so an
    insert left by one job and a delete of the same row left by a later one keep their
    order; anything that must see the effect at once must not be left. Outside a job (a
    migration, a tool's own connection) they run at once."""
    pending = _tail.job
    if pending is None:
        conn.executemany(sql, rows)
    else:
        pending.append((sql, list(rows)))  # runs of one statement join in _run_deferred


def _run_deferred(conn: sqlite3.Connection, deferred: Deferred) -> None:
    """Run what the batch's jobs left, in order; one executemany per run of the same
    statement (the sends of a batch index their texts in one call)."""
    i = 0
    while i < len(deferred):
        sql, rows = deferred[i]
        i += 1
        if i < len(deferred) and deferred[i][0] == sql:
            rows = list(rows)
            while i < len(deferred) and deferred[i][0] == sql:
                rows.extend(deferred[i][1])
                i += 1
        conn.executemany(sql, rows)


class StorageError(Exception):
    """The database could not be opened or migrated, is closed, or a commit failed.

    Distinct from the ``sqlite3`` errors a job raises itself, which reach its caller
    unchanged, so callers can tell "my SQL was wrong" from "the store is unavailable"."""


class _Job(Generic[T]):
    """A queued write: the function, and where the writer thread leaves its outcome."""

    __slots__ = ("deferred", "done", "error", "fn", "result")

    def __init__(self, fn: Callable[[sqlite3.Connection], T]) -> None:
        self.fn = fn
        self.result: T | None = None
        self.error: BaseException | None = None
        self.deferred: Deferred = []  # left for the batch's end (at_batch_end)
        # Set on the trio thread only, after COMMIT returned (or the job definitely failed).
        self.done = trio.Event()


class Database:
    """An open database. Create it with ``async with Database.open(path) as db``."""

    path: Path

    def __init__(self, path: Path, readers: int, batch_max: int, queue_size: int) -> None:
        self.path = path
        self._batch_max = batch_max
        self._readers = readers
        self._writer: sqlite3.Connection | None = None
        self._pool: list[sqlite3.Connection] = []
        self._idle: list[sqlite3.Connection] = []
        self._read_slots = trio.Semaphore(readers)
        self._read_threads = trio.CapacityLimiter(readers)
        self._thread = _WriterThread(f"fedgram-sqlite-writer:{path.name}", self)
        self._queue_size = queue_size
        self._room = trio.lowlevel.ParkingLot()  # writers waiting for queue space
        self._closed = False
        self._in_job = False  # read by the authorizer, in the writer thread
        self._stats = {"commits": 0, "batches": 0, "jobs": 0, "failed_jobs": 0, "max_batch": 0}

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        migrations: Sequence[Migration] = MIGRATIONS,
        schemas: Sequence[Schema] = (),
        readers: int = 4,
        batch_max: int = 256,
        queue_size: int = 4096,
    ) -> AbstractAsyncContextManager[Database]:
        """``async with Database.open(path) as db:`` opens (creating the file, not its
        folder), migrates, and runs the writer task until the block ends.

        Leaving the block stops accepting writes, commits every job already queued, then
        closes all connections. Cancellation of the block does not drop queued jobs: the
        writer is shielded and stops only once the queue is empty, so every caller gets
        either its result or an error, never silence."""
        if readers < 1 or batch_max < 1 or queue_size < 1:
            raise ValueError("readers, batch_max and queue_size must be >= 1")
        names = [sc.name for sc in schemas]
        if len(set(names)) != len(names):
            raise ValueError(f"two schemas with one name: {names}")
        return cls._open(
            Path(path), list(migrations), list(schemas), readers, batch_max, queue_size
        )

    @classmethod
    @asynccontextmanager
    async def _open(
        cls,
        path: Path,
        migrations: list[Migration],
        schemas: list[Schema],
        readers: int,
        batch_max: int,
        queue_size: int,
    ) -> AsyncIterator[Database]:
        db = cls(path, readers, batch_max, queue_size)
        # Opening and migrating touch the disk (and may wait on another process's lock), so
        # they run in a thread like everything else; a failed open leaves nothing open.
        db._thread.start()
        try:
            await db._thread.call(db._connect_all, migrations, schemas)
        except BaseException:
            with trio.CancelScope(shield=True):
                await db._thread.stop()
            raise
        try:
            yield db
        finally:
            db._closed = True
            db._room.unpark_all()  # writers still waiting for space: the store is closing
            with trio.CancelScope(shield=True):
                # queued after every job already queued: they all finish first
                await db._close_all()

    def _connect_all(self, migrations: list[Migration], schemas: list[Schema]) -> None:
        if not self.path.parent.is_dir():
            raise StorageError(f"{self.path}: folder {self.path.parent} does not exist")
        try:
            check_sequence(migrations)
        except ValueError as e:
            raise StorageError(f"{self.path}: {e}") from None
        opened: list[sqlite3.Connection] = []
        try:
            writer = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            opened.append(writer)
            _configure_writer(writer, self.path)
            _migrate(writer, migrations, self.path)
            for schema in schemas:
                _migrate(writer, list(schema.migrations), self.path, schema.name)
            # Read-only at the file level: a read function cannot write, even by mistake.
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            for _ in range(self._readers):
                conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
                opened.append(conn)
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                self._pool.append(conn)
        except BaseException as e:
            for conn in opened:
                conn.close()
            self._pool.clear()
            if isinstance(e, sqlite3.Error):
                raise StorageError(f"{self.path}: cannot open database: {e}") from e
            raise
        writer.set_authorizer(self._authorize)
        self._writer = writer
        self._idle = list(self._pool)

    async def _close_all(self) -> None:
        # Wait for reads in flight to hand their connection back: closing a connection that
        # another thread is using would fail that read with a confusing error.
        for _ in range(self._readers):
            await self._read_slots.acquire()
        readers = list(self._pool)
        self._pool.clear()
        self._idle.clear()
        # In the writer thread, after every job queued before it. The writer closes last:
        # the last connection to close checkpoints the WAL into the main file and removes
        # it, which is worth waiting for (thread, not event loop).
        try:
            await self._thread.call(self._close_connections, readers)
        finally:
            await self._thread.stop()

    def _close_connections(self, readers: list[sqlite3.Connection]) -> None:
        writer, self._writer = self._writer, None
        _close_each([*readers, *([writer] if writer else [])])

    # ------------------------------------------------------------------ public API

    async def write(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``job(conn)`` in the writer thread inside the next group transaction and
        return its result once that transaction has COMMITted (so: durable).

        ``job`` runs in a thread while the one write lock is held, so it should only do
        SQL and return plain data (no cursors, no I/O, no waiting). It must not control the
        transaction itself: BEGIN/COMMIT/ROLLBACK, ``conn.commit()`` and ``executescript``
        are refused with ``sqlite3.DatabaseError`` ("not authorized"); nested SAVEPOINTs are
        fine. If it raises, only its own changes are rolled back and the exception is
        raised here. Waits (backpressure) while the queue is full.

        Cancelling the caller while it waits for queue space means the job never runs.
        Cancelling it once the job is queued or running does not stop the job: it may still
        commit, only the result is dropped. Callers that must know should make the job
        idempotent or check afterwards."""
        while self._thread.queued() >= self._queue_size and not self._closed:
            self._thread.room_wanted = True
            await self._room.park()
        if self._closed:
            raise StorageError(f"{self.path}: database is closed")
        if self._thread.crashed:
            raise StorageError(f"{self.path}: the database writer stopped")
        j = _Job(job)
        self._thread.submit(j)
        await j.done.wait()
        if j.error is not None:
            error, j.error = j.error, None  # don't keep the traceback alive in the job
            raise error
        return cast(T, j.result)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on a read-only connection in a thread and return its result.

        ``fn`` runs inside one read transaction, so several SELECTs see the same committed
        snapshot; it never sees uncommitted work of the writer. Cancellation waits for
        ``fn`` to finish (the connection is in use until then)."""
        if self._closed:
            raise StorageError(f"{self.path}: database is closed")
        async with self._read_slots:
            if self._closed:
                raise StorageError(f"{self.path}: database is closed")
            conn = self._idle.pop()
            try:
                return await trio.to_thread.run_sync(
                    _read_txn, conn, fn, limiter=self._read_threads
                )
            finally:
                self._idle.append(conn)

    def size_bytes(self) -> int:
        """Bytes on disk: the main file plus the WAL, which can hold much of the recent
        data between checkpoints."""
        total = 0
        for name in (str(self.path), f"{self.path}-wal"):
            with suppress(FileNotFoundError):
                total += os.stat(name).st_size
        return total

    @property
    def stats(self) -> dict[str, int]:
        """Counters since open: ``commits``, ``batches`` (thread hops), ``jobs`` (finished
        write jobs), ``failed_jobs``, ``max_batch`` and ``queued`` (jobs waiting now)."""
        return {**self._stats, "queued": self._thread.queued()}

    # ------------------------------------------------------------------ the writer

    def _room_changed(self) -> None:
        """Trio side: the thread took jobs from its queue; writers waiting for space go on."""
        self._room.unpark_all()

    def _finished(self, batch: list[_Job[Any]], commits: int, crash: BaseException | None) -> None:
        """Trio side, once a batch is over: wake its callers, count it, let writers on."""
        if isinstance(crash, _Stopped):  # queued behind a crash: never run
            _fail(batch, f"{self.path}: {crash}", None)
        elif crash is not None:
            # A bug in the batch code itself: whether anything committed is unknown, so no
            # job may be reported as a success, and no later write is tried (the thread
            # marked itself crashed before handing this batch back).
            _fail(
                [j for j in batch if j.error is None],
                f"{self.path}: the database writer crashed; outcome of this write unknown",
                None,
            )
            _log.error("database writer crashed", exc_info=crash)
        for j in batch:
            j.done.set()
        failed = sum(j.error is not None for j in batch)
        s = self._stats
        s["commits"] += commits
        s["batches"] += 1
        s["jobs"] += len(batch)
        s["failed_jobs"] += failed
        s["max_batch"] = max(s["max_batch"], len(batch))
        self._room.unpark_all()

    def _run_batch_sync(self, batch: list[_Job[Any]]) -> int:
        """Writer thread: run ``batch`` and commit it; return how many COMMITs succeeded.

        Normally one transaction. If SQLite itself aborts the transaction under a job (it
        does on some I/O or disk-full errors), the jobs already done in it are failed too,
        since their work is gone, and the rest of the batch continues in a new one."""
        commits = 0
        start = 0
        while start < len(batch):
            start, ok = self._run_txn(batch, start)
            commits += ok
        return commits

    def _run_txn(self, batch: list[_Job[Any]], start: int) -> tuple[int, bool]:
        conn = self._writer
        assert conn is not None
        try:
            conn.execute(_BEGIN)
        except sqlite3.Error as e:
            _fail(batch[start:], f"{self.path}: cannot start a write transaction: {e}", e)
            return len(batch), False
        if start == len(batch) - 1:
            return len(batch), self._run_alone(conn, batch[start])
        done: list[_Job[Any]] = []  # succeeded so far; their work is in this transaction
        deferred: Deferred = []
        for i in range(start, len(batch)):
            j = batch[i]
            try:
                conn.execute(_SAVEPOINT)
                self._call_job(conn, j)
                if j.error is None:
                    conn.execute(_RELEASE)
                    done.append(j)
                    deferred.extend(j.deferred)
                else:
                    conn.execute(_ROLLBACK_TO)
                    conn.execute(_RELEASE)
            except sqlite3.Error as e:
                # Our own savepoint handling failed, i.e. the transaction is not what it
                # should be (SQLite rolled it back): nothing done in it will commit.
                _rollback_quietly(conn)
                msg = f"{self.path}: write transaction aborted: {e}"
                _fail([*done, *([j] if j.error is None else [])], msg, e)
                return i + 1, False
        try:
            _run_deferred(conn, deferred)
            conn.execute(_COMMIT)
        except sqlite3.Error as e:
            _rollback_quietly(conn)
            _fail(done, f"{self.path}: commit failed: {e}", e)
            return len(batch), False
        return len(batch), True

    def _call_job(self, conn: sqlite3.Connection, j: _Job[Any]) -> None:
        """Run one job, keeping what it returns or raises; the authorizer refuses
        transaction control while it runs."""
        self._in_job = True
        _tail.job = j.deferred
        try:
            j.result = j.fn(conn)
        except BaseException as e:
            j.error = e
        finally:
            self._in_job = False
            _tail.job = None

    def _run_alone(self, conn: sqlite3.Connection, j: _Job[Any]) -> bool:
        """A transaction of one job needs no savepoint: if the job fails, the whole
        transaction is its work and is rolled back. Two statements fewer per write when
        writes do not overlap (each statement here is a GIL round trip with the event
        loop: issue 17)."""
        self._call_job(conn, j)
        if j.error is not None:
            _rollback_quietly(conn)
            return False
        try:
            _run_deferred(conn, j.deferred)
            conn.execute(_COMMIT)
        except sqlite3.Error as e:
            _rollback_quietly(conn)
            _fail([j], f"{self.path}: commit failed: {e}", e)
            return False
        return True

    def _authorize(self, action: int, arg1: str | None, arg2: str | None, *_: str | None) -> int:
        # A job that ended or restarted the group transaction would commit its batch-mates
        # early or silently drop them, so transaction control is refused while a job runs.
        if self._in_job and (
            action == sqlite3.SQLITE_TRANSACTION
            or (action == sqlite3.SQLITE_SAVEPOINT and (arg2 or "").lower() == _SAVEPOINT_NAME)
        ):
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK


def _configure_writer(conn: sqlite3.Connection, path: Path) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StorageError(f"{path}: cannot switch to WAL mode (got {mode!r})")
    # FULL, not NORMAL: in WAL mode NORMAL may lose the last commits on power loss, and a
    # write is acknowledged as durable the moment COMMIT returns.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA secure_delete = ON")  # erased content is zeroed, also in free pages
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if conn.execute("PRAGMA foreign_keys").fetchone() != (1,):
        raise StorageError(f"{path}: this SQLite build does not enforce foreign keys")


_VERSIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_versions("
    "name TEXT PRIMARY KEY, version INTEGER NOT NULL CHECK (version >= 0))"
)


def _version(conn: sqlite3.Connection, schema: str | None) -> int:
    """The node's schema version (``user_version``), or a registered schema's."""
    if schema is None:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    if not conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_versions'"
    ).fetchone():
        return 0
    row = conn.execute("SELECT version FROM schema_versions WHERE name = ?", (schema,)).fetchone()
    return int(row[0]) if row else 0


def _set_version(conn: sqlite3.Connection, schema: str | None, version: int) -> None:
    if schema is None:
        conn.execute(f"PRAGMA user_version = {version:d}")
        return
    conn.execute(_VERSIONS_TABLE)
    conn.execute(
        "INSERT INTO schema_versions(name, version) VALUES (?, ?) "
        "ON CONFLICT(name) DO UPDATE SET version = excluded.version",
        (schema, version),
    )


def _migrate(
    conn: sqlite3.Connection, migrations: list[Migration], path: Path, schema: str | None = None
) -> None:
    """Bring a schema (the node's, or the registered ``schema``) to ``len(migrations)``,
    one transaction per migration.

    Each version is re-read inside its write transaction, so two processes opening the
    same file at once cannot both apply the same step."""
    what = "database schema" if schema is None else f"schema {schema!r}"
    latest = len(migrations)
    current = _version(conn, schema)
    if current > latest:
        raise StorageError(
            f"{path}: {what} version {current} is newer than this Fedgram knows "
            f"(up to {latest}); refusing to open it. Upgrade Fedgram or restore a backup."
        )
    for m in migrations[current:]:
        if m.rebuilds:  # a no-op inside a transaction: switched before BEGIN
            conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("BEGIN IMMEDIATE")
        try:
            if _version(conn, schema) >= m.version:
                conn.execute("COMMIT")
                continue
            for stmt in m.statements():
                conn.execute(stmt)
            if m.rebuilds and conn.execute("PRAGMA foreign_key_check").fetchone() is not None:
                raise sqlite3.IntegrityError("foreign key violations after the rebuild")
            _set_version(conn, schema, m.version)
            conn.execute("COMMIT")
        except BaseException as e:
            _rollback_quietly(conn)
            if isinstance(e, sqlite3.Error):
                label = (
                    f"{m.version} ({m.name})"
                    if schema is None
                    else f"{schema} {m.version} ({m.name})"
                )
                raise StorageError(
                    f"{path}: migration {label} failed and was rolled back: {e}"
                ) from e
            raise
        finally:
            if m.rebuilds:
                conn.execute("PRAGMA foreign_keys = ON")


def _read_txn(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    conn.execute("BEGIN")
    try:
        return fn(conn)
    finally:
        _rollback_quietly(conn)  # read-only: ending it either way just drops the snapshot


def _rollback_quietly(conn: sqlite3.Connection) -> None:
    # A failure here means the transaction is already gone; the caller is reporting the
    # error that mattered.
    if conn.in_transaction:
        with suppress(sqlite3.Error):
            conn.execute(_ROLLBACK)


def _fail(jobs: list[_Job[Any]], message: str, cause: BaseException | None) -> None:
    # One exception object per job: each is raised in a different task, and raising the
    # same object in several places would splice their tracebacks together.
    for j in jobs:
        err = StorageError(message)
        err.__cause__ = cause
        j.error = err
        j.result = None


def _close_each(conns: list[sqlite3.Connection]) -> None:
    for conn in conns:
        conn.close()


class _WriterThread:
    """One long-lived OS thread that runs the write batches, and the functions the trio
    side hands it (open, migrate, close), one at a time and in the order they came.

    Jobs queued with ``submit`` are batched by the thread itself: it takes everything
    waiting (up to ``batch_max``) the moment it is free. Outcomes go back through the trio
    token: ``Database._finished`` per batch, an event per ``call``."""

    def __init__(self, name: str, db: Database) -> None:
        self._queue: queue.SimpleQueue[_Job[Any] | _Call[Any] | None] = queue.SimpleQueue()
        self._db = db
        # Daemon: if the trio run dies without closing the database, the process can still
        # exit. SQLite's commit is atomic, so stopping the thread anywhere is safe.
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._token: trio.lowlevel.TrioToken | None = None
        # set by a writer waiting for queue space: the thread tells the trio side when it
        # takes jobs (else only when a batch ends); a stale read costs a wake-up, no more
        self.room_wanted = False
        self.crashed = False  # a batch crashed (a bug): later jobs fail without running

    def start(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._thread.start()

    def submit(self, job: _Job[Any]) -> None:
        self._queue.put(job)

    def queued(self) -> int:
        """Jobs (and calls) waiting in the queue, not counting the batch being run."""
        return self._queue.qsize()

    async def call(self, fn: Callable[..., R], *args: Any) -> R:
        """Run ``fn(*args)`` in the thread after everything queued before it. Not
        cancellable: the work cannot be abandoned halfway, since its outcome (a COMMIT)
        must reach the jobs' callers."""
        c: _Call[R] = _Call(fn, args)
        self._queue.put(c)
        with trio.CancelScope(shield=True):
            await c.done.wait()
        if c.error is not None:
            error, c.error = c.error, None
            raise error
        return cast(R, c.result)

    async def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            await trio.to_thread.run_sync(self._thread.join)

    def _main(self) -> None:
        assert self._token is not None
        item = self._queue.get()
        try:
            while item is not None:  # None: stop
                if isinstance(item, _Call):
                    self._run_call(item)
                    item = self._queue.get()
                    continue
                batch: list[_Job[Any]] = [item]
                after: _Call[Any] | _Empty | None = _EMPTY  # where taking stopped, if not empty
                while len(batch) < self._db._batch_max:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if not isinstance(nxt, _Job):
                        after = nxt
                        break
                    batch.append(nxt)
                if self.room_wanted:
                    self.room_wanted = False
                    self._token.run_sync_soon(self._db._room_changed)
                self._run_batch(batch)
                item = self._queue.get() if isinstance(after, _Empty) else after
        except trio.RunFinishedError:
            return  # nobody is left to wake

    def _run_batch(self, batch: list[_Job[Any]]) -> None:
        assert self._token is not None
        commits = 0
        crash: BaseException | None = None
        if self.crashed:
            crash = _Stopped("the database writer stopped")
        else:
            try:
                commits = self._db._run_batch_sync(batch)
            except BaseException as e:  # a bug in the batch code: see Database._finished
                crash = e
                self.crashed = True
        self._token.run_sync_soon(self._db._finished, batch, commits, crash)

    def _run_call(self, c: _Call[Any]) -> None:
        assert self._token is not None
        try:
            c.result = c.fn(*c.args)
        except BaseException as e:
            c.error = e
        self._token.run_sync_soon(c.done.set)


class _Stopped(StorageError):
    """A batch queued behind a crashed one (see Database._finished)."""


class _Empty:
    """Nothing was taken after a batch (distinct from None, which stops the thread)."""


_EMPTY = _Empty()


class _Call(Generic[R]):
    __slots__ = ("args", "done", "error", "fn", "result")

    def __init__(self, fn: Callable[..., R], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.result: R | None = None
        self.error: BaseException | None = None
        self.done = trio.Event()
