"""Length-prefixed frames over a trio byte stream (the admin Unix socket).

The admin channel speaks the same CBOR request/result/error envelopes as the WebSocket
gateway; only the framing differs (4-byte big-endian length), since a local socket guarded
by file permissions needs neither WebSocket nor sealing. It awaits streams, so it lives
outside ``node/protocol`` (sans-I/O); the node's admin server and the CLI's admin client
both use it.
"""

from __future__ import annotations

import trio

HEADER = 4


class FrameTooBig(Exception):
    pass


async def _read_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(n - len(buf))
        if not chunk:
            if buf:
                raise EOFError("stream ended inside a frame")
            return None
        buf += chunk
    return bytes(buf)


async def read_frame(stream: trio.abc.ReceiveStream, max_bytes: int) -> bytes | None:
    """The next frame, or None at a clean end of stream."""
    header = await _read_exactly(stream, HEADER)
    if header is None:
        return None
    size = int.from_bytes(header, "big")
    if size > max_bytes:
        raise FrameTooBig(f"frame of {size} bytes exceeds {max_bytes}")
    body = await _read_exactly(stream, size)
    if body is None:
        raise EOFError("stream ended inside a frame")
    return body


async def write_frame(stream: trio.abc.SendStream, data: bytes) -> None:
    await stream.send_all(len(data).to_bytes(HEADER, "big") + data)
