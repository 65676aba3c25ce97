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
    FRAME_FLOOD = "FRAME_FLOOD"
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
    # local: what the CLI reports (with --json) for problems on this side; never on the wire
    USAGE = "USAGE"
    CONFIG_INVALID = "CONFIG_INVALID"
    DATABASE_ERROR = "DATABASE_ERROR"
    PROFILE_INVALID = "PROFILE_INVALID"
    URL_INVALID = "URL_INVALID"
    FILE_ERROR = "FILE_ERROR"
    NO_NODE_RUNNING = "NO_NODE_RUNNING"
    CHAIN_BROKEN = "CHAIN_BROKEN"
    PASSWORD_NOT_SET = "PASSWORD_NOT_SET"
    BACKUP_INVALID = "BACKUP_INVALID"
    LOCAL_ERROR = "LOCAL_ERROR"
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
    # chats
    CHAT_NOT_FOUND = "CHAT_NOT_FOUND"
    NOT_A_MEMBER = "NOT_A_MEMBER"
    CHAT_WRITE_FORBIDDEN = "CHAT_WRITE_FORBIDDEN"
    CHAT_ADMIN_REQUIRED = "CHAT_ADMIN_REQUIRED"
    CHAT_OWNER_REQUIRED = "CHAT_OWNER_REQUIRED"
    MESSAGE_NOT_FOUND = "MESSAGE_NOT_FOUND"
    MESSAGE_NOT_EDITABLE = "MESSAGE_NOT_EDITABLE"
    MESSAGE_EMPTY = "MESSAGE_EMPTY"
    EDIT_WINDOW_EXPIRED = "EDIT_WINDOW_EXPIRED"
    MESSAGE_DELETE_FORBIDDEN = "MESSAGE_DELETE_FORBIDDEN"
    USER_BANNED_IN_CHAT = "USER_BANNED_IN_CHAT"
    ALREADY_MEMBER = "ALREADY_MEMBER"
    CHAT_TOO_BIG = "CHAT_TOO_BIG"
    CHAT_INVITE_INVALID = "CHAT_INVITE_INVALID"
    PEER_INVALID = "PEER_INVALID"
    CANNOT_LEAVE_PRIVATE = "CANNOT_LEAVE_PRIVATE"
    OWNER_CANNOT_LEAVE = "OWNER_CANNOT_LEAVE"
    SEARCH_QUERY_EMPTY = "SEARCH_QUERY_EMPTY"
    # media
    UPLOAD_NOT_FOUND = "UPLOAD_NOT_FOUND"
    PART_TOO_BIG = "PART_TOO_BIG"
    PART_INVALID = "PART_INVALID"
    PART_MISSING = "PART_MISSING"
    CHECKSUM_MISMATCH = "CHECKSUM_MISMATCH"
    FILE_TOO_BIG = "FILE_TOO_BIG"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    MEDIA_NOT_FOUND = "MEDIA_NOT_FOUND"
    MEDIA_FORBIDDEN = "MEDIA_FORBIDDEN"
    MEDIA_FETCHING = "MEDIA_FETCHING"
    DISK_FULL = "DISK_FULL"
    # federation
    FEDERATION_OFF = "FEDERATION_OFF"
    PEER_UNKNOWN = "PEER_UNKNOWN"
    PEER_PENDING = "PEER_PENDING"
    PEER_BLOCKED = "PEER_BLOCKED"
    PEER_UNREACHABLE = "PEER_UNREACHABLE"
    NOT_A_REPLICA = "NOT_A_REPLICA"
    EVENT_INVALID = "EVENT_INVALID"
    # secret chats
    SECRET_KEYS_INVALID = "SECRET_KEYS_INVALID"
    SECRET_DEVICE_GONE = "SECRET_DEVICE_GONE"
    SECRET_QUEUE_FULL = "SECRET_QUEUE_FULL"
    SECRET_NO_ROUTE = "SECRET_NO_ROUTE"
    SECRET_RELAY_REFUSED = "SECRET_RELAY_REFUSED"
    # push notifications
    PUSH_URL_INVALID = "PUSH_URL_INVALID"
    PUSH_KEY_INVALID = "PUSH_KEY_INVALID"
    PUSH_TOO_MANY = "PUSH_TOO_MANY"
    PUSH_NOT_FOUND = "PUSH_NOT_FOUND"
    PUSH_PAYLOAD_INVALID = "PUSH_PAYLOAD_INVALID"  # local: `fedgram client push open`


DESCRIPTIONS: dict[ErrorCode, str] = {
    ErrorCode.BAD_FRAME: "The frame could not be decoded as hardened CBOR (depth, indefinite "
    "lengths, duplicate keys, forbidden tags) or is not a map.",
    ErrorCode.BAD_REQUEST: "The frame decoded but is not a request envelope "
    "({id: int, m: str, p: map}).",
    ErrorCode.FRAME_TOO_BIG: "A WebSocket message exceeded the node's frame cap (close 1009).",
    ErrorCode.FRAME_FLOOD: "Too many WebSocket frames (close 1008): a message in more than "
    "1024 fragments (8 before the handshake completes), or more than 64 frames or 16 KiB "
    "before the handshake completes. Send each message whole.",
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
    ErrorCode.USAGE: "CLI: the command line is wrong (unknown option, missing argument, bad "
    "value); `--help` shows the usage.",
    ErrorCode.CONFIG_INVALID: "CLI: the node's configuration or data folder cannot be used; "
    "the message names the file and key.",
    ErrorCode.DATABASE_ERROR: "CLI: the node's database cannot be opened or is damaged.",
    ErrorCode.PROFILE_INVALID: "CLI: the client profile folder cannot be read or written, or "
    "a file in it is damaged.",
    ErrorCode.URL_INVALID: "CLI: a node URL that cannot be used (scheme, host, port).",
    ErrorCode.FILE_ERROR: "CLI: a local file or folder cannot be read or written.",
    ErrorCode.NO_NODE_RUNNING: "CLI: no node is running on the data folder.",
    ErrorCode.CHAIN_BROKEN: "CLI: a chat log failed verification (chain, signature or "
    "content hash).",
    ErrorCode.PASSWORD_NOT_SET: "CLI: the account has no password to change or remove.",
    ErrorCode.BACKUP_INVALID: "CLI: a backup cannot be made or restored: the archive is "
    "damaged, truncated, foreign or newer, or the target folder is in use.",
    ErrorCode.LOCAL_ERROR: "CLI: another problem on this side; the message says what to do.",
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
    ErrorCode.CHAT_NOT_FOUND: "No such chat on this node (or the caller may not know of it).",
    ErrorCode.NOT_A_MEMBER: "The caller is not a member of this chat.",
    ErrorCode.CHAT_WRITE_FORBIDDEN: "The caller may not post here (a channel: only admins post).",
    ErrorCode.CHAT_ADMIN_REQUIRED: "Only the chat's owner or admins may do this.",
    ErrorCode.CHAT_OWNER_REQUIRED: "Only the chat's owner may do this.",
    ErrorCode.MESSAGE_NOT_FOUND: "No message with this seq in the chat (or it was deleted).",
    ErrorCode.MESSAGE_NOT_EDITABLE: "Only the sender may edit a message, and only text messages.",
    ErrorCode.MESSAGE_EMPTY: "A message needs text or media.",
    ErrorCode.EDIT_WINDOW_EXPIRED: "The message is older than the node's edit window.",
    ErrorCode.MESSAGE_DELETE_FORBIDDEN: "Only the sender or a chat admin may delete a message "
    "for everyone.",
    ErrorCode.USER_BANNED_IN_CHAT: "The user is banned from this chat.",
    ErrorCode.ALREADY_MEMBER: "The user is already a member of this chat.",
    ErrorCode.CHAT_TOO_BIG: "The chat is at its member limit.",
    ErrorCode.CHAT_INVITE_INVALID: "The chat invite link is unknown, revoked, used up or expired.",
    ErrorCode.PEER_INVALID: "The other party of a private chat is unknown, yourself, or on "
    "another node (federation is not enabled on this node).",
    ErrorCode.CANNOT_LEAVE_PRIVATE: "A private chat cannot be left; delete it for yourself "
    "instead.",
    ErrorCode.OWNER_CANNOT_LEAVE: "The owner must hand ownership to another member first.",
    ErrorCode.SEARCH_QUERY_EMPTY: "The search query has no words.",
    ErrorCode.UPLOAD_NOT_FOUND: "No such upload in progress for this user (finished, expired "
    "or never started).",
    ErrorCode.PART_TOO_BIG: "A part is larger than the node's part size limit.",
    ErrorCode.PART_INVALID: "A part index is out of range, a non-last part is not full size, "
    "the part count or the parts' sizes do not match the declared size, or a part arrived "
    "while its upload is being completed.",
    ErrorCode.PART_MISSING: "The upload lacks parts; the message lists the missing indexes.",
    ErrorCode.CHECKSUM_MISMATCH: "The assembled file's size or SHA-256 differs from the one "
    "declared; nothing was stored.",
    ErrorCode.FILE_TOO_BIG: "The file is larger than the node's file size limit.",
    ErrorCode.QUOTA_EXCEEDED: "The user's media quota would be exceeded (parts of unfinished "
    "uploads count), or the user has too many uploads in progress (1000).",
    ErrorCode.MEDIA_NOT_FOUND: "No such media.",
    ErrorCode.MEDIA_FORBIDDEN: "The caller may not read this media (not its uploader and in no "
    "chat that references it).",
    ErrorCode.MEDIA_FETCHING: "The file is on another node and this node is still fetching "
    "it (it waited 20 s); retry after retry_after seconds.",
    ErrorCode.DISK_FULL: "The node's disk is full; nothing partial was kept. Try again later.",
    ErrorCode.FEDERATION_OFF: 'This node does not federate ([federation] peering = "off", or '
    "it runs without federation).",
    ErrorCode.PEER_UNKNOWN: "No known node matches that id, id prefix or name.",
    ErrorCode.PEER_PENDING: "This node has not approved the calling node as a peer yet (an "
    "admin runs `fedgram peer approve`).",
    ErrorCode.PEER_BLOCKED: "This node refuses the calling node.",
    ErrorCode.PEER_UNREACHABLE: "The node that holds this (a user, a chat's home) cannot be "
    "reached now; the message says why. Try again later.",
    ErrorCode.NOT_A_REPLICA: "The calling node has no members in that chat (or the user is not "
    "one of its users), so it may not read or post there.",
    ErrorCode.EVENT_INVALID: "An event from a peer failed verification (signature, hash chain, "
    "order or content); nothing of it was stored.",
    ErrorCode.SECRET_KEYS_INVALID: "The signed prekey's signature does not verify with the "
    "calling device's key (over b'fedgram-spk\\x00' + id as 8 bytes big-endian + key).",
    ErrorCode.SECRET_DEVICE_GONE: "No such live device of that user (unknown, or revoked): "
    "the secret chat with it is over.",
    ErrorCode.SECRET_QUEUE_FULL: "The recipient device's secret queue is at the node's "
    "bound ([secret] queue_max); try again after it fetched and acknowledged.",
    ErrorCode.SECRET_NO_ROUTE: "No route to the recipient's node (no link, no peer linked to "
    "it, or the hop limit was reached).",
    ErrorCode.SECRET_RELAY_REFUSED: "The relaying node does not carry secret envelopes for "
    "the caller ([secret] relay off, or its relay_max_bytes for today used up).",
    ErrorCode.PUSH_URL_INVALID: "A push endpoint must be an http:// or https:// URL with a "
    "host, at most 2048 ASCII characters (percent-encoded, punycode hosts), without spaces "
    "or control characters.",
    ErrorCode.PUSH_KEY_INVALID: "A push key must be the device's X25519 public key: 32 bytes "
    "(not a low-order point).",
    ErrorCode.PUSH_TOO_MANY: "The account has as many push endpoints as the node allows "
    "([push] max_per_user); remove one first.",
    ErrorCode.PUSH_NOT_FOUND: "The caller has no push endpoint with that id.",
    ErrorCode.PUSH_PAYLOAD_INVALID: "(local) `fedgram client push open`: the body does not "
    "open with this profile's push key (meant for another device, or damaged), or is not a "
    "Fedgram notification.",
}


# WebSocket close codes for the reasons a session is closed (4000-4999 are application codes).
CLOSE_CODES: dict[ErrorCode, int] = {
    ErrorCode.TEXT_FRAME: 1003,
    ErrorCode.FRAME_TOO_BIG: 1009,
    ErrorCode.FRAME_FLOOD: 1008,
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
