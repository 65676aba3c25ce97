"""Push notifications for offline devices: a real node, real SDK clients over WebSockets and
a real HTTP receiver on 127.0.0.1 (scripts/push_receiver.py) that the node POSTs to.

Coalescing windows and retry waits are shortened through the node's config, so a burst is
"quiet" after 0.4 s here instead of 1.5 s."""

from __future__ import annotations

import functools
import itertools
import json
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from nacl.public import PrivateKey, SealedBox
from nacl.signing import SigningKey

from node.app import Node
from node.client import Client
from node.protocol.errors import RpcError
from node.push import payload
from scripts.push_receiver import PushReceiver
from tests.conftest import make_config
from tests.helpers import add_user, admin, fresh_code, send
from tests.test_federation import cluster
from tests.test_ops_metrics import scrape

QUIET = 0.4
PUSH: dict[str, Any] = {
    "coalesce_quiet": QUIET,
    "coalesce_max": 6.0,
    "retries": 2,
    "retry_base": 0.1,
    "retry_max": 0.3,
    "timeout": 2.0,
    "max_per_user": 3,
}


@asynccontextmanager
async def push_node(tmp: Path, name: str = "n1", **push: Any) -> AsyncIterator[Node]:
    async with Node.start(make_config(tmp / name, push={**PUSH, **push})) as n:
        yield n


@asynccontextmanager
async def receiving(status: Callable[[str, int], int] | None = None) -> AsyncIterator[PushReceiver]:
    rx = PushReceiver(status)
    async with trio.open_nursery() as nursery:
        await nursery.start(rx.serve)
        yield rx
        nursery.cancel_scope.cancel()


@dataclass
class Device:
    name: str
    user_id: int
    device_id: int
    signing: SigningKey
    push_key: PrivateKey
    endpoint: int = 0

    def open(self, body: bytes) -> dict[str, Any]:
        return payload.open_sealed(body, bytes(self.push_key))


@asynccontextmanager
async def online(node: Node, dev: Device) -> AsyncIterator[Client]:
    async with Client.connect(node.url) as c:
        await c.authorize(dev.signing)
        yield c


async def new_device(node: Node, name: str, url: str | None = None) -> Device:
    """A user's device that registered ``url`` (if given) and is offline again."""
    if not any(u["name"] == name for u in (await admin(node, "admin.userList"))["users"]):
        await add_user(node, name)
    key = SigningKey.generate()
    async with Client.connect(node.url) as c:
        auth = await c.sign_in(name, await fresh_code(node, name), key, "phone")
        dev = Device(name, auth["user_id"], auth["device_id"], key, PrivateKey.generate())
        if url is not None:
            ep = await c.call(
                "account.registerPush", {"url": url, "key": bytes(dev.push_key.public_key)}
            )
            dev.endpoint = ep["id"]
    await gone_offline(node, dev)
    return dev


async def gone_offline(node: Node, dev: Device) -> None:
    with trio.fail_after(5):
        while dev.device_id in node.hub.online_devices(dev.user_id):
            await trio.sleep(0.01)


async def group(c: Client, title: str, members: list[str]) -> str:
    g = await c.call("chats.createGroup", {"title": title, "members": members})
    return str(g["chat"]["id"])


async def code_of(aw: Any) -> str:
    with pytest.raises(RpcError) as e:
        await aw
    return e.value.code


async def test_offline_device_gets_one_push_for_a_burst_and_only_its_key_opens_it(
    tmp_path: Path,
) -> None:
    async with push_node(tmp_path) as node, receiving() as rx:
        bob = await new_device(node, "bob", rx.url("/bob"))
        alice = await new_device(node, "alice")
        async with online(node, alice) as a:
            chat = (await a.call("chats.startPrivate", {"user": "bob"}))["chat"]["id"]
            for i in range(50):
                await send(a, chat, f"message {i}")
            await rx.wait_for(lambda: len(rx.of("/bob")) >= 1)
            await trio.sleep(QUIET * 4)  # a second push would have come by now
        got = rx.of("/bob")
        assert len(got) == 1
        r = got[0]
        assert r.headers["content-type"] == "application/octet-stream"
        assert len(r.body) <= payload.BODY_MAX
        assert b"message" not in r.body and b"alice" not in r.body  # sealed
        fields = bob.open(r.body)
        assert fields["kind"] == "message" and fields["count"] == 50
        assert fields["chat"] == chat and fields["from"] == "alice@test"
        assert "preview" not in fields  # previews are off by default
        assert "chat_title" not in fields  # a private chat: the sender says who
        with pytest.raises(payload.PayloadError):
            payload.open_sealed(r.body, bytes(PrivateKey.generate()))
        with pytest.raises(payload.PayloadError):
            payload.open_sealed(r.body[:-1] + bytes([r.body[-1] ^ 1]), bytes(bob.push_key))
        st = (await admin(node, "admin.status"))["push"]
        assert st["sent"] == 1 and st["endpoints"] == 1 and st["failed"] == 0
        m = await scrape(node.port)  # the same counts on /metrics (issue 15's scrape)
        assert m[("fedgram_push_sent", ())] == 1 and m[("fedgram_push_endpoints", ())] == 1
        assert m[("fedgram_push_failed", ())] == 0 and m[("fedgram_push_queued", ())] == 0


async def test_a_chat_that_never_falls_quiet_is_still_notified_every_coalesce_max(
    tmp_path: Path,
) -> None:
    async with push_node(tmp_path, coalesce_max=1.0) as node, receiving() as rx:
        bob = await new_device(node, "bob", rx.url("/bob"))
        alice = await new_device(node, "alice")
        async with online(node, alice) as a:
            chat = (await a.call("chats.startPrivate", {"user": "bob"}))["chat"]["id"]
            t0 = trio.current_time()
            sent = 0
            while trio.current_time() - t0 < 3.0:  # a message every 0.2 s < QUIET
                await send(a, chat, "busy")
                sent += 1
                await trio.sleep(0.2)
            await rx.wait_for(lambda: sum(bob.open(r.body)["count"] for r in rx.of("/bob")) == sent)
        got = rx.of("/bob")
        # one push per ~coalesce_max while it stays busy, not one per message nor one at the end
        assert 2 <= len(got) <= 5, len(got)
        assert got[0].at - t0 < 1.0 + 0.5


async def test_previews_follow_the_users_setting(tmp_path: Path) -> None:
    async with push_node(tmp_path) as node, receiving() as rx:
        bob = await new_device(node, "bob", rx.url("/bob"))
        carol = await new_device(node, "carol", rx.url("/carol"))
        async with online(node, bob) as b:
            assert (await b.call("account.listPush"))["previews"] is False
            assert await b.call("account.setPushSettings", {"previews": True}) == {"previews": True}
            assert (await b.call("account.listPush"))["previews"] is True
        await gone_offline(node, bob)
        alice = await new_device(node, "alice")
        async with online(node, alice) as a:
            chat = await group(a, "Climbing", ["bob", "carol"])
            await send(a, chat, "meet at the wall at 6 " + "x" * 300)
            await rx.wait_for(lambda: len(rx.of("/bob")) == 1 and len(rx.of("/carol")) == 1)
        fb, fc = bob.open(rx.of("/bob")[0].body), carol.open(rx.of("/carol")[0].body)
        assert fb["preview"].startswith("meet at the wall at 6")
        assert len(fb["preview"]) == payload.PREVIEW_CHARS  # truncated
        assert "preview" not in fc  # carol kept the default
        assert fb["chat_title"] == fc["chat_title"] == "Climbing"
        assert fb["count"] == fc["count"] == 1


async def test_online_device_and_muted_chat_get_none(tmp_path: Path) -> None:
    async with push_node(tmp_path, previews=True) as node, receiving() as rx:
        bob = await new_device(node, "bob", rx.url("/bob"))  # will stay online
        carol = await new_device(node, "carol", rx.url("/carol"))  # will mute the chat
        erin = await new_device(node, "erin", rx.url("/erin"))  # will mute it for a minute
        dave = await new_device(node, "dave", rx.url("/dave"))  # offline, not muted: control
        alice = await new_device(node, "alice", rx.url("/alice"))  # the sender
        async with online(node, alice) as a, online(node, bob):
            chat = await group(a, "G", ["bob", "carol", "dave", "erin"])
            async with online(node, carol) as c:
                await c.call("chats.updateDialog", {"chat": chat, "muted": True})
            await gone_offline(node, carol)
            async with online(node, erin) as e:
                await e.call("chats.updateDialog", {"chat": chat, "muted": True, "mute_for": 60})
            await gone_offline(node, erin)
            await send(a, chat, "hello")
            await rx.wait_for(lambda: len(rx.of("/dave")) == 1)
            await trio.sleep(QUIET * 3)
            assert rx.of("/bob") == [] and rx.of("/carol") == [] and rx.of("/erin") == []
            # a timed mute runs out (its minute passes: the stored end moved into the past),
            # and the next message notifies erin again, not carol
            await node.db.write(
                lambda conn: conn.execute(
                    "UPDATE chat_members SET muted_until = ? WHERE chat_id = ? AND muted_until"
                    " IS NOT NULL",
                    (time.time() - 1, chat),
                )
            )
            await send(a, chat, "later")
            await rx.wait_for(lambda: len(rx.of("/erin")) == 1)
            assert erin.open(rx.of("/erin")[0].body)["preview"] == "later"
            assert rx.of("/carol") == []
        # the sender is never told of their own message, online or not
        assert rx.of("/alice") == []
        assert dave.open(rx.of("/dave")[0].body)["preview"] == "hello"  # node default on
        # dave twice, erin once: the POSTs of "later" to dave and erin race, and a POST is
        # counted once its answer is in, so wait for the count rather than read it once
        with trio.move_on_after(10):
            while (await admin(node, "admin.status"))["push"]["sent"] < 3:
                await trio.sleep(0.05)
        assert len(rx.of("/dave")) == 2
        assert (await admin(node, "admin.status"))["push"]["sent"] == 3


async def test_secret_chat_push_has_no_content_no_sender_no_chat(tmp_path: Path) -> None:
    async with push_node(tmp_path, previews=True) as node, receiving() as rx:
        bob = await new_device(node, "bob", rx.url("/bob"))
        alice = await new_device(node, "alice")
        secret_bytes = secrets.token_bytes(64)
        async with online(node, alice) as a:
            for _ in range(3):
                r = await a.call(
                    "secret.send",
                    {
                        "to": "bob",
                        "device": bob.device_id,
                        "id": secrets.randbits(62) + 1,
                        "payload": secret_bytes,
                    },
                )
                assert r["state"] == "queued"
            await rx.wait_for(lambda: len(rx.of("/bob")) == 1)
            await trio.sleep(QUIET * 3)
        got = rx.of("/bob")
        assert len(got) == 1  # coalesced too
        fields = bob.open(got[0].body)
        assert set(fields) == {"v", "kind", "count", "ts"}
        assert fields["kind"] == "secret" and fields["count"] == 3
        assert secret_bytes not in got[0].body
        # while bob's device is online it is pushed the item itself, not notified
        async with online(node, bob), online(node, alice) as a:
            await a.call(
                "secret.send",
                {"to": "bob", "device": bob.device_id, "id": 7, "payload": secret_bytes},
            )
            await trio.sleep(QUIET * 3)
        assert len(rx.of("/bob")) == 1


async def test_down_receiver_is_retried_then_dropped_and_410_unregisters(
    tmp_path: Path,
) -> None:
    def status(path: str, n: int) -> int:
        return {"/flaky": 503, "/gone": 410}.get(path, 200)

    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/dead"
    held: list[trio.SocketStream] = []

    async def hang(stream: trio.SocketStream) -> None:  # accepts, reads, never answers
        held.append(stream)
        await trio.sleep_forever()

    async with (
        push_node(tmp_path, workers=2, timeout=1.0) as node,
        receiving(status) as rx,
        trio.open_nursery() as nursery,
    ):
        (listener,) = await nursery.start(
            functools.partial(trio.serve_tcp, host="127.0.0.1"), hang, 0
        )
        silent = f"http://127.0.0.1:{listener.socket.getsockname()[1]}/silent"
        await new_device(node, "bob", rx.url("/flaky"))
        carol = await new_device(node, "carol", rx.url("/gone"))
        await new_device(node, "dave", dead)
        await new_device(node, "frank", silent)
        await new_device(node, "erin", rx.url("/ok"))
        alice = await new_device(node, "alice")
        async with online(node, alice) as a:
            chat = await group(a, "G", ["bob", "carol", "dave", "erin", "frank"])
            with trio.fail_after(2):  # sends do not wait for any push
                t0 = trio.current_time()
                await send(a, chat, "one")
                assert trio.current_time() - t0 < 1.0
            # the healthy endpoint is not held back by the failing ones
            await rx.wait_for(lambda: len(rx.of("/ok")) == 1, timeout=QUIET + 3)

            async def settled() -> bool:
                st = (await admin(node, "admin.status"))["push"]
                return bool(st["failed"] == 3 and st["unregistered"] == 1 and st["queued"] == 0)

            with trio.fail_after(15):
                while not await settled():
                    await trio.sleep(0.05)
            assert rx.hits["/flaky"] == 1 + PUSH["retries"]  # first try + retries
            assert rx.hits["/gone"] == 1
            st = (await admin(node, "admin.status"))["push"]
            assert st["retried"] == 3 * PUSH["retries"]  # flaky's, dead's and silent's
            assert st["endpoints"] == 4 and st["sent"] == 1
            assert len(held) == 1 + PUSH["retries"]  # each attempt timed out, a new connection
            async with online(node, carol) as c:
                assert (await c.call("account.listPush"))["endpoints"] == []
            await gone_offline(node, carol)
            await send(a, chat, "two")
            await rx.wait_for(lambda: len(rx.of("/ok")) == 2, timeout=QUIET + 3)
            await trio.sleep(0.3)
            assert rx.hits["/gone"] == 1  # unregistered: never asked again
            nursery.cancel_scope.cancel()


async def test_register_push_refuses_bad_input_with_stable_codes(tmp_path: Path) -> None:
    async with push_node(tmp_path) as node, receiving() as rx:
        bob = await new_device(node, "bob")
        carol = await new_device(node, "carol", rx.url("/carol"))
        key = bytes(bob.push_key.public_key)
        async with online(node, bob) as b:

            def reg(url: str, k: bytes = key) -> Any:
                return b.call("account.registerPush", {"url": url, "key": k})

            for url in (
                "ftp://example.org/push",
                "file:///etc/passwd",
                "javascript:alert(1)",
                "http://",
                "https://exa mple.org/",
                "http://example.org:99999/",
                "https://example.org/" + "a" * 2100,
                "https://exämple.org/push",
                "https://example.org/\u00e4",
            ):
                assert await code_of(reg(url)) == "PUSH_URL_INVALID", url
            assert await code_of(reg(rx.url("/b"), key[:31])) == "PUSH_KEY_INVALID"
            assert await code_of(reg(rx.url("/b"), key + b"\0")) == "PUSH_KEY_INVALID"
            assert await code_of(reg(rx.url("/b"), bytes(32))) == "PUSH_KEY_INVALID"
            assert await code_of(reg(rx.url("/b"), b"")) == "PUSH_KEY_INVALID"
            first = await reg(rx.url("/b1"))
            assert first["this_device"] is True and first["device_id"] == bob.device_id
            again = await reg(rx.url("/b1"))  # same device, same URL: same endpoint
            assert again["id"] == first["id"]
            await reg(rx.url("/b2"))
            await reg("https://push.example.org/up?token=x")
            assert await code_of(reg(rx.url("/b4"))) == "PUSH_TOO_MANY"
            listed = (await b.call("account.listPush"))["endpoints"]
            assert [e["url"] for e in listed] == [
                rx.url("/b1"),
                rx.url("/b2"),
                "https://push.example.org/up?token=x",
            ]
            # someone else's endpoint is not the caller's to test or remove
            for m in ("account.testPush", "account.unregisterPush"):
                assert await code_of(b.call(m, {"id": carol.endpoint})) == "PUSH_NOT_FOUND"
                assert await code_of(b.call(m, {"id": 999_999})) == "PUSH_NOT_FOUND"
            tested = await b.call("account.testPush", {"id": first["id"]})
            assert tested == {"id": first["id"], "result": "sent", "status": 200, "error": ""}
            assert bob.open(rx.of("/b1")[0].body)["kind"] == "test"
            assert await b.call("account.unregisterPush", {"id": first["id"]}) == {
                "removed": first["id"]
            }
            assert len((await b.call("account.listPush"))["endpoints"]) == 2
            assert await code_of(b.call("account.registerPush", {"url": 5, "key": key})) == (
                "PARAMS_INVALID"
            )
        # a revoked device's endpoints go with it
        await admin(node, "admin.userLogout", {"name": "bob"})
        with trio.fail_after(5):
            while (await admin(node, "admin.status"))["push"]["endpoints"] != 1:
                await trio.sleep(0.02)


async def test_a_message_on_another_node_pushes_to_an_offline_device_here(
    tmp_path: Path,
) -> None:
    async with AsyncExitStack() as stack:
        n1, n2 = await stack.enter_async_context(cluster(tmp_path, 2, push=PUSH))
        rx = await stack.enter_async_context(receiving())
        bob = await new_device(n2, "bob", rx.url("/bob"))
        alice = await new_device(n1, "alice")
        async with online(n1, alice) as a:
            chat = await group(a, "Across", ["bob@n2"])
            for i in range(5):
                await send(a, chat, f"hi {i}")
            await rx.wait_for(lambda: len(rx.of("/bob")) == 1, timeout=20)
            await trio.sleep(QUIET * 3)
        got = rx.of("/bob")
        assert len(got) == 1
        fields = bob.open(got[0].body)
        assert fields["kind"] == "message" and fields["chat"] == chat
        assert fields["from"] == "alice@n1" and fields["chat_title"] == "Across"
        assert fields["count"] == 5
        assert (await admin(n1, "admin.status"))["push"]["sent"] == 0  # n1 has no endpoints
        assert (await admin(n2, "admin.status"))["push"]["sent"] == 1


async def test_payload_sealing_round_trip_and_size_cap() -> None:
    k = PrivateKey.generate()
    pub = bytes(k.public_key)
    assert payload.check_key(pub) and not payload.check_key(bytes(32))
    fields = payload.build(
        "secret", 2, 1.0, chat="c", chat_title="t", sender="s@n", preview="secret text"
    )
    assert set(fields) == {"v", "kind", "count", "ts"}  # whatever the caller passed
    big = payload.build("message", 1, 1.0, chat="c" * 5000, sender="a@n", preview="p")
    with pytest.raises(ValueError):
        payload.seal(big, pub)
    long_from = payload.build("message", 1, 1.0, chat="c", sender="a" * 4000, preview="p")
    body = payload.seal(long_from, pub)
    assert len(body) <= payload.BODY_MAX
    opened = payload.open_sealed(body, bytes(k))
    assert "from" not in opened and "preview" not in opened and opened["chat"] == "c"
    with pytest.raises(payload.PayloadError):
        payload.open_sealed(b"short", bytes(k))
    not_push = bytes(SealedBox(k.public_key).encrypt(json.dumps({"kind": "other"}).encode()))
    with pytest.raises(payload.PayloadError):
        payload.open_sealed(not_push, bytes(k))


async def test_max_rate_spaces_the_posts_out(tmp_path: Path) -> None:
    """[push] max_rate: eight offline members of a group, one message, at most 4 POSTs a
    second: the eight arrive at least 1/4 s apart (the first at once), and none is lost."""
    async with push_node(tmp_path, max_rate=4.0) as node, receiving() as rx:
        names = [f"member{i}" for i in range(8)]
        for name in names:
            await new_device(node, name, rx.url(f"/{name}"))
        alice = await new_device(node, "alice")
        async with online(node, alice) as a:
            chat = await group(a, "Paced", names)
            await send(a, chat, "hello all")
            await rx.wait_for(lambda: sum(len(rx.of(f"/{n}")) for n in names) == 8, timeout=15)
        times = sorted(r.at for n in names for r in rx.of(f"/{n}"))
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # the pacing's floor shows in the whole span; single gaps are arrival times, which a
        # busy machine shifts by tens of ms either way (unpaced, they would be ~1 ms)
        assert min(gaps) >= 0.25 - 0.1, gaps
        assert times[-1] - times[0] >= 7 * 0.25 - 0.05
