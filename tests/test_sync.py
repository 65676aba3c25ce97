"""Sync and scale: gap recovery with getDifference, 10,000-member groups in O(1) rows per
message, a stalled session that delays nobody, kill -9 mid-burst, the hash chain."""

from __future__ import annotations

import secrets
import socket
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
from nacl.signing import SigningKey

from node.app import Node
from node.client import Client, RpcError
from node.protocol import frames
from node.protocol.codec import decode, encode
from node.protocol.handshake import Initiator, device_proof
from node.protocol.seal import Opener, Sealer
from tests.conftest import fedgram, make_config
from tests.helpers import add_user, admin, fresh_code, next_of, send, signed_in
from tests.rawws import RawWS


async def test_gap_recovery_returns_exactly_the_missed_events(node: Node) -> None:
    bob_laptop = SigningKey.generate()
    async with signed_in(node, "alice") as a, signed_in(node, "bob", device="phone") as b_phone:
        chat = (await a.call("chats.startPrivate", {"user": "bob"}))["chat"]["id"]
        await send(a, chat, "before")
        async with Client.connect(node.url) as c:
            await c.sign_in("bob", await fresh_code(node, "bob"), bob_laptop, "laptop")
            state = await c.call("updates.getState")
        assert state["chats"] == {chat: 2}
        # the laptop is offline: 500 messages, a new group, a read on the phone
        sent = [await send(a, chat, f"missed {i}") for i in range(500)]
        g = (await a.call("chats.createGroup", {"title": "New", "members": ["bob"]}))["chat"]
        await send(a, g["id"], "in the new group")
        await b_phone.call("messages.read", {"chat": chat})
        async with Client.connect(node.url) as c:
            await c.authorize(bob_laptop)
            diff = await c.call(
                "updates.getDifference", {"pts": state["pts"], "chats": state["chats"]}
            )
    assert diff["complete"] is True and diff["too_long"] == {}
    mine = [e for e in diff["events"] if e["chat"] == chat]
    assert [e["seq"] for e in mine] == sent
    assert [e["body"]["text"] for e in mine] == [f"missed {i}" for i in range(500)]
    new = [e for e in diff["events"] if e["chat"] == g["id"]]
    assert [e["kind"] for e in new] == ["create", "message"]
    assert [u["kind"] for u in diff["updates"]] == ["chat.joined", "chat.read"]
    assert diff["pts"] == state["pts"] + 2
    assert diff["chats"] == {chat: sent[-1], g["id"]: 2}


async def test_difference_too_long_pages_with_history(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "n", chats={"difference_limit": 50})
    async with Node.start(cfg) as node, signed_in(node, "alice") as a, signed_in(node, "bob") as b:
        chat = (await a.call("chats.startPrivate", {"user": "bob"}))["chat"]["id"]
        state = await b.call("updates.getState")
        for i in range(120):
            await send(a, chat, f"m{i}")
        diff = await b.call("updates.getDifference", {"pts": state["pts"], "chats": state["chats"]})
        assert diff["too_long"] == {chat: 121} and diff["events"] == []
        got: list[int] = []
        after = state["chats"][chat]
        while True:
            page = await b.call("chats.history", {"chat": chat, "after": after, "limit": 100})
            if not page["events"]:
                break
            got += [e["seq"] for e in page["events"]]
            after = got[-1]
        assert got == list(range(2, 122))


async def _add_users(node: Node, names: list[str]) -> None:
    limiter = trio.CapacityLimiter(64)

    async def one(name: str) -> None:
        async with limiter:
            await add_user(node, name)

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(one, name)


def _row_counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        tables = [
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not r[0].startswith(("events_fts_", "sqlite_"))
        ]
        return {t: conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables}


async def test_ten_thousand_member_group_costs_one_row_per_message(node: Node) -> None:
    names = [f"user{i:05d}" for i in range(10_000)]
    await _add_users(node, names)
    async with signed_in(node, "owner") as owner, signed_in(node, names[7]) as member:
        g = await owner.call("chats.createGroup", {"title": "Big", "members": names}, timeout=60)
        gid = g["chat"]["id"]
        assert g["chat"]["members"] == 10_001
        before = _row_counts(node.config.db_path)
        assert before["chat_members"] == 10_001
        for i in range(50):
            await send(owner, gid, f"hello {i}")
        after = _row_counts(node.config.db_path)
        changed = {t: after[t] - before[t] for t in after if after[t] != before[t]}
        # 50 events and their 50 search-index rows; nothing per member
        assert changed == {"events": 50, "events_fts": 50}, changed
        seen = [(await next_of(member, "chat.event"))["event"] for _ in range(51)]
        assert [e["kind"] for e in seen][:1] == ["create"]
        assert [e["body"]["text"] for e in seen[1:]] == [f"hello {i}" for i in range(50)]
        d = (await member.call("chats.get", {"chat": gid}))["chat"]
        assert d["unread"] == 50 and d["members"] == 10_001


class StalledDevice:
    """A signed-in session driven by hand: it can stop reading (and answering pings) and
    later read again, decrypting what the node sent."""

    def __init__(self, raw: RawWS, sealer: Sealer, opener: Opener, session: Any) -> None:
        self.raw, self.sealer, self.opener, self.session = raw, sealer, opener, session
        self._rid = 1

    @classmethod
    async def connect(cls, node: Node, key: SigningKey) -> StalledDevice:
        before = set(node.gateway.sessions)
        raw = await RawWS.connect(node.url)
        # a small receive window, so the node's socket buffers fill after a few MB, not 32
        raw.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        init = Initiator()
        await raw.send(init.hello)
        welcome = await raw.recv()
        assert isinstance(welcome, bytes)
        keys = init.receive_welcome(welcome)
        self = cls(raw, Sealer(keys.tx), Opener(keys.rx), None)
        proof = {
            "device_key": bytes(key.verify_key),
            "sig": device_proof(key, keys.transcript_hash),
        }
        assert "r" in await self.call("auth.authorize", proof)
        (sid,) = set(node.gateway.sessions) - before
        self.session = node.gateway.sessions[sid]
        raw.auto_pong = False
        return self

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._rid += 1
        await self.raw.send(self.sealer.seal(encode(frames.request(self._rid, method, params))))
        while True:
            frame = await self.next()
            if frame.get("id") == self._rid:
                return frame

    async def next(self) -> dict[str, Any]:
        data = await self.raw.recv()
        assert isinstance(data, bytes)
        obj: dict[str, Any] = decode(self.opener.open(data))
        return obj


async def test_stalled_session_delays_nobody_then_resyncs(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "n", limits={"session_queue": 32})
    async with Node.start(cfg) as node:
        key = SigningKey.generate()
        await add_user(node, "slow")
        async with Client.connect(node.url) as c:
            await c.sign_in("slow", await fresh_code(node, "slow"), key, "stalled phone")
        async with signed_in(node, "alice") as a, signed_in(node, "bob") as b:
            g = await a.call("chats.createGroup", {"title": "G", "members": ["bob", "slow"]})
            gid = g["chat"]["id"]
            assert (await next_of(b, "chat.event"))["event"]["kind"] == "create"
            slow = await StalledDevice.connect(node, key)
            text = "x" * 4000  # 1500 of these: 6 MB, more than the socket buffers hold
            received: list[int] = []

            async def bob_reads() -> None:
                while len(received) < 1500:
                    u = await next_of(b, "chat.event", timeout=10)
                    received.append(u["event"]["seq"])

            with trio.fail_after(30):  # bounded: the stalled member must not hold the sender
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(bob_reads)
                    sent = [await send(a, gid, text) for _ in range(1500)]
            assert received == sent
            assert slow.session.behind is True  # flagged to re-sync instead of slowing anyone

            # the stalled device reads again: what was queued, then the notice to re-sync
            with trio.fail_after(20):
                got: list[int] = []
                while True:
                    updates = (await slow.next()).get("u", [])
                    got += [u["event"]["seq"] for u in updates if u["type"] == "chat.event"]
                    if any(u["type"] == "session.behind" for u in updates):
                        break
            assert got == sorted(got) and len(got) < 1500
            diff = await slow.call(
                "updates.getDifference", {"pts": 0, "chats": {gid: got[-1] if got else 0}}
            )
            assert diff["r"]["too_long"] == {gid: sent[-1]}  # more than difference_limit missed
            # pushes flow again after the re-sync
            s = await send(a, gid, "are you back?")
            with trio.fail_after(5):
                while True:
                    updates = (await slow.next()).get("u", [])
                    if any(u.get("event", {}).get("seq") == s for u in updates):
                        break
            await slow.raw.aclose()


async def test_hash_chain_verifies_and_detects_tampering(node: Node) -> None:
    async with signed_in(node, "alice") as a, signed_in(node, "bob") as b:
        g = (await a.call("chats.createGroup", {"title": "G", "members": ["bob"]}))["chat"]["id"]
        s = await send(a, g, "one")
        await send(b, g, "two", reply_to=s)
        await a.call("messages.edit", {"chat": g, "seq": s, "text": "one!"})
        await a.call("messages.pin", {"chat": g, "seq": s})
        await a.call("chats.edit", {"chat": g, "title": "G2"})
        await b.call("messages.delete", {"chat": g, "seq": s + 1})
        ok = await admin(node, "admin.chatVerify", {"chat": g})
        assert ok == {"ok": True, "events": 7, "error": None}
        export = await admin(node, "admin.chatExport", {"chat": g})
        assert [e["seq"] for e in export["events"]] == list(range(1, 8))
        # change the text the edit (seq s + 2) made current: it no longer matches the hash the
        # signed event commits to
        tamper = (
            "UPDATE events SET {col} = CAST(replace({col}, ?, ?) AS BLOB) "
            "WHERE chat_id = ? AND seq = ?"
        )
        await node.db.write(
            lambda c: c.execute(tamper.format(col="content"), ("one!", "0ne!", g, s + 2))
        )
        bad = await admin(node, "admin.chatVerify", {"chat": g})
        assert bad["ok"] is False and f"seq {s + 2}: content does not match" in bad["error"]
        await node.db.write(
            lambda c: c.execute(tamper.format(col="content"), ("0ne!", "one!", g, s + 2))
        )
        assert (await admin(node, "admin.chatVerify", {"chat": g}))["ok"] is True
        # change one byte of one signed event: the chain no longer verifies, and says where
        await node.db.write(lambda c: c.execute(tamper.format(col="raw"), ("alice", "alicf", g, s)))
        bad = await admin(node, "admin.chatVerify", {"chat": g})
        assert bad["ok"] is False and f"seq {s}" in bad["error"]


async def test_kill_9_mid_burst_loses_and_duplicates_nothing(node_process: Any) -> None:
    n = node_process("n1")
    d = str(n.data)
    for name in ("alice", "bob"):
        fedgram("user", "add", name, "--data", d, check=True)
    key = SigningKey.generate()
    code = fedgram("user", "code", "alice", "--data", d, check=True).stdout.strip()
    acked: dict[int, int] = {}  # random_id -> seq
    pending: dict[int, str] = {}  # random_id -> text, sent but not acknowledged
    async with Client.connect(n.url) as c:
        await c.sign_in("alice", code, key, "phone")
        chat = (await c.call("chats.startPrivate", {"user": "bob"}))["chat"]["id"]

        async def sender(w: int) -> None:
            for i in range(100_000):
                rid = secrets.randbits(63)
                text = f"w{w}-{i}"
                pending[rid] = text
                try:
                    r = await c.call(
                        "messages.send", {"chat": chat, "random_id": rid, "text": text}
                    )
                except RpcError:
                    return
                acked[rid] = r["seq"]
                del pending[rid]

        async with trio.open_nursery() as nursery:
            for w in range(4):
                nursery.start_soon(sender, w)
            while len(acked) < 300:
                await trio.sleep(0.01)
            n.kill9()
            with trio.move_on_after(5):
                await c.wait_closed()
            nursery.cancel_scope.cancel()
    texts = {rid: t for rid, t in pending.items()}
    n2 = node_process("n1")
    async with Client.connect(n2.url) as c:
        await c.authorize(key)
        # the client retries what it never saw acknowledged, with the same random_ids
        for rid, text in texts.items():
            r = await c.call("messages.send", {"chat": chat, "random_id": rid, "text": text})
            acked[rid] = r["seq"]
        events: list[dict[str, Any]] = []
        after = 0
        while True:
            page = await c.call("chats.history", {"chat": chat, "after": after, "limit": 100})
            if not page["events"]:
                break
            events += page["events"]
            after = events[-1]["seq"]
    msgs = [e for e in events if e["kind"] == "message"]
    bodies = [e["body"]["text"] for e in msgs]
    assert len(bodies) == len(set(bodies)), "a retried send was stored twice"
    by_seq = {e["seq"]: e["body"]["text"] for e in msgs}
    assert len(msgs) == len(acked)
    for seq in acked.values():
        assert seq in by_seq
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


async def test_pushes_carry_seq_so_gaps_show(node: Node) -> None:
    async with signed_in(node, "alice") as a, signed_in(node, "bob") as b:
        chat = (await a.call("chats.startPrivate", {"user": "bob"}))["chat"]["id"]
        seqs = [await send(a, chat, f"{i}") for i in range(5)]
        got = [(await next_of(b, "chat.event"))["event"]["seq"] for _ in range(6)]
        assert got == [1, *seqs]
        with pytest.raises(RpcError) as e:
            await b.call("updates.getDifference", {"pts": -1, "chats": {}})
        assert e.value.code == "PARAMS_INVALID"
