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
  migration cannot switch them; a table rebuild (create new, copy, drop old, rename) sets
  ``rebuilds=True``: the runner turns foreign keys off around it and refuses to commit if
  ``PRAGMA foreign_key_check`` finds a violation;
* avoid ``DEFERRABLE INITIALLY DEFERRED`` foreign keys: a deferred violation is only
  detected at COMMIT, where it fails every job of a group-committed batch, not just the
  job that caused it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from . import schema_v1


@dataclass(frozen=True)
class Migration:
    """One schema step; ``version`` is what ``PRAGMA user_version`` reads after it commits."""

    version: int
    name: str
    sql: str
    # Run with PRAGMA foreign_keys OFF (checked with foreign_key_check before COMMIT): what a
    # table rebuild needs, since dropping a parent table with foreign keys on would run its
    # children's ON DELETE actions and delete them.
    rebuilds: bool = False

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


@dataclass(frozen=True)
class Schema:
    """The tables of one part built on the node (federation, later ones), numbered on their
    own: a part registers its schema when it opens the database (``Database.open(...,
    schemas=[...])``) and storage runs it, so storage never imports the parts above it.

    The node's own tables are :data:`MIGRATIONS` (versioned by ``PRAGMA user_version``, as
    since the first release); a registered schema's version is its row of
    ``schema_versions``, written in the same transaction as its DDL."""

    name: str
    migrations: tuple[Migration, ...]

    def __post_init__(self) -> None:
        if not self.name or not self.name.isidentifier():
            raise ValueError(f"schema name {self.name!r}: letters, digits and _ only")
        check_sequence(list(self.migrations))


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
    # Accounts, devices, login codes, invites; chat logs, membership, per-user sync state;
    # media rows, message attachments, uploads in progress. Frozen text (schema_v1.py).
    Migration(2, "accounts", schema_v1.ACCOUNTS),
    Migration(3, "chats", schema_v1.CHATS),
    Migration(4, "media", schema_v1.MEDIA),
    # Nodes by identity, and users on a node (issue 11): see node/nodes.py and address.py.
    # The node's key is not known to migrations, so the self row is made here without its
    # fingerprint, key and name, which node start-up fills in (nodes.ensure_self). users is
    # rebuilt to trade UNIQUE(name) for UNIQUE(name, node); its AUTOINCREMENT counter is
    # carried over so a removed user's id is still never handed out again. Events are not
    # touched: they stay signed as they were (legacy addresses name this node).
    Migration(
        5,
        "nodes",
        """
        CREATE TABLE nodes(
            id INTEGER PRIMARY KEY,
            fingerprint TEXT UNIQUE,
            public_key BLOB UNIQUE,
            name TEXT NOT NULL UNIQUE COLLATE NOCASE,
            state TEXT NOT NULL CHECK (state IN ('self', 'peer', 'pending', 'blocked')),
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL,
            CHECK (state = 'self' OR (fingerprint IS NOT NULL AND public_key IS NOT NULL))
        );
        CREATE UNIQUE INDEX nodes_self ON nodes(state) WHERE state = 'self';
        INSERT INTO nodes(id, name, state, first_seen, last_seen) VALUES (
            1, '', 'self',
            (julianday('now') - 2440587.5) * 86400.0, (julianday('now') - 2440587.5) * 86400.0
        );
        CREATE TABLE users_v5(
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            node INTEGER NOT NULL REFERENCES nodes(id),
            name TEXT NOT NULL,
            display_name TEXT NOT NULL DEFAULT '',
            is_admin INTEGER NOT NULL DEFAULT 0,
            banned INTEGER NOT NULL DEFAULT 0,
            password_hash BLOB,
            created REAL NOT NULL,
            UNIQUE (name, node)
        );
        INSERT INTO users_v5(id, node, name, display_name, is_admin, banned, password_hash,
                             created)
            SELECT id, 1, name, display_name, is_admin, banned, password_hash, created
            FROM users;
        DELETE FROM sqlite_sequence WHERE name = 'users_v5';
        INSERT INTO sqlite_sequence(name, seq)
            SELECT 'users_v5', seq FROM sqlite_sequence WHERE name = 'users';
        DROP TABLE users;
        ALTER TABLE users_v5 RENAME TO users;
        CREATE INDEX users_node ON users(node);
        """,
        rebuilds=True,
    ),
    # A fourth node state (issue 12): 'known' is a node this one has the key of (learnt from
    # a peer, whose chats name its users) without any link agreement with it.
    Migration(
        6,
        "nodes known",
        """
        CREATE TABLE nodes_v6(
            id INTEGER PRIMARY KEY,
            fingerprint TEXT UNIQUE,
            public_key BLOB UNIQUE,
            name TEXT NOT NULL UNIQUE COLLATE NOCASE,
            state TEXT NOT NULL CHECK (state IN ('self', 'peer', 'pending', 'blocked', 'known')),
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL,
            CHECK (state = 'self' OR (fingerprint IS NOT NULL AND public_key IS NOT NULL))
        );
        INSERT INTO nodes_v6 SELECT id, fingerprint, public_key, name, state, first_seen,
            last_seen FROM nodes;
        DROP TABLE nodes;
        ALTER TABLE nodes_v6 RENAME TO nodes;
        CREATE UNIQUE INDEX nodes_self ON nodes(state) WHERE state = 'self';
        """,
        rebuilds=True,
    ),
    # Secret-chat files (issue 14, docs/secret-chats.md 6.6): the uploader declares the bytes
    # encrypted on the device (media.complete opaque=true). Such a file is read by its
    # SHA-256 (media.downloadSecret, fed.media) rather than through a chat, and the gc keeps
    # it for [secret] ttl. Rows made before are ordinary media (0).
    Migration(
        7,
        "media opaque",
        """
        ALTER TABLE media ADD COLUMN opaque INTEGER NOT NULL DEFAULT 0 CHECK (opaque IN (0, 1));
        CREATE INDEX media_opaque ON media(sha256) WHERE opaque = 1;
        """,
    ),
    # Last seen per user (issue 15, admin): when a device of the user was last signed in
    # (written at sign-in and, while online, at most once a minute; node/auth/service.py).
    # Backfilled from the devices' own last_seen (set at each sign-in and authorize).
    Migration(
        8,
        "users last seen",
        """
        ALTER TABLE users ADD COLUMN last_seen REAL;
        UPDATE users SET last_seen = (SELECT MAX(d.last_seen) FROM devices d
                                      WHERE d.user_id = users.id);
        """,
    ),
    # Issue 15: a profile's "about" line (account.updateProfile), a dialog muted for a
    # while (chats.updateDialog mute_for: muted until then; NULL: for good), read marks indexed
    # by position, so "who read up to here" (read receipts: chats.history read_by,
    # messages.readers, the dialog's read_outbox) is a range of this index, bounded, and
    # never a scan of a 200,000-member chat's rows.
    Migration(
        9,
        "profile about, read marks, mute until",
        """
        ALTER TABLE users ADD COLUMN about TEXT NOT NULL DEFAULT '';
        CREATE INDEX chat_members_read ON chat_members(chat_id, read_seq);
        ALTER TABLE chat_members ADD COLUMN muted_until REAL;
        """,
    ),
]
check_sequence(MIGRATIONS)
