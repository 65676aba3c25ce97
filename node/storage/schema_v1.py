"""The schema of migrations 2-4 as released: frozen text, never edited.

Until issue 11 these were edited in place beside the code that used them (node/auth/store.py,
node/chats/schema_sql.py, node/media/store.py) while the schema was unreleased. Databases in
the field have run exactly this text, so it can no longer change: a schema change is a new
migration in migrations.py (the first one is migration 5, nodes and users.node).
"""

from __future__ import annotations

ACCOUNTS = """
-- AUTOINCREMENT: an id is never handed out twice, even after its user or device is removed.
-- Messages, rate-limit keys and chat invites keep a removed user's bare id; a new account
-- must never inherit them.
CREATE TABLE users(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL DEFAULT '',
    is_admin INTEGER NOT NULL DEFAULT 0,
    banned INTEGER NOT NULL DEFAULT 0,
    password_hash BLOB,
    created REAL NOT NULL
);
CREATE TABLE devices(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    public_key BLOB NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created REAL NOT NULL,
    last_seen REAL NOT NULL,
    revoked REAL
);
CREATE INDEX devices_user ON devices(user_id);
-- One live login code per NAME asked for, whether or not the name is a user: on nodes that
-- hide who exists, a name that is no (usable) user gets a decoy row (user_id NULL) that
-- answers guesses exactly like a real code, and is never delivered. Expired rows are purged
-- whenever a code is set.
CREATE TABLE login_codes(
    name TEXT PRIMARY KEY,
    user_id INTEGER REFERENCES users(id) ON DELETE CASCADE,
    code_hash BLOB NOT NULL,
    expires REAL NOT NULL,
    attempts_left INTEGER NOT NULL
);
CREATE INDEX login_codes_user ON login_codes(user_id);
CREATE INDEX login_codes_expires ON login_codes(expires);
CREATE TABLE invites(
    token_hash BLOB PRIMARY KEY,
    uses_left INTEGER NOT NULL,
    expires REAL,
    created REAL NOT NULL
);
"""

CHATS = """
CREATE TABLE chats(
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('private', 'group', 'channel')),
    home TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    about TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    last_seq INTEGER NOT NULL DEFAULT 0,
    last_hash BLOB NOT NULL,
    members INTEGER NOT NULL DEFAULT 0,
    pinned_seq INTEGER
) WITHOUT ROWID;
CREATE TABLE chat_members(
    chat_id TEXT NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role TEXT NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'admin', 'member')),
    state TEXT NOT NULL DEFAULT 'member' CHECK (state IN ('member', 'left', 'kicked', 'banned')),
    joined_seq INTEGER NOT NULL,
    read_seq INTEGER NOT NULL DEFAULT 0,
    pinned INTEGER NOT NULL DEFAULT 0,
    muted INTEGER NOT NULL DEFAULT 0,
    archived INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (chat_id, user_id)
) WITHOUT ROWID;
CREATE INDEX chat_members_user ON chat_members(user_id, state);
CREATE TABLE private_chats(
    user_lo INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    user_hi INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    chat_id TEXT NOT NULL UNIQUE,
    PRIMARY KEY (user_lo, user_hi)
) WITHOUT ROWID;
CREATE TABLE events(
    id INTEGER PRIMARY KEY,
    chat_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    sender_id INTEGER,
    ts REAL NOT NULL,
    random_id INTEGER,
    target_seq INTEGER,
    raw BLOB NOT NULL,
    hash BLOB NOT NULL,
    sig BLOB NOT NULL,
    content BLOB,
    edit_seq INTEGER,
    edited_ts REAL,
    deleted INTEGER NOT NULL DEFAULT 0,
    UNIQUE (chat_id, seq)
);
-- not a partial index: a lookup "random_id = ?" cannot use one (SQLite cannot know ? is not
-- NULL) and would scan the chat's whole log on every send; NULLs never collide in UNIQUE
CREATE UNIQUE INDEX events_random ON events(chat_id, sender_id, random_id);
CREATE VIRTUAL TABLE events_fts USING fts5(text, tokenize = 'unicode61 remove_diacritics 2');
CREATE TABLE hidden_messages(
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    chat_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (user_id, chat_id, seq)
) WITHOUT ROWID;
CREATE TABLE user_updates(
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    pts INTEGER NOT NULL,
    kind TEXT NOT NULL,
    body BLOB NOT NULL,
    ts REAL NOT NULL,
    PRIMARY KEY (user_id, pts)
) WITHOUT ROWID;
CREATE TABLE chat_invites(
    token_hash BLOB PRIMARY KEY,
    chat_id TEXT NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
    creator_id INTEGER,
    uses_left INTEGER,
    expires REAL,
    revoked INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
) WITHOUT ROWID;
"""

MEDIA = """
CREATE TABLE media(
    id TEXT PRIMARY KEY,
    sha256 BLOB NOT NULL,
    size INTEGER NOT NULL,
    mime TEXT NOT NULL,
    name TEXT NOT NULL,
    width INTEGER,
    height INTEGER,
    uploader_id INTEGER REFERENCES users(id) ON DELETE SET NULL,
    created REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX media_sha ON media(sha256);
CREATE INDEX media_uploader ON media(uploader_id);
CREATE TABLE media_refs(
    media_id TEXT NOT NULL REFERENCES media(id) ON DELETE CASCADE,
    chat_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (media_id, chat_id, seq)
) WITHOUT ROWID;
CREATE TABLE media_uploads(
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    upload_id TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (user_id, upload_id)
) WITHOUT ROWID;
CREATE TABLE media_parts(
    user_id INTEGER NOT NULL,
    upload_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (user_id, upload_id, idx),
    FOREIGN KEY (user_id, upload_id) REFERENCES media_uploads(user_id, upload_id)
        ON DELETE CASCADE
) WITHOUT ROWID;
"""
