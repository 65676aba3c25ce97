"""The Python SDK: an encrypted session to a node, RPC calls and pushed updates.

    async with Client.connect("ws://127.0.0.1:7443", pin=None, profile=path) as c:
        pong = await c.call("system.ping", {"ping_id": 1})
        async for update in c.updates(): ...

Calls may be issued concurrently from many tasks; replies are matched by id.  Updates land
in a bounded buffer: a program that never reads them does not stall its calls (overflow
marks the client ``behind`` so it knows to re-sync).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio
from nacl.signing import SigningKey
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    connect_websocket,
    wrap_client_stream,
)

from .. import wsmask
from ..protocol.connection import Connection, ErrorReply, ProtocolError, Reply, Updates
from ..protocol.errors import ErrorCode, RpcError
from ..protocol.handshake import device_proof
from ..protocol.identity import fingerprint, normalize_fingerprint
from .errors import ClientError, why_unreachable
from .profile import Profile
from .urls import check_url, node_address

DEFAULT_TIMEOUT = 30.0
DISCONNECT_TIMEOUT = 2.0  # seconds a closing handshake may take before the socket is dropped
# bytes asked of the socket per read: trio-websocket's default (4 KiB) costs a read, a wsproto
# parse and a message fragment per 4 KiB, which made receiving a 512 KiB media chunk cost more
# CPU than decrypting it (measured: the SDK's download used ~22 s of CPU per GiB)
RECEIVE_BUFFER = 256 * 1024
UPDATE_BUFFER = 10_000

# a client masks every byte it sends: wsproto's masker was the SDK's largest cost per
# uploaded byte (node/wsmask.py); identical bytes on the wire, ~30x less CPU
wsmask.install()


class _Pending:
    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.reply: Reply | ErrorReply | None = None


class Client:
    """A device's session; the protocol is its sans-I/O :class:`Connection`, this class
    moves its bytes over a WebSocket, matches answers to calls and buffers pushes."""

    def __init__(self, ws: WebSocketConnection, conn: Connection, url: str) -> None:
        self.ws = ws
        self.url = url
        self.node_key: bytes = conn.peer_identity or b""
        self.node_id = fingerprint(self.node_key)
        self.transcript_hash = conn.transcript_hash
        self.behind = False
        self.closed_reason: str | None = None
        self.close_code: str | None = None  # the node's reason code (e.g. SESSION_REVOKED)
        self._conn = conn
        self._pending: dict[int, _Pending] = {}
        self._upd_send, self._upd_recv = trio.open_memory_channel[dict[str, Any]](UPDATE_BUFFER)
        self._closed = trio.Event()
        self.last_unmatched_error: Any = None  # an error reply with no id (undecodable frame)

    # --- public API ---------------------------------------------------------------------
    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        url: str,
        *,
        pin: str | None = None,
        profile: Path | Profile | None = None,
        timeout: float = 10.0,
        max_message_size: int = 2 << 20,
        identity: SigningKey | None = None,
        tls_ca: str | Path | None = None,
    ) -> AsyncIterator[Client]:
        """Open a session. ``pin``: the node fingerprint to require; without it, the pin
        stored in ``profile`` (trust on first use: the first key seen is stored).

        A malformed URL raises :class:`UrlInvalid`; a node that cannot be reached raises
        ``RpcError(CONNECTION_LOST)`` saying why (refused, timed out, name not found...).

        ``identity``: a node's key, to open a link as a node (the handshake proves it; the
        other node then serves its ``fed.*`` methods to this session).

        ``tls_ca``: for ``wss://``, a PEM file of CA certificates (or the node's self-signed
        certificate) trusted besides the system's store (``$SSL_CERT_FILE`` is honoured
        too). A file that cannot be read raises :class:`ClientError`."""
        url = check_url(url)
        ssl_context = _tls_context(tls_ca) if url.lower().startswith("wss:") else None
        prof = Profile(profile) if isinstance(profile, Path) else profile
        failure: RpcError | None = None
        body_error: BaseException | None = None
        # Our own nursery for the WebSocket's reader: trio-websocket's open_websocket waits
        # for that reader after a connect timeout, so a peer that accepts TCP and never
        # answers (a black hole, a stopped process) would hold it forever; cancelling our
        # nursery bounds the whole dial by ``timeout``.
        async with trio.open_nursery() as ws_nursery:
            ws: WebSocketConnection | None = None
            try:
                try:
                    with trio.fail_after(timeout):
                        ws = await _dial(ws_nursery, url, max_message_size, ssl_context)
                except (
                    OSError,
                    HandshakeError,
                    trio.TooSlowError,
                    trio.BrokenResourceError,  # TLS refused (the certificate, the protocol)
                    ConnectionClosed,
                ) as e:
                    why = why_unreachable(url, e, timeout)
                    failure = RpcError(ErrorCode.CONNECTION_LOST, f"cannot connect to {url}: {why}")
                else:
                    client = await cls._handshake(ws, url, pin, prof, timeout, identity)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(client._reader)
                        try:
                            yield client
                        except BaseException as e:
                            # Re-raised below, outside the nurseries, so the caller sees
                            # its own exception (`except RpcError` works), not a group.
                            body_error = e
                        finally:
                            nursery.cancel_scope.cancel()
            except BaseException as e:  # the handshake refused (RpcError), or a cancel
                body_error = e
            finally:
                if ws is not None:
                    with trio.move_on_after(DISCONNECT_TIMEOUT, shield=True):
                        await ws.aclose()
                ws_nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        if body_error is not None:
            raise body_error

    async def call(
        self, method: str, params: dict[str, Any] | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> Any:
        """Call a method; returns its result or raises :class:`RpcError` with its code."""
        if self._closed.is_set():
            raise RpcError(ErrorCode.CONNECTION_LOST, self.closed_reason or "closed")
        rid, sealed = self._conn.request(method, params or {})
        pending = _Pending()
        self._pending[rid] = pending
        try:
            await self._send_sealed(sealed)
            with trio.move_on_after(timeout):
                await pending.event.wait()
        finally:
            self._pending.pop(rid, None)
        reply = pending.reply
        if reply is None:
            if self._closed.is_set():
                raise RpcError(ErrorCode.CONNECTION_LOST, self.closed_reason or "closed")
            raise RpcError(ErrorCode.TIMEOUT, f"{method}: no reply in {timeout}s")
        if isinstance(reply, ErrorReply):
            raise reply.error
        return reply.value

    async def updates(self) -> AsyncIterator[dict[str, Any]]:
        """Pushed updates in arrival order, until the connection closes."""
        async for u in self._upd_recv:
            yield u

    async def next_update(self, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        with trio.fail_after(timeout):
            return await self._upd_recv.receive()

    # --- signing in -----------------------------------------------------------------------
    def _proof(self, device_key: SigningKey) -> dict[str, bytes]:
        return {
            "device_key": bytes(device_key.verify_key),
            "sig": device_proof(device_key, self.transcript_hash),
        }

    async def request_code(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("auth.requestCode", {"name": name})
        return result

    async def sign_in(
        self,
        name: str,
        code: str,
        device_key: SigningKey,
        device_name: str,
        password: str | None = None,
    ) -> dict[str, Any]:
        """Bind ``device_key`` as a new device of NAME with a login code."""
        p: dict[str, Any] = {
            "name": name,
            "code": code,
            "device_name": device_name,
            **self._proof(device_key),
        }
        if password is not None:
            p["password"] = password
        result: dict[str, Any] = await self.call("auth.signIn", p)
        return result

    async def sign_up(
        self,
        name: str,
        device_key: SigningKey,
        device_name: str,
        display_name: str | None = None,
        invite: str | None = None,
    ) -> dict[str, Any]:
        p: dict[str, Any] = {"name": name, "device_name": device_name, **self._proof(device_key)}
        if display_name is not None:
            p["display_name"] = display_name
        if invite is not None:
            p["invite"] = invite
        result: dict[str, Any] = await self.call("auth.signUp", p)
        return result

    async def authorize(self, device_key: SigningKey) -> dict[str, Any]:
        """Resume as an already bound device (signs this session's transcript)."""
        result: dict[str, Any] = await self.call("auth.authorize", self._proof(device_key))
        return result

    async def send_raw(self, plaintext: bytes) -> None:
        """Seal and send arbitrary bytes (tests of the node's handling of bad frames)."""
        await self._send_sealed(self._conn.seal(plaintext))

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> str | None:
        await self._closed.wait()
        return self.closed_reason

    # --- internals ----------------------------------------------------------------------
    @classmethod
    async def _handshake(
        cls,
        ws: WebSocketConnection,
        url: str,
        pin: str | None,
        profile: Profile | None,
        timeout: float,
        identity: SigningKey | None = None,
    ) -> Client:
        conn = Connection.client(identity)
        try:
            with trio.fail_after(timeout):
                await ws.send_message(conn.hello())
                raw = await ws.get_message()
        except trio.TooSlowError:
            raise RpcError(
                ErrorCode.HANDSHAKE_TIMEOUT,
                f"{url} accepted the connection but did not answer the Fedgram handshake in "
                f"{timeout:g}s: is it a Fedgram node?",
            ) from None
        except ConnectionClosed as e:
            raise RpcError(
                _close_code(e) or ErrorCode.CONNECTION_LOST,
                f"{url} closed the connection during the handshake ({_reason(e)})",
            ) from None
        if not isinstance(raw, bytes):
            raise RpcError(
                ErrorCode.HANDSHAKE_FAILED, f"{url} sent a text frame: not a Fedgram node?"
            )
        try:
            proof = conn.receive_welcome(raw)
        except ProtocolError as e:
            raise RpcError(e.reason, f"{url}: {e.message} (is it a Fedgram node?)") from None
        got = fingerprint(conn.peer_identity or b"")
        address = node_address(url)
        if pin:
            expected: str | None = normalize_fingerprint(pin)
            if expected != got:
                raise RpcError(
                    ErrorCode.NODE_KEY_MISMATCH,
                    f"{address} presented key {got}, not the required {expected}; refusing",
                )
        else:
            expected = profile.pinned(address) if profile else None
            if expected is not None and expected != got:
                raise RpcError(
                    ErrorCode.NODE_KEY_MISMATCH,
                    f"{address} presented key {got}, but {expected} is pinned; refusing. If "
                    "its operator gave the node a new key (compare the node id `fedgram "
                    f"status` prints), run `fedgram client forget-node {url}` and log in again",
                )
        if profile is not None and expected is None:
            profile.pin(address, got)
        if proof is not None:  # a node proves its key only once it trusts the responder's
            try:
                await ws.send_message(proof)
            except ConnectionClosed as e:
                raise RpcError(ErrorCode.CONNECTION_LOST, _reason(e)) from None
        return cls(ws, conn, url)

    async def _send_sealed(self, sealed: bytes) -> None:
        """Send a frame the caller sealed with no checkpoint since, shielded from
        cancellation: a frame sealed but not (fully) written would leave a gap in the seal
        counter, or half a frame on the wire, and the node would close the session
        (BAD_SEAL) or wait for the rest. A caller cancelled meanwhile (a timeout, a
        sibling's failure) is cancelled right after; the deadline keeps a dead peer from
        holding it forever.

        No lock of ours: trio-websocket frames the message and joins its FIFO stream lock
        without a checkpoint after our seal (and under the shield none can fire), so frames
        reach the wire in seal-counter order, as the node relies on too."""
        deadline = trio.current_time() + DEFAULT_TIMEOUT
        try:
            with trio.CancelScope(shield=True, deadline=deadline) as cs:
                await self.ws.send_message(sealed)
        except ConnectionClosed as e:
            raise RpcError(ErrorCode.CONNECTION_LOST, _reason(e)) from None
        if cs.cancelled_caught:
            await self.ws.aclose(1011, "send timed out")
            raise RpcError(ErrorCode.CONNECTION_LOST, "send timed out")
        await trio.lowlevel.checkpoint_if_cancelled()

    async def _reader(self) -> None:
        conn = self._conn
        try:
            while True:
                try:
                    msg = await self.ws.get_message()
                except ConnectionClosed as e:
                    self.closed_reason = _reason(e)
                    self.close_code = _close_code(e)
                    return
                if not isinstance(msg, bytes):
                    self.closed_reason = "node sent a text frame"
                    return
                try:
                    ev = conn.receive(msg)
                except ProtocolError as e:
                    # the node broke the protocol: the session cannot go on
                    self.closed_reason = f"bad frame from node: {e}"
                    return
                if isinstance(ev, Updates):
                    for u in ev.items:
                        try:
                            self._upd_send.send_nowait(u)
                        except trio.WouldBlock:
                            self.behind = True
                elif isinstance(ev, Reply | ErrorReply):
                    pending = self._pending.get(ev.id) if ev.id is not None else None
                    if pending is not None:
                        pending.reply = ev
                        pending.event.set()
                    elif ev.id is None and isinstance(ev, ErrorReply):
                        self.last_unmatched_error = ev.error.to_wire()
        finally:
            conn.fail()
            self._closed.set()
            self._upd_send.close()
            for p in list(self._pending.values()):
                p.event.set()


def _reason(e: ConnectionClosed) -> str:
    r = e.reason
    if r is None:
        return "closed"
    return f"{r.code} {r.reason or r.name}".strip()


def _close_code(e: ConnectionClosed) -> str | None:
    """The node's reason code when it closed the session with one (SESSION_REVOKED...)."""
    r = e.reason
    text = (r.reason or "") if r is not None else ""
    return text if text in ErrorCode.__members__ else None


def client_context(ca_file: str | Path | None = None) -> ssl.SSLContext:
    """The system's trust store (``$SSL_CERT_FILE`` honoured, as by the default context),
    plus ``ca_file`` when given: a PEM of CA certificates or of a node's self-signed
    certificate. Raises FileNotFoundError / ssl.SSLError for a missing or bad file."""
    ctx = ssl.create_default_context()
    if ca_file:
        ctx.load_verify_locations(cafile=str(ca_file))
    return ctx


def _tls_context(ca_file: str | Path | None) -> ssl.SSLContext:
    try:
        return client_context(ca_file)
    except FileNotFoundError:
        raise ClientError(f"{ca_file}: no such CA file (--tls-ca)") from None
    except (ssl.SSLError, OSError) as e:
        raise ClientError(
            f"{ca_file}: not a PEM certificate file ({getattr(e, 'reason', None) or e}); "
            "pass the node's certificate or its CA in PEM form (--tls-ca)"
        ) from None


async def _dial(
    nursery: trio.Nursery,
    url: str,
    max_message_size: int,
    ssl_context: ssl.SSLContext | None = None,
) -> WebSocketConnection:
    """Open the WebSocket of a checked ``ws://`` or ``wss://`` URL, its reader in ``nursery``."""
    parts = urlsplit(url)
    tls = parts.scheme == "wss"
    host = parts.hostname or ""
    port = parts.port or (443 if tls else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not tls:
        return await connect_websocket(
            nursery,
            host,
            port,
            resource,
            use_ssl=False,
            max_message_size=max_message_size,
            receive_buffer_size=RECEIVE_BUFFER,
        )
    # The TLS handshake first, on its own: inside connect_websocket a refused certificate
    # only stops its reader task and the dial waits out the whole timeout ("timed out"
    # instead of "certificate not trusted").
    stream = await trio.open_ssl_over_tcp_stream(
        host, port, ssl_context=ssl_context or client_context(), https_compatible=True
    )
    try:
        await stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    host_header = host if port == 443 else f"{host}:{port}"
    return await wrap_client_stream(
        nursery,
        stream,
        host_header,
        resource,
        max_message_size=max_message_size,
        receive_buffer_size=RECEIVE_BUFFER,
    )
