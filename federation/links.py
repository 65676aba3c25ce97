"""One outgoing link per peer: dial, prove our node key, keep it up, carry our calls.

Each node dials each of its peers and makes its own calls over its own link (pokes as a
chat's home, pulls as a replica, forwarded posts from its outbox); it serves the calls of
a peer on the link that peer dialled. So a pair of peers has one link each way, and
neither side ever waits for the other to dial.

A dead peer costs a retry timer: capped exponential backoff with jitter, every network wait
bounded by the link timeout. Work queued for a peer (pokes, pulls) is a small map that
coalesces (one entry per chat), so a peer that is down holds no growing queue; the outbox
is in the database and survives restarts.

A live replica gets a chat's new events *with* the poke (a push): the home knows how far
the replica is (the last pull it served it, or the replica's answer to the last push) and
ships what follows, exactly what ``fed.pull`` would have answered, so a replica that keeps
up applies without a pull round trip. Pull stays for everything else (first contact,
catch-up, gaps, a replica whose head the home does not know): a push is only a shortcut.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from node import log
from node.client.connection import Client
from node.protocol.errors import ErrorCode, RpcError

if TYPE_CHECKING:
    from .service import Federation

_log = log.get("federation")
POKE_BATCH = 1000
BACKOFF_FIRST = 0.5


def tls_ca(fed: Federation) -> Path | None:
    """``[federation] tls_ca``: the CA file trusted, besides the system's, when dialling a
    ``wss://`` peer (None: the system's store only)."""
    return fed.node.config.path("federation", "tls_ca")


class Link:
    def __init__(self, fed: Federation, node_id: str, url: str) -> None:
        self.fed = fed
        self.node_id = node_id
        self.url = url
        self.state = "down"  # down | connecting | up
        self.since = time.time()  # when the link last went up or down
        self.relayed = 0  # events of chats homed elsewhere pulled from this peer (gap fill)
        self.last_error: str | None = None
        self.client: Client | None = None
        self._kick = trio.Event()
        self._stop = trio.CancelScope()
        self.pokes: dict[str, int] = {}  # chat -> head: to tell the peer (we are the home)
        self._poke_wake = trio.Event()
        self.pulls: dict[str, int] = {}  # chat -> head the home announced (we replicate)
        self._pull_wake = trio.Event()
        self._outbox_wake = trio.Event()
        self.lag: dict[str, int] = {}  # chat -> events behind, as of the last poke
        # chat homed here -> the peer's head as we last learned it (a pull we served, or
        # its answer to a push); unknown: poke only, its pull tells us
        self.heads: dict[str, int] = {}
        self.push = True  # False once the peer refused a push (it predates them)

    # --- what the rest of federation asks of a link ------------------------------------
    def poke(self, chat_id: str, head: int) -> None:
        self.pokes[chat_id] = max(head, self.pokes.get(chat_id, 0))
        self._poke_wake.set()

    def want_pull(self, chat_id: str, head: int) -> None:
        self.pulls[chat_id] = max(head, self.pulls.get(chat_id, 0))
        self._pull_wake.set()

    def outbox_ready(self) -> None:
        self._outbox_wake.set()

    def kick(self) -> None:
        """Try now instead of at the end of the backoff (the peer was just approved)."""
        self._kick.set()

    def stop(self) -> None:
        self._stop.cancel()

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        client = self.client
        if client is None or self.state != "up":
            why = self.last_error or "not connected"
            raise RpcError(ErrorCode.PEER_UNREACHABLE, f"node {self.node_id[:12]}: {why}")
        try:
            return await client.call(method, params, timeout=self.fed.link_timeout)
        except RpcError as e:
            if e.code in (ErrorCode.CONNECTION_LOST, ErrorCode.TIMEOUT):
                raise RpcError(ErrorCode.PEER_UNREACHABLE, f"{method}: {e.message}") from None
            raise

    # --- the link's life ----------------------------------------------------------------
    async def run(self) -> None:
        attempt = 0
        with self._stop:
            while True:
                self.state = "connecting"
                try:
                    await self._session()
                    attempt = 0  # it was up: start the backoff over
                except RpcError as e:
                    self._down(f"{e.code}: {e.message}")
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
                    self._down(f"connection: {e}")
                except Exception as e:  # a bug must cost this link a retry, not the node
                    _log.exception("link failed", extra={"kv": {"peer": self.node_id[:12]}})
                    self._down(f"internal: {e!r}")
                attempt += 1
                delay = min(self.fed.retry_max, BACKOFF_FIRST * 2 ** min(attempt, 16))
                with trio.move_on_after(delay * random.uniform(0.5, 1.0)):
                    await self._kick.wait()
                self._kick = trio.Event()

    def _down(self, why: str) -> None:
        was_up = self.state == "up"
        if was_up or self.last_error != why:
            log.event(_log, "link.down", peer=self.node_id[:12], why=why)
        if was_up:
            self.since = time.time()
        self.state, self.client, self.last_error = "down", None, why
        self.fed.link_failed(self.node_id, why, was_up)

    async def _session(self) -> None:
        timeout = self.fed.link_timeout
        async with Client.connect(
            self.url,
            pin=self.node_id,
            identity=self.fed.identity,
            timeout=timeout,
            tls_ca=tls_ca(self.fed),  # for wss:// peers with self-signed certificates
        ) as client:
            hello = await client.call("fed.hello", self.fed.hello_params(), timeout=timeout)
            if hello.get("state") != "peer":  # it has not approved us yet: nothing to carry
                raise RpcError(ErrorCode.PEER_PENDING, "waiting for its admin to approve us")
            self.client, self.state, self.last_error = client, "up", None
            self.heads.clear()  # learned again from its pulls on this session
            self.since = time.time()
            log.event(_log, "link.up", peer=self.node_id[:12], url=self.url)
            await self.fed.link_up(self)
            reason: str | None = None  # stays None if a worker ends the session first
            async with trio.open_nursery() as nursery:
                for worker in (self._poker, self._puller, self._outbox_pump):
                    nursery.start_soon(self._guard, worker, nursery.cancel_scope)
                reason = await client.wait_closed()
                nursery.cancel_scope.cancel()
            raise RpcError(ErrorCode.CONNECTION_LOST, reason or "closed")

    async def _guard(self, worker: Callable[[], Awaitable[None]], scope: trio.CancelScope) -> None:
        """A worker that fails ends the session (the link reconnects and starts over)."""
        try:
            await worker()
        except RpcError as e:
            self.last_error = f"{e.code}: {e.message}"
            if self.client is not None:
                await self.client.ws.aclose(1000, "restarting the link")
            scope.cancel()

    async def _poker(self) -> None:
        while True:
            await self._poke_wake.wait()
            self._poke_wake = trio.Event()
            while self.pokes:
                batch = list(self.pokes.items())[:POKE_BATCH]
                for chat_id, _ in batch:
                    del self.pokes[chat_id]
                await self._poke_batch(batch)

    async def _poke_batch(self, batch: list[tuple[str, int]]) -> None:
        """One ``fed.poke`` for a batch of chats, with the events that follow the peer's
        known head (one call per batch, however many events committed meanwhile: while
        it is in flight, new commits coalesce into the next)."""
        chats = [[c, s] for c, s in batch]
        pushed = await self.fed.push_events(self, batch) if self.push else {}
        try:
            answer = await self.call(
                "fed.poke", {"chats": chats, **({"events": pushed} if pushed else {})}
            )
        except RpcError as e:
            if not pushed or e.code != ErrorCode.PARAMS_INVALID:
                raise
            log.event(_log, "link.push_refused", peer=self.node_id[:12], why=e.message)
            self.push = False  # an older peer: pokes only, it pulls
            answer = await self.call("fed.poke", {"chats": chats})
        heads = answer.get("heads") if isinstance(answer, dict) else None
        for chat_id in pushed:
            head = heads.get(chat_id) if isinstance(heads, dict) else None
            if isinstance(head, int):
                self.heads[chat_id] = head
            else:  # it did not take them (busy pulling, a gap): its pull will tell us
                self.heads.pop(chat_id, None)

    async def _puller(self) -> None:
        while True:
            await self._pull_wake.wait()
            self._pull_wake = trio.Event()
            while self.pulls:
                chat_id, head = next(iter(self.pulls.items()))
                del self.pulls[chat_id]
                await self.fed.pull_chat(self, chat_id, head)

    async def _outbox_pump(self) -> None:
        while True:
            sent = await self.fed.flush_outbox(self)
            if not sent:
                await self._outbox_wake.wait()
                self._outbox_wake = trio.Event()
