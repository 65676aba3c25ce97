"""A small HTTP/1.1 POST client for push endpoints: h11 on trio streams, keep-alive per origin.

Why not httpx here (the node uses it for webhook code delivery): measured on the 2-core
box, an httpx POST under trio cost ~2 ms of event-loop CPU (most of it httpcore's pool
bookkeeping), this one ~0.2 ms. Push load runs in the node's own event loop beside every
send, so that difference is what a busy node's users would feel (scripts/bench_push.py).
h11 (httpx's own HTTP/1.1 parser, a dependency through it) does the protocol; this module
only opens connections (TCP, TLS with the system's CA store and hostname checks), keeps
idle ones per origin and reads the status. Redirects are never followed. Response bodies
are read (at most BODY_MAX, to reuse the connection) and discarded.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11
import trio

BODY_MAX = 64 * 1024  # response bytes read before the connection is given up instead
IDLE_MAX = 30.0  # seconds an idle keep-alive connection is trusted to still be open
USER_AGENT = "fedgram-push/1"

Origin = tuple[str, str, int]  # scheme, host, port


class HttpError(Exception):
    """The endpoint could not be reached or answered something that is not HTTP/1.x."""


@dataclass
class _Conn:
    stream: trio.abc.Stream
    h: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))
    used: float = 0.0  # trio clock of the last request

    async def post(self, target: str, headers: list[tuple[str, str]], body: bytes) -> int:
        """One request on this connection: the response status (raises HttpError)."""
        h = self.h
        out = h.send(h11.Request(method="POST", target=target, headers=headers))
        out = (out or b"") + (h.send(h11.Data(data=body)) or b"")
        out += h.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(out)
        status: int | None = None
        read = 0
        while True:
            ev = h.next_event()
            if ev is h11.NEED_DATA:
                chunk = await self.stream.receive_some(65536)
                h.receive_data(bytes(chunk))  # b"": the peer closed
                continue
            if isinstance(ev, h11.Response):
                status = ev.status_code
            elif isinstance(ev, h11.Data):
                read += len(ev.data)
                if read > BODY_MAX and status is not None:
                    raise _Done(status)
            elif isinstance(ev, h11.EndOfMessage | h11.ConnectionClosed):
                break
            # InformationalResponse (100 Continue...): keep reading
        if status is None:
            raise HttpError("the connection closed before a response")
        return status

    def reusable(self) -> bool:
        if self.h.our_state is h11.DONE and self.h.their_state is h11.DONE:
            self.h.start_next_cycle()
            return True
        return False


class _Done(Exception):
    """A response whose body is too long to drain: its status, and the connection goes."""

    def __init__(self, status: int) -> None:
        self.status = status


class HttpPool:
    """Keep-alive connections per origin, at most ``per_origin`` idle ones each."""

    def __init__(self, per_origin: int = 8) -> None:
        self.per_origin = per_origin
        self._idle: dict[Origin, list[_Conn]] = {}
        self._ssl: ssl.SSLContext | None = None

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:  # ~0.1 s to load the CA store: once, and only for https
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """POST ``body``: the response status. Raises HttpError or OSError when the endpoint
        cannot be reached or misbehaves; the caller bounds the time (trio.fail_after)."""
        parts = urlsplit(url)
        scheme, host = parts.scheme, parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        origin = (scheme, host, port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        netloc = host if ":" not in host else f"[{host}]"
        if parts.port is not None:
            netloc += f":{parts.port}"
        hdrs = [
            ("host", netloc),
            ("user-agent", USER_AGENT),
            ("content-length", str(len(body))),
            *headers.items(),
        ]
        conn = self._take(origin)
        if conn is not None:
            try:
                return await self._use(origin, conn, target, hdrs, body)
            except (HttpError, OSError, trio.BrokenResourceError):
                pass  # a kept connection the server had closed: once more on a new one
        conn = await self._connect(origin)
        return await self._use(origin, conn, target, hdrs, body)

    async def _use(
        self, origin: Origin, conn: _Conn, target: str, hdrs: list[tuple[str, str]], body: bytes
    ) -> int:
        try:
            status = await conn.post(target, hdrs, body)
        except _Done as done:
            await trio.aclose_forcefully(conn.stream)
            return done.status
        except BaseException as e:  # timeouts and cancellation too: never reuse it
            await trio.aclose_forcefully(conn.stream)
            if isinstance(e, h11.ProtocolError | trio.BrokenResourceError):
                raise HttpError(f"{type(e).__name__}: {e}") from None
            raise
        if conn.reusable() and len(self._idle.setdefault(origin, [])) < self.per_origin:
            conn.used = trio.current_time()
            self._idle[origin].append(conn)
        else:
            await trio.aclose_forcefully(conn.stream)
        return status

    def _take(self, origin: Origin) -> _Conn | None:
        idle = self._idle.get(origin)
        now = trio.current_time()
        while idle:
            conn = idle.pop()
            if now - conn.used < IDLE_MAX:
                return conn
            _close_soon(conn)
        return None

    async def _connect(self, origin: Origin) -> _Conn:
        scheme, host, port = origin
        tcp = await trio.open_tcp_stream(host, port)
        if scheme != "https":
            return _Conn(tcp)
        tls = trio.SSLStream(tcp, self._context(), server_hostname=host, https_compatible=True)
        try:
            await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise
        return _Conn(tls)

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                await trio.aclose_forcefully(conn.stream)
        self._idle.clear()


def _close_soon(conn: _Conn) -> None:
    """Drop a stale idle connection without waiting (its socket closes at once)."""
    stream = conn.stream
    sock_stream = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if isinstance(sock_stream, trio.SocketStream):
        sock_stream.socket.close()
