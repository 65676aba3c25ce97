"""Node URLs: ``ws://host:port`` (or ``wss://`` through a TLS proxy), checked before use."""

from __future__ import annotations

from urllib.parse import urlsplit

from .errors import UrlInvalid

EXAMPLE = "ws://127.0.0.1:7443"


def check_url(url: str) -> str:
    """``url`` if it names a node we can connect to, else :class:`UrlInvalid` saying how to
    write it (a node URL is ``ws://host:port``; nodes listen on 7443 by default)."""
    text = url.strip()
    if not text:
        raise UrlInvalid(f"empty node URL; write it like {EXAMPLE}")
    if "://" not in text:
        raise UrlInvalid(f"node URL {url!r} has no scheme; write it as ws://{text}")
    scheme, rest = text.split("://", 1)
    scheme = scheme.lower()
    if scheme in ("http", "https"):
        ws = "wss" if scheme == "https" else "ws"
        raise UrlInvalid(
            f"node URL {url!r}: nodes speak WebSocket, not {scheme}; write it as {ws}://{rest}"
        )
    if scheme not in ("ws", "wss"):
        raise UrlInvalid(f"node URL {url!r}: scheme must be ws:// (e.g. {EXAMPLE})")
    parts = urlsplit(text)
    if not parts.hostname:
        raise UrlInvalid(f"node URL {url!r} has no host; write it like {EXAMPLE}")
    try:
        port = parts.port
    except ValueError:
        raise UrlInvalid(f"node URL {url!r}: the port must be a number in 1..65535") from None
    if port == 0:
        raise UrlInvalid(f"node URL {url!r}: the port must be a number in 1..65535")
    if parts.username is not None or parts.password is not None:
        raise UrlInvalid(f"node URL {url!r}: no user name in the URL; write it like {EXAMPLE}")
    if parts.query or parts.fragment:
        raise UrlInvalid(f"node URL {url!r}: no ?query or #fragment; write it like {EXAMPLE}")
    return text


def node_address(url: str) -> str:
    """The ``host:port`` a node URL points at: what its pinned key is filed under."""
    parts = urlsplit(check_url(url))
    default = 443 if parts.scheme.lower() == "wss" else 80
    return f"{parts.hostname}:{parts.port or default}"
