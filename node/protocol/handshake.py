"""The session handshake (DESIGN §3), sans-I/O, shared by clients, the gateway and node links.

1. initiator -> ``hello``  {t, v, role, eph[, id]}      (plain CBOR)
2. responder -> ``welcome`` {t, v, eph, id, sig}         (plain CBOR)
   sig = Ed25519(responder identity, "fedgram/welcome/v1" || transcript_hash)
3. both derive per-direction keys with crypto_kx from the ephemeral X25519 keys, each then
   bound to the transcript hash (BLAKE2b keyed), and from here on every frame is sealed.
4. a node initiator proves its identity in its first sealed frame with
   Ed25519(node key, "fedgram/initiator/v1" || transcript_hash); a device later does the
   same with its device key (accounts), which binds a login to this one session.

The transcript hash covers the whole hello and the responder's ephemeral and identity keys,
so a signature made for one session is useless on any other.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from nacl import bindings
from nacl.signing import SigningKey

from .codec import DecodeError, decode, encode
from .errors import ErrorCode, RpcError
from .identity import verify

PROTOCOL_VERSION = 1
WELCOME_CONTEXT = b"fedgram/welcome/v1"
INITIATOR_CONTEXT = b"fedgram/initiator/v1"
DEVICE_CONTEXT = b"fedgram/device/v1"
_ROLES = ("client", "node")


@dataclass(frozen=True)
class SessionKeys:
    rx: bytes
    tx: bytes
    transcript_hash: bytes
    peer_identity: bytes | None  # responder key for the initiator; node key for a responder


def _transcript(hello_raw: bytes, responder_eph: bytes, responder_id: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=32, person=b"fedgram-hs-v1")
    for part in (hello_raw, responder_eph, responder_id):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()


def _bind(key: bytes, th: bytes) -> bytes:
    return hashlib.blake2b(th, key=key, digest_size=32).digest()


def _fail(msg: str, code: ErrorCode = ErrorCode.HANDSHAKE_FAILED) -> RpcError:
    return RpcError(code, msg)


def _decode_map(raw: bytes, kind: str) -> dict[str, Any]:
    try:
        obj = decode(raw, max_depth=4)
    except DecodeError as e:
        raise _fail(f"{kind}: not CBOR ({e})") from None
    if not isinstance(obj, dict) or obj.get("t") != kind:
        raise _fail(f"expected a {kind} map")
    if obj.get("v") != PROTOCOL_VERSION:
        raise _fail(f"protocol version {obj.get('v')!r} unsupported", ErrorCode.VERSION_UNSUPPORTED)
    return obj


def _key32(obj: dict[str, Any], name: str) -> bytes:
    val = obj.get(name)
    if not isinstance(val, bytes) or len(val) != 32:
        raise _fail(f"field {name!r} must be 32 bytes")
    return val


class Initiator:
    """The connecting side: a client device, or a node opening a link to a peer."""

    def __init__(self, identity: SigningKey | None = None) -> None:
        self.identity = identity
        self._pk, self._sk = bindings.crypto_kx_keypair()
        msg: dict[str, Any] = {
            "t": "hello",
            "v": PROTOCOL_VERSION,
            "role": "node" if identity else "client",
            "eph": self._pk,
        }
        if identity is not None:
            msg["id"] = bytes(identity.verify_key)
        self.hello = encode(msg)

    def receive_welcome(self, raw: bytes) -> SessionKeys:
        obj = _decode_map(raw, "welcome")
        eph, ident, sig = _key32(obj, "eph"), _key32(obj, "id"), obj.get("sig")
        if not isinstance(sig, bytes) or len(sig) != 64:
            raise _fail("welcome signature missing")
        th = _transcript(self.hello, eph, ident)
        if not verify(ident, WELCOME_CONTEXT + th, sig):
            raise _fail("welcome signature does not verify")
        rx, tx = bindings.crypto_kx_client_session_keys(self._pk, self._sk, eph)
        return SessionKeys(_bind(rx, th), _bind(tx, th), th, ident)

    def proof(self, keys: SessionKeys) -> bytes:
        """The node initiator's signature over the transcript (sent sealed, first frame)."""
        assert self.identity is not None
        return bytes(self.identity.sign(INITIATOR_CONTEXT + keys.transcript_hash).signature)


class Responder:
    """The accepting side (the gateway), holding the node identity."""

    def __init__(self, identity: SigningKey) -> None:
        self.identity = identity

    def receive_hello(self, raw: bytes) -> tuple[bytes, SessionKeys, str]:
        """Return (welcome bytes, keys, role).  For role "node" the caller must then check
        the initiator's proof with :func:`check_initiator_proof`."""
        obj = _decode_map(raw, "hello")
        role = obj.get("role")
        if role not in _ROLES:
            raise _fail("hello role must be 'client' or 'node'")
        eph = _key32(obj, "eph")
        peer_id = _key32(obj, "id") if role == "node" else None
        pk, sk = bindings.crypto_kx_keypair()
        ident = bytes(self.identity.verify_key)
        th = _transcript(raw, pk, ident)
        sig = bytes(self.identity.sign(WELCOME_CONTEXT + th).signature)
        welcome = encode(
            {"t": "welcome", "v": PROTOCOL_VERSION, "eph": pk, "id": ident, "sig": sig}
        )
        rx, tx = bindings.crypto_kx_server_session_keys(pk, sk, eph)
        return welcome, SessionKeys(_bind(rx, th), _bind(tx, th), th, peer_id), str(role)


def check_initiator_proof(keys: SessionKeys, signature: bytes) -> bool:
    if keys.peer_identity is None or not isinstance(signature, bytes):
        return False
    return verify(keys.peer_identity, INITIATOR_CONTEXT + keys.transcript_hash, signature)


def device_proof(device_key: SigningKey, transcript_hash: bytes) -> bytes:
    """A device's signature binding its sign-in/authorization to this one session."""
    return bytes(device_key.sign(DEVICE_CONTEXT + transcript_hash).signature)


def check_device_proof(public_key: bytes, transcript_hash: bytes, signature: bytes) -> bool:
    return verify(public_key, DEVICE_CONTEXT + transcript_hash, signature)
