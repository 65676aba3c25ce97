"""Authorization on every chat method: one refusal per method, derived from the schema so a new
method that takes a chat id cannot slip through untested."""

from __future__ import annotations

from typing import Any

import pytest

from node.app import Node
from node.client import Client, RpcError
from node.protocol.api import METHODS
from tests.helpers import admin, send, signed_in

# a plausible, valid call of each method that names a chat; {chat} and {seq} are filled in
CALLS: dict[str, dict[str, Any]] = {
    "chats.get": {},
    "chats.members": {},
    "chats.addMembers": {"users": ["mallory"]},
    "chats.kick": {"user": "bob"},
    "chats.unban": {"user": "bob"},
    "chats.setRole": {"user": "bob", "role": "admin"},
    "chats.leave": {},
    "chats.edit": {"title": "pwned"},
    "chats.createInvite": {},
    "chats.updateDialog": {"muted": True},
    "chats.history": {},
    "messages.send": {"random_id": 5, "text": "let me in"},
    "messages.edit": {"seq": "{seq}", "text": "pwned"},
    "messages.delete": {"seq": "{seq}"},
    "messages.pin": {"seq": "{seq}"},
    "messages.unpin": {},
    "messages.read": {},
    "messages.cancel": {"random_id": 5},
    "messages.setTyping": {},
    "messages.search": {"query": "secret"},
    "messages.readers": {"seq": "{seq}"},
    "chats.listInvites": {},
    "chats.revokeInvite": {"invite": "0123456789abcdef"},
}


def _params(method: str, chat: str, seq: int) -> dict[str, Any]:
    p = {k: (seq if v == "{seq}" else v) for k, v in CALLS[method].items()}
    return {"chat": chat, **p}


async def _refused(c: Client, method: str, params: dict[str, Any], code: str) -> None:
    with pytest.raises(RpcError) as e:
        await c.call(method, params)
    assert e.value.code == code, (method, e.value)


async def test_every_chat_method_refuses_outsiders(node: Node) -> None:
    user_methods = {
        name for name, m in METHODS.items() if "chat" in m.params and m.access == "user"
    }
    assert user_methods == set(CALLS), "add the new chat method to CALLS"
    async with (
        signed_in(node, "alice") as a,
        signed_in(node, "bob"),
        signed_in(node, "mallory") as m,
    ):
        g = (await a.call("chats.createGroup", {"title": "G", "members": ["bob"]}))["chat"]["id"]
        seq = await send(a, g, "secret")
        await a.call("messages.pin", {"chat": g, "seq": seq})
        for method in sorted(CALLS):
            await _refused(m, method, _params(method, g, seq), "NOT_A_MEMBER")
        # unknown chat ids are refused the same stable way
        await _refused(m, "chats.history", {"chat": "nosuchchat"}, "CHAT_NOT_FOUND")
        # and nothing changed
        hist = await a.call("chats.history", {"chat": g})
        assert [e["kind"] for e in hist["events"]] == ["create", "message", "pin"]
        assert hist["events"][1]["body"]["text"] == "secret"


async def test_members_cannot_do_admin_things(node: Node) -> None:
    async with signed_in(node, "alice") as a, signed_in(node, "bob") as b, signed_in(node, "carol"):
        g = await a.call("chats.createGroup", {"title": "G", "members": ["bob", "carol"]})
        gid = g["chat"]["id"]
        seq = await send(a, gid, "owner's words")
        admin_only = [
            "chats.kick",
            "chats.unban",
            "chats.setRole",
            "chats.edit",
            "chats.createInvite",
            "chats.listInvites",
            "messages.pin",
        ]
        for method in admin_only:
            params = _params(method, gid, seq)
            if "user" in params:
                params["user"] = "carol"
            await _refused(b, method, params, "CHAT_ADMIN_REQUIRED")
        await a.call("messages.pin", {"chat": gid, "seq": seq})
        await _refused(b, "messages.unpin", {"chat": gid}, "CHAT_ADMIN_REQUIRED")
        # editing or deleting someone else's message
        await _refused(
            b, "messages.edit", {"chat": gid, "seq": seq, "text": "x"}, "MESSAGE_NOT_EDITABLE"
        )
        await _refused(b, "messages.delete", {"chat": gid, "seq": seq}, "MESSAGE_DELETE_FORBIDDEN")
        # an admin is not the owner
        await a.call("chats.setRole", {"chat": gid, "user": "bob", "role": "admin"})
        await _refused(
            b,
            "chats.setRole",
            {"chat": gid, "user": "carol", "role": "admin"},
            "CHAT_OWNER_REQUIRED",
        )
        await _refused(b, "chats.kick", {"chat": gid, "user": "alice"}, "CHAT_OWNER_REQUIRED")
        # but an admin may delete others' messages in a group
        await b.call("messages.delete", {"chat": gid, "seq": seq})


async def test_channel_and_ban_refusals(node: Node) -> None:
    async with signed_in(node, "alice") as a, signed_in(node, "bob") as b:
        ch = (await a.call("chats.createChannel", {"title": "C"}))["chat"]["id"]
        await a.call("chats.addMembers", {"chat": ch, "users": ["bob"]})
        await _refused(
            b, "messages.send", {"chat": ch, "random_id": 1, "text": "hi"}, "CHAT_WRITE_FORBIDDEN"
        )
        invite = (await a.call("chats.createInvite", {"chat": ch}))["invite"]
        await a.call("chats.kick", {"chat": ch, "user": "bob", "ban": True})
        await _refused(b, "chats.join", {"invite": invite}, "USER_BANNED_IN_CHAT")
        await _refused(b, "chats.history", {"chat": ch}, "NOT_A_MEMBER")
        # a member may not re-add a banned user to a group either
        g = (await a.call("chats.createGroup", {"title": "G", "members": ["bob"]}))["chat"]["id"]
        await admin(node, "admin.userAdd", {"name": "carol"})
        await a.call("chats.addMembers", {"chat": g, "users": ["carol"]})
        await a.call("chats.kick", {"chat": g, "user": "carol", "ban": True})
        await _refused(
            b, "chats.addMembers", {"chat": g, "users": ["carol"]}, "USER_BANNED_IN_CHAT"
        )
        # a private chat cannot be left or managed
        p = (await a.call("chats.startPrivate", {"user": "bob"}))["chat"]["id"]
        await _refused(b, "chats.leave", {"chat": p}, "CANNOT_LEAVE_PRIVATE")
        await _refused(
            b, "chats.addMembers", {"chat": p, "users": ["carol"]}, "CHAT_ADMIN_REQUIRED"
        )
