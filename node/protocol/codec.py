"""CBOR encoding with decode options hardened against hostile input.

cbor2 has no size cap (the transport caps frames), but it does build Python objects for
semantic tags while decoding: tag 35 compiles a regex, 36 parses MIME, 28/29 build shared
references that explode when walked, 2/3 make bignums. Fedgram's wire uses no tags at all,
so every tag is rejected, as are indefinite lengths, duplicate keys and deep nesting.
"""

from __future__ import annotations

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


def encode(obj: Any) -> bytes:
    return bytes(cbor2.dumps(obj))
