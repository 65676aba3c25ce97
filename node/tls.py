"""TLS with the stdlib ``ssl`` module: the gateway's server context (clients build theirs
in node/client/connection.py: ``client_context``, the system store plus a CA file).

Why in the node at all: a community node may run without a reverse proxy, and ``wss://`` is
what browsers, corporate networks and app stores expect. The node's own encryption (the
handshake in node/protocol) is unchanged underneath; TLS adds the web's expectations.
"""

from __future__ import annotations

import ssl

from .config import Config, ConfigError


def server_context(config: Config) -> ssl.SSLContext | None:
    """The gateway's TLS context from ``[node] tls_cert``/``tls_key``; None when unset.
    A missing, unreadable or mismatched file is a ConfigError naming it (at start-up)."""
    cert, key = config.path("node", "tls_cert"), config.path("node", "tls_key")
    if cert is None or key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    for path, what in ((cert, "tls_cert"), (key, "tls_key")):
        if not path.is_file():
            raise ConfigError(f"[node] {what} = {path}: no such file")
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        raise ConfigError(
            f"[node] tls_cert = {cert}, tls_key = {key}: not a PEM certificate and its key "
            f"({e.reason or e})"
        ) from None
    except OSError as e:
        raise ConfigError(f"[node] tls_cert/tls_key: cannot read ({e.strerror})") from None
    return ctx


def check_ca(config: Config) -> None:
    """``[federation] tls_ca``, when set, must be a readable PEM file: refused at start-up
    in one line rather than on every dial to a peer."""
    ca = config.path("federation", "tls_ca")
    if ca is None:
        return
    try:
        ssl.create_default_context().load_verify_locations(cafile=str(ca))
    except FileNotFoundError:
        raise ConfigError(f"[federation] tls_ca = {ca}: no such file") from None
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(
            f"[federation] tls_ca = {ca}: not a PEM certificate file "
            f"({getattr(e, 'reason', None) or e})"
        ) from None
