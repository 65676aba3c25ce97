"""``system.*`` and ``admin.status``: what a node says about itself.

The handlers are given a ``describe`` function (the application's) rather than the node, so
this module knows nothing of how the node is put together."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from . import __version__
from .interfaces import CallContext
from .protocol.handshake import PROTOCOL_VERSION
from .rpc import Router

Describe = Callable[[], dict[str, Any]]
"""The node's live facts: node_id, name, listen, url, uptime, sessions, db_bytes, data_dir."""


async def ping(ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"time": time.time()}
    if "ping_id" in p:
        out["ping_id"] = p["ping_id"]
    return out


def register(router: Router, describe: Describe) -> None:
    async def info(ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        facts = describe()
        return {
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "node_id": facts["node_id"],
            "name": facts["name"],
            "time": time.time(),
        }

    async def status(ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        return {"version": __version__, **describe(), "pid": os.getpid()}

    router.add("system.ping", ping)
    router.add("system.info", info)
    router.add("admin.status", status)
