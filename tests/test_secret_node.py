"""Secret chats, the node's side (docs/secret-chats.md section 3): prekeys, per-device
ciphertext queues, push, fetch/ack, TTL, revocation, and what federation calls
(``node.secret.deliver`` / ``keys_for``). Real nodes in-process, the real SDK over real
WebSockets; payloads are random bytes the node must treat as opaque."""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from nacl.signing import SigningKey

from node.app import Node
from node.client import Client
from node.protocol.errors import RpcError
from node.secret import store
from node.secret.service import spk_message
from node.storage import Database, Schema
from tests.conftest import make_config
from tests.helpers import add_user, admin, fresh_code, next_of

pytestmark = pytest.mark.trio


# --- helpers ------------------------------------------------------------------------------


@asynccontextmanager
async def device(
    node: Node, name: str, key: SigningKey, label: str = "dev"
) -> AsyncIterator[Client]:
    """A client signed in as NAME on device KEY: signs the device in the first time (the
    user is created if needed), authorizes it afterwards (a device coming back)."""
    users = (await admin(node, "admin.userList"))["users"]
    if not any(u["name"] == name for u in users):
        await add_user(node, name)
    known = await node.db.read(
        lambda c: c.execute(
            "SELECT 1 FROM devices WHERE public_key = ?", (bytes(key.verify_key),)
        ).fetchone()
    )
    async with Client.connect(node.url) as c:
        if known:
            await c.authorize(key)
        else:
            await c.sign_in(name, await fresh_code(node, name), key, label)
        yield c


async def device_id(c: Client) -> int:
    devs = (await c.call("account.devices"))["devices"]
    return int(next(d["device_id"] for d in devs if d["current"]))


def spk(key: SigningKey, key_id: int = 1) -> dict[str, Any]:
    pub = os.urandom(32)  # an X25519 public key, as far as the node can tell
    return {"id": key_id, "key": pub, "sig": key.sign(spk_message(key_id, pub)).signature}


def one_time(start: int, n: int) -> list[dict[str, Any]]:
    return [{"id": i, "key": os.urandom(32)} for i in range(start, start + n)]


async def code_of(coro: Any) -> str:
    try:
        await coro
    except RpcError as e:
        return e.code
    raise AssertionError("expected an error")


async def queue_rows(node: Node, where: str = "1", args: tuple[Any, ...] = ()) -> list[Any]:
    return await node.db.read(
        lambda c: c.execute(
            "SELECT device_id, kind, sender, sender_device, msg_id, payload IS NULL, acked, "
            f"count FROM secret_queue WHERE {where} ORDER BY qid",
            args,
        ).fetchall()
    )


async def no_update(c: Client, kind: str, wait: float = 0.3) -> None:
    """No update of type ``kind`` arrives within ``wait`` seconds (others are skipped)."""
    with trio.move_on_after(wait):
        while True:
            u = await c.next_update(wait + 1)
            assert u.get("type") != kind, u


@pytest.fixture
async def short_ttl_node(tmp_path: Path) -> AsyncIterator[Node]:
    async with Node.start(make_config(tmp_path / "n1", secret={"ttl": 1})) as n:
        yield n


# --- prekeys ------------------------------------------------------------------------------


async def test_publish_and_get_keys(node: Node) -> None:
    ka, kb, ka2 = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    async with device(node, "alice", ka) as a, device(node, "bob", kb) as b:
        assert await a.call("secret.keysLeft") == {"one_time_left": 0, "signed_prekey_id": None}
        # a device without keys is not offered to anyone
        assert (await b.call("secret.getKeys", {"user": "alice"}))["devices"] == []

        # the signed prekey must be signed by THIS device's key, over id and key
        forged = spk(kb, 7)
        assert (
            await code_of(a.call("secret.publishKeys", {"signed_prekey": forged}))
            == "SECRET_KEYS_INVALID"
        )
        good = spk(ka, 7)
        wrong_id = {**good, "id": 8}
        assert (
            await code_of(a.call("secret.publishKeys", {"signed_prekey": wrong_id}))
            == "SECRET_KEYS_INVALID"
        )
        assert await a.call("secret.keysLeft") == {"one_time_left": 0, "signed_prekey_id": None}

        otks = one_time(1, 3)
        r = await a.call("secret.publishKeys", {"signed_prekey": good, "one_time": otks})
        assert r == {"one_time_left": 3}
        assert await a.call("secret.keysLeft") == {"one_time_left": 3, "signed_prekey_id": 7}

        a_dev = await device_id(a)
        seen = []
        for _ in range(4):
            got = await b.call("secret.getKeys", {"user": "alice"})
            assert got["user"] == "alice@test"  # display form, like every address clients read
            [d] = got["devices"]
            assert d["device"] == a_dev and d["key"] == bytes(ka.verify_key)
            assert d["name"] == "dev"
            assert d["signed_prekey"] == good
            seen.append(d["one_time"])
        # each one-time prekey handed out once, oldest first; then none
        assert seen == [*otks, None]
        assert (await a.call("secret.keysLeft"))["one_time_left"] == 0

        # at most 500 kept: the oldest go
        for start in range(100, 700, 100):
            r = await a.call("secret.publishKeys", {"one_time": one_time(start, 100)})
        assert r == {"one_time_left": 500}
        got = await b.call("secret.getKeys", {"user": "alice@test"})
        assert got["devices"][0]["one_time"]["id"] == 200

        # a second device of alice with keys is listed; once revoked it is not
        async with device(node, "alice", ka2, "phone") as a2:
            await a2.call("secret.publishKeys", {"signed_prekey": spk(ka2, 1)})
            a2_dev = await device_id(a2)
        got = await b.call("secret.getKeys", {"user": "alice"})
        assert [d["device"] for d in got["devices"]] == [a_dev, a2_dev]
        assert got["devices"][1]["one_time"] is None
        await a.call("account.revokeDevice", {"device_id": a2_dev})
        got = await b.call("secret.getKeys", {"user": "alice"})
        assert [d["device"] for d in got["devices"]] == [a_dev]
        # its prekeys are gone from the database too
        left = await node.db.read(
            lambda c: c.execute(
                "SELECT (SELECT COUNT(*) FROM secret_keys WHERE device_id = ?) + "
                "(SELECT COUNT(*) FROM secret_one_time WHERE device_id = ?)",
                (a2_dev, a2_dev),
            ).fetchone()[0]
        )
        assert left == 0

        # federation's entry point answers the same, with the canonical address
        bundle = await node.secret.keys_for("alice")
        assert bundle["user"] == f"alice@{node.node_id}"
        assert [d["device"] for d in bundle["devices"]] == [a_dev]
        assert await code_of(node.secret.keys_for("nobody")) == "USER_NOT_FOUND"


async def test_concurrent_get_keys_never_share_a_one_time_prekey(node: Node) -> None:
    ka = SigningKey.generate()
    async with device(node, "alice", ka) as a:
        await a.call("secret.publishKeys", {"signed_prekey": spk(ka), "one_time": one_time(1, 30)})
        got: list[int | None] = []

        async def asker(b: Client) -> None:
            for _ in range(5):
                r = await b.call("secret.getKeys", {"user": "alice"})
                otk = r["devices"][0]["one_time"]
                got.append(None if otk is None else otk["id"])

        async with AsyncExitStack() as stack:
            askers = [
                await stack.enter_async_context(device(node, "bob", SigningKey.generate()))
                for _ in range(8)
            ]
            async with trio.open_nursery() as n:
                for b in askers:  # 40 asks for 30 keys, in parallel
                    n.start_soon(asker, b)
        taken = [i for i in got if i is not None]
        assert sorted(taken) == list(range(1, 31))
        assert got.count(None) == 10


# --- send / push / fetch / ack ------------------------------------------------------------


async def test_send_push_fetch_ack(node: Node) -> None:
    ka, kb, kb2 = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    async with (
        device(node, "alice", ka) as a,
        device(node, "bob", kb) as b,
        device(node, "bob", kb2, "phone") as b2,
    ):
        a_dev, b_dev = await device_id(a), await device_id(b)
        payload = os.urandom(1000)
        msg_id = secrets.randbits(63)
        params = {"to": "bob", "device": b_dev, "id": msg_id, "payload": payload}
        assert await a.call("secret.send", params) == {"id": msg_id, "state": "queued"}

        # pushed at once to the recipient device's session, not to bob's other device
        u = await next_of(b, "secret.item")
        assert u["kind"] == "message" and u["payload"] == payload
        assert (u["from"], u["device"], u["id"], u["count"]) == ("alice@test", a_dev, msg_id, 0)
        await no_update(b2, "secret.item")
        assert (await b2.call("secret.fetch"))["items"] == []

        # not through the update log: no pts for it
        updates = await node.db.read(
            lambda c: c.execute("SELECT COUNT(*) FROM user_updates").fetchone()
        )
        assert updates[0] == 0

        # a resend (lost reply) answers the same and queues nothing
        assert await a.call("secret.send", params) == {"id": msg_id, "state": "queued"}
        await no_update(b, "secret.item")
        items = (await b.call("secret.fetch", {"limit": 10}))["items"]
        assert [i["qid"] for i in items] == [u["qid"]]
        assert items[0] == {k: v for k, v in u.items() if k != "type"}

        # another device's ack does nothing; the recipient's deletes for good
        assert await b2.call("secret.ack", {"ids": [u["qid"]]}) == {"acked": 0}
        assert await b.call("secret.ack", {"ids": [u["qid"], u["qid"]]}) == {"acked": 1}
        assert await b.call("secret.ack", {"ids": [u["qid"]]}) == {"acked": 0}
        assert (await b.call("secret.fetch"))["items"] == []
        [row] = await queue_rows(node)
        assert row[5] == 1 and row[6] == 1  # payload gone, acknowledged
        # a resend after the ack is still recognised (not delivered twice)
        assert await a.call("secret.send", params) == {"id": msg_id, "state": "queued"}
        assert (await b.call("secret.fetch"))["items"] == []

    # offline: queued, fetched after the device comes back, oldest first
    async with device(node, "alice", ka) as a:
        ids = [secrets.randbits(63) for _ in range(3)]
        for i in ids:
            await a.call(
                "secret.send", {"to": "bob", "device": b_dev, "id": i, "payload": i.to_bytes(8)}
            )
    async with device(node, "bob", kb) as b:
        items = (await b.call("secret.fetch"))["items"]
        assert [i["id"] for i in items] == ids
        assert [i["payload"] for i in items] == [i.to_bytes(8) for i in ids]
        assert await b.call("secret.ack", {"ids": [i["qid"] for i in items]}) == {"acked": 3}
        assert (await b.call("secret.fetch"))["items"] == []


async def test_fetch_reply_stays_under_the_frame_cap(node: Node) -> None:
    ka, kb = SigningKey.generate(), SigningKey.generate()
    async with device(node, "alice", ka) as a, device(node, "bob", kb) as b:
        b_dev = await device_id(b)
        for i in range(1, 21):  # 20 x 64 KiB: more than one reply can carry
            await a.call(
                "secret.send",
                {"to": "bob", "device": b_dev, "id": i, "payload": os.urandom(65536)},
            )
        got: list[int] = []
        while items := (await b.call("secret.fetch", {"limit": 1000}))["items"]:
            assert 0 < len(items) < 20
            got += [i["id"] for i in items]
            await b.call("secret.ack", {"ids": [i["qid"] for i in items]})
        assert got == list(range(1, 21))


async def test_queue_is_bounded(tmp_path: Path) -> None:
    async with Node.start(make_config(tmp_path / "n1", secret={"queue_max": 3})) as node:
        ka, kb = SigningKey.generate(), SigningKey.generate()
        async with device(node, "alice", ka) as a, device(node, "bob", kb) as b:
            b_dev = await device_id(b)

            def send(i: int) -> Any:
                return a.call(
                    "secret.send", {"to": "bob", "device": b_dev, "id": i, "payload": b"x"}
                )

            for i in (1, 2, 3):
                await send(i)
            assert await code_of(send(4)) == "SECRET_QUEUE_FULL"
            assert await send(3) == {"id": 3, "state": "queued"}  # a resend still answers
            first = (await b.call("secret.fetch", {"limit": 1}))["items"][0]
            await b.call("secret.ack", {"ids": [first["qid"]]})
            assert await send(4) == {"id": 4, "state": "queued"}
            assert await code_of(send(5)) == "SECRET_QUEUE_FULL"
            # the federation path answers the same per item
            [res] = await node.secret.deliver([remote_item(node, b_dev, 99)])
            assert res == {"error": "SECRET_QUEUE_FULL"}


# --- TTL ----------------------------------------------------------------------------------


async def test_ttl_expiry_tells_both_sides(short_ttl_node: Node) -> None:
    node = short_ttl_node
    ka, kb = SigningKey.generate(), SigningKey.generate()
    async with device(node, "bob", kb) as b:
        b_dev = await device_id(b)
    async with device(node, "alice", ka) as a:
        a_dev = await device_id(a)
        start = trio.current_time()
        for i in (11, 12):
            await a.call(
                "secret.send", {"to": "bob", "device": b_dev, "id": i, "payload": os.urandom(64)}
            )
        # the sender hears at once when the TTL (1 s) runs out, with the count
        u = await next_of(a, "secret.item", timeout=5)
        assert trio.current_time() - start < 3
        assert (u["kind"], u["from"], u["device"], u["count"]) == ("expired", "bob@test", b_dev, 2)
        assert u["payload"] == b""
    # the recipient finds one notice on its return, and nothing else
    async with device(node, "bob", kb) as b:
        items = (await b.call("secret.fetch"))["items"]
        assert [(i["kind"], i["from"], i["device"], i["id"], i["count"]) for i in items] == [
            ("expired", "alice@test", a_dev, 12, 2)
        ]
        await b.call("secret.ack", {"ids": [items[0]["qid"]]})
    assert await queue_rows(node, "kind = 'message'") == []
    # what still waits: alice's notice (she saw the push but did not acknowledge it)
    assert [(r[0], r[1]) for r in await queue_rows(node, "acked = 0")] == [(a_dev, "expired")]
    # a message from another node's user expires too: its notice to that node needs
    # federation, which this node lacks (FEDERATION_OFF, ignored); the sweep goes on
    [res] = await node.secret.deliver([remote_item(node, b_dev, 5, expires_in=0.2)])
    assert res == {"ok": True}
    with trio.fail_after(5):
        while await queue_rows(node, "kind = 'message'"):
            await trio.sleep(0.05)
    async with device(node, "bob", kb) as b:
        items = (await b.call("secret.fetch"))["items"]
        assert [(i["kind"], i["device"], i["count"]) for i in items] == [("expired", 4, 1)]
        assert items[0]["from"].startswith("carol@")


# --- revocation ---------------------------------------------------------------------------


async def test_revoked_device_ends_its_chats(node: Node) -> None:
    ka, kb, kb2 = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    async with (
        device(node, "alice", ka) as a,
        device(node, "bob", kb) as b,
        device(node, "bob", kb2, "phone") as b2,
    ):
        a_dev, b_dev = await device_id(a), await device_id(b)
        await b.call("secret.publishKeys", {"signed_prekey": spk(kb), "one_time": one_time(1, 5)})
        await a.call("secret.send", {"to": "bob", "device": b_dev, "id": 1, "payload": b"hi"})
        await b.call("secret.send", {"to": "alice", "device": a_dev, "id": 2, "payload": b"yo"})
        # a remote peer of bob's device (a chat through federation, known from its envelope)
        [res] = await node.secret.deliver([remote_item(node, b_dev, 3)])
        assert res == {"ok": True}

        assert (await next_of(a, "secret.item"))["kind"] == "message"
        await b2.call("account.revokeDevice", {"device_id": b_dev})
        u = await next_of(a, "secret.item")
        assert (u["kind"], u["from"], u["device"], u["id"]) == ("revoked", "bob@test", b_dev, 0)
        await b.wait_closed()
    # nothing of the revoked device is left: queue, prekeys, contacts
    left = await node.db.read(
        lambda c: [
            c.execute(f"SELECT COUNT(*) FROM {t} WHERE device_id = ?", (b_dev,)).fetchone()[0]
            for t in ("secret_queue", "secret_keys", "secret_one_time", "secret_contacts")
        ]
    )
    assert left == [0, 0, 0, 0]
    async with device(node, "alice", ka) as a:
        code = await code_of(
            a.call("secret.send", {"to": "bob", "device": b_dev, "id": 9, "payload": b"?"})
        )
        assert code == "SECRET_DEVICE_GONE"
        # federation is told the same for envelopes to it
        [res] = await node.secret.deliver([remote_item(node, b_dev, 4)])
        assert res == {"error": "SECRET_DEVICE_GONE"}
        # the notice waits in alice's queue like any item and is acknowledged the same way
        items = (await a.call("secret.fetch"))["items"]
        assert [i["kind"] for i in items] == ["message", "revoked"]
        assert (await a.call("secret.ack", {"ids": [i["qid"] for i in items]}))["acked"] == 2
        assert (await a.call("secret.fetch"))["items"] == []


async def test_logout_and_user_removal_tell_peers(node: Node) -> None:
    ka, kb, kc = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    async with device(node, "alice", ka) as a, device(node, "bob", kb) as b:
        a_dev, b_dev = await device_id(a), await device_id(b)
        await a.call("secret.send", {"to": "bob", "device": b_dev, "id": 1, "payload": b"x"})
        await b.call("auth.logOut")
        u = await next_of(a, "secret.item")
        assert (u["kind"], u["device"]) == ("revoked", b_dev)
        async with device(node, "carol", kc) as c:
            c_dev = await device_id(c)
            await c.call("secret.send", {"to": "alice", "device": a_dev, "id": 5, "payload": b"y"})
        await admin(node, "admin.userRemove", {"name": "carol"})
        items = (await a.call("secret.fetch"))["items"]
        assert [(i["kind"], i["from"], i["device"]) for i in items][-1] == (
            "revoked",
            "carol@test",
            c_dev,
        )


async def test_sweep_cleans_up_after_a_lost_revocation(node: Node) -> None:
    """A device revoked while its clean-up could not run (a crash right after the commit)
    is found by the sweep: its rows go and its peers are told all the same."""
    ka, kb = SigningKey.generate(), SigningKey.generate()
    async with device(node, "alice", ka) as a, device(node, "bob", kb) as b:
        a_dev, b_dev = await device_id(a), await device_id(b)
        await b.call("secret.publishKeys", {"signed_prekey": spk(kb), "one_time": one_time(1, 2)})
        await b.call("secret.send", {"to": "alice", "device": a_dev, "id": 1, "payload": b"x"})
        assert (await next_of(a, "secret.item"))["kind"] == "message"
        await node.db.write(
            lambda c: c.execute("UPDATE devices SET revoked = ? WHERE id = ?", (time.time(), b_dev))
        )
        node.secret._backstop_at = 0.0  # due now, not a minute after the last one
        await node.secret.sweep(time.time())
        u = await next_of(a, "secret.item")
        assert (u["kind"], u["device"]) == ("revoked", b_dev)
        assert (await b.call("secret.keysLeft"))["one_time_left"] == 0
        assert await node.db.read(store.revoked_with_data) == []


# --- federation's entry point -------------------------------------------------------------

FAR = "b" * 32  # a node id this node does not know


def remote_item(node: Node, device: int, msg_id: int, **over: Any) -> dict[str, Any]:
    """An item as federation hands it over: from carol of a node this one does not know."""
    expires_in = over.pop("expires_in", 3600.0)
    return {
        "to": f"bob@{node.node_id}",
        "device": device,
        "from": f"carol@{FAR}",
        "from_device": 4,
        "id": msg_id,
        "payload": os.urandom(48),
        "kind": "message",
        "sent": time.time(),
        "expires": time.time() + expires_in,
        "hops": 2,
        **over,
    }


async def test_deliver(node: Node) -> None:
    kb = SigningKey.generate()
    async with device(node, "bob", kb) as b:
        b_dev = await device_id(b)
        good = remote_item(node, b_dev, 77)
        failed = remote_item(node, b_dev, 78, kind="failed", payload=b"")
        results = await node.secret.deliver(
            [
                good,
                good,  # the same envelope twice (a retry): one row
                failed,
                remote_item(node, b_dev + 100, 79),
                remote_item(node, b_dev, 80, to=f"bob@{FAR}"),
                {**remote_item(node, b_dev, 81), "payload": "text"},
                {"to": 5},
                remote_item(node, b_dev, 82, payload=os.urandom(65537)),
                remote_item(node, b_dev, 83, kind="hello"),
                remote_item(node, b_dev, 0),
                remote_item(node, b_dev, 84, sent=float("nan")),
                remote_item(node, b_dev, 85, **{"from": f"carol@{FAR}", "count": 1, "to": None}),
            ]
        )
        assert results == [
            {"ok": True},
            {"ok": True},
            {"ok": True},
            {"error": "SECRET_DEVICE_GONE"},
            {"error": "SECRET_NO_ROUTE"},
            {"error": "PARAMS_INVALID"},
            {"error": "PARAMS_INVALID"},
            {"error": "PARAMS_INVALID"},
            {"error": "PARAMS_INVALID"},
            {"error": "PARAMS_INVALID"},
            {"error": "PARAMS_INVALID"},
            {"error": "PARAMS_INVALID"},
        ]
        first = await next_of(b, "secret.item")
        assert (first["kind"], first["id"], first["payload"]) == ("message", 77, good["payload"])
        assert first["from"] == f"carol@{FAR}"  # an unknown node: shown by its id
        second = await next_of(b, "secret.item")
        assert (second["kind"], second["id"], second["payload"]) == ("failed", 78, b"")
        await no_update(b, "secret.item")
        items = (await b.call("secret.fetch"))["items"]
        assert [i["id"] for i in items] == [77, 78]


# --- boundary -----------------------------------------------------------------------------


async def test_bad_input_gets_stable_codes(node: Node) -> None:
    ka, kb = SigningKey.generate(), SigningKey.generate()
    async with device(node, "alice", ka) as a, device(node, "bob", kb) as b:
        b_dev = await device_id(b)
        ok = {"to": "bob", "device": b_dev, "id": 1, "payload": b"x"}
        cases: list[tuple[str, dict[str, Any], str]] = [
            ("secret.send", {**ok, "to": 5}, "PARAMS_INVALID"),
            ("secret.send", {**ok, "payload": "text"}, "PARAMS_INVALID"),
            ("secret.send", {**ok, "payload": b""}, "PARAMS_INVALID"),
            ("secret.send", {**ok, "payload": os.urandom(65537)}, "PARAMS_INVALID"),
            ("secret.send", {**ok, "id": 0}, "PARAMS_INVALID"),
            ("secret.send", {**ok, "id": 2**63}, "PARAMS_INVALID"),
            ("secret.send", {**ok, "device": True}, "PARAMS_INVALID"),
            ("secret.send", {**ok, "extra": 1}, "PARAMS_INVALID"),
            ("secret.send", {**ok, "device": b_dev + 50}, "SECRET_DEVICE_GONE"),
            ("secret.send", {**ok, "to": "nobody"}, "USER_NOT_FOUND"),
            ("secret.send", {**ok, "to": "bob@nowhere"}, "PEER_UNKNOWN"),
            ("secret.send", {**ok, "to": "not an address!"}, "USER_NOT_FOUND"),
            ("secret.send", {**ok, "to": f"bob@{FAR}"}, "FEDERATION_OFF"),
            ("secret.getKeys", {"user": f"bob@{FAR}"}, "FEDERATION_OFF"),
            ("secret.getKeys", {"user": "nobody"}, "USER_NOT_FOUND"),
            ("secret.getKeys", {"user": ["bob"]}, "PARAMS_INVALID"),
            ("secret.publishKeys", {"one_time": one_time(1, 101)}, "PARAMS_INVALID"),
            ("secret.publishKeys", {"one_time": [{"id": 1, "key": b"short"}]}, "PARAMS_INVALID"),
            ("secret.publishKeys", {"signed_prekey": {"id": 1, "key": b"k"}}, "PARAMS_INVALID"),
            ("secret.fetch", {"limit": 0}, "PARAMS_INVALID"),
            ("secret.fetch", {"limit": "all"}, "PARAMS_INVALID"),
            ("secret.ack", {"ids": "1"}, "PARAMS_INVALID"),
            ("secret.ack", {"ids": [-1]}, "PARAMS_INVALID"),
            ("secret.ack", {}, "PARAMS_INVALID"),
        ]
        for method, params, code in cases:
            assert await code_of(a.call(method, params)) == code, (method, params)
        # nothing of it was queued, and the node serves on
        assert (await b.call("secret.fetch"))["items"] == []
        assert await a.call("secret.send", ok) == {"id": 1, "state": "queued"}
        assert (await b.call("secret.fetch"))["items"][0]["payload"] == b"x"
    # every secret.* method needs a signed-in device
    async with Client.connect(node.url) as anon:
        for method in ("secret.keysLeft", "secret.fetch"):
            assert await code_of(anon.call(method, {})) == "AUTH_REQUIRED"
        assert (await anon.call("system.ping", {}))["time"] > 0


# --- opacity ------------------------------------------------------------------------------


async def test_payloads_never_in_files_or_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Random payloads are queued, fetched and acknowledged: afterwards none of their bytes
    is in the database file or its WAL, and no log line ever carried one (at debug level)."""
    caplog.set_level(logging.DEBUG)
    data = tmp_path / "n1"
    payloads = [os.urandom(300 + 97 * i) for i in range(40)]
    async with Node.start(make_config(data, node={"log_level": "debug"})) as node:
        ka, kb = SigningKey.generate(), SigningKey.generate()
        async with device(node, "alice", ka) as a, device(node, "bob", kb) as b:
            b_dev = await device_id(b)
            for i, p in enumerate(payloads, 1):
                await a.call("secret.send", {"to": "bob", "device": b_dev, "id": i, "payload": p})
            items = (await b.call("secret.fetch", {"limit": 1000}))["items"]
            assert [i["payload"] for i in items] == payloads
            acked = await b.call("secret.ack", {"ids": [i["qid"] for i in items]})
            assert acked == {"acked": len(payloads)}
            # only the queue ever held them: no event, no update-log entry
            counts = await node.db.read(
                lambda c: [
                    c.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                    for t in ("events", "user_updates", "events_fts")
                ]
            )
            assert counts == [0, 0, 0]

        # acknowledged = deleted for good: the rows' bytes are zeroed and the node's
        # compaction truncates the WAL that still held the pages as they were
        def leftovers() -> list[int]:
            blob = b""
            for name in ("fedgram.db", "fedgram.db-wal"):
                path = data / name
                if path.exists():
                    blob += path.read_bytes()
            return [i for i, p in enumerate(payloads) if p[:64] in blob]

        with trio.fail_after(15):
            while leftovers():
                await trio.sleep(0.1)
    assert leftovers() == []
    text = caplog.text.encode()
    logged = "\n".join(repr(r.__dict__) for r in caplog.records).encode()
    for p in payloads:
        for form in (p[:32], p[:32].hex().encode(), repr(p[:32])[2:-1].encode()):
            assert form not in text and form not in logged
    assert any("secret." in r.getMessage() for r in caplog.records)  # it did log, by size
    conn = sqlite3.connect(data / "fedgram.db")
    try:
        kept = conn.execute("SELECT COUNT(*) FROM secret_queue WHERE payload IS NOT NULL")
        assert kept.fetchone()[0] == 0
    finally:
        conn.close()


async def test_waiting_counts_survive_the_upgrade_from_secret_schema_1(tmp_path: Path) -> None:
    """A database made with the first secret schema gets its per-device counts computed by
    migration 2, and the triggers keep them from then on."""
    path = tmp_path / "old.db"
    v1 = Schema("secret", store.SCHEMA.migrations[:1])
    async with Database.open(path, schemas=[v1]) as db:

        def fill(c: sqlite3.Connection) -> None:
            c.execute("UPDATE nodes SET fingerprint = ?, public_key = x'00'", ("a" * 32,))
            c.execute("INSERT INTO users(node, name, created) VALUES (1, 'bob', 0)")
            c.execute(
                "INSERT INTO devices(user_id, public_key, name, created, last_seen) "
                "VALUES (1, x'01', 'd', 0, 0)"
            )
            for i in (1, 2, 3):
                store.queue_put(c, 1, "message", "x@y", 1, i, b"p", 0.0, 1e12)
            c.execute("UPDATE secret_queue SET acked = 1 WHERE msg_id = 1")

        await db.write(fill)
    async with Database.open(path, schemas=[store.SCHEMA]) as db:
        assert await db.read(lambda c: store.waiting(c, 1)) == 2
        await db.write(lambda c: store.ack(c, 1, [2]))
        await db.write(lambda c: store.queue_put(c, 1, "message", "x@y", 1, 9, b"p", 0.0, 1e12))
        assert await db.read(lambda c: store.waiting(c, 1)) == 2
        await db.write(lambda c: store.drop_device(c, 1))
        assert await db.read(lambda c: store.waiting(c, 1)) == 0
