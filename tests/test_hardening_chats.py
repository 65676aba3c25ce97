"""Hostile-testing findings on chats (issue 10): a re-added user's name, erasure of deleted and
edited text from disk, and the order in which one chat's pushes arrive. Real node, real SDK
over real WebSockets, real SQLite file."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import trio
from nacl.signing import VerifyKey

from node.app import Node
from node.chats.events import open_event, verify_chain
from node.client import RpcError
from node.client.media import upload_file
from tests.conftest import fedgram, make_config
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


# Each text carries one made-up word found nowhere else, so a leftover in the search index
# (which stores words, not whole texts) is caught as well as a leftover text.
ORIGINAL = "the original zanzibarquokka text"
EDIT_1 = "the first edit yellowmarmot"
EDIT_2 = "the second edit plumnarwhal"
CAPTION = "a caption saffronotter"
FILE_NAME = "tangerinewalrus.txt"
KEPT = "this stays vermilionibis"
GONE = [ORIGINAL, EDIT_1, EDIT_2, CAPTION, "zanzibarquokka", "yellowmarmot", "plumnarwhal"]
GONE += ["saffronotter"]


def _on_disk(data: Path) -> bytes:
    """Every byte of the database files as they are now: main file (free pages included),
    WAL and shared-memory index."""
    return b"".join(p.read_bytes() for p in sorted(data.glob("fedgram.db*")))


def _found(blob: bytes, words: list[str]) -> list[str]:
    return [w for w in words if w.encode() in blob]


async def test_deleted_and_edited_text_is_erased_from_disk(tmp_path: Path) -> None:
    data = tmp_path / "n1"
    fedgram("init", "--data", str(data), "--name", "test", check=True)  # for the offline CLI
    cfg = make_config(data, media={"upload_ttl": 1})
    async with (
        Node.start(cfg) as node,
        signed_in(node, "alice") as a,
        signed_in(node, "bob") as b,
    ):
        node.chats.compaction.min_gap = 0.2  # the edits' round may end before the delete
        chat = (await a.call("chats.startPrivate", {"user": "bob"}))["chat"]["id"]
        kept = await send(a, chat, KEPT)
        f = tmp_path / "upload.bin"
        f.write_bytes(b"attachment bytes " * 100)
        media = await upload_file(a, f, "u1", name=FILE_NAME)
        ref = [{"media_id": media["media_id"], "kind": "document"}]
        with_media = await send(a, chat, CAPTION, media=ref)
        s = await send(a, chat, ORIGINAL)
        await a.call("messages.edit", {"chat": chat, "seq": s, "text": EDIT_1})
        await a.call("messages.edit", {"chat": chat, "seq": s, "text": EDIT_2})
        now = {e["seq"]: e for e in (await b.call("chats.history", {"chat": chat}))["events"]}
        assert now[s]["body"] == {"text": EDIT_2} and now[s]["edited"] is not None
        assert (await b.call("messages.search", {"query": "zanzibarquokka"}))["results"] == []
        hits = (await b.call("messages.search", {"query": "plumnarwhal"}))["results"]
        assert [h["seq"] for h in hits] == [s]

        before = node.chats.compaction.rounds
        await a.call("messages.delete", {"chat": chat, "seq": s})
        await a.call("messages.delete", {"chat": chat, "seq": with_media})

        # what everyone sees: the messages are there as deleted, nothing of their text
        hist = (await b.call("chats.history", {"chat": chat}))["events"]
        by_seq = {e["seq"]: e for e in hist}
        for seq in (s, with_media):
            assert by_seq[seq]["deleted"] is True and by_seq[seq]["body"] == {}
            assert by_seq[seq]["sender"] == "alice@test"
        assert by_seq[kept]["body"] == {"text": KEPT}
        for word in ("plumnarwhal", "saffronotter"):
            assert (await b.call("messages.search", {"query": word}))["results"] == []
        last = (await b.call("chats.get", {"chat": chat}))["chat"]["last"]
        assert last["seq"] == s and last["body"] == {} and last["deleted"] is True
        diff = await b.call("updates.getDifference", {"pts": 0, "chats": {chat: 0}})
        assert not _found(json.dumps(diff, default=str).encode(), GONE)

        # the log still verifies: chain, signatures, and the content that is left
        assert (await admin(node, "admin.chatVerify", {"chat": chat}))["ok"] is True
        export = await admin(node, "admin.chatExport", {"chat": chat})
        rows = [(e["seq"], e["raw"], e["hash"], e["sig"], e["content"]) for e in export["events"]]
        assert verify_chain(VerifyKey(export["home_key"]), chat, rows) == len(rows)
        erased = [
            e["seq"]
            for e in export["events"]
            if e["content"] is None and "content_hash" in open_event(e["raw"])
        ]
        assert erased == [with_media, s, s + 1, s + 2]  # the messages and both edits
        assert not _found(repr(export).encode(), GONE)

        # and the files: once the compaction that follows an erasure has run, none of
        # the texts is anywhere in the database, its WAL or its free pages
        with trio.fail_after(30):
            while node.chats.compaction.rounds <= before or node.chats.compaction.pending:
                await trio.sleep(0.05)
        on_disk = _on_disk(data)
        assert KEPT.encode() in on_disk  # the scan does see text that was not erased
        assert _found(on_disk, GONE) == []

        # the attachment's own record (its file name) goes with the media sweep, once no
        # message carries it and it is older than upload_ttl
        await trio.sleep(1.1)
        assert (await admin(node, "admin.mediaGc"))["dropped_media"] == 1
    on_disk = _on_disk(data)  # stopped: the WAL was checkpointed into the file
    assert KEPT.encode() in on_disk
    assert _found(on_disk, [*GONE, "tangerinewalrus"]) == []

    # an export made elsewhere (here: offline, on the database) verifies on its own
    out = fedgram("chat", "export", chat, "--data", str(data), check=True).stdout
    assert not _found(out.encode(), GONE)
    lines = [json.loads(x) for x in out.splitlines()]
    assert [x["seq"] for x in lines if x["erased"]] == [with_media, s, s + 1, s + 2]
    exported = tmp_path / "export.jsonl"
    exported.write_text(out)
    ok = fedgram("chat", "verify", chat, "--export", str(exported), check=True).stdout
    assert ok.startswith(f"ok: {len(lines)} events (4 with erased content)")
    # a changed byte in content that is still there is caught
    exported.write_text(
        out.replace(KEPT.encode().hex(), KEPT.replace("this", "that").encode().hex())
    )
    bad = fedgram("chat", "verify", chat, "--export", str(exported))
    assert bad.returncode == 1 and f"seq {kept}: content does not match" in bad.stderr
