"""`fedgram chat purge` of a replica: real node processes (federation/cluster.py). The
replica's members leave through the home first, so the home stops sending the chat; while
the home is down nothing is purged."""

from __future__ import annotations

import json
import signal
import sqlite3
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio
from nacl.signing import SigningKey

from federation.cluster import Cluster
from node.client import Client
from tests.conftest import fedgram

WAIT = 30.0


def read(data: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{data / 'fedgram.db'}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


async def until(pred: Any, timeout: float = WAIT) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.05)


async def cli(*args: str) -> Any:
    return await trio.to_thread.run_sync(lambda: fedgram(*args, timeout=90))


async def test_purge_a_replica_leaves_through_the_home(tmp_path: Path) -> None:
    async with (
        Cluster.running(tmp_path / "c", 2, log_level="warning") as cluster,
        AsyncExitStack() as stack,
    ):
        home, replica = cluster.node(1).data, cluster.node(2).data
        key = SigningKey.generate()
        alice = await stack.enter_async_context(Client.connect(cluster.node(1).url))
        await alice.sign_in("alice", await cluster.add_user(1, "alice"), key, "d")
        await cluster.add_user(2, "bob")
        g = await alice.call("chats.createGroup", {"title": "G", "members": ["bob@n2"]})
        chat = str(g["chat"]["id"])
        for i in range(3):
            await alice.call("messages.send", {"chat": chat, "random_id": i + 1, "text": f"m{i}"})
        count = "SELECT count(*) FROM events WHERE chat_id = ?"
        await until(lambda: read(replica, count, chat)[0][0] >= 4)  # create + 3

        # the home is down: the replica cannot tell it, so nothing is purged
        cluster.kill(1, signal.SIGKILL)
        await cluster.wait_exit(1)
        r = await cli("chat", "purge", chat, "--yes", "--data", str(replica))
        assert r.returncode == 1, r.stderr
        assert "PEER_UNREACHABLE" in r.stderr and "nothing was purged" in r.stderr
        assert read(replica, "SELECT count(*) FROM chats WHERE id = ?", chat) == [(1,)]

        await cluster.restart(1)
        await cluster.wait_links_up()
        # the peer's link is a session of the home's, listed with the peer's node id
        r = await cli("session", "list", "--json", "--data", str(home))
        links = [x for x in json.loads(r.stdout) if x["role"] == "node"]
        assert [x["node"] for x in links] == [cluster.node(2).node_id]
        assert links[0]["user"] is None
        r = await cli("chat", "purge", chat, "--yes", "--json", "--data", str(replica))
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["left_home"] == 1 and out["home"] == cluster.node(1).node_id
        assert read(replica, "SELECT count(*) FROM chats WHERE id = ?", chat) == [(0,)]
        assert read(replica, count, chat) == [(0,)]
        # on the home bob has left (a leave event, signed by the home)
        states = read(
            home,
            "SELECT m.state FROM chat_members m JOIN users u ON u.id = m.user_id "
            "WHERE m.chat_id = ? AND u.name = 'bob'",
            chat,
        )
        assert states == [("left",)]
        # the home goes on without sending the chat back
        async with Client.connect(cluster.node(1).url) as again:
            await again.authorize(key)
            await again.call("messages.send", {"chat": chat, "random_id": 99, "text": "after"})
        await trio.sleep(2.0)
        assert read(replica, "SELECT count(*) FROM chats WHERE id = ?", chat) == [(0,)]
