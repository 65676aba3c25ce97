"""The Fedgram Python SDK."""

from ..protocol.errors import ErrorCode, RpcError
from .connection import Client
from .profile import Profile, default_profile_dir

__all__ = ["Client", "ErrorCode", "Profile", "RpcError", "default_profile_dir"]
