"""The operator's admin methods of issue 15 (merged into METHODS by api.py): password
reset, live sessions, purging a chat, deleting one media file. Admin socket only."""

from __future__ import annotations

from .api_chats import CHAT_ID
from .api_media import MEDIA_ID, SHA256_HEX
from .errors import ErrorCode as E
from .schema import Bool, Field, Float, Int, List, Method, Nullable, Str, Struct

_NAME = Str(3, 32, r"[A-Za-z0-9_]+")

SessionRow = Struct(
    {
        "session_id": Field(Int()),
        "role": Field(Str(), "client, or node (a peer's link)"),
        "user": Field(Nullable(Str()), "signed-in user (name@node); null before sign-in"),
        "device_id": Field(Nullable(Int())),
        "device_name": Field(Nullable(Str())),
        "remote": Field(Str(), "ip:port the connection comes from"),
        "ip": Field(Str()),
        "since": Field(Nullable(Float()), "when it connected (Unix seconds)"),
        "node": Field(Nullable(Str()), "role node: the peer's node id"),
    },
    name="SessionRow",
)

ADMIN_METHODS: list[Method] = [
    Method(
        "admin.userPasswordReset",
        "Remove a user's password (the second factor at sign-in), for someone who forgot "
        "it; pending login codes are voided. Their devices stay signed in unless logout "
        "(a taken-over account): then every device is revoked and its sessions closed.",
        {"name": Field(_NAME), "logout": Field(Bool(), "also revoke every device", False)},
        Struct(
            {
                "name": Field(Str()),
                "had_password": Field(Bool()),
                "revoked": Field(Int(), "devices revoked"),
            },
            name="PasswordReset",
        ),
        (E.USER_NOT_FOUND,),
        access="admin",
    ),
    Method(
        "admin.sessionList",
        "The node's live sessions (clients and peer links), optionally of one user.",
        {"user": Field(_NAME, "only this user's sessions", False)},
        Struct({"sessions": Field(List(SessionRow))}, name="SessionList"),
        (E.USER_NOT_FOUND,),
        access="admin",
    ),
    Method(
        "admin.chatPurge",
        "Remove a chat and everything of it from this node (log, content, members, "
        "invites, media only it carried); local members get chat.left (reason purged). A "
        "replica here is first left through its home by each local member (PEER_UNREACHABLE "
        "and nothing purged if the home cannot be reached). Other nodes' copies stay.",
        {"chat": Field(CHAT_ID)},
        Struct(
            {
                "chat": Field(Str()),
                "home": Field(Str(), "node id of the chat's home"),
                "left_home": Field(Int(), "local members who left through the home first"),
                "events": Field(Int(), "events removed"),
                "members": Field(Int(), "local and remote members it had here"),
                "media": Field(Int(), "media records removed with it"),
            },
            name="ChatPurged",
        ),
        (E.CHAT_NOT_FOUND, E.PEER_UNREACHABLE, E.FEDERATION_OFF),
        access="admin",
    ),
    Method(
        "admin.mediaDelete",
        "Erase one file from this node, named by a media id or its SHA-256: every record "
        "of those bytes and the bytes on disk. Messages carrying it then show the "
        "attachment without a media id (gone).",
        {
            "media_id": Field(MEDIA_ID, required=False),
            "sha256": Field(SHA256_HEX, "hex", required=False),
        },
        Struct(
            {
                "sha256": Field(Str()),
                "size": Field(Int()),
                "records": Field(Int(), "media records removed"),
                "messages": Field(Int(), "messages that carried it"),
                "freed": Field(Int(), "bytes removed from disk"),
            },
            name="MediaDeleted",
        ),
        (E.MEDIA_NOT_FOUND,),
        access="admin",
    ),
]
