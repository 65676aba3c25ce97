"""The gateway against hostile and broken clients, with a real node and real WebSockets.

Every case also checks that a well-behaved session on the same node keeps working."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trio
from nacl.signing import SigningKey

from node.app import Node
from node.client import Client, ErrorCode, RpcError
from node.gateway import FLUSH_SLICE
from node.protocol.codec import encode
from node.protocol.connection import Connection, Reply
from node.protocol.handshake import Initiator
from node.protocol.seal import Sealer
from scripts.light_receiver import LightReceiver
from tests.conftest import make_config
from tests.helpers import add_user, fresh_code, next_of, send, signed_in
from tests.rawws import RawWS

BOUND = 5.0  # seconds any bad input may take to be answered


@pytest.fixture
async def small_node(tmp_path: Path) -> AsyncIterator[Node]:
    cfg = make_config(
        tmp_path / "n",
        limits={"frame_max_bytes": 64 * 1024, "max_inflight": 8, "max_sessions": 50},
        timeouts={"handshake": 0.5, "idle": 1.0, "ping_interval": 0.2},
    )
    async with Node.start(cfg) as n:
        yield n


async def assert_alive(c: Client) -> None:
    with trio.fail_after(BOUND):
        assert (await c.call("system.ping", {"ping_id": 7}))["ping_id"] == 7


async def handshaken(url: str) -> tuple[RawWS, Sealer]:
    raw = await RawWS.connect(url)
    init = Initiator()
    await raw.send(init.hello)
    welcome = await raw.recv()
    assert isinstance(welcome, bytes)
    keys = init.receive_welcome(welcome)
    return raw, Sealer(keys.tx)


async def test_ping_info_and_status_counts(node: Node) -> None:
    async with Client.connect(node.url) as c:
        pong = await c.call("system.ping", {"ping_id": 42})
        assert pong["ping_id"] == 42 and pong["time"] > 0
        info = await c.call("system.info")
        assert info["node_id"] == node.node_id == c.node_id
        assert info["name"] == "test" and info["protocol"] == 1
        assert len(node.gateway.sessions) == 1


async def test_trust_on_first_use_and_key_change(node: Node, tmp_path: Path) -> None:
    prof = tmp_path / "profile"
    async with Client.connect(node.url, profile=prof) as c:
        assert c.node_id == node.node_id
    assert node.node_id in (prof / "known_nodes.json").read_text()
    async with Client.connect(node.url, pin=node.node_id.upper()):
        pass
    with pytest.raises(RpcError) as e:
        async with Client.connect(node.url, pin="a" * 32):
            pass
    assert e.value.code == ErrorCode.NODE_KEY_MISMATCH
    # a different node answering on the pinned address is refused
    text = (prof / "known_nodes.json").read_text().replace(node.node_id, "b" * 32)
    (prof / "known_nodes.json").write_text(text)
    with pytest.raises(RpcError) as e:
        async with Client.connect(node.url, profile=prof):
            pass
    assert e.value.code == ErrorCode.NODE_KEY_MISMATCH


async def test_garbage_instead_of_hello(small_node: Node) -> None:
    async with Client.connect(small_node.url) as witness:
        raw = await RawWS.connect(small_node.url)
        await raw.send(b"\x00garbage\xff" * 10)
        with trio.fail_after(BOUND):
            code, reason = await raw.wait_closed()
        assert (code, reason) == (4001, "HANDSHAKE_FAILED")
        await assert_alive(witness)


async def test_garbage_bytes_at_tcp_level(small_node: Node) -> None:
    async with Client.connect(small_node.url) as witness:
        stream = await trio.open_tcp_stream("127.0.0.1", small_node.port)
        await stream.send_all(b"\x16\x03\x01 not http at all\r\n\r\n" * 50)
        with trio.fail_after(BOUND):
            while await stream.receive_some(4096):
                pass
        await assert_alive(witness)


async def test_handshake_that_never_finishes(small_node: Node) -> None:
    async with Client.connect(small_node.url) as witness:
        raw = await RawWS.connect(small_node.url)
        with trio.fail_after(BOUND):
            code, reason = await raw.wait_closed()
        assert (code, reason) == (4002, "HANDSHAKE_TIMEOUT")
        # a TCP connection that never even upgrades is dropped too
        stream = await trio.open_tcp_stream("127.0.0.1", small_node.port)
        with trio.fail_after(BOUND):  # the node closes it: we read to end of stream
            while await stream.receive_some(4096):
                pass
        await assert_alive(witness)


async def test_text_frame_before_and_after_handshake(small_node: Node) -> None:
    async with Client.connect(small_node.url) as witness:
        raw = await RawWS.connect(small_node.url)
        await raw.send("hello as text")
        with trio.fail_after(BOUND):
            assert await raw.wait_closed() == (1003, "TEXT_FRAME")
        raw, _ = await handshaken(small_node.url)
        await raw.send("text after handshake")
        with trio.fail_after(BOUND):
            assert await raw.wait_closed() == (1003, "TEXT_FRAME")
        await assert_alive(witness)


async def test_oversized_frame(small_node: Node) -> None:
    async with Client.connect(small_node.url) as witness:
        raw, sealer = await handshaken(small_node.url)
        await raw.send(sealer.seal(b"x" * (64 * 1024 + 1)))
        with trio.fail_after(BOUND):
            code, _ = await raw.wait_closed()
        assert code == 1009
        await assert_alive(witness)


@pytest.mark.parametrize(
    "payload",
    [b"\x81" * 10_000, b"\x5b" + (2**60).to_bytes(8, "big"), b"\xff\xff", b"\xc1"],
    ids=["nested-10000", "declared-2^60-bytes", "garbage", "bad-simple"],
)
async def test_undecodable_frames_get_bad_frame(small_node: Node, payload: bytes) -> None:
    async with Client.connect(small_node.url) as witness, Client.connect(small_node.url) as c:
        await c.send_raw(payload)
        with trio.fail_after(BOUND):
            while c.last_unmatched_error is None:
                await trio.sleep(0.01)
        assert c.last_unmatched_error["code"] == "BAD_FRAME"
        await assert_alive(c)  # the same session goes on
        await assert_alive(witness)


async def test_bad_envelopes(small_node: Node) -> None:
    async with Client.connect(small_node.url) as c:
        await c.send_raw(encode([1, 2, 3]))
        with trio.fail_after(BOUND):
            while c.last_unmatched_error is None:
                await trio.sleep(0.01)
        assert c.last_unmatched_error["code"] == "BAD_REQUEST"
        await assert_alive(c)


async def test_wrong_key_replay_and_reorder_close_the_session(small_node: Node) -> None:
    async with Client.connect(small_node.url) as witness:
        # wrong key
        raw, _ = await handshaken(small_node.url)
        await raw.send(Sealer(b"w" * 32).seal(encode({"id": 1, "m": "system.ping", "p": {}})))
        with trio.fail_after(BOUND):
            assert await raw.wait_closed() == (4003, "BAD_SEAL")
        # replay
        raw, sealer = await handshaken(small_node.url)
        frame = sealer.seal(encode({"id": 1, "m": "system.ping", "p": {}}))
        await raw.send(frame)
        assert isinstance(await raw.recv(), bytes)
        await raw.send(frame)
        with trio.fail_after(BOUND):
            assert await raw.wait_closed() == (4003, "BAD_SEAL")
        # reorder
        raw, sealer = await handshaken(small_node.url)
        first = sealer.seal(encode({"id": 1, "m": "system.ping", "p": {}}))
        second = sealer.seal(encode({"id": 2, "m": "system.ping", "p": {}}))
        await raw.send(second)
        await raw.send(first)
        with trio.fail_after(BOUND):
            assert await raw.wait_closed() == (4003, "BAD_SEAL")
        await assert_alive(witness)


async def test_unknown_method_and_bad_params(small_node: Node) -> None:
    async with Client.connect(small_node.url) as c:
        with pytest.raises(RpcError) as e:
            await c.call("nope.nothing")
        assert e.value.code == "METHOD_UNKNOWN"
        bad: list[dict[str, Any]] = [
            {"ping_id": "seven"},
            {"ping_id": 1, "extra": True},
            {"ping_id": 2.5},
        ]
        for params in bad:
            with pytest.raises(RpcError) as e:
                await c.call("system.ping", params)
            assert e.value.code == "PARAMS_INVALID"
        with pytest.raises(RpcError) as e:
            await c.call("admin.status")
        assert e.value.code == "ADMIN_ONLY"
        await assert_alive(c)


async def test_thousand_requests_in_flight(small_node: Node) -> None:
    answers: list[str] = []
    async with Client.connect(small_node.url) as witness, Client.connect(small_node.url) as c:

        async def one(i: int) -> None:
            try:
                r = await c.call("system.ping", {"ping_id": i})
                assert r["ping_id"] == i
                answers.append("ok")
            except RpcError as e:
                assert e.code == "TOO_MANY_REQUESTS" and e.retry_after
                answers.append(e.code)

        with trio.fail_after(30):
            async with trio.open_nursery() as n:
                for i in range(1000):
                    n.start_soon(one, i)
        assert len(answers) == 1000
        await assert_alive(c)
        await assert_alive(witness)


async def test_session_limit(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "n", limits={"max_sessions": 2})
    async with Node.start(cfg) as n, Client.connect(n.url) as a, Client.connect(n.url) as b:
        raw = await RawWS.connect(n.url)
        with trio.fail_after(BOUND):
            assert await raw.wait_closed() == (4005, "TOO_MANY_SESSIONS")
        await assert_alive(a)
        await assert_alive(b)


async def test_unresponsive_peer_is_closed_by_heartbeat(small_node: Node) -> None:
    async with Client.connect(small_node.url) as witness:
        raw, _ = await handshaken(small_node.url)
        raw.auto_pong = False  # a peer that went away without closing
        with trio.fail_after(BOUND):
            code, reason = await raw.wait_closed()
        assert (code, reason) == (4004, "IDLE_TIMEOUT")
        # a quiet but healthy client (answers pings) stays connected past the idle timeout
        await trio.sleep(1.5)
        await assert_alive(witness)


async def test_shutdown_closes_sessions_with_reason(tmp_path: Path) -> None:
    reasons: list[str | None] = []

    async def hold(url: str, task_status: trio.TaskStatus[None]) -> None:
        async with Client.connect(url) as c:
            task_status.started()
            reasons.append(await c.wait_closed())

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery, Node.start(make_config(tmp_path / "n")) as n:
            await nursery.start(hold, n.url)
    assert reasons[0] is not None and "1001" in reasons[0] and "NODE_SHUTDOWN" in reasons[0]


async def test_capture_has_no_plaintext(node: Node) -> None:
    """Relay the session through a recording TCP proxy and look for the request's words."""
    captured = bytearray()

    async def pipe(src: trio.SocketStream, dst: trio.SocketStream) -> None:
        try:
            while data := await src.receive_some(65536):
                captured.extend(data)
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def handler(client_side: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream("127.0.0.1", node.port)
        async with trio.open_nursery() as n:
            n.start_soon(pipe, client_side, upstream)
            n.start_soon(pipe, upstream, client_side)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, handler, 0)
        port = listeners[0].socket.getsockname()[1]
        async with Client.connect(f"ws://127.0.0.1:{port}/") as c:
            marker = 0x5EC12E7_5EC12E7
            assert (await c.call("system.ping", {"ping_id": marker}))["ping_id"] == marker
            await c.call("system.info")
        nursery.cancel_scope.cancel()
    assert len(captured) > 200
    for needle in [
        b"system.ping",
        b"system.info",
        marker.to_bytes(8, "big"),
        b"ping_id",
        b"node_id",
    ]:
        assert needle not in captured


async def test_cancelled_calls_leave_the_session_usable(node: Node) -> None:
    """A call cancelled while its frame is being sent must not leave a gap in the seal
    counter or half a frame on the wire (the node would close with BAD_SEAL or hang)."""
    async with Client.connect(node.url) as c:
        for _ in range(30):
            with trio.move_on_after(0.0003):
                async with trio.open_nursery() as nursery:
                    for i in range(40):
                        nursery.start_soon(c.call, "system.ping", {"ping_id": i})
        await assert_alive(c)
        assert not c.closed


async def test_node_peer_proves_its_key(small_node: Node) -> None:
    """The node-to-node path (federation's links): the initiator signs the transcript in its
    first sealed frame; the gateway takes it as a peer with that identity, and refuses a
    proof that is not its key's or not a binary message."""
    async with Client.connect(small_node.url) as witness:
        peer_key = SigningKey.generate()
        raw, conn = await RawWS.connect(small_node.url), Connection.client(peer_key)
        await raw.send(conn.hello())
        welcome = await raw.recv()
        assert isinstance(welcome, bytes)
        proof = conn.receive_welcome(welcome)
        assert proof is not None and conn.peer_identity == bytes(small_node.identity.verify_key)
        await raw.send(proof)
        rid, data = conn.request("system.ping", {"ping_id": 9})
        await raw.send(data)
        answer = await raw.recv()
        assert isinstance(answer, bytes)
        reply = conn.receive(answer)
        assert isinstance(reply, Reply) and reply.id == rid and reply.value["ping_id"] == 9
        peers = [s for s in small_node.gateway.sessions.values() if s.role == "node"]
        assert [s.peer_identity for s in peers] == [bytes(peer_key.verify_key)]
        # a proof made with another key than the one in the hello
        raw, conn = await RawWS.connect(small_node.url), Connection.client(peer_key)
        await raw.send(conn.hello())
        welcome = await raw.recv()
        assert isinstance(welcome, bytes)
        conn.receive_welcome(welcome)
        await raw.send(conn.seal(bytes(SigningKey.generate().sign(b"x").signature)))
        with trio.fail_after(BOUND):
            assert await raw.wait_closed() == (4001, "HANDSHAKE_FAILED")
        # a text message where the proof belongs
        raw, conn = await RawWS.connect(small_node.url), Connection.client(peer_key)
        await raw.send(conn.hello())
        await raw.recv()
        await raw.send("proof as text")
        with trio.fail_after(BOUND):
            assert await raw.wait_closed() == (1003, "TEXT_FRAME")
        await assert_alive(witness)


async def test_light_receiver_signs_in_and_counts_pushes(node: Node) -> None:
    """The benchmark's receiver drives the same Connection: it signs in and sees pushes."""
    await add_user(node, "bob")
    key = SigningKey.generate()
    async with Client.connect(node.url) as c:
        await c.sign_in("bob", await fresh_code(node, "bob"), key, "light")
    async with signed_in(node, "alice") as alice:
        group = await alice.call("chats.createGroup", {"title": "t", "members": ["bob"]})
        receiver = await LightReceiver.connect(node.url, key)
        with trio.fail_after(BOUND):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receiver.listen)
                for i in range(3):
                    await send(alice, group["chat"]["id"], f"m{i}")
                while len(receiver.arrivals) < 3:
                    await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
        await receiver.aclose()


async def test_a_push_round_longer_than_a_slice_delivers_everything_in_order(
    tmp_path: Path,
) -> None:
    """A round to more sessions than FLUSH_SLICE checkpoints between slices: pushes that
    commits queue meanwhile join the sessions not reached yet and go in the next round to
    the others. Three members sending at once keep commits landing during rounds; every
    member must still get every message once, in order."""
    members = FLUSH_SLICE * 2 + 9
    lax = {"signin_per_ip": "100000/1", "signin_per_name": "100000/1", "code_per_ip": "100000/1"}
    cfg = make_config(tmp_path / "n", ratelimit=lax)
    async with Node.start(cfg) as node, AsyncExitStack() as stack:
        names = [f"member{i}" for i in range(members)]
        clients = [await stack.enter_async_context(signed_in(node, n)) for n in names]
        owner = clients[0]
        group = await owner.call("chats.createGroup", {"title": "big", "members": names[1:]})
        chat = group["chat"]["id"]
        for c in clients[1:]:
            await next_of(c, "chat.event")  # the group's creation
        senders, per_sender = clients[1:4], 15
        seqs: list[int] = []

        async def sending(c: Client) -> None:
            for i in range(per_sender):
                seqs.append(await send(c, chat, f"message {i}"))

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for c in senders:
                    nursery.start_soon(sending, c)
            for c in clients:
                mine = 0 if c not in senders else per_sender  # a sender gets no echo
                got = [
                    (await next_of(c, "chat.event"))["event"]["seq"]
                    for _ in range(len(seqs) - mine)
                ]
                assert got == sorted(got) and len(set(got)) == len(got)
                assert set(got) <= set(seqs)
