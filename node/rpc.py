"""Dispatch of validated requests to service handlers.

Each service registers its handlers on the :class:`Router`; the router checks access and
parameters against the schema in node/protocol/api.py before a handler ever sees them, so
handlers can trust their inputs' shape.  Unexpected exceptions become ``INTERNAL`` and are
logged with the method name only (never the parameters, which may hold secrets).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from . import log
from .interfaces import CallContext, Caller
from .protocol.api import METHODS
from .protocol.errors import ErrorCode, RpcError

_log = log.get("rpc")

Handler = Callable[[CallContext, dict[str, Any]], Awaitable[Any]]
RateCheck = Callable[[str, dict[str, str | None]], None]
"""Refuses a call over its rate budget (node/ratelimit.py's RateLimiter.check)."""


class Router:
    def __init__(
        self, rate_check: RateCheck | None = None, present: Callable[[Any], Any] | None = None
    ) -> None:
        self.handlers: dict[str, Handler] = {}
        self._rate_check = rate_check
        # addresses are canonical inside the node; callers read them as name@petname
        self._present = present

    def add(self, name: str, fn: Handler) -> None:
        if name not in METHODS:
            raise KeyError(f"handler for {name!r}, which the schema does not declare")
        if name in self.handlers:
            raise KeyError(f"two handlers for {name!r}")
        self.handlers[name] = fn

    def missing(self, parts: frozenset[str] = frozenset({"node"})) -> list[str]:
        """Methods of the schema served by ``parts`` that have no handler (the node checks
        at start-up that it serves its whole share of the schema)."""
        return sorted(n for n, m in METHODS.items() if m.part in parts and n not in self.handlers)

    async def dispatch(
        self, ctx: CallContext, name: str, params: dict[str, Any], *, present: bool = True
    ) -> Any:
        """Check access, parameters and rate, then run the handler. ``present=False``
        keeps addresses canonical (a call made for a peer node, which presents them its
        own way)."""
        method = METHODS.get(name)
        if method is None:
            raise RpcError(ErrorCode.METHOD_UNKNOWN, f"no method {name!r}")
        if method.access == "admin" and ctx.transport != "admin":
            raise RpcError(ErrorCode.ADMIN_ONLY)
        if method.access == "user" and ctx.transport != "admin" and not _signed_in(ctx):
            raise RpcError(ErrorCode.AUTH_REQUIRED)
        if method.access == "node" and (ctx.session is None or ctx.session.role != "node"):
            raise RpcError(ErrorCode.METHOD_UNKNOWN, f"no method {name!r}")  # not for clients
        handler = self.handlers.get(name)
        if handler is None:  # a part this node does not run (federation)
            code = ErrorCode.FEDERATION_OFF if method.part == "federation" else ErrorCode.INTERNAL
            raise RpcError(code, f"{name} is not served by this node")
        method.validate(params)
        if ctx.session is not None and self._rate_check is not None:
            self._rate_check(method.rate_group, _limit_keys(ctx.session, params))
        ctx.extra["call"] = (name, params)  # what a replica forwards to a chat's home
        try:
            result = await handler(ctx, params)
        except RpcError:
            raise
        except Exception:
            _log.exception("handler failed", extra={"kv": {"method": name}})
            raise RpcError(ErrorCode.INTERNAL) from None
        return result if self._present is None or not present else self._present(result)


def _limit_keys(session: Caller, params: dict[str, Any]) -> dict[str, str | None]:
    name = params.get("name")
    return {
        "ip": session.ip,
        "user": str(session.user_id) if session.user_id is not None else None,
        "device": str(session.device_id) if session.device_id is not None else None,
        "name": name.lower() if isinstance(name, str) else None,
        "peer": session.peer_identity.hex() if session.peer_identity is not None else None,
    }


def _signed_in(ctx: CallContext) -> bool:
    return ctx.session is not None and ctx.session.user_id is not None
