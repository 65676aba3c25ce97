"""The chats tables (migration 3).

A chat's history is its ``events`` rows: one row per event however many members the chat
has.  ``raw`` is the exact CBOR that the home node hashed and signed, so any node holding a
copy can serve it verifiably; ``content`` is the event's erasable content record (text,
media, forward origin), which ``raw`` commits to by hash only (see events.py) and which is
set to NULL when it is erased.  The other columns are indexes into ``raw``, plus the
*derived* state that later events apply to a message (``edit_seq``: the edit whose content
is now the message's, ``deleted``), which is what history reads return.  ``events_fts``
indexes the current text of live messages only.  Per-user state (read position, dialog
settings, "deleted for me", the pts update log) lives in rows per user, never per message.

``private_chats`` maps the two *current* accounts of a private chat to it; removing a user
drops their rows (ON DELETE CASCADE), so a new account that reuses the name never finds the
old chat (see store.private_chat_id).
"""

from __future__ import annotations

SCHEMA = """
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
