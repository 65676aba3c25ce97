"""The slot through which the node's services reach federation, filled when it runs.

The node never imports federation (it is built on the node); ``fedgram run`` attaches it
and it fills this slot. Until then, or on a node that runs without it, what needs another
node is refused with a stable code instead of failing deep inside a handler.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from .interfaces import Effects, Federated, SecretRelay
from .protocol.errors import ErrorCode, RpcError


class RemoteSlot:
    """Delegates to the attached :class:`~node.interfaces.Federated`, or refuses."""

    def __init__(self) -> None:
        self.impl: Federated | None = None
        self.secret: SecretRelay | None = None  # federation's secret-chat relay, when built

    def _need(self) -> Federated:
        if self.impl is None:
            raise RpcError(ErrorCode.FEDERATION_OFF, "this node does not federate")
        return self.impl

    async def ensure_user(self, node_id: str, name: str) -> None:
        await self._need().ensure_user(node_id, name)

    def forward_post(
        self,
        conn: sqlite3.Connection,
        fx: Effects,
        chat_id: str,
        home: str,
        sender_id: int,
        random_id: int,
        params: dict[str, Any],
    ) -> None:
        self._need().forward_post(conn, fx, chat_id, home, sender_id, random_id, params)

    async def start_private(self, home: str, me: str, other: str) -> str:
        return await self._need().start_private(home, me, other)

    async def act(self, home: str, sender: str, method: str, params: dict[str, Any]) -> Any:
        return await self._need().act(home, sender, method, params)

    async def cancel_post(self, chat_id: str, sender_id: int, random_id: int) -> bool | None:
        if self.impl is None:
            return None  # no federation: nothing was ever queued
        return await self.impl.cancel_post(chat_id, sender_id, random_id)

    async def fetch_media(
        self, node_id: str, sha256: str, offset: int, length: int, *, opaque: bool = False
    ) -> tuple[bytes, int]:
        return await self._need().fetch_media(node_id, sha256, offset, length, opaque=opaque)

    def _relay(self) -> SecretRelay:
        if self.secret is None:
            raise RpcError(ErrorCode.FEDERATION_OFF, "this node does not federate")
        return self.secret

    def secret_forward(self, conn: sqlite3.Connection, fx: Effects, item: dict[str, Any]) -> None:
        self._relay().secret_forward(conn, fx, item)

    async def secret_keys(self, address: str) -> dict[str, Any]:
        return await self._relay().secret_keys(address)
