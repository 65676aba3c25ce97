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


class Updates:
    """A push as queued on sessions: how many updates, and their CBOR items back to back.

    A session's flush joins whatever queued meanwhile into ONE push frame (one seal, one
    WebSocket message, one syscall for a burst), and the update list of a push is a CBOR
    array, so joining is concatenation: no re-encoding per session. One object is queued on
    every session it goes to, and the plaintext of a frame holding it alone (the usual
    round: one commit's update) is built once for all of them (issue 17: a fan-out to 1,000
    members built it 1,000 times)."""

    __slots__ = ("_alone", "blob", "count")

    def __init__(self, count: int, blob: bytes) -> None:
        self.count = count
        self.blob = blob
        self._alone: bytes | None = None

    @property
    def alone(self) -> bytes:
        """The encoded ``{"u": [...]}`` holding just these updates."""
        if self._alone is None:
            self._alone = _PUSH_KEY + _array_head(self.count) + self.blob
        return self._alone


_PUSH_KEY = b"\xa1\x61u"  # a map of one entry, the text key "u"


def encode_updates(updates: list[dict[str, Any]]) -> Updates:
    return Updates(len(updates), b"".join(encode(u) for u in updates))


def push_frame(batches: list[Updates]) -> bytes:
    """The encoded ``{"u": [...]}`` holding every update of ``batches``, in order."""
    if len(batches) == 1:
        return batches[0].alone
    n = sum(b.count for b in batches)
    return _PUSH_KEY + _array_head(n) + b"".join(b.blob for b in batches)


def _array_head(n: int) -> bytes:
    """The CBOR head of an array of ``n`` items."""
    if n < 24:
        return bytes((0x80 | n,))
    if n < 1 << 8:
        return bytes((0x98, n))
    if n < 1 << 16:
        return b"\x99" + n.to_bytes(2, "big")
    return b"\x9a" + n.to_bytes(4, "big")
