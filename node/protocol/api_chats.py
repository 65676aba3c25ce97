"""The chat, message and sync methods of the API schema (merged into METHODS by api.py)."""

from __future__ import annotations

from .errors import ErrorCode as E
from .schema import (
    INT64,
    AnyValue,
    Bool,
    DictOf,
    Enum,
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

CHAT_ID = Str(1, 64, r"[a-z0-9]+")
SEQ = Int(1)
USER_REF = Str(3, 96, r"@?[A-Za-z0-9_]+(@[A-Za-z0-9_.-]+)?")
TEXT = Str(0, 4096)
TITLE = Str(1, 128)
ABOUT = Str(0, 1024)
LIMIT = Int(1, 100)
RANDOM_ID = INT64  # client-chosen; stored as SQLite's signed 64-bit INTEGER
MAX_MEMBERS_PER_CALL = 20_000

MediaRef = Struct(
    {
        "media_id": Field(Str(1, 128), "from media.complete"),
        "kind": Field(Enum(("photo", "video", "document", "voice"))),
    },
    name="MediaRef",
)

Event = Struct(
    {
        "chat": Field(Str()),
        "seq": Field(Int(), "position in the chat's log; the message id"),
        "kind": Field(
            Str(),
            "create, message, edit, delete, pin, unpin, title, about, join, leave, add, "
            "remove, ban, unban, role",
        ),
        "sender": Field(
            Nullable(Str()), "name@node of who caused it (display form; signed: name@<node id>)"
        ),
        "ts": Field(Float(), "home node clock, Unix seconds"),
        "body": Field(
            AnyValue("map"),
            "message: {text, reply_to?, fwd?: {chat, seq, sender, ts}, media?: [{media_id, "
            "kind, size, mime, name, sha256, width?, height?}]}; edit: {target, text, media?, "
            "fwd?}; delete/pin/unpin: {target}; title: {title}; about: {about}; join/leave/remove/"
            "ban/unban: {user}; add: {users}; role: {user, role}; create: {kind, title, "
            "about, members?}",
        ),
        "edited": Field(Nullable(Float()), "when the current text was set by an edit"),
        "deleted": Field(Bool(), "deleted for everyone (or for the caller); body is empty"),
    },
    name="Event",
)

Dialog = Struct(
    {
        "id": Field(Str(), "global chat id"),
        "kind": Field(Enum(("private", "group", "channel"))),
        "title": Field(Str(), "for private chats: the other user's display name or address"),
        "about": Field(Str()),
        "peer": Field(Nullable(Str()), "private chats: the other user's name@node"),
        "home": Field(Str(), "node id of the chat's home (sequencer) node"),
        "role": Field(Enum(("owner", "admin", "member"))),
        "members": Field(Int()),
        "last_seq": Field(Int()),
        "read_seq": Field(Int(), "the caller's read position"),
        "unread": Field(Int(), "messages from others after read_seq (capped at 9999)"),
        "read_outbox": Field(
            Int(),
            "how far the caller's messages are read: private chats the other user's "
            "read_seq, groups and channels the highest read_seq of anyone but the caller",
        ),
        "pinned_seq": Field(Nullable(Int()), "the chat's pinned message"),
        "pinned": Field(Bool(), "dialog pinned in the caller's list"),
        "muted": Field(Bool(), "muted now (a mute for a while ends by itself)"),
        "muted_until": Field(Nullable(Float()), "when a timed mute ends (null: not timed)"),
        "archived": Field(Bool()),
        "last": Field(Nullable(Event), "last visible event"),
    },
    name="Dialog",
)

MemberRow = Struct(
    {
        "user": Field(Str(), "name@node"),
        "display_name": Field(Str()),
        "role": Field(Enum(("owner", "admin", "member"))),
        "state": Field(Enum(("member", "left", "kicked", "banned"))),
    },
    name="Member",
)

UserUpdate = Struct(
    {
        "pts": Field(Int(), "position in the caller's update log"),
        "kind": Field(
            Str(),
            "chat.joined {chat}, chat.left {chat, reason}, chat.read {chat, read_seq}, "
            "dialog.updated {chat, pinned, muted, muted_until, archived}, "
            "message.hidden {chat, seq}",
        ),
        "ts": Field(Float()),
    },
    name="UserUpdate",
)

Reader = Struct(
    {
        "user": Field(Str(), "name@node"),
        "display_name": Field(Str()),
        "read_seq": Field(Int(), "how far they have read"),
    },
    name="Reader",
)

InviteRow = Struct(
    {
        "id": Field(Str(), "names the invite (not usable to join)"),
        "creator": Field(Nullable(Str()), "name@node of the admin who made it"),
        "created": Field(Float()),
        "uses_left": Field(Nullable(Int()), "null: unlimited"),
        "expires": Field(Nullable(Float()), "null: never"),
        "revoked": Field(Bool()),
        "usable": Field(Bool(), "not revoked, used up or expired"),
    },
    name="InviteRow",
)

_SEQ_RESULT = Struct({"seq": Field(Int(), "seq of the event appended")}, name="Appended")
_CHAT_RESULT = Struct({"chat": Field(Dialog)}, name="ChatResult")

_MEMBER_ERRORS = (E.CHAT_NOT_FOUND, E.NOT_A_MEMBER)
_ADMIN_ERRORS = (*_MEMBER_ERRORS, E.CHAT_ADMIN_REQUIRED)

CHAT_METHODS: list[Method] = [
    # --- chats --------------------------------------------------------------------------
    Method(
        "chats.list",
        "The caller's chat list (dialogs): pinned first, then by last activity.",
        {"archived": Field(Bool(), "only archived (true) or only unarchived (false)", False)},
        Struct({"chats": Field(List(Dialog))}, name="Dialogs"),
    ),
    Method(
        "chats.get",
        "One dialog of the caller.",
        {"chat": Field(CHAT_ID)},
        _CHAT_RESULT,
        _MEMBER_ERRORS,
    ),
    Method(
        "chats.startPrivate",
        "The private chat with a user, created on first use; exactly one exists per pair.",
        {"user": Field(USER_REF, "name, @name, name@node or name@<node id>")},
        Struct(
            {"chat": Field(Dialog), "created": Field(Bool())},
            name="PrivateChat",
        ),
        (E.PEER_INVALID,),
    ),
    Method(
        "chats.createGroup",
        "Create a group; the caller is its owner. Members post; owner/admins manage.",
        {
            "title": Field(TITLE),
            "about": Field(ABOUT, required=False),
            "members": Field(List(USER_REF, MAX_MEMBERS_PER_CALL), "initial members", False),
        },
        _CHAT_RESULT,
        (E.USER_NOT_FOUND, E.CHAT_TOO_BIG),
    ),
    Method(
        "chats.createChannel",
        "Create a channel: admins post, subscribers read; no subscriber limit.",
        {"title": Field(TITLE), "about": Field(ABOUT, required=False)},
        _CHAT_RESULT,
    ),
    Method(
        "chats.members",
        "Members of a chat, paged (owner first, then admins).",
        {
            "chat": Field(CHAT_ID),
            "offset": Field(Int(0), required=False),
            "limit": Field(Int(1, 1000), required=False),
            "state": Field(Enum(("member", "banned")), "default member", False),
        },
        Struct(
            {"members": Field(List(MemberRow)), "count": Field(Int())},
            name="Members",
        ),
        _MEMBER_ERRORS,
    ),
    Method(
        "chats.addMembers",
        "Add users to a group (any member) or channel (admins). Banned users must be "
        "unbanned first.",
        {"chat": Field(CHAT_ID), "users": Field(List(USER_REF, MAX_MEMBERS_PER_CALL))},
        Struct(
            {"seq": Field(Nullable(Int()), "the add event; null if all were members")},
            name="Added",
        ),
        (
            *_MEMBER_ERRORS,
            E.CHAT_ADMIN_REQUIRED,
            E.USER_NOT_FOUND,
            E.USER_BANNED_IN_CHAT,
            E.CHAT_TOO_BIG,
        ),
    ),
    Method(
        "chats.kick",
        "Remove a member (admins; only the owner removes admins). With ban: also keep them "
        "from rejoining until unbanned.",
        {
            "chat": Field(CHAT_ID),
            "user": Field(USER_REF),
            "ban": Field(Bool(), required=False),
        },
        _SEQ_RESULT,
        (*_ADMIN_ERRORS, E.USER_NOT_FOUND, E.CHAT_OWNER_REQUIRED),
    ),
    Method(
        "chats.unban",
        "Lift a ban (admins); the user may be added or join again.",
        {"chat": Field(CHAT_ID), "user": Field(USER_REF)},
        _SEQ_RESULT,
        (*_ADMIN_ERRORS, E.USER_NOT_FOUND, E.NOT_A_MEMBER),
    ),
    Method(
        "chats.setRole",
        "Make a member admin or member (owner only); role owner hands ownership over and "
        "makes the caller an admin.",
        {
            "chat": Field(CHAT_ID),
            "user": Field(USER_REF),
            "role": Field(Enum(("owner", "admin", "member"))),
        },
        _SEQ_RESULT,
        (*_ADMIN_ERRORS, E.CHAT_OWNER_REQUIRED, E.USER_NOT_FOUND),
    ),
    Method(
        "chats.leave",
        "Leave a group or channel.",
        {"chat": Field(CHAT_ID)},
        _SEQ_RESULT,
        (*_MEMBER_ERRORS, E.CANNOT_LEAVE_PRIVATE, E.OWNER_CANNOT_LEAVE),
    ),
    Method(
        "chats.edit",
        "Change a group's or channel's title and/or about (admins); one event per change.",
        {
            "chat": Field(CHAT_ID),
            "title": Field(TITLE, required=False),
            "about": Field(ABOUT, required=False),
        },
        Struct({"seqs": Field(List(Int()))}, name="Edited"),
        _ADMIN_ERRORS,
    ),
    Method(
        "chats.createInvite",
        "An invite link token for a group or channel (admins).",
        {
            "chat": Field(CHAT_ID),
            "uses": Field(Int(1, 1_000_000), "how many joins (default unlimited)", False),
            "expires_in": Field(Int(60, 366 * 86400), "seconds (default never)", False),
        },
        Struct({"invite": Field(Str(), "token for chats.join")}, name="Invite"),
        _ADMIN_ERRORS,
    ),
    Method(
        "chats.join",
        "Join a group or channel with an invite token.",
        {"invite": Field(Str(1, 128))},
        Struct({"chat": Field(Dialog), "seq": Field(Int())}, name="Joined"),
        (E.CHAT_INVITE_INVALID, E.USER_BANNED_IN_CHAT, E.ALREADY_MEMBER, E.CHAT_TOO_BIG),
    ),
    Method(
        "chats.updateDialog",
        "The caller's own settings for a chat: pinned in the list, muted, archived. "
        "Announced to the caller's other devices.",
        {
            "chat": Field(CHAT_ID),
            "pinned": Field(Bool(), required=False),
            "muted": Field(Bool(), required=False),
            "mute_for": Field(
                Int(60, 10 * 366 * 86400),
                "with muted true: seconds until the mute ends by itself (default: for good)",
                False,
            ),
            "archived": Field(Bool(), required=False),
        },
        Struct({"pts": Field(Int())}, name="DialogUpdated"),
        _MEMBER_ERRORS,
    ),
    Method(
        "chats.history",
        "A page of a chat's log with edits and deletes applied (edit/delete events are "
        "folded into their targets). Default: the newest page. `before`: older than that "
        "seq; `after`: newer than that seq, oldest first.",
        {
            "chat": Field(CHAT_ID),
            "before": Field(SEQ, required=False),
            "after": Field(Int(0), required=False),
            "limit": Field(LIMIT, "default 50", False),
        },
        Struct(
            {
                "events": Field(List(Event), "in seq order"),
                "last_seq": Field(Int()),
                "read_seq": Field(Int()),
                "read_outbox": Field(Int(), "as in Dialog"),
                "read_by": Field(
                    DictOf(Str(), Int(), 100),
                    "the caller's own messages on this page: seq -> how many others read "
                    "it (capped at 1000)",
                ),
            },
            name="History",
        ),
        _MEMBER_ERRORS,
    ),
    # --- messages -----------------------------------------------------------------------
    Method(
        "messages.send",
        "Post a message. Idempotent: the same (chat, sender, random_id) returns the first "
        "send's seq and stores nothing new. Acknowledged means stored durably.",
        {
            "chat": Field(CHAT_ID),
            "random_id": Field(RANDOM_ID, "client-chosen 64-bit id for idempotent resends"),
            "text": Field(TEXT, "text, or the caption of media", False),
            "reply_to": Field(SEQ, required=False),
            "forward_from": Field(
                Struct({"chat": Field(CHAT_ID), "seq": Field(SEQ)}, name="MessageRef"),
                "copy this message (text and media), recording its origin",
                False,
            ),
            "media": Field(List(MediaRef, 10), "uploaded media to attach", False),
        },
        Struct(
            {
                "seq": Field(
                    Nullable(Int()), "the home node's seq; null while pending (see pending)"
                ),
                "ts": Field(Float()),
                "duplicate": Field(Bool(), "true: a resend of an earlier send"),
                "pending": Field(
                    Bool(),
                    "true: the chat lives on another node; the post is stored durably here "
                    "and queued for it, and its seq arrives as the chat.event push once that "
                    "node sequenced it. false: sequenced (acknowledged by the chat's home).",
                ),
            },
            name="Sent",
        ),
        (
            *_MEMBER_ERRORS,
            E.CHAT_WRITE_FORBIDDEN,
            E.MESSAGE_EMPTY,
            E.MESSAGE_NOT_FOUND,
            E.MEDIA_NOT_FOUND,
            E.MEDIA_FORBIDDEN,
        ),
    ),
    Method(
        "messages.edit",
        "Edit the text (or caption) of one's own message within the node's edit window.",
        {"chat": Field(CHAT_ID), "seq": Field(SEQ), "text": Field(TEXT)},
        _SEQ_RESULT,
        (
            *_MEMBER_ERRORS,
            E.MESSAGE_NOT_FOUND,
            E.MESSAGE_NOT_EDITABLE,
            E.EDIT_WINDOW_EXPIRED,
            E.MESSAGE_EMPTY,
        ),
    ),
    Method(
        "messages.delete",
        "Delete a message for everyone (its sender, or an admin of a group/channel) or only "
        "for the caller (for_everyone false: hidden on all the caller's devices).",
        {
            "chat": Field(CHAT_ID),
            "seq": Field(SEQ),
            "for_everyone": Field(Bool(), "default true", False),
        },
        Struct(
            {
                "seq": Field(Nullable(Int()), "the delete event (for everyone)"),
                "pts": Field(Nullable(Int()), "the caller's update (for me)"),
            },
            name="Deleted",
        ),
        (*_MEMBER_ERRORS, E.MESSAGE_NOT_FOUND, E.MESSAGE_DELETE_FORBIDDEN),
    ),
    Method(
        "messages.pin",
        "Pin a message (admins of groups/channels; either user of a private chat).",
        {"chat": Field(CHAT_ID), "seq": Field(SEQ)},
        _SEQ_RESULT,
        (*_ADMIN_ERRORS, E.MESSAGE_NOT_FOUND),
    ),
    Method(
        "messages.unpin",
        "Unpin the chat's pinned message.",
        {"chat": Field(CHAT_ID)},
        _SEQ_RESULT,
        (*_ADMIN_ERRORS, E.MESSAGE_NOT_FOUND),
    ),
    Method(
        "messages.cancel",
        "Take back a post that is still queued for the chat's home node (sent with "
        "pending: true and not yet forwarded). cancelled: false when it has already left "
        "(it will be sequenced) or was sequenced; MESSAGE_NOT_FOUND when no such post exists.",
        {"chat": Field(CHAT_ID), "random_id": Field(RANDOM_ID)},
        Struct(
            {
                "cancelled": Field(Bool()),
                "seq": Field(Nullable(Int()), "its seq when it was already sequenced"),
            },
            name="Cancelled",
        ),
        (*_MEMBER_ERRORS, E.MESSAGE_NOT_FOUND),
    ),
    Method(
        "messages.read",
        "Mark the chat read up to seq (default: everything). Read positions only move "
        "forward and are announced to the caller's other devices.",
        {"chat": Field(CHAT_ID), "seq": Field(SEQ, required=False)},
        Struct(
            {
                "read_seq": Field(Int()),
                "unread": Field(Int()),
                "pts": Field(Nullable(Int()), "null when nothing changed"),
            },
            name="ReadMark",
        ),
        _MEMBER_ERRORS,
    ),
    Method(
        "messages.setTyping",
        "Tell the chat's other online members the caller is typing. Ephemeral: never "
        "stored; repeated calls within 3 s are absorbed.",
        {"chat": Field(CHAT_ID)},
        Struct({}, name="Empty"),
        _MEMBER_ERRORS,
        rate_group="typing",
    ),
    Method(
        "messages.search",
        "Full-text search (all words must match; the last one as a prefix) in the chats the "
        "caller can read, newest first.",
        {
            "query": Field(Str(1, 256)),
            "chat": Field(CHAT_ID, "search one chat only", False),
            "limit": Field(LIMIT, "default 50", False),
        },
        Struct({"results": Field(List(Event))}, name="SearchResults"),
        (*_MEMBER_ERRORS, E.SEARCH_QUERY_EMPTY),
    ),
    # --- issue 15: read receipts, invite management -----------------------------------
    Method(
        "messages.readers",
        "Who read a message: members other than its sender whose read position reached it "
        "(Telegram's getMessageReadParticipants). count is capped at 1000; the readers are "
        "listed only in chats of at most 200 members (empty above).",
        {
            "chat": Field(CHAT_ID),
            "seq": Field(SEQ),
            "limit": Field(LIMIT, "default 100", False),
        },
        Struct(
            {
                "count": Field(Int(), "readers, capped at 1000"),
                "readers": Field(List(Reader)),
                "listed": Field(Bool(), "false: the chat is too big to list readers"),
            },
            name="Readers",
        ),
        (*_MEMBER_ERRORS, E.MESSAGE_NOT_FOUND),
    ),
    Method(
        "chats.listInvites",
        "The chat's invite links (admins), newest first: what chats.createInvite made, with "
        "uses left and expiry. Tokens are stored hashed, so an invite is named by its id; "
        "chats.revokeInvite takes the id or the link itself.",
        {"chat": Field(CHAT_ID)},
        Struct({"invites": Field(List(InviteRow, 10_000))}, name="Invites"),
        _ADMIN_ERRORS,
    ),
    Method(
        "chats.revokeInvite",
        "Revoke an invite link (admins): joining with it fails from now on.",
        {
            "chat": Field(CHAT_ID),
            "invite": Field(Str(1, 200), "the link chats.createInvite gave, or its id"),
        },
        Struct({"id": Field(Str(), "the invite revoked")}, name="InviteRevoked"),
        (*_ADMIN_ERRORS, E.CHAT_INVITE_INVALID),
    ),
    # --- sync ---------------------------------------------------------------------------
    Method(
        "updates.getState",
        "Where the caller's state is now: its pts and every chat's last seq.",
        {},
        Struct(
            {"pts": Field(Int()), "chats": Field(DictOf(Str(), Int(), 1_000_000))},
            name="SyncState",
        ),
    ),
    Method(
        "updates.getDifference",
        "What a device missed: the user updates after `pts`, and per chat the events after "
        "the seq it has (chats it does not name count from 0). A chat with more than the "
        "node's difference_limit missing events is listed in too_long instead: page it with "
        "chats.history. complete=false: call again from the returned pts/chats.",
        {
            "pts": Field(Int(0)),
            "chats": Field(DictOf(Str(1, 64), Int(0), 100_000), "chat id -> last seq held"),
        },
        Struct(
            {
                "updates": Field(List(UserUpdate)),
                "events": Field(List(Event), "per chat in seq order"),
                "too_long": Field(DictOf(Str(), Int()), "chat id -> its last seq"),
                "pts": Field(Int(), "pts to continue from"),
                "chats": Field(DictOf(Str(), Int()), "chat id -> seq now held"),
                "complete": Field(Bool()),
            },
            name="Difference",
        ),
    ),
    # --- admin --------------------------------------------------------------------------
    Method(
        "admin.chatList",
        "All chats on the node (admin socket).",
        {},
        Struct({"chats": Field(List(AnyValue("ChatSummary")))}, name="ChatList"),
        access="admin",
    ),
    Method(
        "admin.chatShow",
        "One chat with its members (first 100) and last events (admin socket).",
        {"chat": Field(CHAT_ID)},
        AnyValue("ChatDetail"),
        (E.CHAT_NOT_FOUND,),
        access="admin",
    ),
    Method(
        "admin.chatExport",
        "A page of a chat's log exactly as signed: raw CBOR, hash and signature per event, "
        "and its content record (null once erased by a delete or a later edit) (admin "
        "socket).",
        {
            "chat": Field(CHAT_ID),
            "after": Field(Int(0), required=False),
            "limit": Field(Int(1, 5000), required=False),
        },
        Struct(
            {"events": Field(List(AnyValue("SignedEvent"))), "home_key": Field(AnyValue("bytes"))},
            name="ChatExport",
        ),
        (E.CHAT_NOT_FOUND,),
        access="admin",
    ),
    Method(
        "admin.chatVerify",
        "Verify a chat's whole hash chain and signatures (admin socket).",
        {"chat": Field(CHAT_ID)},
        Struct(
            {"ok": Field(Bool()), "events": Field(Int()), "error": Field(Nullable(Str()))},
            name="ChainCheck",
        ),
        (E.CHAT_NOT_FOUND,),
        access="admin",
    ),
]

CHAT_UPDATES: list[Update] = [
    Update(
        "chat.event",
        "A chat the user is in grew by one event (sent to every online session of every "
        "member except the one that caused it). A jump in seq means a gap: getDifference.",
        {"event": Field(Event)},
    ),
    Update(
        "user.update",
        "An entry of the user's own update log (pts); a jump in pts means a gap.",
        {
            "pts": Field(Int()),
            "kind": Field(Str()),
            "ts": Field(Float()),
            "chat": Field(Str(), required=False),
        },
    ),
    Update(
        "chat.typing",
        "Someone in the chat is typing (ephemeral; show for ~5 s).",
        {"chat": Field(Str()), "user": Field(Str())},
    ),
    Update(
        "chat.readOutbox",
        "Someone read the caller's messages (sender-side read receipt, like Telegram's "
        "updateReadHistoryOutbox): user has read the chat up to read_seq. Sent to the "
        "senders of the messages the read newly covers; in chats of more than 100 members "
        "only when it passes everyone else's read. Not stored: a device that was offline "
        "finds Dialog.read_outbox and chats.history read_by.",
        {"chat": Field(Str()), "user": Field(Str()), "read_seq": Field(Int())},
    ),
]
