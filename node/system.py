"""``system.*`` and ``admin.status``: what a node says about itself."""

from __future__ import annotations

import os
import time
from typing import Any

from . import __version__
from .protocol.handshake import PROTOCOL_VERSION
from .rpc import CallContext, Router


async def ping(ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"time": time.time()}
    if "ping_id" in p:
        out["ping_id"] = p["ping_id"]
    return out


async def info(ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
    node = ctx.node
    return {
        "version": __version__,
        "protocol": PROTOCOL_VERSION,
        "node_id": node.node_id,
        "name": node.config.name,
        "time": time.time(),
    }


async def status(ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
    node = ctx.node
    return {
        "version": __version__,
        "node_id": node.node_id,
        "name": node.config.name,
        "listen": f"{node.host}:{node.port}",
        "url": node.url,
        "uptime": time.time() - node.started_at,
        "sessions": len(node.gateway.sessions),
        "db_bytes": node.db.size_bytes(),
        "data_dir": str(node.config.data_dir),
        "pid": os.getpid(),
    }


def register(router: Router) -> None:
    router.add("system.ping", ping)
    router.add("system.info", info)
    router.add("admin.status", status)
