"""The Fedgram Python SDK."""

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
