"""Sender-side read receipts, invite management and the profile's about line (issue 15):
a real node, the real SDK over real WebSockets."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
import trio

from node.app import Node
from node.chats import receipts
from node.client import Client, RpcError
from tests.helpers import add_user, next_of, send, signed_in


async def _no_push(c: Client, kind: str, wait: float = 0.3) -> None:
    """Nothing of that type arrives within ``wait`` seconds (others are skipped)."""
    try:
        u = await next_of(c, kind, timeout=wait)
    except trio.TooSlowError:
        return
    raise AssertionError(f"unexpected push {u}")


async def _code(call: object, code: str) -> None:
    with pytest.raises(RpcError) as e:
        await call  # type: ignore[misc]
    assert e.value.code == code, e.value


async def test_private_read_receipt_push_dialog_and_history(node: Node) -> None:
    async with (
        signed_in(node, "alice", device="phone") as a1,
        signed_in(node, "alice", device="laptop") as a2,
        signed_in(node, "bob") as b,
    ):
        chat = (await a1.call("chats.startPrivate", {"user": "bob"}))["chat"]["id"]
        s1 = await send(a1, chat, "one")
        s2 = await send(a1, chat, "two")
        d = (await a1.call("chats.get", {"chat": chat}))["chat"]
        assert d["read_outbox"] < s1  # bob has read nothing of it
        h = await a1.call("chats.history", {"chat": chat})
        assert h["read_by"] == {str(s1): 0, str(s2): 0}

        # bob reads the first: both of alice's devices are told at once
        await b.call("messages.read", {"chat": chat, "seq": s1})
        for c in (a1, a2):
            u = await next_of(c, "chat.readOutbox")
            assert (u["chat"], u["user"], u["read_seq"]) == (chat, "bob@test", s1)
        h = await a2.call("chats.history", {"chat": chat})
        assert h["read_outbox"] == s1 and h["read_by"] == {str(s1): 1, str(s2): 0}
        assert (await a2.call("chats.get", {"chat": chat}))["chat"]["read_outbox"] == s1
        # bob's own view: his history marks none of his (he sent none), alice read all hers
        hb = await b.call("chats.history", {"chat": chat})
        assert hb["read_by"] == {} and hb["read_outbox"] == s2

        # reading again changes nothing and tells nobody
        await b.call("messages.read", {"chat": chat, "seq": s1})
        await _no_push(a1, "chat.readOutbox")

        # bob replying reads everything before it: a receipt too
        r = await send(b, chat, "ok")
        u = await next_of(a1, "chat.readOutbox")
        assert (u["user"], u["read_seq"]) == ("bob@test", r)
        dialogs = (await a1.call("chats.list"))["chats"]
        assert [x["read_outbox"] for x in dialogs if x["id"] == chat] == [r]

        # who read it
        rd = await a1.call("messages.readers", {"chat": chat, "seq": s2})
        assert rd["count"] == 1 and rd["listed"] is True
        assert [(x["user"], x["read_seq"]) for x in rd["readers"]] == [("bob@test", r)]
        # bad input: no such message, not a member, no such chat
        await _code(a1.call("messages.readers", {"chat": chat, "seq": 999}), "MESSAGE_NOT_FOUND")
        async with signed_in(node, "eve") as e:
            await _code(e.call("messages.readers", {"chat": chat, "seq": s1}), "NOT_A_MEMBER")
            await _code(e.call("messages.readers", {"chat": "nochat", "seq": 1}), "CHAT_NOT_FOUND")
        await _code(a1.call("messages.readers", {"chat": chat, "seq": 0}), "PARAMS_INVALID")


async def test_group_read_by_counts_and_who_is_told(node: Node) -> None:
    for name in ("bob", "carol", "dave"):
        await add_user(node, name)
    async with (
        signed_in(node, "alice") as a,
        signed_in(node, "bob", create=False) as b,
        signed_in(node, "carol", create=False) as c,
        signed_in(node, "dave", create=False) as d,
    ):
        g = await a.call("chats.createGroup", {"title": "G", "members": ["bob", "carol", "dave"]})
        chat = g["chat"]["id"]
        m1 = await send(a, chat, "from alice")
        m2 = await send(b, chat, "from bob")  # bob read alice's m1 by replying
        u = await next_of(a, "chat.readOutbox")
        assert (u["user"], u["read_seq"]) == ("bob@test", m2)
        assert (await a.call("chats.history", {"chat": chat}))["read_by"] == {str(m1): 1}

        # carol reads everything: both senders are told; dave (sent nothing) is not
        await c.call("messages.read", {"chat": chat})
        for x in (a, b):
            u = await next_of(x, "chat.readOutbox")
            assert (u["user"], u["read_seq"]) == ("carol@test", m2)
        await _no_push(d, "chat.readOutbox")
        h = await a.call("chats.history", {"chat": chat})
        assert h["read_by"] == {str(m1): 2} and h["read_outbox"] == m2
        rd = await a.call("messages.readers", {"chat": chat, "seq": m1})
        assert rd["count"] == 2
        assert {x["user"] for x in rd["readers"]} == {"bob@test", "carol@test"}
        # bob's message: read by carol only (its sender is never its reader)
        rd = await a.call("messages.readers", {"chat": chat, "seq": m2})
        assert rd["count"] == 1 and [x["user"] for x in rd["readers"]] == ["carol@test"]


async def test_big_group_receipts_are_bounded(node: Node) -> None:
    """In a chat over SMALL_CHAT members a read tells the senders only when it passes
    everyone else's; counts stop at the cap; readers are not listed."""
    n = receipts.READ_COUNT_CAP + 5  # above the cap, and too big to list readers
    names = [f"user{i:03d}" for i in range(n)]
    for name in names[:3]:
        await add_user(node, name)

    # the other members are plain rows (no devices): the node's own SQL makes them
    def more(conn: sqlite3.Connection) -> None:
        conn.executemany(
            "INSERT INTO users(node, name, created) VALUES "
            "((SELECT id FROM nodes WHERE state = 'self'), ?, ?)",
            [(x, time.time()) for x in names[3:]],
        )

    await node.db.write(more)
    async with (
        signed_in(node, "alice") as a,
        signed_in(node, "user000", create=False) as r1,
        signed_in(node, "user001", create=False) as r2,
    ):
        g = await a.call("chats.createGroup", {"title": "Big", "members": names})
        chat = g["chat"]["id"]
        m = await send(a, chat, "announcement")
        # r1 passes everyone: alice is told; r2 then reads to the same place: she is not
        await r1.call("messages.read", {"chat": chat})
        u = await next_of(a, "chat.readOutbox")
        assert (u["user"], u["read_seq"]) == ("user000@test", m)
        await r2.call("messages.read", {"chat": chat})
        await _no_push(a, "chat.readOutbox")
        rd = await a.call("messages.readers", {"chat": chat, "seq": m})
        assert rd == {"count": 2, "readers": [], "listed": False}
        h = await a.call("chats.history", {"chat": chat})
        assert h["read_by"] == {str(m): 2}

        # everyone reads it: counts stop at the cap, in history and in messages.readers
        def all_read(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE chat_members SET read_seq = ? WHERE chat_id = ?", (m, chat))

        await node.db.write(all_read)
        h = await a.call("chats.history", {"chat": chat})
        assert h["read_by"] == {str(m): receipts.READ_COUNT_CAP}
        rd = await a.call("messages.readers", {"chat": chat, "seq": m})
        assert rd["count"] == receipts.READ_COUNT_CAP

    # the work is bounded: the counts and the outbox walk the read index, not the table
    def plan(conn: sqlite3.Connection) -> str:
        rows = conn.execute(
            "EXPLAIN QUERY PLAN SELECT read_seq FROM chat_members WHERE chat_id = ? "
            "AND user_id != ? ORDER BY read_seq DESC LIMIT 1",
            (chat, 1),
        ).fetchall()
        return " ".join(str(r[-1]) for r in rows)

    assert "chat_members_read" in await node.db.read(plan)


async def test_invite_tokens_never_look_like_options(node: Node) -> None:
    """A token is pasted after `fedgram client join`; one starting with "-" read as an option
    (a CI run failed on `No such option: -p`). 300 chat invites and 300 sign-up invites: with
    one in 64 starting so, the old tokens would show one in more than 99 runs of 100."""
    from tests.helpers import admin

    async with signed_in(node, "alice") as a:
        chat = (await a.call("chats.createGroup", {"title": "G", "members": []}))["chat"]["id"]
        links = [(await a.call("chats.createInvite", {"chat": chat}))["invite"] for _ in range(300)]
    signups = [(await admin(node, "admin.inviteCreate", {}))["token"] for _ in range(300)]
    assert not [t for t in links + signups if t.startswith("-")]
    assert len(set(links)) == len(set(signups)) == 300


async def test_invites_listed_and_revoked(node: Node) -> None:
    await add_user(node, "bob")
    await add_user(node, "carol")
    async with (
        signed_in(node, "alice") as a,
        signed_in(node, "bob", create=False) as b,
        signed_in(node, "carol", create=False) as c,
    ):
        chat = (await a.call("chats.createGroup", {"title": "G", "members": ["bob"]}))["chat"]["id"]
        link1 = (await a.call("chats.createInvite", {"chat": chat}))["invite"]
        link2 = (await a.call("chats.createInvite", {"chat": chat, "uses": 3}))["invite"]
        inv = (await a.call("chats.listInvites", {"chat": chat}))["invites"]
        assert len(inv) == 2 and all(x["usable"] and x["creator"] == "alice@test" for x in inv)
        assert {x["uses_left"] for x in inv} == {None, 3}
        # revoke by the link itself, then by the id the list shows
        r = await a.call("chats.revokeInvite", {"chat": chat, "invite": link1})
        by_id = {x["id"]: x for x in (await a.call("chats.listInvites", {"chat": chat}))["invites"]}
        assert by_id[r["id"]]["revoked"] and not by_id[r["id"]]["usable"]
        await _code(c.call("chats.join", {"invite": link1}), "CHAT_INVITE_INVALID")
        other = next(i for i in by_id if i != r["id"])
        assert (await a.call("chats.revokeInvite", {"chat": chat, "invite": other}))["id"] == other
        await _code(c.call("chats.join", {"invite": link2}), "CHAT_INVITE_INVALID")

        # bad input: members are not admins; unknown invite; another chat's invite
        await _code(b.call("chats.listInvites", {"chat": chat}), "CHAT_ADMIN_REQUIRED")
        await _code(
            b.call("chats.revokeInvite", {"chat": chat, "invite": other}), "CHAT_ADMIN_REQUIRED"
        )
        await _code(c.call("chats.listInvites", {"chat": chat}), "NOT_A_MEMBER")
        await _code(a.call("chats.listInvites", {"chat": "nochat"}), "CHAT_NOT_FOUND")
        await _code(
            a.call("chats.revokeInvite", {"chat": chat, "invite": "0" * 16}), "CHAT_INVITE_INVALID"
        )
        g2 = (await a.call("chats.createGroup", {"title": "H"}))["chat"]["id"]
        link3 = (await a.call("chats.createInvite", {"chat": g2}))["invite"]
        await _code(
            a.call("chats.revokeInvite", {"chat": chat, "invite": link3}), "CHAT_INVITE_INVALID"
        )
        await c.call("chats.join", {"invite": link3})  # still good in its own chat


async def test_profile_about(node: Node) -> None:
    async with signed_in(node, "alice") as a:
        p = await a.call("account.getProfile")
        assert p["about"] == "" and p["display_name"] == ""
        p = await a.call("account.updateProfile", {"about": "likes trio"})
        assert (p["about"], p["display_name"]) == ("likes trio", "")
        p = await a.call("account.updateProfile", {"display_name": "Alice A."})
        assert (p["about"], p["display_name"]) == ("likes trio", "Alice A.")
        assert (await a.call("account.getProfile"))["about"] == "likes trio"
        await _code(a.call("account.updateProfile", {"about": "x" * 257}), "PARAMS_INVALID")


async def test_timed_mute(node: Node) -> None:
    async with (
        signed_in(node, "alice", device="phone") as a1,
        signed_in(node, "alice", device="laptop", create=False) as a2,
        signed_in(node, "bob"),
    ):
        chat = (await a1.call("chats.startPrivate", {"user": "bob"}))["chat"]["id"]
        await next_of(a2, "user.update")  # chat.joined
        r = await a1.call("chats.updateDialog", {"chat": chat, "muted": True, "mute_for": 60})
        u = await next_of(a2, "user.update")
        assert (u["pts"], u["muted"]) == (r["pts"], True)
        assert abs(u["muted_until"] - (time.time() + 60)) < 10
        d = (await a2.call("chats.get", {"chat": chat}))["chat"]
        assert d["muted"] and d["muted_until"] == u["muted_until"]

        # once the time has passed the dialog is no longer muted
        def expire(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE chat_members SET muted_until = ? WHERE chat_id = ?", (1, chat))

        await node.db.write(expire)
        assert (await a1.call("chats.get", {"chat": chat}))["chat"]["muted"] is False
        # muting for good replaces a timed mute; unmuting clears it
        await a1.call("chats.updateDialog", {"chat": chat, "muted": True})
        d = (await a1.call("chats.get", {"chat": chat}))["chat"]
        assert d["muted"] and d["muted_until"] is None
        await _code(
            a1.call("chats.updateDialog", {"chat": chat, "muted": False, "mute_for": 60}),
            "PARAMS_INVALID",
        )
        await _code(
            a1.call("chats.updateDialog", {"chat": chat, "muted": True, "mute_for": 5}),
            "PARAMS_INVALID",
        )


async def test_read_receipts_across_three_nodes(tmp_path: Path) -> None:
    """A group homed on n1 with members on n2 and n3: a read on any node reaches the
    senders on the others (reader's node -> home -> other replicas), as a push and in the
    dialog and history there; a node that is neither the home nor the reader's is not
    believed."""
    from tests.test_federation import WAIT, cluster, has_chat, rid, until

    async with cluster(tmp_path, 3) as nodes:
        a, b, c = nodes
        async with (
            signed_in(a, "alice") as al,
            signed_in(b, "bob") as bo,
            signed_in(c, "carol") as ca,
        ):
            g = await al.call(
                "chats.createGroup", {"title": "Trio", "members": ["bob@n2", "carol@n3"]}
            )
            chat = g["chat"]["id"]
            await has_chat(b, chat)
            await has_chat(c, chat)
            m1 = await send(al, chat, "from alice")
            sent = await ca.call("messages.send", {"chat": chat, "random_id": rid(), "text": "c"})
            assert sent["pending"] is True
            ev = (await next_of(ca, "chat.event", timeout=WAIT))["event"]
            while ev["kind"] != "message" or ev["sender"] != "carol@n3":  # until sequenced
                ev = (await next_of(ca, "chat.event", timeout=WAIT))["event"]
            m2 = ev["seq"]
            assert m2 > m1

            async def bob_has() -> bool:
                h = await bo.call("chats.history", {"chat": chat})
                return bool(h["last_seq"] >= m2)

            await until(bob_has)
            # carol's message, sequenced on the home, read alice's before it
            u = await next_of(al, "chat.readOutbox", timeout=WAIT)
            assert (u["chat"], u["user"], u["read_seq"]) == (chat, "carol@n3", m2)
            # bob reads on n2: alice (home) and carol (the other replica) are told
            await bo.call("messages.read", {"chat": chat})
            for x in (al, ca):
                u = await next_of(x, "chat.readOutbox", timeout=WAIT)
                assert (u["chat"], u["user"], u["read_seq"]) == (chat, "bob@n2", m2)
            h = await ca.call("chats.history", {"chat": chat})
            assert h["read_by"] == {str(m2): 1} and h["read_outbox"] == m2
            assert (await al.call("chats.get", {"chat": chat}))["chat"]["read_outbox"] == m2

            # alice reads on the home: carol's message is read by two now, on n3
            await al.call("messages.read", {"chat": chat})
            u = await next_of(ca, "chat.readOutbox", timeout=WAIT)
            assert (u["user"], u["read_seq"]) == ("alice@n1", m2)
            rd = await ca.call("messages.readers", {"chat": chat, "seq": m2})
            assert rd["count"] == 2
            assert {x["user"] for x in rd["readers"]} == {"alice@n1", "bob@n2"}

            # n3 speaking for a user of n1 in a chat homed on n1, to n2: ignored
            fed_c = c.remote.impl
            assert fed_c is not None
            forged = {"chat": chat, "user": f"alice@{a.node_id}", "read_seq": m2 + 5}
            r = await fed_c.links[b.node_id].call("fed.read", {"reads": [forged]})
            assert r == {"applied": 0}
            # and a bad batch is refused by the schema
            with pytest.raises(RpcError) as e:
                await fed_c.links[b.node_id].call("fed.read", {"reads": [{"chat": chat}]})
            assert e.value.code == "PARAMS_INVALID"

            # invite links of a chat homed elsewhere: listed and revoked through its home
            link = (await al.call("chats.createInvite", {"chat": chat}))["invite"]
            await _code(bo.call("chats.listInvites", {"chat": chat}), "CHAT_ADMIN_REQUIRED")
            await al.call("chats.setRole", {"chat": chat, "user": "bob@n2", "role": "admin"})

            async def bob_admin() -> bool:
                d = (await bo.call("chats.get", {"chat": chat}))["chat"]
                return bool(d["role"] == "admin")

            await until(bob_admin)
            (inv,) = (await bo.call("chats.listInvites", {"chat": chat}))["invites"]
            assert inv["creator"] == "alice@n1" and inv["usable"]
            r = await bo.call("chats.revokeInvite", {"chat": chat, "invite": link})
            assert r["id"] == inv["id"]
            (inv,) = (await al.call("chats.listInvites", {"chat": chat}))["invites"]
            assert inv["revoked"] is True
