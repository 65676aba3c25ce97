"""Federation's methods of the API schema (merged into METHODS by api.py).

``fed.*`` are called by a peer node over a link (a session whose handshake proved a node key:
access "node"); clients can never call them. ``admin.peer*`` manage peers from the admin
socket. They are served by the federation part (federation/), which a node runs when
``fedgram run`` hands it over; a node without it answers METHOD_UNKNOWN for them.
"""

from __future__ import annotations

from .errors import ErrorCode as E
from .schema import (
    INT64,
    AnyValue,
    Bool,
    Bytes,
    Enum,
    Field,
    Float,
    Int,
    List,
    Method,
    Nullable,
    Str,
    Struct,
)

NODE_ID = Str(16, 128, r"[A-Za-z0-9_-]+")
PEER_REF = Str(1, 128)  # a node id, a unique prefix of one, or a petname
URL = Str(5, 512)
CHAT_ID = Str(1, 64, r"[a-z0-9]+")
ADDRESS = Str(3, 200)
USER_NAME = Str(1, 64)
PULL_LIMIT_MAX = 5_000
FORWARDABLE = (
    "messages.edit",
    "messages.delete",
    "messages.pin",
    "messages.unpin",
    "chats.edit",
    "chats.addMembers",
    "chats.kick",
    "chats.unban",
    "chats.setRole",
    "chats.leave",
    "chats.createInvite",
    "chats.join",
    "chats.listInvites",
    "chats.revokeInvite",
)
"""Calls a replica forwards to a chat's home for its users (fed.act)."""
POKE_MAX = 1_000

PeerInfo = Struct(
    {
        "node_id": Field(Str(), "the peer's identity fingerprint"),
        "name": Field(Str(), "its petname here"),
        "url": Field(Nullable(Str()), "where this node dials it (null: it dials us)"),
        "state": Field(
            Enum(("peer", "pending", "blocked", "known", "discovered")),
            "discovered: heard of on the LAN, not approved",
        ),
        "link": Field(Enum(("up", "down", "connecting")), "this node's link to it"),
        "first_seen": Field(Float()),
        "last_seen": Field(Float()),
        "replicated_chats": Field(Int(), "chats homed there that this node replicates"),
        "since": Field(Nullable(Float()), "when the link last went up or down (null: no link)"),
        "lag": Field(Int(), "events those chats are known to be behind their home (last poke)"),
        "relayed": Field(Int(), "events of chats homed elsewhere filled from this peer's copy"),
        "secret_relayed_for": Field(Int(), "secret-chat bytes this node carried for the peer"),
        "secret_relayed_by": Field(Int(), "secret-chat bytes the peer carried for this node"),
        "outbox": Field(Int(), "posts waiting to be forwarded to it"),
        "last_error": Field(Nullable(Str()), "why the link last failed"),
    },
    name="PeerInfo",
)

RemoteUser = Struct(
    {
        "name": Field(USER_NAME),
        "display_name": Field(Str(0, 128)),
        "created": Field(Float(), "the account's creation stamp (private chat ids use it)"),
    },
    name="RemoteUser",
)

SecretEnvelope = Struct(
    {
        "to": Field(ADDRESS, "the recipient user, canonical"),
        "device": Field(Int(0), "the recipient device (its id on the user's node)"),
        "from": Field(ADDRESS, "the sender user, canonical (notices: the chat's other side)"),
        "from_device": Field(Int(0)),
        "id": Field(INT64, "the sender device's id of the message"),
        "payload": Field(Bytes(0, 65536), "ciphertext, opaque to every node"),
        "kind": Field(Enum(("message", "expired", "failed", "revoked"))),
        "sent": Field(Float()),
        "expires": Field(Float(), "dropped (and its sender told) after this"),
        "hops": Field(Int(0, 3), "how many more nodes may carry it on"),
        "count": Field(Int(0), "expired notices: how many messages were dropped", False),
    },
    name="SecretEnvelope",
)

ForwardedPost = Struct(
    {
        "chat": Field(CHAT_ID),
        "sender": Field(ADDRESS, "canonical address of a user of the calling node"),
        "random_id": Field(INT64),
        "text": Field(Str(0, 4096), required=False),
        "reply_to": Field(Int(1), required=False),
        "media": Field(List(AnyValue(), 10), "content addresses {sha256, size, mime, ...}", False),
        "fwd": Field(AnyValue(), "forward origin", False),
    },
    name="ForwardedPost",
)

READS_MAX = 1000
ReadMark = Struct(
    {
        "chat": Field(CHAT_ID),
        "user": Field(ADDRESS, "canonical address of the reader"),
        "read_seq": Field(Int(1)),
    },
    name="ReadMark",
)

SealedEvent = List(AnyValue(), 3)
"""``[raw, sig, content | null]``: the signed event as the home stored it, and its erasable
content record (null: none, or erased)."""

FED_METHODS: list[Method] = [
    Method(
        "fed.hello",
        "The first call on a link: who the calling node is and where it can be dialled back.",
        {
            "name": Field(Str(1, 64), "the caller's human name (a petname suggestion)"),
            "url": Field(Nullable(URL), "where the caller accepts links, if it does"),
            "version": Field(Str(0, 32)),
        },
        Struct(
            {
                "name": Field(Str()),
                "state": Field(Enum(("peer", "pending")), "how this node sees the caller"),
            },
            name="Hello",
        ),
        (E.PEER_BLOCKED, E.FEDERATION_OFF),
        access="node",
        part="federation",
        rate_group="federation",
    ),
    Method(
        "fed.resolveUser",
        "A user of this node, as a peer caches them.",
        {"name": Field(USER_NAME)},
        RemoteUser,
        (E.USER_NOT_FOUND, E.PEER_PENDING),
        access="node",
        part="federation",
        rate_group="federation",
    ),
    Method(
        "fed.poke",
        "Chats that changed on the caller: [chat, head seq] each. From a chat's home; or, "
        "while the home is unreachable, from a fellow replica offering its copy. The callee "
        "pulls those it replicates and is behind on (from the home whenever its link is "
        "up). A home may push a chat's new events with the poke (``events``: what "
        "``fed.pull`` would answer after ``after``, the callee's head as the home last "
        "learned it): a callee whose head is ``after`` verifies and applies them as a "
        "pulled batch and answers its head; anything else (a gap, a pull under way) it "
        "pulls. Without ``events`` it answers at once.",
        {
            "chats": Field(List(List(AnyValue(), 2), POKE_MAX)),
            "events": Field(
                AnyValue(),
                "chat -> {after, events, head, users, nodes}: pushed events (from the home)",
                required=False,
            ),
        },
        Struct(
            {
                "heads": Field(
                    AnyValue(),
                    "chat -> the callee's head, for the pushed chats it knows",
                    required=False,
                )
            },
            name="Poked",
        ),
        (E.PEER_PENDING,),
        access="node",
        part="federation",
        rate_group="federation",
    ),
    Method(
        "fed.pull",
        "Events of a chat after seq ``after`` (null: from where the caller's members may "
        "start, with the chat's state there). Served by the chat's home, and by any replica "
        "from its verified copy (gap fill while the home is unreachable; the caller checks "
        "the home's signature either way). Only for a node with members in it.",
        {
            "chat": Field(CHAT_ID),
            "after": Field(Nullable(Int(0)), "the caller's head, or null for a first pull"),
            "limit": Field(Int(1, PULL_LIMIT_MAX), required=False),
        },
        Struct(
            {
                "chat": Field(AnyValue(), "with after=null: the chat's state before events[0]"),
                "events": Field(List(SealedEvent, PULL_LIMIT_MAX)),
                "head": Field(Int(), "the last seq the callee can serve (its head)"),
                "users": Field(AnyValue(), "address -> RemoteUser of everyone the events name"),
                "nodes": Field(AnyValue(), "node id -> {key, name} of the nodes they live on"),
            },
            name="Pulled",
        ),
        (E.CHAT_NOT_FOUND, E.NOT_A_REPLICA, E.PEER_PENDING),
        access="node",
        part="federation",
        rate_group="federation",
    ),
    Method(
        "fed.post",
        "Posts of the caller's users into chats homed here (from the caller's outbox, in "
        "order). Each is authorized as a local member's post would be and is idempotent by "
        "random_id; each gets its own result (a refused one does not stop the others).",
        {"posts": Field(List(ForwardedPost, 256))},
        Struct(
            {"results": Field(List(AnyValue(), 256), "{seq, duplicate} or {error: CODE}")},
            name="Posted",
        ),
        (E.PEER_PENDING,),
        access="node",
        part="federation",
        rate_group="federation",
    ),
    Method(
        "fed.act",
        "A call of one of the caller's users on a chat homed here (edit, delete, pin, "
        "title, members, roles, leave, invites, join by invite), made as that user: the same "
        "handler, checks and answer as for a local user (addresses canonical).",
        {
            "sender": Field(ADDRESS, "canonical address of a user of the calling node"),
            "method": Field(Enum(FORWARDABLE)),
            "params": Field(AnyValue(), "the method's own parameters (validated as such)"),
        },
        AnyValue(),
        (E.NOT_A_REPLICA, E.PEER_PENDING),
        access="node",
        part="federation",
        rate_group="federation",
    ),
    Method(
        "fed.read",
        "Read positions of chat members (sender-side read receipts across nodes): from a "
        "reader's node to the chat's home, and from the home to the chat's other replicas. "
        "Accepted from the reader's own node for chats homed here, or from the chat's home; "
        "others are ignored. Positions only move forward; coalesced and best-effort (a "
        "position lost on the way is corrected by the reader's next read or message).",
        {"reads": Field(List(ReadMark, READS_MAX))},
        Struct({"applied": Field(Int(), "positions that moved here")}, name="ReadsApplied"),
        (E.PEER_PENDING,),
        access="node",
        part="federation",
        rate_group="federation",
    ),
    Method(
        "fed.startPrivate",
        "Open the private chat between a user of the caller and a user of this node, when "
        "this node is its home (the node of the lower address); answers its id.",
        {"from": Field(ADDRESS), "to": Field(ADDRESS)},
        Struct({"chat": Field(Str())}, name="PrivateStarted"),
        (E.USER_NOT_FOUND, E.PEER_INVALID, E.PEER_PENDING),
        access="node",
        part="federation",
        rate_group="federation",
    ),
    Method(
        "fed.media",
        "A byte range of a stored file, by SHA-256, for a node that may read it: the file "
        "is opaque (a secret chat's ciphertext, uploaded with media.complete opaque: "
        "readable by hash alone), or one of its users is a current member of a chat with a "
        "readable message carrying it (NOT_A_REPLICA otherwise, checked first; with "
        "``opaque``, only the first rule). MEDIA_NOT_FOUND if this node does not "
        "hold the bytes (it never fetches them for a peer: the caller asks the next node, "
        "the chat's home first, then the sender's). Nothing served is trusted: the caller "
        "assembles the ranges and checks size and SHA-256 before keeping the file.",
        {
            "sha256": Field(Str(64, 64, r"[0-9a-f]{64}")),
            "offset": Field(Int(0)),
            "length": Field(Int(1, 512 * 1024)),
            "opaque": Field(
                Bool(), "only a file marked opaque (a secret chat's, readable by hash)", False
            ),
            "node": Field(
                NODE_ID,
                "the node holding it, when the caller has no link there: the callee relays "
                "the range (opaque files only; SECRET_RELAY_REFUSED, SECRET_NO_ROUTE)",
                False,
            ),
        },
        Struct(
            {
                "data": Field(Bytes(0, 512 * 1024), "at most length bytes (fewer at the end)"),
                "size": Field(Int(), "the whole file's, in bytes"),
            },
            name="MediaRange",
        ),
        (
            E.MEDIA_NOT_FOUND,
            E.NOT_A_REPLICA,
            E.PEER_PENDING,
            E.SECRET_RELAY_REFUSED,
            E.SECRET_NO_ROUTE,
        ),
        access="node",
        part="federation",
        rate_group="federation",
    ),
    Method(
        "fed.secretKeys",
        "A user's published secret-chat device keys (secret.getKeys' answer; one one-time "
        "prekey of each device is taken). Served by the user's node; a node linked to it "
        "forwards the call with hops - 1 (SECRET_NO_ROUTE at 0 or without a link, "
        "SECRET_RELAY_REFUSED if it does not relay).",
        {"user": Field(ADDRESS, "canonical: name@<node id>"), "hops": Field(Int(0, 3))},
        AnyValue(),
        (E.USER_NOT_FOUND, E.SECRET_NO_ROUTE, E.SECRET_RELAY_REFUSED, E.PEER_PENDING),
        access="node",
        part="federation",
        rate_group="federation",
    ),
    Method(
        "fed.secretPut",
        "Secret-chat envelopes (ciphertext the nodes cannot read) handed on: the callee "
        "queues those for its own users' devices and stores the others to carry them on "
        "(store-and-forward, hops - 1), if it relays and the caller is within today's "
        "allowance. One result per item, in order: {ok: true} once stored durably, or "
        "{error: code}.",
        {"items": Field(List(SecretEnvelope, 16))},
        Struct({"results": Field(List(AnyValue(), 16))}, name="SecretPutResults"),
        (E.PEER_PENDING,),
        access="node",
        part="federation",
        rate_group="federation",
    ),
    Method(
        "fed.secretRoute",
        "Whether the callee would carry secret-chat envelopes to node ``node``: it relays "
        "and has a link up to it.",
        {"node": Field(NODE_ID)},
        Struct({"reachable": Field(Bool())}, name="SecretRoute"),
        (E.PEER_PENDING,),
        access="node",
        part="federation",
        rate_group="federation",
    ),
    # --- admin ------------------------------------------------------------------------------
    Method(
        "admin.peerAdd",
        "Dial a node, learn its key (checked against ``pin`` if given) and make it a peer.",
        {"url": Field(URL), "pin": Field(Str(8, 128), required=False)},
        PeerInfo,
        (E.PEER_UNREACHABLE, E.NODE_KEY_MISMATCH, E.PEER_INVALID),
        access="admin",
        part="federation",
    ),
    Method(
        "admin.peerList",
        "Every node this node knows but itself, with its link and replication state.",
        {},
        Struct({"peers": Field(List(PeerInfo, 1 << 20))}, name="PeerList"),
        access="admin",
        part="federation",
    ),
    Method(
        "admin.peerApprove",
        "Accept a pending node (or unblock one) as a peer.",
        {"peer": Field(PEER_REF)},
        PeerInfo,
        (E.PEER_UNKNOWN,),
        access="admin",
        part="federation",
    ),
    Method(
        "admin.peerBlock",
        "Refuse a node's links and everything it sends; its link is cut at once.",
        {"peer": Field(PEER_REF)},
        PeerInfo,
        (E.PEER_UNKNOWN,),
        access="admin",
        part="federation",
    ),
    Method(
        "admin.peerRemove",
        "Forget a peer's link settings (its users and chats stay; it may ask again).",
        {"peer": Field(PEER_REF)},
        Struct({"removed": Field(Str())}, name="PeerRemoved"),
        (E.PEER_UNKNOWN,),
        access="admin",
        part="federation",
    ),
]


LookedUp = Struct(
    {
        "address": Field(Str(), "name@petname"),
        "node_id": Field(Str()),
        "display_name": Field(Str()),
        "created": Field(Float()),
        "local": Field(Bool(), "a user of this node"),
    },
    name="LookedUp",
)

# Served by the node itself: a remote user is asked of their node through the federation
# part if the node runs it (else only local users and cached remote ones are found).
DIRECTORY_METHODS: list[Method] = [
    Method(
        "users.resolve",
        "A user by address (``bob``, ``bob@n2``): a remote one is asked of their node and "
        "cached here.",
        {"address": Field(ADDRESS)},
        LookedUp,
        (E.USER_NOT_FOUND, E.PEER_UNREACHABLE, E.PEER_UNKNOWN),
        rate_group="lookup",
    ),
    Method(
        "admin.userLookup",
        "``fedgram user lookup``: users.resolve from the admin socket.",
        {"address": Field(ADDRESS)},
        LookedUp,
        (E.USER_NOT_FOUND, E.PEER_UNREACHABLE, E.PEER_UNKNOWN),
        access="admin",
    ),
]
