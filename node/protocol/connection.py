"""One session of the wire protocol as a state machine: bytes in, events out, bytes to send.

In the style of h11 and wsproto: nothing here reads or writes a socket, awaits, or knows about
WebSockets. A driver (the gateway, the SDK, the benchmark's light receiver, and federation's
node links) moves whole messages between its transport and a :class:`Connection`, and acts on
the typed events it gets back. So the handshake, sealing, the frame envelopes and their
validation are written once, and their tests need no sockets.

States::

    initiator:  START --hello()--> AWAIT_WELCOME --receive_welcome()--> OPEN
    responder:  START --receive_hello()--> OPEN                      (peer role "client")
                START --receive_hello()--> AWAIT_PROOF --receive()--> OPEN   (role "node")
    any state   --fail()/a fatal frame--> CLOSED

A fatal problem (a frame that does not authenticate, a bad handshake, a frame out of place)
raises :class:`ProtocolError` carrying the close reason, and the connection is CLOSED: the
driver closes the transport with that reason. A frame that authenticates but is not a valid
request is not fatal: it comes back as :class:`BadFrame`, to be answered with its error while
the session goes on, exactly as an RPC error would be.

CLOSED ends receiving. Sending stays possible once the keys exist: an answer that was being
computed when the peer broke the session may still be sealed (the driver is closing the
transport anyway), so a race between a fatal frame and a reply is never a crash.

What stays with the driver: the transport (WebSocket messages; a text message is its own
close reason, TEXT_FRAME), timeouts, pinning the peer's key, and sending sealed frames in
the order they were sealed (the counter is the nonce; see :meth:`Connection.seal`).
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass
from typing import Any

from nacl.signing import SigningKey

from . import frames
from .codec import MAX_DEPTH, DecodeError, decode, encode
from .errors import ErrorCode, RpcError
from .handshake import Initiator, Responder, SessionKeys, check_initiator_proof
from .seal import Opener, Sealer, SealError

# Replies and pushes from a node may nest deeper than requests (history pages of events).
INCOMING_DEPTH = 32


class State(enum.Enum):
    START = "start"
    AWAIT_WELCOME = "await_welcome"
    AWAIT_PROOF = "await_proof"
    OPEN = "open"
    CLOSED = "closed"


_OPEN = State.OPEN  # a module global: reading State.OPEN goes through the enum metaclass


class ProtocolError(Exception):
    """Fatal: the session cannot go on; ``reason`` is the close reason to send."""

    def __init__(self, reason: ErrorCode, message: str = "") -> None:
        self.reason = reason
        self.message = message
        super().__init__(f"{reason}: {message}" if message else str(reason))


# --- events ------------------------------------------------------------------------------
# Plain slotted records: a frozen dataclass costs 0.6 us more per event to build (measured),
# and one is built for every frame on the hot path. Treat them as read-only all the same.
@dataclass(slots=True)
class Request:
    id: int
    method: str
    params: dict[str, Any]


@dataclass(slots=True)
class Reply:
    id: int
    value: Any


@dataclass(slots=True)
class ErrorReply:
    """An error answer; ``id`` is None when the peer could not tell which request it was."""

    id: int | None
    error: RpcError


@dataclass(slots=True)
class Updates:
    items: list[Any]


@dataclass(slots=True)
class BadFrame:
    """An authenticated frame that is not a valid request: answer ``error`` to ``id``."""

    id: int | None
    error: RpcError


Event = Request | Reply | ErrorReply | Updates | BadFrame


class Connection:
    """The protocol state of one session, for either side.

    A node takes requests from clients and peer nodes; a client device takes answers and
    pushes only. A link between two nodes carries both in both directions, so federation
    drives this same class on each end (request ids are per sender: an answer is told from
    a request by its shape, never by its id)."""

    __slots__ = (
        "_identity",
        "_ids",
        "_init",
        "_opener",
        "_sealer",
        "_takes_answers",
        "_takes_requests",
        "initiator",
        "keys",
        "peer_role",
        "state",
    )

    def __init__(self, *, initiator: bool, identity: SigningKey | None) -> None:
        self.initiator = initiator
        self.state = State.START
        self.peer_role: str | None = None  # "client" or "node": from the hello (responder)
        self.keys: SessionKeys | None = None
        self._identity = identity
        self._init: Initiator | None = None
        self._sealer: Sealer | None = None
        self._opener: Opener | None = None
        self._ids = itertools.count(1)
        # what the peer may send, fixed by the roles once the handshake is done
        self._takes_requests = False
        self._takes_answers = False

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def client(cls, identity: SigningKey | None = None) -> Connection:
        """The connecting side: a device, or with ``identity`` a node opening a link."""
        return cls(initiator=True, identity=identity)

    @classmethod
    def server(cls, identity: SigningKey) -> Connection:
        """The accepting side: a node, holding its identity key."""
        return cls(initiator=False, identity=identity)

    # --- what both sides know once open ----------------------------------------------------
    @property
    def peer_identity(self) -> bytes | None:
        """The peer's Ed25519 key: the node's for an initiator, a node peer's for a responder
        (None for a client peer, which proves a device key later, through auth)."""
        return self.keys.peer_identity if self.keys else None

    @property
    def transcript_hash(self) -> bytes:
        if self.keys is None:
            raise RuntimeError("the handshake has not completed")
        return self.keys.transcript_hash

    @property
    def accepts_requests(self) -> bool:
        """Whether the peer may call us: a node takes calls; a client device takes none."""
        return not self.initiator or self._identity is not None

    @property
    def accepts_answers(self) -> bool:
        """Whether the peer may answer or push to us: only a node does."""
        return self.initiator or self.peer_role == "node"

    # --- handshake ------------------------------------------------------------------------
    def hello(self) -> bytes:
        """The initiator's first message."""
        self._expect(State.START, initiator=True)
        self._init = Initiator(self._identity)
        self.state = State.AWAIT_WELCOME
        return self._init.hello

    def receive_welcome(self, data: bytes) -> bytes | None:
        """Check the responder's welcome; for a node initiator, returns the sealed proof
        that must be its first frame. Raises ProtocolError (HANDSHAKE_FAILED,
        VERSION_UNSUPPORTED). Pinning the key it presents is the driver's policy."""
        self._expect(State.AWAIT_WELCOME, initiator=True)
        assert self._init is not None
        try:
            keys = self._init.receive_welcome(data)
        except RpcError as e:
            raise self._fatal(ErrorCode(e.code), e.message) from None
        self._open(keys)
        if self._identity is None:
            return None
        return self.seal(self._init.proof(keys))

    def receive_hello(self, data: bytes) -> bytes:
        """Answer an initiator's hello with the welcome to send. A node peer must then
        prove its key in its first frame (state AWAIT_PROOF, consumed by :meth:`receive`)."""
        self._expect(State.START, initiator=False)
        assert self._identity is not None
        try:
            welcome, keys, role = Responder(self._identity).receive_hello(data)
        except RpcError as e:
            raise self._fatal(ErrorCode(e.code), e.message) from None
        self.peer_role = role
        self._open(keys)
        if role == "node":
            self.state = State.AWAIT_PROOF
        return welcome

    @property
    def handshake_done(self) -> bool:
        """Open for frames: the handshake, and a node peer's proof, are complete."""
        return self.state is State.OPEN

    # --- frames in ----------------------------------------------------------------------------
    def receive(self, data: bytes) -> Event | None:
        """One message from the peer. Returns its event (None: the node proof, consumed).

        Raises ProtocolError for anything that ends the session."""
        if self.state is not _OPEN:
            if self.state is State.AWAIT_PROOF:
                self._receive_proof(data)
                return None
            raise self._fatal(ErrorCode.BAD_FRAME, f"frame received in state {self.state.value}")
        assert self._opener is not None
        try:
            plain = self._opener.open(data)
        except SealError:
            raise self._fatal(ErrorCode.BAD_SEAL, "frame failed authentication") from None
        try:
            obj = decode(plain, max_depth=INCOMING_DEPTH if self._takes_answers else MAX_DEPTH)
        except DecodeError as e:
            if self._takes_requests:
                return BadFrame(None, RpcError(ErrorCode.BAD_FRAME, str(e)))
            raise self._fatal(ErrorCode.BAD_FRAME, f"undecodable frame: {e}") from None
        if self._takes_answers and type(obj) is dict and "m" not in obj:
            if "u" in obj:
                items = obj["u"]
                if type(items) is not list or len(obj) != 1:
                    raise self._fatal(ErrorCode.BAD_FRAME, "a push must be {u: [...]}")
                return Updates(items)
            if "r" in obj or "e" in obj:
                return self._answer(obj)
        if not self._takes_requests:
            raise self._fatal(ErrorCode.BAD_FRAME, "unexpected frame from the node")
        try:
            rid, method, params = frames.parse_request(obj)
        except RpcError as e:
            return BadFrame(frames.request_id_of(obj), e)
        return Request(rid, method, params)

    def open_frame(self, data: bytes) -> bytes:
        """Authenticate and decrypt one frame without decoding it: for a receiver that only
        counts what arrives (the benchmark's light receiver reads a push's update count from
        the CBOR array header). Advances the counter exactly like :meth:`receive`."""
        if self.state is not _OPEN or self._opener is None:
            raise self._fatal(ErrorCode.BAD_FRAME, f"frame received in state {self.state.value}")
        try:
            return self._opener.open(data)
        except SealError:
            raise self._fatal(ErrorCode.BAD_SEAL, "frame failed authentication") from None

    def _receive_proof(self, data: bytes) -> None:
        assert self.keys is not None and self._opener is not None
        try:
            proof = self._opener.open(data)
        except SealError:
            raise self._fatal(ErrorCode.HANDSHAKE_FAILED, "node proof not sealed") from None
        if not check_initiator_proof(self.keys, proof):
            raise self._fatal(ErrorCode.HANDSHAKE_FAILED, "node proof invalid")
        self.state = State.OPEN

    def _answer(self, obj: dict[str, Any]) -> Reply | ErrorReply:
        rid = obj.get("id")
        valid_id = isinstance(rid, int) and not isinstance(rid, bool)
        if "r" in obj and isinstance(rid, int) and valid_id and len(obj) == 2:
            return Reply(rid, obj["r"])
        e = obj.get("e")
        if type(e) is dict and (valid_id or rid is None) and len(obj) == 2:
            code, message, retry = e.get("code"), e.get("message", ""), e.get("retry_after")
            if type(code) is str and type(message) is str:
                retry_after = retry if type(retry) in (int, float) else None
                return ErrorReply(rid, RpcError(code, message, retry_after))
        raise self._fatal(ErrorCode.BAD_FRAME, "malformed answer")

    # --- frames out ---------------------------------------------------------------------------
    def request(self, method: str, params: dict[str, Any]) -> tuple[int, bytes]:
        """A sealed request and the id its answer will carry."""
        rid = next(self._ids)
        return rid, self.seal(encode(frames.request(rid, method, params)))

    def result(self, rid: int, value: Any) -> bytes:
        return self.seal(encode(frames.result(rid, value)))

    def error(self, rid: int | None, err: RpcError) -> bytes:
        return self.seal(encode(frames.error(rid, err)))

    def push(self, batches: list[frames.Updates]) -> bytes:
        """One push frame joining already-encoded update batches (see frames.push_frame)."""
        return self.seal(frames.push_frame(batches))

    def seal(self, plain: bytes) -> bytes:
        """Seal arbitrary bytes as the next frame.

        Frames must reach the wire in the order they were sealed (the counter is the nonce):
        the driver hands the bytes to its transport with no checkpoint in between, e.g.
        ``await ws.send_message(conn.result(rid, value))``, where the sealing is the argument
        and trio-websocket queues the message before its first checkpoint."""
        if self._sealer is None:
            raise RuntimeError(f"cannot send in state {self.state.value}")
        return self._sealer.seal(plain)

    def fail(self) -> None:
        """The driver gave up on the session (timeout, transport closed)."""
        self.state = State.CLOSED

    # --- internals ------------------------------------------------------------------------
    def _open(self, keys: SessionKeys) -> None:
        self.keys = keys
        self._sealer, self._opener = Sealer(keys.tx), Opener(keys.rx)
        self._takes_requests = self.accepts_requests
        self._takes_answers = self.accepts_answers
        self.state = State.OPEN

    def _expect(self, state: State, *, initiator: bool) -> None:
        if self.state is not state or self.initiator is not initiator:
            raise RuntimeError(f"not allowed in state {self.state.value}")

    def _fatal(self, reason: ErrorCode, message: str) -> ProtocolError:
        self.state = State.CLOSED
        return ProtocolError(reason, message)
