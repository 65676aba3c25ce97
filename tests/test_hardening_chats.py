"""Hostile-testing findings on chats (issue 10): a re-added user's name, erasure of deleted and
edited text from disk, and the order in which one chat's pushes arrive. Real node, real SDK
over real WebSockets, real SQLite file."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import trio

from node.app import Node
from node.client import RpcError
from tests.helpers import admin, next_of, send, signed_in


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


SENDERS = 8
PER_SENDER = 40
IN_FLIGHT = 4  # concurrent sends per sender: bigger commit batches, more chances to reorder


async def test_pushes_of_one_chat_arrive_in_seq_order_without_gaps(node: Node) -> None:
    names = [f"sender{i}" for i in range(SENDERS)]
    async with signed_in(node, "listener") as listener, trio.open_nursery() as nursery:
        clients: list[Any] = []
        for name in names:
            clients.append(await nursery.start(_hold_signed_in, node, name))
        g = await listener.call("chats.createGroup", {"title": "load", "members": names})
        gid = g["chat"]["id"]
        total = SENDERS * PER_SENDER
        got: list[int] = []

        async def listen() -> None:
            while len(got) < total:
                ev = (await next_of(listener, "chat.event", timeout=30))["event"]
                if ev["chat"] == gid and ev["kind"] == "message":
                    got.append(ev["seq"])

        async def sender(c: Any, lane: int) -> None:
            for i in range(PER_SENDER // IN_FLIGHT):
                await send(c, gid, f"lane {lane} message {i}")

        async with trio.open_nursery() as load:
            load.start_soon(listen)
            async with trio.open_nursery() as senders:
                for c in clients:
                    for lane in range(IN_FLIGHT):
                        senders.start_soon(sender, c, lane)
        nursery.cancel_scope.cancel()
    first = got[0]
    out_of_order = sum(1 for x, y in itertools.pairwise(got) if y < x)
    assert got == list(range(first, first + total)), (
        f"{out_of_order} pushes arrived after a higher seq; first differences: "
        f"{[(i, s) for i, s in enumerate(got) if s != first + i][:10]}"
    )


async def _hold_signed_in(node: Node, name: str, *, task_status: Any) -> None:
    """Sign in and hand the client out; keep its connection open until cancelled."""
    async with signed_in(node, name) as c:
        task_status.started(c)
        await trio.sleep_forever()
