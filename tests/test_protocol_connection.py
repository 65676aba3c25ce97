"""The sans-I/O connection: whole sessions driven by handing bytes across, no sockets."""

from __future__ import annotations

import pytest
from nacl.signing import SigningKey

from node.protocol import frames
from node.protocol.codec import encode
from node.protocol.connection import (
    BadFrame,
    Connection,
    ErrorReply,
    ProtocolError,
    Reply,
    Request,
    State,
    Updates,
)
from node.protocol.errors import ErrorCode, RpcError
from node.protocol.handshake import device_proof

NODE_KEY = SigningKey.generate()


def open_pair(node_initiator: SigningKey | None = None) -> tuple[Connection, Connection]:
    client, server = Connection.client(node_initiator), Connection.server(NODE_KEY)
    welcome = server.receive_hello(client.hello())
    proof = client.receive_welcome(welcome)
    if proof is not None:
        assert server.state is State.AWAIT_PROOF
        assert server.receive(proof) is None
    assert client.state is server.state is State.OPEN
    return client, server


def test_client_session_round_trip() -> None:
    client, server = open_pair()
    assert client.peer_identity == bytes(NODE_KEY.verify_key)
    assert server.peer_role == "client" and server.peer_identity is None
    assert client.transcript_hash == server.transcript_hash
    rid, data = client.request("system.ping", {"ping_id": 7})
    ev = server.receive(data)
    assert ev == Request(rid, "system.ping", {"ping_id": 7})
    assert client.receive(server.result(rid, {"pong": 7})) == Reply(rid, {"pong": 7})
    err = client.receive(server.error(rid, RpcError(ErrorCode.FLOOD_WAIT, "slow", 3)))
    assert isinstance(err, ErrorReply) and err.id == rid
    assert (err.error.code, err.error.message, err.error.retry_after) == ("FLOOD_WAIT", "slow", 3)
    batch = frames.encode_updates([{"type": "a"}, {"type": "b"}])
    both = [{"type": "a"}, {"type": "b"}] * 2
    assert client.receive(server.push([batch, batch])) == Updates(both)


def test_device_proof_binds_to_the_transcript() -> None:
    client, _ = open_pair()
    other, _ = open_pair()
    key = SigningKey.generate()
    assert device_proof(key, client.transcript_hash) != device_proof(key, other.transcript_hash)


def test_node_link_carries_calls_both_ways() -> None:
    a, b = open_pair(SigningKey.generate())
    assert b.peer_role == "node" and b.peer_identity is not None
    rid_a, data = a.request("fed.ping", {})
    assert b.receive(data) == Request(rid_a, "fed.ping", {})
    rid_b, data = b.request("fed.pull", {"after": 3})
    assert a.receive(data) == Request(rid_b, "fed.pull", {"after": 3})
    assert b.receive(a.result(rid_b, [1])) == Reply(rid_b, [1])
    assert a.receive(b.result(rid_a, "ok")) == Reply(rid_a, "ok")


def test_client_cannot_be_called_and_cannot_push() -> None:
    client, server = open_pair()
    # the node calling a client device is a protocol violation on the client's side
    with pytest.raises(ProtocolError) as e:
        client.receive(server.seal(encode(frames.request(1, "x.y", {}))))
    assert e.value.reason == ErrorCode.BAD_FRAME and client.state is State.CLOSED
    # a client pushing to the node is only a bad request: answered, session goes on
    client, server = open_pair()
    ev = server.receive(client.seal(encode({"u": []})))
    assert isinstance(ev, BadFrame) and ev.error.code == "BAD_REQUEST"
    rid, data = client.request("system.ping", {})
    assert server.receive(data) == Request(rid, "system.ping", {})


def test_bad_requests_are_answered_not_fatal() -> None:
    client, server = open_pair()
    ev = server.receive(client.seal(b"\xff\xff"))
    assert isinstance(ev, BadFrame) and ev.error.code == "BAD_FRAME" and ev.id is None
    ev = server.receive(client.seal(encode({"id": 5, "m": 3})))
    assert isinstance(ev, BadFrame) and ev.error.code == "BAD_REQUEST" and ev.id == 5
    assert server.state is State.OPEN


@pytest.mark.parametrize(
    "answer",
    [{"id": 1}, {"id": True, "r": 1}, {"id": 1, "r": 1, "x": 2}, {"id": 1, "e": "boom"}, {"u": 3}],
)
def test_malformed_answers_close_the_client(answer: dict[str, object]) -> None:
    client, server = open_pair()
    with pytest.raises(ProtocolError):
        client.receive(server.seal(encode(answer)))
    assert client.state is State.CLOSED


def test_tampered_replayed_and_reordered_frames_are_fatal() -> None:
    client, server = open_pair()
    _, first = client.request("a.b", {})
    _, second = client.request("a.b", {})
    server.receive(first)
    with pytest.raises(ProtocolError) as e:
        server.receive(first)  # replay
    assert e.value.reason == ErrorCode.BAD_SEAL
    client, server = open_pair()
    _, first = client.request("a.b", {})
    _, second = client.request("a.b", {})
    with pytest.raises(ProtocolError):
        server.receive(second)  # reordered
    client, server = open_pair()
    _, data = client.request("a.b", {})
    with pytest.raises(ProtocolError):
        server.receive(data[:-1] + bytes([data[-1] ^ 1]))  # tampered
    assert server.state is State.CLOSED
    with pytest.raises(ProtocolError):
        server.receive(data)  # nothing more is accepted once closed


def test_handshake_failures() -> None:
    server = Connection.server(NODE_KEY)
    with pytest.raises(ProtocolError) as e:
        server.receive_hello(b"not cbor")
    assert e.value.reason == ErrorCode.HANDSHAKE_FAILED
    # a welcome signed by someone else than the key it names
    client, server = Connection.client(), Connection.server(NODE_KEY)
    welcome = bytearray(server.receive_hello(client.hello()))
    welcome[-1] ^= 1
    with pytest.raises(ProtocolError):
        client.receive_welcome(bytes(welcome))
    # a node initiator whose proof is not its key's
    node = Connection.client(SigningKey.generate())
    server = Connection.server(NODE_KEY)
    node.receive_welcome(server.receive_hello(node.hello()))
    with pytest.raises(ProtocolError) as e:
        server.receive(node.seal(b"\x00" * 64))
    assert e.value.reason == ErrorCode.HANDSHAKE_FAILED


def test_out_of_order_calls_are_refused() -> None:
    client = Connection.client()
    with pytest.raises(RuntimeError):
        client.request("a.b", {})
    with pytest.raises(ProtocolError):
        client.receive(b"early")
    server = Connection.server(NODE_KEY)
    with pytest.raises(RuntimeError):
        server.hello()
    with pytest.raises(ProtocolError):
        server.receive(b"x")


def test_an_answer_racing_a_fatal_frame_still_seals() -> None:
    """CLOSED ends receiving only: a reply computed while the peer broke the session is
    sealed as usual (the driver is closing the transport), never a crash in the driver."""
    client, server = open_pair()
    rid, data = client.request("a.b", {})
    assert server.receive(data) == Request(rid, "a.b", {})
    with pytest.raises(ProtocolError):
        server.receive(b"x" * 40)  # does not authenticate
    assert server.state is State.CLOSED
    assert client.receive(server.result(rid, 1)) == Reply(rid, 1)


def test_node_links_answer_bad_frames_both_ways() -> None:
    """On a node link both ends take requests, so an undecodable frame is answered (id
    None) on either end instead of ending the link."""
    a, b = open_pair(SigningKey.generate())
    for receiver, sender in ((a, b), (b, a)):
        ev = receiver.receive(sender.seal(b"\xff\xff"))
        assert isinstance(ev, BadFrame) and ev.id is None and ev.error.code == "BAD_FRAME"
        answer = sender.receive(receiver.error(ev.id, ev.error))
        assert isinstance(answer, ErrorReply) and answer.id is None
        assert answer.error.code == "BAD_FRAME"


def test_deep_answers_are_accepted_deep_requests_are_not() -> None:
    """Answers and pushes may nest deeper (history pages) than requests."""
    client, server = open_pair()
    deep: object = 1
    for _ in range(20):
        deep = [deep]
    assert client.receive(server.result(1, deep)) == Reply(1, deep)
    ev = server.receive(client.seal(encode({"id": 1, "m": "a.b", "p": {"x": deep}})))
    assert isinstance(ev, BadFrame) and ev.error.code == "BAD_FRAME"
