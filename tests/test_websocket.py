"""The WebSocket layer (issue 17): our frame codec and the trio driver that replaced
trio-websocket. The codec is sans-I/O, tested with bytes; the driver over real loopback TCP
(a server accepting on 127.0.0.1, a client dialing it), including a peer that stops reading
so writes must wait for the socket, and the close handshake."""

from __future__ import annotations

import os
import struct
from functools import partial

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import BytesMessage, Message, Ping, Request

from node import websocket
from node.protocol import wsframe
from node.protocol.wsframe import (
    BINARY,
    CLOSE,
    CONTINUATION,
    HANDSHAKE_MAX_BYTES,
    HANDSHAKE_MAX_FRAGMENTS,
    HANDSHAKE_MAX_FRAMES,
    MAX_FRAGMENTS,
    PING,
    PONG,
    TEXT,
    FrameError,
    FrameReader,
)
from tests.rawws import fragmented, frame

# --- the codec ---------------------------------------------------------------------------


def client_frames(*messages: bytes) -> bytes:
    """What a real client library (wsproto) puts on the wire for these messages."""
    ws = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(ws.send(Request(host="x", target="/")))
    request = next(server.events())
    from wsproto.events import AcceptConnection

    assert isinstance(request, Request)
    ws.receive_data(server.send(AcceptConnection()))
    list(ws.events())
    return b"".join(ws.send(Message(data=m)) for m in messages)


def read_all(reader: FrameReader, data: bytes, step: int = 0) -> list[tuple[int, bytes]]:
    out = []
    chunks = [data[i : i + step] for i in range(0, len(data), step)] if step else [data]
    for chunk in chunks:
        reader.feed(chunk)
        while (ev := reader.next()) is not None:
            out.append(ev)
    return out


@pytest.mark.parametrize("step", [0, 1, 7, 4096])
def test_reads_what_wsproto_writes_in_any_pieces(step: int) -> None:
    messages = [b"", b"x", os.urandom(125), os.urandom(126), os.urandom(70_000)]
    got = read_all(FrameReader(masked=True, max_message=1 << 20), client_frames(*messages), step)
    assert got == [(BINARY, m) for m in messages]


def test_server_frames_are_what_wsproto_reads() -> None:
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="x", target="/")))
    list(server.events())
    from wsproto.events import AcceptConnection

    client.receive_data(server.send(AcceptConnection()))
    list(client.events())
    payloads = [b"", b"a" * 125, b"b" * 126, b"c" * 65_535, b"d" * 65_536]
    for p in payloads:
        client.receive_data(b"".join(wsframe.frame(BINARY, p)))
    got = [bytes(e.data) for e in client.events() if isinstance(e, BytesMessage)]
    assert got == payloads
    client.receive_data(b"".join(wsframe.frame(PING, b"hi")))
    assert [e.payload for e in client.events() if isinstance(e, Ping)] == [b"hi"]


def test_masked_frames_round_trip_and_fragments_join() -> None:
    reader = FrameReader(masked=True, max_message=1 << 20)
    wire = b"".join(wsframe.frame(BINARY, b"hello", mask=True))
    wire += fragmented(b"0123456789", 4) + frame(PING, b"p") + frame(TEXT, "é".encode())
    assert read_all(reader, wire) == [
        (BINARY, b"hello"),
        (BINARY, b"0123456789"),
        (PING, b"p"),
        (TEXT, "é".encode()),
    ]


def test_control_frames_may_come_between_fragments() -> None:
    wire = frame(BINARY, b"ab", fin=False) + frame(PONG, b"") + frame(CONTINUATION, b"cd")
    got = read_all(FrameReader(masked=True, max_message=100), wire)
    assert got == [(PONG, b""), (BINARY, b"abcd")]


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (bytes([0x80 | 0x40 | BINARY, 0x80]) + bytes(4), wsframe.PROTOCOL_ERROR),  # RSV1
        (bytes([0x80 | BINARY, 1]) + b"x", wsframe.PROTOCOL_ERROR),  # a client must mask
        (bytes([0x80 | 0x3, 0x80]) + bytes(4), wsframe.PROTOCOL_ERROR),  # opcode 3
        (bytes([0x80 | 0xB, 0x80]) + bytes(4), wsframe.PROTOCOL_ERROR),  # opcode 11
        (frame(PING, b"x", fin=False), wsframe.PROTOCOL_ERROR),  # fragmented control
        (frame(PING, b"x" * 126), wsframe.PROTOCOL_ERROR),  # control over 125 bytes
        (frame(CONTINUATION, b"x"), wsframe.PROTOCOL_ERROR),  # continuation first
        (frame(BINARY, b"a", fin=False) + frame(BINARY, b"b"), wsframe.PROTOCOL_ERROR),
        (frame(BINARY, b"x" * 101), wsframe.TOO_BIG),
        (frame(BINARY, b"x" * 60, fin=False) + frame(CONTINUATION, b"y" * 41), wsframe.TOO_BIG),
    ],
    ids=[
        "rsv",
        "unmasked",
        "opcode-3",
        "opcode-11",
        "fragmented-ping",
        "long-ping",
        "orphan-continuation",
        "interleaved-messages",
        "too-big",
        "too-big-in-fragments",
    ],
)
def test_broken_frames_name_their_close_code(wire: bytes, code: int) -> None:
    with pytest.raises(FrameError) as e:
        read_all(FrameReader(masked=True, max_message=100), wire)
    assert e.value.code == code


def test_a_huge_declared_length_is_refused_from_the_header() -> None:
    reader = FrameReader(masked=True, max_message=1 << 20)
    reader.feed(bytes([0x80 | BINARY, 0x80 | 127]) + struct.pack("!Q", 2**60))
    with pytest.raises(FrameError) as e:
        reader.next()
    assert e.value.code == wsframe.TOO_BIG


def test_fragment_and_handshake_budgets() -> None:
    ok = FrameReader(masked=True, max_message=1 << 20)
    assert read_all(ok, fragmented(b"x" * 2000, MAX_FRAGMENTS)) == [(BINARY, b"x" * 2000)]
    for wire, handshake in [
        (fragmented(b"x" * 2000, MAX_FRAGMENTS + 1), False),
        (fragmented(b"hello", HANDSHAKE_MAX_FRAGMENTS + 1), True),
        (frame(PING, b"p") * (HANDSHAKE_MAX_FRAMES + 1), True),
        (frame(BINARY, b"x" * (HANDSHAKE_MAX_BYTES + 1)), True),
    ]:
        reader = FrameReader(masked=True, max_message=1 << 20, handshake=handshake)
        with pytest.raises(FrameError) as e:
            read_all(reader, wire)
        assert (e.value.code, e.value.reason) == (wsframe.POLICY, "FRAME_FLOOD")
    # the budget ends with the handshake
    reader = FrameReader(masked=True, max_message=1 << 20, handshake=True)
    reader.handshake_done()
    assert len(read_all(reader, frame(PING, b"p") * (HANDSHAKE_MAX_FRAMES + 5))) == 69


def test_close_payloads() -> None:
    assert wsframe.parse_close(wsframe.close_payload(4005, "TOO_MANY_SESSIONS")) == (
        4005,
        "TOO_MANY_SESSIONS",
    )
    assert wsframe.parse_close(b"") == (wsframe.NO_STATUS, "")
    assert len(wsframe.close_payload(1000, "é" * 100)) <= 125  # cut on a character boundary
    wsframe.parse_close(wsframe.close_payload(1000, "é" * 100))
    for bad, code in [(b"\x03", 1002), (struct.pack("!H", 999), 1002), (b"\x03\xe8\xff", 1007)]:
        with pytest.raises(FrameError) as e:
            wsframe.parse_close(bad)
        assert e.value.code == code


# --- the driver over real sockets -----------------------------------------------------------


async def pair(
    nursery: trio.Nursery, max_message: int = 1 << 20
) -> tuple[websocket.WebSocket, websocket.WebSocket]:
    """A server and a client WebSocket connected over loopback TCP."""
    accepted: trio.MemorySendChannel[websocket.WebSocket]
    accepted, got = trio.open_memory_channel[websocket.WebSocket](1)

    async def handler(stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(4096)
        ws = await websocket.accept(stream, head, max_message=max_message, handshake_budget=False)
        assert ws is not None
        await accepted.send(ws)
        await trio.sleep_forever()

    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    client = await websocket.connect(stream, f"127.0.0.1:{port}", "/", max_message=max_message)
    return await got.receive(), client


async def test_messages_both_ways_pings_and_close() -> None:
    async with trio.open_nursery() as nursery:
        server, client = await pair(nursery)
        big = os.urandom(1 << 20)
        got: list[bytes | str] = []

        async def read_two() -> None:
            got.extend([await server.receive(), await server.receive()])

        async with trio.open_nursery() as n1:  # 1 MiB needs a reader while it is written
            n1.start_soon(read_two)
            await client.send(b"hello")
            await client.send(big)
        assert got == [b"hello", big]
        server.ping_nowait(b"are you there")
        await server.send(b"reply")
        heard = server.last_heard
        assert await client.receive() == b"reply"  # the ping was answered on the way
        await trio.sleep(0.01)
        await server.send(b"again")
        assert await client.receive() == b"again"
        with trio.fail_after(5):
            nursery.start_soon(client.receive)  # the client reads; its reader sees the close
            await trio.sleep(0.01)
            await server.send(b"x")
        assert server.last_heard >= heard
        # the client closes with a code; the server reads it and answers
        with trio.fail_after(5):
            async with trio.open_nursery() as n2:
                n2.start_soon(client.aclose, 4007, "SESSION_REVOKED")
                with pytest.raises(websocket.ConnectionClosed) as e:
                    while True:
                        await server.receive()
        assert (e.value.reason.code, e.value.reason.reason) == (4007, "SESSION_REVOKED")
        with pytest.raises(websocket.ConnectionClosed):
            server.send_nowait(b"after close")
        nursery.cancel_scope.cancel()


async def test_a_peer_that_stops_reading_makes_writes_wait_not_grow() -> None:
    async with trio.open_nursery() as nursery:
        server, client = await pair(nursery, max_message=8 << 20)
        chunk = os.urandom(1 << 20)
        written = 0
        with trio.move_on_after(1.0):  # nobody reads: the socket fills, send() waits
            while True:
                await server.send(chunk)
                written += 1
        assert written < 40  # bounded by the kernel's buffers, not by our memory
        assert server.pending_bytes > 0
        got = 0

        async def drain() -> None:
            nonlocal got
            while True:
                assert await client.receive() == chunk
                got += 1

        nursery.start_soon(drain)
        with trio.fail_after(10):
            await server.flush()  # the reader drains; the rest goes out in order
            await server.send(chunk)
            while got < written + 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_frame_errors_close_with_their_code() -> None:
    async with trio.open_nursery() as nursery:
        server, client = await pair(nursery, max_message=1000)
        await client.send(b"x" * 1001)
        with pytest.raises(websocket.ConnectionClosed) as e:
            await server.receive()
        assert (e.value.reason.code, e.value.reason.local) == (wsframe.TOO_BIG, True)
        with pytest.raises(websocket.ConnectionClosed) as e:
            await client.receive()
        assert e.value.reason.code == wsframe.TOO_BIG
        nursery.cancel_scope.cancel()


async def test_upgrade_refusals() -> None:
    async with trio.open_nursery() as nursery:

        async def handler(stream: trio.SocketStream) -> None:
            head = await stream.receive_some(4096)
            assert await websocket.accept(stream, head, max_message=100) is None

        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        # an upgrade without a key is refused with the HTTP status the handshake names
        await stream.send_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        answer = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400")
        nursery.cancel_scope.cancel()


def test_close_codes_are_frames_a_client_reads() -> None:
    # a Close frame as the node sends it, read by the client side of the codec
    reader = FrameReader(masked=False, max_message=100)
    reader.feed(b"".join(wsframe.frame(CLOSE, wsframe.close_payload(1008, "FRAME_FLOOD"))))
    op, payload = reader.next() or (0, b"")
    assert op == CLOSE and wsframe.parse_close(payload) == (1008, "FRAME_FLOOD")
