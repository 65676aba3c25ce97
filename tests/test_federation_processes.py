"""Federation under crashes: real node processes (federation/cluster.py), kill -9, restarts.

What is checked is what the nodes wrote: each node's SQLite file, read-only, after the
dust settles; acknowledged means durable, on the home and on the replica, and a post is
sequenced exactly once however often it was forwarded."""

from __future__ import annotations

import secrets
import sqlite3
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trio
from nacl.signing import SigningKey

from federation.cluster import Cluster
from node.client import Client
from node.protocol.errors import RpcError

WAIT = 30.0


def read(data: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """A query on a node's database (running or not), read-only."""
    conn = sqlite3.connect(f"file:{data / 'fedgram.db'}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def chain(data: Path, chat_id: str) -> list[tuple[int, bytes]]:
    rows = read(data, "SELECT seq, hash FROM events WHERE chat_id = ? ORDER BY seq", chat_id)
    return [(int(s), bytes(h)) for s, h in rows]


def posts(data: Path, chat_id: str) -> Counter[tuple[str, int]]:
    """(sender name, random_id) of every message in the chat, counted."""
    rows = read(
        data,
        "SELECT u.name, e.random_id FROM events e JOIN users u ON u.id = e.sender_id "
        "WHERE e.chat_id = ? AND e.kind = 'message'",
        chat_id,
    )
    return Counter((str(n), int(r)) for n, r in rows)


async def until(pred: Any, timeout: float = WAIT) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.05)


async def sign_in(stack: AsyncExitStack, cluster: Cluster, i: int, name: str) -> Client:
    """A signed-in SDK client of user ``name`` on node ``i``, closed with ``stack``."""
    code = await cluster.add_user(i, name)
    client = await stack.enter_async_context(Client.connect(cluster.node(i).url))
    await client.sign_in(name, code, SigningKey.generate(), "dev")
    return client


async def group_with(cluster: Cluster, alice: Client, member: str) -> str:
    g = await alice.call("chats.createGroup", {"title": "G", "members": [member]})
    chat_id = str(g["chat"]["id"])
    await until(lambda: chain(cluster.node(2).data, chat_id) != [])
    return chat_id


async def test_replica_down_for_3000_messages_catches_up_exactly(tmp_path: Path) -> None:
    """A replica misses 3,000 messages (three pull batches), is killed again in the middle
    of its catch-up (after a batch is applied, before the last), and ends with the home's
    exact chain."""
    async with (
        Cluster.running(tmp_path / "c", 2, log_level="warning") as cluster,
        AsyncExitStack() as stack,
    ):
        await cluster.add_user(2, "bob")
        alice = await sign_in(stack, cluster, 1, "alice")
        chat_id = await group_with(cluster, alice, "bob@n2")
        cluster.kill(2)  # kill -9 of the replica
        await cluster.wait_exit(2)

        async def burst(tag: int) -> None:
            for i in range(600):
                await alice.call(
                    "messages.send",
                    {"chat": chat_id, "random_id": secrets.randbits(63), "text": f"{tag}.{i}"},
                )

        async with trio.open_nursery() as nursery:
            for tag in range(5):
                nursery.start_soon(burst, tag)
        home, replica = cluster.node(1).data, cluster.node(2).data
        total = len(chain(home, chat_id))
        assert total == 3001  # create + 3,000
        before = len(chain(replica, chat_id))
        await cluster.restart(2)
        # kill -9 once its first batch is applied (a batch is one transaction)
        with trio.fail_after(WAIT):
            while len(chain(replica, chat_id)) == before:
                await trio.sleep(0.002)
        cluster.kill(2)
        await cluster.wait_exit(2)
        caught = len(chain(replica, chat_id))
        await cluster.restart(2)
        await until(lambda: chain(replica, chat_id) == chain(home, chat_id))
        assert before < caught < total, "the kill landed in the middle of the catch-up"
        assert sum(posts(replica, chat_id).values()) == 3000
        # what a catch-up stored is searchable there like anything else (the search index)
        bob = await sign_in(stack, cluster, 2, "bob")
        found = await bob.call("messages.search", {"query": "3.599", "chat": chat_id})
        assert [e["body"]["text"] for e in found["results"]] == ["3.599"]
        assert (await bob.call("chats.get", {"chat": chat_id}))["chat"]["last_seq"] == total


async def test_outbox_and_home_survive_kill_9_nothing_lost_nothing_twice(tmp_path: Path) -> None:
    async with (
        Cluster.running(tmp_path / "c", 2, log_level="warning") as cluster,
        AsyncExitStack() as stack,
    ):
        home, replica = cluster.node(1).data, cluster.node(2).data
        alice = await sign_in(stack, cluster, 1, "alice")
        bob = await sign_in(stack, cluster, 2, "bob")
        chat_id = await group_with(cluster, alice, "bob@n2")
        # 1. the home is down: bob's posts are acknowledged as pending (outbox) ...
        cluster.kill(1)
        await cluster.wait_exit(1)
        queued = [secrets.randbits(63) for _ in range(100)]
        for r in queued:
            sent = await bob.call("messages.send", {"chat": chat_id, "random_id": r, "text": "q"})
            assert sent["pending"] is True and sent["seq"] is None
        # ... and survive kill -9 of the replica that holds them
        cluster.kill(2)
        await cluster.wait_exit(2)
        assert len(read(replica, "SELECT id FROM fed_outbox")) == 100
        await cluster.restart(2)
        await cluster.restart(1)
        await until(lambda: len(posts(home, chat_id)) == 100)

        # 2. kill -9 of the home in the middle of a burst from both sides
        alice = await sign_in(stack, cluster, 1, "alice")
        bob = await sign_in(stack, cluster, 2, "bob")
        acked: list[tuple[str, int]] = []

        async def burst(client: Client, name: str) -> None:
            for _ in range(300):
                r = secrets.randbits(63)
                try:
                    await client.call(
                        "messages.send", {"chat": chat_id, "random_id": r, "text": name}
                    )
                except RpcError:
                    return  # its node went away: what was acknowledged is what counts
                acked.append((name, r))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(burst, alice, "alice")
            nursery.start_soon(burst, bob, "bob")
            await trio.sleep(0.4)
            cluster.kill(1)
        await cluster.wait_exit(1)
        await cluster.restart(1)
        want = Counter(acked) + Counter(("bob", r) for r in queued)

        def settled() -> bool:
            got = posts(home, chat_id)
            return all(got[k] >= 1 for k in want) and chain(replica, chat_id) == chain(
                home, chat_id
            )

        await until(settled)
        got = posts(home, chat_id)
        assert all(got[k] == 1 for k in want), "a post was lost or sequenced twice"
        assert max(got.values()) == 1
        assert read(replica, "SELECT count(*) FROM fed_outbox") == [(0,)]
        assert len([k for k in acked if k[0] == "alice"]) > 0  # the burst did run


async def test_a_queued_post_can_be_cancelled_until_it_may_have_left(tmp_path: Path) -> None:
    async with (
        Cluster.running(tmp_path / "c", 2, log_level="warning") as cluster,
        AsyncExitStack() as stack,
    ):
        home = cluster.node(1).data
        alice = await sign_in(stack, cluster, 1, "alice")
        bob = await sign_in(stack, cluster, 2, "bob")
        chat_id = await group_with(cluster, alice, "bob@n2")
        cluster.kill(1)  # the home is down: posts wait in n2's outbox
        await cluster.wait_exit(1)
        rids = [secrets.randbits(63) for _ in range(3)]
        for r in rids:
            sent = await bob.call("messages.send", {"chat": chat_id, "random_id": r, "text": "q"})
            assert sent["pending"] is True
        took_back = await bob.call("messages.cancel", {"chat": chat_id, "random_id": rids[0]})
        assert took_back == {"cancelled": True, "seq": None}
        with pytest.raises(RpcError) as e:  # gone now, and never was: no such queued post
            await bob.call("messages.cancel", {"chat": chat_id, "random_id": rids[0]})
        assert e.value.code == "MESSAGE_NOT_FOUND"
        # after a restart of n2 the others may have left before it stopped: not cancellable
        await cluster.restart(2)
        bob = await sign_in(stack, cluster, 2, "bob")
        kept = await bob.call("messages.cancel", {"chat": chat_id, "random_id": rids[1]})
        assert kept == {"cancelled": False, "seq": None}
        await cluster.restart(1)
        await until(lambda: len(posts(home, chat_id)) == 2)
        assert set(posts(home, chat_id)) == {("bob", rids[1]), ("bob", rids[2])}
        await until(lambda: len(posts(cluster.node(2).data, chat_id)) == 2)
        done = await bob.call("messages.cancel", {"chat": chat_id, "random_id": rids[1]})
        assert done["cancelled"] is False and isinstance(done["seq"], int)  # sequenced
