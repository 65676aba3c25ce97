"""Sans-I/O protocol pieces: hardened CBOR, handshake, sealing, schema validation."""

from __future__ import annotations

import cbor2
import pytest
from nacl.signing import SigningKey

from node.protocol import frames
from node.protocol.api import METHODS
from node.protocol.codec import DecodeError, decode, encode
from node.protocol.errors import DESCRIPTIONS, ErrorCode, RpcError, check_descriptions
from node.protocol.handshake import Initiator, Responder, check_initiator_proof
from node.protocol.identity import fingerprint
from node.protocol.seal import Opener, Sealer, SealError


@pytest.mark.parametrize(
    "payload",
    [
        b"\x81" * 10_000,  # array nested 10,000 deep
        b"\xa1\x61a" * 5_000 + b"\x00",  # maps nested deep
        b"\x5b" + (2**60).to_bytes(8, "big"),  # byte string declaring 2^60 bytes
        b"\x7b" + (2**60).to_bytes(8, "big"),  # text string declaring 2^60 bytes
        b"\x9b" + (2**60).to_bytes(8, "big"),  # array declaring 2^60 items
        b"\x9f\x01\x02\xff",  # indefinite-length array
        b"\xa2\x61a\x01\x61a\x02",  # duplicate key
        cbor2.dumps(cbor2.CBORTag(35, "(a+)+$")),  # regex tag
        cbor2.dumps(cbor2.CBORTag(36, "Content-Type: text/plain\n\nx")),  # MIME tag
        cbor2.dumps(cbor2.CBORTag(28, [1])),  # shared reference
        cbor2.dumps(cbor2.CBORTag(2, b"\x01" * 64)),  # bignum
        cbor2.dumps(cbor2.CBORTag(999_999, 1)),  # unknown tag
        b"\xa1\x01\x02",  # integer map key
        b"\xff\xfe\xfd",  # garbage
        b"",
    ],
)
def test_hostile_cbor_is_rejected_fast(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(payload)


def test_cbor_roundtrip() -> None:
    obj = {"id": 1, "m": "x.y", "p": {"b": b"\x00\x01", "s": "é", "l": [1, 2.5, None, True]}}
    assert decode(encode(obj)) == obj


def test_handshake_agrees_and_binds_identity() -> None:
    node = SigningKey.generate()
    init = Initiator()
    welcome, server_keys, role = Responder(node).receive_hello(init.hello)
    client_keys = init.receive_welcome(welcome)
    assert role == "client"
    assert client_keys.tx == server_keys.rx and client_keys.rx == server_keys.tx
    assert client_keys.transcript_hash == server_keys.transcript_hash
    assert fingerprint(client_keys.peer_identity or b"") == fingerprint(bytes(node.verify_key))


def test_welcome_forged_by_another_key_is_refused() -> None:
    init = Initiator()
    welcome, _, _ = Responder(SigningKey.generate()).receive_hello(init.hello)
    obj = decode(welcome)
    obj["id"] = bytes(SigningKey.generate().verify_key)  # claim another identity
    with pytest.raises(RpcError) as e:
        init.receive_welcome(encode(obj))
    assert e.value.code == ErrorCode.HANDSHAKE_FAILED


def test_node_initiator_proof_is_bound_to_session() -> None:
    me = SigningKey.generate()
    responder = Responder(SigningKey.generate())
    init1 = Initiator(me)
    w1, keys1, role = responder.receive_hello(init1.hello)
    proof1 = init1.proof(init1.receive_welcome(w1))
    assert role == "node" and check_initiator_proof(keys1, proof1)
    init2 = Initiator(me)
    _, keys2, _ = responder.receive_hello(init2.hello)
    assert not check_initiator_proof(keys2, proof1)  # replayed into another session


@pytest.mark.parametrize(
    "hello",
    [
        b"garbage",
        encode({"t": "hello", "v": 99}),
        encode({"t": "hello", "v": 1, "role": "client", "eph": b"x"}),
    ],
)
def test_bad_hello(hello: bytes) -> None:
    with pytest.raises(RpcError) as e:
        Responder(SigningKey.generate()).receive_hello(hello)
    assert e.value.code in (ErrorCode.HANDSHAKE_FAILED, ErrorCode.VERSION_UNSUPPORTED)


def test_seal_rejects_tamper_replay_reorder_wrong_key() -> None:
    key = b"k" * 32
    s, o = Sealer(key), Opener(key)
    a, b = s.seal(b"first"), s.seal(b"second")
    with pytest.raises(SealError):
        o.open(b)  # reordered
    assert o.open(a) == b"first"
    with pytest.raises(SealError):
        o.open(a)  # replayed
    tampered = bytearray(b)
    tampered[0] ^= 1
    with pytest.raises(SealError):
        o.open(bytes(tampered))
    with pytest.raises(SealError):
        Opener(b"x" * 32).open(Sealer(b"y" * 32).seal(b"z"))
    assert o.open(b) == b"second"


def test_schema_validation_names_the_field() -> None:
    ping = METHODS["system.ping"]
    ping.validate({})
    ping.validate({"ping_id": 5})
    for bad, needle in [
        ({"ping_id": "x"}, "ping_id"),
        ({"ping_id": True}, "ping_id"),
        ({"extra": 1}, "extra"),
        ({"ping_id": 2**63}, "ping_id"),
    ]:
        with pytest.raises(RpcError) as e:
            ping.validate(bad)
        assert e.value.code == ErrorCode.PARAMS_INVALID and needle in e.value.message


def test_request_envelope() -> None:
    assert frames.parse_request({"id": 3, "m": "a.b", "p": {}}) == (3, "a.b", {})
    for bad in [
        [],
        {"id": "1", "m": "a"},
        {"id": 1, "m": 5},
        {"id": 1, "m": "a", "p": []},
        {"id": -1, "m": "a"},
        {"id": 1, "m": "a", "x": 1},
    ]:
        with pytest.raises(RpcError) as e:
            frames.parse_request(bad)
        assert e.value.code == ErrorCode.BAD_REQUEST


def test_every_error_code_is_documented() -> None:
    assert check_descriptions() == []
    assert all(c.isupper() for c in DESCRIPTIONS)


def test_direct_aead_matches_the_public_binding() -> None:
    """The fast libsodium path must produce exactly what nacl.bindings produces."""
    from node.protocol import seal

    key = bytes(range(32))
    for n, msg in enumerate([b"", b"x", bytes(1000)]):
        nonce = b"\x00" * 4 + n.to_bytes(8, "little")
        sealed = seal._encrypt(msg, nonce, key)
        assert sealed == seal._public_encrypt(msg, nonce, key)
        assert seal._decrypt(sealed, nonce, key) == seal._public_decrypt(sealed, nonce, key) == msg
