"""``users.resolve`` and ``admin.userLookup``: a user by address, local or remote.

A remote user is asked of their node through federation (the remote slot) and cached as a
row of ``users``, which is what lets a private chat or a group name them."""

from __future__ import annotations

import sqlite3
from typing import Any

from .address import Address, AddressError
from .interfaces import CallContext, Storage
from .nodes import Directory
from .protocol.errors import ErrorCode, RpcError
from .remote import RemoteSlot
from .rpc import Router


class Lookup:
    def __init__(self, db: Storage, directory: Directory, remote: RemoteSlot) -> None:
        self.db = db
        self.directory = directory
        self.remote = remote

    def register(self, router: Router) -> None:
        router.add("users.resolve", self.resolve)
        router.add("admin.userLookup", self.resolve)

    async def resolve(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        try:
            a = self.directory.resolve(p["address"].lstrip("@"))
        except AddressError as e:
            code = ErrorCode.PEER_UNKNOWN if "no node" in str(e) else ErrorCode.USER_NOT_FOUND
            raise RpcError(code, str(e)) from None
        local = a.node == self.directory.self_id
        if not local:
            await self.remote.ensure_user(a.node, a.name)
        row = await self.db.read(lambda c: _user(c, a))
        if row is None:
            raise RpcError(ErrorCode.USER_NOT_FOUND, f"no user {a.name}@{a.node[:12]}")
        display_name, created = row
        return {
            "address": str(a),  # canonical; the router shows it as name@petname
            "node_id": a.node,
            "display_name": display_name,
            "created": created,
            "local": local,
        }


def _user(c: sqlite3.Connection, a: Address) -> tuple[str, float] | None:
    row = c.execute(
        "SELECT u.display_name, u.created, u.banned, n.state FROM users u "
        "JOIN nodes n ON n.id = u.node WHERE u.name = ? AND n.fingerprint = ?",
        (a.name, a.node),
    ).fetchone()
    if row is None or (row[2] and row[3] == "self"):
        return None
    return str(row[0]), float(row[1])
