"""Cloud chats across users and devices: real node, real SDK over real WebSockets."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
import trio

from node.app import Node
from node.client import Client, RpcError
from tests.helpers import admin, next_of, send, signed_in


async def test_two_users_two_devices_private_chat(node: Node) -> None:
    async with (
        signed_in(node, "alice", device="phone") as a1,
        signed_in(node, "alice", device="laptop") as a2,
        signed_in(node, "bob", device="phone") as b1,
        signed_in(node, "bob", device="laptop") as b2,
    ):
        started = await a1.call("chats.startPrivate", {"user": "@bob"})
        assert started["created"] is True
        chat = started["chat"]["id"]
        # exactly one private chat per pair, whoever starts it
        again = await b1.call("chats.startPrivate", {"user": "alice"})
        assert again["created"] is False and again["chat"]["id"] == chat
        assert again["chat"]["peer"] == "alice@test"
        for c in (a2, b1, b2):
            assert (await next_of(c, "chat.event"))["event"]["kind"] == "create"

        # send: everyone else gets it at once, in order
        s1 = await send(a1, chat, "hi bob")
        for c in (a2, b1, b2):
            ev = (await next_of(c, "chat.event"))["event"]
            assert (ev["seq"], ev["body"]["text"], ev["sender"]) == (s1, "hi bob", "alice@test")

        # reply
        s2 = await send(b2, chat, "hi alice", reply_to=s1)
        for c in (a1, a2, b1):
            ev = (await next_of(c, "chat.event"))["event"]
            assert ev["seq"] == s2 and ev["body"]["reply_to"] == s1

        # edit (own message only)
        edit = await a1.call("messages.edit", {"chat": chat, "seq": s1, "text": "hi bob!"})
        for c in (a2, b1, b2):
            ev = (await next_of(c, "chat.event"))["event"]
            assert ev["kind"] == "edit" and ev["body"] == {"target": s1, "text": "hi bob!"}
            assert ev["seq"] == edit["seq"]
        with pytest.raises(RpcError) as e:
            await b1.call("messages.edit", {"chat": chat, "seq": s1, "text": "hacked"})
        assert e.value.code == "MESSAGE_NOT_EDITABLE"

        # pin (either side of a private chat)
        await b1.call("messages.pin", {"chat": chat, "seq": s1})
        assert (await a1.call("chats.get", {"chat": chat}))["chat"]["pinned_seq"] == s1

        # read on one device: every device of that user converges
        r = await b1.call("messages.read", {"chat": chat})
        assert r["unread"] == 0 and r["pts"] is not None
        upd = await next_of(b2, "user.update")
        assert upd["kind"] == "chat.read" and upd["chat"] == chat and upd["pts"] == r["pts"]
        dialog_b2 = (await b2.call("chats.get", {"chat": chat}))["chat"]
        assert dialog_b2["unread"] == 0 and dialog_b2["read_seq"] == r["read_seq"]
        dialog_a2 = (await a2.call("chats.get", {"chat": chat}))["chat"]
        assert dialog_a2["unread"] == 1  # bob's reply, unread by alice on every device

        # delete for everyone
        s3 = await send(a2, chat, "oops")
        await a2.call("messages.delete", {"chat": chat, "seq": s3})
        hist = await b2.call("chats.history", {"chat": chat})
        by_seq = {ev["seq"]: ev for ev in hist["events"]}
        assert by_seq[s3]["deleted"] is True and by_seq[s3]["body"] == {}
        assert by_seq[s1]["body"]["text"] == "hi bob!" and by_seq[s1]["edited"] is not None
        assert [ev["kind"] for ev in hist["events"]] == [
            "create",
            "message",
            "message",
            "pin",
            "message",
        ]
        # delete for me: hidden on all of bob's devices only
        d = await b1.call("messages.delete", {"chat": chat, "seq": s2, "for_everyone": False})
        assert d["pts"] is not None and d["seq"] is None
        mine = await b2.call("chats.history", {"chat": chat})
        assert s2 not in [ev["seq"] for ev in mine["events"]]
        theirs = await a1.call("chats.history", {"chat": chat})
        assert s2 in [ev["seq"] for ev in theirs["events"]]


async def test_group_forward_roles_and_membership(node: Node) -> None:
    async with (
        signed_in(node, "alice") as a,
        signed_in(node, "bob") as b,
        signed_in(node, "carol") as c,
    ):
        g = (await a.call("chats.createGroup", {"title": "Team", "members": ["bob"]}))["chat"]
        assert g["role"] == "owner" and g["members"] == 2
        gid = g["id"]
        await next_of(b, "chat.event")
        # carol is not in: cannot read or post
        with pytest.raises(RpcError) as e:
            await c.call("chats.history", {"chat": gid})
        assert e.value.code == "NOT_A_MEMBER"
        # a member (bob) may add carol; carol gets the add event and a pts update
        added = await b.call("chats.addMembers", {"chat": gid, "users": ["carol"]})
        ev = (await next_of(c, "chat.event"))["event"]
        assert ev["kind"] == "add" and ev["seq"] == added["seq"]
        assert ev["body"]["users"] == ["carol@test"]
        assert (await next_of(c, "user.update"))["kind"] == "chat.joined"
        s = await send(c, gid, "hello team")
        assert (await next_of(a, "chat.event"))["event"]["seq"] == added["seq"]
        assert (await next_of(a, "chat.event"))["event"]["seq"] == s

        # forward from the group into a private chat: origin recorded, text copied
        p = (await a.call("chats.startPrivate", {"user": "bob"}))["chat"]["id"]
        fwd = await a.call(
            "messages.send",
            {"chat": p, "random_id": 1, "forward_from": {"chat": gid, "seq": s}},
        )
        last = (await b.call("chats.history", {"chat": p, "limit": 1}))["events"][-1]
        assert last["seq"] == fwd["seq"] and last["body"]["text"] == "hello team"
        assert last["body"]["fwd"]["chat"] == gid and last["body"]["fwd"]["sender"] == "carol@test"
        # carol cannot forward from a chat she is not in
        with pytest.raises(RpcError) as e:
            await c.call(
                "messages.send",
                {"chat": gid, "random_id": 2, "forward_from": {"chat": p, "seq": fwd["seq"]}},
            )
        assert e.value.code == "NOT_A_MEMBER"

        # roles: only admins kick; the owner promotes
        with pytest.raises(RpcError) as e:
            await b.call("chats.kick", {"chat": gid, "user": "carol"})
        assert e.value.code == "CHAT_ADMIN_REQUIRED"
        await a.call("chats.setRole", {"chat": gid, "user": "bob", "role": "admin"})
        await b.call("chats.kick", {"chat": gid, "user": "carol", "ban": True})
        left = await next_of(c, "user.update")
        assert left["kind"] == "chat.left" and left["reason"] == "banned"
        with pytest.raises(RpcError) as e:
            await send(c, gid, "still here?")
        assert e.value.code == "NOT_A_MEMBER"
        # a banned user cannot come back by invite
        invite = (await a.call("chats.createInvite", {"chat": gid, "uses": 5}))["invite"]
        with pytest.raises(RpcError) as e:
            await c.call("chats.join", {"invite": invite})
        assert e.value.code == "USER_BANNED_IN_CHAT"
        await a.call("chats.unban", {"chat": gid, "user": "carol"})
        joined = await c.call("chats.join", {"invite": invite})
        assert joined["chat"]["id"] == gid and joined["chat"]["role"] == "member"
        with pytest.raises(RpcError) as e:
            await c.call("chats.join", {"invite": invite})
        assert e.value.code == "ALREADY_MEMBER"
        with pytest.raises(RpcError) as e:
            await c.call("chats.join", {"invite": "not-a-real-invite"})
        assert e.value.code == "CHAT_INVITE_INVALID"

        # title/about by admins; leaving; the owner cannot leave a populated group
        edited = await b.call("chats.edit", {"chat": gid, "title": "Team 2", "about": "x"})
        assert len(edited["seqs"]) == 2
        assert (await c.call("chats.get", {"chat": gid}))["chat"]["title"] == "Team 2"
        with pytest.raises(RpcError) as e:
            await a.call("chats.leave", {"chat": gid})
        assert e.value.code == "OWNER_CANNOT_LEAVE"
        await c.call("chats.leave", {"chat": gid})
        assert gid not in [d["id"] for d in (await c.call("chats.list"))["chats"]]
        members = await a.call("chats.members", {"chat": gid})
        assert [(m["user"], m["role"]) for m in members["members"]] == [
            ("alice@test", "owner"),
            ("bob@test", "admin"),
        ]


async def test_channel_admins_post_subscribers_read(node: Node) -> None:
    async with signed_in(node, "alice") as a, signed_in(node, "bob") as b:
        ch = (await a.call("chats.createChannel", {"title": "News"}))["chat"]["id"]
        invite = (await a.call("chats.createInvite", {"chat": ch}))["invite"]
        await b.call("chats.join", {"invite": invite})
        s = await send(a, ch, "first post")
        ev = (await next_of(b, "chat.event"))["event"]
        assert ev["seq"] == s and ev["body"]["text"] == "first post"
        with pytest.raises(RpcError) as e:
            await send(b, ch, "can I post?")
        assert e.value.code == "CHAT_WRITE_FORBIDDEN"
        with pytest.raises(RpcError) as e:
            await b.call("chats.addMembers", {"chat": ch, "users": ["alice"]})
        assert e.value.code == "CHAT_ADMIN_REQUIRED"


async def test_dialog_settings_sync_and_typing(node: Node) -> None:
    async with (
        signed_in(node, "alice", device="phone") as a1,
        signed_in(node, "alice", device="laptop") as a2,
        signed_in(node, "bob") as b,
    ):
        chat = (await a1.call("chats.startPrivate", {"user": "bob"}))["chat"]["id"]
        r = await a1.call("chats.updateDialog", {"chat": chat, "pinned": True, "muted": True})
        upd = await next_of(a2, "user.update")
        assert upd["kind"] == "chat.joined"  # the chat alice started on her phone
        upd = await next_of(a2, "user.update")
        assert (upd["kind"], upd["pts"], upd["pinned"], upd["muted"]) == (
            "dialog.updated",
            r["pts"],
            True,
            True,
        )
        d = (await a2.call("chats.list"))["chats"][0]
        assert d["pinned"] and d["muted"] and not d["archived"]
        await a1.call("chats.updateDialog", {"chat": chat, "archived": True})
        assert (await a2.call("chats.list", {"archived": False}))["chats"] == []
        # typing reaches the other member, not stored, repeated notices absorbed
        await a1.call("messages.setTyping", {"chat": chat})
        t = await next_of(b, "chat.typing")
        assert t == {"type": "chat.typing", "chat": chat, "user": "alice@test"}
        await a1.call("messages.setTyping", {"chat": chat})
        with trio.move_on_after(0.3):
            await next_of(b, "chat.typing")
            raise AssertionError("a repeated typing notice within 3 s was re-sent")
        assert (await b.call("chats.history", {"chat": chat}))["last_seq"] == 1


async def test_search_only_permitted(node: Node) -> None:
    async with (
        signed_in(node, "alice") as a,
        signed_in(node, "bob") as b,
        signed_in(node, "carol") as c,
    ):
        ab = (await a.call("chats.startPrivate", {"user": "bob"}))["chat"]["id"]
        ac = (await a.call("chats.startPrivate", {"user": "carol"}))["chat"]["id"]
        await send(a, ab, "the secret plan for bob")
        s2 = await send(a, ac, "the secret plan for carol")
        await send(a, ac, "Unrelated text")
        hits = (await b.call("messages.search", {"query": "secret plan"}))["results"]
        assert [h["body"]["text"] for h in hits] == ["the secret plan for bob"]
        hits = (await a.call("messages.search", {"query": "SECRET pla"}))["results"]
        assert len(hits) == 2  # case-insensitive, last word as prefix
        hits = (await a.call("messages.search", {"query": "secret", "chat": ac}))["results"]
        assert [h["seq"] for h in hits] == [s2]
        with pytest.raises(RpcError) as e:
            await b.call("messages.search", {"query": "secret", "chat": ac})
        assert e.value.code == "NOT_A_MEMBER"
        # FTS syntax in the query is just words
        hits = (await c.call("messages.search", {"query": 'plan" OR "bob* NEAR('}))["results"]
        assert hits == []
        with pytest.raises(RpcError) as e:
            await c.call("messages.search", {"query": "!!! ???"})
        assert e.value.code == "SEARCH_QUERY_EMPTY"
        # edits and deletes are reflected
        await a.call("messages.edit", {"chat": ac, "seq": s2, "text": "nothing to see"})
        assert (await c.call("messages.search", {"query": "secret"}))["results"] == []
        assert len((await c.call("messages.search", {"query": "nothing"}))["results"]) == 1
        await a.call("messages.delete", {"chat": ac, "seq": s2})
        assert (await c.call("messages.search", {"query": "nothing"}))["results"] == []


async def test_idempotent_send(node: Node) -> None:
    async with signed_in(node, "alice") as a, signed_in(node, "bob") as b:
        chat = (await a.call("chats.startPrivate", {"user": "bob"}))["chat"]["id"]
        rid = secrets.randbits(63)
        first = await a.call("messages.send", {"chat": chat, "random_id": rid, "text": "once"})
        again = await a.call("messages.send", {"chat": chat, "random_id": rid, "text": "once"})
        assert first["duplicate"] is False and again["duplicate"] is True
        assert again["seq"] == first["seq"]
        # the same random_id from another sender is another message
        other = await b.call("messages.send", {"chat": chat, "random_id": rid, "text": "me too"})
        assert other["seq"] == first["seq"] + 1 and other["duplicate"] is False
        hist = await a.call("chats.history", {"chat": chat})
        assert [e["kind"] for e in hist["events"]] == ["create", "message", "message"]
        # retries racing each other (one write batch: the index refuses all but one)
        rid2 = secrets.randbits(63)
        answers: list[dict[str, Any]] = []

        async def send_it() -> None:
            params = {"chat": chat, "random_id": rid2, "text": "raced"}
            answers.append(await a.call("messages.send", params))

        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(send_it)
        assert sorted(x["duplicate"] for x in answers) == [False] + [True] * 5
        assert len({x["seq"] for x in answers}) == 1
        hist = await a.call("chats.history", {"chat": chat})
        assert [e["body"].get("text") for e in hist["events"]].count("raced") == 1


async def test_search_follows_sends_edits_and_deletes_of_one_write_batch(node: Node) -> None:
    """The index is written at the end of a write batch, in the order the batch's jobs
    wrote it: a delete or edit beside the sends of the same batch still wins."""
    async with signed_in(node, "alice") as a:
        chat = (await a.call("chats.createGroup", {"title": "g", "members": []}))["chat"]["id"]
        old = [
            (
                await a.call(
                    "messages.send",
                    {"chat": chat, "random_id": secrets.randbits(63), "text": f"alpha old{i}"},
                )
            )["seq"]
            for i in range(2)
        ]

        async def send(i: int) -> None:
            params = {"chat": chat, "random_id": secrets.randbits(63), "text": f"alpha new{i}"}
            await a.call("messages.send", params)

        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(send, i)
            nursery.start_soon(a.call, "messages.delete", {"chat": chat, "seq": old[0]})
            nursery.start_soon(
                a.call, "messages.edit", {"chat": chat, "seq": old[1], "text": "beta"}
            )
        found = (await a.call("messages.search", {"query": "alpha"}))["results"]
        assert sorted(r["body"]["text"] for r in found) == [f"alpha new{i}" for i in range(5)]
        assert [
            r["seq"] for r in (await a.call("messages.search", {"query": "beta"}))["results"]
        ] == [old[1]]


async def test_history_paging(node: Node) -> None:
    async with signed_in(node, "alice") as a, signed_in(node, "bob"):
        chat = (await a.call("chats.startPrivate", {"user": "bob"}))["chat"]["id"]
        seqs = [await send(a, chat, f"m{i}") for i in range(30)]
        newest = await a.call("chats.history", {"chat": chat, "limit": 10})
        assert [e["seq"] for e in newest["events"]] == seqs[-10:]
        older = await a.call("chats.history", {"chat": chat, "limit": 10, "before": seqs[-10]})
        assert [e["seq"] for e in older["events"]] == seqs[-20:-10]
        after = await a.call("chats.history", {"chat": chat, "limit": 5, "after": seqs[4]})
        assert [e["seq"] for e in after["events"]] == seqs[5:10]
        with pytest.raises(RpcError) as e:
            await a.call("chats.history", {"chat": chat, "limit": 101})
        assert e.value.code == "PARAMS_INVALID"


async def test_message_bounds(node: Node) -> None:
    async with signed_in(node, "alice") as a, signed_in(node, "bob") as b:
        chat = (await a.call("chats.startPrivate", {"user": "bob"}))["chat"]["id"]
        bad = [
            ({"chat": chat, "random_id": 1, "text": "x" * 4097}, "PARAMS_INVALID"),
            ({"chat": chat, "random_id": 1}, "MESSAGE_EMPTY"),
            ({"chat": chat, "random_id": 1, "text": ""}, "MESSAGE_EMPTY"),
            ({"chat": chat, "random_id": 1, "text": "x", "reply_to": 99}, "MESSAGE_NOT_FOUND"),
            ({"chat": "nosuchchat", "random_id": 1, "text": "x"}, "CHAT_NOT_FOUND"),
            ({"chat": "BAD ID!", "random_id": 1, "text": "x"}, "PARAMS_INVALID"),
            ({"chat": chat, "random_id": 2**63, "text": "x"}, "PARAMS_INVALID"),
        ]
        for params, code in bad:
            with pytest.raises(RpcError) as e:
                await a.call("messages.send", params)
            assert e.value.code == code, params
        for user, code in [
            ("alice", "PEER_INVALID"),
            ("nobody", "PEER_INVALID"),
            ("bob@elsewhere", "PEER_INVALID"),
        ]:
            with pytest.raises(RpcError) as e:
                await a.call("chats.startPrivate", {"user": user})
            assert e.value.code == code
        assert await send(a, chat, "x" * 4096) == 2  # the limit itself is fine
        assert (await b.call("chats.get", {"chat": chat}))["chat"]["unread"] == 1


async def test_client_sees_nothing_before_sign_in(node: Node) -> None:
    async with Client.connect(node.url) as c:
        for method in ("chats.list", "messages.send", "updates.getState"):
            with pytest.raises(RpcError) as e:
                await c.call(method, {})
            assert e.value.code == "AUTH_REQUIRED"


async def test_removing_a_user_leaves_their_chats_and_hands_over_ownership(node: Node) -> None:
    async with signed_in(node, "bob") as b, signed_in(node, "carol") as c:
        async with signed_in(node, "alice") as a:
            g = await a.call("chats.createGroup", {"title": "G", "members": ["bob", "carol"]})
            gid = g["chat"]["id"]
            p = (await a.call("chats.startPrivate", {"user": "bob"}))["chat"]["id"]
            await a.call("chats.setRole", {"chat": gid, "user": "carol", "role": "admin"})
            await send(a, gid, "bye all")
        await admin(node, "admin.userRemove", {"name": "alice"})
        kinds = []
        while len(kinds) < 7:  # create, role, message (group); create (private); leave x2, role
            ev = (await next_of(b, "chat.event"))["event"]
            kinds.append((ev["chat"] == gid, ev["kind"], ev["body"].get("user")))
        assert (True, "leave", "alice@test") in kinds and (False, "leave", "alice@test") in kinds
        assert (True, "role", "carol@test") in kinds  # the admin inherits the group
        d = (await c.call("chats.get", {"chat": gid}))["chat"]
        assert d["role"] == "owner" and d["members"] == 2
        members = await b.call("chats.members", {"chat": gid})
        assert [m["user"] for m in members["members"]] == ["carol@test", "bob@test"]
        # the private chat stays readable for bob, with alice's messages in it
        assert (await b.call("chats.history", {"chat": p}))["events"][-1]["kind"] == "leave"
        assert (await admin(node, "admin.chatVerify", {"chat": gid}))["ok"] is True
