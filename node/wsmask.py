"""WebSocket masking at memory speed for large frames (wsproto's masker runs at ~250 MB/s).

RFC 6455 makes a client mask every frame it sends (XOR with a fresh random 4-byte key) and
the server unmask it. wsproto does this with four strided ``bytes.translate`` passes, which
measured 244-885 MB/s on this project's 2-core box: for a media upload that is more CPU per
byte than the ChaCha20-Poly1305 sealing itself (py-spy: 18% of the SDK's upload samples
against 8% for encryption), and a wall under the 250 MB/s media target on each side.

:class:`FastMasker` is a drop-in for ``wsproto.frame_protocol.XorMaskerSimple`` (same
constructor, same ``process`` with the key rotated across calls, so a payload processed in
pieces gives the same bytes): payloads of :data:`VECTOR_MIN` bytes or more are XORed in place
with numpy on 32-bit words (~9 GB/s), smaller ones go to wsproto's own code (numpy would not
pay for itself, and it is imported only when the first large payload comes). :func:`install`
puts it in wsproto's module, for every wsproto connection of the process (the SDK's and, in
a node process, the server's too): the bytes on the wire are exactly those of the RFC, so
either peer may run either masker. The key is still wsproto's own ``os.urandom(4)``.
"""

from __future__ import annotations

from typing import Any

import wsproto.frame_protocol as _fp

VECTOR_MIN = 4096  # below this wsproto's translate passes cost less than calling numpy
_Simple = _fp.XorMaskerSimple  # wsproto's own, kept for small payloads and as the fallback
_np: Any = None  # numpy, imported on first use (~0.1-0.2 s: not at every CLI start)


def _numpy() -> Any:
    """numpy, or False where it cannot be imported (then wsproto's masker does it all)."""
    global _np
    if _np is None:
        try:
            import numpy

            _np = numpy
        except ImportError:  # pragma: no cover - numpy is a dependency
            _np = False
    return _np


class FastMasker:
    """XOR with a 4-byte key repeated, continuing across calls (wsproto feeds a frame's
    payload in the pieces it receives)."""

    __slots__ = ("_key",)

    def __init__(self, masking_key: bytes | bytearray) -> None:
        self._key = bytes(masking_key)

    def process(self, data: bytes | bytearray) -> bytearray:
        n = len(data)
        np = _numpy() if n >= VECTOR_MIN else None
        if not np:
            out: bytearray = _Simple(self._key).process(bytearray(data))
        else:
            # wsproto hands over a bytearray it made for this call (a slice of its receive
            # buffer, or a copy of the payload to send) and uses only what is returned: XOR
            # it in place; anything else is copied first
            out = data if isinstance(data, bytearray) else bytearray(data)
            whole = n - n % 4
            word = np.frombuffer(self._key, dtype=np.uint32)[0]
            view = np.frombuffer(out, dtype=np.uint32, count=whole // 4)
            view ^= word
            for i in range(whole, n):  # the 1-3 trailing bytes
                out[i] ^= self._key[i - whole]
        r = n % 4
        if r:
            self._key = self._key[r:] + self._key[:r]
        return out


def install() -> None:
    """Use :class:`FastMasker` for every wsproto connection in this process (idempotent)."""
    _fp.XorMaskerSimple = FastMasker  # type: ignore[misc,assignment]
