"""A minimal signed-in receiver for the scale benchmarks (fan-out, idle connections).

It speaks the real protocol up to sign-in (WebSocket upgrade, hello/welcome, a sealed
``auth.authorize`` with the device's proof) through the same sans-I/O
:class:`~node.protocol.connection.Connection` as the SDK and the gateway, and then only
reads: each push frame is opened and its updates counted (a node joins queued updates into
one frame), their arrival time is recorded, ping frames are answered (node/websocket.py, the
same WebSocket as the SDK's). A full SDK client also
hands every update through channels to the application; a thousand of them in one process
measure the client, not the node. With these, a fan-out figure shows how fast the node gets
the updates onto every member's socket.
"""

from __future__ import annotations

import os
import struct
import time

import trio
from nacl.signing import SigningKey

from node.protocol import wsframe
from node.protocol.connection import Connection, Reply
from node.protocol.handshake import device_proof
from node.websocket import WebSocket, connect

MAX_MESSAGE = 2 << 20
# bytes asked of one read: under glibc's mmap threshold (128 KiB), or every read maps and
# unmaps its buffer (measured: 19 us a read at 256 KiB, 3.6 us at 64 KiB)
READ_SIZE = 64 * 1024


class LightReceiver:
    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.arrivals: list[int] = []  # time.time_ns() each update arrived, in order
        self.processed: list[int] = []  # when _listen_all had read and opened it
        self.conn = Connection.client()

    @classmethod
    async def connect(cls, url: str, device_key: SigningKey) -> LightReceiver:
        host_port = url.split("//", 1)[1].strip("/")
        host, port = host_port.rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        self = cls(await connect(stream, host_port, "/", max_message=MAX_MESSAGE))
        conn = self.conn
        await self.ws.send(conn.hello())
        conn.receive_welcome(await self._next_data())
        proof = {
            "device_key": bytes(device_key.verify_key),
            "sig": device_proof(device_key, conn.transcript_hash),
        }
        _, req = conn.request("auth.authorize", proof)
        await self.ws.send(req)
        reply = conn.receive(await self._next_data())
        if not isinstance(reply, Reply):
            raise ConnectionError(f"authorize failed: {reply}")
        return self

    async def _next_data(self) -> bytes:
        msg = await self.ws.receive()
        if not isinstance(msg, bytes):
            raise ConnectionError("text frame from the node")
        return msg

    async def listen(self) -> None:
        """Record update arrivals until cancelled (pings are answered on the way). Each
        frame is authenticated and decrypted, and its update count read from the push's
        CBOR header (``{"u": [n items]}``, node/protocol/frames.py) instead of decoding
        every update: decoding was most of a receiver's CPU, and 1,000 of them on the
        node's two cores measured themselves more than the node."""
        while True:
            msg = await self._next_data()
            now = time.time_ns()
            n = _push_count(self.conn.open_frame(msg))
            if n is None:  # not a push (nothing else is sent to a signed-in receiver)
                continue
            self.arrivals.extend([now] * n)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.ws.stream)


def _push_count(plain: bytes) -> int | None:
    """The number of updates in a push frame's plaintext, from its array header."""
    if plain[:3] != b"\xa1\x61u" or len(plain) < 4:
        return None
    b = plain[3]
    if 0x80 <= b < 0x98:
        return b - 0x80
    if b == 0x98:
        return plain[4]
    if b == 0x99:
        return int.from_bytes(plain[4:6], "big")
    if b == 0x9A:
        return int.from_bytes(plain[4:8], "big")
    return None


async def _connect_all(url: str, seeds: list[str]) -> list[LightReceiver]:
    receivers: list[LightReceiver] = []
    limiter = trio.CapacityLimiter(64)

    async def one(seed: str) -> None:
        async with limiter:
            receivers.append(await LightReceiver.connect(url, SigningKey(bytes.fromhex(seed))))

    async with trio.open_nursery() as n:
        for seed in seeds:
            n.start_soon(one, seed)
    return receivers


# Linux: the kernel stamps each packet as it reaches the socket; recvmsg returns the stamp of
# the last packet read (socket(7), SO_TIMESTAMPNS; 35 on every Linux architecture but parisc)
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@qq")


def _listen_all(receivers: list[LightReceiver], expected: int, timeout: float) -> None:
    """Every receiver's frames from ONE epoll loop, without trio: a task wake-up, a trio
    receive and a scheduler pass per frame cost a receiver ~25 us here, so 1,000 of them
    at 50 msgs/s needed 1.4 cores of the 2 the node runs on. Same frame reader, same
    decryption, same update count; pings are answered (masked pongs).

    Two times per update: when the kernel put it on the member's socket (SO_TIMESTAMPNS,
    the arrival the node is measured by: it does not move when these receivers, which share
    the node's two cores, are slow to read), and when this loop had read and opened it."""
    import selectors
    import socket

    sel = selectors.EpollSelector()
    socks = []
    for r in receivers:
        fd = r.ws.stream.socket.fileno()  # type: ignore[attr-defined]
        sock = socket.socket(fileno=os.dup(fd))
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        socks.append(sock)
        sel.register(sock, selectors.EVENT_READ, r)
    anc = socket.CMSG_SPACE(_TIMESPEC.size)
    done_at = time.monotonic() + timeout
    want = expected * len(receivers)
    got = 0
    while got < want and time.monotonic() < done_at:
        for key, _ in sel.select(0.5):
            r = key.data
            try:
                data, cmsgs, _flags, _addr = key.fileobj.recvmsg(READ_SIZE, anc)
            except BlockingIOError:
                continue
            if not data:
                sel.unregister(key.fileobj)
                continue
            now = time.time_ns()
            stamp = now
            for level, kind, blob in cmsgs:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = _TIMESPEC.unpack(blob[: _TIMESPEC.size])
                    stamp = sec * 1_000_000_000 + nsec
            reader = r.ws._reader
            reader.feed(data)
            while (ev := reader.next()) is not None:
                op, payload = ev
                if op == wsframe.BINARY:
                    n = _push_count(r.conn.open_frame(payload))
                    if n:
                        r.arrivals.extend([stamp] * n)
                        r.processed.extend([now] * n)
                        got += n
                elif op == wsframe.PING:
                    key.fileobj.send(b"".join(wsframe.frame(wsframe.PONG, payload, mask=True)))
    for sock in socks:
        sock.close()


def _worker(url: str, seeds: list[str], expected: int, timeout: float) -> None:
    """Receivers in a process of their own (``bench.py --fanout-procs``): connect one per
    device seed (trio, the real handshake and sign-in), say ``ready``, record arrivals
    until each has EXPECTED updates (or TIMEOUT), then print every receiver's arrival and
    processing times as one JSON line."""
    import json
    import sys

    receivers = trio.run(_connect_all, url, seeds)
    print("ready", flush=True)
    _listen_all(receivers, expected, timeout)
    sys.stdout.write(json.dumps([[r.arrivals, r.processed] for r in receivers]) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    import json
    import sys

    cfg = json.loads(sys.stdin.readline())
    _worker(cfg["url"], cfg["seeds"], cfg["expected"], cfg["timeout"])
