"""Addresses that mean the same thing on every node: canonical ``name@<node id>`` in what is
signed and stored, ``name@petname`` in what people type and read (node/address.py,
node/nodes.py)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import cbor2
import pytest
from nacl.signing import SigningKey

from node.address import Address, AddressError, canonical, is_node_id
from node.app import Node
from node.chats.store import Account, private_chat_id
from node.client import RpcError
from node.config import ConfigError
from node.nodes import NodeBook
from node.nodes import load as load_nodes
from node.protocol.identity import fingerprint
from tests.conftest import make_config
from tests.helpers import admin, send, signed_in

N1 = fingerprint(b"1" * 32)
N2 = fingerprint(b"2" * 32)


def test_parse_format_compare() -> None:
    assert is_node_id(N1) and not is_node_id("fedgram")
    a = Address.parse(f"@Alice@{N1.upper()}")
    assert a == Address("alice", N1) and a.canonical and str(a) == f"alice@{N1}"
    assert Address.parse("bob") == Address("bob", "") and str(Address("bob", "")) == "bob"
    assert Address.parse("bob@n2") == Address("bob", "n2") and not Address("bob", "n2").canonical
    assert Address("alice", N1).display("n1") == "alice@n1"
    assert canonical("alice", N1) == f"alice@{N1}"
    for bad in ("", "@", "al ice", "alice@", "a@b@c", "ålice"):
        with pytest.raises(AddressError):
            Address.parse(bad)
    with pytest.raises(AddressError):
        canonical("alice", "fedgram")  # a petname is never canonical


def test_same_names_on_two_nodes_are_two_people() -> None:
    """Two nodes both called `fedgram`, each with an alice and a bob: their private chats get
    different ids, because the ids hash the node ids, not the names."""
    stamp = time.time()
    on = {
        n: (Account(canonical("alice", n), stamp), Account(canonical("bob", n), stamp))
        for n in (N1, N2)
    }
    assert private_chat_id(*on[N1]) != private_chat_id(*on[N2])
    # and the pair's id does not depend on who asks
    alice, bob = on[N1]
    assert private_chat_id(alice, bob) == private_chat_id(bob, alice)


def test_book_displays_resolves_and_presents() -> None:
    book = NodeBook(self_id=N1, self_name="home", petnames={N1: "home", N2: "n2"})
    assert book.display(f"alice@{N1}") == "alice@home"
    assert book.display(f"bob@{N2}") == "bob@n2"
    unknown = fingerprint(b"3" * 32)
    assert book.display(f"eve@{unknown}") == f"eve@{unknown}"  # an unknown node by its id
    assert book.display("alice@fedgram") == "alice@home"  # legacy: written by this node
    assert book.display("bob@n2") == "bob@n2"  # already a display form: unchanged
    assert book.resolve("alice") == Address("alice", N1)
    assert book.resolve("@bob@N2") == Address("bob", N2)
    assert book.resolve(f"bob@{N2}") == Address("bob", N2)
    with pytest.raises(AddressError):
        book.resolve("carol@elsewhere")
    result: dict[str, Any] = {
        "events": [
            {
                "sender": f"alice@{N1}",
                "body": {"text": f"mail alice@{N1}", "users": [f"bob@{N2}"], "user": None},
            }
        ],
        "count": 1,
    }
    shown = book.present(result)
    assert shown["events"][0]["sender"] == "alice@home"
    assert shown["events"][0]["body"]["users"] == ["bob@n2"]
    assert shown["events"][0]["body"]["text"] == f"mail alice@{N1}"  # text is never rewritten
    assert result["events"][0]["sender"] == f"alice@{N1}"  # the original is not touched


async def test_events_sign_canonical_and_clients_read_petnames(tmp_path: Path) -> None:
    async with (
        Node.start(make_config(tmp_path / "n", node={"name": "fedgram"})) as node,
        signed_in(node, "alice") as a,
        signed_in(node, "bob") as b,
    ):
        me = await a.call("account.getProfile", {})
        assert me["address"] == "alice@fedgram"
        chat = (await a.call("chats.startPrivate", {"user": f"bob@{node.node_id}"}))["chat"]
        assert chat["peer"] == "bob@fedgram" and chat["home"] == node.node_id
        seq = await send(b, chat["id"], "hi")
        ev = (await a.call("chats.history", {"chat": chat["id"]}))["events"][-1]
        assert ev["seq"] == seq and ev["sender"] == "bob@fedgram"
        raw = (await admin(node, "admin.chatExport", {"chat": chat["id"]}))["events"]
        signed = [cbor2.loads(r["raw"]) for r in raw]
        assert signed[0]["body"]["members"] == [f"bob@{node.node_id}"]
        assert signed[-1]["sender"] == f"bob@{node.node_id}"
        # the private chat id is derived from the canonical addresses
        stamps = {u["name"]: u["created"] for u in (await admin(node, "admin.userList"))["users"]}
        want = private_chat_id(
            Account(f"alice@{node.node_id}", stamps["alice"]),
            Account(f"bob@{node.node_id}", stamps["bob"]),
        )
        assert chat["id"] == want


async def test_remote_users_are_rows_of_their_node(tmp_path: Path) -> None:
    """A user of another node is a row of `users` (no devices, codes or password) that may
    share a local user's name; local lookups only ever see this node's users."""
    async with Node.start(make_config(tmp_path / "n")) as node:
        peer_key = bytes(SigningKey.generate().verify_key)

        def add_remote(c: sqlite3.Connection) -> None:
            now = time.time()
            cur = c.execute(
                "INSERT INTO nodes(fingerprint, public_key, name, state, first_seen, last_seen) "
                "VALUES (?, ?, 'n2', 'peer', ?, ?)",
                (fingerprint(peer_key), peer_key, now, now),
            )
            c.execute(
                "INSERT INTO users(node, name, created) VALUES (?, 'alice', ?)",
                (cur.lastrowid, now),
            )

        await node.db.write(add_remote)
        node.directory.replace(await node.db.read(load_nodes))  # as federation does
        async with signed_in(node, "alice") as a, signed_in(node, "bob"):
            assert [u["name"] for u in (await admin(node, "admin.userList"))["users"]] == [
                "alice",
                "bob",
            ]
            # bob here, by every spelling; alice@n2 is another person, not reachable from a
            # node that runs without federation
            for ref in ("bob", "@bob", "bob@test", f"bob@{node.node_id}"):
                chat = (await a.call("chats.startPrivate", {"user": ref}))["chat"]
                assert chat["peer"] == "bob@test"
            for ref, code in (("alice@n2", "FEDERATION_OFF"), ("carol@nowhere", "PEER_INVALID")):
                with pytest.raises(RpcError) as e:
                    await a.call("chats.startPrivate", {"user": ref})
                assert e.value.code == code
            with pytest.raises(RpcError) as e:
                await a.call("chats.createGroup", {"title": "G", "members": ["alice@n2"]})
            assert e.value.code == "FEDERATION_OFF"
            with pytest.raises(RpcError) as e:
                await a.call("chats.createGroup", {"title": "G", "members": ["carol@nowhere"]})
            assert e.value.code == "USER_NOT_FOUND"


async def test_node_names_itself_and_refuses_a_foreign_database(tmp_path: Path) -> None:
    d = tmp_path / "n"
    async with Node.start(make_config(d)) as node:
        node_id = node.node_id
        other = bytes(SigningKey.generate().verify_key)

        def peer_called_home(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO nodes(fingerprint, public_key, name, state, first_seen, last_seen) "
                "VALUES (?, ?, 'home', 'peer', 0, 0)",
                (fingerprint(other), other),
            )

        await node.db.write(peer_called_home)
    # renamed to a name a peer has: this node takes it, the peer gets a distinct petname
    async with Node.start(make_config(d, node={"name": "home"})) as node:
        assert node.node_id == node_id
        assert node.directory.self_name == "home"
        assert node.directory.book.petnames[fingerprint(other)] == f"home-{fingerprint(other)[:6]}"
    # a new key on the old database: another identity, refused with one clear line
    (d / "node.key").write_bytes(bytes(SigningKey.generate()))
    with pytest.raises(ConfigError, match="belongs to node"):
        async with Node.start(make_config(d)):
            pass
