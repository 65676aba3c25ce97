"""CBOR encoding with decode options hardened against hostile input.

cbor2 has no size cap (the transport caps frames), but it does build Python objects for
semantic tags while decoding: tag 35 compiles a regex, 36 parses MIME, 28/29 build shared
references that explode when walked, 2/3 make bignums. Fedgram's wire uses no tags at all,
so every tag is rejected, as are indefinite lengths, duplicate keys and deep nesting.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import cbor2

MAX_DEPTH = 16

# Every tag cbor2 knows how to decode; all are refused.  Unknown tags go to _reject_unknown.
_KNOWN_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 100, 256, 258, 260, 261, 1004, 55799)


class DecodeError(ValueError):
    """Raised for any frame that is not acceptable hardened CBOR."""


def _reject(decoder: Any) -> Any:
    raise cbor2.CBORDecodeError("semantic tags are not allowed")


def _reject_unknown(decoder: Any, tag: Any) -> Any:
    raise cbor2.CBORDecodeError("tags are not allowed")


_SEMANTIC = {t: _reject for t in _KNOWN_TAGS}


def decode(data: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    try:
        return cbor2.loads(
            data,
            max_depth=max_depth,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            strict_hashable_types=True,
            semantic_decoders=_SEMANTIC,
            tag_hook=_reject_unknown,
        )
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError) as e:
        raise DecodeError(str(e)[:200]) from None


class Blob:
    """A large byte string to send (a media part or chunk): encoded as an ordinary CBOR
    byte string, so the peer decodes plain ``bytes``, but without passing through cbor2's
    output buffer, which copies big values slowly (measured: 520-850 MB/s for 512 KiB, 280
    MB/s for 4 MiB, against ~10 GB/s for a plain copy; 1.2-2 s of CPU per GiB on the side
    that encodes media). Only the sender wraps; nothing decodes to a Blob."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)


# written by cbor2 where a Blob goes, then replaced by the Blob's header and bytes: random per
# process, so no other value of a frame can contain it by chance (checked anyway: see encode)
_MARK = b"\xff" + os.urandom(23)


class _HasBlob(Exception):
    pass


def _no_blob(encoder: Any, value: Any) -> None:
    if isinstance(value, Blob):
        raise _HasBlob
    raise cbor2.CBOREncodeTypeError(f"cannot serialize type {type(value).__name__}")


def _byte_string_head(n: int) -> bytes:
    if n < 24:
        return bytes((0x40 + n,))
    if n < 0x100:
        return bytes((0x58, n))
    if n < 0x10000:
        return b"\x59" + struct.pack(">H", n)
    if n < 0x100000000:
        return b"\x5a" + struct.pack(">I", n)
    return b"\x5b" + struct.pack(">Q", n)


def _unwrap(obj: Any) -> Any:
    """``obj`` with every Blob replaced by its bytes (the slow, always-correct encoding)."""
    if isinstance(obj, Blob):
        return obj.data
    if isinstance(obj, dict):
        return {k: _unwrap(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_unwrap(v) for v in obj]
    return obj


def _encode_blobs(obj: Any) -> bytes:
    blobs: list[bytes] = []

    def mark(encoder: Any, value: Any) -> None:
        if not isinstance(value, Blob):
            raise cbor2.CBOREncodeTypeError(f"cannot serialize type {type(value).__name__}")
        blobs.append(value.data)
        encoder.write(_MARK)

    pieces = bytes(cbor2.dumps(obj, default=mark)).split(_MARK)
    if len(pieces) != len(blobs) + 1:  # the mark occurred elsewhere: never by chance
        return bytes(cbor2.dumps(_unwrap(obj)))
    out = [pieces[0]]
    for data, rest in zip(blobs, pieces[1:], strict=True):
        out += (_byte_string_head(len(data)), data, rest)
    return b"".join(out)


def encode(obj: Any) -> bytes:
    """CBOR of ``obj``; :class:`Blob` values become byte strings (one copy, at memory speed).
    A frame without a Blob costs what plain cbor2 does (the hook is never called)."""
    try:
        return bytes(cbor2.dumps(obj, default=_no_blob))
    except _HasBlob:
        return _encode_blobs(obj)
    except cbor2.CBOREncodeError as e:  # cbor2 may wrap what the hook raised
        if isinstance(e.__cause__, _HasBlob) or isinstance(e.__context__, _HasBlob):
            return _encode_blobs(obj)
        raise
