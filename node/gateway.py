"""The WebSocket gateway: one connection = one session (DESIGN §2).

Per session ONE task: it reads the socket (node/websocket.py), hands each message to the
session's sans-I/O :class:`~node.protocol.connection.Connection` (which opens, decodes and
checks it) and starts one task per request (bounded by ``max_inflight``). Answers are sealed
and written by the request's task at once, without a queue or a checkpoint. Pushes are
queued on the session and written by the gateway's one flusher task: after each burst of
publications it seals ONE push frame per session joining everything queued for it and writes
it with one system call (issue 17: a task wake-up and a lock per push per session cost more
than the push). A session whose socket is full keeps its pushes queued (bounded: past
``session_queue`` it is marked behind and re-syncs) while a task of its own waits for the
socket. One heartbeat sweeper pings quiet sessions and closes silent ones.

The protocol is the connection's; this module moves bytes, runs calls and closes WebSockets
with the reason the connection gives. A broken frame costs its own session at most; other
sessions never notice (node/protocol/wsframe.py bounds what a connection may send, and the
reader lets others run every few frames).
"""

from __future__ import annotations

import itertools
import logging
import time
from time import perf_counter
from typing import Any

import trio
from nacl.signing import SigningKey

from . import log, websocket
from .config import Config
from .interfaces import CallContext, Sessions
from .metrics import Metrics
from .protocol import frames, wsframe
from .protocol.connection import BadFrame, Connection, ProtocolError, Request, State
from .protocol.errors import CLOSE_CODES, ErrorCode, RpcError
from .rpc import Router
from .websocket import ConnectionClosed, WebSocket

_log = log.get("gateway")
_ids = itertools.count(1)
_CLOSE_TIMEOUT = 2.0
# a joined push stays well under the clients' message cap (the node's frame cap, 1 MiB)
PUSH_JOIN_BYTES = 256 * 1024
PUSH_JOIN_ITEMS = 256
# sessions a push round writes between checkpoints (~1 ms of seals and writes)
FLUSH_SLICE = 64
# why the WebSocket layer closed a connection, in the node's close reasons
_LOCAL_CLOSES = {wsframe.POLICY: ErrorCode.FRAME_FLOOD, wsframe.TOO_BIG: ErrorCode.FRAME_TOO_BIG}


class Session:
    """A live, handshaken connection. Services push to it with :meth:`push`."""

    __slots__ = (
        "_behind_told",
        "_cancel",
        "_close_reason",
        "_draining",
        "_flush_queued",
        "_inflight",
        "_max_inflight",
        "_nursery",
        "_pending",
        "_queue_max",
        "behind",
        "conn",
        "device_id",
        "device_name",
        "gateway",
        "id",
        "ip",
        "last_ping",
        "opened",
        "peer_identity",
        "remote",
        "role",
        "transcript_hash",
        "user_id",
        "ws",
    )

    def __init__(self, gateway: Gateway, ws: WebSocket, conn: Connection, remote: str):
        cfg = gateway.config
        self.id = next(_ids)
        self.gateway = gateway
        self.ws = ws
        self.conn = conn
        self.role = conn.peer_role or "client"
        self.transcript_hash = conn.transcript_hash
        self.peer_identity = conn.peer_identity
        self.remote = remote
        self.ip = remote.rsplit(":", 1)[0]  # the rate-limit key, asked for on every call
        self.opened = time.time()
        self.user_id: int | None = None
        self.device_id: int | None = None
        self.device_name = ""
        self.behind = False
        self._behind_told = False
        self._pending: list[frames.Updates] = []  # pushes for the flusher's next round
        self._queue_max: int = cfg.get("limits", "session_queue")
        self._flush_queued = False
        self._draining = False  # a task waits for the socket to take what is queued
        self._nursery: trio.Nursery | None = None
        self._inflight = 0
        self._max_inflight: int = cfg.get("limits", "max_inflight")
        self.last_ping = trio.current_time()
        self._cancel = trio.CancelScope()
        self._close_reason: ErrorCode | None = None

    # --- used by services -------------------------------------------------------------
    def push(self, updates: frames.Updates) -> bool:
        """Queue encoded updates without waiting. False (and the session is marked behind,
        told once) when the queue is full: a slow reader must re-sync instead of slowing the
        sender or growing memory."""
        if self.behind:
            return False
        pending = self._pending
        if len(pending) >= self._queue_max:
            self.behind = True
            self._schedule()  # the notice
            return False
        pending.append(updates)
        self._schedule()
        return True

    def resync(self) -> None:
        """The client is re-syncing (getState/getDifference): pushes may flow again. Its
        difference covers whatever was dropped before this moment."""
        self.behind = False
        self._behind_told = False

    def close(self, reason: ErrorCode) -> None:
        """Ask the session to close with a reason (e.g. its device was revoked)."""
        self._close_reason = reason
        self._cancel.cancel()

    @property
    def last_heard(self) -> float:
        return self.ws.last_heard

    # --- pushes -------------------------------------------------------------------------
    def _schedule(self) -> None:
        if not self._flush_queued:
            self._flush_queued = True
            self.gateway.flush_soon(self)

    def flush(self) -> None:
        """Seal and write what is queued: one frame per PUSH_JOIN_BYTES (the flusher's
        round, synchronous). While the socket is full, pushes stay queued until it drains."""
        self._flush_queued = False
        if self._draining or self.ws.closed is not None:
            return
        pending, self._pending = self._pending, []
        i = 0
        while i < len(pending):
            batch, size = [pending[i]], len(pending[i].blob)
            i += 1
            while i < len(pending) and size < PUSH_JOIN_BYTES and len(batch) < PUSH_JOIN_ITEMS:
                batch.append(pending[i])
                size += len(pending[i].blob)
                i += 1
            self._write(self.conn.push(batch))
        if self.behind and not self._behind_told:
            self._behind_told = True
            notice = frames.encode_updates([{"type": "session.behind"}])
            self._write(self.conn.push([notice]))

    def _write(self, sealed: bytes) -> None:
        """Hand a frame sealed just now to the socket (no checkpoint since its sealing, so
        frames leave in seal-counter order); if the socket cannot take it all, a task waits
        for it."""
        try:
            if self.ws.send_nowait(sealed) or self._draining:
                return
        except ConnectionClosed:
            self._cancel.cancel()
            return
        if self._nursery is not None:
            self._draining = True
            self._nursery.start_soon(self._drain)

    async def _drain(self) -> None:
        try:
            await self.ws.flush()
        except ConnectionClosed:
            self._cancel.cancel()
            return
        finally:
            self._draining = False
        if self._pending:
            self._schedule()

    # --- internals ----------------------------------------------------------------------
    async def run(self) -> None:
        try:
            with self._cancel:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    reason = await self._reader(nursery)
                    self._close_reason = self._close_reason or reason
                    nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            if self._close_reason is None and self.gateway.shutting_down:
                self._close_reason = ErrorCode.NODE_SHUTDOWN
            await _close(self.ws, self._close_reason)

    async def _reader(self, nursery: trio.Nursery) -> ErrorCode | None:
        conn = self.conn
        while True:
            try:
                msg = await self.ws.receive()
            except ConnectionClosed as e:
                conn.fail()
                return _local_reason(e)
            if type(msg) is not bytes:
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
            # nothing: federation's links are sessions of their own (node/client).

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
        """Send a frame the caller has just sealed, as the argument of this call: written
        at once, with no checkpoint between sealing and queueing, so frames reach the wire
        in seal-counter order however many tasks answer at once. Waits only while the
        socket is full (backpressure on the caller); a cancelled wait means the session is
        closing."""
        try:
            if not self.ws.send_nowait(sealed):
                await self.ws.flush()
        except ConnectionClosed:
            self._cancel.cancel()

    def ping(self) -> None:
        """One heartbeat: a WebSocket ping; any frame back (the pong) proves the peer alive."""
        self.last_ping = trio.current_time()
        self.ws.ping_nowait()
        if self.ws.pending_bytes and not self._draining and self._nursery is not None:
            self._draining = True
            self._nursery.start_soon(self._drain)


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
        self._to_flush: list[Session] = []
        self._flush_wake = trio.Event()

    @property
    def pending(self) -> int:
        """Connections in their handshake now."""
        return self._pending

    # --- pushes -------------------------------------------------------------------------
    def flush_soon(self, session: Session) -> None:
        """A session has pushes queued: write them in the flusher's next round."""
        self._to_flush.append(session)
        self._flush_wake.set()

    async def flusher(self) -> None:
        """Writes queued pushes, one round per wake-up: everything the publications of one
        scheduling burst (a group commit's changes) queued leaves as one frame per session,
        and no session's task wakes for it."""
        while True:
            await self._flush_wake.wait()
            self._flush_wake = trio.Event()
            sessions, self._to_flush = self._to_flush, []
            for k, s in enumerate(sessions, 1):
                s.flush()
                if not k % FLUSH_SLICE:
                    # a round to a big group takes ms of writes: answers and other sessions'
                    # requests go on meanwhile (sessions not reached yet keep joining what
                    # queues for them; flushed ones are scheduled for the next round)
                    await trio.lowlevel.checkpoint()

    async def close_all(self, timeout: float) -> None:
        """Close every session with NODE_SHUTDOWN and wait (bounded) for their close
        handshakes."""
        self.shutting_down = True
        for s in list(self.sessions.values()):
            s.close(ErrorCode.NODE_SHUTDOWN)
        with trio.move_on_after(timeout):
            while self.sessions:
                await trio.sleep(0.005)

    async def heartbeats(self) -> None:
        """Ping every session that has been quiet for a ping interval and close the ones
        silent past the idle timeout. One sweeper for all sessions, and a ping is a frame
        written, not a task: anything the peer sends (its pong too) counts as heard."""
        cfg = self.config
        interval = min(float(cfg.get("timeouts", "ping_interval")), cfg.get("timeouts", "idle") / 2)
        idle: float = cfg.get("timeouts", "idle")
        while True:
            await trio.sleep(interval / 4)
            now = trio.current_time()
            for s in list(self.sessions.values()):
                heard = s.last_heard
                if now - heard > idle:
                    s.close(ErrorCode.IDLE_TIMEOUT)
                elif now - max(s.last_ping, heard) >= interval:
                    s.ping()

    # --- connections --------------------------------------------------------------------
    async def handle(self, stream: trio.abc.Stream, head: bytes, remote: str) -> None:
        """A connection whose HTTP head asked for a WebSocket (node/httpd.py read it)."""
        cfg = self.config
        try:
            cap: int = cfg.get("limits", "frame_max_bytes")
            ws = await websocket.accept(stream, head, max_message=cap)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await trio.aclose_forcefully(stream)
            return
        if ws is None:
            return
        if self.shutting_down:
            await _close(ws, ErrorCode.NODE_SHUTDOWN)
            return
        if len(self.sessions) + self._pending >= cfg.get("limits", "max_sessions"):
            await _close(ws, ErrorCode.TOO_MANY_SESSIONS)
            return
        self._pending += 1
        try:
            done = await self._handshake(ws, remote)
        finally:
            self._pending -= 1
        if done is None:
            return
        session = Session(self, ws, done, remote)
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

    async def _handshake(self, ws: WebSocket, remote: str) -> Connection | None:
        """Hello, welcome and, from a node peer, its proof (Connection's AWAIT_PROOF)."""
        timeout: float = self.config.get("timeouts", "handshake")
        reason = ErrorCode.HANDSHAKE_TIMEOUT
        conn = Connection.server(self.identity)
        with trio.move_on_after(timeout):
            try:
                await ws.send(conn.receive_hello(await _bytes(ws)))
                if conn.state is State.AWAIT_PROOF:  # a node peer proves its key first
                    conn.receive(await _bytes(ws))
                ws.handshake_done()
                return conn
            except ConnectionClosed as e:
                local = _local_reason(e)
                if local is None:
                    return None
                reason = local
            except ProtocolError as e:
                reason = e.reason
        conn.fail()
        log.event(_log, "handshake.failed", logging.DEBUG, remote=remote, reason=reason)
        await _close(ws, reason)
        return None


def _local_reason(e: ConnectionClosed) -> ErrorCode | None:
    """Why the WebSocket layer itself closed (a frame over a limit); None when the peer
    closed or went away."""
    if not e.reason.local:
        return None
    return _LOCAL_CLOSES.get(e.reason.code, ErrorCode.BAD_FRAME)


async def _bytes(ws: WebSocket) -> bytes:
    """The next message; a text message is the protocol error TEXT_FRAME."""
    msg = await ws.receive()
    if not isinstance(msg, bytes):
        raise ProtocolError(ErrorCode.TEXT_FRAME, "text message")
    return msg


async def _close(ws: WebSocket, reason: ErrorCode | None) -> None:
    code = CLOSE_CODES.get(reason, 4000) if reason else 1000
    await ws.aclose(code, str(reason) if reason else "", timeout=_CLOSE_TIMEOUT)
