"""A WebSocket over a trio stream: wsproto for the HTTP upgrade, our framing for the rest.

Used by the gateway (server side) and the SDK and federation links (client side). Why not
trio-websocket, which the node used through issue 16 (the measurements are in
docs/performance.md, issue 17):

* a background reader task per connection and a memory channel between it and the reader of
  the messages: two task switches per incoming frame, and ~3 KiB per idle connection;
* a StrictFIFOLock and ``send_all`` per outgoing message: two checkpoints for each of the 11
  frames one message causes in an 11-member group, a wake-up of a writer task per push;
* wsproto's Python framing and unmasking (node/protocol/wsframe.py says what that costs).

Here the task that wants a message reads the socket itself, and sending is synchronous: a
frame is appended to the connection's output and written at once with ``os.writev`` on the
socket (non-blocking, as trio keeps it), without a checkpoint. Only when the kernel's buffer is
full does the rest wait, for :meth:`WebSocket.flush`; frames leave in the order they were
queued, which the session's seal counter relies on (frames must reach the wire in the order
they were sealed). Over TLS (an ``SSLStream``) there is no descriptor to write to, and the
output goes through ``send_all`` in :meth:`flush`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import trio
from wsproto import ConnectionType
from wsproto.events import AcceptConnection, RejectConnection, Request
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

from .protocol import wsframe
from .protocol.wsframe import BINARY, CLOSE, PING, PONG, TEXT, FrameError, FrameReader

MAX_HEAD = 16 * 1024  # an HTTP response head to the client's upgrade request
READ_SIZE = 64 * 1024
READ_MAX = 4 * 1024 * 1024  # one read while a big frame is arriving
EVENTS_PER_CHECKPOINT = 8  # frames parsed from one read before the reader lets others run
SMALL_FRAME = 16 * 1024  # frames below this are joined to their header and written in one piece
LOST = 1006  # no Close frame: the connection dropped


@dataclass(frozen=True, slots=True)
class CloseReason:
    code: int
    reason: str
    local: bool = False  # we closed it because the peer broke a rule (a FrameError)


class ConnectionClosed(Exception):
    def __init__(self, reason: CloseReason) -> None:
        self.reason = reason
        super().__init__(f"{reason.code} {reason.reason}".strip())


class HandshakeRefused(Exception):
    """The server answered the upgrade with an HTTP status instead of a WebSocket."""

    def __init__(self, status_code: int) -> None:
        self.status_code = status_code
        super().__init__(f"HTTP {status_code}")


class WebSocket:
    """One open WebSocket. One task reads (:meth:`receive`); any task may send."""

    __slots__ = (
        "_close_sent",
        "_closed_event",
        "_drained",
        "_events",
        "_fd",
        "_flushing",
        "_mask",
        "_out",
        "_reader",
        "_reading",
        "_sock",
        "closed",
        "last_heard",
        "stream",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        client: bool,
        max_message: int,
        leftover: bytes = b"",
        handshake_budget: bool = False,
    ) -> None:
        self.stream = stream
        sock = getattr(stream, "socket", None) if isinstance(stream, trio.SocketStream) else None
        self._sock = sock
        self._fd = sock.fileno() if sock is not None else -1
        self._reader = FrameReader(
            masked=not client, max_message=max_message, handshake=handshake_budget
        )
        if leftover:
            self._reader.feed(leftover)
        self._mask = client
        self._out: list[bytes] = []
        self._flushing = False
        self._drained: trio.Event | None = None
        self._close_sent = False
        self._closed_event: trio.Event | None = None
        self._reading = False
        self._events = 0
        self.closed: CloseReason | None = None
        self.last_heard = trio.current_time()

    # --- receiving -------------------------------------------------------------------------
    def handshake_done(self) -> None:
        """The session's own handshake succeeded: lift the reader's pre-handshake budget."""
        self._reader.handshake_done()

    async def receive(self) -> bytes | str:
        """The next data message (a text message as ``str``). Pings are answered and pongs
        noted on the way. Raises :class:`ConnectionClosed` once the connection is over: the
        peer's Close (answered), a broken rule (our Close sent, ``reason.local``), or EOF."""
        if self.closed is not None:
            raise ConnectionClosed(self.closed)
        self._reading = True
        try:
            while True:
                try:
                    ev = self._reader.next()
                except FrameError as e:
                    raise self._violated(e) from None
                if ev is None:
                    await self._read_more()
                    continue
                self._events += 1
                if self._events >= EVENTS_PER_CHECKPOINT:
                    self._events = 0
                    await trio.lowlevel.checkpoint()
                op, payload = ev
                if op == BINARY:
                    return payload
                if op == TEXT:
                    return payload.decode("utf-8", "replace")
                if op == PING:
                    if not self._close_sent:
                        self._queue(PONG, payload)
                        await self._flush_if_pending()
                elif op == CLOSE:
                    raise await self._peer_closed(payload)
                # PONG: hearing from the peer is all a pong is for (last_heard)
        finally:
            self._reading = False

    async def _read_more(self) -> None:
        size = min(max(READ_SIZE, self._reader.wanted), READ_MAX)
        try:
            data = await self.stream.receive_some(size)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            raise self._lost(f"read failed: {e}") from None
        if not data:
            raise self._lost("connection dropped without a close frame")
        self._events = 0
        self.last_heard = trio.current_time()
        self._reader.feed(data)

    async def _peer_closed(self, payload: bytes) -> ConnectionClosed:
        try:
            code, reason = wsframe.parse_close(payload)
        except FrameError as e:
            return self._violated(e)
        if not self._close_sent:  # echo the peer's code, as the RFC asks
            self._close_sent = True
            echo = code if code != wsframe.NO_STATUS else 1000
            self._queue(CLOSE, wsframe.close_payload(echo, ""))
            with trio.move_on_after(1.0):
                await self._flush_if_pending()
        return self._finish(CloseReason(code, reason))

    def _violated(self, e: FrameError) -> ConnectionClosed:
        """The peer broke the framing or a limit: our Close goes out (best effort, now) and
        nothing more it sent is looked at."""
        if not self._close_sent:
            self._close_sent = True
            self._queue(CLOSE, wsframe.close_payload(e.code, e.reason))
        return self._finish(CloseReason(e.code, e.reason, local=True))

    def _lost(self, why: str) -> ConnectionClosed:
        return self._finish(CloseReason(LOST, why))

    def _finish(self, reason: CloseReason) -> ConnectionClosed:
        if self.closed is None:
            self.closed = reason
        if self._closed_event is not None:
            self._closed_event.set()
        return ConnectionClosed(self.closed)

    # --- sending ---------------------------------------------------------------------------
    def send_nowait(self, data: bytes) -> bool:
        """Queue one binary message and write as much as the socket takes now, without a
        checkpoint. True when nothing is left waiting (else :meth:`flush` must follow).
        Raises :class:`ConnectionClosed` once a Close was sent or the connection is lost."""
        if self._close_sent or self.closed is not None:
            raise ConnectionClosed(self.closed or CloseReason(LOST, "closing"))
        if not self._out and not self._mask and not self._flushing and self._fd >= 0:
            # the usual case, a server frame to a socket with room: one call, no queue
            # (issue 17: a fan-out writes one of these per member per round)
            head = wsframe.header(BINARY, len(data))
            try:
                # a small frame is joined and written with write(2): measured here, ~1 us
                # less kernel time than writev(2) of its two parts; a big one is not copied
                if len(data) < SMALL_FRAME:
                    n = os.write(self._fd, head + data)
                else:
                    n = os.writev(self._fd, (head, data))
            except BlockingIOError:
                n = 0
            except OSError as e:
                raise self._lost(f"write failed: {e.strerror}") from None
            if n == len(head) + len(data):
                return True
            self._out = [head[n:], data] if n < len(head) else [data[n - len(head) :]]
            return False
        self._queue(BINARY, data)
        if self.closed is not None:
            raise ConnectionClosed(self.closed)
        return not self._out

    async def send(self, data: bytes) -> None:
        """Send one binary message, waiting while the socket is full (backpressure)."""
        if not self.send_nowait(data):
            await self.flush()

    def ping_nowait(self, payload: bytes = b"") -> None:
        if not self._close_sent and self.closed is None:
            self._queue(PING, payload)

    @property
    def pending_bytes(self) -> int:
        """Bytes queued that the socket has not taken yet."""
        return sum(len(b) for b in self._out)

    def _queue(self, opcode: int, payload: bytes) -> None:
        self._out += wsframe.frame(opcode, payload, mask=self._mask)
        if not self._flushing and self._fd >= 0:
            self._write_now()

    def _write_now(self) -> None:
        out = self._out
        try:
            n = os.writev(self._fd, out if len(out) <= 512 else [b"".join(out)])
        except BlockingIOError:
            return
        except OSError as e:  # reset, broken pipe: the reader will see it too
            self._out = []
            self._lost(f"write failed: {e.strerror}")
            return
        done = 0  # buffers written whole (empty ones included)
        while done < len(out) and n >= len(out[done]):
            n -= len(out[done])
            done += 1
        del out[:done]
        if n:
            out[0] = out[0][n:]

    async def _flush_if_pending(self) -> None:
        if self._out:
            await self.flush()

    async def flush(self) -> None:
        """Wait until everything queued is with the kernel. One task writes at a time; the
        others wait for it to finish."""
        while self._out:
            if self._flushing:
                assert self._drained is not None
                await self._drained.wait()
                continue
            self._flushing = True
            drained = self._drained = trio.Event()
            try:
                if self._fd >= 0:
                    assert self._sock is not None
                    while self._out:
                        await trio.lowlevel.wait_writable(self._sock)
                        self._write_now()
                        if self.closed is not None:
                            raise ConnectionClosed(self.closed)
                else:
                    data, self._out = b"".join(self._out), []
                    await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                self._out = []
                raise self._lost(f"write failed: {e}") from None
            finally:
                self._flushing = False
                drained.set()

    # --- closing ---------------------------------------------------------------------------
    async def aclose(self, code: int = 1000, reason: str = "", timeout: float = 2.0) -> None:
        """Close with ``code``: send our Close, wait (bounded) for the peer's, then drop the
        TCP connection. Safe to call in any state and more than once."""
        with trio.move_on_after(timeout) as cs:
            cs.shield = True
            try:
                if not self._close_sent and self.closed is None:
                    self._close_sent = True
                    self._queue(CLOSE, wsframe.close_payload(code, reason))
                if self._out:
                    await self.flush()
                if self.closed is None:
                    if self._reading:  # the reader will see the peer's Close
                        self._closed_event = self._closed_event or trio.Event()
                        await self._closed_event.wait()
                    else:
                        while True:  # read up to the peer's Close, dropping data
                            await self.receive()
            except ConnectionClosed:
                pass
        if self.closed is None:
            self.closed = CloseReason(code, reason, local=True)
        await trio.aclose_forcefully(self.stream)


# --- the HTTP upgrade ----------------------------------------------------------------------
async def accept(
    stream: trio.abc.Stream, head: bytes, *, max_message: int, handshake_budget: bool = True
) -> WebSocket | None:
    """Answer a client's upgrade request (its head already read, maybe with frames after
    it). A request that is not a valid WebSocket upgrade gets its HTTP error and None.
    ``handshake_budget``: hold the connection to the pre-handshake frame budget until
    :meth:`WebSocket.handshake_done` (the gateway does)."""
    end = head.find(b"\r\n\r\n") + 4
    hs = H11Handshake(ConnectionType.SERVER)
    try:
        hs.receive_data(head[:end])
        request = next((ev for ev in hs.events() if isinstance(ev, Request)), None)
    except RemoteProtocolError as e:
        hint = e.event_hint if isinstance(e.event_hint, RejectConnection) else None
        await _send_quietly(stream, hs.send(hint or RejectConnection(status_code=400)))
        return None
    if request is None:
        await _send_quietly(stream, hs.send(RejectConnection(status_code=400)))
        return None
    await stream.send_all(hs.send(AcceptConnection()))
    return WebSocket(
        stream,
        client=False,
        max_message=max_message,
        leftover=head[end:],
        handshake_budget=handshake_budget,
    )


async def connect(
    stream: trio.abc.Stream, host: str, resource: str, *, max_message: int
) -> WebSocket:
    """The client side of the upgrade over an open stream. Raises :class:`HandshakeRefused`
    (a plain HTTP answer) or :class:`ConnectionClosed` (dropped mid-way)."""
    hs = H11Handshake(ConnectionType.CLIENT)
    await stream.send_all(hs.send(Request(host=host, target=resource)))
    head = b""
    while b"\r\n\r\n" not in head:
        if len(head) > MAX_HEAD:
            raise HandshakeRefused(0)
        chunk = await stream.receive_some(READ_SIZE)
        if not chunk:
            raise ConnectionClosed(CloseReason(LOST, "closed during the WebSocket upgrade"))
        head += chunk
    end = head.find(b"\r\n\r\n") + 4
    try:
        hs.receive_data(head[:end])
        events = list(hs.events())
    except RemoteProtocolError:
        raise HandshakeRefused(0) from None
    for ev in events:
        if isinstance(ev, AcceptConnection):
            return WebSocket(stream, client=True, max_message=max_message, leftover=head[end:])
        if isinstance(ev, RejectConnection):
            raise HandshakeRefused(ev.status_code)
    raise HandshakeRefused(0)


async def _send_quietly(stream: trio.abc.Stream, data: bytes) -> None:
    with trio.move_on_after(2.0):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await stream.send_all(data)
    await trio.aclose_forcefully(stream)
