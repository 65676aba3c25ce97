"""Secret chats across nodes, and through a node that cannot read them.

Three real nodes in a line, n1 - n2 - n3 (n1 and n3 have no link: neither knows the other's
URL), each in this process on its own port and data folder, linked over real loopback
WebSockets. alice on n1 and carol on n3 hold a secret chat through the real SDK
(``SecretChats``): n2 carries the envelopes (store-and-forward in its secret outbox) and
its database, WAL, media folder and log output hold none of the plaintext."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from federation import Federation
from node.app import Node
from tests.conftest import make_config
from tests.helpers import NodeLogs, admin
from tests.test_federation import links_up
from tests.test_secret_chats import Device, device, wait_for


@asynccontextmanager
async def line(
    tmp: Path, secret: Callable[[int], dict[str, Any]] | None = None
) -> AsyncIterator[list[Node]]:
    """n1 - n2 - n3: each linked to its neighbours only."""
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                Node.start(
                    make_config(
                        tmp / f"n{i}",
                        node={
                            "name": f"n{i}",
                            "listen": "127.0.0.1:0",
                            "log_level": "debug",
                        },
                        federation={"peering": "open"},
                        secret=secret(i) if secret else {},
                    ),
                    parts=[Federation()],
                )
            )
            for i in (1, 2, 3)
        ]
        n1, n2, n3 = nodes
        for a, b in ((n1, n2), (n2, n1), (n2, n3), (n3, n2)):
            await admin(a, "admin.peerAdd", {"url": b.url, "pin": b.node_id})
        await links_up(n1, 1)
        await links_up(n2, 2)
        await links_up(n3, 1)
        yield nodes


def peer_info(peers: list[dict[str, Any]], node: Node) -> dict[str, Any]:
    return next(p for p in peers if p["node_id"] == node.node_id)


def files_of(data: Path) -> list[Path]:
    return [p for p in data.rglob("*") if p.is_file() and p.suffix != ".sock"]


async def connect(a: Device, b: Device, address: str) -> str:
    chat = await a.sc.start(address)
    assert (await wait_for(b, "request", 20))["chat"] == chat
    await b.sc.accept(chat)
    assert (await wait_for(a, "accepted", 20))["chat"] == chat
    return chat


async def test_secret_chat_through_a_relay_that_sees_only_ciphertext(
    tmp_path: Path, node_logs: NodeLogs
) -> None:
    async with line(tmp_path) as (n1, n2, n3):
        assert all(p["node_id"] != n3.node_id for p in (await admin(n1, "admin.peerList"))["peers"])
        marker = secrets.token_hex(8)  # in every plaintext: grep for it afterwards
        async with (
            device(n1, "alice", tmp_path / "alice") as alice,
            device(n3, "carol", tmp_path / "carol") as carol,
        ):
            chat = await connect(alice, carol, f"carol@{n3.node_id}")
            for i in range(30):
                await alice.sc.send(chat, f"{marker} from alice {i}")
                await carol.sc.send(chat, f"{marker} from carol {i}")
            want = {f"{marker} from {w} {i}" for w in ("alice", "carol") for i in range(30)}

            async def texts(d: Device) -> set[str]:
                await d.sc.sync()
                return {m["text"] for m in d.sc.history(chat)}

            with trio.fail_after(30):
                while await texts(alice) != want or await texts(carol) != want:
                    await trio.sleep(0.05)
            assert alice.sc.verify(chat) == carol.sc.verify(chat)
            order = [m["text"] for m in carol.sc.history(chat) if "from alice" in m["text"]]
            assert order == [f"{marker} from alice {i}" for i in range(30)]

            # a secret file: uploaded opaque to n1, fetched by n3 for carol through n2
            blob = (marker.encode() + b" file\n") * 40_000  # ~1 MB: several ranges
            f = tmp_path / "file.txt"
            f.write_bytes(blob)
            sent = await alice.sc.send_file(chat, f)
            with trio.fail_after(20):
                while not any(m.get("file") for m in carol.sc.history(chat)):
                    await carol.sc.sync()
                    await trio.sleep(0.05)
            got = await carol.sc.download(chat, sent["id"], tmp_path / "carol-file.txt")
            assert got == blob or (tmp_path / "carol-file.txt").read_bytes() == blob

        # n2 carried it both ways, and says so; n1 and n3 know n2 carried for them
        p2 = (await admin(n2, "admin.peerList"))["peers"]
        assert peer_info(p2, n1)["secret_relayed_for"] > 30 * 256
        assert peer_info(p2, n3)["secret_relayed_for"] > 30 * 256 + len(blob)  # and the file
        p1 = (await admin(n1, "admin.peerList"))["peers"]
        assert peer_info(p1, n2)["secret_relayed_by"] > 30 * 256

        async def carrying() -> int:  # a row leaves once n3 acknowledged it to n2
            return int(
                await n2.db.read(
                    lambda c: c.execute("SELECT count(*) FROM fed_secret_outbox").fetchone()[0]
                )
            )

        with trio.fail_after(10):
            while await carrying():
                await trio.sleep(0.05)
        logged = "\n".join(node_logs.lines)
        assert "secret." in logged  # the nodes logged their work (sizes and ids only)
    # none of the plaintext anywhere on any node: databases, WALs, media, keys, logs
    for i in (1, 2, 3):
        for f in files_of(tmp_path / f"n{i}"):
            assert marker.encode() not in f.read_bytes(), f
    assert marker not in logged


async def test_no_relay_the_envelope_waits_then_its_sender_is_told(tmp_path: Path) -> None:
    """n2 refuses to relay: alice's envelopes wait in n1's secret outbox (nothing lost),
    then pass their short TTL and alice's device gets ``failed``."""

    def secret(i: int) -> dict[str, Any]:
        return {"relay": False} if i == 2 else {"ttl": 3}

    async with (
        line(tmp_path, secret) as (n1, _n2, n3),
        device(n1, "alice", tmp_path / "alice") as alice,
        device(n3, "carol", tmp_path / "carol") as carol,
    ):
        with pytest.raises(Exception) as e:  # the keys cannot be fetched either
            await alice.sc.start(f"carol@{n3.node_id}")
        assert "SECRET_RELAY_REFUSED" in str(e.value) or "SECRET_NO_ROUTE" in str(e.value)
        # a raw envelope for carol's device: forwarded, then waiting, then failed
        _, carol_dev = await carol.sc.whoami()
        sent = await alice.client.call(
            "secret.send",
            {
                "to": f"carol@{n3.node_id}",
                "device": carol_dev,
                "id": 42,
                "payload": b"\x00" * 300,
            },
        )
        assert sent["state"] == "forwarded"

        async def waiting() -> int:
            return int(
                await n1.db.read(
                    lambda c: c.execute("SELECT count(*) FROM fed_secret_outbox").fetchone()[0]
                )
            )

        assert await waiting() == 1
        with trio.fail_after(20):
            while True:
                items = (await alice.client.call("secret.fetch", {}))["items"]
                if any(x["kind"] == "failed" and x["id"] == 42 for x in items):
                    break
                await trio.sleep(0.2)
        assert await waiting() == 0
        assert (await carol.client.call("secret.fetch", {}))["items"] == []


async def test_an_offline_device_loses_its_queue_after_the_ttl_and_both_sides_are_told(
    tmp_path: Path,
) -> None:
    """carol's device on n3 stays away past n3's TTL: her queue is dropped; on her return
    she is told how many were lost, and alice on n1 (through the relay n2) is told too."""

    def secret(i: int) -> dict[str, Any]:
        return {"ttl": 2} if i == 3 else {}

    async with (
        line(tmp_path, secret) as (n1, _n2, n3),
        device(n1, "alice", tmp_path / "alice") as alice,
        device(n3, "carol", tmp_path / "carol") as carol,
    ):
        _, carol_dev = await carol.sc.whoami()
        for i in range(3):
            sent = await alice.client.call(
                "secret.send",
                {"to": f"carol@{n3.node_id}", "device": carol_dev, "id": 100 + i, "payload": b"x"},
            )
            assert sent["state"] == "forwarded"

        async def notices(d: Device, kind: str) -> list[dict[str, Any]]:
            items = (await d.client.call("secret.fetch", {}))["items"]
            return [x for x in items if x["kind"] == kind]

        with trio.fail_after(20):
            while not (mine := await notices(alice, "expired")):
                await trio.sleep(0.2)
        assert sum(x["count"] for x in mine) == 3 and mine[0]["from"].startswith("carol@")
        theirs = await notices(carol, "expired")
        assert sum(x["count"] for x in theirs) == 3
        assert not await notices(carol, "message")  # the messages themselves are gone
