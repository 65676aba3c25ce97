"""The admin channel: CBOR RPC over a Unix socket in the data folder, mode 0600.

Only the OS user that runs the node can open it, which is the whole authorization: whoever
can read the data folder already owns the node.  It is how `fedgram status` and the admin
commands talk to a running node.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from typing import Any

import trio

from . import log
from .adminframe import FrameTooBig, read_frame, write_frame
from .config import ConfigError
from .interfaces import CallContext
from .protocol import frames
from .protocol.codec import DecodeError, decode, encode
from .protocol.errors import ErrorCode, RpcError
from .rpc import Router

_log = log.get("admin")
UNIX_PATH_MAX = 107
_READ_TIMEOUT = 300.0
# parameters never written to the log, whatever a future admin method calls them
SECRET_PARAMS = frozenset({"password", "code", "token", "invite", "secret", "key", "sig"})
# polled by `fedgram status` and the dev cluster: logged at debug, not info
QUIET_METHODS = frozenset({"admin.status"})


def bind_admin_socket(path: os.PathLike[str] | str) -> trio.socket.SocketType:
    """Bind and listen synchronously so errors surface at start-up, not inside a task."""
    raw = os.fsencode(path)
    if len(raw) > UNIX_PATH_MAX:
        raise ConfigError(
            f"{os.fsdecode(raw)}: admin socket path is {len(raw)} bytes, over the OS limit of "
            f"{UNIX_PATH_MAX}; use a shorter --data path"
        )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(raw)  # stale from a crashed node; the data-folder lock says no node runs
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket file is born 0600: no window where others may connect
    try:
        sock.bind(raw)
        sock.listen(64)
    except OSError as e:
        sock.close()
        raise ConfigError(f"{os.fsdecode(raw)}: cannot bind admin socket ({e.strerror})") from None
    finally:
        os.umask(old)
    return trio.socket.from_stdlib_socket(sock)


class AdminServer:
    def __init__(self, router: Router, sock: trio.socket.SocketType, max_bytes: int) -> None:
        self.router = router
        self.max_bytes = max_bytes
        self.listener = trio.SocketListener(sock)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                try:
                    stream = await self.listener.accept()
                except OSError as e:
                    if e.errno in (errno.EMFILE, errno.ENFILE):
                        await trio.sleep(0.1)
                        continue
                    raise
                nursery.start_soon(self._connection, stream)

    async def _connection(self, stream: trio.SocketStream) -> None:
        max_bytes = self.max_bytes
        async with stream:
            while True:
                try:
                    with trio.fail_after(_READ_TIMEOUT):
                        data = await read_frame(stream, max_bytes)
                except (FrameTooBig, EOFError, trio.TooSlowError, trio.BrokenResourceError):
                    return
                if data is None:
                    return
                reply = await self._answer(data)
                try:
                    await write_frame(stream, encode(reply))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

    async def _answer(self, data: bytes) -> dict[str, object]:
        try:
            obj = decode(data)
        except DecodeError as e:
            return frames.error(None, RpcError(ErrorCode.BAD_FRAME, str(e)))
        try:
            rid, method, params = frames.parse_request(obj)
        except RpcError as e:
            return frames.error(frames.request_id_of(obj), e)
        if method.startswith("admin."):
            log.security(
                "admin",
                logging.DEBUG if method in QUIET_METHODS else logging.INFO,
                method=method,
                **_loggable(params),
            )
        ctx = CallContext("admin")
        try:
            return frames.result(rid, await self.router.dispatch(ctx, method, params))
        except RpcError as e:
            return frames.error(rid, e)


def _loggable(params: dict[str, Any]) -> dict[str, Any]:
    """An admin call's parameters as log fields: scalars (strings cut at 200 characters),
    the length of anything else, and nothing whose name says it is a secret."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        if not isinstance(k, str) or k.lower() in SECRET_PARAMS or k in ("method", "what", "level"):
            continue
        if isinstance(v, str):
            out[k] = v[:200]
        elif isinstance(v, bool | int | float) or v is None:
            out[k] = v
        else:
            out[f"{k}_len"] = len(v) if hasattr(v, "__len__") else "?"
    return out
