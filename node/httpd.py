"""The gateway port's front door: TLS (optional), then one look at the HTTP request head.

Every connection to the gateway starts with an HTTP/1.1 request. A WebSocket upgrade goes on
to the gateway with the head read here (node/websocket.py answers it); ``GET /health`` and
``GET /metrics`` are answered here in plain HTTP and closed; anything else gets 404 (or 400
for what is not HTTP, 405 for another method) and is closed. So an operator scrapes the node
on the port it already opened, and a load balancer can ask it whether it is up.

Why the same port is safe: the head is read with a size cap (:data:`MAX_HEAD`) and under the
handshake timeout, the budget a connection has to finish its upgrade (a slowloris is dropped
when it runs out), and it is read once, here.
``/metrics`` answers only addresses in ``[metrics] allow`` (loopback by default): request
counts say how busy a node is, which the world need not know; ``/health`` says no more
than ``system.info`` says to anyone.

With TLS (``[node] tls_cert``), the stream is a ``trio.SSLStream`` whose handshake runs
inside the same timeout; a client that speaks plain HTTP or garbage to it fails the TLS
handshake and is closed, costing nobody else anything.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from . import log
from .metrics import CONTENT_TYPE, Metrics

_log = log.get("httpd")
MAX_HEAD = 8192  # bytes of request head read before giving up (431)
_CLOSE_TIMEOUT = 2.0
_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
UpgradeHandler = Callable[[trio.abc.Stream, bytes, str], Awaitable[None]]
"""Takes a connection whose head (read here, maybe with bytes after it) asks for a
WebSocket, and the peer's address:port."""


@dataclass(frozen=True)
class Head:
    method: str
    path: str
    upgrade: bool  # asks for a WebSocket


def parse_head(head: bytes) -> Head | None:
    """The request line and whether it asks for a WebSocket; None if it is not HTTP/1.x."""
    try:
        text = head.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    except ValueError:
        return None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0].isalpha():
        return None
    upgrade = False
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            return None
        if name.strip().lower() == "upgrade" and "websocket" in value.lower():
            upgrade = True
    return Head(parts[0], parts[1].split("?", 1)[0], upgrade)


class Front:
    """Serves each accepted connection: TLS, the request head, then WebSocket or HTTP."""

    def __init__(
        self,
        websocket: UpgradeHandler,
        *,
        timeout: Callable[[], float],
        metrics: Metrics,
        health: Callable[[], tuple[int, dict[str, Any]]],
        scrape: Callable[[], Awaitable[bytes]],
        enabled: Callable[[], bool],
        allow: Callable[[], Sequence[Network]],
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.websocket = websocket
        self.timeout = timeout
        self.metrics = metrics
        self.health = health
        self.scrape = scrape
        self.enabled = enabled
        self.allow = allow
        self.ssl_context = ssl_context

    async def handle(self, sock: trio.SocketStream) -> None:
        peer = _peer(sock)
        stream: trio.abc.Stream = sock
        if self.ssl_context is not None:
            stream = trio.SSLStream(sock, self.ssl_context, server_side=True)
        head = b""
        with trio.move_on_after(self.timeout()):
            try:
                while b"\r\n\r\n" not in head and len(head) < MAX_HEAD:
                    chunk = await stream.receive_some(MAX_HEAD - len(head))
                    if not chunk:
                        break
                    head += chunk
                    if head[:1] == b"\x16":  # a TLS ClientHello on a plain port: no wait
                        break
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                # a failed TLS handshake (plain HTTP or garbage on a wss:// port), a reset
                log.event(_log, "connection.refused", logging.DEBUG, remote=peer, why=_why(e))
                await trio.aclose_forcefully(stream)
                return
        if b"\r\n\r\n" not in head:
            if len(head) >= MAX_HEAD:
                await self._answer(stream, "other", 431, b"request head too large\n")
            else:  # timed out, or closed before a whole head: nothing worth an answer
                await trio.aclose_forcefully(stream)
            return
        req = parse_head(head)
        if req is None:
            await self._answer(stream, "other", 400, b"not an HTTP/1.1 request\n")
        elif req.upgrade:
            await self.websocket(stream, head, peer)
        elif req.path not in ("/health", "/metrics") or not self.enabled():
            await self._answer(stream, "other", 404, b"not found\n")
        elif req.method not in ("GET", "HEAD"):
            await self._answer(stream, req.path, 405, b"use GET\n", [("Allow", "GET, HEAD")])
        elif req.path == "/health":
            status, body = self.health()
            data = (json.dumps(body) + "\n").encode()
            await self._answer(
                stream,
                req.path,
                status,
                data,
                ctype="application/json",
                head_only=req.method == "HEAD",
            )
        elif not _allowed(peer, self.allow()):
            await self._answer(
                stream,
                req.path,
                403,
                b"not allowed from this address\n",
                head_only=req.method == "HEAD",
            )
        else:
            try:
                data = await self.scrape()
            except Exception:  # a scrape that fails costs its request, never the gateway
                _log.exception("metrics scrape failed")
                await self._answer(stream, req.path, 500, b"scrape failed\n")
                return
            await self._answer(
                stream, req.path, 200, data, ctype=CONTENT_TYPE, head_only=req.method == "HEAD"
            )

    async def _answer(
        self,
        stream: trio.abc.Stream,
        path: str,
        status: int,
        body: bytes,
        extra: list[tuple[str, str]] | None = None,
        *,
        ctype: str = "text/plain; charset=utf-8",
        head_only: bool = False,
    ) -> None:
        """Send one HTTP response and close the connection."""
        self.metrics.http_request(path, status)
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
            f"Content-Type: {ctype}",
            f"Content-Length: {len(body)}",
            "Cache-Control: no-store",
            "Connection: close",
            *(f"{k}: {v}" for k, v in extra or []),
        ]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else body)
        with trio.move_on_after(_CLOSE_TIMEOUT):
            try:
                await stream.send_all(data)
                await stream.aclose()
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        await trio.aclose_forcefully(stream)


def _peer(sock: trio.SocketStream) -> str:
    try:
        addr, port, *_ = sock.socket.getpeername()
    except (OSError, ValueError):
        return "?"
    return f"{addr}:{port}"


def _allowed(peer: str, nets: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(peer.rsplit(":", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in nets)


def _why(e: BaseException) -> str:
    cause = e.__cause__ or e.__context__
    return str(cause or e)[:200] or type(e).__name__
