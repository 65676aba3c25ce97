"""Federation's tables, registered with storage when the node runs federation.

The peers themselves are rows of the node's ``nodes`` table (identity, key, petname,
state); ``fed_peers`` adds how to reach one. ``fed_outbox`` holds posts of this node's users
into chats homed elsewhere until their home acknowledged them: written in the same
transaction as the client's acknowledgement, deleted only after the home's, so a kill -9
of either side loses nothing, and the home's idempotency on (chat, sender, random_id)
makes a resend after a lost acknowledgement harmless. ``fed_secret_outbox`` does the same
for secret-chat envelopes (ciphertext) on their way to another node, this node's users'
and those it relays (federation/secret_relay.py); ``fed_secret_usage`` counts relayed bytes
per peer and day.
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
        Migration(
            2,
            "secret-chat envelopes in transit, and what was relayed for whom",
            """
            CREATE TABLE fed_secret_outbox(
                id INTEGER PRIMARY KEY,
                dest TEXT NOT NULL,
                to_addr TEXT NOT NULL,
                device INTEGER NOT NULL,
                from_addr TEXT NOT NULL,
                from_device INTEGER NOT NULL,
                msg_id INTEGER NOT NULL,
                payload BLOB NOT NULL,
                kind TEXT NOT NULL,
                sent REAL NOT NULL,
                expires REAL NOT NULL,
                hops INTEGER NOT NULL,
                UNIQUE (from_addr, from_device, msg_id, to_addr, device, kind)
            );
            CREATE INDEX fed_secret_outbox_dest ON fed_secret_outbox(dest, id);
            CREATE INDEX fed_secret_outbox_expires ON fed_secret_outbox(expires);
            CREATE TABLE fed_secret_usage(
                node TEXT NOT NULL,
                day INTEGER NOT NULL,
                bytes_for INTEGER NOT NULL,
                bytes_via INTEGER NOT NULL,
                PRIMARY KEY (node, day)
            );
            """,
        ),
        Migration(
            3,
            "the count an expired notice carries",
            "ALTER TABLE fed_secret_outbox ADD COLUMN count INTEGER NOT NULL DEFAULT 0;",
        ),
    ),
)
