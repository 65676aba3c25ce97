"""Errors the SDK raises for problems on this side of the wire.

The node's refusals are :class:`RpcError` with a stable code. What goes wrong locally (a
mistyped URL, a damaged profile file, a download folder that does not exist) is a
:class:`ClientError`: ``str()`` is one line saying what is wrong and what to do, fit to show
a person as is.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

import trio

from ..websocket import HandshakeRefused


class ClientError(Exception):
    """A local problem (not the node's answer); str() is one line for the user."""


class UrlInvalid(ClientError, ValueError):
    """A node URL that cannot be used: wrong scheme, no host, bad port."""


class ProfileError(ClientError):
    """The profile folder cannot be read or written, or one of its files is damaged."""


class FileError(ClientError):
    """A local file cannot be read or written (an upload's source, a download's target)."""


class ChecksumError(ClientError, ValueError):
    """A downloaded file's SHA-256 differs from the node's; the partial file was removed."""


def _chain(e: BaseException) -> Iterator[BaseException]:
    """``e``, the exceptions it was raised from, and the members of exception groups."""
    seen: set[int] = set()
    todo = [e]
    while todo:
        cur = todo.pop(0)
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        if isinstance(cur, BaseExceptionGroup):
            todo.extend(cur.exceptions)
        nxt = cur.__cause__ or cur.__context__
        if nxt is not None:
            todo.append(nxt)


def why_unreachable(url: str, e: BaseException, timeout: float) -> str:
    """Why a WebSocket connection to ``url`` failed, and what to check, in a few words."""
    chain = list(_chain(e))
    tls = url.lower().startswith("wss:")
    for x in chain:
        if isinstance(x, HandshakeRefused):
            return (
                f"the server answered HTTP {x.status_code} instead of opening a WebSocket: "
                "not a Fedgram node? check the host and port"
            )
    for x in chain:
        if isinstance(x, socket.gaierror):
            return f"host name not found ({x.strerror}): check the address"
    for x in chain:
        if isinstance(x, ssl.SSLCertVerificationError):
            return (
                f"the node's TLS certificate is not trusted ({x.verify_message or x.reason}): "
                "if it is self-signed or from a private CA, pass that certificate with "
                "--tls-ca FILE (or set $SSL_CERT_FILE)"
            )
    for x in chain:
        if isinstance(x, ssl.SSLError):
            return (
                f"TLS failed ({x.reason or x}): does the node serve wss:// (a [node] tls_cert, "
                "or a TLS proxy in front of it)? Otherwise use ws://"
            )
    for x in chain:
        if isinstance(x, ConnectionRefusedError):
            return "connection refused: is the node running? check the address and port"
    for x in chain:
        if isinstance(x, trio.TooSlowError):
            hint = (
                " (a node without TLS, its own or a proxy's, does not answer wss://: try ws://)"
                if tls
                else ""
            )
            return f"timed out after {timeout:g}s: is the node running and reachable?{hint}"
    for x in chain:
        if isinstance(x, OSError) and x.strerror:
            return f"{x.strerror}: check the address and your network"
    return f"{type(e).__name__} {e}".strip()
