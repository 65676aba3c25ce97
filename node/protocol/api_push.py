"""The push-notification methods of the API schema (merged into METHODS by api.py).

A device registers where a notification should be POSTed when it is not connected (a
UnifiedPush endpoint or any webhook URL) and its X25519 public key; the node seals each
notification to that key (README: Push notifications).
"""

from __future__ import annotations

from .errors import ErrorCode as E
from .schema import Bool, Bytes, Field, Float, Int, List, Method, Nullable, Str, Struct

URL_FIELD_MAX = 8192  # the schema's bound; the handler's own, stricter one is PUSH_URL_INVALID
ENDPOINTS_MAX = 1000

PushEndpoint = Struct(
    {
        "id": Field(Int(), "the endpoint's id (for unregisterPush, testPush)"),
        "device_id": Field(Int(), "the device it notifies"),
        "url": Field(Str(), "where notifications are POSTed"),
        "key": Field(Bytes(32, 32), "the device's X25519 public key they are sealed to"),
        "created": Field(Float(), "Unix seconds"),
        "this_device": Field(Bool(), "registered by the calling device"),
    },
    name="PushEndpoint",
)

PushStats = Struct(
    {
        "endpoints": Field(Int(), "registered endpoints"),
        "queued": Field(Int(), "notifications waiting for a worker or a retry"),
        "pending": Field(Int(), "notifications being coalesced"),
        "sent": Field(Int(), "POSTs answered 2xx"),
        "failed": Field(Int(), "notifications given up on (retries spent, or refused)"),
        "dropped": Field(Int(), "notifications dropped because the queue was full"),
        "unregistered": Field(Int(), "endpoints removed because they answered 404/410"),
        "retried": Field(Int(), "retries scheduled"),
        "skipped_online": Field(Int(), "not sent: the device came online meanwhile"),
    },
    name="PushStats",
)

_ID = {"id": Field(Int(1), "the endpoint's id (see listPush)")}

PUSH_METHODS: list[Method] = [
    Method(
        "account.registerPush",
        "Register a push endpoint for the calling device: a UnifiedPush endpoint or any "
        "http(s) webhook URL, and the device's X25519 public key. While the device has no "
        "live session, a message in one of its chats (not muted, not its own) makes the node "
        "POST a notification there: JSON sealed to the key (PyNaCl SealedBox), body "
        "application/octet-stream, at most 4 KiB; a burst is coalesced into one. Secret "
        "chats only say 'new secret message'. Registering the same URL again from the same "
        "device updates its key and keeps its id.",
        {
            "url": Field(Str(1, URL_FIELD_MAX), "http:// or https://, at most 2048 characters"),
            "key": Field(Bytes(0, 256), "the device's X25519 public key (32 bytes)"),
        },
        PushEndpoint,
        (E.PUSH_URL_INVALID, E.PUSH_KEY_INVALID, E.PUSH_TOO_MANY),
    ),
    Method(
        "account.listPush",
        "The caller's push endpoints (all devices) and whether notifications carry previews.",
        {},
        Struct(
            {
                "endpoints": Field(List(PushEndpoint, ENDPOINTS_MAX)),
                "previews": Field(Bool(), "message previews in notifications"),
            },
            name="PushList",
        ),
    ),
    Method(
        "account.unregisterPush",
        "Remove one of the caller's push endpoints (of any of its devices).",
        _ID,
        Struct({"removed": Field(Int())}),
        (E.PUSH_NOT_FOUND,),
    ),
    Method(
        "account.testPush",
        "POST a test notification (kind 'test') to one of the caller's endpoints now, once, "
        "and say what came of it. An endpoint that answers 404 or 410 is unregistered.",
        _ID,
        Struct(
            {
                "id": Field(Int()),
                "result": Field(Str(), "sent, failed or unregistered"),
                "status": Field(Nullable(Int()), "the endpoint's HTTP status, if it answered"),
                "error": Field(Str(), "why it failed ('' when sent)"),
            },
            name="PushTested",
        ),
        (E.PUSH_NOT_FOUND,),
        rate_group="lookup",
    ),
    Method(
        "account.setPushSettings",
        "Whether the caller's notifications carry a preview of the message (its first "
        "characters). Off by default unless the node says otherwise ([push] previews); "
        "secret chats never carry one.",
        {"previews": Field(Bool())},
        Struct({"previews": Field(Bool())}, name="PushSettings"),
    ),
]
