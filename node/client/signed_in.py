"""Connect with a profile's saved session: the pinned node and the stored device key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..protocol.errors import ErrorCode, RpcError
from .connection import Client
from .profile import Profile


@asynccontextmanager
async def connect_signed_in(profile: Profile, timeout: float = 10.0) -> AsyncIterator[Client]:
    session = profile.session()
    if not session or not isinstance(session.get("url"), str):
        raise RpcError(
            ErrorCode.AUTH_REQUIRED,
            f"not logged in (profile {profile.path}); run `fedgram client login`",
        )
    async with Client.connect(str(session["url"]), profile=profile, timeout=timeout) as c:
        await c.authorize(profile.device_key())
        yield c
