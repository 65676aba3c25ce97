"""Make tests/data/v4_node: a data folder written by Fedgram as it was before addresses
became canonical (database schema version 4, commit 3da72f0), for tests/test_migration.py.

It is a real node's folder, made by that code through its API, not a hand-built database:
what a node in the field has. Re-running it needs a checkout of that commit (the code of
today would write version 5):

    git worktree add --detach /tmp/fedgram-v4 3da72f0
    PYTHONPATH=/tmp/fedgram-v4 python3 tests/data/make_v4_node.py OUT_DIR

It runs a node in OUT_DIR, then keeps only source: OUT_DIR/fedgram.sql (the database's rows
as INSERT statements; the schema is the frozen migrations 1-4) and OUT_DIR/devices.json (the
node key, the device keys and the facts the test checks); the binary files are removed.
The node is called `fedgram`, the default name every
node had, so its events carry `alice@fedgram`.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio
from nacl.signing import SigningKey

from node.app import Node
from node.client import Client
from node.config import Config, validate
from node.interfaces import CallContext


async def _admin(node: Node, method: str, params: dict[str, Any] | None = None) -> Any:
    return await node.router.dispatch(CallContext("admin"), method, params or {})


async def _device(stack: AsyncExitStack, node: Node, name: str) -> tuple[Client, SigningKey]:
    key = SigningKey.generate()
    code = (await _admin(node, "admin.userCode", {"name": name}))["code"]
    c = await stack.enter_async_context(Client.connect(node.url))
    await c.sign_in(name, str(code), key, "old phone")
    return c, key


async def _send(c: Client, chat: str, text: str) -> int:
    p = {"chat": chat, "random_id": secrets.randbits(63), "text": text}
    return int((await c.call("messages.send", p))["seq"])


def _literal(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, bytes):
        return "X'" + v.hex() + "'"
    if isinstance(v, int | float):
        return repr(v)
    return "'" + str(v).replace("'", "''") + "'"


def _rows_as_sql(db: sqlite3.Connection) -> str:
    """Every row as an INSERT (search-index shadow tables as the index's own rows)."""
    lines = [
        "-- The rows of a schema-4 node's database (tests/data/make_v4_node.py writes this file).",
        "-- The schema is not here: tests build it from the frozen migrations 1-4.",
    ]
    tables = [
        r[0]
        for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE "
            "'events_fts%' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    for t in tables:
        cols = ", ".join(r[1] for r in db.execute(f'PRAGMA table_info("{t}")'))
        for row in db.execute(f'SELECT * FROM "{t}" ORDER BY 1'):
            lines.append(f"INSERT INTO {t}({cols}) VALUES ({', '.join(map(_literal, row))});")
    for rowid, text in db.execute("SELECT rowid, text FROM events_fts ORDER BY rowid"):
        lines.append(f"INSERT INTO events_fts(rowid, text) VALUES ({rowid}, {_literal(text)});")
    for name, seq in db.execute("SELECT name, seq FROM sqlite_sequence ORDER BY name"):
        lines.append(f"DELETE FROM sqlite_sequence WHERE name = {_literal(name)};")
        lines.append(f"INSERT INTO sqlite_sequence(name, seq) VALUES ({_literal(name)}, {seq});")
    return "\n".join(lines) + "\n"


async def make(out: Path) -> None:
    out.mkdir(parents=True)
    raw = {"node": {"name": "fedgram", "listen": "127.0.0.1:0", "log_level": "warning"}}
    config = Config(out, validate(raw, "make_v4_node"))
    facts: dict[str, Any] = {}
    async with Node.start(config) as node, AsyncExitStack() as stack:
        for name in ("alice", "bob", "carol", "gone"):
            await _admin(node, "admin.userAdd", {"name": name})
        await _admin(node, "admin.userRemove", {"name": "gone"})  # its id is never reused
        (a, akey), (b, bkey), (c, ckey) = [
            await _device(stack, node, n) for n in ("alice", "bob", "carol")
        ]
        private = (await a.call("chats.startPrivate", {"user": "@bob"}))["chat"]["id"]
        s1 = await _send(a, private, "hi bob")
        await _send(b, private, "hi alice")
        await a.call("messages.edit", {"chat": private, "seq": s1, "text": "hi bob!"})
        s3 = await _send(b, private, "a typo")
        await b.call("messages.delete", {"chat": private, "seq": s3})
        group = (await a.call("chats.createGroup", {"title": "Old friends", "members": ["bob"]}))[
            "chat"
        ]["id"]
        await a.call("chats.addMembers", {"chat": group, "users": ["carol"]})
        await _send(c, group, "hello group")
        await b.call("chats.leave", {"chat": group})
        facts = {
            "node_id": node.node_id,
            "private": private,
            "group": group,
            "keys": {
                n: bytes(k).hex() for n, k in (("alice", akey), ("bob", bkey), ("carol", ckey))
            },
        }
    db = sqlite3.connect(out / "fedgram.db")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert db.execute("PRAGMA user_version").fetchone() == (4,)
    (out / "fedgram.sql").write_text(_rows_as_sql(db))
    db.close()
    facts["node_key"] = (out / "node.key").read_bytes().hex()
    (out / "devices.json").write_text(json.dumps(facts, indent=1) + "\n")
    for extra in ("admin.sock", "node.lock", "node.key", "fedgram.db", "fedgram.db-wal"):
        (out / extra).unlink(missing_ok=True)
    (out / "fedgram.db-shm").unlink(missing_ok=True)
    if (out / "media").exists():
        (out / "media").rmdir()


if __name__ == "__main__":
    trio.run(make, Path(sys.argv[1]))
