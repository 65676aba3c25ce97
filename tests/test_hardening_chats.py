"""Hostile-testing findings on chats (issue 10): a re-added user's name, erasure of deleted and
edited text from disk, and the order in which one chat's pushes arrive. Real node, real SDK
over real WebSockets, real SQLite file."""

from __future__ import annotations

import pytest

from node.app import Node
from node.client import RpcError
from tests.helpers import admin, send, signed_in


async def test_a_readded_name_gets_a_new_private_chat_in_both_directions(node: Node) -> None:
    async with signed_in(node, "bob") as b:
        async with signed_in(node, "alice") as a:
            first = (await a.call("chats.startPrivate", {"user": "bob"}))["chat"]["id"]
            await send(a, first, "from the first alice")
        await admin(node, "admin.userRemove", {"name": "alice"})

        # a new person gets the name: starting from their side makes a NEW chat ...
        async with signed_in(node, "alice") as a2:
            started = await a2.call("chats.startPrivate", {"user": "bob"})
            second = started["chat"]["id"]
            assert started["created"] is True and second != first
            again = await b.call("chats.startPrivate", {"user": "@alice"})
            assert again == {**again, "created": False} and again["chat"]["id"] == second
            # ... and the old one, with the first alice's messages, is not theirs
            with pytest.raises(RpcError) as e:
                await a2.call("chats.history", {"chat": first})
            assert e.value.code == "NOT_A_MEMBER"
            kinds = [
                ev["kind"] for ev in (await a2.call("chats.history", {"chat": second}))["events"]
            ]
            assert kinds == ["create"]
        await admin(node, "admin.userRemove", {"name": "alice"})

        # the other direction: bob starts it with a third alice
        async with signed_in(node, "alice") as a3:
            started = await b.call("chats.startPrivate", {"user": "alice"})
            third = started["chat"]["id"]
            assert started["created"] is True and third not in (first, second)
            mine = await a3.call("chats.startPrivate", {"user": "bob"})
            assert mine["created"] is False and mine["chat"]["id"] == third
            await send(a3, third, "hello from the third alice")
        ids = {c["id"] for c in (await b.call("chats.list"))["chats"]}
        assert {first, second, third} <= ids  # bob keeps every chat, each with its own history
        for cid in (first, second, third):
            assert (await admin(node, "admin.chatVerify", {"chat": cid}))["ok"] is True
