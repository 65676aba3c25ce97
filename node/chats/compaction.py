"""Erasure compaction: erased words leave the files, not just the answers.

Erasing content (delete for everyone, the text an edit replaced) clears it from its row and
from the search index in the write job itself (log.apply). SQLite FTS5 only marks a deleted
row's words as deleted until the segments holding them are merged, and the WAL still holds
the pages as they were before; :meth:`Compaction.run` therefore, in the background, merges
the search index's segments and then truncates the WAL. (Rows themselves are overwritten
with zeros by SQLite's secure_delete, which the writer connection enables.)
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from .. import log

if TYPE_CHECKING:
    from ..storage.database import Database

# A round rewrites the whole search index in small steps: measured ~0.65 s of writer time
# per 100,000 messages, steps of <= ~25 ms.
FTS_MERGE_PAGES = 16  # search-index pages merged per write job
COMPACT_DEBOUNCE = 1.0  # seconds: a burst of edits/deletes shares one round
COMPACT_MIN_GAP = 10.0  # seconds between rounds at least ...
COMPACT_DUTY = 10.0  # ... and at least this many times the last round's duration
WAL_TRUNCATE_TRIES = 5
_log = log.get("chats")


def _merge_step(conn: sqlite3.Connection) -> bool:
    """One bounded merge of the search index's segments; False once there was nothing left
    to merge (the special INSERT itself counts as one change)."""
    before = conn.total_changes
    conn.execute(
        "INSERT INTO events_fts(events_fts, rank) VALUES ('merge', ?)", (-FTS_MERGE_PAGES,)
    )
    return conn.total_changes - before > 1


def _truncate_wal(path: Path) -> bool:
    """Checkpoint the WAL into the database and truncate it to zero bytes (thread).

    Its own short-lived connection: a checkpoint cannot run inside the writer's transaction
    and the pool's readers are read-only. TRUNCATE waits for the writer and for readers on
    older snapshots (at most the busy timeout, while writers wait too), so a busy node is
    retried a little later instead of stalling."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout = 200")
        for _ in range(WAL_TRUNCATE_TRIES):
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if busy == 0:
                return True
            time.sleep(0.05)
        _log.info("WAL truncation after an erasure deferred: the database stayed busy")
        return False
    finally:
        conn.close()


class Compaction:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._erased = trio.Event()  # set when content was erased since the last round
        self._compacting = False
        self.rounds = 0  # finished compaction rounds
        self.min_gap = COMPACT_MIN_GAP  # tests shorten it

    def erased(self) -> None:
        """Content was erased by a committed change: a round will follow."""
        self._erased.set()

    @property
    def pending(self) -> bool:
        """Content was erased and the round that clears its traces has not finished."""
        return self._compacting or self._erased.is_set()

    async def run(self) -> None:
        """Background task: after content was erased, merge the search index until no
        segment still holds the erased words, then truncate the WAL.

        So erased words leave the files about a second after the erasure when the node is
        quiet, and within ``min_gap`` (or ten times the last round, on a big index) plus
        one round when erasures keep coming."""
        while True:
            await self._erased.wait()
            await trio.sleep(COMPACT_DEBOUNCE)
            self._erased = trio.Event()  # erasures from now on ask for another round
            self._compacting = True
            started = trio.current_time()
            try:
                finished = await self._merge_search_index()
                truncated = await trio.to_thread.run_sync(_truncate_wal, self.db.path)
            finally:
                self._compacting = False
            if finished and truncated:
                self.rounds += 1
            else:
                self._erased.set()  # not done: the next round continues
            # rounds rewrite the whole index: never more than ~1/COMPACT_DUTY of the writer
            took = trio.current_time() - started
            await trio.sleep(max(self.min_gap, COMPACT_DUTY * took))

    async def _merge_search_index(self) -> bool:
        """Incremental FTS5 'merge' steps (small write jobs between everyone else's) until the
        index is one segment, in which deleted entries no longer exist. Bounded: under a
        steady stream of new messages it may not settle, then the next round continues."""
        pages: int = await self.db.read(
            lambda c: c.execute("SELECT COUNT(*) FROM events_fts_data").fetchone()[0]
        )
        for _ in range(2 * pages // FTS_MERGE_PAGES + 8):
            if not await self.db.write(_merge_step):
                return True
        return False
