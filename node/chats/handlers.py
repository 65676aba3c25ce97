"""What every group of chat handlers shares: the service it belongs to and the caller."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..rpc import CallContext
    from .service import Chats

Params = dict[str, Any]
Handler = Callable[["CallContext", Params], Awaitable[dict[str, Any]]]


def caller(ctx: CallContext) -> int:
    """The signed-in user making the call (the router lets only them in)."""
    assert ctx.session is not None and ctx.session.user_id is not None
    return ctx.session.user_id


class Handlers:
    """A group of handlers built on the chats service (its node, home and write jobs)."""

    def __init__(self, chats: Chats) -> None:
        self.chats = chats
        self.node = chats.node
        self.home = chats.home
        self.write = chats.write

    def methods(self) -> dict[str, Handler]:
        raise NotImplementedError
