"""The chat-log engine (node/chats/log.py): a replica is the home's state replayed.

A busy chat is driven through a real node; its raw signed events and content records (what
federation ships, taken from admin.chatExport) are then replayed with ``log.receive``
(verify_next + apply, nothing else) into an EMPTY database opened with the same
migrations, and everything a reader sees must be identical. Then verify_next and the
one declared list of kinds are tested event by event.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey, VerifyKey

from node.app import Node
from node.chats import events, log, store
from node.chats.events import GENESIS, ChainError, Sealed, verify_next
from node.chats.store import Member
from node.client.media import upload_file
from node.interfaces import Effects
from node.storage import Database
from tests.helpers import admin, send, signed_in

CHAT_TABLES_READ = ("nodes", "users")  # what a replica's user directory holds beforehand


async def _busy_chat(node: Node, tmp_path: Path) -> str:
    """A group that sees every kind of event; returns its id."""
    async with (
        signed_in(node, "alice") as a,
        signed_in(node, "bob") as b,
        signed_in(node, "carol") as c,
        signed_in(node, "dave") as d,
        signed_in(node, "eve") as e,
    ):
        chat = (
            await a.call(
                "chats.createGroup", {"title": "Plans", "about": "v1", "members": ["bob", "carol"]}
            )
        )["chat"]["id"]
        s1 = await send(a, chat, "hello all")
        s2 = await send(b, chat, "hi alice", reply_to=s1)
        await send(c, chat, "lunch?")
        await a.call("messages.edit", {"chat": chat, "seq": s1, "text": "hello everyone"})
        await a.call("messages.edit", {"chat": chat, "seq": s1, "text": "hello, everyone"})
        await b.call("messages.delete", {"chat": chat, "seq": s2})
        await a.call("messages.pin", {"chat": chat, "seq": s1})
        await a.call("messages.unpin", {"chat": chat})
        await a.call("chats.edit", {"chat": chat, "title": "Plans 2", "about": "v2"})
        await a.call("chats.addMembers", {"chat": chat, "users": ["dave"]})
        await send(d, chat, "thanks for adding me")
        await a.call("chats.setRole", {"chat": chat, "user": "bob", "role": "admin"})
        await b.call("chats.kick", {"chat": chat, "user": "carol"})
        await a.call("chats.kick", {"chat": chat, "user": "eve", "ban": True})  # not a member
        await a.call("chats.unban", {"chat": chat, "user": "eve"})
        invite = (await a.call("chats.createInvite", {"chat": chat}))["invite"]
        await e.call("chats.join", {"invite": invite})
        await e.call("chats.leave", {"chat": chat})
        await a.call("chats.kick", {"chat": chat, "user": "dave", "ban": True})
        # media: attached, forwarded (by content address), one copy deleted, then edited
        f = tmp_path / "report.pdf"
        f.write_bytes(b"%PDF-1.4 the quarterly report\n" * 500)
        media = await upload_file(a, f, "u1", mime="application/pdf")
        ref = [{"media_id": media["media_id"], "kind": "document"}]
        s4 = await send(a, chat, "the report", media=ref)
        s5 = await send(b, chat, "", forward_from={"chat": chat, "seq": s4})
        s6 = await send(a, chat, "again", media=ref)
        await a.call("messages.delete", {"chat": chat, "seq": s6})
        await a.call("messages.edit", {"chat": chat, "seq": s4, "text": "the final report"})
        await a.call("messages.pin", {"chat": chat, "seq": s5})
        await a.call("chats.setRole", {"chat": chat, "user": "bob", "role": "owner"})
        await send(b, chat, "I own this now")
    return str(chat)


def _copy_rows(src: sqlite3.Connection, dst: sqlite3.Connection, table: str) -> None:
    if not src.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone():
        return
    cur = src.execute(f"SELECT * FROM {table}")
    cols = [d[0] for d in cur.description]
    marks = ", ".join("?" * len(cols))
    rows = cur.fetchall()
    dst.executemany(f"INSERT OR REPLACE INTO {table}({', '.join(cols)}) VALUES ({marks})", rows)


def _strip_ids(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """History without this node's media handles (media_id is node-local by design)."""
    out = []
    for ev in evs:
        body = dict(ev["body"])
        if "media" in body:
            body["media"] = [{k: v for k, v in m.items() if k != "media_id"} for m in body["media"]]
        out.append({**ev, "body": body})
    return out


def _state(conn: sqlite3.Connection, chat_id: str) -> dict[str, Any]:
    """Everything readers of the chat see, and the derived state behind it."""
    everyone = Member(0, "member", "member", 1, 0)
    history = store.history(conn, 0, chat_id, everyone, None, None, 1000)
    chat = store.get_chat(conn, chat_id)
    assert chat is not None
    return {
        "history": _strip_ids(history),
        "log": _strip_ids(store.events_after(conn, 0, chat_id, 0, 1000)),
        "chat": (chat.kind, chat.title, chat.about, chat.last_seq, chat.last_hash, chat.members),
        "pinned": chat.pinned_seq,
        "members": conn.execute(
            "SELECT u.name, m.role, m.state, m.joined_seq FROM chat_members m "
            "JOIN users u ON u.id = m.user_id WHERE m.chat_id = ? ORDER BY u.name",
            (chat_id,),
        ).fetchall(),
        "rows": conn.execute(
            "SELECT seq, kind, random_id, target_seq, raw, hash, sig, content, edit_seq, "
            "edited_ts, deleted FROM events WHERE chat_id = ? ORDER BY seq",
            (chat_id,),
        ).fetchall(),
        "indexed": conn.execute(
            "SELECT e.seq, f.text FROM events_fts f JOIN events e ON e.id = f.rowid "
            "WHERE e.chat_id = ? ORDER BY e.seq",
            (chat_id,),
        ).fetchall(),
        "media_refs": conn.execute(
            "SELECT m.sha256, m.size, m.mime, m.name, r.seq FROM media_refs r "
            "JOIN media m ON m.id = r.media_id WHERE r.chat_id = ? ORDER BY r.seq",
            (chat_id,),
        ).fetchall(),
    }


@pytest.mark.parametrize("bulk", [False, True], ids=["apply", "apply_messages"])
async def test_replaying_the_raw_log_with_apply_rebuilds_the_same_chat(
    node: Node, tmp_path: Path, bulk: bool
) -> None:
    """``bulk``: runs of plain messages go through ``log.apply_messages`` (what a replica's
    catch-up uses), everything else through ``apply``: the same chat either way."""
    chat_id = await _busy_chat(node, tmp_path)
    export = await admin(node, "admin.chatExport", {"chat": chat_id})
    kinds = {events.open_event(e["raw"])["kind"] for e in export["events"]}
    assert kinds == set(events.KINDS)  # every kind, once or more
    original = await node.db.read(lambda c: _state(c, chat_id))
    assert original["pinned"] is not None and original["media_refs"]

    # what the replica knows before the first event: the users the log names (its user
    # directory), the chat (id, kind, home) it follows, and, for media, the files it has
    # fetched by content address (rows with the same bytes and description, own ids).
    kind = original["chat"][0]
    home_key = VerifyKey(export["home_key"])
    src_path = node.db.path
    # this node as the replica sees itself: another id and key (it never signs: it does
    # not sequence this chat); addresses resolve through the directory it was given
    replica_home = dataclasses.replace(
        node.chats.home, key=SigningKey.generate(), node_id="replica"
    )
    async with Database.open(tmp_path / "replica.db") as replica:

        def know(conn: sqlite3.Connection) -> None:
            src = sqlite3.connect(src_path)
            try:
                for table in CHAT_TABLES_READ:
                    _copy_rows(src, conn, table)
                for sha, size, mime, name in src.execute(
                    "SELECT DISTINCT sha256, size, mime, name FROM media"
                ):
                    conn.execute(
                        "INSERT INTO media(id, sha256, size, mime, name, created) "
                        "VALUES (?, ?, ?, ?, ?, 0)",
                        (f"fetched{sha.hex()[:16]}", sha, size, mime, name),
                    )
            finally:
                src.close()
            store.insert_chat(conn, chat_id, kind, node.node_id)

        await replica.write(know)

        bulk_runs: list[int] = []

        def replay(conn: sqlite3.Connection) -> int:
            fx = Effects()
            chat = store.get_chat(conn, chat_id)
            assert chat is not None
            run: list[tuple[Sealed, bytes | None, dict[str, Any], dict[str, Any] | None]] = []
            for e in export["events"]:
                sealed = Sealed(e["raw"], e["hash"], e["sig"])
                if not bulk:
                    log.receive(conn, replica_home, sealed, e["content"], home_key, fx)
                    continue
                ev = events.verify_next(
                    chat.last_hash if not run else run[-1][0].hash, sealed, home_key, e["content"]
                )
                body = events.open_content(e["content"]) if e["content"] else None
                if ev["kind"] == "message" and not (body or {}).get("media"):
                    run.append((sealed, e["content"], ev, body))
                    continue
                bulk_runs.append(len(run))
                log.apply_messages(conn, replica_home, chat, run, fx)
                run = []
                log.apply(conn, replica_home, sealed, e["content"], fx, chat=chat, decoded=ev)
            if bulk:
                bulk_runs.append(len(run))
                log.apply_messages(conn, replica_home, chat, run, fx)
                log.write_chat_head(conn, chat_id, chat.last_seq, chat.last_hash)
            return len(fx.chat_events)

        assert await replica.write(replay) == len(export["events"])
        assert not bulk or max(bulk_runs) >= 2  # runs of plain messages took the bulk path
        copy = await replica.read(lambda c: _state(c, chat_id))
        for key in original:
            assert copy[key] == original[key], key
        # the replica's copy verifies as the home's log, and a second delivery is refused
        rows = await replica.read(
            lambda c: c.execute(
                "SELECT seq, raw, hash, sig, content FROM events WHERE chat_id = ? ORDER BY seq",
                (chat_id,),
            ).fetchall()
        )
        assert events.verify_chain(home_key, chat_id, rows) == len(rows)
        first = export["events"][-1]
        with pytest.raises(ChainError):
            await replica.write(
                lambda c: log.receive(
                    c,
                    replica_home,
                    Sealed(first["raw"], first["hash"], first["sig"]),
                    first["content"],
                    home_key,
                )
            )


# --- verify_next and the declared kinds, event by event ----------------------------------
KEY = SigningKey.generate()


def _event(seq: int, prev: bytes, kind: str = "message", key: SigningKey = KEY) -> Sealed:
    _, committed = events.seal_content({"text": f"m{seq}"})
    return events.seal_event(
        key,
        chat="c1",
        seq=seq,
        kind=kind,
        sender="alice@n1",
        ts=1.0,
        body={},
        random_id=seq,
        prev=prev,
        content_hash=committed,
    )


def test_verify_next_accepts_a_chain_event_by_event() -> None:
    e1 = _event(1, GENESIS)
    e2 = _event(2, e1.hash)
    assert verify_next(GENESIS, e1, KEY.verify_key, chat="c1", seq=1)["seq"] == 1
    assert verify_next(e1.hash, e2, KEY.verify_key, chat="c1", seq=2)["prev"] == e1.hash


def test_verify_next_refuses_tampered_reordered_foreign_and_unknown() -> None:
    e1 = _event(1, GENESIS)
    e2 = _event(2, e1.hash)
    vk = KEY.verify_key
    # tampered bytes: the hash no longer matches; re-hashed: the signature fails
    bad = e2.raw.replace(b"alice", b"mallo")
    with pytest.raises(ChainError, match="hash does not match"):
        verify_next(e1.hash, Sealed(bad, e2.hash, e2.sig), vk)
    with pytest.raises(ChainError, match="signature"):
        verify_next(e1.hash, Sealed(bad, events.event_hash(bad), e2.sig), vk)
    # reordered: e2 before e1, or e1 delivered twice
    with pytest.raises(ChainError, match="prev hash"):
        verify_next(GENESIS, e2, vk)
    with pytest.raises(ChainError, match="event names chat/seq"):
        verify_next(e1.hash, e1, vk, chat="c1", seq=2)
    # signed by another key than the home's
    with pytest.raises(ChainError, match="signature"):
        verify_next(GENESIS, _event(1, GENESIS, key=SigningKey.generate()), vk)
    # a kind outside the one declared list, even properly signed
    with pytest.raises(ChainError, match="unknown event kind"):
        verify_next(GENESIS, _event(1, GENESIS, kind="teleport"), vk)
    # content that is not what the event commits to
    other, _ = events.seal_content({"text": "m1"})
    with pytest.raises(ChainError, match="content does not match"):
        verify_next(GENESIS, e1, vk, other)


async def test_unknown_kinds_are_refused_by_sequence_and_apply(node: Node) -> None:
    async with signed_in(node, "alice") as a:
        chat_id = (await a.call("chats.createGroup", {"title": "k"}))["chat"]["id"]
    home = node.chats.home

    def sequence_unknown(conn: sqlite3.Connection) -> None:
        chat = store.get_chat(conn, chat_id)
        assert chat is not None
        log.sequence(conn, home, chat, log.Draft("teleport", None, {}))

    with pytest.raises(log.LogError, match="unknown event kind"):
        await node.db.write(sequence_unknown)

    def apply_unknown(conn: sqlite3.Connection) -> None:
        chat = store.get_chat(conn, chat_id)
        assert chat is not None
        sealed = events.seal_event(
            home.key,
            chat=chat_id,
            seq=chat.last_seq + 1,
            kind="teleport",
            sender=None,
            ts=1.0,
            body={},
            random_id=None,
            prev=chat.last_hash,
        )
        log.apply(conn, home, sealed, None)

    with pytest.raises(log.LogError, match="unknown event kind"):
        await node.db.write(apply_unknown)
    # nothing was stored by either
    assert (await admin(node, "admin.chatVerify", {"chat": chat_id}))["events"] == 1
