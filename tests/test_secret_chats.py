"""Secret chats through the real SDK (``SecretChats``) against real in-process nodes: request,
accept, devices racing to accept, many messages, self-destruct, delete-for-both, close,
fingerprints, a file, history across an SDK restart, and envelopes that must be rejected.

Everything is real: the node's ``secret.*`` queues, the WebSocket sessions, the crypto and
each device's ``secret.db`` in its own profile folder."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio
from nacl.signing import SigningKey

from node.app import Node
from node.client import Client, ErrorCode, RpcError
from node.client.secret import ratchet
from node.client.secret.chats import SecretChatError, SecretChats
from tests.conftest import make_config
from tests.helpers import add_user, admin, fresh_code


@dataclass
class Device:
    """One signed-in device of a user: its key, profile folder, session and secret chats."""

    name: str
    key: SigningKey
    profile: Path
    client: Client
    sc: SecretChats
    backlog: list[dict[str, Any]] = field(default_factory=list)


async def _users(node: Node) -> set[str]:
    return {u["name"] for u in (await admin(node, "admin.userList"))["users"]}


@asynccontextmanager
async def device(
    node: Node, name: str, profile: Path, key: SigningKey | None = None, dev: str = "dev"
) -> AsyncIterator[Device]:
    """A device of NAME (signed in anew, or resumed with ``key``) with its SecretChats."""
    if name not in await _users(node):
        await add_user(node, name)
    async with Client.connect(node.url) as c:
        if key is None:
            key = SigningKey.generate()
            await c.sign_in(name, await fresh_code(node, name), key, dev)
        else:
            await c.authorize(key)
        sc = SecretChats(c, profile, key)
        await sc.ensure_keys()
        try:
            yield Device(name, key, profile, c, sc)
        finally:
            sc.close_store()


async def wait_for(d: Device, kind: str, timeout: float = 10) -> dict[str, Any]:
    """The next event of ``kind``: syncing until one shows (bounded); the events passed
    over wait in the device's backlog for later calls."""
    with trio.fail_after(timeout):
        while True:
            for i, ev in enumerate(d.backlog):
                if ev["type"] == kind:
                    return d.backlog.pop(i)
            await d.sc.sync()
            d.backlog.extend(d.sc.pending_events())
            if not any(ev["type"] == kind for ev in d.backlog):
                await trio.sleep(0.02)


async def pair(a: Device, b: Device, ttl: int | None = None) -> str:
    """A started and accepted chat from ``a`` to ``b``."""
    chat = await a.sc.start(b.name, ttl=ttl)
    ev = await wait_for(b, "request")
    assert ev["chat"] == chat
    await b.sc.accept(chat)
    assert (await wait_for(a, "accepted"))["chat"] == chat
    return chat


@pytest.fixture
async def snode(tmp_path: Path) -> AsyncIterator[Node]:
    cfg = make_config(tmp_path / "n1", media={"part_max_bytes": 64 * 1024})
    async with Node.start(cfg) as n:
        yield n


async def test_chat_between_two_users(snode: Node, tmp_path: Path) -> None:
    async with (
        device(snode, "alice", tmp_path / "alice") as a,
        device(snode, "bob", tmp_path / "bob") as b,
    ):
        chat = await a.sc.start("bob")
        assert a.sc.chat(chat)["state"] == "requested"
        # usable at once: written before bob has even seen the request
        early = await a.sc.send(chat, "before you accept")
        assert early["state"] == "sent"

        req = await wait_for(b, "request")
        assert req["chat"] == chat and req["peer"].startswith("alice@")
        assert b.sc.chat(chat)["state"] == "incoming"
        with pytest.raises(SecretChatError, match="accept it first"):
            await b.sc.send(chat, "too soon")
        await b.sc.accept(chat)
        assert (await wait_for(a, "accepted"))["device"] == b.sc.device_id
        assert a.sc.chat(chat)["state"] == "active"

        m = await b.sc.send(chat, "hi alice")
        got = await wait_for(a, "message")
        assert got["message"]["text"] == "hi alice" and got["message"]["id"] == m["id"]
        assert [x["text"] for x in b.sc.history(chat)] == ["before you accept", "hi alice"]
        assert [x["out"] for x in b.sc.history(chat)] == [False, True]

        # receipts: delivered when fetched, read when the user reads
        assert (await wait_for(b, "delivered"))["ids"] == [m["id"]]
        await a.sc.mark_read(chat)
        assert (await wait_for(b, "read"))["ids"] == [m["id"]]
        assert b.sc.history(chat)[-1]["state"] == "read"

        # both devices show the same safety number
        assert a.sc.verify(chat) == b.sc.verify(chat)
        assert len(a.sc.verify(chat).split()) == 12

        # typing reaches the other side as an event, and is stored nowhere
        await a.sc.typing(chat)
        assert (await wait_for(b, "typing"))["chat"] == chat
        assert len(b.sc.history(chat)) == 2

        listed = a.sc.list()
        assert [(d["id"], d["state"]) for d in listed] == [(chat, "active")]
        assert listed[0]["peer"].startswith("bob@") and listed[0]["last"]["text"] == "hi alice"


async def test_request_to_two_devices_first_to_accept_binds(snode: Node, tmp_path: Path) -> None:
    async with (
        device(snode, "alice", tmp_path / "alice") as a,
        device(snode, "bob", tmp_path / "bob-phone", dev="phone") as phone,
        device(snode, "bob", tmp_path / "bob-laptop", dev="laptop") as laptop,
    ):
        chat = await a.sc.start("bob")
        await a.sc.send(chat, "for whichever device takes it")
        assert (await wait_for(phone, "request"))["chat"] == chat
        assert (await wait_for(laptop, "request"))["chat"] == chat
        # both saw the message sent before the accept
        assert [m["text"] for m in laptop.sc.history(chat)] == ["for whichever device takes it"]

        await phone.sc.accept(chat)
        ev = await wait_for(a, "accepted")
        assert ev["device"] == phone.sc.device_id and ev["others"] == [laptop.sc.device_id]

        # the laptop is told: the request is taken elsewhere, its copy is gone
        assert (await wait_for(laptop, "taken"))["chat"] == chat
        assert laptop.sc.chat(chat)["state"] == "taken"
        assert laptop.sc.history(chat) == []
        with pytest.raises(SecretChatError):
            await laptop.sc.accept(chat)

        # from now on only the phone gets the chat
        phone.backlog.clear()
        await a.sc.send(chat, "just the phone")
        assert (await wait_for(phone, "message"))["message"]["text"] == "just the phone"
        await trio.sleep(0.1)
        assert not [e for e in await laptop.sc.sync() if e["type"] == "message"]
        assert a.sc.verify(chat) == phone.sc.verify(chat)


async def test_many_messages_round_trip(snode: Node, tmp_path: Path) -> None:
    """300 messages in order, all acknowledged and receipted (1,000 across two tapped
    nodes: tests/test_secret_wire.py)."""
    async with (
        device(snode, "alice", tmp_path / "alice") as a,
        device(snode, "bob", tmp_path / "bob") as b,
    ):
        chat = await pair(a, b)
        n = 300
        started = time.monotonic()
        got: list[str] = []
        async with trio.open_nursery() as nursery:
            await nursery.start(b.sc.listen)
            for i in range(n):
                await a.sc.send(chat, f"message {i}")
            with trio.fail_after(60):
                while len(got) < n:
                    ev = await b.sc.next_event(30)
                    if ev["type"] == "message":
                        got.append(ev["message"]["text"])
            nursery.cancel_scope.cancel()
        elapsed = time.monotonic() - started
        assert got == [f"message {i}" for i in range(n)]
        assert len(b.sc.history(chat)) == n
        assert elapsed < 60, f"{n} secret messages took {elapsed:.1f}s"
        # stopping the listener may cut its last batch short after the commit: the ack
        # and the receipt are done by the next sync (the batch is not shown twice)
        assert [e for e in await b.sc.sync() if e["type"] == "message"] == []
        # the node's queue for bob is empty: everything was acknowledged
        assert (await b.client.call("secret.fetch", {"limit": 10}))["items"] == []
        # alice sees them delivered (the receipts are batched)
        with trio.fail_after(20):
            while any(m["state"] != "delivered" for m in a.sc.history(chat)):
                await a.sc.sync()
                await trio.sleep(0.05)
    # none of the texts is anywhere in the node's folder (database, WAL, media)
    unique = [f"message {i}".encode() for i in (0, 1, 10, 100, 200, 299)]
    for p in snode.config.data_dir.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert not any(u in data for u in unique), p


async def test_self_destruct_after_reading(snode: Node, tmp_path: Path) -> None:
    async with (
        device(snode, "alice", tmp_path / "alice") as a,
        device(snode, "bob", tmp_path / "bob") as b,
    ):
        chat = await pair(a, b)
        m = await a.sc.send(chat, "burn after reading", ttl=1)
        keep = await a.sc.send(chat, "no timer")
        await wait_for(b, "message")
        await trio.sleep(1.3)
        # unread: the countdown has not started on either side
        assert [x["text"] for x in b.sc.history(chat)] == ["burn after reading", "no timer"]
        read_at = time.time()
        assert await b.sc.mark_read(chat) == [m["id"], keep["id"]]
        assert (await wait_for(a, "read"))["ids"] == [m["id"], keep["id"]]
        theirs = b.sc.history(chat)[0]
        assert theirs["delete_at"] == pytest.approx(read_at + 1, abs=0.5)
        await trio.sleep(1.3)
        for d in (a, b):
            hist = d.sc.history(chat)
            assert hist[0]["state"] == "deleted" and hist[0]["text"] is None
            assert hist[1]["text"] == "no timer"
        # the text is gone from the device's files too (zeroed, the WAL truncated)
        for d in (a, b):
            for f in d.profile.glob("secret.db*"):
                assert b"burn after reading" not in f.read_bytes(), f


async def test_delete_for_both_and_close(snode: Node, tmp_path: Path) -> None:
    async with (
        device(snode, "alice", tmp_path / "alice") as a,
        device(snode, "bob", tmp_path / "bob") as b,
    ):
        chat = await pair(a, b)
        m1 = await a.sc.send(chat, "regrettable")
        await a.sc.send(chat, "fine")
        await wait_for(b, "message")
        await b.sc.delete_for_both(chat, m1["id"])  # either side may delete
        assert (await wait_for(a, "deleted"))["ids"] == [m1["id"]]
        for d in (a, b):
            first = d.sc.history(chat)[0]
            assert (first["state"], first["text"]) == ("deleted", None)
            for f in d.profile.glob("secret.db*"):
                assert b"regrettable" not in f.read_bytes(), f

        await a.sc.close(chat)
        assert a.sc.chat(chat)["state"] == "closed"
        assert (await wait_for(b, "closed"))["chat"] == chat
        assert b.sc.chat(chat)["state"] == "closed"
        for d in (a, b):
            with pytest.raises(SecretChatError, match="closed"):
                await d.sc.send(chat, "anyone there?")
            assert d.sc.store.chat(chat).session is None  # type: ignore[union-attr]
            assert d.sc.history(chat)[1]["text"] == "fine"  # the history stays


async def test_file_round_trip_node_holds_only_ciphertext(snode: Node, tmp_path: Path) -> None:
    secret_bytes = b"TOP-SECRET-FILE-CONTENT " * 20_000  # ~480 KB: several parts
    src = tmp_path / "plans.txt"
    src.write_bytes(secret_bytes)
    async with (
        device(snode, "alice", tmp_path / "alice") as a,
        device(snode, "bob", tmp_path / "bob") as b,
    ):
        chat = await pair(a, b)
        m = await a.sc.send_file(chat, src)
        assert m["file"]["name"] == "plans.txt" and "meta" not in m["file"]
        ev = await wait_for(b, "message")
        assert ev["message"]["kind"] == "file" and ev["message"]["file"]["size"] == len(
            secret_bytes
        )
        # what bob's device holds is the key to the bytes alice uploaded: the uploader
        # fetches the ciphertext through the media path and opens it with bob's copy
        theirs = b.sc.store.find_message(chat, m["id"])
        mine = a.sc.store.find_message(chat, m["id"])
        assert theirs is not None and mine is not None and theirs["file"] == mine["file"]
        out = tmp_path / "copy.txt"
        assert await a.sc.download(chat, m["id"], out) == len(secret_bytes)
        assert out.read_bytes() == secret_bytes
        assert out.stat().st_mode & 0o077 == 0  # owner-only, like the profile
        assert await a.sc.download_bytes(chat, m["id"]) == secret_bytes
        assert list((a.profile / "secret-files").iterdir()) == []  # nothing left in transit
        info = await a.client.call("media.info", {"media_id": m["file"]["media_id"]})
        assert info["name"] == "" and info["mime"] == "application/octet-stream"
    # the node's folder (database, WAL, media) holds none of the plaintext
    needle = b"TOP-SECRET-FILE-CONTENT"
    checked = 0
    for p in snode.config.data_dir.rglob("*"):
        if p.is_file():
            checked += 1
            assert needle not in p.read_bytes(), p
    assert checked > 2


async def test_history_survives_an_sdk_restart(snode: Node, tmp_path: Path) -> None:
    async with device(snode, "alice", tmp_path / "alice") as a:
        async with device(snode, "bob", tmp_path / "bob") as b:
            chat = await pair(a, b)
            await a.sc.send(chat, "one")
            await wait_for(b, "message")
            bob_key = b.key
        # bob's device is offline: messages wait on the node, ciphertext only
        await a.sc.send(chat, "two")
        await a.sc.send(chat, "three", ttl=60)
        async with device(snode, "bob", tmp_path / "bob", key=bob_key) as b2:
            assert [m["text"] for m in b2.sc.history(chat)] == ["one"]
            await b2.sc.sync()
            assert [m["text"] for m in b2.sc.history(chat)] == ["one", "two", "three"]
            assert b2.sc.chat(chat)["state"] == "active"
            await b2.sc.send(chat, "back")
            assert (await wait_for(a, "message"))["message"]["text"] == "back"
            assert a.sc.verify(chat) == b2.sc.verify(chat)


async def test_tampered_and_replayed_envelopes_are_reported_not_shown(
    snode: Node, tmp_path: Path
) -> None:
    async with (
        device(snode, "alice", tmp_path / "alice") as a,
        device(snode, "bob", tmp_path / "bob") as b,
    ):
        chat = await pair(a, b)
        await a.sc.send(chat, "genuine")
        await wait_for(b, "message")
        row = a.sc.store.chat(chat)
        assert row is not None and row.session is not None and row.peer_device is not None
        # an envelope made with (a copy of) alice's session, then altered in one byte
        s = ratchet.Session.from_bytes(row.session)
        env = s.encrypt(cbor2.dumps({"t": "text", "m": 42, "text": "forged"}))
        bad = bytearray(env)
        bad[-5] ^= 0x01
        await a.client.call(
            "secret.send", {"to": row.peer, "device": row.peer_device, "id": 1001,
                            "payload": bytes(bad)},
        )  # fmt: skip
        ev = await wait_for(b, "error")
        assert ev["error"] == "SECRET_TAMPERED" and ev["id"] == 1001
        # not an envelope at all
        await a.client.call(
            "secret.send",
            {"to": row.peer, "device": row.peer_device, "id": 1002, "payload": b"garbage"},
        )
        assert (await wait_for(b, "error"))["error"] == "SECRET_TAMPERED"
        # the genuine envelope, then the same again under another id: a replay
        for env_id in (1003, 1004):
            await a.client.call(
                "secret.send",
                {"to": row.peer, "device": row.peer_device, "id": env_id, "payload": env},
            )
        ok = await wait_for(b, "message")
        assert ok["message"]["text"] == "forged" and ok["message"]["id"] == 42
        assert (await wait_for(b, "error"))["error"] == "SECRET_REPLAYED"
        # one from too far ahead (more than the ratchet's window of skipped messages)
        ahead = ratchet.Session.from_bytes(row.session)
        for _ in range(ratchet.MAX_SKIP + 5):
            far = ahead.encrypt(cbor2.dumps({"t": "text", "m": 43, "text": "from the future"}))
        await a.client.call(
            "secret.send",
            {"to": row.peer, "device": row.peer_device, "id": 1005, "payload": far},
        )
        assert (await wait_for(b, "error"))["error"] == "SECRET_OUT_OF_WINDOW"
        texts = [m["text"] for m in b.sc.history(chat)]
        assert texts == ["genuine", "forged"]  # the altered and replayed ones never show
        assert (await b.client.call("secret.fetch", {}))["items"] == []  # all acknowledged

        # the other way: the initiator (whose request had a session per device) also
        # catches a replay of an envelope from the device it bound
        brow = b.sc.store.chat(chat)
        assert brow is not None and brow.session is not None and brow.peer_device is not None
        back = ratchet.Session.from_bytes(brow.session).encrypt(
            cbor2.dumps({"t": "text", "m": 77, "text": "once only"})
        )
        for env_id in (2001, 2002):
            await b.client.call(
                "secret.send",
                {"to": brow.peer, "device": brow.peer_device, "id": env_id, "payload": back},
            )
        assert (await wait_for(a, "message"))["message"]["text"] == "once only"
        assert (await wait_for(a, "error"))["error"] == "SECRET_REPLAYED"
        assert [m["text"] for m in a.sc.history(chat)] == ["genuine", "once only"]


async def test_an_item_delivered_again_is_acknowledged_quietly(snode: Node, tmp_path: Path) -> None:
    """A crash between our commit and our ack makes the node deliver an item again: it was
    recorded, so it is neither shown twice nor reported as a replay."""
    async with (
        device(snode, "alice", tmp_path / "alice") as a,
        device(snode, "bob", tmp_path / "bob") as b,
    ):
        chat = await pair(a, b)
        await a.sc.send(chat, "once")
        with trio.fail_after(10):
            while not (items := (await b.client.call("secret.fetch", {}))["items"]):
                await trio.sleep(0.02)
        events = await b.sc.process(items)
        assert [e["type"] for e in events] == ["message"]
        assert await b.sc.process(items) == []
        assert [m["text"] for m in b.sc.history(chat)] == ["once"]


async def test_start_with_a_user_without_keys_is_refused(snode: Node, tmp_path: Path) -> None:
    await add_user(snode, "carol")  # never opened secret chats: no prekeys published
    async with device(snode, "alice", tmp_path / "alice") as a:
        with pytest.raises(SecretChatError, match="no device"):
            await a.sc.start("carol")
        with pytest.raises(RpcError):
            await a.sc.start("nobody_here")
        assert a.sc.list() == []


async def test_recipient_downloads_a_secret_file(snode: Node, tmp_path: Path) -> None:
    src = tmp_path / "photo.bin"
    src.write_bytes(b"\x89PNG secret pixels" * 50_000)  # ~1 MB: several parts and chunks
    async with (
        device(snode, "alice", tmp_path / "alice") as a,
        device(snode, "bob", tmp_path / "bob") as b,
    ):
        chat = await pair(a, b)
        m = await a.sc.send_file(chat, src, ttl=3600)
        ev = await wait_for(b, "message")
        assert ev["message"]["file"]["name"] == "photo.bin" and ev["message"]["ttl"] == 3600
        got = tmp_path / "got.bin"
        assert await b.sc.download(chat, m["id"], got) == src.stat().st_size
        assert got.read_bytes() == src.read_bytes()
        # a media id is no way in for the recipient: only the hash in the message is
        with pytest.raises(RpcError) as e:
            await b.client.call("media.info", {"media_id": m["file"]["media_id"]})
        assert e.value.code == ErrorCode.MEDIA_FORBIDDEN
        # deleted for both: the recipient's copy of the key is gone with the message
        await a.sc.delete_for_both(chat, m["id"])
        await wait_for(b, "deleted")
        with pytest.raises(SecretChatError):
            await b.sc.download(chat, m["id"], tmp_path / "again.bin")
    for p in snode.config.data_dir.rglob("*"):
        if p.is_file():
            assert b"secret pixels" not in p.read_bytes(), p


async def test_messages_expired_on_the_node_are_reported_on_both_sides(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "n1", secret={"ttl": 1})
    async with (
        Node.start(cfg) as node,
        device(node, "alice", tmp_path / "alice") as a,
        device(node, "bob", tmp_path / "bob") as b,
    ):
        chat = await pair(a, b)
        # bob does not fetch: three messages wait past the node's TTL and are dropped
        lost = [await a.sc.send(chat, f"lost {i}") for i in range(3)]
        # the node reports a burst in one notice, or (a slow machine) in a few: add them up
        ids: list[int] = []
        while len(ids) < 3:
            ev = await wait_for(a, "expired")
            assert ev["direction"] == "out" and ev["count"] == len(ev["ids"])
            ids += ev["ids"]
        assert sorted(ids) == sorted(m["id"] for m in lost)
        assert {m["state"] for m in a.sc.history(chat)} == {"expired"}

        count = 0
        while count < 3:
            ev = await wait_for(b, "expired")
            assert ev["direction"] == "in"
            count += ev["count"]
        assert count == 3
        notices = [m for m in b.sc.history(chat) if m["kind"] == "notice"]
        assert notices and all("message(s)" in m["text"] for m in notices)
        # the chat goes on: the ratchet skips the gap, and says so
        await a.sc.send(chat, "after the gap")
        assert (await wait_for(b, "message"))["message"]["text"] == "after the gap"
        assert (await wait_for(b, "gap"))["missing"] == 3


async def test_a_device_revoked_mid_chat_ends_the_chat(snode: Node, tmp_path: Path) -> None:
    async with (
        device(snode, "alice", tmp_path / "alice") as a,
        device(snode, "bob", tmp_path / "bob") as b,
    ):
        chat = await pair(a, b)
        await b.client.call("auth.logOut")
        ev = await wait_for(a, "closed")
        assert ev["chat"] == chat and "revoked" in ev["reason"]
        assert a.sc.chat(chat)["state"] == "closed"
        with pytest.raises(SecretChatError, match="closed"):
            await a.sc.send(chat, "hello?")


async def test_two_devices_accepting_at_once_only_the_first_is_bound(
    snode: Node, tmp_path: Path
) -> None:
    async with (
        device(snode, "alice", tmp_path / "alice") as a,
        device(snode, "bob", tmp_path / "bob-phone", dev="phone") as phone,
        device(snode, "bob", tmp_path / "bob-laptop", dev="laptop") as laptop,
    ):
        chat = await a.sc.start("bob")
        await wait_for(phone, "request")
        await wait_for(laptop, "request")
        # both accept (and the laptop even writes) before alice's device hears of either
        await phone.sc.accept(chat)
        await laptop.sc.accept(chat)
        await laptop.sc.send(chat, "from the laptop")
        ev = await wait_for(a, "accepted")
        assert ev["device"] == phone.sc.device_id
        await trio.sleep(0.1)
        late = await a.sc.sync()
        assert [e["type"] for e in late + a.backlog] == []  # the late ones change nothing
        assert a.sc.history(chat) == []
        assert (await wait_for(laptop, "taken"))["chat"] == chat
        await trio.sleep(0.1)
        assert [e["type"] for e in await laptop.sc.sync()] == []  # no error, nothing twice
        await a.sc.send(chat, "hello phone")
        assert (await wait_for(phone, "message"))["message"]["text"] == "hello phone"


async def test_secret_file_across_two_nodes(tmp_path: Path) -> None:
    """alice on n1, bob on n2 (linked): bob's node fetches the ciphertext from alice's by
    its hash; neither node holds the plaintext."""
    from federation import Federation
    from tests.test_federation import links_up

    async with AsyncExitStack() as stack:
        n1, n2 = [
            await stack.enter_async_context(
                Node.start(
                    make_config(
                        tmp_path / name,
                        node={"name": name, "listen": "127.0.0.1:0", "log_level": "warning"},
                        federation={"peering": "open"},
                    ),
                    parts=[Federation()],
                )
            )
            for name in ("n1", "n2")
        ]
        await admin(n1, "admin.peerAdd", {"url": n2.url, "pin": n2.node_id})
        await admin(n2, "admin.peerAdd", {"url": n1.url, "pin": n1.node_id})
        await links_up(n1, 1)
        await links_up(n2, 1)
        src = tmp_path / "across.bin"
        src.write_bytes(b"CROSS-NODE-SECRET-FILE " * 40_000)  # ~900 KB
        a = await stack.enter_async_context(device(n1, "alice", tmp_path / "alice"))
        b = await stack.enter_async_context(device(n2, "bob", tmp_path / "bob"))
        chat = await a.sc.start(f"bob@{n2.node_id}")
        assert (await wait_for(b, "request", 20))["chat"] == chat
        await b.sc.accept(chat)
        await wait_for(a, "accepted", 20)
        m = await a.sc.send_file(chat, src)
        assert (await wait_for(b, "message", 20))["message"]["kind"] == "file"
        got = tmp_path / "got.bin"
        assert await b.sc.download(chat, m["id"], got) == src.stat().st_size
        assert got.read_bytes() == src.read_bytes()
        await b.sc.send(chat, "got it")
        assert (await wait_for(a, "message", 20))["message"]["text"] == "got it"
    for node in ("n1", "n2"):
        for p in (tmp_path / node).rglob("*"):
            if p.is_file():
                assert b"CROSS-NODE-SECRET-FILE" not in p.read_bytes(), p
