"""Storage engine: group commit, per-job failure isolation, migrations, durability.

Real SQLite files in tmp_path, no mocks. Where a test needs several jobs in ONE batch it
parks the writer thread on a ``threading.Event`` (the "gate" job), queues the jobs, then
opens the gate: everything queued meanwhile is taken as the next batch.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from node.storage import MIGRATIONS, Database, Migration, Schema, StorageError

REPO = Path(__file__).resolve().parent.parent

ROWS = Migration(
    len(MIGRATIONS) + 1,
    "test rows",
    """
    CREATE TABLE rows(id INTEGER PRIMARY KEY, val INTEGER, b BLOB);
    -- deferred on purpose: the one way to make COMMIT itself fail on demand
    CREATE TABLE parent(id INTEGER PRIMARY KEY);
    CREATE TABLE child(
        id INTEGER PRIMARY KEY,
        parent_id INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED
    );
    """,
)
TEST_MIGRATIONS = [*MIGRATIONS, ROWS]


def insert(val: int) -> Callable[[sqlite3.Connection], int]:
    def job(conn: sqlite3.Connection) -> int:
        rowid = conn.execute("INSERT INTO rows(val) VALUES (?)", (val,)).lastrowid
        assert rowid is not None
        return rowid

    return job


def run_sql(sql: str) -> Callable[[sqlite3.Connection], list[object]]:
    return lambda conn: conn.execute(sql).fetchall()


def count(conn: sqlite3.Connection, table: str = "rows") -> int:
    return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def vals(conn: sqlite3.Connection) -> list[int]:
    return [r[0] for r in conn.execute("SELECT val FROM rows ORDER BY val")]


class Gate:
    """A write job that holds the writer thread (and the write lock) until opened."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def job(self, conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO rows(val) VALUES (-1)")
        self.entered.set()
        if not self.opened.wait(10):  # never hang the suite if a test goes wrong
            raise TimeoutError("gate never opened")
        return "gate"

    async def hold(self, db: Database, nursery: trio.Nursery) -> None:
        """Start the gate job and return once the writer thread is parked in it."""
        nursery.start_soon(db.write, self.job)
        while not self.entered.is_set():
            await trio.sleep(0.001)

    def open(self) -> None:
        self.opened.set()


# ------------------------------------------------------------------ group commit


async def test_concurrent_writers_share_commits_and_get_their_own_results(tmp_path: Path) -> None:
    n = 300
    results: dict[int, int] = {}
    async with Database.open(tmp_path / "db.sqlite", migrations=TEST_MIGRATIONS) as db:

        async def writer(i: int) -> None:
            results[i] = await db.write(insert(i))

        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(writer, i)
        stats = db.stats
        by_rowid = dict(await db.read(lambda c: c.execute("SELECT id, val FROM rows").fetchall()))
    assert stats["jobs"] == n and stats["failed_jobs"] == 0
    assert stats["commits"] < n // 2, stats  # really batched
    assert stats["max_batch"] > 1
    assert len(results) == n
    # every caller got the rowid of ITS row
    assert all(by_rowid[rowid] == i for i, rowid in results.items())


async def test_failing_job_fails_alone_and_batch_mates_commit(tmp_path: Path) -> None:
    gate = Gate()
    outcomes: dict[str, object] = {}

    def bad(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO rows(val) VALUES (666)")  # must be rolled back
        raise ValueError("job refused")

    def duplicate(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO rows(val) VALUES (777)")  # must be rolled back
        conn.execute("INSERT INTO rows(id, val) VALUES (1, 1)")  # PK taken by the gate row

    async with Database.open(tmp_path / "db.sqlite", migrations=TEST_MIGRATIONS) as db:

        async def run(name: str, job: Callable[[sqlite3.Connection], object]) -> None:
            try:
                outcomes[name] = await db.write(job)
            except Exception as e:
                outcomes[name] = e

        async with trio.open_nursery() as nursery:
            await gate.hold(db, nursery)
            for name, job in [
                ("a", insert(1)),
                ("bad", bad),
                ("b", insert(2)),
                ("dup", duplicate),
                ("c", insert(3)),
            ]:
                nursery.start_soon(run, name, job)
            await trio.testing.wait_all_tasks_blocked()
            assert db.stats["queued"] == 5
            gate.open()
        stats = db.stats
        rows = await db.read(vals)
    assert isinstance(outcomes["bad"], ValueError) and str(outcomes["bad"]) == "job refused"
    assert isinstance(outcomes["dup"], sqlite3.IntegrityError)
    assert all(isinstance(outcomes[k], int) for k in "abc")
    assert rows == [-1, 1, 2, 3]
    assert stats["max_batch"] == 5 and stats["commits"] == 2 and stats["failed_jobs"] == 2


async def test_failed_commit_fails_every_job_of_the_batch(tmp_path: Path) -> None:
    gate = Gate()
    outcomes: dict[str, object] = {}

    def orphan(conn: sqlite3.Connection) -> None:
        # passes its own statement (FK is deferred) and only fails at COMMIT
        conn.execute("INSERT INTO child(parent_id) VALUES (999)")

    async with Database.open(tmp_path / "db.sqlite", migrations=TEST_MIGRATIONS) as db:

        async def run(name: str, job: Callable[[sqlite3.Connection], object]) -> None:
            try:
                outcomes[name] = await db.write(job)
            except Exception as e:
                outcomes[name] = e

        async with trio.open_nursery() as nursery:
            await gate.hold(db, nursery)
            for name, job in [("a", insert(1)), ("orphan", orphan), ("b", insert(2))]:
                nursery.start_soon(run, name, job)
            await trio.testing.wait_all_tasks_blocked()
            gate.open()
        assert all(isinstance(outcomes[k], StorageError) for k in ("a", "orphan", "b"))
        assert "commit failed" in str(outcomes["a"])
        assert await db.read(vals) == [-1]  # only the gate's own batch committed
        assert await db.read(lambda c: count(c, "child")) == 0
        # the writer carries on
        assert await db.write(insert(5)) > 0
        assert await db.read(vals) == [-1, 5]


async def test_job_may_not_control_the_transaction(tmp_path: Path) -> None:
    async with Database.open(tmp_path / "db.sqlite", migrations=TEST_MIGRATIONS) as db:
        for sql in (
            "COMMIT",
            "ROLLBACK",
            "BEGIN",
            "RELEASE fedgram_writer_job",
            "rollback to FEDGRAM_WRITER_JOB",
        ):
            with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
                await db.write(run_sql(sql))
        with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
            await db.write(lambda c: c.commit())
        with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
            await db.write(lambda c: c.executescript("INSERT INTO rows(val) VALUES (9);"))

        def nested(conn: sqlite3.Connection) -> int:
            conn.execute("SAVEPOINT mine")
            conn.execute("INSERT INTO rows(val) VALUES (10)")
            conn.execute("ROLLBACK TO mine")
            conn.execute("RELEASE mine")
            return insert(11)(conn)

        await db.write(nested)  # savepoints of its own are fine
        assert await db.read(vals) == [11]


# ------------------------------------------------------------------ reads


async def test_reads_see_committed_data_only_and_run_beside_the_writer(tmp_path: Path) -> None:
    gate = Gate()
    async with Database.open(tmp_path / "db.sqlite", migrations=TEST_MIGRATIONS) as db:
        await db.write(insert(1))
        async with trio.open_nursery() as nursery:
            await gate.hold(db, nursery)  # writer is mid-transaction with an uncommitted row
            with trio.fail_after(2):  # a read does not wait for the writer (WAL)
                assert await db.read(vals) == [1]
            gate.open()
        assert await db.read(vals) == [-1, 1]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            await db.read(insert(2))


async def test_many_concurrent_reads_use_the_small_pool(tmp_path: Path) -> None:
    async with Database.open(tmp_path / "db.sqlite", migrations=TEST_MIGRATIONS, readers=2) as db:
        await db.write(insert(7))
        got: list[list[int]] = []

        async def reader() -> None:
            got.append(await db.read(vals))

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(reader)
    assert got == [[7]] * 50


# ------------------------------------------------------------------ lifecycle


async def test_write_and_read_after_close_are_refused(tmp_path: Path) -> None:
    async with Database.open(tmp_path / "db.sqlite", migrations=TEST_MIGRATIONS) as db:
        await db.write(insert(1))
    with pytest.raises(StorageError, match="closed"):
        await db.write(insert(2))
    with pytest.raises(StorageError, match="closed"):
        await db.read(vals)
    assert db.size_bytes() > 0


async def test_exit_commits_jobs_still_queued(tmp_path: Path) -> None:
    gate = Gate()
    results: list[int] = []
    path = tmp_path / "db.sqlite"

    async def writer(db: Database, i: int) -> None:
        await db.write(insert(i))
        results.append(i)

    async with trio.open_nursery() as outer:
        async with Database.open(path, migrations=TEST_MIGRATIONS) as db:
            await gate.hold(db, outer)
            for i in range(10):
                outer.start_soon(writer, db, i)
            await trio.testing.wait_all_tasks_blocked()
            gate.open()
        # the block has exited: all queued jobs committed before the connections closed
        assert sorted(results) == list(range(10))
    async with Database.open(path, migrations=TEST_MIGRATIONS) as db:
        assert await db.read(vals) == [-1, *range(10)]


async def test_cancelled_block_still_commits_jobs_already_queued(tmp_path: Path) -> None:
    gate = Gate()
    results: list[int] = []
    path = tmp_path / "db.sqlite"

    async def writer(db: Database, i: int) -> None:
        await db.write(insert(i))
        results.append(i)

    async with trio.open_nursery() as outer:
        with trio.CancelScope() as scope:
            async with Database.open(path, migrations=TEST_MIGRATIONS) as db:
                await gate.hold(db, outer)
                for i in range(5):
                    outer.start_soon(writer, db, i)
                await trio.testing.wait_all_tasks_blocked()
                gate.open()
                scope.cancel()
                await trio.sleep(10)  # cancelled at once
        assert scope.cancelled_caught
    assert sorted(results) == list(range(5))  # callers outside the scope all got answers
    async with Database.open(path, migrations=TEST_MIGRATIONS) as db:
        assert await db.read(vals) == [-1, *range(5)]


async def test_writers_waiting_for_queue_space_at_close_get_storage_error(tmp_path: Path) -> None:
    gate = Gate()
    outcomes: list[object] = []

    async def writer(db: Database, i: int) -> None:
        try:
            outcomes.append(await db.write(insert(i)))
        except StorageError as e:
            outcomes.append(e)

    async with (
        trio.open_nursery() as outer,
        Database.open(tmp_path / "db.sqlite", migrations=TEST_MIGRATIONS, queue_size=1) as db,
    ):
        await gate.hold(db, outer)
        for i in range(3):  # one fits in the queue, two wait in send()
            outer.start_soon(writer, db, i)
        await trio.testing.wait_all_tasks_blocked()
        gate.open()
    # the queued job committed; the two that never got into the queue never ran
    assert sum(isinstance(o, int) for o in outcomes) == 1
    assert sum(isinstance(o, StorageError) for o in outcomes) == 2


async def test_body_exception_is_not_wrapped(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        async with Database.open(tmp_path / "db.sqlite", migrations=TEST_MIGRATIONS):
            raise KeyError("mine")


async def test_cancelled_caller_does_not_break_the_writer(tmp_path: Path) -> None:
    gate = Gate()
    async with Database.open(tmp_path / "db.sqlite", migrations=TEST_MIGRATIONS) as db:
        async with trio.open_nursery() as nursery:
            await gate.hold(db, nursery)
            with trio.move_on_after(0.05) as scope:
                await db.write(insert(1))  # queued behind the gate, then cancelled
            assert scope.cancelled_caught
            gate.open()
        assert await db.write(insert(2)) > 0
        # documented: a job already queued still runs and may commit
        assert await db.read(vals) == [-1, 1, 2]
        assert db.stats["failed_jobs"] == 0


async def test_full_queue_makes_writers_wait(tmp_path: Path) -> None:
    gate = Gate()
    done: list[int] = []
    async with Database.open(
        tmp_path / "db.sqlite", migrations=TEST_MIGRATIONS, queue_size=2, batch_max=2
    ) as db:

        async def writer(i: int) -> None:
            await db.write(insert(i))
            done.append(i)

        async with trio.open_nursery() as nursery:
            await gate.hold(db, nursery)
            for i in range(6):
                nursery.start_soon(writer, i)
            await trio.testing.wait_all_tasks_blocked()
            assert db.stats["queued"] == 2  # the other 4 wait in send(), not in memory
            assert done == []
            gate.open()
        assert sorted(done) == list(range(6))
        assert db.stats["max_batch"] <= 2


async def test_open_refuses_missing_folder_and_non_database(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        async with Database.open(tmp_path / "nope" / "db.sqlite"):
            pass
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError, match="not a database"):
        async with Database.open(junk):
            pass


async def test_connection_settings(tmp_path: Path) -> None:
    def pragmas(conn: sqlite3.Connection) -> tuple[object, ...]:
        return tuple(
            conn.execute(f"PRAGMA {p}").fetchone()[0]
            for p in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        )

    async with Database.open(tmp_path / "db.sqlite", migrations=TEST_MIGRATIONS) as db:
        assert await db.write(pragmas) == ("wal", 2, 1, 10_000)  # 2 = FULL
        assert (await db.read(pragmas))[0] == "wal"


# ------------------------------------------------------------------ migrations


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


async def test_migrations_apply_once_and_reopen_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    seed = Migration(len(TEST_MIGRATIONS) + 1, "seed", "INSERT INTO meta VALUES ('k', x'01')")
    migrations = [*TEST_MIGRATIONS, seed]
    for _ in range(3):
        async with Database.open(path, migrations=migrations) as db:
            # a second application would have hit meta's PRIMARY KEY
            assert await db.read(lambda c: count(c, "meta")) == 1
    assert user_version(path) == len(migrations)


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    async with Database.open(path, migrations=TEST_MIGRATIONS):
        pass
    with pytest.raises(StorageError, match="newer than this Fedgram knows"):
        async with Database.open(path, migrations=TEST_MIGRATIONS[:-1]):
            pass
    assert user_version(path) == len(TEST_MIGRATIONS)  # untouched


async def test_failed_migration_is_rolled_back_whole(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    v = len(MIGRATIONS) + 1
    broken = Migration(v, "broken", "CREATE TABLE half(x); INSERT INTO missing VALUES (1);")
    with pytest.raises(StorageError, match=rf"migration {v} \(broken\) failed"):
        async with Database.open(path, migrations=[*MIGRATIONS, broken]):
            pass
    assert user_version(path) == len(MIGRATIONS)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name='half'").fetchall() == []
    async with Database.open(path, migrations=TEST_MIGRATIONS) as db:  # fixed code proceeds
        assert await db.read(lambda c: count(c, "rows")) == 0


async def test_misnumbered_migrations_are_refused(tmp_path: Path) -> None:
    gap = Migration(len(MIGRATIONS) + 2, "gap", "CREATE TABLE g(x)")
    with pytest.raises(StorageError, match=r"numbered 1\.\.N"):
        async with Database.open(tmp_path / "db.sqlite", migrations=[*MIGRATIONS, gap]):
            pass


def test_migration_sql_is_split_into_statements() -> None:
    m = Migration(
        1,
        "split",
        """
        -- a comment; with a semicolon
        CREATE TABLE t(x TEXT DEFAULT 'a;b');
        /* block; comment */
        CREATE TRIGGER tr AFTER INSERT ON t BEGIN
            UPDATE t SET x = 'c;d' WHERE rowid = new.rowid;
        END;
        INSERT INTO t VALUES ('no trailing semicolon')
        """,
    )
    stmts = m.statements()
    assert len(stmts) == 3
    assert stmts[1].startswith("/* block; comment */\n        CREATE TRIGGER")
    assert stmts[1].endswith("END;")
    conn = sqlite3.connect(":memory:")
    for s in stmts:
        conn.execute(s)
    assert conn.execute("SELECT x FROM t").fetchall() == [("c;d",)]
    with pytest.raises(ValueError, match="no SQL"):
        Migration(1, "empty", "-- nothing ;")


# ------------------------------------------------------------------ durability

ACKED = Migration(
    len(MIGRATIONS) + 1, "acked", "CREATE TABLE acked(id INTEGER PRIMARY KEY, b BLOB NOT NULL)"
)
CHILD = """
import pathlib
import sys
import trio
sys.path.insert(0, {repo!r})
from tests.test_storage import ACKED
from node.storage import MIGRATIONS, Database

async def main():
    async with Database.open(pathlib.Path({db!r}), migrations=[*MIGRATIONS, ACKED]) as db:
        async def writer(k):
            for i in range(1_000_000):
                rid = k * 1_000_000 + i
                await db.write(lambda c: c.execute(
                    "INSERT INTO acked VALUES (?, ?)", (rid, bytes(200))))
                print(rid, flush=True)  # acknowledged: COMMIT has returned
        async with trio.open_nursery() as n:
            for k in range(20):
                n.start_soon(writer, k)

trio.run(main)
"""


async def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    db_path = tmp_path / "durable.sqlite"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(repo=str(REPO), db=str(db_path)))
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    buf = b""
    killed = False
    with trio.fail_after(30):
        while True:
            chunk = await proc.stdout.receive_some(65536)
            if not chunk:
                break
            buf += chunk
            if not killed and buf.count(b"\n") >= 2000:
                os.kill(proc.pid, signal.SIGKILL)  # mid-burst: 20 writers are still going
                killed = True
        await proc.wait()
    assert killed, (proc.returncode, buf[-300:])
    assert proc.returncode == -signal.SIGKILL
    lines = buf.split(b"\n")
    acked = {int(x) for x in lines[:-1]}  # a torn last line was never fully printed
    # The child's files are left exactly as the kill left them (WAL not checkpointed).
    async with Database.open(db_path, migrations=[*MIGRATIONS, ACKED]) as db:
        present = set(await db.read(lambda c: [r[0] for r in c.execute("SELECT id FROM acked")]))
    assert len(acked) >= 2000
    assert acked <= present, sorted(acked - present)[:10]


# --- schemas registered by the parts built on the node (federation) ---------------------------
PART = Schema(
    "part",
    (
        Migration(1, "peers", "CREATE TABLE part_peers(id INTEGER PRIMARY KEY, name TEXT)"),
        Migration(2, "seed", "INSERT INTO part_peers(name) VALUES ('first')"),
    ),
)


def schema_version(path: Path, name: str) -> int | None:
    with sqlite3.connect(path) as c:
        row = c.execute("SELECT version FROM schema_versions WHERE name = ?", (name,)).fetchone()
    return None if row is None else int(row[0])


async def test_registered_schema_applies_once_beside_the_nodes_own(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    async with Database.open(path, migrations=TEST_MIGRATIONS):  # the node alone first
        pass
    for _ in range(3):
        async with Database.open(path, migrations=TEST_MIGRATIONS, schemas=[PART]) as db:
            # a second run of "seed" would have made two rows
            assert await db.read(lambda c: count(c, "part_peers")) == 1
    assert schema_version(path, "part") == 2
    assert user_version(path) == len(TEST_MIGRATIONS)  # the node's version is untouched


async def test_registered_schema_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    async with Database.open(path, migrations=TEST_MIGRATIONS, schemas=[PART]):
        pass
    older = Schema("part", PART.migrations[:1])
    with pytest.raises(StorageError, match="schema 'part' version 2 is newer"):
        async with Database.open(path, migrations=TEST_MIGRATIONS, schemas=[older]):
            pass


async def test_failing_registered_migration_rolls_back_alone(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    bad = Schema(
        "part",
        (
            *PART.migrations,
            Migration(3, "broken", "CREATE TABLE part_x(a); INSERT INTO nowhere VALUES (1)"),
        ),
    )
    with pytest.raises(StorageError, match="migration part 3 \\(broken\\) failed"):
        async with Database.open(path, migrations=TEST_MIGRATIONS, schemas=[bad]):
            pass
    assert schema_version(path, "part") == 2  # steps 1-2 committed, 3 left nothing behind
    with sqlite3.connect(path) as c:
        assert not c.execute("SELECT 1 FROM sqlite_master WHERE name = 'part_x'").fetchone()


def test_schema_declarations_are_checked_when_made() -> None:
    with pytest.raises(ValueError, match=r"numbered 1\.\.N"):
        Schema("part", (Migration(2, "gap", "SELECT 1"),))
    with pytest.raises(ValueError, match="schema name"):
        Schema("no-dashes", ())
