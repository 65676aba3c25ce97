"""Dispatch of validated requests to service handlers.

Each service registers its handlers on the :class:`Router`; the router checks access and
parameters against the schema in node/protocol/api.py before a handler ever sees them, so
handlers can trust their inputs' shape.  Unexpected exceptions become ``INTERNAL`` and are
logged with the method name only (never the parameters, which may hold secrets).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from . import log
from .protocol.api import METHODS
from .protocol.errors import ErrorCode, RpcError

if TYPE_CHECKING:
    from .app import Node
    from .gateway import Session

_log = log.get("rpc")

Transport = Literal["ws", "admin"]


@dataclass
class CallContext:
    node: Node
    transport: Transport
    session: Session | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[CallContext, dict[str, Any]], Awaitable[Any]]


class Router:
    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}

    def add(self, name: str, fn: Handler) -> None:
        if name not in METHODS:
            raise KeyError(f"handler for {name!r}, which the schema does not declare")
        if name in self.handlers:
            raise KeyError(f"two handlers for {name!r}")
        self.handlers[name] = fn

    def missing(self) -> list[str]:
        return sorted(set(METHODS) - set(self.handlers))

    async def dispatch(self, ctx: CallContext, name: str, params: dict[str, Any]) -> Any:
        method = METHODS.get(name)
        if method is None:
            raise RpcError(ErrorCode.METHOD_UNKNOWN, f"no method {name!r}")
        if method.access == "admin" and ctx.transport != "admin":
            raise RpcError(ErrorCode.ADMIN_ONLY)
        if method.access == "user" and ctx.transport != "admin" and not _signed_in(ctx):
            raise RpcError(ErrorCode.AUTH_REQUIRED)
        method.validate(params)
        if ctx.session is not None:
            ctx.node.ratelimit.check(method.rate_group, _limit_keys(ctx.session, params))
        try:
            result = await self.handlers[name](ctx, params)
        except RpcError:
            raise
        except Exception:
            _log.exception("handler failed", extra={"kv": {"method": name}})
            raise RpcError(ErrorCode.INTERNAL) from None
        # addresses are canonical inside the node; callers read them as name@petname
        return ctx.node.nodes.present(result)


def _limit_keys(session: Session, params: dict[str, Any]) -> dict[str, str | None]:
    name = params.get("name")
    return {
        "ip": session.ip,
        "user": str(session.user_id) if session.user_id is not None else None,
        "device": str(session.device_id) if session.device_id is not None else None,
        "name": name.lower() if isinstance(name, str) else None,
    }


def _signed_in(ctx: CallContext) -> bool:
    return ctx.session is not None and ctx.session.user_id is not None
