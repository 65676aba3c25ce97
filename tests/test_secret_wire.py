"""Secret means secret: 1,000 secret messages and a secret file between two nodes, and
their plaintext appears nowhere a node or a wiretap could look.

Two real nodes in this process, linked over real loopback WebSockets; every path the
secret traffic takes runs through our FaultProxy with ``capture()`` on (alice's device to
n1, n1's link to n2, n2's link to n1), so the test sees every byte a wiretap would. The
devices are the real SDK (``SecretChats``). Afterwards: no plaintext in any captured byte,
in any file of either node's data folder (database, WAL, media, keys) or in any log line
the nodes wrote."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import trio
from nacl.signing import SigningKey

from federation import Federation
from federation.faultproxy import FaultProxy
from node.app import Node
from node.client import Client
from node.client.secret.chats import SecretChats
from tests.conftest import make_config
from tests.helpers import NodeLogs, add_user, admin, fresh_code
from tests.test_federation import links_up
from tests.test_secret_chats import device, wait_for
from tests.test_secret_relay import files_of

MESSAGES = 1000


@asynccontextmanager
async def tapped(tmp: Path) -> AsyncIterator[tuple[Node, Node, dict[str, FaultProxy]]]:
    """n1 and n2 whose links both run through capturing proxies, and a capturing proxy in
    front of n1 for a device."""
    async with AsyncExitStack() as stack:
        n1, n2 = [
            await stack.enter_async_context(
                Node.start(
                    make_config(
                        tmp / f"n{i}",
                        node={"name": f"n{i}", "listen": "127.0.0.1:0", "log_level": "debug"},
                        federation={"peering": "open"},
                    ),
                    parts=[Federation()],
                )
            )
            for i in (1, 2)
        ]
        taps = {
            "device->n1": await stack.enter_async_context(FaultProxy.open("127.0.0.1", n1.port)),
            "n2->n1": await stack.enter_async_context(FaultProxy.open("127.0.0.1", n1.port)),
            "n1->n2": await stack.enter_async_context(FaultProxy.open("127.0.0.1", n2.port)),
        }
        for tap in taps.values():
            tap.capture(limit=256 << 20)
        await admin(n2, "admin.peerAdd", {"url": url(taps["n2->n1"]), "pin": n1.node_id})
        await admin(n1, "admin.peerAdd", {"url": url(taps["n1->n2"]), "pin": n2.node_id})
        await links_up(n1, 1)
        await links_up(n2, 1)
        for n, tap in ((n1, "n1->n2"), (n2, "n2->n1")):
            [peer] = (await admin(n, "admin.peerList"))["peers"]
            assert peer["url"] == url(taps[tap])  # the link really runs through the tap
        yield n1, n2, taps


def url(proxy: FaultProxy) -> str:
    return f"ws://127.0.0.1:{proxy.port}/"


async def test_secret_plaintext_is_on_no_node_and_no_wire(
    tmp_path: Path, node_logs: NodeLogs
) -> None:
    marker = "SECRET-" + secrets.token_hex(6)
    blob = (marker.encode() + b"\n") * 20_000  # ~380 KB of a file
    async with (
        tapped(tmp_path) as (n1, n2, taps),
        Client.connect(url(taps["device->n1"])) as alice_c,
        device(n2, "bob", tmp_path / "bob") as bob,
    ):
        await add_user(n1, "alice")
        key = SigningKey.generate()
        await alice_c.sign_in("alice", await fresh_code(n1, "alice"), key, "phone")
        alice = SecretChats(alice_c, tmp_path / "alice", key)
        try:
            await alice.ensure_keys()
            chat = await alice.start(f"bob@{n2.node_id}")
            assert (await wait_for(bob, "request", 20))["chat"] == chat
            await bob.sc.accept(chat)
            with trio.fail_after(20):
                while alice.chat(chat)["state"] != "active":
                    await alice.sync()
                    await trio.sleep(0.05)

            got: list[str] = []
            async with trio.open_nursery() as nursery:
                await nursery.start(bob.sc.listen)
                for i in range(MESSAGES):
                    await alice.send(chat, f"{marker} number {i}")
                with trio.fail_after(120):
                    while len(got) < MESSAGES:
                        ev = await bob.sc.next_event(60)
                        if ev["type"] == "message":
                            got.append(ev["message"]["text"])
                nursery.cancel_scope.cancel()
            assert got == [f"{marker} number {i}" for i in range(MESSAGES)]
            reply = await bob.sc.send(chat, f"{marker} back from bob")
            assert reply["text"].startswith(marker)

            # a secret file: encrypted on alice's device, uploaded to n1 as opaque bytes,
            # fetched by n2 from n1 for bob, decrypted on bob's device
            f = tmp_path / "secret.txt"
            f.write_bytes(blob)
            sent = await alice.send_file(chat, f)
            with trio.fail_after(30):
                while not any(m.get("file") for m in bob.sc.history(chat)):
                    await bob.sc.sync()
                    await trio.sleep(0.05)
            got_file = await bob.sc.download(chat, sent["id"], tmp_path / "bob-got.txt")
            assert got_file == blob or (tmp_path / "bob-got.txt").read_bytes() == blob
            assert alice.verify(chat) == bob.sc.verify(chat)
        finally:
            alice.close_store()

    needle = marker.encode()
    for name, tap in taps.items():
        assert tap.captured is not None
        seen = bytes(tap.captured["up"]) + bytes(tap.captured["down"])
        assert needle not in seen, f"plaintext on the wire {name}"
    # the taps saw the traffic: the device's path carried the 1,000 envelopes and the file
    assert len(taps["device->n1"].captured["up"]) > MESSAGES * 256 + len(blob)  # type: ignore[index]
    assert len(taps["n1->n2"].captured["up"]) > MESSAGES * 256  # n1 handing them to n2
    assert len(taps["n2->n1"].captured["down"]) > len(blob)  # n2 fetching the file
    for i in (1, 2):
        for path in files_of(tmp_path / f"n{i}"):
            assert needle not in path.read_bytes(), path
    logged = "\n".join(node_logs.lines)
    assert "secret." in logged and marker not in logged
