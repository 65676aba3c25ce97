"""Frame limits and fair reading for trio-websocket connections (issue 10, finding 6).

Why this exists: trio-websocket's reader task (``WebSocketConnection._reader_task``) reads up
to ``receive_buffer_size`` bytes (64 KiB on the node), then hands every event wsproto parses
from them to a handler *without yielding to the scheduler*, unless a handler happens to
await something that yields. The handler of a non-final message fragment only appends the
fragment to a list, and the pong handler does nothing that yields, so one 64 KiB read of
one-byte continuation frames (7 bytes each on the wire) is ~9,400 frames parsed in pure
Python in ONE scheduler step: 0.1-0.5 s on this machine (measured with a trio Instrument:
the longest step of ``_reader_task`` was 235 ms; the library's default read is 4 KiB, the
node's 64 KiB), during which no other session runs. A message may also have any number of
fragments (only its total size is capped). The cost is linear, not quadratic (wsproto's
buffer drops consumed bytes from the front in amortized O(1), trio-websocket joins the parts
once): ~20-45 us per frame, 100,000 frames in 2-5 s, all of it in ~10 steps.

This module installs a guard in the three handlers that can be flooded (data fragments,
pings, pongs) of every :class:`trio_websocket.WebSocketConnection`:

* a checkpoint every :data:`CHECKPOINT_EVERY` events, so a connection's reader cannot hold
  the event loop for more than a few frames' worth of parsing;
* at most :data:`MAX_FRAGMENTS` frames per message (a zero-length frame counts too);
* before the handshake completes (server side, until :func:`handshake_done`): at most
  :data:`HANDSHAKE_MAX_FRAGMENTS` frames per message, :data:`HANDSHAKE_MAX_FRAMES` frames
  of any kind and :data:`HANDSHAKE_MAX_BYTES` payload bytes in all.

A connection over a limit is sent a Close frame (1008, ``FRAME_FLOOD``), its reader stops
parsing at once (the rest of what it sent is never looked at), ``get_message`` raises
``ConnectionClosed``, and :func:`finish` closes the TCP stream once the Close frame is out.

trio-websocket has no hook for any of this, so the guard wraps private methods of its
connection class; the version is pinned (<0.13) and :func:`_check_library` refuses to
start against a trio-websocket whose internals moved.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio_websocket
from trio_websocket import CloseReason, ConnectionClosed, WebSocketConnection
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from .protocol.errors import CLOSE_CODES, ErrorCode

CHECKPOINT_EVERY = 8  # events a reader may handle before it must let others run
MAX_FRAGMENTS = 1024  # frames per message once the handshake is done (1 MiB in 1 KiB frames)
HANDSHAKE_MAX_FRAGMENTS = 8  # frames per message before it (a hello is one ~100 byte frame)
HANDSHAKE_MAX_FRAMES = 64  # frames of any kind (data, ping, pong) before it
HANDSHAKE_MAX_BYTES = 16 * 1024  # payload bytes before it

_ATTR = "_fedgram_guard"
_HANDLERS = ("_handle_message_event", "_handle_ping_event", "_handle_pong_event")
_STATE = ("_message_parts", "_message_size", "_close_reason", "_recv_channel", "_send")


class Guard:
    """Counters of one connection. Server connections start in the handshake phase."""

    __slots__ = (
        "bytes",
        "close_sent",
        "events",
        "fragments",
        "frames",
        "in_frame",
        "phase",
        "violation",
    )

    def __init__(self, handshake: bool) -> None:
        self.phase = "handshake" if handshake else "session"
        self.events = 0  # handled since the last checkpoint
        self.fragments = 0  # frames of the message being assembled
        self.in_frame = False  # the last data event left a frame unfinished
        self.frames = 0  # frames of any kind (counted for the handshake budget)
        self.bytes = 0  # payload bytes during the handshake phase
        self.violation: ErrorCode | None = None
        self.close_sent = trio.Event()

    def max_fragments(self) -> int:
        return HANDSHAKE_MAX_FRAGMENTS if self.phase == "handshake" else MAX_FRAGMENTS

    def over_budget(self) -> bool:
        return self.phase == "handshake" and (
            self.frames > HANDSHAKE_MAX_FRAMES or self.bytes > HANDSHAKE_MAX_BYTES
        )


def guard_of(ws: WebSocketConnection) -> Guard:
    g: Guard | None = ws.__dict__.get(_ATTR)
    if g is None:
        g = Guard(handshake=bool(ws.is_server))
        setattr(ws, _ATTR, g)
    return g


def handshake_done(ws: WebSocketConnection) -> None:
    """The session handshake succeeded: lift the pre-handshake budget."""
    guard_of(ws).phase = "session"


def violation(ws: WebSocketConnection) -> ErrorCode | None:
    """Why the guard closed this connection, if it did."""
    g: Guard | None = ws.__dict__.get(_ATTR)
    return g.violation if g is not None else None


async def finish(ws: WebSocketConnection, timeout: float) -> None:
    """After a violation: wait (bounded) until the Close frame is out, then close the TCP
    stream. The reader stopped reading, so no close handshake can complete; without this
    the socket would stay open until garbage collection."""
    g: Guard | None = ws.__dict__.get(_ATTR)
    if g is None or g.violation is None:
        return
    with trio.move_on_after(timeout) as cs:
        cs.shield = True
        await g.close_sent.wait()
    with trio.CancelScope(shield=True):
        await ws._close_stream()


async def _tick(g: Guard) -> None:
    g.events += 1
    if g.events >= CHECKPOINT_EVERY:
        g.events = 0
        await trio.lowlevel.checkpoint()


async def _violate(ws: Any, g: Guard, reason: ErrorCode) -> None:
    """Close like trio-websocket does for an oversized message (1009), then stop the reader
    by raising ConnectionClosed, which its loop catches: nothing more is parsed."""
    g.violation = reason
    code = CLOSE_CODES[reason]
    ws._message_parts = []
    ws._message_size = 0
    if ws._close_reason is None:
        ws._close_reason = CloseReason(code, str(reason))
        await ws._recv_channel.aclose()  # wakes get_message() now
        with contextlib.suppress(ConnectionClosed):  # the peer is gone already
            await ws._send(CloseConnection(code=code, reason=str(reason)))
    g.close_sent.set()
    raise ConnectionClosed(ws._close_reason)


Handler = Callable[[Any, Any], Awaitable[None]]


def _guard_data(original: Handler) -> Handler:
    async def handle(ws: Any, event: BytesMessage | TextMessage) -> None:
        g = guard_of(ws)
        if not g.in_frame:  # this event starts a frame (a frame may arrive in pieces)
            g.fragments += 1
            g.frames += 1
        g.in_frame = not event.frame_finished
        if g.phase == "handshake":
            g.bytes += len(event.data)
        if g.fragments > g.max_fragments() or g.over_budget():
            await _violate(ws, g, ErrorCode.FRAME_FLOOD)
        if event.message_finished:
            g.fragments = 0
        await _tick(g)
        await original(ws, event)

    return handle


def _guard_control(original: Handler) -> Handler:
    async def handle(ws: Any, event: Ping | Pong) -> None:
        g = guard_of(ws)
        if g.phase == "handshake":
            g.frames += 1
            g.bytes += len(event.payload)
        if g.over_budget():
            await _violate(ws, g, ErrorCode.FRAME_FLOOD)
        await _tick(g)
        await original(ws, event)

    return handle


def _check_library() -> None:
    probe = WebSocketConnection.__init__.__code__.co_names
    missing = [h for h in _HANDLERS if not hasattr(WebSocketConnection, h)]
    missing += [a for a in _STATE if a not in probe and not hasattr(WebSocketConnection, a)]
    if missing or not hasattr(WebSocketConnection, "_close_stream"):
        raise RuntimeError(
            f"trio-websocket {trio_websocket.__version__} changed internals that "
            f"node/wslimits.py guards ({', '.join(missing)}); update the guard"
        )


def install() -> None:
    """Wrap the flood-prone handlers of WebSocketConnection (idempotent). Every reader task
    looks its handlers up when it starts, so this must run before any connection opens;
    node.gateway calls it at import."""
    if getattr(WebSocketConnection, _ATTR + "_installed", False):
        return
    _check_library()
    cls: Any = WebSocketConnection
    cls._handle_message_event = _guard_data(cls._handle_message_event)
    cls._handle_ping_event = _guard_control(cls._handle_ping_event)
    cls._handle_pong_event = _guard_control(cls._handle_pong_event)
    setattr(cls, _ATTR + "_installed", True)
