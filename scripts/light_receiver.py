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

import time

import trio
from nacl.signing import SigningKey

from node.protocol.connection import Connection, Reply, Updates
from node.protocol.handshake import device_proof
from node.websocket import WebSocket, connect

MAX_MESSAGE = 2 << 20


class LightReceiver:
    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.arrivals: list[int] = []  # time.time_ns() each update arrived, in order
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
        """Record update arrivals until cancelled (pings are answered on the way)."""
        while True:
            msg = await self._next_data()
            now = time.time_ns()
            ev = self.conn.receive(msg)
            if isinstance(ev, Updates):
                self.arrivals.extend([now] * len(ev.items))

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.ws.stream)
