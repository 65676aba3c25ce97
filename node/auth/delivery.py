"""Code delivery: how a login code reaches its person (the seeds' "SMS providers").

``log`` writes it to the node log (personal nodes; the admin also has `fedgram user code`),
``file`` appends a line to a file, ``command`` runs an admin-chosen program with NAME and
CODE as arguments (the way to plug in SMS, e-mail or a bot), ``webhook`` POSTs JSON.
Each has a timeout; any failure is DELIVERY_FAILED for the caller, never a hang.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .. import log
from ..config import Config
from ..protocol.errors import ErrorCode, RpcError

_log = log.get("auth.delivery")

# one way of delivering: (name, code, expires_in) -> None, raising on failure
Method = Callable[[str, str, int], Awaitable[None]]


class CodeDelivery:
    def __init__(self, config: Config) -> None:
        acc = config.values["accounts"]
        self.kind: str = acc["code_delivery"]
        self.file: str = acc["code_file"]
        self.command: str = acc["code_command"]
        self.webhook: str = acc["code_webhook"]
        self.timeout: float = acc["code_delivery_timeout"]
        self.node_name = config.name
        methods: dict[str, Method] = {
            "log": self._log,
            "file": self._file,
            "command": self._command,
            "webhook": self._webhook,
        }
        if self.kind not in methods:  # the config refuses other values; never guess a method
            raise ValueError(f"[accounts] code_delivery {self.kind!r} is not one of {[*methods]}")
        self._method = methods[self.kind]

    async def deliver(self, name: str, code: str, expires_in: int) -> None:
        try:
            with trio.fail_after(self.timeout):
                await self._method(name, code, expires_in)
        except RpcError:
            raise
        except trio.TooSlowError:
            self._failed(name, "timeout")
        except Exception as e:  # any delivery failure is the caller's DELIVERY_FAILED
            self._failed(name, f"{type(e).__name__}: {e}")

    def _failed(self, name: str, why: str) -> None:
        log.event(
            _log, "code.delivery_failed", logging.WARNING, kind=self.kind, user=name, why=why[:200]
        )
        raise RpcError(ErrorCode.DELIVERY_FAILED, f"code delivery ({self.kind}) failed")

    async def _log(self, name: str, code: str, expires_in: int) -> None:
        # Delivery by log is the admin's explicit choice: the log IS the channel here.
        log.event(_log, "login.code", logging.WARNING, user=name, code=code, expires_in=expires_in)

    async def _file(self, name: str, code: str, expires_in: int) -> None:
        line = f"{name}@{self.node_name} {code}\n".encode()

        def append() -> None:
            fd = os.open(self.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

        await trio.to_thread.run_sync(append)

    async def _command(self, name: str, code: str, expires_in: int) -> None:
        argv = [*shlex.split(self.command), name, code]
        proc = await trio.run_process(
            argv, check=False, capture_stdout=True, capture_stderr=True, stdin=subprocess.DEVNULL
        )
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            raise RuntimeError(f"exit {proc.returncode}: {err[-1] if err else ''}")

    async def _webhook(self, name: str, code: str, expires_in: int) -> None:
        import httpx  # lazy: ~0.1 s to import, and only a webhook delivery needs it

        body: dict[str, Any] = {
            "name": name,
            "code": code,
            "node": self.node_name,
            "expires_in": expires_in,
        }
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            r = await client.post(
                self.webhook, content=json.dumps(body), headers={"content-type": "application/json"}
            )
        if r.status_code >= 300:
            raise RuntimeError(f"HTTP {r.status_code}")
