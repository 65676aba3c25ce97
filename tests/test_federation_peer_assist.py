"""Peer-assisted federation with real node processes: the home is killed -9 and the chat
goes on living on its replicas.

n1 homes a group with members on n2 and n3. n3 is down while n1 sequences; then n1 dies.
n3 comes back and fills its gap from n2 (a copy from a fellow replica, verified against
n1's key like n1's own); n2 keeps serving history, search and sync; posts made meanwhile
wait visibly in their node's outbox (one is cancelled); when n1 returns they are
sequenced once each, in order, and all three nodes hold the same chain.

And a partial partition (in-process nodes, links cut by our FaultProxy): a replica cut
off from the home, but not from another replica, follows the chat live through it."""

from __future__ import annotations

import secrets
import signal
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio

from federation.cluster import Cluster
from federation.faultproxy import FaultProxy
from node.app import Node
from tests.helpers import admin, signed_in
from tests.test_federation import WAIT as IN_PROCESS_WAIT
from tests.test_federation import chain as node_chain
from tests.test_federation import cluster, links_up, rid, texts
from tests.test_federation import until as until_async
from tests.test_federation_processes import WAIT, chain, posts, sign_in, until


async def peer(cluster: Cluster, i: int, name: str) -> dict[str, Any]:
    return next(p for p in await cluster.peers(i) if p["name"] == name)


async def test_replica_fills_its_gap_from_another_replica_while_the_home_is_dead(
    tmp_path: Path,
) -> None:
    async with (
        Cluster.running(tmp_path / "c", 3, log_level="warning") as cluster,
        AsyncExitStack() as stack,
    ):
        await cluster.add_user(2, "bob")
        await cluster.add_user(3, "carol")
        alice = await sign_in(stack, cluster, 1, "alice")
        g = await alice.call("chats.createGroup", {"title": "G", "members": ["bob@n2", "carol@n3"]})
        chat_id = str(g["chat"]["id"])
        n1, n2, n3 = (cluster.node(i).data for i in (1, 2, 3))
        await until(lambda: len(chain(n3, chat_id)) == 1 and len(chain(n2, chat_id)) == 1)

        cluster.kill(3, signal.SIGTERM)  # n3 is away while n1 sequences 1,100 messages
        await cluster.wait_exit(3)
        for i in range(1100):
            await alice.call(
                "messages.send",
                {"chat": chat_id, "random_id": secrets.randbits(63), "text": f"m{i}"},
            )
        await until(lambda: chain(n2, chat_id) == chain(n1, chat_id))
        full = chain(n1, chat_id)
        assert len(full) == 1101
        cluster.kill(1)  # kill -9 of the home
        await cluster.wait_exit(1)

        await cluster.restart(3)  # n3 is 1,100 behind; only n2 has the events
        await until(lambda: chain(n3, chat_id) == full)
        assert (await peer(cluster, 3, "n2"))["relayed"] >= 1100
        link = await peer(cluster, 3, "n1")
        assert link["link"] != "up" and link["last_error"]

        # the replicas keep serving what they hold: history, search, sync
        bob = await sign_in(stack, cluster, 2, "bob")
        carol = await sign_in(stack, cluster, 3, "carol")
        hist = await carol.call("chats.history", {"chat": chat_id, "limit": 3})
        assert [e["body"]["text"] for e in hist["events"]] == ["m1097", "m1098", "m1099"]
        found = await carol.call("messages.search", {"query": "m777", "chat": chat_id})
        assert [e["body"]["text"] for e in found["results"]] == ["m777"]
        assert (await bob.call("chats.get", {"chat": chat_id}))["chat"]["last_seq"] == 1101

        # posts while the home is dead: queued, visible as queued, one cancelled
        queued: list[int] = []
        for who, client in (("bob", bob), ("carol", carol)):
            for i in range(3):
                r = secrets.randbits(63)
                sent = await client.call(
                    "messages.send", {"chat": chat_id, "random_id": r, "text": f"{who}{i}"}
                )
                assert sent["pending"] is True and sent["seq"] is None, sent
                queued.append(r)
        cancelled = queued.pop(1)  # bob's second
        assert (await bob.call("messages.cancel", {"chat": chat_id, "random_id": cancelled}))[
            "cancelled"
        ]
        info = await peer(cluster, 2, "n1")
        assert info["outbox"] == 2 and info["link"] != "up" and info["since"] > 0

        await cluster.restart(1)
        await until(lambda: len(chain(n1, chat_id)) == 1106, WAIT * 2)
        await until(lambda: chain(n2, chat_id) == chain(n1, chat_id) == chain(n3, chat_id))
        counted = posts(n1, chat_id)
        assert all(counted[(n, r)] == 1 for (n, r) in counted if r in queued)
        assert sorted(r for (_, r) in counted if r in queued or r == cancelled) == sorted(queued)
        # each node's own posts kept their order, and the cancelled one never left
        hist = await carol.call("chats.history", {"chat": chat_id, "after": 1101})
        got = [e["body"]["text"] for e in hist["events"]]
        assert [t for t in got if t.startswith("bob")] == ["bob0", "bob2"]
        assert [t for t in got if t.startswith("carol")] == ["carol0", "carol1", "carol2"]
        for i in (2, 3):
            assert (await peer(cluster, i, "n1"))["outbox"] == 0
        with trio.fail_after(WAIT):
            await cluster.wait_links_up()


async def test_partial_partition_a_replica_cut_off_from_the_home_follows_through_another(
    tmp_path: Path,
) -> None:
    """n3 loses both links to the home n1 (cut and refused at our proxies) while n1 and n2
    and n2 and n3 still talk: n3 keeps following the chat through n2's verified copy, live,
    and after the heal all three hold one chain."""
    async with cluster(tmp_path, 3, link=False) as (n1, n2, n3), AsyncExitStack() as stack:
        p31 = await stack.enter_async_context(FaultProxy.open("127.0.0.1", n1.port))
        p13 = await stack.enter_async_context(FaultProxy.open("127.0.0.1", n3.port))
        via = {(3, 1): f"ws://127.0.0.1:{p31.port}/", (1, 3): f"ws://127.0.0.1:{p13.port}/"}
        nodes = {1: n1, 2: n2, 3: n3}
        for (i, j), url in [((i, j), via.get((i, j), nodes[j].url)) for i in nodes for j in nodes]:
            if i != j:
                await admin(nodes[i], "admin.peerAdd", {"url": url, "pin": nodes[j].node_id})
        for x in (n1, n2, n3):
            await links_up(x, 2)
        al = await stack.enter_async_context(signed_in(n1, "alice"))
        await stack.enter_async_context(signed_in(n2, "bob"))
        carol = await stack.enter_async_context(signed_in(n3, "carol"))
        g = await al.call("chats.createGroup", {"title": "G", "members": ["bob@n2", "carol@n3"]})
        chat_id = g["chat"]["id"]

        async def same(*xs: Node) -> bool:
            chains = [await node_chain(x, chat_id) for x in xs]
            return all(c == chains[0] for c in chains[1:])

        await until_async(lambda: same(n1, n2, n3))
        for p in (p31, p13):  # n1 <-> n3 partitioned; n2 sees both
            p.block("refuse")
            p.cut()

        async def n3_cut_off() -> bool:
            peers = (await admin(n3, "admin.peerList"))["peers"]
            return any(p["node_id"] == n1.node_id and p["link"] != "up" for p in peers)

        await until_async(n3_cut_off)
        for round_ in range(2):  # live, not a one-off catch-up
            for i in range(20):
                await al.call(
                    "messages.send", {"chat": chat_id, "random_id": rid(), "text": f"{round_}.{i}"}
                )
            await until_async(lambda: same(n1, n3))
            assert (await texts(carol, chat_id))[-1] == f"{round_}.19"
        peers = (await admin(n3, "admin.peerList"))["peers"]
        assert next(p for p in peers if p["node_id"] == n2.node_id)["relayed"] >= 40
        assert p31.stats()["refused"] + p13.stats()["refused"] > 0  # the cut held
        # carol's post waits for the home (n3 cannot reach it), then flows after the heal
        sent = await carol.call(
            "messages.send", {"chat": chat_id, "random_id": rid(), "text": "hi"}
        )
        assert sent["pending"] is True
        for p in (p31, p13):
            p.unblock()

        async def flowed() -> bool:
            return (await texts(al, chat_id))[-1:] == ["hi"] and await same(n1, n2, n3)

        await until_async(flowed, IN_PROCESS_WAIT * 2)
