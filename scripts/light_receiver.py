"""A minimal signed-in receiver for the scale benchmarks (fan-out, idle connections).

It speaks the real protocol up to sign-in (WebSocket upgrade, hello/welcome, a sealed
``auth.authorize`` with the device's proof) through the same sans-I/O
:class:`~node.protocol.connection.Connection` as the SDK and the gateway, and then only
reads: each push frame is opened and its updates counted (a node joins queued updates into
one frame), their arrival time is recorded, ping frames are answered. A full SDK client also
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
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request

from node.protocol.connection import Connection, Reply, Updates
from node.protocol.handshake import device_proof

OP_BINARY, OP_PING, OP_PONG = 0x2, 0x9, 0xA


def _masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client-to-server frame (clients must mask)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


class LightReceiver:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.arrivals: list[int] = []  # time.time_ns() each update arrived, in order
        self._buf = bytearray()
        self.conn = Connection.client()

    @classmethod
    async def connect(cls, url: str, device_key: SigningKey) -> LightReceiver:
        host_port = url.split("//", 1)[1].strip("/")
        host, port = host_port.rsplit(":", 1)
        self = cls(await trio.open_tcp_stream(host, int(port)))
        ws = WSConnection(ConnectionType.CLIENT)
        await self.stream.send_all(ws.send(Request(host=host_port, target="/")))
        pending: list[bytes] = []
        accepted = False
        while not accepted:
            data = await self.stream.receive_some(65536)
            if not data:
                raise ConnectionError("closed during upgrade")
            ws.receive_data(data)
            for ev in ws.events():
                if isinstance(ev, AcceptConnection):
                    accepted = True
                elif isinstance(ev, BytesMessage):
                    pending.append(bytes(ev.data))
        # from here on frames are handled by hand; wsproto has consumed nothing past the
        # 101 response because the node speaks only after our hello
        conn = self.conn
        await self.stream.send_all(_masked_frame(OP_BINARY, conn.hello()))
        conn.receive_welcome(await self._next_data())
        proof = {
            "device_key": bytes(device_key.verify_key),
            "sig": device_proof(device_key, conn.transcript_hash),
        }
        _, req = conn.request("auth.authorize", proof)
        await self.stream.send_all(_masked_frame(OP_BINARY, req))
        reply = conn.receive(await self._next_data())
        if not isinstance(reply, Reply):
            raise ConnectionError(f"authorize failed: {reply}")
        return self

    async def _next_data(self) -> bytes:
        while True:
            for opcode, payload in await self._frames():
                if opcode == OP_BINARY:
                    return payload

    async def _frames(self) -> list[tuple[int, bytes]]:
        """Read at least one chunk and return the complete frames in the buffer."""
        data = await self.stream.receive_some(1 << 18)
        if not data:
            raise ConnectionError("closed")
        self._buf += data
        out: list[tuple[int, bytes]] = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if len(buf) - pos < 4:
                    break
                n = struct.unpack_from("!H", buf, pos + 2)[0]
                head = 4
            elif n == 127:
                if len(buf) - pos < 10:
                    break
                n = struct.unpack_from("!Q", buf, pos + 2)[0]
                head = 10
            if len(buf) - pos < head + n:
                break
            out.append((b0 & 0x0F, bytes(buf[pos + head : pos + head + n])))
            pos += head + n
        del buf[:pos]
        return out

    async def listen(self) -> None:
        """Record update arrivals until cancelled; answer pings so the node keeps us."""
        while True:
            for opcode, payload in await self._frames():
                if opcode == OP_BINARY:
                    now = time.time_ns()
                    ev = self.conn.receive(payload)
                    if isinstance(ev, Updates):
                        self.arrivals.extend([now] * len(ev.items))
                elif opcode == OP_PING:
                    await self.stream.send_all(_masked_frame(OP_PONG, payload))

    async def aclose(self) -> None:
        await self.stream.aclose()
