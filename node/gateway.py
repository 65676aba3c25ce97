"""The WebSocket gateway: one connection = one session (DESIGN §2).

Per session: handshake under a timeout, then a reader that hands each message to the
session's sans-I/O :class:`~node.protocol.connection.Connection` (which opens, decodes and
checks it) and starts one task per request (bounded by ``max_inflight``), a writer that joins
queued pushes into one frame, and a heartbeat that closes sessions whose peer stopped
answering. The protocol is the connection's; this module moves bytes, runs calls and closes
WebSockets with the reason the connection gives.  A broken frame costs its own
session at most; other sessions never notice: node/wslimits.py bounds the frames a connection
may send (per message, and in all before its handshake) and makes every reader yield.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from time import perf_counter
from typing import Any

import trio
from nacl.signing import SigningKey
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest

from . import log, wslimits
from .config import Config
from .interfaces import CallContext, Sessions
from .metrics import Metrics
from .protocol import frames
from .protocol.connection import BadFrame, Connection, ProtocolError, Request, State
from .protocol.errors import CLOSE_CODES, ErrorCode, RpcError
from .rpc import Router

_log = log.get("gateway")
wslimits.install()  # before any connection's reader task starts
_ids = itertools.count(1)
_CLOSE_TIMEOUT = 2.0
# a joined push stays well under the clients' message cap (the node's frame cap, 1 MiB)
PUSH_JOIN_BYTES = 256 * 1024
PUSH_JOIN_ITEMS = 256


class Session:
    """A live, handshaken connection. Services push to it with :meth:`push`."""

    def __init__(self, gateway: Gateway, ws: WebSocketConnection, conn: Connection):
        cfg = gateway.config
        self.id = next(_ids)
        self.gateway = gateway
        self.ws = ws
        self.conn = conn
        self.role = conn.peer_role or "client"
        self.transcript_hash = conn.transcript_hash
        self.peer_identity = conn.peer_identity
        self.remote = _remote(ws)
        self.ip = self.remote.rsplit(":", 1)[0]  # the rate-limit key, asked for on every call
        self.opened = time.time()
        self.user_id: int | None = None
        self.device_id: int | None = None
        self.device_name = ""
        self.behind = False
        self._behind_told = False
        queue: int = cfg.get("limits", "session_queue")
        self._out_send, self._out_recv = trio.open_memory_channel[frames.Updates](queue)
        self._inflight = 0
        self._max_inflight: int = cfg.get("limits", "max_inflight")
        self._last_heard = trio.current_time()
        self.last_ping = self._last_heard
        self.pinging = False
        self._cancel = trio.CancelScope()
        self._close_reason: ErrorCode | None = None

    # --- used by services -------------------------------------------------------------
    def push(self, updates: frames.Updates) -> bool:
        """Queue encoded updates without waiting. False (and the session is marked behind,
        told once) when the queue is full: a slow reader must re-sync instead of slowing the
        sender or growing memory."""
        if self.behind:
            return False
        try:
            self._out_send.send_nowait(updates)
            return True
        except trio.WouldBlock:
            self.behind = True
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return False

    def resync(self) -> None:
        """The client is re-syncing (getState/getDifference): pushes may flow again. Its
        difference covers whatever was dropped before this moment."""
        self.behind = False
        self._behind_told = False

    def close(self, reason: ErrorCode) -> None:
        """Ask the session to close with a reason (e.g. its device was revoked)."""
        self._close_reason = reason
        self._cancel.cancel()

    # --- internals ----------------------------------------------------------------------
    async def run(self) -> None:
        try:
            with self._cancel:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer)
                    reason = await self._reader(nursery)
                    self._close_reason = self._close_reason or reason
                    nursery.cancel_scope.cancel()
        finally:
            if self._close_reason is None and self.gateway.shutting_down:
                self._close_reason = ErrorCode.NODE_SHUTDOWN
            await _close(self.ws, self._close_reason)

    async def _reader(self, nursery: trio.Nursery) -> ErrorCode | None:
        conn = self.conn
        while True:
            try:
                msg = await self.ws.get_message()
            except ConnectionClosed:
                conn.fail()
                return wslimits.violation(self.ws)
            self._last_heard = trio.current_time()
            if isinstance(msg, str):
                conn.fail()
                return ErrorCode.TEXT_FRAME
            try:
                ev = conn.receive(msg)
            except ProtocolError as e:
                return e.reason
            if type(ev) is Request:
                if self._inflight >= self._max_inflight:
                    err = RpcError(ErrorCode.TOO_MANY_REQUESTS, retry_after=1)
                    await self._send(conn.error(ev.id, err))
                    continue
                self._inflight += 1
                nursery.start_soon(self._call, ev.id, ev.method, ev.params)
            elif type(ev) is BadFrame:
                await self._send(conn.error(ev.id, ev.error))
            # Answers and pushes come only from a node peer, and the gateway asks nodes
            # nothing yet: federation's link driver takes them when it exists.

    async def _call(self, rid: int, method: str, params: dict[str, Any]) -> None:
        ctx = CallContext("ws", self)
        start = perf_counter()
        code = "OK"
        try:
            try:
                value = await self.gateway.router.dispatch(ctx, method, params)
            except RpcError as e:
                code = e.code
                await self._send(self.conn.error(rid, e))
            else:
                await self._send(self.conn.result(rid, value))
        finally:
            self._inflight -= 1
            self.gateway.metrics.observe(method, code, perf_counter() - start)

    async def _send(self, sealed: bytes) -> None:
        """Send a frame the caller has just sealed, as the argument of this call: answers go
        straight to the socket (no queue hop on the hot path), and there is no checkpoint
        between sealing and trio-websocket framing the message and joining its
        StrictFIFOLock, so frames reach the wire in seal-counter order even when many tasks
        answer at once (a lock of ours measured 7% of node CPU). Only a cancelled send can
        leave a gap, and cancellation means the session is closing."""
        try:
            await self.ws.send_message(sealed)
        except ConnectionClosed:
            self._cancel.cancel()

    async def _writer(self) -> None:
        async for first in self._out_recv:
            # join what queued meanwhile into one push: one seal, one message, one syscall
            batch, size = [first], len(first[1])
            while size < PUSH_JOIN_BYTES and len(batch) < PUSH_JOIN_ITEMS:
                try:
                    more = self._out_recv.receive_nowait()
                except trio.WouldBlock:
                    break
                batch.append(more)
                size += len(more[1])
            await self._send(self.conn.push(batch))
            if self.behind and not self._behind_told:
                self._behind_told = True
                notice = frames.encode_updates([{"type": "session.behind"}])
                await self._send(self.conn.push([notice]))

    async def ping_once(self, timeout: float) -> None:
        """One heartbeat: a WebSocket ping; the pong proves the peer alive."""
        try:
            with trio.move_on_after(timeout):
                await self.ws.ping()
                self._last_heard = trio.current_time()
        except ConnectionClosed:
            self._cancel.cancel()
        finally:
            self.pinging = False


class Gateway:
    """Accepts WebSocket connections, runs their handshake and serves each as a Session:
    requests go to ``router``, signed-in sessions are listed in ``sessions``."""

    def __init__(
        self,
        config: Config,
        identity: SigningKey,
        router: Router,
        sessions: Sessions,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.identity = identity
        self.router = router
        self.hub = sessions
        self.sessions: dict[int, Session] = {}
        self._pending = 0  # connections still in their handshake
        self.shutting_down = False

    @property
    def pending(self) -> int:
        """Connections in their handshake now."""
        return self._pending

    async def close_all(self, timeout: float) -> None:
        """Close every session with NODE_SHUTDOWN while their readers still run, so each
        close handshake completes (cancelled first, a session's close would wait out its
        timeout for a reply nobody reads: 2 s per node shutdown with live peers)."""
        self.shutting_down = True
        for s in list(self.sessions.values()):
            s.close(ErrorCode.NODE_SHUTDOWN)
        with trio.move_on_after(timeout):
            while self.sessions:
                await trio.sleep(0.005)

    async def heartbeats(self) -> None:
        """Ping every session that has been quiet for a ping interval and close the ones
        silent past the idle timeout. One sweeper for all sessions instead of a heartbeat
        task in each: at 10,000 idle connections a task per session is 3 KiB apiece."""
        cfg = self.config
        interval = min(float(cfg.get("timeouts", "ping_interval")), cfg.get("timeouts", "idle") / 2)
        idle: float = cfg.get("timeouts", "idle")
        async with trio.open_nursery() as pings:
            while True:
                await trio.sleep(interval / 4)
                now = trio.current_time()
                for s in list(self.sessions.values()):
                    if now - s._last_heard > idle:
                        s.close(ErrorCode.IDLE_TIMEOUT)
                    elif not s.pinging and now - max(s.last_ping, s._last_heard) >= interval:
                        s.pinging, s.last_ping = True, now
                        pings.start_soon(s.ping_once, idle / 2)

    async def handle(self, request: WebSocketRequest) -> None:
        cfg = self.config
        try:
            ws = await request.accept()
        except ConnectionClosed:
            return
        if self.shutting_down:
            await _close(ws, ErrorCode.NODE_SHUTDOWN)
            return
        if len(self.sessions) + self._pending >= cfg.get("limits", "max_sessions"):
            await _close(ws, ErrorCode.TOO_MANY_SESSIONS)
            return
        self._pending += 1
        try:
            done = await self._handshake(ws)
        finally:
            self._pending -= 1
        if done is None:
            return
        session = Session(self, ws, done)
        self.sessions[session.id] = session
        log.event(
            _log,
            "session.open",
            logging.DEBUG,
            session=session.id,
            remote=session.remote,
            role=session.role,
        )
        try:
            await session.run()
        finally:
            del self.sessions[session.id]
            self.hub.detach(session)
            log.event(
                _log,
                "session.close",
                logging.DEBUG,
                session=session.id,
                reason=session._close_reason or "peer",
            )

    async def _handshake(self, ws: WebSocketConnection) -> Connection | None:
        """Hello, welcome and, from a node peer, its proof (Connection's AWAIT_PROOF)."""
        timeout: float = self.config.get("timeouts", "handshake")
        reason = ErrorCode.HANDSHAKE_TIMEOUT
        conn = Connection.server(self.identity)
        with trio.move_on_after(timeout):
            try:
                await ws.send_message(conn.receive_hello(await _bytes(ws)))
                if conn.state is State.AWAIT_PROOF:  # a node peer proves its key first
                    conn.receive(await _bytes(ws))
                wslimits.handshake_done(ws)
                return conn
            except ConnectionClosed:
                flood = wslimits.violation(ws)
                if flood is None:
                    return None
                reason = flood
            except ProtocolError as e:
                reason = e.reason
        conn.fail()
        log.event(_log, "handshake.failed", logging.DEBUG, remote=_remote(ws), reason=reason)
        await _close(ws, reason)
        return None


async def _bytes(ws: WebSocketConnection) -> bytes:
    """The next message; a text message is the protocol error TEXT_FRAME."""
    msg = await ws.get_message()
    if not isinstance(msg, bytes):
        raise ProtocolError(ErrorCode.TEXT_FRAME, "text message")
    return msg


async def _close(ws: WebSocketConnection, reason: ErrorCode | None) -> None:
    code = CLOSE_CODES.get(reason, 4000) if reason else 1000
    with trio.move_on_after(_CLOSE_TIMEOUT) as cs:
        cs.shield = True
        # the peer may already be gone; closing is best effort
        with contextlib.suppress(Exception):
            await ws.aclose(code, str(reason) if reason else "")
    # closed by the frame guard: its Close frame went out, the reader stopped; drop the TCP
    await wslimits.finish(ws, _CLOSE_TIMEOUT)


def _remote(ws: WebSocketConnection) -> str:
    try:
        r = ws.remote
        return r if isinstance(r, str) else f"{r.address}:{r.port}"
    except Exception:
        return "?"
