"""Pushed replication (issue 17): a chat's home sends a live replica the new events with
its poke, so the replica applies them without a ``fed.pull`` round trip; anything a
push cannot vouch for (a batch that does not follow the replica's head, does not verify,
or does not come from the chat's home) is not applied and the replica pulls instead.
Real nodes in this process, linked over real loopback WebSockets; real SDK clients."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import trio
from nacl.signing import SigningKey

from federation import Federation
from node.app import Node
from node.chats import events
from node.client import Client
from tests.helpers import next_of, signed_in
from tests.test_federation import WAIT, chain, cluster, has_chat, rid, until


def fed(node: Node) -> Federation:
    impl = node.remote.impl
    assert isinstance(impl, Federation)
    return impl


def pulls_served(node: Node) -> int:
    """``fed.pull`` calls this node answered (its request counter, as /metrics shows)."""
    return node.metrics.requests.get(("fed.pull", "OK"), 0)


async def message(c: Client, text: str) -> dict[str, Any]:
    """The next chat.event message pushed to a client."""
    while True:
        u = await next_of(c, "chat.event", timeout=WAIT)
        if u["event"]["kind"] == "message" and u["event"]["body"].get("text") == text:
            ev: dict[str, Any] = u["event"]
            return ev


async def outbox_rows(node: Node) -> int:
    return int(
        await node.db.read(lambda c: c.execute("SELECT count(*) FROM fed_outbox").fetchone()[0])
    )


async def settled(home: Node, replica: Node, chat_id: str) -> None:
    """The replica has the home's whole chain and no pull is under way (pushes apply)."""

    async def same() -> bool:
        return await chain(home, chat_id) == await chain(replica, chat_id) != []

    await until(same)
    lock = fed(replica)._pull_locks.get(chat_id)
    await until(lambda: _true(lock is None or not lock.locked()))


async def _true(x: bool) -> bool:
    return x


async def test_a_live_replica_applies_pushed_events_without_pulling(tmp_path: Path) -> None:
    async with (
        cluster(tmp_path, 2) as (a, b),
        signed_in(a, "alice") as al,
        signed_in(b, "bob") as bo,
    ):
        g = await al.call("chats.createGroup", {"title": "G", "members": ["bob@n2"]})
        chat_id = g["chat"]["id"]
        await has_chat(b, chat_id)
        await settled(a, b, chat_id)
        before = pulls_served(a)
        for i in range(10):  # the home's users: sequenced there, pushed here
            await al.call("messages.send", {"chat": chat_id, "random_id": rid(), "text": f"a{i}"})
            ev = await message(bo, f"a{i}")
            assert ev["sender"] == "alice@n1"
        for i in range(10):  # the replica's users: outbox, fed.post, pushed back here
            sent = await bo.call(
                "messages.send", {"chat": chat_id, "random_id": rid(), "text": f"b{i}"}
            )
            assert sent["pending"] is True
            await message(bo, f"b{i}")
            await message(al, f"b{i}")
        assert pulls_served(a) == before  # every one of the 20 came with its poke
        assert await chain(a, chat_id) == await chain(b, chat_id)
        assert len(await chain(a, chat_id)) >= 21
        # the posted rows are deleted by a later write, not before the next post
        await until(lambda: _zero(outbox_rows(b)))
        texts = [
            e["body"]["text"]
            for e in (await bo.call("chats.history", {"chat": chat_id, "limit": 50}))["events"]
            if e["kind"] == "message"
        ]
        assert sorted(texts) == sorted([f"a{i}" for i in range(10)] + [f"b{i}" for i in range(10)])
        assert len(texts) == len(set(texts)) == 20  # none twice


async def _zero(n: Any) -> bool:
    return bool(await n == 0)


async def test_a_burst_of_replica_posts_keeps_the_senders_order(tmp_path: Path) -> None:
    """Many posts of one replica's users in flight at once: each sender's are sequenced
    in the order they were queued, exactly once (outbox rows are deleted behind the pump,
    and SQLite reuses the ids of deleted rows: the pump must not skip a new row for it)."""
    async with (
        cluster(tmp_path, 2) as (a, b),
        signed_in(a, "alice") as al,
        signed_in(b, "bob") as bo,
        signed_in(b, "bea") as be,
    ):
        g = await al.call("chats.createGroup", {"title": "G", "members": ["bob@n2", "bea@n2"]})
        chat_id = g["chat"]["id"]
        await has_chat(b, chat_id)
        for round_ in range(3):  # the outbox empties between rounds: ids get reused
            async with trio.open_nursery() as n:
                for who, c in (("bob", bo), ("bea", be)):

                    async def lane(who: str = who, c: Client = c, r: int = round_) -> None:
                        for i in range(30):
                            text = f"{who}-{r}-{i:02d}"
                            await c.call(
                                "messages.send", {"chat": chat_id, "random_id": rid(), "text": text}
                            )

                    n.start_soon(lane)
            await until(lambda: _zero(outbox_rows(b)))
        await settled(a, b, chat_id)
        rows = await a.db.read(
            lambda c: c.execute(
                "SELECT seq, content FROM events WHERE chat_id = ? AND kind = 'message' "
                "ORDER BY seq",
                (chat_id,),
            ).fetchall()
        )
        got = [str(events.open_content(bytes(r[1]))["text"]) for r in rows]
        for who in ("bob", "bea"):
            mine = [t for t in got if t.startswith(who)]
            assert mine == sorted(mine) and len(mine) == 90, who


async def test_pushes_that_do_not_follow_verify_or_come_from_the_home_are_not_applied(
    tmp_path: Path,
) -> None:
    async with (
        cluster(tmp_path, 3) as (a, b, c),
        signed_in(a, "alice") as al,
        signed_in(b, "bob"),
        signed_in(c, "carol"),
    ):
        g = await al.call("chats.createGroup", {"title": "G", "members": ["bob@n2", "carol@n3"]})
        chat_id = g["chat"]["id"]
        for i in range(3):
            await al.call("messages.send", {"chat": chat_id, "random_id": rid(), "text": f"{i}"})
        await has_chat(b, chat_id)
        await settled(a, b, chat_id)

        async def ready() -> tuple[int, bytes, bytes]:
            """A real message first (pushed or pulled, either way the replica then knows
            its head for the next push), then (head, its hash, the hash before it)."""
            await al.call("messages.send", {"chat": chat_id, "random_id": rid(), "text": "ok"})
            await settled(a, b, chat_id)
            good = await chain(a, chat_id)
            assert fed(b)._copy_heads[chat_id] == good[-1]  # a push would be looked at
            return good[-1][0], good[-1][1], good[-2][1]

        def forged(key: SigningKey, head: int, prev: bytes, text: str) -> list[Any]:
            content, ch = events.seal_content({"text": text})
            s = events.seal_event(
                key,
                chat=chat_id,
                seq=head + 1,
                kind="message",
                sender=f"alice@{a.node_id}",
                ts=time.time(),
                body={},
                random_id=rid(),
                prev=prev,
                content_hash=ch,
            )
            return [s.raw, s.sig, content]

        def push(entry: list[Any], head: int, after: int) -> dict[str, Any]:
            return {
                "chats": [[chat_id, head + 1]],
                "events": {
                    chat_id: {"after": after, "events": [entry], "head": head + 1}
                    | {"users": {}, "nodes": {}}
                },
            }

        async def refused(caller: Node, entry: list[Any], head: int, after: int) -> Any:
            async with Client.connect(b.url, identity=caller.identity) as as_peer:
                answer = await as_peer.call("fed.poke", push(entry, head, after))
            await trio.sleep(0.3)  # whatever the replica pulls instead: the home's chain
            await settled(a, b, chat_id)
            assert len(await chain(b, chat_id)) == head  # nothing of the push was stored
            return answer

        # a batch that does not follow the replica's head: not applied, its head comes back
        head, h, _ = await ready()
        answer = await refused(a, forged(a.identity, head - 1, h, "gap"), head, head - 1)
        assert answer["heads"] == {chat_id: head}
        # the home's key, but content other than the one the event commits to
        head, h, _ = await ready()
        entry = forged(a.identity, head, h, "real")
        entry[2] = events.seal_content({"text": "swapped"})[0]
        answer = await refused(a, entry, head, head)
        assert chat_id not in answer.get("heads", {})
        # signed by the home, but chained to another event than the replica's head
        head, h, before = await ready()
        answer = await refused(a, forged(a.identity, head, before, "fork"), head, head)
        assert chat_id not in answer.get("heads", {})
        # a peer that is not the chat's home, pushing a continuation it signed itself
        head, h, _ = await ready()
        answer = await refused(c, forged(c.identity, head, h, "from n3"), head, head)
        assert chat_id not in answer.get("heads", {})
        # the control: the same push, well formed and signed with the home's key, is
        # applied (the home never sequenced it, so the replica's copy is now ahead)
        head, h, _ = await ready()
        entry = forged(a.identity, head, h, "well formed")
        async with Client.connect(b.url, identity=a.identity) as as_a:
            answer = await as_a.call("fed.poke", push(entry, head, head))
        assert answer["heads"] == {chat_id: head + 1}
        assert (await chain(b, chat_id))[-1] == (head + 1, events.event_hash(entry[0]))
