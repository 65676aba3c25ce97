"""The fault-injection proxy, on real sockets against a real trio echo server.

No mocks: if these pass, the faults a multi-node test injects are the ones the
kernel really delivers (resets, stalls, held connections).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
import trio

from federation.faultproxy import FaultProxy

REPO = Path(__file__).resolve().parent.parent


class Echo:
    """A TCP echo server that records how each of its connections ended."""

    def __init__(self) -> None:
        self.port = 0
        self.ended: list[str] = []  # "eof" or "reset", one per finished connection

    async def handler(self, stream: trio.SocketStream) -> None:
        try:
            async with stream:
                while data := await stream.receive_some(65536):
                    await stream.send_all(data)
                self.ended.append("eof")
                await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.ended.append("reset")


@pytest.fixture
async def echo(nursery: trio.Nursery) -> Echo:
    server = Echo()
    listeners = await nursery.start(partial(trio.serve_tcp, server.handler, 0, host="127.0.0.1"))
    server.port = listeners[0].socket.getsockname()[1]
    return server


@pytest.fixture
async def proxy(echo: Echo) -> AsyncIterator[FaultProxy]:
    async with FaultProxy.open("127.0.0.1", echo.port) as p:
        yield p


async def connect(proxy: FaultProxy) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", proxy.port)


async def read_exactly(stream: trio.SocketStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = await stream.receive_some(n - len(buf))
        assert data, f"EOF after {len(buf)} of {n} bytes"
        buf += data
    return bytes(buf)


async def assert_reset(stream: trio.SocketStream) -> None:
    """The connection was reset under us (RST, not a polite FIN), within 2 s."""
    with trio.fail_after(2), pytest.raises(trio.BrokenResourceError):
        await stream.receive_some(100)


async def test_bytes_pass_both_ways_unchanged(proxy: FaultProxy) -> None:
    payload = os.urandom(4 * 1024 * 1024)
    stream = await connect(proxy)
    received = bytearray()

    async def reader() -> None:
        while len(received) < len(payload):
            received.extend(await stream.receive_some(65536))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await stream.send_all(payload)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    assert proxy.bytes_up == proxy.bytes_down == len(payload)
    assert proxy.connections == 1 and proxy.active == 1
    # A half-close is passed on: the echo server sees EOF and closes its side too.
    await stream.send_eof()
    with trio.fail_after(2):
        assert await stream.receive_some(10) == b""
    await stream.aclose()


async def test_cut_resets_live_connections_and_new_ones_work(proxy: FaultProxy, echo: Echo) -> None:
    streams = [await connect(proxy) for _ in range(2)]
    for s in streams:
        await s.send_all(b"ping")
        assert await read_exactly(s, 4) == b"ping"
    assert proxy.cut() == 2
    for s in streams:
        await assert_reset(s)
        await s.aclose()
    with trio.fail_after(2):
        while len(echo.ended) < 2:
            await trio.sleep(0.01)
    assert echo.ended == ["reset", "reset"]  # the target side was reset too
    assert proxy.active == 0 and proxy.cuts == 2

    fresh = await connect(proxy)
    await fresh.send_all(b"again")
    assert await read_exactly(fresh, 5) == b"again"
    await fresh.aclose()


async def test_pause_holds_traffic_and_resume_delivers_all_in_order(proxy: FaultProxy) -> None:
    stream = await connect(proxy)
    await stream.send_all(b"hello")
    assert await read_exactly(stream, 5) == b"hello"

    proxy.pause()
    messages = [b"%05d" % i * 20 for i in range(200)]  # 20 KB in 200 writes
    for m in messages:
        await stream.send_all(m)
    with trio.move_on_after(0.3) as timeout:
        await stream.receive_some(100)
    assert timeout.cancelled_caught, "bytes got through a paused proxy"
    assert proxy.active == 1 and proxy.stats()["paused"] is True

    proxy.resume()
    with trio.fail_after(2):
        assert await read_exactly(stream, sum(map(len, messages))) == b"".join(messages)
    await stream.aclose()


async def test_block_refuses_new_connections_but_keeps_existing(proxy: FaultProxy) -> None:
    existing = await connect(proxy)
    proxy.block()
    refused = await connect(proxy)  # the kernel accepts; the proxy resets at once
    await assert_reset(refused)
    await refused.aclose()
    assert proxy.refused == 1
    await existing.send_all(b"still")
    assert await read_exactly(existing, 5) == b"still"

    proxy.unblock()
    fresh = await connect(proxy)
    await fresh.send_all(b"open")
    assert await read_exactly(fresh, 4) == b"open"
    for s in (existing, fresh):
        await s.aclose()


async def test_blackhole_holds_new_connections_until_unblock(proxy: FaultProxy) -> None:
    proxy.block("blackhole")
    stream = await connect(proxy)
    await stream.send_all(b"anyone?")
    with trio.move_on_after(0.2) as timeout:
        await stream.receive_some(100)
    assert timeout.cancelled_caught
    proxy.unblock()
    with trio.fail_after(2):
        assert await read_exactly(stream, 7) == b"anyone?"
    await stream.aclose()


async def test_delay_adds_latency_and_keeps_order(proxy: FaultProxy) -> None:
    stream = await connect(proxy)
    proxy.delay(0.1)
    start = trio.current_time()
    await stream.send_all(b"a")
    assert await read_exactly(stream, 1) == b"a"
    assert trio.current_time() - start >= 0.2  # 0.1 each way

    # Lowering the delay mid-stream must not let "b" overtake "a".
    await stream.send_all(b"a")
    await trio.sleep(0.01)
    proxy.delay(0)
    await stream.send_all(b"b")
    assert await read_exactly(stream, 2) == b"ab"

    proxy.delay(0.05, "up")
    start = trio.current_time()
    await stream.send_all(b"c")
    assert await read_exactly(stream, 1) == b"c"
    assert trio.current_time() - start >= 0.05
    assert proxy.stats()["delay_down"] == 0
    await stream.aclose()


async def test_target_down_resets_client() -> None:
    # A port nobody listens on: bind, read the port, close.
    with trio.socket.socket() as s:
        await s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    async with FaultProxy.open("127.0.0.1", dead_port) as proxy:
        stream = await connect(proxy)
        await assert_reset(stream)
        await stream.aclose()
        assert proxy.refused == 1


async def test_process_mode(echo: Echo) -> None:
    cmd = [
        sys.executable,
        "-m",
        "federation.faultproxy",
        "--listen",
        "127.0.0.1:0",
        "--target",
        f"127.0.0.1:{echo.port}",
    ]
    proc = await trio.lowlevel.open_process(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO
    )
    stdin, stdout = proc.stdin, proc.stdout
    assert stdin is not None and stdout is not None
    lines: list[bytes] = []
    pending = bytearray()

    async def read_json() -> dict[str, object]:
        while not lines:
            data = await stdout.receive_some(4096)
            assert data, "faultproxy exited"
            pending.extend(data)
            *done, rest = pending.split(b"\n")
            lines.extend(bytes(line) for line in done)
            pending[:] = rest
        result: dict[str, object] = json.loads(lines.pop(0))
        return result

    async def ask(line: str) -> dict[str, object]:
        await stdin.send_all(line.encode() + b"\n")
        return await read_json()

    try:
        with trio.fail_after(10):  # generous: only slow under a loaded machine
            hello = await read_json()
            port = hello["port"]
            assert isinstance(port, int) and port > 0

            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"via process")
            assert await read_exactly(stream, 11) == b"via process"

            assert await ask("cut") == {"ok": True, "cmd": "cut", "closed": 1}
            await assert_reset(stream)
            await stream.aclose()

            assert (await ask("delay 0.01"))["ok"] is True
            assert (await ask("bogus"))["ok"] is False
            stats = await ask("stats")
            assert stats["bytes_up"] == 11 and stats["cuts"] == 1 and stats["delay_up"] == 0.01

            await stdin.aclose()  # EOF on stdin: the proxy exits by itself
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
