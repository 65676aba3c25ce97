"""Test helpers built only from real parts (node in-process, SDK over WebSockets)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from nacl.signing import SigningKey

from node.app import Node
from node.client import Client
from node.interfaces import CallContext
from node.log import KeyValueFormatter


async def admin(node: Node, method: str, params: dict[str, Any] | None = None) -> Any:
    """Call an admin method the way the admin socket does."""
    return await node.router.dispatch(CallContext("admin"), method, params or {})


async def add_user(node: Node, name: str, **extra: Any) -> None:
    await admin(node, "admin.userAdd", {"name": name, **extra})


async def fresh_code(node: Node, name: str) -> str:
    return str((await admin(node, "admin.userCode", {"name": name}))["code"])


@asynccontextmanager
async def signed_in(
    node: Node, name: str, key: SigningKey | None = None, device: str = "dev", create: bool = True
) -> AsyncIterator[Client]:
    """A client signed in as NAME (created if needed) on a new or given device key."""
    if create and not any(
        u["name"] == name for u in (await admin(node, "admin.userList"))["users"]
    ):
        await add_user(node, name)
    async with Client.connect(node.url) as c:
        if key is None:
            await c.sign_in(name, await fresh_code(node, name), SigningKey.generate(), device)
        else:
            await c.authorize(key)
        yield c


async def send(c: Client, chat: str, text: str, **extra: Any) -> int:
    """Post a text message with a fresh random_id; returns its seq."""
    import secrets

    params = {"chat": chat, "random_id": secrets.randbits(63), "text": text, **extra}
    return int((await c.call("messages.send", params))["seq"])


async def next_of(c: Client, kind: str, timeout: float = 5) -> dict[str, Any]:
    """The next pushed update of a type, skipping others (e.g. typing, pts updates)."""
    while True:
        u = await c.next_update(timeout)
        if u.get("type") == kind:
            return u


class NodeLogs(logging.Handler):
    """Every log line the in-process nodes write, formatted as on a node's stderr (the
    ``node_logs`` fixture attaches one): tests check what the logs never contain."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(KeyValueFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
