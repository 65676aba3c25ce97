"""The Fedgram Python SDK.

Its names are loaded on first use (PEP 562 ``__getattr__``): importing one part of the SDK,
the admin socket client (``node.client.admin``) say, does not load the rest of it (the
WebSocket stack, the signing keys), which the ``fedgram`` command would otherwise pay for
at every start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..protocol.errors import ErrorCode, RpcError
    from .connection import Client
    from .errors import ChecksumError, ClientError, FileError, ProfileError, UrlInvalid
    from .profile import Profile, default_profile_dir
    from .urls import check_url, node_address

__all__ = [
    "ChecksumError",
    "Client",
    "ClientError",
    "ErrorCode",
    "FileError",
    "Profile",
    "ProfileError",
    "RpcError",
    "UrlInvalid",
    "check_url",
    "default_profile_dir",
    "node_address",
]

# where each name lives (relative to this package)
_HOME = {
    "ErrorCode": "..protocol.errors",
    "RpcError": "..protocol.errors",
    "Client": ".connection",
    "ChecksumError": ".errors",
    "ClientError": ".errors",
    "FileError": ".errors",
    "ProfileError": ".errors",
    "UrlInvalid": ".errors",
    "Profile": ".profile",
    "default_profile_dir": ".profile",
    "check_url": ".urls",
    "node_address": ".urls",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value  # once loaded, an ordinary module attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
