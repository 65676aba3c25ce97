"""What every group of chat handlers shares: the parts of the chats service it uses and the
caller. The groups get a :class:`Shared`, not the service object, so they do not import the
module that assembles them."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ..address import AddressError
from ..interfaces import CallContext, Effects, Sessions, Storage
from ..nodes import Directory
from ..remote import RemoteSlot
from .store import Home

T = TypeVar("T")
Params = dict[str, Any]
Handler = Callable[[CallContext, Params], Awaitable[dict[str, Any]]]


class Write(Protocol):
    """Runs a change as one write job, published in commit order once committed."""

    async def __call__(
        self, ctx: CallContext, job: Callable[[sqlite3.Connection, Effects], T]
    ) -> T: ...


@dataclass(frozen=True)
class Shared:
    db: Storage
    hub: Sessions
    home: Home
    write: Write
    difference_limit: int
    directory: Directory
    remote: RemoteSlot


def caller(ctx: CallContext) -> int:
    """The signed-in user making the call (the router lets only them in)."""
    assert ctx.session is not None and ctx.session.user_id is not None
    return ctx.session.user_id


class Handlers:
    """A group of handlers built on the chats service's shared parts."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.db = shared.db
        self.hub = shared.hub
        self.home = shared.home
        self.write = shared.write

    def methods(self) -> dict[str, Handler]:
        raise NotImplementedError

    async def learn_users(self, names: list[str]) -> None:
        """Before a job that names users: the remote ones are asked of their node and
        cached as rows (a network wait, so never inside the job). Unknown names are left
        for the job to refuse."""
        directory = self.shared.directory
        for raw in names:
            try:
                a = directory.resolve(raw.lstrip("@"))
            except AddressError:
                continue
            if a.node != directory.self_id:
                await self.shared.remote.ensure_user(a.node, a.name)
