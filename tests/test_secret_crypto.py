"""The secret-chat crypto (node/client/secret/): prekeys, sessions, files.

Pure functions, so no nodes here: these pin the properties the rest of issue 14 relies on
(authentication, replay/reorder/tamper detection, forward secrecy, padding, file integrity).
"""

from __future__ import annotations

import hashlib
import io
import random
from typing import Any

import cbor2
import pytest
from nacl.signing import SigningKey, VerifyKey

from node.client.secret import files, prekeys, ratchet
from node.client.secret.errors import (
    KeysInvalid,
    OutOfWindow,
    Replayed,
    SecretError,
    StateInvalid,
    Tampered,
    TooLarge,
    UnknownPrekey,
)
from node.client.secret.ratchet import Session

# --- helpers ------------------------------------------------------------------------------


class Device:
    """A device's keys as the SDK would keep them: device key, SPK and one-time privates."""

    def __init__(self, spk_id: int = 7) -> None:
        self.key = SigningKey.generate()
        self.pub = bytes(self.key.verify_key)
        self.spk_priv, self.spk = prekeys.make_signed_prekey(self.key, spk_id)
        self.otk_priv, self.otks = prekeys.make_one_time(100, 10)


def start(with_otk: bool = True) -> tuple[Device, Device, Session, Session]:
    """Alice initiates with Bob's keys; Bob answers from her first envelope."""
    alice, bob = Device(), Device()
    a = Session.initiate(alice.key, bob.pub, bob.spk, bob.otks[0] if with_otk else None)
    first = a.encrypt(b"hello bob")
    b, text = respond(bob, first)
    assert text == b"hello bob"
    return alice, bob, a, b


def respond(bob: Device, first: bytes) -> tuple[Session, bytes]:
    hdr = ratchet.first_header(first)
    assert hdr is not None
    assert hdr["spk"] == bob.spk["id"]
    otk = bob.otk_priv.pop(hdr["opk"]) if hdr["opk"] is not None else None
    return Session.respond(bob.key, bob.spk_priv, otk, first)


def header(envelope: bytes) -> list[Any]:
    h: list[Any] = cbor2.loads(cbor2.loads(envelope)[1])
    return h


def rebuild(envelope: bytes, hdr: list[Any] | None = None, ct: bytes | None = None) -> bytes:
    """The envelope with its header or ciphertext replaced (what a malicious node could do)."""
    v, hb, c = cbor2.loads(envelope)
    out: bytes = cbor2.dumps([v, hb if hdr is None else cbor2.dumps(hdr), c if ct is None else ct])
    return out


def flip(b: bytes, i: int) -> bytes:
    return b[:i] + bytes([b[i] ^ 0x01]) + b[i + 1 :]


# --- prekeys ------------------------------------------------------------------------------


def test_signed_prekey_signature_is_the_documented_one() -> None:
    dev = SigningKey.generate()
    priv, spk = prekeys.make_signed_prekey(dev, 0x0102030405)
    assert set(spk) == {"id", "key", "sig"} and spk["id"] == 0x0102030405
    assert len(priv) == 32 and len(spk["key"]) == 32 and len(spk["sig"]) == 64
    msg = b"fedgram-spk\x00" + (0x0102030405).to_bytes(8, "big") + spk["key"]
    VerifyKey(bytes(dev.verify_key)).verify(msg, spk["sig"])  # docs §2, byte for byte
    from nacl.bindings import crypto_scalarmult_base

    assert crypto_scalarmult_base(priv) == spk["key"]
    prekeys.verify_bundle(bytes(dev.verify_key), spk)


def test_one_time_prekeys() -> None:
    from nacl.bindings import crypto_scalarmult_base

    privs, bundles = prekeys.make_one_time(50, 20)
    assert [b["id"] for b in bundles] == list(range(50, 70))
    assert sorted(privs) == list(range(50, 70))
    for b in bundles:
        assert set(b) == {"id", "key"} and crypto_scalarmult_base(privs[b["id"]]) == b["key"]
    assert len({b["key"] for b in bundles}) == 20
    assert prekeys.make_one_time(1, 0) == ({}, [])


@pytest.mark.parametrize(
    "change",
    ["other device", "key", "id", "sig", "short sig", "no key", "negative id", "bool id"],
)
def test_verify_bundle_refuses(change: str) -> None:
    dev = SigningKey.generate()
    pub = bytes(dev.verify_key)
    _, spk = prekeys.make_signed_prekey(dev, 3)
    if change == "other device":
        pub = bytes(SigningKey.generate().verify_key)
    elif change == "key":
        spk["key"] = flip(spk["key"], 0)
    elif change == "id":
        spk["id"] = 4
    elif change == "sig":
        spk["sig"] = flip(spk["sig"], 10)
    elif change == "short sig":
        spk["sig"] = spk["sig"][:63]
    elif change == "no key":
        del spk["key"]
    elif change == "negative id":
        spk["id"] = -1
    elif change == "bool id":
        spk["id"] = True
    with pytest.raises(KeysInvalid) as e:
        prekeys.verify_bundle(pub, spk)
    assert e.value.code == "SECRET_KEYS_INVALID"


def test_initiate_refuses_a_forged_signed_prekey() -> None:
    alice, bob, mallory = Device(), Device(), Device()
    # the node swaps in its own prekey, signed by another key: refused before any DH
    with pytest.raises(KeysInvalid):
        Session.initiate(alice.key, bob.pub, mallory.spk, None)
    forged = dict(bob.spk, key=mallory.spk["key"])
    with pytest.raises(KeysInvalid):
        Session.initiate(alice.key, bob.pub, forged, bob.otks[0])
    with pytest.raises(KeysInvalid):
        Session.initiate(alice.key, bob.pub, bob.spk, {"id": 1, "key": b"short"})
    with pytest.raises(KeysInvalid):  # a low-order one-time prekey (all-zero DH)
        Session.initiate(alice.key, bob.pub, bob.spk, {"id": 1, "key": bytes(32)})
    with pytest.raises(KeysInvalid):
        Session.initiate(alice.key, alice.pub, alice.spk, None)


# --- sessions: basics ---------------------------------------------------------------------


def test_hkdf_matches_rfc5869_case_1() -> None:
    okm = ratchet.hkdf(b"\x0b" * 22, bytes(range(13)), bytes(range(0xF0, 0xFA)), 42)
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


@pytest.mark.parametrize("with_otk", [True, False])
def test_round_trips_with_many_ratchet_turns(with_otk: bool) -> None:
    _, _, a, b = start(with_otk)
    rng = random.Random(1)
    ratchet_keys = set()
    for turn in range(60):
        sender, receiver = (a, b) if turn % 2 else (b, a)
        for i in range(rng.randint(1, 4)):
            text = f"turn {turn} msg {i} ".encode() * rng.randint(0, 30)
            env = sender.encrypt(text)
            ratchet_keys.add(header(env)[0])
            assert receiver.decrypt(env) == text
    # every change of direction brings a fresh ratchet key (break-in recovery needs it)
    assert len(ratchet_keys) >= 60
    assert a.sent == b.received - 0 and b.sent + 1 == a.received + 1
    assert a.answered and b.answered


def test_first_envelopes_carry_the_key_agreement_until_answered() -> None:
    alice, bob = Device(), Device()
    a = Session.initiate(alice.key, bob.pub, bob.spk, bob.otks[3])
    envs = [a.encrypt(f"m{i}".encode()) for i in range(3)]
    hdrs = [ratchet.first_header(e) for e in envs]
    assert all(h == hdrs[0] for h in hdrs)
    h = hdrs[0]
    assert h is not None
    assert h["ik"] == alice.pub and h["spk"] == 7 and h["opk"] == bob.otks[3]["id"]
    assert h["ek"] == a.ephemeral and len(h["ek"]) == 32
    # Bob is offline for the first ones and answers from the last that arrives
    b, text = respond(bob, envs[2])
    assert text == b"m2"
    assert b.peer_device_pub == alice.pub and b.ephemeral == a.ephemeral
    assert [b.decrypt(envs[0]), b.decrypt(envs[1])] == [b"m0", b"m1"]
    assert not a.answered
    assert ratchet.first_header(a.encrypt(b"m3")) is not None
    a.decrypt(b.encrypt(b"hi alice"))
    assert a.answered
    later = a.encrypt(b"m4")
    assert ratchet.first_header(later) is None
    assert b.decrypt(later) == b"m4"


def test_respond_needs_the_right_prekeys() -> None:
    alice, bob = Device(), Device()
    a = Session.initiate(alice.key, bob.pub, bob.spk, bob.otks[0])
    first = a.encrypt(b"x")
    with pytest.raises(UnknownPrekey) as e:
        Session.respond(bob.key, bob.spk_priv, None, first)
    assert e.value.code == "SECRET_PREKEY_UNKNOWN"
    with pytest.raises(Tampered):
        Session.respond(bob.key, bob.spk_priv, bob.otk_priv[101], first)
    with pytest.raises(Tampered):
        Session.respond(bob.key, Device().spk_priv, bob.otk_priv[100], first)
    with pytest.raises(Tampered):  # another device cannot open it
        Session.respond(Device().key, bob.spk_priv, bob.otk_priv[100], first)
    # a node that claims the envelope comes from someone else: the header names Alice's key
    # and the AD binds it, so changing it breaks the envelope
    h = header(first)
    h[3][0] = Device().pub
    with pytest.raises(Tampered):
        Session.respond(bob.key, bob.spk_priv, bob.otk_priv[100], rebuild(first, h))
    with pytest.raises(Tampered):  # not a first envelope
        Session.respond(bob.key, bob.spk_priv, None, b"\x00garbage")
    b, text = Session.respond(bob.key, bob.spk_priv, bob.otk_priv[100], first)
    assert text == b"x"
    with pytest.raises(Tampered):
        ratchet.first_header(b"not cbor \xff")
    assert ratchet.first_header(b.encrypt(b"y")) is None


def test_error_codes_are_stable() -> None:
    codes = {
        SecretError: "SECRET_ERROR",
        KeysInvalid: "SECRET_KEYS_INVALID",
        UnknownPrekey: "SECRET_PREKEY_UNKNOWN",
        Tampered: "SECRET_TAMPERED",
        Replayed: "SECRET_REPLAYED",
        OutOfWindow: "SECRET_OUT_OF_WINDOW",
        TooLarge: "SECRET_TOO_LARGE",
        StateInvalid: "SECRET_STATE_INVALID",
    }
    for cls, code in codes.items():
        assert cls.code == code and issubclass(cls, SecretError)
        assert str(cls()) and cls("why").code == code


# --- ordering, replay, tampering, window --------------------------------------------------


def test_out_of_order_delivery_across_chains() -> None:
    _, _, a, b = start()
    sent: list[tuple[bytes, bytes]] = []
    for turn in range(6):  # Alice's messages span several of her sending chains
        for i in range(15):
            text = f"a{turn}.{i}".encode()
            sent.append((text, a.encrypt(text)))
        a.decrypt(b.encrypt(f"b{turn}".encode()))  # Bob answers: Alice steps her ratchet
    rng = random.Random(5)
    rng.shuffle(sent)
    gaps = 0
    for text, env in sent:
        assert b.decrypt(env) == text
        gaps += b.last_gap
    assert b.waiting == 0
    assert gaps > 0  # the gaps were seen (and reported) on the way
    for _, env in sent[:20]:
        with pytest.raises(Replayed):
            b.decrypt(env)


def test_gap_is_reported() -> None:
    _, _, a, b = start()
    envs = [a.encrypt(b"%d" % i) for i in range(10)]
    assert b.decrypt(envs[9]) == b"9"
    assert b.last_gap == 9 and b.waiting == 9
    assert b.decrypt(envs[3]) == b"3"
    assert b.last_gap == 0 and b.waiting == 8


def test_replay_is_detected() -> None:
    _, _, a, b = start()
    e1, e2, e3 = (a.encrypt(b"one"), a.encrypt(b"two"), a.encrypt(b"three"))
    assert b.decrypt(e1) == b"one"
    with pytest.raises(Replayed) as exc:
        b.decrypt(e1)
    assert exc.value.code == "SECRET_REPLAYED"
    assert b.decrypt(e3) == b"three"  # e2 skipped: its key kept
    assert b.decrypt(e2) == b"two"
    for e in (e1, e2, e3):
        with pytest.raises(Replayed):
            b.decrypt(e)
    # after a ratchet turn, envelopes of the old chain are still recognised
    a.decrypt(b.encrypt(b"turn"))
    assert b.decrypt(a.encrypt(b"new chain")) == b"new chain"
    with pytest.raises(Replayed):
        b.decrypt(e2)


def test_tampering_is_detected() -> None:
    _, _, a, b = start()
    a.decrypt(b.encrypt(b"answered"))
    env = a.encrypt(b"pay 10 to carol")
    h = header(env)
    variants = []
    for field in range(3):  # ratchet key, previous chain length, message number
        h2 = list(h)
        h2[field] = flip(h[0], 31) if field == 0 else h[field] + 1
        variants.append(rebuild(env, h2))
    variants.append(rebuild(env, [*h[:3], [a.my_device_pub, bytes(32), 7, None]]))
    ct = cbor2.loads(env)[2]
    variants += [rebuild(env, ct=flip(ct, i)) for i in (0, len(ct) // 2, len(ct) - 1)]
    variants += [rebuild(env, ct=ct[:-1]), rebuild(env, ct=b""), env[:-5], b"", b"\xa0"]
    variants.append(cbor2.dumps([2, *cbor2.loads(env)[1:]]))  # another version
    before = b.to_bytes()
    for v in variants:
        with pytest.raises(Tampered) as exc:
            b.decrypt(v)
        assert exc.value.code == "SECRET_TAMPERED"
        assert b.to_bytes() == before
    assert b.decrypt(env) == b"pay 10 to carol"


def test_random_corruption_is_always_a_secret_error() -> None:
    """Whatever a node does to the bytes, decrypt raises SecretError (never another
    exception, never a plaintext)."""
    _, _, a, b = start()
    a.decrypt(b.encrypt(b"answered"))
    envs = [a.encrypt(b"m" * 100), a.encrypt(b"")]
    rng = random.Random(11)
    before = b.to_bytes()
    for i in range(1500):
        e = bytearray(envs[i % 2])
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            if op < 0.6 and e:
                e[rng.randrange(len(e))] ^= 1 << rng.randrange(8)
            elif op < 0.8:
                e = e[: rng.randrange(len(e) + 1)]
            else:
                e.insert(rng.randrange(len(e) + 1), rng.randrange(256))
        if bytes(e) == envs[i % 2]:
            continue
        with pytest.raises(SecretError):
            b.decrypt(bytes(e))
    assert b.to_bytes() == before
    with pytest.raises(Tampered):  # trailing bytes too
        b.decrypt(envs[0] + b"\x00")
    assert [b.decrypt(e) for e in envs] == [b"m" * 100, b""]


def test_associated_data_binds_both_devices() -> None:
    """An envelope only opens for the pair of device keys it was made between."""
    _, _, a, b = start()
    env = a.encrypt(b"for bob, from alice")
    st = cbor2.loads(b.to_bytes())
    st["peer"] = Device().pub  # Bob's state believing another device is at the other end
    with pytest.raises(Tampered):
        Session.from_bytes(cbor2.dumps(st)).decrypt(env)
    # and another chat's envelope does not open in this one
    _, _, a2, _ = start()
    with pytest.raises(Tampered):
        b.decrypt(a2.encrypt(b"other chat"))
    assert b.decrypt(env) == b"for bob, from alice"


def test_beyond_the_window() -> None:
    _, _, a, b = start()
    envs = [a.encrypt(b"%d" % i) for i in range(ratchet.MAX_SKIP + 2)]
    before = b.to_bytes()
    with pytest.raises(OutOfWindow) as exc:  # a gap of MAX_SKIP + 1
        b.decrypt(envs[ratchet.MAX_SKIP + 1])
    assert exc.value.code == "SECRET_OUT_OF_WINDOW"
    assert b.to_bytes() == before
    assert b.decrypt(envs[ratchet.MAX_SKIP]) == b"%d" % ratchet.MAX_SKIP  # gap of MAX_SKIP
    assert b.waiting == ratchet.MAX_SKIP
    assert b.decrypt(envs[ratchet.MAX_SKIP + 1]) == b"%d" % (ratchet.MAX_SKIP + 1)
    assert b.decrypt(envs[17]) == b"17"


def test_keys_dropped_past_the_bound_are_out_of_window() -> None:
    _, _, a, b = start()
    early = [a.encrypt(b"early %d" % i) for i in range(600)]
    b.decrypt(a.encrypt(b"x"))  # 600 waiting
    late = [a.encrypt(b"late %d" % i) for i in range(600)]
    assert b.decrypt(a.encrypt(b"y")) == b"y"  # 1200 waiting > MAX_SKIPPED: oldest dropped
    assert b.waiting == ratchet.MAX_SKIPPED and b.dropped == 200
    for e in early[:200]:
        with pytest.raises(OutOfWindow):
            b.decrypt(e)
    assert b.decrypt(early[200]) == b"early 200"
    assert b.decrypt(late[599]) == b"late 599"


def test_failed_decrypts_leave_the_session_usable() -> None:
    _, _, a, b = start()
    good = [a.encrypt(b"g%d" % i) for i in range(5)]
    b.decrypt(good[0])
    far = [a.encrypt(b"f") for _ in range(ratchet.MAX_SKIP + 5)][-1]
    before = b.to_bytes()
    attempts = [
        good[0],  # replay
        far,  # beyond the window
        rebuild(good[1], ct=flip(cbor2.loads(good[1])[2], 3)),  # tampered
        rebuild(good[2], [flip(header(good[2])[0], 5), 0, 0, None]),  # forged ratchet step
        rebuild(good[2], [header(good[2])[0], 0, 900, None]),  # forged skip ahead
    ]
    for env in attempts:
        with pytest.raises(SecretError):
            b.decrypt(env)
        assert b.to_bytes() == before
    assert [b.decrypt(e) for e in good[1:]] == [b"g1", b"g2", b"g3", b"g4"]
    reply = b.encrypt(b"still fine")
    assert a.decrypt(reply) == b"still fine"


# --- fingerprints, storage ----------------------------------------------------------------


def test_fingerprints() -> None:
    alice, bob, a, b = start()
    fp = a.fingerprint()
    assert fp == b.fingerprint()
    groups = fp.split(" ")
    assert len(groups) == 12 and all(len(g) == 5 and g.isdigit() for g in groups)
    assert ratchet.fingerprint(alice.pub, bob.pub) == ratchet.fingerprint(bob.pub, alice.pub)
    carol = Device()
    c = Session.initiate(carol.key, bob.pub, bob.spk, None)
    assert c.fingerprint() != fp
    # a session with Bob's *other* device has another number too
    bob2 = Device()
    assert Session.initiate(alice.key, bob2.pub, bob2.spk, None).fingerprint() != fp
    # stable across sessions between the same two devices
    assert Session.initiate(alice.key, bob.pub, bob.spk, None).fingerprint() == fp


def test_state_survives_storage_mid_conversation() -> None:
    _, _, a, b = start()
    pending = [a.encrypt(b"p%d" % i) for i in range(5)]
    b.decrypt(pending[4])  # 4 waiting in Bob's state
    a = Session.from_bytes(a.to_bytes())
    b = Session.from_bytes(b.to_bytes())
    assert b.waiting == 4
    assert [b.decrypt(e) for e in pending[:4]] == [b"p0", b"p1", b"p2", b"p3"]
    with pytest.raises(Replayed):
        Session.from_bytes(b.to_bytes()).decrypt(pending[4])
    for i in range(10):
        assert a.decrypt(b.encrypt(b"b%d" % i)) == b"b%d" % i
        a = Session.from_bytes(a.to_bytes())
        assert b.decrypt(a.encrypt(b"a%d" % i)) == b"a%d" % i
        b = Session.from_bytes(b.to_bytes())
    assert a.fingerprint() == b.fingerprint()
    for junk in (b"", b"\x00", cbor2.dumps({"v": 2}), cbor2.dumps({"v": 1, "me": b"x"})):
        with pytest.raises(StateInvalid):
            Session.from_bytes(junk)


def test_state_holds_no_long_term_private_key() -> None:
    alice, bob, a, b = start()
    for dev, s in ((alice, a), (bob, b)):
        st = s.to_bytes()
        assert bytes(dev.key) not in st  # the Ed25519 seed
        assert bytes(dev.key.to_curve25519_private_key()) not in st


# --- forward secrecy and break-in recovery ------------------------------------------------


def test_forward_secrecy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A theft of a device's key and session state after the fact opens no earlier message.

    Every message key the ratchet derives is recorded (by wrapping its chain KDF), and every
    ratchet private key it makes; envelopes on the wire are captured. After the conversation
    the attacker takes Bob's device key, his current session state and his remaining prekey
    privates (the one-time prekey used was deleted, as the SDK does): none of the earlier
    message keys or ratchet privates is in what he took, and no captured envelope opens.
    """
    message_keys: list[bytes] = []
    ratchet_privates: list[bytes] = []
    kdf_ck, keypair = ratchet._kdf_ck, prekeys.x25519_keypair

    def recording_kdf_ck(ck: bytes) -> tuple[bytes, bytes]:
        nxt, mk = kdf_ck(ck)
        message_keys.append(mk)
        return nxt, mk

    def recording_keypair() -> tuple[bytes, bytes]:
        priv, pub = keypair()
        ratchet_privates.append(priv)
        return priv, pub

    alice, bob = Device(), Device()
    monkeypatch.setattr(ratchet, "_kdf_ck", recording_kdf_ck)
    monkeypatch.setattr(prekeys, "x25519_keypair", recording_keypair)

    a = Session.initiate(alice.key, bob.pub, bob.spk, bob.otks[0])
    wire_to_bob: list[tuple[bytes, bytes]] = []
    wire_to_alice: list[tuple[bytes, bytes]] = []
    first = a.encrypt(b"secret 0")
    wire_to_bob.append((b"secret 0", first))
    b, _ = respond(bob, first)  # deletes one-time prekey 100 from bob.otk_priv
    for turn in range(1, 20):
        for i in range(3):
            t = f"alice {turn}.{i}".encode()
            e = a.encrypt(t)
            wire_to_bob.append((t, e))
            assert b.decrypt(e) == t
        t = f"bob {turn}".encode()
        e = b.encrypt(t)
        wire_to_alice.append((t, e))
        assert a.decrypt(e) == t
    used_keys = list(message_keys)
    old_privates = list(ratchet_privates)

    # the compromise, after the fact
    stolen_device_key = bytes(bob.key)
    stolen_state = b.to_bytes()
    stolen_prekeys = list(bob.otk_priv.values())
    assert 100 not in bob.otk_priv

    # 1. no earlier message key and no earlier ratchet private is in what was taken
    loot = stolen_state + stolen_device_key + b"".join(stolen_prekeys) + bob.spk_priv
    assert len(used_keys) > 60
    assert not [k for k in used_keys if k in loot]
    current = cbor2.loads(stolen_state)["dhs"]
    assert not [k for k in old_privates if k in loot and k != current]
    # nor any AEAD key made from them
    assert not [k for k in used_keys if ratchet._aead_params(k)[0] in loot]

    # 2. no captured envelope opens from the stolen state
    thief = Session.from_bytes(stolen_state)
    for _, env in wire_to_bob:
        with pytest.raises((Replayed, OutOfWindow, Tampered)):
            thief.decrypt(env)

    # 3. re-running the key agreement with the stolen device key and signed prekey fails:
    #    the first messages also needed the one-time prekey, deleted on use
    thief_key = SigningKey(stolen_device_key)
    with pytest.raises(UnknownPrekey):
        Session.respond(thief_key, bob.spk_priv, None, first)
    for otk in stolen_prekeys:
        with pytest.raises(Tampered):
            Session.respond(thief_key, bob.spk_priv, otk, first)


def test_break_in_recovery() -> None:
    """A stolen state reads at most until the next ratchet turn, then nothing more."""
    _, _, a, b = start()
    a.decrypt(b.encrypt(b"turn"))
    stolen = Session.from_bytes(b.to_bytes())
    e = a.encrypt(b"still readable by the thief")
    assert Session.from_bytes(stolen.to_bytes()).decrypt(e) == b"still readable by the thief"
    b.decrypt(e)
    a.decrypt(b.encrypt(b"bob answers: new ratchet key"))
    later = a.encrypt(b"after recovery")
    with pytest.raises(SecretError):
        stolen.decrypt(later)
    assert b.decrypt(later) == b"after recovery"


# --- padding ------------------------------------------------------------------------------


def test_padding_hides_exact_sizes() -> None:
    _, _, a, b = start()
    a.decrypt(b.encrypt(b"answered"))  # no key-agreement header from here on
    sizes = {len(cbor2.loads(a.encrypt(b"x" * n))[2]) for n in range(0, 253)}
    assert sizes == {256 + 16}  # the ciphertext: one bucket plus the tag
    assert len(cbor2.loads(a.encrypt(b"x" * 253))[2]) == 512 + 16
    # whole envelopes differ only by the header's counters (a byte or so), not the text
    assert len(a.encrypt(b"")) == len(a.encrypt(b"q" * 252))
    by_bucket = {len(cbor2.loads(a.encrypt(b"y" * n))[2]) - 16 for n in (1, 300, 600, 5000)}
    assert by_bucket == {256, 512, 1024, 8192}
    assert ratchet.unpad(ratchet.pad(b"abc")) == b"abc"
    with pytest.raises(Tampered):
        ratchet.unpad((300).to_bytes(4, "big") + bytes(252))


def test_largest_message_fits_the_node_payload_bound() -> None:
    alice, bob = Device(), Device()
    a = Session.initiate(alice.key, bob.pub, bob.spk, {"id": 2**63 - 1, "key": bob.otks[0]["key"]})
    biggest = a.encrypt(b"z" * ratchet.MAX_PLAINTEXT)  # with the key-agreement header
    assert len(biggest) <= ratchet.MAX_ENVELOPE
    with pytest.raises(TooLarge) as e:
        a.encrypt(b"z" * (ratchet.MAX_PLAINTEXT + 1))
    assert e.value.code == "SECRET_TOO_LARGE"


# --- files --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, files.CHUNK - 1, files.CHUNK, files.CHUNK + 1, 300_000])
def test_file_round_trip(size: int) -> None:
    data = random.Random(size).randbytes(size)
    ct, meta = files.encrypt_file(data)
    assert set(meta) == {"key", "sha256", "size"}
    assert meta["size"] == size and len(meta["key"]) == 32
    assert meta["sha256"] == hashlib.sha256(ct).hexdigest()
    assert files.decrypt_file(ct, meta) == data
    if size >= 16:
        assert data[:16] not in ct


def test_file_keys_are_one_time() -> None:
    data = b"same file" * 1000
    (c1, m1), (c2, m2) = files.encrypt_file(data), files.encrypt_file(data)
    assert m1["key"] != m2["key"] and c1 != c2


def test_file_streams() -> None:
    data = random.Random(9).randbytes(3 * files.CHUNK + 77)
    enc = io.BytesIO()
    meta = files.encrypt_stream(io.BytesIO(data), enc)
    assert files.decrypt_file(enc.getvalue(), meta) == data
    out = io.BytesIO()
    assert files.decrypt_stream(io.BytesIO(enc.getvalue()), out, meta) == len(data)
    assert out.getvalue() == data


def _with_digest(ct: bytes, meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` re-pointed at ``ct``: as if the attacker could also change the digest."""
    return dict(meta, sha256=hashlib.sha256(ct).hexdigest())


def test_file_tampering_and_truncation_are_detected() -> None:
    data = random.Random(3).randbytes(3 * files.CHUNK)
    ct, meta = files.encrypt_file(data)
    step = files.CHUNK + 16
    head = files.HEADER
    cases = {
        "byte flipped": flip(ct, head + 1000),
        "cut at a chunk boundary": ct[: head + 2 * step],
        "cut mid-chunk": ct[: head + step + 100],
        "last chunk dropped, earlier intact": ct[: head + 2 * step],
        "chunks swapped": ct[:head]
        + ct[head + step : head + 2 * step]
        + ct[head : head + step]
        + ct[head + 2 * step :],
        "chunk duplicated": ct + ct[head + 2 * step :],
        "header only": ct[:head],
        "empty": b"",
        "magic changed": b"XXXX" + ct[4:],
        "nonce base changed": flip(ct, 6),
    }
    for name, bad in cases.items():
        with pytest.raises(Tampered):  # the digest alone catches it
            files.decrypt_file(bad, meta)
        with pytest.raises(Tampered):  # and so do the chunks, digest or not
            files.decrypt_file(bad, _with_digest(bad, meta))
        assert name
    with pytest.raises(Tampered):
        files.decrypt_file(ct, dict(meta, key=bytes(32)))
    with pytest.raises(Tampered):
        files.decrypt_file(ct, dict(meta, size=len(data) - 1))
    with pytest.raises(Tampered):
        files.decrypt_file(ct, dict(meta, size=len(data) + 1))
    with pytest.raises(Tampered):
        files.decrypt_file(ct, {"key": meta["key"]})
    # an empty file cannot be passed off as nothing at all
    e_ct, e_meta = files.encrypt_file(b"")
    with pytest.raises(Tampered):
        files.decrypt_file(e_ct[: files.HEADER], _with_digest(e_ct[: files.HEADER], e_meta))
    with pytest.raises(Tampered):
        files.decrypt_stream(io.BytesIO(ct[:-1]), io.BytesIO(), _with_digest(ct[:-1], meta))
