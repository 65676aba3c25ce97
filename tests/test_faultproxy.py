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
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path

import pytest
import trio

from federation.faultproxy import FaultProxy, _hard_close

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


async def test_capture_keeps_what_passed_each_way_up_to_its_limit(proxy: FaultProxy) -> None:
    stream = await connect(proxy)
    await stream.send_all(b"before")  # not captured: capture starts later
    with trio.fail_after(2):
        assert await stream.receive_some(10) == b"before"
    proxy.capture(limit=10)
    await stream.send_all(b"hello wiretap")
    got = bytearray()
    with trio.fail_after(2):
        while len(got) < 13:
            got += await stream.receive_some(64)
    assert proxy.captured is not None
    assert bytes(proxy.captured["up"]) == b"hello wire"  # 10 bytes: the limit
    assert bytes(proxy.captured["down"]) == b"hello wire"  # the echo, back through
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
    events = [line.split(" ", 1)[1] for line in proxy.journal]  # the timeline, unstamped
    assert events == ["* block blackhole", "#1 held (blackhole)", "* unblock", "#1 forwarding"]
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


async def test_drop_discards_bytes_and_keeps_the_connection(proxy: FaultProxy) -> None:
    stream = await connect(proxy)
    await stream.send_all(b"a")
    assert await read_exactly(stream, 1) == b"a"

    proxy.drop("up")  # until undrop(): client -> target bytes vanish
    await stream.send_all(b"lost")
    with trio.move_on_after(0.3) as timeout:
        await stream.receive_some(100)
    assert timeout.cancelled_caught, "dropped bytes reached the echo server"
    assert proxy.dropped_up == 4 and proxy.active == 1
    assert proxy.stats()["dropping"] == ["up"]
    proxy.undrop()
    await stream.send_all(b"back")
    assert await read_exactly(stream, 4) == b"back"  # the hole stays a hole

    proxy.drop("down", 0.2)  # for a while: the echo of "x" is dropped on its way back
    await stream.send_all(b"x")
    with trio.fail_after(2):
        while proxy.dropped_down < 1:
            await trio.sleep(0.01)
    await trio.sleep(0.3)
    assert proxy.stats()["dropping"] == []
    await stream.send_all(b"y")
    assert await read_exactly(stream, 1) == b"y"
    await until(lambda: proxy.bytes_down == 6)  # counted once send_all returned
    assert proxy.dropped_down == 1
    await stream.aclose()


async def test_cut_after_lets_n_bytes_through_then_resets(proxy: FaultProxy, echo: Echo) -> None:
    stream = await connect(proxy)
    proxy.cut_after(10, "down")
    payload = bytes(range(100))
    await stream.send_all(payload)
    received = bytearray()
    with trio.fail_after(2), pytest.raises(trio.BrokenResourceError):
        while data := await stream.receive_some(100):
            received += data
    assert bytes(received) == payload[:10]  # sent before the reset: delivered in order
    assert proxy.mid_cuts == 1 and proxy.bytes_down == 10 and proxy.active == 0
    await stream.aclose()

    # one-shot: the next connection carries everything
    fresh = await connect(proxy)
    await fresh.send_all(payload)
    assert await read_exactly(fresh, 100) == payload
    assert proxy.stats()["cut_after"] is None
    await fresh.aclose()


class Recorder:
    """A TCP server that echoes and keeps, per connection, the bytes it received and
    whether the connection has ended (so a test sees the duplicate and its fate)."""

    def __init__(self) -> None:
        self.port = 0
        self.conns: list[bytearray] = []
        self.ended: list[int] = []  # indexes of connections that are over

    async def handler(self, stream: trio.SocketStream) -> None:
        index = len(self.conns)
        got = bytearray()
        self.conns.append(got)
        try:
            async with stream:
                while data := await stream.receive_some(65536):
                    got += data
                    await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.ended.append(index)


@pytest.fixture
async def recorder(nursery: trio.Nursery) -> Recorder:
    server = Recorder()
    listeners = await nursery.start(partial(trio.serve_tcp, server.handler, 0, host="127.0.0.1"))
    server.port = listeners[0].socket.getsockname()[1]
    return server


async def until(pred: Callable[[], bool], timeout: float = 2.0) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.01)


async def test_dup_connect_close_replays_first_bytes_then_closes(recorder: Recorder) -> None:
    async with FaultProxy.open("127.0.0.1", recorder.port, dup_replay=8) as proxy:
        proxy.dup_connect("close")
        stream = await connect(proxy)
        await stream.send_all(b"hello, twice")  # 12 bytes: only the first 8 are replayed
        assert await read_exactly(stream, 12) == b"hello, twice"
        await until(lambda: len(recorder.conns) == 2 and 1 in recorder.ended)
        original, duplicate = recorder.conns
        assert original == b"hello, twice" and duplicate == b"hello, t"
        assert proxy.dups == 1 and 0 not in recorder.ended  # the original lives on
        await stream.send_all(b"!")
        assert await read_exactly(stream, 1) == b"!"
        await stream.aclose()


async def test_dup_connect_hold_keeps_the_twin_until_the_original_ends(
    recorder: Recorder,
) -> None:
    async with FaultProxy.open("127.0.0.1", recorder.port) as proxy:
        proxy.dup_connect("hold")
        stream = await connect(proxy)
        await stream.send_all(b"GET / HTTP/1.1\r\n\r\n")
        await read_exactly(stream, 18)
        await until(lambda: len(recorder.conns) == 2 and recorder.conns[1] == recorder.conns[0])
        await trio.sleep(0.7)  # longer than close mode's idle wait: still held
        assert recorder.ended == [] and proxy.active == 1
        proxy.dup_connect(None)  # off for new connections; this one keeps its twin
        await stream.aclose()
        await until(lambda: sorted(recorder.ended) == [0, 1])
        plain = await connect(proxy)
        await plain.send_all(b"x")
        assert await read_exactly(plain, 1) == b"x"
        assert proxy.dups == 1 and len(recorder.conns) == 3
        await plain.aclose()


async def test_a_target_that_slams_the_duplicate_hurts_only_the_duplicate(
    nursery: trio.Nursery,
) -> None:
    """The target resets the twin (as a node may refuse a replayed handshake): the
    original connection and the proxy carry on."""
    seen = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal seen
        seen += 1
        if seen == 2:  # the duplicate: reset it before it finished replaying
            _hard_close(stream, reset=True)
            return
        async with stream:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)

    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    async with FaultProxy.open("127.0.0.1", port, dup_replay=1 << 20) as proxy:
        proxy.dup_connect("hold")
        stream = await connect(proxy)
        for _ in range(50):  # keeps replaying into the reset twin
            await stream.send_all(b"x" * 20000)
            assert await read_exactly(stream, 20000) == b"x" * 20000
        await until(lambda: proxy.dups == 1 and seen == 2)
        assert proxy.active == 1
        await stream.aclose()


async def test_heal_clears_every_fault(proxy: FaultProxy) -> None:
    stream = await connect(proxy)
    proxy.pause()
    proxy.block("blackhole")
    proxy.delay(5)
    proxy.drop("both")
    proxy.cut_after(1)
    proxy.dup_connect("hold")
    proxy.heal()
    stats = proxy.stats()
    assert not stats["paused"] and stats["blocked"] is None and stats["dropping"] == []
    assert stats["delay_up"] == stats["delay_down"] == 0 and stats["cut_after"] is None
    assert stats["dup_connect"] is None
    for s in (stream, await connect(proxy)):
        await s.send_all(b"healed")
        with trio.fail_after(2):
            assert await read_exactly(s, 6) == b"healed"
        await s.aclose()
    assert proxy.dups == 0 and proxy.mid_cuts == 0


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
            for good in ("drop up 0.5", "undrop", "cut_after 5 down", "dup_connect close"):
                assert (await ask(good))["ok"] is True, good
            for bad in ("drop sideways", "cut_after -1", "cut_after x", "dup_connect maybe"):
                assert (await ask(bad))["ok"] is False, bad
            faulty = await ask("stats")
            assert faulty["cut_after"] == 5 and faulty["dup_connect"] == "close"
            assert await ask("heal") == {"ok": True, "cmd": "heal"}
            stats = await ask("stats")
            assert stats["bytes_up"] == 11 and stats["cuts"] == 1 and stats["delay_up"] == 0
            assert stats["cut_after"] is None and stats["dup_connect"] is None

            await stdin.aclose()  # EOF on stdin: the proxy exits by itself
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
