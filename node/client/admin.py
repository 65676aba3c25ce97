"""Client side of the admin Unix socket (used by `fedgram status` and admin commands)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from ..adminframe import FrameTooBig, read_frame, write_frame
from ..protocol import frames
from ..protocol.codec import DecodeError, decode, encode
from ..protocol.errors import ErrorCode, RpcError

ADMIN_SOCKET = "admin.sock"
MAX_REPLY = 64 << 20


class AdminClient:
    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._ids = itertools.count(1)

    @classmethod
    @asynccontextmanager
    async def connect(cls, data_dir: Path, timeout: float = 5.0) -> AsyncIterator[AdminClient]:
        path = data_dir / ADMIN_SOCKET
        try:
            with trio.fail_after(timeout):
                stream = await trio.open_unix_socket(str(path))
        except (OSError, trio.TooSlowError) as e:
            raise RpcError(
                ErrorCode.CONNECTION_LOST, f"no running node answers on {path} ({e})"
            ) from None
        async with stream:
            yield cls(stream)

    async def call(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = 60.0
    ) -> Any:
        rid = next(self._ids)
        try:
            with trio.fail_after(timeout):
                await write_frame(self._stream, encode(frames.request(rid, method, params or {})))
                data = await read_frame(self._stream, MAX_REPLY)
        except trio.TooSlowError:
            raise RpcError(ErrorCode.TIMEOUT, f"{method}: no reply in {timeout}s") from None
        except (OSError, EOFError, FrameTooBig, trio.BrokenResourceError) as e:
            raise RpcError(ErrorCode.CONNECTION_LOST, str(e)) from None
        if data is None:
            raise RpcError(ErrorCode.CONNECTION_LOST, "node closed the admin socket")
        try:
            reply = decode(data, max_depth=32)
        except DecodeError as e:
            raise RpcError(ErrorCode.BAD_FRAME, str(e)) from None
        if not isinstance(reply, dict):
            raise RpcError(ErrorCode.BAD_FRAME, "reply is not a map")
        if "e" in reply:
            err = reply["e"]
            raise RpcError(
                str(err.get("code")), str(err.get("message", "")), err.get("retry_after")
            )
        return reply.get("r")
