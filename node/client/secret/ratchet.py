"""Secret-chat sessions: X3DH-style key agreement, then a Double Ratchet (docs §7).

Why this shape: the key agreement lets a device start a chat while the peer is offline (from
the prekeys its node serves) and authenticates both devices by their Ed25519 device keys,
the same keys the nodes vouch for at sign-in. The Double Ratchet then gives every message
its own key, derived one way and deleted after use (forward secrecy), and mixes a fresh
X25519 exchange into the keys each time the direction of talk changes (break-in recovery:
a stolen state stops being useful once both sides have sent again).

Everything here is pure: no I/O, no clock, no randomness except fresh X25519 keys. A
:class:`Session` is changed only by a *successful* :meth:`Session.encrypt` or
:meth:`Session.decrypt`; a failed decrypt leaves it exactly as it was, so a forged or
replayed envelope cannot disturb a chat.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import cbor2
import nacl.bindings
import nacl.exceptions
from nacl.signing import SigningKey

from . import prekeys
from .errors import (
    KeysInvalid,
    OutOfWindow,
    Replayed,
    SecretError,
    StateInvalid,
    Tampered,
    TooLarge,
    UnknownPrekey,
)

VERSION = 1
"""Envelope and state format version; a different one is refused, never guessed at."""

MAX_SKIP = 1000
"""Most message keys one envelope may make us derive ahead (the largest gap accepted)."""

MAX_SKIPPED = 1000
"""Most keys kept for messages not received yet; past it the oldest are dropped."""

MAX_OLD_CHAINS = 50
"""Previous receiving chains remembered (by public key and length) to recognise replays."""

MAX_DROPPED_IDS = 2000
"""Ids of dropped skipped keys remembered, so a late arrival is OutOfWindow, not Replayed."""

MAX_ENVELOPE = 65536
"""The node's payload bound (§3): a padded message plus the header always fits."""

BUCKETS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65024)
"""Padded plaintext sizes (4-byte length + text + zeros): sizes leak only to this grain."""

MAX_PLAINTEXT = BUCKETS[-1] - 4
"""Largest plaintext one envelope carries; bigger things go as an encrypted file."""

_X3DH_INFO = b"fedgram-x3dh-v1"
_RATCHET_INFO = b"fedgram-ratchet-v1"
_MESSAGE_INFO = b"fedgram-message-v1"
_AD_PREFIX = b"fedgram-secret-v1\x00"
_FP_PREFIX = b"fedgram-fingerprint-v1\x00"
_FP_ITERATIONS = 5200


# --- primitives -------------------------------------------------------------------------


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869): extract with ``salt``, expand to ``length`` bytes for ``info``.

    Written out here because PyNaCl has no HKDF; hmac/hashlib are the standard library.
    """
    if length > 255 * 32:
        raise ValueError("hkdf: length too large")
    prk = hmac.new(salt or b"\x00" * 32, ikm, hashlib.sha256).digest()
    out, block = b"", b""
    counter = 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def _kdf_rk(rk: bytes, dh_out: bytes) -> tuple[bytes, bytes]:
    """Root KDF: mix a DH output into the root key; returns ``(new root key, chain key)``."""
    out = hkdf(dh_out, rk, _RATCHET_INFO, 64)
    return out[:32], out[32:]


def _kdf_ck(ck: bytes) -> tuple[bytes, bytes]:
    """Chain KDF: ``(next chain key, message key)``; one way, so old keys cannot be rebuilt."""
    mk = hmac.new(ck, b"\x01", hashlib.sha256).digest()
    nxt = hmac.new(ck, b"\x02", hashlib.sha256).digest()
    return nxt, mk


def _aead_params(mk: bytes) -> tuple[bytes, bytes]:
    """The XChaCha20-Poly1305 key and nonce of one message key (each key seals one message)."""
    out = hkdf(mk, b"", _MESSAGE_INFO, 32 + 24)
    return out[:32], out[32:]


def _dh(private: bytes, public: bytes, error: type[SecretError]) -> bytes:
    """X25519; a low-order peer key (all-zero result) is refused as ``error``."""
    try:
        out = nacl.bindings.crypto_scalarmult(private, public)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.TypeError) as e:
        raise error("an X25519 public key is invalid") from e
    if out == b"\x00" * 32:
        raise error("an X25519 public key is invalid")
    return out


def _ed_to_x25519_pub(pub: bytes, error: type[SecretError]) -> bytes:
    """The X25519 identity key of an Ed25519 device key (docs §2)."""
    try:
        return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(pub)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.TypeError, ValueError) as e:
        raise error("a device key is not a valid Ed25519 public key") from e


def _ed_to_x25519_priv(me: SigningKey) -> bytes:
    return bytes(me.to_curve25519_private_key())


def pad(plaintext: bytes) -> bytes:
    """``len (4 bytes, big-endian) + plaintext + zeros`` up to the next size in BUCKETS."""
    need = len(plaintext) + 4
    for size in BUCKETS:
        if need <= size:
            return len(plaintext).to_bytes(4, "big") + plaintext + b"\x00" * (size - need)
    raise TooLarge(f"a secret message holds at most {MAX_PLAINTEXT} bytes; send a file")


def unpad(padded: bytes) -> bytes:
    """The plaintext of :func:`pad`'s output; ``Tampered`` if the length does not fit."""
    if len(padded) < 4:
        raise Tampered("padded plaintext too short")
    n = int.from_bytes(padded[:4], "big")
    if n > len(padded) - 4:
        raise Tampered("padded plaintext length out of range")
    return padded[4 : 4 + n]


def fingerprint(device_a: bytes, device_b: bytes) -> str:
    """The safety number of two device keys: 60 digits in 12 groups of 5, order-independent.

    Each key is hashed on its own (iterated SHA-512, so a wanted collision costs more) into
    30 digits; the two halves are sorted so both devices print the same string. Comparing
    it out of band proves no node swapped a device key in ``secret.getKeys``.
    """
    halves = sorted(_fingerprint_half(k) for k in (device_a, device_b))
    digits = "".join(halves)
    return " ".join(digits[i : i + 5] for i in range(0, len(digits), 5))


def _fingerprint_half(key: bytes) -> str:
    h = hashlib.sha512(_FP_PREFIX + key).digest()
    for _ in range(_FP_ITERATIONS):
        h = hashlib.sha512(h + key).digest()
    return "".join(f"{int.from_bytes(h[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5))


# --- envelopes --------------------------------------------------------------------------


def _is_bytes(x: object, n: int) -> bool:
    return isinstance(x, bytes) and len(x) == n


def _is_uint(x: object, limit: int = 2**63 - 1) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= limit


def _parse(envelope: bytes) -> tuple[bytes, list[Any], bytes]:
    """``(header bytes, header, ciphertext)`` of an envelope, or ``Tampered``."""
    try:
        outer = cbor2.loads(envelope)
        if not (isinstance(outer, list) and len(outer) == 3 and outer[0] == VERSION):
            raise ValueError("not a version-1 envelope")
        hb, ct = outer[1], outer[2]
        if not (isinstance(hb, bytes) and isinstance(ct, bytes)):
            raise ValueError("envelope fields")
        if cbor2.dumps(outer) != envelope:
            # trailing bytes or another encoding of the same fields: one envelope, one form
            raise ValueError("not the canonical encoding")
        header = cbor2.loads(hb)
    except Tampered:
        raise
    except Exception as e:
        raise Tampered("not a secret-chat envelope") from e
    if not (
        isinstance(header, list)
        and len(header) == 4
        and _is_bytes(header[0], 32)
        and _is_uint(header[1])
        and _is_uint(header[2])
    ):
        raise Tampered("malformed envelope header")
    x3 = header[3]
    if x3 is not None and not (
        isinstance(x3, list)
        and len(x3) == 4
        and _is_bytes(x3[0], 32)
        and _is_bytes(x3[1], 32)
        and _is_uint(x3[2])
        and (x3[3] is None or _is_uint(x3[3]))
    ):
        raise Tampered("malformed key-agreement header")
    return hb, header, ct


def first_header(envelope: bytes) -> dict[str, Any] | None:
    """The key-agreement header of an envelope, or None if it carries none.

    ``{"ik": initiator's Ed25519 device key, "ek": its ephemeral X25519 key, "spk": signed
    prekey id, "opk": one-time prekey id or None}``. The responder reads it (unauthenticated
    until :meth:`Session.respond` succeeds) to find which prekey privates it needs, and to
    tell a new chat request (a new ``ek``) from the envelopes of a session it has.
    """
    x3 = _parse(envelope)[1][3]
    if x3 is None:
        return None
    return {"ik": x3[0], "ek": x3[1], "spk": x3[2], "opk": x3[3]}


# --- sessions ---------------------------------------------------------------------------

_Key = tuple[bytes, int]


class Session:
    """One side of a secret chat between two devices: a Double Ratchet state.

    Create with :meth:`initiate` (the side that starts the chat) or :meth:`respond` (the
    other, from the first envelope); store with :meth:`to_bytes`. The state holds no
    long-term private key: only ratchet keys, chain keys and the keys of messages not
    received yet.
    """

    def __init__(self) -> None:
        self.my_device_pub = b""  # Ed25519
        self.peer_device_pub = b""  # Ed25519
        self.initiator = False
        self.ephemeral = b""  # the X3DH ephemeral public key: names the session
        self._rk = b""
        self._dhs_priv = b""
        self._dhs_pub = b""
        self._dhr: bytes | None = None
        self._cks: bytes | None = None
        self._ckr: bytes | None = None
        self._ns = 0
        self._nr = 0
        self._pn = 0
        self._x3dh: list[Any] | None = None  # sent on each envelope until the peer answers
        self._skipped: dict[_Key, bytes] = {}  # insertion-ordered: oldest first
        self._dropped_ids: dict[_Key, None] = {}
        self._old_chains: dict[bytes, int] = {}
        self.sent = 0
        self.received = 0
        self.dropped = 0
        self.last_gap = 0

    # construction

    @classmethod
    def initiate(
        cls,
        me: SigningKey,
        their_device_pub: bytes,
        spk: dict[str, Any],
        otk: dict[str, Any] | None,
    ) -> Session:
        """Start a chat from the peer device's published keys (``KeysInvalid`` if forged).

        The signed prekey is verified against ``their_device_pub`` before anything else: the
        node that served it is not trusted. The session can encrypt at once; its envelopes
        carry the key-agreement header until the peer's first answer arrives.
        """
        prekeys.verify_bundle(their_device_pub, spk)
        otk_id, otk_key = prekeys.check_one_time(otk) if otk is not None else (None, None)
        my_pub = bytes(me.verify_key)
        if my_pub == their_device_pub:
            raise KeysInvalid("a secret chat needs two different devices")
        ik_b = _ed_to_x25519_pub(their_device_pub, KeysInvalid)
        ik_a = _ed_to_x25519_priv(me)
        ek_priv, ek_pub = prekeys.x25519_keypair()
        spk_key: bytes = spk["key"]
        dhs = [
            _dh(ik_a, spk_key, KeysInvalid),
            _dh(ek_priv, ik_b, KeysInvalid),
            _dh(ek_priv, spk_key, KeysInvalid),
        ]
        if otk_key is not None:
            dhs.append(_dh(ek_priv, otk_key, KeysInvalid))
        sk = _x3dh_kdf(dhs)
        s = cls()
        s.my_device_pub, s.peer_device_pub, s.initiator = my_pub, their_device_pub, True
        s.ephemeral = ek_pub
        s._dhs_priv, s._dhs_pub = prekeys.x25519_keypair()
        s._dhr = spk_key
        s._rk, s._cks = _kdf_rk(sk, _dh(s._dhs_priv, spk_key, KeysInvalid))
        s._x3dh = [my_pub, ek_pub, spk["id"], otk_id]
        return s

    @classmethod
    def respond(
        cls,
        me: SigningKey,
        spk_private: bytes,
        otk_private: bytes | None,
        first: bytes,
    ) -> tuple[Session, bytes]:
        """Accept a chat from its first envelope: ``(session, plaintext of that envelope)``.

        Find the prekey ids with :func:`first_header`. ``UnknownPrekey`` if the envelope used
        a one-time prekey and ``otk_private`` is None; ``Tampered`` if the envelope does not
        open (wrong prekeys, forged, altered). The caller must check
        ``session.peer_device_pub`` is the device key its node lists for the sender, and
        should then delete the one-time prekey's private half for good.
        """
        hdr = first_header(first)
        if hdr is None:
            raise Tampered("not the first envelope of a chat (no key-agreement header)")
        if hdr["opk"] is not None and otk_private is None:
            raise UnknownPrekey(f"the chat used one-time prekey {hdr['opk']}, which is not here")
        my_pub = bytes(me.verify_key)
        ik_a = _ed_to_x25519_pub(hdr["ik"], Tampered)
        ik_b = _ed_to_x25519_priv(me)
        dhs = [
            _dh(spk_private, ik_a, Tampered),
            _dh(ik_b, hdr["ek"], Tampered),
            _dh(spk_private, hdr["ek"], Tampered),
        ]
        if hdr["opk"] is not None:
            assert otk_private is not None
            dhs.append(_dh(otk_private, hdr["ek"], Tampered))
        s = cls()
        s.my_device_pub, s.peer_device_pub, s.initiator = my_pub, hdr["ik"], False
        s.ephemeral = hdr["ek"]
        s._rk = _x3dh_kdf(dhs)
        s._dhs_priv = spk_private
        s._dhs_pub = nacl.bindings.crypto_scalarmult_base(spk_private)
        plaintext = s.decrypt(first)
        return s, plaintext

    # use

    def _ad(self) -> bytes:
        """Associated data of every envelope: both device keys, initiator first."""
        if self.initiator:
            return _AD_PREFIX + self.my_device_pub + self.peer_device_pub
        return _AD_PREFIX + self.peer_device_pub + self.my_device_pub

    def encrypt(self, plaintext: bytes) -> bytes:
        """Seal ``plaintext`` (padded) into an envelope for the peer device."""
        if self._cks is None:
            raise SecretError("this session cannot send yet")
        padded = pad(plaintext)
        ck, mk = _kdf_ck(self._cks)
        hb = cbor2.dumps([self._dhs_pub, self._pn, self._ns, self._x3dh])
        key, nonce = _aead_params(mk)
        ct = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            padded, self._ad() + hb, nonce, key
        )
        envelope: bytes = cbor2.dumps([VERSION, hb, ct])
        self._cks = ck
        self._ns += 1
        self.sent += 1
        return envelope

    def decrypt(self, envelope: bytes) -> bytes:
        """Open an envelope from the peer device; on any error the session is unchanged.

        ``Tampered``: it does not authenticate (altered, truncated, forged, or of another
        session). ``Replayed``: its message number was already opened. ``OutOfWindow``: it
        is more than MAX_SKIP ahead, or so late that its key was dropped. After a success,
        ``last_gap`` is how many earlier messages it showed to be missing (still awaited).
        """
        work = self._copy()
        plaintext = work._decrypt(envelope)
        self.__dict__.update(work.__dict__)
        return plaintext

    def fingerprint(self) -> str:
        """The chat's safety number (see :func:`fingerprint`); the same on both devices."""
        return fingerprint(self.my_device_pub, self.peer_device_pub)

    @property
    def waiting(self) -> int:
        """How many messages this side knows are missing and still could open."""
        return len(self._skipped)

    @property
    def answered(self) -> bool:
        """Whether the key agreement is confirmed (a message from the responder arrived)."""
        return self._x3dh is None

    # internals

    def _copy(self) -> Session:
        c = Session()
        c.__dict__.update(self.__dict__)
        c._skipped = dict(self._skipped)
        c._dropped_ids = dict(self._dropped_ids)
        c._old_chains = dict(self._old_chains)
        c._x3dh = list(self._x3dh) if self._x3dh is not None else None
        return c

    def _decrypt(self, envelope: bytes) -> bytes:
        hb, header, ct = _parse(envelope)
        dh, pn, n = header[0], header[1], header[2]
        self.last_gap = 0
        mk = self._skipped.pop((dh, n), None)
        if mk is None:
            if dh == self._dhr:
                if self._ckr is None:
                    raise Tampered("an envelope under a key this side never received on")
                if n < self._nr:
                    raise self._gone((dh, n))
            elif dh in self._old_chains:
                if n < self._old_chains[dh]:
                    raise self._gone((dh, n))
                raise Tampered("a message number past the end of its chain")
            else:
                self._skip_to(pn)
                self._step(dh)
            self._skip_to(n)
            assert self._ckr is not None
            self._ckr, mk = _kdf_ck(self._ckr)
            self._nr += 1
        key, nonce = _aead_params(mk)
        try:
            padded = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                ct, self._ad() + hb, nonce, key
            )
        except (nacl.exceptions.CryptoError, ValueError, TypeError) as e:
            # a short ciphertext is a ValueError in PyNaCl, a bad tag a CryptoError
            raise Tampered("the envelope does not authenticate") from e
        plaintext = unpad(padded)
        if self.initiator:
            self._x3dh = None
        self.received += 1
        return plaintext

    def _gone(self, key: _Key) -> SecretError:
        if key in self._dropped_ids:
            return OutOfWindow("a message that arrived after its key was dropped (too late)")
        return Replayed("a message number that was already opened")

    def _skip_to(self, until: int) -> None:
        """Keep the keys of messages ``nr .. until-1`` of the receiving chain for later."""
        if self._ckr is None or self._dhr is None:
            return
        if until - self._nr > MAX_SKIP:
            raise OutOfWindow(f"a gap of {until - self._nr} messages (at most {MAX_SKIP})")
        while self._nr < until:
            self._ckr, mk = _kdf_ck(self._ckr)
            self._skipped[(self._dhr, self._nr)] = mk
            self._nr += 1
            self.last_gap += 1
        while len(self._skipped) > MAX_SKIPPED:
            old = next(iter(self._skipped))
            del self._skipped[old]
            self._dropped_ids[old] = None
            self.dropped += 1
        while len(self._dropped_ids) > MAX_DROPPED_IDS:
            del self._dropped_ids[next(iter(self._dropped_ids))]

    def _step(self, dh: bytes) -> None:
        """A DH ratchet step on the peer's new ratchet key ``dh``."""
        if self._dhr is not None:
            self._old_chains[self._dhr] = self._nr
            while len(self._old_chains) > MAX_OLD_CHAINS:
                del self._old_chains[next(iter(self._old_chains))]
        self._pn = self._ns
        self._ns = 0
        self._nr = 0
        self._dhr = dh
        self._rk, self._ckr = _kdf_rk(self._rk, _dh(self._dhs_priv, dh, Tampered))
        self._dhs_priv, self._dhs_pub = prekeys.x25519_keypair()
        self._rk, self._cks = _kdf_rk(self._rk, _dh(self._dhs_priv, dh, Tampered))

    # storage

    def to_bytes(self) -> bytes:
        """The whole state, for the device's own store (it holds keys: keep it private)."""
        state = {
            "v": VERSION,
            "me": self.my_device_pub,
            "peer": self.peer_device_pub,
            "init": self.initiator,
            "ek": self.ephemeral,
            "rk": self._rk,
            "dhs": self._dhs_priv,
            "dhr": self._dhr,
            "cks": self._cks,
            "ckr": self._ckr,
            "ns": self._ns,
            "nr": self._nr,
            "pn": self._pn,
            "x3dh": self._x3dh,
            "skipped": [[dh, n, mk] for (dh, n), mk in self._skipped.items()],
            "dropped_ids": [[dh, n] for (dh, n) in self._dropped_ids],
            "old": [[dh, n] for dh, n in self._old_chains.items()],
            "stats": [self.sent, self.received, self.dropped],
        }
        out: bytes = cbor2.dumps(state)
        return out

    @classmethod
    def from_bytes(cls, data: bytes) -> Session:
        """A session stored by :meth:`to_bytes`; ``StateInvalid`` if damaged."""
        try:
            st = cbor2.loads(data)
            if not isinstance(st, dict) or st.get("v") != VERSION:
                raise ValueError("not a version-1 session state")
            s = cls()
            s.my_device_pub = _b(st["me"], 32)
            s.peer_device_pub = _b(st["peer"], 32)
            s.initiator = bool(st["init"])
            s.ephemeral = _b(st["ek"], 32)
            s._rk = _b(st["rk"], 32)
            s._dhs_priv = _b(st["dhs"], 32)
            s._dhs_pub = nacl.bindings.crypto_scalarmult_base(s._dhs_priv)
            s._dhr = None if st["dhr"] is None else _b(st["dhr"], 32)
            s._cks = None if st["cks"] is None else _b(st["cks"], 32)
            s._ckr = None if st["ckr"] is None else _b(st["ckr"], 32)
            s._ns, s._nr, s._pn = _u(st["ns"]), _u(st["nr"]), _u(st["pn"])
            x3 = st["x3dh"]
            if x3 is not None:
                x3 = [_b(x3[0], 32), _b(x3[1], 32), _u(x3[2]), None if x3[3] is None else _u(x3[3])]
            s._x3dh = x3
            s._skipped = {(_b(dh, 32), _u(n)): _b(mk, 32) for dh, n, mk in st["skipped"]}
            s._dropped_ids = {(_b(dh, 32), _u(n)): None for dh, n in st["dropped_ids"]}
            s._old_chains = {_b(dh, 32): _u(n) for dh, n in st["old"]}
            s.sent, s.received, s.dropped = (_u(x) for x in st["stats"])
        except Exception as e:
            raise StateInvalid("the stored secret-chat state is damaged") from e
        return s


def _b(x: object, n: int) -> bytes:
    if not _is_bytes(x, n):
        raise ValueError("bad field")
    assert isinstance(x, bytes)
    return x


def _u(x: object) -> int:
    if not _is_uint(x):
        raise ValueError("bad counter")
    assert isinstance(x, int)
    return x


def _x3dh_kdf(dhs: list[bytes]) -> bytes:
    """The shared secret of the key agreement: HKDF over ``0xFF*32 || DH1..DH4``."""
    return hkdf(b"\xff" * 32 + b"".join(dhs), b"\x00" * 32, _X3DH_INFO, 32)


__all__ = [
    "BUCKETS",
    "MAX_PLAINTEXT",
    "MAX_SKIP",
    "MAX_SKIPPED",
    "Session",
    "fingerprint",
    "first_header",
    "hkdf",
    "pad",
    "unpad",
]
