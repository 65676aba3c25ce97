"""Opening a database made before addresses were canonical (schema version 4).

``tests/data/v4_node`` holds, as text, a node's data folder written by the code of commit
3da72f0 through its API (its key, and its database's rows as SQL; the schema comes from the
frozen migrations 1-4; ``tests/data/make_v4_node.py`` says how to remake it): users alice,
bob, carol (and a removed one), devices, a private chat with an edit and a delete, a group
with an add, a post and a leave, all signed with senders like ``alice@fedgram``. The node of
today must open it, migrate it to version 5 and keep everything: sign-ins with the old devices,
history, the private chat, and every signature, with nothing re-signed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import cbor2
from nacl.signing import SigningKey

from node.app import Node
from node.client import Client
from node.storage.migrations import MIGRATIONS
from tests.conftest import make_config
from tests.helpers import admin, send, signed_in

V4 = Path(__file__).parent / "data" / "v4_node"


def _old_folder(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """The old node's data folder: its key, and its database rebuilt from the frozen
    migrations 1-4 (the schema it had) plus its rows (the fixture holds source only)."""
    d = tmp_path / "old"
    d.mkdir()
    facts = json.loads((V4 / "devices.json").read_text())
    fd = os.open(d / "node.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(bytes.fromhex(facts["node_key"]))
    with contextlib.closing(sqlite3.connect(d / "fedgram.db")) as c:
        for m in MIGRATIONS[:4]:
            for statement in m.statements():
                c.execute(statement)
        c.executescript((V4 / "fedgram.sql").read_text())
        c.execute("PRAGMA user_version = 4")
        c.commit()
    return d, facts


def _events(db: Path) -> list[tuple[str, int, bytes, bytes, bytes]]:
    with sqlite3.connect(db) as c:
        return c.execute("SELECT chat_id, seq, raw, hash, sig FROM events ORDER BY id").fetchall()


async def test_fixture_is_a_version_4_database(tmp_path: Path) -> None:
    d, _ = _old_folder(tmp_path)
    with sqlite3.connect(d / "fedgram.db") as c:
        assert c.execute("PRAGMA user_version").fetchone() == (4,)
        assert c.execute("SELECT name FROM sqlite_schema WHERE name = 'nodes'").fetchone() is None
        senders = {cbor2.loads(r[0])["sender"] for r in c.execute("SELECT raw FROM events")}
    assert senders == {"alice@fedgram", "bob@fedgram", "carol@fedgram"}
    assert len(MIGRATIONS) >= 5


async def test_old_node_opens_with_its_users_chats_and_signatures(tmp_path: Path) -> None:
    d, facts = _old_folder(tmp_path)
    before = _events(d / "fedgram.db")
    keys = {n: SigningKey(bytes.fromhex(h)) for n, h in facts["keys"].items()}
    private, group = facts["private"], facts["group"]

    async with Node.start(make_config(d, node={"name": "fedgram"})) as node:
        assert node.node_id == facts["node_id"]
        async with Client.connect(node.url) as a, Client.connect(node.url) as b:
            # the old devices sign in as they did
            me = await a.authorize(keys["alice"])
            assert me["address"] == "alice@fedgram" and me["user_id"] == 1
            await b.authorize(keys["bob"])

            # history reads as before: senders shown by the node's name, edit and delete applied
            hist = (await a.call("chats.history", {"chat": private, "limit": 50}))["events"]
            by_seq = {e["seq"]: e for e in hist}
            assert by_seq[1]["kind"] == "create" and by_seq[1]["sender"] == "alice@fedgram"
            assert by_seq[1]["body"]["members"] == ["bob@fedgram"]
            assert by_seq[2]["body"]["text"] == "hi bob!" and by_seq[2]["edited"]
            assert by_seq[3]["sender"] == "bob@fedgram"
            assert by_seq[5]["deleted"] is True
            ghist = (await a.call("chats.history", {"chat": group, "limit": 50}))["events"]
            leave = next(e for e in ghist if e["kind"] == "leave")
            assert leave["body"]["user"] == "bob@fedgram"

            # the private chat is still the one of the pair, from either side
            again = await b.call("chats.startPrivate", {"user": "alice"})
            assert again["created"] is False and again["chat"]["id"] == private
            assert again["chat"]["peer"] == "alice@fedgram"

            # a new post: signed with the canonical address, after the old events
            seq = await send(a, private, "after the upgrade")
            assert seq == 7
            shown = (await b.call("chats.history", {"chat": private, "limit": 1}))["events"][0]
            assert shown["sender"] == "alice@fedgram"

        for chat in (private, group):
            assert (await admin(node, "admin.chatVerify", {"chat": chat}))["ok"] is True
        raw = (await admin(node, "admin.chatExport", {"chat": private, "after": 6}))["events"]
        assert cbor2.loads(raw[0]["raw"])["sender"] == f"alice@{node.node_id}"

        # the removed user's id is still never handed out again (AUTOINCREMENT carried over)
        await admin(node, "admin.userAdd", {"name": "dave"})
        users = {u["name"]: u for u in (await admin(node, "admin.userList"))["users"]}
        assert users["dave"]["user_id"] == 5
        assert users["carol"]["address"] == "carol@fedgram"

    # nothing was re-signed: every old event's bytes, hash and signature are untouched
    after = _events(d / "fedgram.db")
    assert after[: len(before)] == before
    with sqlite3.connect(d / "fedgram.db") as c:
        assert c.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        assert c.execute("SELECT fingerprint, name, state FROM nodes").fetchall() == [
            (facts["node_id"], "fedgram", "self")
        ]
        assert c.execute("SELECT DISTINCT node FROM users").fetchall() == [(1,)]
        assert c.execute("PRAGMA foreign_key_check").fetchall() == []
        assert c.execute("PRAGMA integrity_check").fetchone() == ("ok",)


async def test_renamed_old_node_shows_old_and_new_events_by_its_new_name(tmp_path: Path) -> None:
    d, facts = _old_folder(tmp_path)
    keys = {n: SigningKey(bytes.fromhex(h)) for n, h in facts["keys"].items()}
    async with (
        Node.start(make_config(d, node={"name": "fedgram"})) as node,
        signed_in(node, "alice", key=keys["alice"], create=False) as a,
    ):
        await send(a, facts["private"], "canonical")
    before = _events(d / "fedgram.db")

    # the operator renames the node: its petname changes, nothing signed does
    async with Node.start(make_config(d, node={"name": "home"})) as node:
        async with signed_in(node, "carol", key=keys["carol"], create=False) as c:
            assert (await c.call("account.getProfile", {}))["address"] == "carol@home"
            hist = (await c.call("chats.history", {"chat": facts["group"], "limit": 50}))["events"]
            assert {e["sender"] for e in hist} == {"alice@home", "bob@home", "carol@home"}
            # typed by the new name or by the node id; the old name is no longer this node's
            for ref in ("alice@home", f"alice@{node.node_id}"):
                chat = (await c.call("chats.startPrivate", {"user": ref}))["chat"]
                assert chat["peer"] == "alice@home"
        async with signed_in(node, "bob", key=keys["bob"], create=False) as b:
            hist = await b.call("chats.history", {"chat": facts["private"], "limit": 50})
            senders = [e["sender"] for e in hist["events"]]
            assert (
                senders.count("alice@home") == 3
            )  # create, her message (edits fold in), the new one
        assert (await admin(node, "admin.chatVerify", {"chat": facts["private"]}))["ok"]
    assert _events(d / "fedgram.db")[: len(before)] == before  # then carol's new chat
