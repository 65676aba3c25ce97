"""Numbered schema migrations, recorded in ``PRAGMA user_version``.

The version lives in the database header rather than in a table so it can be read before
any schema exists, and so that setting it is part of the same transaction as the DDL: a
crash mid-migration leaves the old version and the old schema, never a mix.

Rules for adding a migration (later features append to ``MIGRATIONS``):

* versions are 1, 2, 3, ... with no gaps; a shipped migration is never edited, only followed
  by a new one, because databases in the field have already run the old text;
* ``sql`` may hold several statements separated by ``;``. They run one by one with
  ``conn.execute`` inside the migration's transaction. ``executescript`` is not used because
  it commits whatever transaction is open, which would break the all-or-nothing guarantee;
* ``PRAGMA foreign_keys`` and ``PRAGMA journal_mode`` are no-ops inside a transaction, so a
  migration cannot switch them; table rebuilds must keep foreign keys valid as they go;
* avoid ``DEFERRABLE INITIALLY DEFERRED`` foreign keys: a deferred violation is only
  detected at COMMIT, where it fails every job of a group-committed batch, not just the
  job that caused it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from ..auth.store import SCHEMA as ACCOUNTS_SCHEMA
from ..chats.schema_sql import SCHEMA as CHATS_SCHEMA
from ..media.store import SCHEMA as MEDIA_SCHEMA


@dataclass(frozen=True)
class Migration:
    """One schema step; ``version`` is what ``PRAGMA user_version`` reads after it commits."""

    version: int
    name: str
    sql: str

    def __post_init__(self) -> None:
        # Fail at import time, not on a user's machine during an upgrade.
        if self.version < 1:
            raise ValueError(f"migration {self.name!r}: version must be >= 1, got {self.version}")
        if not self.statements():
            raise ValueError(f"migration {self.version} ({self.name}) has no SQL statements")

    def statements(self) -> list[str]:
        """The SQL split into single statements, so each can go through ``conn.execute``.

        Splitting uses ``sqlite3.complete_statement`` rather than a plain ``split(";")`` so
        that semicolons inside string literals, comments and ``CREATE TRIGGER ... BEGIN ...
        END`` bodies do not cut a statement in half."""
        out: list[str] = []
        buf = ""
        for piece in self.sql.split(";"):
            buf += piece + ";"
            if sqlite3.complete_statement(buf):
                if _has_code(buf):
                    out.append(buf.strip())
                buf = ""
        # split() adds a ";" after the final piece that the text did not have; whatever is
        # left is either trailing whitespace/comments or a last statement without ";".
        rest = buf[:-1]
        if _has_code(rest):
            out.append(rest.strip())
        return out


def _has_code(sql: str) -> bool:
    """True if ``sql`` holds more than whitespace, comments and empty ``;`` statements."""
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch.isspace() or ch == ";":
            i += 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            return True
    return False


def check_sequence(migrations: list[Migration]) -> None:
    """Refuse a list whose versions are not exactly 1..N in order.

    A gap or a duplicate would make ``user_version`` ambiguous: a database at version 3
    must mean the same schema on every node running the same code."""
    for expected, m in enumerate(migrations, start=1):
        if m.version != expected:
            raise ValueError(
                f"migrations must be numbered 1..N in order; position {expected} holds "
                f"version {m.version} ({m.name})"
            )


MIGRATIONS: list[Migration] = [
    Migration(
        1,
        "meta",
        """
        -- Small node-wide facts (schema notes, node settings) that need no table of their own.
        CREATE TABLE meta(
            key TEXT PRIMARY KEY,
            value BLOB NOT NULL
        );
        """,
    ),
    # Accounts, devices, login codes, invites. The SQL is owned by node/auth/store.py while
    # it is unreleased; once a release ships, paste the text here so it can never change.
    Migration(2, "accounts", ACCOUNTS_SCHEMA),
    # Chat logs, membership, per-user sync state (node/chats/schema_sql.py, same rule).
    Migration(3, "chats", CHATS_SCHEMA),
    # Media rows, message attachments, uploads in progress (node/media/store.py, same rule).
    Migration(4, "media", MEDIA_SCHEMA),
]
check_sequence(MIGRATIONS)
