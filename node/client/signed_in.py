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
    url = str(session["url"])
    key = profile.device_key()  # a damaged key fails here, before any network wait
    # the CA file given at login (--tls-ca) for a node with a self-signed certificate
    ca = session.get("tls_ca")
    tls_ca = ca if isinstance(ca, str) and ca else None
    async with Client.connect(url, profile=profile, timeout=timeout, tls_ca=tls_ca) as c:
        try:
            await c.authorize(key)
        except RpcError as e:
            if e.code not in _SIGN_IN_AGAIN:
                raise
            name = session.get("name") or "NAME"
            raise RpcError(
                e.code, f"{e.message.rstrip('.')}: fedgram client login {url} {name}"
            ) from None
        yield c


# authorize refusals that only a new sign-in cures
_SIGN_IN_AGAIN = (ErrorCode.DEVICE_REVOKED, ErrorCode.DEVICE_UNKNOWN)
