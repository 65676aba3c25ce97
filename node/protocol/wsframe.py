"""WebSocket frames (RFC 6455 §5), sans-I/O: the data phase of a connection after the upgrade.

Why our own framing rather than wsproto's (which still does the HTTP upgrade, in
node/websocket.py): measured on the 2-vCPU dev VM, wsproto spends ~9 µs framing one 250-byte
server message, ~27 µs parsing one client frame into an event, and unmasks in Python at
~215 MB/s. A node pushing to 1,000 online members 50 times a second frames 50,000 messages a
second, and a 1 GiB upload is 1 GiB of unmasking. Here a server frame is a header in front of
the payload (servers do not mask), a client frame is parsed from its two header bytes, and
payloads are unmasked by the ``websockets`` package's C ``apply_mask`` (GB/s; its pure-Python
fallback when the C extension is missing). No extension is ever negotiated, so every RSV bit
must be zero.

Limits are the reader's, because only it sees frames: a message's total size (checked from the
header, before any of the payload is buffered), frames per message, and for a connection
still in its session handshake a budget of frames and payload bytes in all (issue 10: a hello
in 100,000 one-byte fragments, or a flood of pings before it, must cost its sender, not the
node). A frame over a limit raises :class:`FrameError` with the close code to send.
"""

from __future__ import annotations

import os
import struct

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the wheels ship the C extension
    from websockets.utils import apply_mask

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DATA_OPCODES = (CONTINUATION, TEXT, BINARY)
CONTROL_OPCODES = (CLOSE, PING, PONG)

PROTOCOL_ERROR = 1002
NO_STATUS = 1005  # a Close frame without a code (never sent)
INVALID_DATA = 1007
POLICY = 1008  # FRAME_FLOOD
TOO_BIG = 1009

# Close codes a peer may send (RFC 6455 §7.4): the defined ones, registered and private ranges.
_VALID_CLOSE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})

MAX_FRAGMENTS = 1024  # frames per message once the handshake is done (1 MiB in 1 KiB frames)
HANDSHAKE_MAX_FRAGMENTS = 8  # frames per message before it (a hello is one ~100 byte frame)
HANDSHAKE_MAX_FRAMES = 64  # frames of any kind (data, ping, pong) before it
HANDSHAKE_MAX_BYTES = 16 * 1024  # payload bytes before it

_pack_short = struct.Struct("!BBH").pack
_pack_long = struct.Struct("!BBQ").pack


class FrameError(Exception):
    """The peer broke the framing or a limit: close with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code} {reason}")


def header(opcode: int, length: int, *, masked: bool = False) -> bytes:
    """The header of one final frame of ``length`` payload bytes (without a mask key)."""
    first = 0x80 | opcode
    m = 0x80 if masked else 0
    if length < 126:
        return bytes((first, m | length))
    if length < 0x10000:
        return _pack_short(first, m | 126, length)
    return _pack_long(first, m | 127, length)


def frame(opcode: int, payload: bytes, *, mask: bool = False) -> list[bytes]:
    """One final frame as the buffers to write (header, payload): a big payload is never
    copied into a joined frame. A client masks (``mask=True``) with a fresh random key."""
    if not mask:
        return [header(opcode, len(payload)), payload] if payload else [header(opcode, 0)]
    key = os.urandom(4)
    head = header(opcode, len(payload), masked=True) + key
    return [head, apply_mask(payload, key)] if payload else [head]


def close_payload(code: int, reason: str) -> bytes:
    """A Close frame's payload; the reason is cut to fit a control frame (125 bytes)."""
    raw = reason.encode()[:123]
    while raw:
        try:
            raw.decode()
            break
        except UnicodeDecodeError:  # cut inside a character
            raw = raw[:-1]
    return struct.pack("!H", code) + raw


def parse_close(payload: bytes) -> tuple[int, str]:
    """A received Close frame's (code, reason); 1005 when it carries none."""
    if not payload:
        return NO_STATUS, ""
    if len(payload) == 1:
        raise FrameError(PROTOCOL_ERROR, "close frame of one byte")
    code = int.from_bytes(payload[:2], "big")
    if code not in _VALID_CLOSE and not 3000 <= code <= 4999:
        raise FrameError(PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        return code, payload[2:].decode()
    except UnicodeDecodeError:
        raise FrameError(INVALID_DATA, "close reason is not UTF-8") from None


class FrameReader:
    """Bytes in, whole messages and control frames out.

    ``masked``: the peer masks its frames (a server reading a client) and must; a client
    reading a server requires the opposite. :meth:`next` returns ``(opcode, payload)``: a
    whole message as BINARY or TEXT (fragments joined, unmasked), or one PING, PONG or CLOSE
    frame; None when more bytes are needed."""

    __slots__ = (
        "_buf",
        "_bytes",
        "_fragments",
        "_frames",
        "_handshake",
        "_masked",
        "_max_message",
        "_op",
        "_parts",
        "_pos",
        "_size",
    )

    def __init__(self, *, masked: bool, max_message: int, handshake: bool = False) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._masked = masked
        self._max_message = max_message
        self._handshake = handshake  # the stricter budget until :meth:`handshake_done`
        self._op: int | None = None  # opcode of the message being assembled
        self._parts: list[bytes] = []
        self._size = 0
        self._fragments = 0
        self._frames = 0  # frames of any kind, counted during the handshake
        self._bytes = 0  # payload bytes, counted during the handshake

    def handshake_done(self) -> None:
        """The session handshake succeeded: lift the pre-handshake budget."""
        self._handshake = False

    def feed(self, data: bytes | bytearray) -> None:
        if self._pos:
            if self._pos == len(self._buf):
                self._buf = bytearray(data)
            else:
                del self._buf[: self._pos]
                self._buf += data
            self._pos = 0
        else:
            self._buf += data

    @property
    def wanted(self) -> int:
        """Bytes still missing for the frame in progress as far as its header tells (0 when
        unknown): lets a driver read a big frame in big reads."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 2:
            return 0
        n = buf[pos + 1] & 0x7F
        if n == 126 and len(buf) - pos >= 4:
            n, hl = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
        elif n == 127 and len(buf) - pos >= 10:
            n, hl = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
        elif n >= 126:
            return 0
        else:
            hl = 2
        hl += 4 if buf[pos + 1] & 0x80 else 0
        return max(0, hl + n - (len(buf) - pos))

    def next(self) -> tuple[int, bytes] | None:
        buf = self._buf
        while True:
            pos = self._pos
            avail = len(buf) - pos
            if avail < 2:
                if not avail and pos:  # all consumed: an idle connection keeps no bytes
                    buf.clear()
                    self._pos = 0
                return None
            b0, b1 = buf[pos], buf[pos + 1]
            op = b0 & 0x0F
            n = b1 & 0x7F
            hl = 2
            if n >= 126:
                if n == 126:
                    if avail < 4:
                        return None
                    n, hl = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
                else:
                    if avail < 10:
                        return None
                    n, hl = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            masked = b1 & 0x80
            self._check_header(b0, op, n, bool(masked))
            if masked:
                hl += 4
            end = pos + hl + n
            if len(buf) < end:
                return None
            with memoryview(buf) as view:
                if not n:
                    payload = b""
                elif masked:
                    payload = apply_mask(view[pos + hl : end], bytes(buf[pos + hl - 4 : pos + hl]))
                else:
                    payload = bytes(view[pos + hl : end])
            self._pos = end
            if self._handshake:
                self._frames += 1
                self._bytes += n
                if self._frames > HANDSHAKE_MAX_FRAMES or self._bytes > HANDSHAKE_MAX_BYTES:
                    raise FrameError(POLICY, "FRAME_FLOOD")
            if op >= 8:
                return op, payload
            self._fragments += 1
            if self._fragments > (HANDSHAKE_MAX_FRAGMENTS if self._handshake else MAX_FRAGMENTS):
                raise FrameError(POLICY, "FRAME_FLOOD")
            if b0 & 0x80:  # FIN
                self._fragments = 0
                if self._op is None:
                    return op, payload
                self._parts.append(payload)
                whole = b"".join(self._parts)
                first, self._op, self._parts, self._size = self._op, None, [], 0
                return first, whole
            if self._op is None:
                self._op = op
            self._parts.append(payload)
            self._size += n

    def _check_header(self, b0: int, op: int, n: int, masked: bool) -> None:
        """Everything about a frame that its header alone can refuse, before its payload is
        buffered (a frame that declares 2^60 bytes is refused from its first 10 bytes)."""
        if b0 & 0x70:
            raise FrameError(PROTOCOL_ERROR, "reserved bits set")
        if masked != self._masked:
            raise FrameError(PROTOCOL_ERROR, "frame masking is wrong for this side")
        if op >= 8:
            if op not in CONTROL_OPCODES:
                raise FrameError(PROTOCOL_ERROR, f"unknown opcode {op}")
            if not b0 & 0x80 or n > 125:
                raise FrameError(PROTOCOL_ERROR, "control frame fragmented or over 125 bytes")
            return
        if op not in DATA_OPCODES:
            raise FrameError(PROTOCOL_ERROR, f"unknown opcode {op}")
        if op == CONTINUATION and self._op is None:
            raise FrameError(PROTOCOL_ERROR, "continuation frame without a message")
        if op != CONTINUATION and self._op is not None:
            raise FrameError(PROTOCOL_ERROR, "new message before the last one ended")
        if self._handshake and self._bytes + n > HANDSHAKE_MAX_BYTES:
            raise FrameError(POLICY, "FRAME_FLOOD")
        if self._size + n > self._max_message:
            raise FrameError(TOO_BIG, "FRAME_TOO_BIG")
