"""The chats tables (migration 3; ``users`` gained its node in migration 5).

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

# The SQL of migration 3 is frozen in node/storage/schema_v1.py (CHATS): databases in the
# field have run it. A change to these tables is a new migration in node/storage/migrations.py.
