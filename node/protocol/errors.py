"""The one list of error codes Fedgram speaks.

Codes are stable UPPER_SNAKE strings (clients and scripts match on them, like Telegram's
``FLOOD_WAIT``); the text next to each is the documentation shown in docs/api.md.  Adding a
code is fine; renaming or removing one breaks clients.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    # framing / transport
    BAD_FRAME = "BAD_FRAME"
    BAD_REQUEST = "BAD_REQUEST"
    FRAME_TOO_BIG = "FRAME_TOO_BIG"
    TEXT_FRAME = "TEXT_FRAME"
    BAD_SEAL = "BAD_SEAL"
    HANDSHAKE_FAILED = "HANDSHAKE_FAILED"
    HANDSHAKE_TIMEOUT = "HANDSHAKE_TIMEOUT"
    VERSION_UNSUPPORTED = "VERSION_UNSUPPORTED"
    IDLE_TIMEOUT = "IDLE_TIMEOUT"
    TOO_MANY_SESSIONS = "TOO_MANY_SESSIONS"
    NODE_SHUTDOWN = "NODE_SHUTDOWN"
    NODE_KEY_MISMATCH = "NODE_KEY_MISMATCH"
    CONNECTION_LOST = "CONNECTION_LOST"
    TIMEOUT = "TIMEOUT"
    # RPC
    METHOD_UNKNOWN = "METHOD_UNKNOWN"
    PARAMS_INVALID = "PARAMS_INVALID"
    TOO_MANY_REQUESTS = "TOO_MANY_REQUESTS"
    FLOOD_WAIT = "FLOOD_WAIT"
    INTERNAL = "INTERNAL"
    # auth / accounts
    AUTH_REQUIRED = "AUTH_REQUIRED"
    ADMIN_ONLY = "ADMIN_ONLY"
    ALREADY_AUTHORIZED = "ALREADY_AUTHORIZED"
    NAME_INVALID = "NAME_INVALID"
    NAME_TAKEN = "NAME_TAKEN"
    USER_NOT_FOUND = "USER_NOT_FOUND"
    USER_BANNED = "USER_BANNED"
    REGISTRATION_CLOSED = "REGISTRATION_CLOSED"
    INVITE_INVALID = "INVITE_INVALID"
    CODE_INVALID = "CODE_INVALID"
    CODE_EXPIRED = "CODE_EXPIRED"
    DELIVERY_FAILED = "DELIVERY_FAILED"
    PASSWORD_REQUIRED = "PASSWORD_REQUIRED"
    PASSWORD_INVALID = "PASSWORD_INVALID"
    SIGNATURE_INVALID = "SIGNATURE_INVALID"
    DEVICE_UNKNOWN = "DEVICE_UNKNOWN"
    DEVICE_REVOKED = "DEVICE_REVOKED"
    DEVICE_NOT_FOUND = "DEVICE_NOT_FOUND"
    DEVICE_KEY_IN_USE = "DEVICE_KEY_IN_USE"
    SESSION_REVOKED = "SESSION_REVOKED"


DESCRIPTIONS: dict[ErrorCode, str] = {
    ErrorCode.BAD_FRAME: "The frame could not be decoded as hardened CBOR (depth, indefinite "
    "lengths, duplicate keys, forbidden tags) or is not a map.",
    ErrorCode.BAD_REQUEST: "The frame decoded but is not a request envelope "
    "({id: int, m: str, p: map}).",
    ErrorCode.FRAME_TOO_BIG: "A WebSocket message exceeded the node's frame cap (close 1009).",
    ErrorCode.TEXT_FRAME: "A text WebSocket message was sent; only binary frames are spoken.",
    ErrorCode.BAD_SEAL: "A sealed frame failed authentication: wrong key, tampered, replayed "
    "or reordered. The session is closed.",
    ErrorCode.HANDSHAKE_FAILED: "The hello/welcome exchange was malformed or a signature did "
    "not verify.",
    ErrorCode.HANDSHAKE_TIMEOUT: "The handshake did not complete within the node's timeout.",
    ErrorCode.VERSION_UNSUPPORTED: "The peer speaks a protocol version this node does not.",
    ErrorCode.IDLE_TIMEOUT: "Nothing was received for longer than the idle timeout.",
    ErrorCode.TOO_MANY_SESSIONS: "The node is at its session limit; try again later.",
    ErrorCode.NODE_SHUTDOWN: "The node is shutting down.",
    ErrorCode.NODE_KEY_MISMATCH: "Client side: the node's identity key differs from the pinned "
    "one. Refused; investigate before re-pinning.",
    ErrorCode.CONNECTION_LOST: "Client side: the connection closed before the reply arrived.",
    ErrorCode.TIMEOUT: "Client side: no reply within the call timeout.",
    ErrorCode.METHOD_UNKNOWN: "No such method in the schema.",
    ErrorCode.PARAMS_INVALID: "Parameters are missing, extra, of the wrong type or out of "
    "bounds; the message names the first offending field.",
    ErrorCode.TOO_MANY_REQUESTS: "Too many requests in flight on this session; wait for "
    "replies (retry_after seconds).",
    ErrorCode.FLOOD_WAIT: "Rate limit hit; retry after retry_after seconds.",
    ErrorCode.INTERNAL: "The node failed to process the request; it was logged. Nothing was "
    "stored unless a later read shows it.",
    ErrorCode.AUTH_REQUIRED: "This method needs a signed-in device.",
    ErrorCode.ADMIN_ONLY: "This method is only available on the node's admin socket.",
    ErrorCode.ALREADY_AUTHORIZED: "This session is already signed in.",
    ErrorCode.NAME_INVALID: "User names are 3-32 characters of a-z, 0-9 and _.",
    ErrorCode.NAME_TAKEN: "That user name is taken on this node (names are case-insensitive).",
    ErrorCode.USER_NOT_FOUND: "No such user on this node.",
    ErrorCode.USER_BANNED: "The user is banned from this node; its sessions are closed.",
    ErrorCode.REGISTRATION_CLOSED: "This node does not accept sign-ups (policy `closed`, or "
    "`invite` without a token).",
    ErrorCode.INVITE_INVALID: "The invite token is unknown, used up or expired.",
    ErrorCode.CODE_INVALID: "The login code is wrong.",
    ErrorCode.CODE_EXPIRED: "No valid login code: expired, used, or too many wrong attempts; "
    "request a new one.",
    ErrorCode.DELIVERY_FAILED: "The node could not deliver the login code (its code delivery "
    "failed); nothing was sent.",
    ErrorCode.PASSWORD_REQUIRED: "The account has a password (second factor); sign in with it.",
    ErrorCode.PASSWORD_INVALID: "The password is wrong.",
    ErrorCode.SIGNATURE_INVALID: "The device signature over this session's transcript does not "
    "verify.",
    ErrorCode.DEVICE_UNKNOWN: "No device with this key is registered here; sign in with a code.",
    ErrorCode.DEVICE_REVOKED: "This device was logged out; sign in again with a code.",
    ErrorCode.DEVICE_NOT_FOUND: "No such device among the caller's devices.",
    ErrorCode.DEVICE_KEY_IN_USE: "That device key is already registered.",
    ErrorCode.SESSION_REVOKED: "The session's device was revoked (close reason).",
}


# WebSocket close codes for the reasons a session is closed (4000-4999 are application codes).
CLOSE_CODES: dict[ErrorCode, int] = {
    ErrorCode.TEXT_FRAME: 1003,
    ErrorCode.FRAME_TOO_BIG: 1009,
    ErrorCode.NODE_SHUTDOWN: 1001,
    ErrorCode.HANDSHAKE_FAILED: 4001,
    ErrorCode.HANDSHAKE_TIMEOUT: 4002,
    ErrorCode.BAD_SEAL: 4003,
    ErrorCode.IDLE_TIMEOUT: 4004,
    ErrorCode.TOO_MANY_SESSIONS: 4005,
    ErrorCode.VERSION_UNSUPPORTED: 4006,
    ErrorCode.SESSION_REVOKED: 4007,
    ErrorCode.USER_BANNED: 4008,
}


class RpcError(Exception):
    """An error with a stable code, raised by services and re-raised by the SDK."""

    def __init__(self, code: ErrorCode | str, message: str = "", retry_after: float | None = None):
        self.code = str(code)
        if not message and _known(code):
            message = DESCRIPTIONS.get(ErrorCode(code), "")
        self.message = message
        self.retry_after = retry_after
        super().__init__(f"{self.code}: {self.message}" if self.message else self.code)

    def to_wire(self) -> dict[str, object]:
        e: dict[str, object] = {"code": self.code, "message": self.message}
        if self.retry_after is not None:
            e["retry_after"] = self.retry_after
        return e


def _known(code: ErrorCode | str) -> bool:
    return code in ErrorCode.__members__


def check_descriptions() -> list[str]:
    """Codes that lack documentation (a test keeps this empty)."""
    return [c for c in ErrorCode if c not in DESCRIPTIONS]
