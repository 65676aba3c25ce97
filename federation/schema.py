"""Federation's tables, registered with storage when the node runs federation.

The peers themselves are rows of the node's ``nodes`` table (identity, key, petname,
state); ``fed_peers`` adds how to reach one. ``fed_outbox`` holds posts of this node's users
into chats homed elsewhere until their home acknowledged them: written in the same
transaction as the client's acknowledgement, deleted only after the home's, so a kill -9
of either side loses nothing, and the home's idempotency on (chat, sender, random_id)
makes a resend after a lost acknowledgement harmless.
"""

from __future__ import annotations

from node.storage import Migration, Schema

SCHEMA = Schema(
    "federation",
    (
        Migration(
            1,
            "peers and outbox",
            """
            CREATE TABLE fed_peers(
                node INTEGER PRIMARY KEY REFERENCES nodes(id) ON DELETE CASCADE,
                url TEXT,
                added REAL NOT NULL,
                last_error TEXT
            );
            CREATE TABLE fed_outbox(
                id INTEGER PRIMARY KEY,
                home TEXT NOT NULL,
                chat_id TEXT NOT NULL,
                sender_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
                random_id INTEGER NOT NULL,
                post BLOB NOT NULL,
                created REAL NOT NULL,
                UNIQUE (chat_id, sender_id, random_id)
            );
            CREATE INDEX fed_outbox_home ON fed_outbox(home, id);
            """,
        ),
    ),
)
