"""THE API schema: every method, its parameters, result, errors and access, every update.

Validation (gateway), dispatch (every method needs a handler, checked at start-up) and the
reference in docs/api.md (``fedgram dev api-docs``) are all derived from this module.
"""

from __future__ import annotations

from .api_admin import ADMIN_METHODS
from .api_chats import CHAT_METHODS, CHAT_UPDATES
from .api_fed import DIRECTORY_METHODS, FED_METHODS
from .api_media import MEDIA_METHODS
from .api_push import PUSH_METHODS, PushStats
from .api_secret import SECRET_METHODS, SECRET_UPDATES
from .errors import ErrorCode as E
from .schema import (
    INT64,
    Bool,
    Bytes,
    Field,
    Float,
    Int,
    List,
    Method,
    Nullable,
    Str,
    Struct,
    Update,
)

# Errors any method may answer; listed once in the docs instead of on every method.
COMMON_ERRORS = (
    E.PARAMS_INVALID,
    E.TOO_MANY_REQUESTS,
    E.FLOOD_WAIT,
    E.INTERNAL,
)

NodeInfo = Struct(
    {
        "version": Field(Str(), "software version"),
        "protocol": Field(Int(), "wire protocol version"),
        "node_id": Field(Str(), "fingerprint of the node's Ed25519 identity key"),
        "name": Field(Str(), "the node's human name"),
        "time": Field(Float(), "node clock, Unix seconds"),
    },
    name="NodeInfo",
)

NodeStatus = Struct(
    {
        "version": Field(Str(), "software version"),
        "node_id": Field(Str(), "identity fingerprint"),
        "name": Field(Str(), "node name"),
        "listen": Field(Str(), "host:port the gateway listens on"),
        "url": Field(Str(), "ws:// URL clients connect to"),
        "uptime": Field(Float(), "seconds since start"),
        "sessions": Field(Int(), "open client/peer sessions"),
        "db_bytes": Field(Int(), "database + WAL size on disk"),
        "data_dir": Field(Str(), "data folder"),
        "pid": Field(Int(), "node process id"),
        "push": Field(PushStats, "push notifications since start", required=False),
    },
    name="NodeStatus",
)

NAME = Str(3, 32, r"[A-Za-z0-9_]+")
DISPLAY_NAME = Str(0, 64)
ABOUT = Str(0, 256)
DEVICE_KEY = Bytes(32, 32)
SIGNATURE = Bytes(64, 64)
PASSWORD = Str(1, 256)
DEVICE_ID = Int(1)

Authorization = Struct(
    {
        "user_id": Field(Int()),
        "name": Field(Str(), "canonical (lower-case) user name"),
        "address": Field(Str(), "name@node (display form, see Addresses)"),
        "display_name": Field(Str()),
        "device_id": Field(Int(), "this device"),
        "node_id": Field(Str()),
    },
    name="Authorization",
)

Profile = Struct(
    {
        "user_id": Field(Int()),
        "name": Field(Str()),
        "address": Field(Str()),
        "display_name": Field(Str()),
        "about": Field(Str(), "a line about oneself"),
        "has_password": Field(Bool()),
        "is_admin": Field(Bool()),
        "created": Field(Float()),
    },
    name="Profile",
)

Device = Struct(
    {
        "device_id": Field(Int()),
        "name": Field(Str()),
        "created": Field(Float()),
        "last_seen": Field(Float()),
        "current": Field(Bool(), "the calling device"),
        "online": Field(Bool(), "has an open session now"),
    },
    name="Device",
)

UserRow = Struct(
    {
        "user_id": Field(Int()),
        "name": Field(Str()),
        "address": Field(Str(), "name@node (display form)"),
        "display_name": Field(Str()),
        "is_admin": Field(Bool()),
        "banned": Field(Bool()),
        "devices": Field(Int(), "active (not revoked) devices"),
        "created": Field(Float()),
        "last_seen": Field(
            Nullable(Float()),
            "when a device of theirs was last signed in (to the minute); null: never",
        ),
        "online": Field(Bool(), "has a signed-in session now"),
    },
    name="User",
)

_DEVICE_SIGNIN = {
    "device_key": Field(DEVICE_KEY, "the new device's Ed25519 public key"),
    "device_name": Field(Str(1, 64), "e.g. 'laptop'"),
    "sig": Field(SIGNATURE, "device signature over this session's transcript hash"),
}

_METHODS = [
    Method(
        "auth.requestCode",
        "Send a one-time login code for NAME through the node's code delivery (log, file, "
        "command or webhook). Codes expire and allow a few wrong attempts. On closed and "
        "invite nodes the answer is the same whether or not NAME exists or is banned (a code "
        "is sent only to an existing, unbanned user); USER_NOT_FOUND and USER_BANNED are "
        "answered on open nodes only.",
        {"name": Field(NAME)},
        Struct(
            {
                "expires_in": Field(Int(), "seconds"),
                "length": Field(Int(), "digits"),
                "via": Field(Str(), "delivery kind"),
            },
            name="CodeSent",
        ),
        (E.USER_NOT_FOUND, E.USER_BANNED, E.DELIVERY_FAILED, E.ALREADY_AUTHORIZED),
        access="public",
        rate_group="auth.code",
    ),
    Method(
        "auth.signIn",
        "Sign in with a login code, binding a new device key (generated on the client, never "
        "sent anywhere else). The session is signed in as that device. On closed and invite "
        "nodes an unknown or banned name answers exactly like a wrong code.",
        {
            "name": Field(NAME),
            "code": Field(Str(4, 12, r"[0-9]+")),
            "password": Field(PASSWORD, "second factor, if the account has one", required=False),
            **_DEVICE_SIGNIN,
        },
        Authorization,
        (
            E.USER_NOT_FOUND,
            E.USER_BANNED,
            E.CODE_INVALID,
            E.CODE_EXPIRED,
            E.PASSWORD_REQUIRED,
            E.PASSWORD_INVALID,
            E.SIGNATURE_INVALID,
            E.DEVICE_KEY_IN_USE,
            E.ALREADY_AUTHORIZED,
        ),
        access="public",
        rate_group="auth.signin",
    ),
    Method(
        "auth.signUp",
        "Create an account (policy `open`, or `invite` with a token) and sign in its first device.",
        {
            "name": Field(NAME),
            "display_name": Field(DISPLAY_NAME, required=False),
            "invite": Field(Str(8, 128), "invite token (policy `invite`)", required=False),
            **_DEVICE_SIGNIN,
        },
        Authorization,
        (
            E.REGISTRATION_CLOSED,
            E.INVITE_INVALID,
            E.NAME_INVALID,
            E.NAME_TAKEN,
            E.SIGNATURE_INVALID,
            E.DEVICE_KEY_IN_USE,
            E.ALREADY_AUTHORIZED,
        ),
        access="public",
        rate_group="auth.signup",
    ),
    Method(
        "auth.authorize",
        "Resume as an existing device: sign this session's transcript hash with the device "
        "key (a signature from another session does not verify here).",
        {"device_key": Field(DEVICE_KEY), "sig": Field(SIGNATURE)},
        Authorization,
        (
            E.DEVICE_UNKNOWN,
            E.DEVICE_REVOKED,
            E.USER_BANNED,
            E.SIGNATURE_INVALID,
            E.ALREADY_AUTHORIZED,
        ),
        access="public",
        rate_group="auth.authorize",
    ),
    Method(
        "auth.logOut",
        "Revoke the calling device and close its sessions.",
        {},
        Struct({}),
    ),
    Method("account.getProfile", "The caller's account.", {}, Profile),
    Method(
        "account.updateProfile",
        "Change the display name and/or the about line (what is omitted stays).",
        {
            "display_name": Field(DISPLAY_NAME, required=False),
            "about": Field(ABOUT, required=False),
        },
        Profile,
    ),
    Method(
        "account.setPassword",
        "Set, change or remove (new omitted) the account password, the second factor asked "
        "at sign-in. Stored only as an argon2id hash.",
        {"current": Field(PASSWORD, required=False), "new": Field(PASSWORD, required=False)},
        Profile,
        (E.PASSWORD_REQUIRED, E.PASSWORD_INVALID),
    ),
    Method(
        "account.devices",
        "The caller's active devices.",
        {},
        Struct({"devices": Field(List(Device, 10_000))}),
    ),
    Method(
        "account.revokeDevice",
        "Log out one of the caller's devices; its live sessions are closed at once.",
        {"device_id": Field(DEVICE_ID)},
        Struct({"revoked": Field(Int())}),
        (E.DEVICE_NOT_FOUND,),
    ),
    Method(
        "account.revokeOtherDevices",
        "Log out every device of the caller but this one.",
        {},
        Struct({"revoked": Field(Int())}),
    ),
    Method(
        "admin.userAdd",
        "Create a user (any registration policy).",
        {
            "name": Field(NAME),
            "display_name": Field(DISPLAY_NAME, required=False),
            "admin": Field(Bool(), required=False),
        },
        UserRow,
        (E.NAME_INVALID, E.NAME_TAKEN),
        access="admin",
    ),
    Method(
        "admin.userList",
        "All users.",
        {},
        Struct({"users": Field(List(UserRow, 10**7))}),
        access="admin",
    ),
    Method(
        "admin.userCode",
        "Issue a fresh login code for a user and return it (the admin acting as the SMS).",
        {"name": Field(NAME)},
        Struct({"code": Field(Str()), "expires_in": Field(Int())}),
        (E.USER_NOT_FOUND,),
        access="admin",
    ),
    Method(
        "admin.userDevices",
        "A user's active devices.",
        {"name": Field(NAME)},
        Struct({"devices": Field(List(Device, 10_000))}),
        (E.USER_NOT_FOUND,),
        access="admin",
    ),
    Method(
        "admin.userLogout",
        "Revoke one device of a user, or all of them.",
        {"name": Field(NAME), "device_id": Field(DEVICE_ID, required=False)},
        Struct({"revoked": Field(Int())}),
        (E.USER_NOT_FOUND, E.DEVICE_NOT_FOUND),
        access="admin",
    ),
    Method(
        "admin.userBan",
        "Ban a user: sessions closed, sign-in refused.",
        {"name": Field(NAME)},
        UserRow,
        (E.USER_NOT_FOUND,),
        access="admin",
    ),
    Method(
        "admin.userUnban",
        "Lift a ban.",
        {"name": Field(NAME)},
        UserRow,
        (E.USER_NOT_FOUND,),
        access="admin",
    ),
    Method(
        "admin.userRemove",
        "Delete a user and its devices; sessions closed.",
        {"name": Field(NAME)},
        Struct({"removed": Field(Str())}),
        (E.USER_NOT_FOUND,),
        access="admin",
    ),
    Method(
        "admin.inviteCreate",
        "Create an invite token for sign-up under policy `invite`.",
        {
            "uses": Field(Int(1, 1_000_000), "default 1", required=False),
            "expires_in": Field(
                Nullable(Int(60, 10 * 365 * 86400)), "seconds; null = never", required=False
            ),
        },
        Struct(
            {"token": Field(Str()), "uses": Field(Int()), "expires": Field(Nullable(Float()))},
            name="Invite",
        ),
        access="admin",
    ),
    Method(
        "system.ping",
        "Round trip to the node; answers with the same ping_id.",
        {"ping_id": Field(INT64, "echoed back", required=False)},
        Struct({"ping_id": Field(INT64, required=False), "time": Field(Float())}, name="Pong"),
        access="public",
        rate_group="system",
    ),
    Method(
        "system.info",
        "What node this is: version, protocol, identity and name.",
        {},
        NodeInfo,
        access="public",
        rate_group="system",
    ),
    Method(
        "admin.status",
        "Node status for `fedgram status` (admin socket only).",
        {},
        NodeStatus,
        access="admin",
    ),
]

METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        *_METHODS,
        *CHAT_METHODS,
        *MEDIA_METHODS,
        *SECRET_METHODS,
        *PUSH_METHODS,
        *DIRECTORY_METHODS,
        *FED_METHODS,
        *ADMIN_METHODS,
    ]
}

_UPDATES = [
    Update(
        "account.newSignIn",
        "Another device of this account just signed in (shown to the other devices).",
        {"device_id": Field(Int()), "device_name": Field(Str()), "time": Field(Float())},
    ),
    Update(
        "session.behind",
        "This session's outgoing queue overflowed; some pushes were dropped. Re-sync with "
        "updates.getDifference.",
        {},
    ),
]

UPDATES: dict[str, Update] = {u.name: u for u in [*_UPDATES, *CHAT_UPDATES, *SECRET_UPDATES]}
