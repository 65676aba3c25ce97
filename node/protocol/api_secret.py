"""The secret-chat methods and update of the API schema (merged into METHODS by api.py).

The node's side of docs/secret-chats.md section 3: prekeys a device publishes for others to
start a chat with it, and per-device queues of opaque envelopes. The node never reads a
payload; it only stores, forwards and deletes it.
"""

from __future__ import annotations

from .errors import ErrorCode as E
from .schema import INT64_MAX, Bytes, Enum, Field, Float, Int, List, Method, Nullable, Str, Struct
from .schema import Update as UpdateDecl

PAYLOAD_MAX = 65_536
ONE_TIME_PER_CALL = 100
ONE_TIME_KEPT = 500
FETCH_MAX = 1_000
ADDRESS = Str(3, 200)
KEY_ID = Int(0, INT64_MAX)  # chosen by the device; signed as 8 bytes big-endian
MSG_ID = Int(1, INT64_MAX)  # 63-bit random, chosen by the sender device (0: notices)
X25519_KEY = Bytes(32, 32)

SignedPrekey = Struct(
    {
        "id": Field(KEY_ID),
        "key": Field(X25519_KEY, "X25519 public key"),
        "sig": Field(
            Bytes(64, 64),
            "Ed25519 signature by the device key over b'fedgram-spk\\x00' + "
            "id.to_bytes(8, 'big') + key",
        ),
    },
    name="SignedPrekey",
)

OneTimePrekey = Struct(
    {"id": Field(KEY_ID), "key": Field(X25519_KEY, "X25519 public key")},
    name="OneTimePrekey",
)

DeviceKeys = Struct(
    {
        "device": Field(Int(), "the device id on its user's node"),
        "key": Field(Bytes(32, 32), "the device's Ed25519 key (its identity)"),
        "name": Field(Str(), "the device's name, e.g. 'laptop'"),
        "signed_prekey": Field(SignedPrekey),
        "one_time": Field(Nullable(OneTimePrekey), "taken: handed out once; null when none"),
    },
    name="DeviceKeys",
)

KeyBundle = Struct(
    {
        "user": Field(Str(), "the user's address (shown as name@node to clients)"),
        "devices": Field(List(DeviceKeys, 10_000), "live devices that published keys"),
    },
    name="KeyBundle",
)

KINDS = ("message", "expired", "failed", "revoked")

SecretItem = Struct(
    {
        "qid": Field(Int(), "queue id on the recipient's node: what secret.ack takes"),
        "kind": Field(Enum(KINDS), "message, or a node notice (expired, failed, revoked)"),
        "from": Field(
            Str(),
            "message: the sender; notices: the other device's user (name@node, as every "
            "address a client reads)",
        ),
        "device": Field(Int(), "its device id"),
        "id": Field(Int(0, INT64_MAX), "the sender's id of the message (notices: or 0)"),
        "payload": Field(Bytes(0, PAYLOAD_MAX), "message: the ciphertext; notices: empty"),
        "sent": Field(Float(), "when the sender's node accepted it (Unix seconds)"),
        "count": Field(Int(), "expired: how many messages of that device were dropped"),
    },
    name="SecretItem",
)

SECRET_METHODS: list[Method] = [
    Method(
        "secret.publishKeys",
        "Publish this device's prekeys: a signed prekey (replaces the previous one) and "
        f"one-time prekeys (at most {ONE_TIME_PER_CALL} per call, added to the unused ones; "
        f"the node keeps the newest {ONE_TIME_KEPT}). Each is stored as given and handed "
        "out by secret.getKeys; no private key ever reaches the node.",
        {
            "signed_prekey": Field(SignedPrekey, "omit to keep the current one", False),
            "one_time": Field(List(OneTimePrekey, ONE_TIME_PER_CALL), required=False),
        },
        Struct({"one_time_left": Field(Int())}, name="KeysPublished"),
        (E.SECRET_KEYS_INVALID,),
    ),
    Method(
        "secret.keysLeft",
        "How many one-time prekeys of this device are still unused, and its signed prekey's "
        "id (null: none published): top up before they run out.",
        {},
        Struct(
            {"one_time_left": Field(Int()), "signed_prekey_id": Field(Nullable(Int(0, INT64_MAX)))},
            name="KeysLeft",
        ),
    ),
    Method(
        "secret.getKeys",
        "The prekeys of a user's live devices, to start a secret chat with one of them; takes "
        "one one-time prekey of each device (handed out once). A user of another node is "
        "asked of their node through federation.",
        {"user": Field(ADDRESS, "name, name@node or the canonical name@<node id>")},
        KeyBundle,
        (
            E.USER_NOT_FOUND,
            E.PEER_UNKNOWN,
            E.PEER_UNREACHABLE,
            E.SECRET_NO_ROUTE,
            E.SECRET_RELAY_REFUSED,
            E.FEDERATION_OFF,
        ),
        rate_group="lookup",
    ),
    Method(
        "secret.send",
        "Queue an opaque envelope for one device: for a device of this node it waits in that "
        "device's queue (and is pushed to its online sessions as secret.item); for another "
        "node's it is stored in this node's secret outbox and handed to federation. "
        "Idempotent per (sender device, id): a resend answers the same and queues nothing.",
        {
            "to": Field(ADDRESS, "the recipient user"),
            "device": Field(Int(1), "the recipient device"),
            "id": Field(MSG_ID, "63-bit random id chosen by the sending device"),
            "payload": Field(Bytes(1, PAYLOAD_MAX), "ciphertext (opaque to the node)"),
        },
        Struct(
            {"id": Field(Int(0, INT64_MAX)), "state": Field(Enum(("queued", "forwarded")))},
            name="SecretSent",
        ),
        (
            E.SECRET_DEVICE_GONE,
            E.SECRET_QUEUE_FULL,
            E.USER_NOT_FOUND,
            E.PEER_UNKNOWN,
            E.FEDERATION_OFF,
        ),
    ),
    Method(
        "secret.fetch",
        "What waits for this device, oldest first: messages and notices, until acknowledged. "
        "Fewer than limit when the payloads would not fit one reply (~768 KiB); fetch again "
        "after acknowledging.",
        {"limit": Field(Int(1, FETCH_MAX), "default 100", required=False)},
        Struct({"items": Field(List(SecretItem, FETCH_MAX))}, name="SecretItems"),
    ),
    Method(
        "secret.ack",
        "Acknowledge items of this device's queue: their payloads are deleted for good "
        "(other devices' queue ids are ignored).",
        {"ids": Field(List(Int(), FETCH_MAX), "queue ids (qid)")},
        Struct({"acked": Field(Int())}, name="SecretAcked"),
    ),
]

SECRET_UPDATES: list[UpdateDecl] = [
    UpdateDecl(
        "secret.item",
        "An item was queued for this device (a SecretItem's fields, at the top level): pushed "
        "to the device's online sessions only, never through the update log (no pts). It "
        "stays queued until secret.ack; an offline device gets it from secret.fetch.",
        dict(SecretItem.fields),
    ),
]
