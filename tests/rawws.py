"""A bare WebSocket client on wsproto, for sending what the SDK never would."""

from __future__ import annotations

import contextlib
from typing import Any

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)


def frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    """One client frame (masked with a zero key, so the payload reads as is), built by hand
    so a test can send what wsproto would not: a message in any number of fragments."""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\x00\x00\x00\x00" + payload


BINARY, CONTINUATION, PING, PONG = 0x2, 0x0, 0x9, 0xA


def fragmented(data: bytes, pieces: int) -> bytes:
    """A binary message as PIECES frames: a binary start, continuations, the last with FIN.
    With more pieces than bytes, the extra frames are empty (which must count too)."""
    assert pieces >= 1
    step = max(1, len(data) // pieces)
    chunks = [data[i * step : (i + 1) * step] for i in range(pieces - 1)]
    chunks.append(data[(pieces - 1) * step :])
    return b"".join(
        frame(BINARY if i == 0 else CONTINUATION, chunk, fin=i == pieces - 1)
        for i, chunk in enumerate(chunks)
    )


class RawWS:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.auto_pong = True
        self._pending: list[Any] = []  # events read but not yet consumed by recv()

    @classmethod
    async def connect(cls, url: str) -> RawWS:
        host_port = url.split("//", 1)[1].strip("/")
        host, port = host_port.rsplit(":", 1)
        raw = cls(await trio.open_tcp_stream(host, int(port)))
        await raw.stream.send_all(raw.ws.send(Request(host=host_port, target="/")))
        while True:
            events = await raw._events()
            for i, ev in enumerate(events):
                if isinstance(ev, AcceptConnection):
                    raw._pending = events[i + 1 :]  # frames that came with the 101
                    return raw
                if isinstance(ev, RejectConnection):
                    raise ConnectionError(f"rejected {ev.status_code}")

    async def _events(self) -> list[Any]:
        data = await self.stream.receive_some(65536)
        if not data:
            self.ws.receive_data(None)
        else:
            self.ws.receive_data(data)
        out = list(self.ws.events())
        if not data and not out:
            raise EOFError
        return out

    async def send(self, data: bytes | str) -> None:
        await self.stream.send_all(self.ws.send(Message(data=data)))

    async def send_raw(self, wire: bytes) -> bool:
        """Bytes straight onto the socket (e.g. from :func:`frame`). False if the node reset
        the connection meanwhile (it closes abusive peers without reading the rest)."""
        try:
            await self.stream.send_all(wire)
            return True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False

    async def recv(self) -> bytes | str | None:
        """Next message; None once the node closed the connection (close code kept)."""
        buf: list[Any] = []
        while True:
            if not self._pending:
                try:
                    self._pending = await self._events()
                except (EOFError, trio.BrokenResourceError):
                    return None
            while self._pending:
                ev = self._pending.pop(0)
                if isinstance(ev, BytesMessage | TextMessage):
                    buf.append(ev.data)
                    if ev.message_finished:
                        return b"".join(buf) if isinstance(ev, BytesMessage) else "".join(buf)
                elif isinstance(ev, CloseConnection):
                    self.close_code, self.close_reason = ev.code, ev.reason
                    with contextlib.suppress(Exception):
                        await self.stream.send_all(self.ws.send(ev.response()))
                    return None
                elif isinstance(ev, Ping) and self.auto_pong:
                    await self.stream.send_all(self.ws.send(ev.response()))

    async def wait_closed(self) -> tuple[int | None, str | None]:
        while await self.recv() is not None:
            pass
        return self.close_code, self.close_reason

    async def aclose(self) -> None:
        await self.stream.aclose()
