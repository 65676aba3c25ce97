"""Envelopes of the frames exchanged after the handshake (DESIGN §3)."""

from __future__ import annotations

from typing import Any

from .codec import encode
from .errors import ErrorCode, RpcError

MAX_REQUEST_ID = 2**63 - 1


def parse_request(obj: Any) -> tuple[int, str, dict[str, Any]]:
    """Check the request envelope ``{"id": int, "m": str, "p": map}``."""
    if not isinstance(obj, dict):
        raise RpcError(ErrorCode.BAD_REQUEST, "frame must be a map")
    rid = obj.get("id")
    if not isinstance(rid, int) or isinstance(rid, bool) or not 0 <= rid <= MAX_REQUEST_ID:
        raise RpcError(ErrorCode.BAD_REQUEST, "id must be a non-negative integer")
    method = obj.get("m")
    if not isinstance(method, str) or len(method) > 64:
        raise RpcError(ErrorCode.BAD_REQUEST, "m must be a method name")
    params = obj.get("p", {})
    if not isinstance(params, dict):
        raise RpcError(ErrorCode.BAD_REQUEST, "p must be a map")
    if len(obj) > 3 or any(k not in ("id", "m", "p") for k in obj):
        raise RpcError(ErrorCode.BAD_REQUEST, "unknown envelope field")
    return rid, method, params


def request_id_of(obj: Any) -> int | None:
    """Best effort: the id of a malformed request, so its error can still be matched."""
    if isinstance(obj, dict):
        rid = obj.get("id")
        if isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid <= MAX_REQUEST_ID:
            return rid
    return None


def request(rid: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"id": rid, "m": method, "p": params}


def result(rid: int, value: Any) -> dict[str, Any]:
    return {"id": rid, "r": value}


def error(rid: int | None, err: RpcError) -> dict[str, Any]:
    return {"id": rid, "e": err.to_wire()}


def push(updates: list[dict[str, Any]]) -> dict[str, Any]:
    return {"u": updates}


# A push as queued on a session: how many updates, and their CBOR items back to back. A
# session's writer joins whatever queued meanwhile into ONE push frame (one seal, one
# WebSocket message, one syscall for a burst), and the update list of a push is a CBOR
# array, so joining is concatenation: no re-encoding per session.
Updates = tuple[int, bytes]


def encode_updates(updates: list[dict[str, Any]]) -> Updates:
    return len(updates), b"".join(encode(u) for u in updates)


def push_frame(batches: list[Updates]) -> bytes:
    """The encoded ``{"u": [...]}`` holding every update of ``batches``, in order."""
    n = sum(count for count, _ in batches)
    if n < 24:
        head = bytes([0x80 | n])
    elif n < 1 << 8:
        head = bytes([0x98, n])
    elif n < 1 << 16:
        head = b"\x99" + n.to_bytes(2, "big")
    else:
        head = b"\x9a" + n.to_bytes(4, "big")
    return b"\xa1\x61u" + head + b"".join(blob for _, blob in batches)
