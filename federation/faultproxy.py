"""A fault-injection TCP proxy for multi-node tests.

Project rule: faults between nodes (cut links, partitions, latency, refused
connections) are injected by a real proxy on real sockets, never by mocking a
peer. A mock only fails the way its author imagined; a proxy in the path makes
the node's own socket code meet real resets, stalls and half-closes.

In-process use (from a trio test)::

    async with FaultProxy.open("127.0.0.1", node_port) as proxy:
        ... connect to ("127.0.0.1", proxy.port) ...
        proxy.pause()  # partition: bytes stop, connections stay open
        proxy.resume()  # everything held is delivered, in order
        proxy.cut()  # every live connection is reset, both sides
        proxy.drop("up", 2.0)  # bytes client -> target vanish for 2 s; sockets stay up
        proxy.cut_after(100)  # 100 more bytes get through, then a reset mid-frame
        proxy.dup_connect("hold")  # each new connection gets a replaying twin
        proxy.heal()  # every fault above cleared at once

Process-level use (for tests that run nodes as subprocesses)::

    python3 -m federation.faultproxy --listen 127.0.0.1:0 --target 127.0.0.1:PORT

prints ``{"listen": "127.0.0.1", "port": N}`` as one JSON line, then reads
commands, one per line, on stdin (``cut``, ``pause``, ``resume``,
``block [refuse|blackhole]``, ``unblock``, ``delay SECONDS [up|down|both]``,
``drop [up|down|both] [SECONDS]``, ``undrop``, ``cut_after N [up|down|both]``,
``dup_connect [hold|close|off]``, ``heal``, ``stats``) and answers each with
one JSON line, so the test knows the fault is in place before it goes on. It
exits when stdin is closed, so it cannot outlive the test that started it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import trio

Direction = Literal["up", "down", "both"]
BlockMode = Literal["refuse", "blackhole"]
DupMode = Literal["hold", "close"]

#: SO_LINGER on, timeout 0: close() sends RST instead of FIN, the way a crashed
#: host or a middlebox dropping state looks to the peer.
_LINGER_RST = struct.pack("ii", 1, 0)


class _Gate:
    """An open/closed gate tasks can wait on; closing it again is allowed.

    trio.Event cannot be reset, so a closed gate holds a fresh unset Event and
    opening it sets that Event, waking every waiter at once (no polling).
    """

    def __init__(self) -> None:
        self._event = trio.Event()
        self._event.set()

    @property
    def is_open(self) -> bool:
        return self._event.is_set()

    def open(self) -> None:
        self._event.set()

    def close(self) -> None:
        if self._event.is_set():
            self._event = trio.Event()

    async def wait_open(self) -> None:
        # Loop: the gate may be closed again between the wake-up and our run.
        while not (event := self._event).is_set():
            await event.wait()


def _hard_close(stream: trio.SocketStream | None, *, reset: bool) -> None:
    """Close a socket synchronously, with RST if ``reset``.

    Synchronous on purpose: cut() must take effect before it returns, and a
    close inside an already-cancelled scope must not be skipped by Cancelled.
    Closing a trio socket wakes any task blocked on it (notify_closing).
    """
    if stream is None:
        return
    sock = stream.socket
    if sock.fileno() == -1:
        return
    if reset:
        # If the peer is already gone this may fail; a plain close is all that is left.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    sock.close()


def _directions(direction: str) -> tuple[str, ...]:
    if direction not in ("up", "down", "both"):
        raise ValueError(f"unknown direction {direction!r}")
    return ("up", "down") if direction == "both" else (direction,)


class _Link:
    """One proxied connection: the client side, the target side, one cancel scope, and
    the duplicate connection dup_connect() opened beside it, if any."""

    def __init__(self, client: trio.SocketStream, number: int = 0) -> None:
        self.number = number  # 1, 2, 3 ... in order of arrival: the journal's name for it
        self.client = client
        self.target: trio.SocketStream | None = None
        self.dup: trio.SocketStream | None = None
        self.scope = trio.CancelScope()

    def abort(self) -> None:
        """Reset both sides (and the duplicate) now and stop the link's tasks."""
        _hard_close(self.client, reset=True)
        _hard_close(self.target, reset=True)
        _hard_close(self.dup, reset=True)
        self.scope.cancel()


class FaultProxy:
    """TCP proxy from ``127.0.0.1:port`` to a target, with faults on demand.

    Every control method is synchronous and takes effect before it returns
    (for new traffic), so a test can call it from its own trio task and then
    immediately assert on the consequence. Memory is bounded: each direction
    of each connection holds at most ``max_chunks`` chunks of at most
    ``chunk_size`` bytes; beyond that the proxy stops reading and TCP flow
    control pushes back on the sender, as a slow real link would.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        chunk_size: int = 65536,
        max_chunks: int = 16,
        connect_timeout: float = 10.0,
        dup_replay: int = 4096,
        dup_hold: float = 30.0,
        journal: int = 256,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.port = listen_port  #: the real port once serve() has started
        self.chunk_size = chunk_size
        self.max_chunks = max_chunks
        #: the longest wait for the target to accept a connection (a hung target host)
        self.connect_timeout = connect_timeout
        #: dup_connect(): at most this many of the client's first bytes are replayed ...
        self.dup_replay = dup_replay
        #: ... and a held duplicate is closed after this many seconds at most
        self.dup_hold = dup_hold
        #: bytes delivered client -> target and target -> client
        self.bytes_up = 0
        self.bytes_down = 0
        #: client connections accepted (including refused and black-holed ones)
        self.connections = 0
        #: connections reset on arrival because of block("refuse") or a dead target
        self.refused = 0
        #: connections torn down by cut()
        self.cuts = 0
        #: bytes discarded by drop(), per direction
        self.dropped_up = 0
        self.dropped_down = 0
        #: connections reset mid-stream by cut_after()
        self.mid_cuts = 0
        #: duplicate connections opened to the target by dup_connect()
        self.dups = 0
        #: the last ``journal`` things that happened to connections, wall-clock stamped
        #: ("12.345 #7 held (blackhole)"): what a failing chaos run's timeline is read from
        self.journal: collections.deque[str] = collections.deque(maxlen=journal)
        self._links: set[_Link] = set()
        self._flow = _Gate()  # closed = pause(): no bytes move on any link
        self._admit = _Gate()  # closed = block(): new connections not forwarded
        self._block_mode: BlockMode = "refuse"
        self._delay: dict[str, float] = {"up": 0.0, "down": 0.0}
        self._drop_until: dict[str, float] = {"up": 0.0, "down": 0.0}  # trio clock
        self._cut_budget: int | None = None  # armed cut_after(): bytes still let through
        self._cut_dirs: tuple[str, ...] = ()
        self._dup_mode: DupMode | None = None
        self._serve_scope: trio.CancelScope | None = None
        #: with capture(): the bytes read each way (a wiretap, for tests), else None
        self.captured: dict[str, bytearray] | None = None
        self._capture_limit = 0

    # ---------------------------------------------------------------- running

    @classmethod
    @asynccontextmanager
    async def open(
        cls, target_host: str, target_port: int, **kwargs: Any
    ) -> AsyncIterator[FaultProxy]:
        """Run a proxy for the duration of the ``async with`` block, in its own nursery."""
        proxy = cls(target_host, target_port, **kwargs)
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.serve)
            try:
                yield proxy
            finally:
                nursery.cancel_scope.cancel()

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and proxy until cancelled or stop(); reports the port to ``nursery.start``.

        All connection tasks live in a nursery owned here, so when serve()
        returns no proxied connection is left running.
        """
        listeners = await trio.open_tcp_listeners(self.port, host=self.listen_host)
        listener = listeners[0]
        for extra in listeners[1:]:
            await extra.aclose()
        try:
            self.port = listener.socket.getsockname()[1]
            with trio.CancelScope() as self._serve_scope:
                async with trio.open_nursery() as nursery:
                    task_status.started(self.port)
                    while True:
                        stream = await listener.accept()
                        nursery.start_soon(self._handle, stream)
        finally:
            self._serve_scope = None
            for link in list(self._links):
                link.abort()
            with trio.CancelScope(shield=True):
                await listener.aclose()

    def stop(self) -> None:
        """Stop listening and reset every connection (serve() then returns)."""
        if self._serve_scope is not None:
            self._serve_scope.cancel()

    # --------------------------------------------------------------- controls

    def cut(self) -> int:
        """Reset every current connection on both sides; return how many.

        New connections are unaffected: this is a link flap, not an outage
        (combine with block() for that).
        """
        links = list(self._links)
        self._links.clear()  # gone now, not when their tasks next run: `active` is exact
        for link in links:
            self._note(link, "cut")
            link.abort()
        self.cuts += len(links)
        return len(links)

    def block(self, mode: BlockMode = "refuse") -> None:
        """Stop forwarding new connections; existing ones are untouched.

        ``refuse``: each new connection is accepted and reset at once (the
        kernel completes the handshake before we can say no, so the client sees
        a reset rather than ECONNREFUSED). ``blackhole``: new connections are
        held silently, nothing read and nothing sent, until unblock() forwards
        them or cut() resets them - like a partition that later heals.
        """
        if mode not in ("refuse", "blackhole"):
            raise ValueError(f"unknown block mode {mode!r}")
        self._block_mode = mode
        self._admit.close()
        self._note(None, f"block {mode}")

    def unblock(self) -> None:
        """Forward new connections again, including black-holed ones still waiting."""
        self._admit.open()
        self._note(None, "unblock")

    def pause(self) -> None:
        """Freeze all traffic without closing anything (a partition).

        Bytes already handed to a socket still arrive; nothing new is read or
        written until resume(), so nothing is lost and order is kept.
        """
        self._flow.close()
        self._note(None, "pause")

    def resume(self) -> None:
        """Let traffic flow again after pause()."""
        self._flow.open()
        self._note(None, "resume")

    def delay(self, seconds: float, direction: Direction = "both") -> None:
        """Add one-way latency to every chunk read from now on.

        Each chunk is stamped when read and written no earlier than stamp +
        delay; chunks leave in arrival order, so lowering the delay never
        reorders bytes (later chunks just wait behind earlier ones).
        """
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError("delay must be a finite number >= 0")
        if direction not in ("up", "down", "both"):
            raise ValueError(f"unknown direction {direction!r}")
        for name in ("up", "down"):
            if direction in (name, "both"):
                self._delay[name] = seconds
        self._note(None, f"delay {seconds} {direction}")

    def drop(self, direction: Direction = "both", seconds: float | None = None) -> None:
        """Silently discard every byte read in ``direction`` (for ``seconds``, or until
        undrop()/heal()); connections stay up.

        Unlike pause(), bytes are lost, not held: the far side's stream has a hole in
        it. For a WebSocket carrying sealed frames that is a corrupt stream (a frame
        header read from the middle of a payload, a counter nonce that skipped), which
        the receiver must detect and answer by closing and reconnecting; a node that
        instead waits forever or crashes has a bug this fault exists to find.
        """
        if seconds is not None and (not math.isfinite(seconds) or seconds < 0):
            raise ValueError("drop seconds must be a finite number >= 0")
        until = math.inf if seconds is None else trio.current_time() + seconds
        for name in _directions(direction):
            self._drop_until[name] = until
        self._note(None, f"drop {direction} {seconds}")

    def undrop(self) -> None:
        """Stop drop() in both directions."""
        self._drop_until = {"up": 0.0, "down": 0.0}

    def cut_after(self, nbytes: int, direction: Direction = "both") -> None:
        """Let the next ``nbytes`` bytes through (in ``direction``, over all connections
        together), then reset the connection that carried the last of them.

        One-shot: once it fired (or heal() ran) traffic flows normally. With a small
        ``nbytes`` the reset lands inside a frame (a half-written WebSocket message), the
        case a clean cut() between frames rarely produces.
        """
        if nbytes < 0:
            raise ValueError("cut_after needs a byte count >= 0")
        self._cut_dirs = _directions(direction)
        self._cut_budget = nbytes
        self._note(None, f"cut_after {nbytes} {direction}")

    def dup_connect(self, mode: DupMode | None = "hold") -> None:
        """Each NEW client connection also gets a duplicate connection to the target that
        replays the client's first bytes (up to ``dup_replay``: the HTTP upgrade, the
        handshake's hello), like a retransmitting middlebox or a replay attacker.

        ``hold``: the duplicate stays open (what the target sends is read and discarded)
        until the original ends or ``dup_hold`` seconds pass. ``close``: it is closed as
        soon as the replay is done. ``None``: stop duplicating.
        """
        if mode not in ("hold", "close", None):
            raise ValueError(f"unknown dup_connect mode {mode!r}")
        self._dup_mode = mode
        self._note(None, f"dup_connect {mode}")

    def capture(self, limit: int = 64 << 20) -> None:
        """Keep a copy of the bytes read each way from now on (up to ``limit`` bytes per
        direction; later bytes are not kept): what a wiretap on this path would see, for
        tests that check what a link never carries in the clear. ``captured["up"]`` is
        client -> target, ``["down"]`` the other way, all connections concatenated."""
        self.captured = {"up": bytearray(), "down": bytearray()}
        self._capture_limit = limit

    def heal(self) -> None:
        """Clear every fault at once: resume, unblock, no delay, no drop, cut_after
        disarmed, no duplicates. Connections that a fault already broke stay broken
        (their ends must notice and reconnect); the proxy is a clean pipe again."""
        self.resume()
        self.unblock()
        self._delay = {"up": 0.0, "down": 0.0}
        self.undrop()
        self._cut_budget = None
        self._dup_mode = None
        self._note(None, "heal")

    @property
    def active(self) -> int:
        """Connections currently open (forwarding, paused or black-holed)."""
        return len(self._links)

    def stats(self) -> dict[str, Any]:
        """Counters and current fault settings, JSON-ready."""
        return {
            "port": self.port,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "connections": self.connections,
            "active": self.active,
            "refused": self.refused,
            "cuts": self.cuts,
            "paused": not self._flow.is_open,
            "blocked": None if self._admit.is_open else self._block_mode,
            "delay_up": self._delay["up"],
            "delay_down": self._delay["down"],
            "dropping": [d for d in ("up", "down") if self._dropping(d)],
            "dropped_up": self.dropped_up,
            "dropped_down": self.dropped_down,
            "cut_after": self._cut_budget,
            "mid_cuts": self.mid_cuts,
            "dup_connect": self._dup_mode,
            "dups": self.dups,
        }

    def _dropping(self, direction: str) -> bool:
        return trio.current_time() < self._drop_until[direction]

    # -------------------------------------------------------------- internals

    def _note(self, link: _Link | None, what: str) -> None:
        """One journal line: a connection's event (#N) or a fault switched (*)."""
        who = f"#{link.number}" if link is not None else "*"
        self.journal.append(f"{time.time():.3f} {who} {what}")

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        link = _Link(client, self.connections)
        self._links.add(link)
        try:
            with link.scope:
                if not self._admit.is_open:
                    if self._block_mode == "refuse":
                        self.refused += 1
                        self._note(link, "refused (blocked)")
                        link.abort()
                        return
                    self._note(link, "held (blackhole)")
                    await self._admit.wait_open()
                link.target = await self._connect()
                if link.target is None:
                    # The target is down (or hung): tell the client the way a dead host would.
                    self.refused += 1
                    self._note(link, "refused (target down)")
                    link.abort()
                    return
                self._note(
                    link,
                    "forwarding" + (f" + duplicate ({self._dup_mode})" if self._dup_mode else ""),
                )
                await self._forward(link, link.target, self._dup_mode)
        finally:
            self._note(link, "closed")
            self._links.discard(link)
            _hard_close(link.client, reset=False)
            _hard_close(link.target, reset=False)
            _hard_close(link.dup, reset=False)

    async def _connect(self) -> trio.SocketStream | None:
        """A connection to the target, or None if it refused or did not answer in time."""
        with trio.move_on_after(self.connect_timeout):
            try:
                return await trio.open_tcp_stream(self.target_host, self.target_port)
            except OSError:
                return None
        return None

    async def _forward(
        self, link: _Link, target: trio.SocketStream, dup: DupMode | None = None
    ) -> None:
        """Pump both directions; a clean EOF is passed on as a half-close. With ``dup``,
        the client's first bytes are also copied to a duplicate connection, which ends
        when the pumps do at the latest."""
        replay: trio.MemorySendChannel[bytes] | None = None
        async with trio.open_nursery() as outer:
            if dup is not None:
                # bounded: a replay chunk that finds the channel full is not replayed
                replay, replayed = trio.open_memory_channel[bytes](self.max_chunks)
                outer.start_soon(self._duplicate, link, dup, replayed)
            async with trio.open_nursery() as nursery:
                for src, dst, direction in (
                    (link.client, target, "up"),
                    (target, link.client, "down"),
                ):
                    send, recv = trio.open_memory_channel[tuple[float, bytes]](self.max_chunks)
                    copy = replay if direction == "up" else None
                    nursery.start_soon(self._read_side, link, src, send, direction, copy)
                    nursery.start_soon(self._write_side, link, dst, recv, direction)
            outer.cancel_scope.cancel()

    async def _read_side(
        self,
        link: _Link,
        src: trio.SocketStream,
        out: trio.MemorySendChannel[tuple[float, bytes]],
        direction: str,
        replay: trio.MemorySendChannel[bytes] | None = None,
    ) -> None:
        """Read chunks and stamp them with their due time; b"" marks EOF. Bytes read
        while drop() is on are counted and discarded; the first ``dup_replay`` bytes are
        also handed to ``replay`` (closed once that many went, or at EOF)."""
        left = self.dup_replay
        try:
            async with out:
                while True:
                    await self._flow.wait_open()
                    data = await src.receive_some(self.chunk_size)
                    if replay is not None and left > 0 and data:
                        piece = data[:left]
                        left -= len(piece)
                        with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                            replay.send_nowait(piece)
                        if left <= 0:
                            replay.close()
                    kept = self.captured.get(direction) if self.captured else None
                    if kept is not None and data and len(kept) < self._capture_limit:
                        kept += data[: self._capture_limit - len(kept)]
                    if data and self._dropping(direction):
                        if direction == "up":
                            self.dropped_up += len(data)
                        else:
                            self.dropped_down += len(data)
                        continue
                    due = trio.current_time() + self._delay[direction]
                    await out.send((due, data))
                    if not data:
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            link.abort()  # one side reset: reset the other too, as a real path would
        finally:
            if replay is not None:
                replay.close()

    async def _write_side(
        self,
        link: _Link,
        dst: trio.SocketStream,
        inbox: trio.MemoryReceiveChannel[tuple[float, bytes]],
        direction: str,
    ) -> None:
        """Write chunks in order once due and while traffic flows; an armed cut_after()
        lets its last bytes through and then resets this link."""
        async with inbox:
            try:
                async for due, data in inbox:
                    await trio.sleep_until(due)
                    await self._flow.wait_open()
                    if not data:
                        await dst.send_eof()
                        return
                    budget = self._cut_budget
                    if budget is not None and direction in self._cut_dirs:
                        if len(data) >= budget:
                            self._cut_budget = None  # one-shot: disarmed before any await
                            self.mid_cuts += 1
                            self._note(link, f"reset after cut_after ({direction})")
                            if budget:
                                await dst.send_all(data[:budget])
                                self._count(direction, budget)
                            self._links.discard(link)  # gone now: `active` is exact
                            link.abort()
                            return
                        self._cut_budget = budget - len(data)
                    await dst.send_all(data)
                    self._count(direction, len(data))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                link.abort()

    def _count(self, direction: str, n: int) -> None:
        if direction == "up":
            self.bytes_up += n
        else:
            self.bytes_down += n

    async def _duplicate(
        self, link: _Link, mode: DupMode, replay: trio.MemoryReceiveChannel[bytes]
    ) -> None:
        """The duplicate connection of ``link``: replay the client's first bytes to the
        target, then hold it (draining and discarding what the target answers) or close
        it. Never touches the original connection; every wait is bounded."""
        async with replay:
            dup = await self._connect()
            if dup is None:
                return
            link.dup = dup
            self.dups += 1
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._drain, dup)
                    with trio.move_on_after(self.dup_hold):
                        await self._replay(dup, mode, replay)
                        if mode == "hold":
                            await trio.sleep_forever()  # until the original ends or dup_hold
                    nursery.cancel_scope.cancel()
            finally:
                link.dup = None
                _hard_close(dup, reset=False)

    async def _replay(
        self, dup: trio.SocketStream, mode: DupMode, replay: trio.MemoryReceiveChannel[bytes]
    ) -> None:
        """Write the replayed bytes to the duplicate until they end (or, in close mode,
        pause for half a second); a target that closed the duplicate ends it early."""
        idle = 0.5 if mode == "close" else math.inf
        try:
            while True:
                with trio.move_on_after(idle) as waited:
                    chunk = await replay.receive()
                if waited.cancelled_caught:
                    return
                await dup.send_all(chunk)
        except trio.EndOfChannel:
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return  # the target closed the duplicate: that is its right

    async def _drain(self, stream: trio.SocketStream) -> None:
        """Read and discard until EOF (so the target never blocks writing to a duplicate)."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            while await stream.receive_some(self.chunk_size):
                pass


# ------------------------------------------------------------- process mode


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    try:
        return host, int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port in {text!r}") from None


def _emit(obj: dict[str, Any]) -> None:
    # Plain blocking print: replies are tiny and the reader is the test waiting for them.
    print(json.dumps(obj, sort_keys=True), flush=True)


def _direction(text: str) -> Direction:
    """A direction word from a control line, typed (ValueError for anything else)."""
    if text == "up":
        return "up"
    if text == "down":
        return "down"
    if text == "both":
        return "both"
    raise ValueError(f"unknown direction {text!r}")


def command(proxy: FaultProxy, line: str) -> dict[str, Any]:
    """Apply one control line to ``proxy`` and return the JSON-ready reply."""
    words = line.split()
    if not words:
        return {"ok": False, "error": "empty command"}
    name, args = words[0], words[1:]
    try:
        if name == "cut" and not args:
            return {"ok": True, "cmd": name, "closed": proxy.cut()}
        if name == "pause" and not args:
            proxy.pause()
        elif name == "resume" and not args:
            proxy.resume()
        elif name == "block" and len(args) <= 1:
            mode = args[0] if args else "refuse"
            if mode not in ("refuse", "blackhole"):
                raise ValueError(f"unknown block mode {mode!r}")
            proxy.block("blackhole" if mode == "blackhole" else "refuse")
        elif name == "unblock" and not args:
            proxy.unblock()
        elif name == "delay" and len(args) in (1, 2):
            direction = args[1] if len(args) == 2 else "both"
            proxy.delay(float(args[0]), _direction(direction))
        elif name == "drop" and len(args) <= 2:
            direction = args[0] if args else "both"
            seconds = float(args[1]) if len(args) == 2 else None
            proxy.drop(_direction(direction), seconds)
        elif name == "undrop" and not args:
            proxy.undrop()
        elif name == "cut_after" and len(args) in (1, 2):
            direction = args[1] if len(args) == 2 else "both"
            proxy.cut_after(int(args[0]), _direction(direction))
        elif name == "dup_connect" and len(args) <= 1:
            mode = args[0] if args else "hold"
            if mode not in ("hold", "close", "off"):
                raise ValueError(f"unknown dup_connect mode {mode!r}")
            proxy.dup_connect("hold" if mode == "hold" else "close" if mode == "close" else None)
        elif name == "heal" and not args:
            proxy.heal()
        elif name == "stats" and not args:
            return {"ok": True, "cmd": name, **proxy.stats()}
        else:
            return {"ok": False, "error": f"unknown command {line.strip()!r}"}
    except ValueError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "cmd": name}


async def _control(proxy: FaultProxy, stdin: trio.abc.ReceiveStream, max_line: int = 4096) -> None:
    """Serve control lines from ``stdin`` until it is closed."""
    buf = bytearray()
    while True:
        data = await stdin.receive_some(4096)
        if not data:
            return
        buf += data
        while (nl := buf.find(b"\n")) >= 0:
            line = bytes(buf[:nl]).decode("utf-8", "replace")
            del buf[: nl + 1]
            if line.strip():
                _emit(command(proxy, line))
        if len(buf) > max_line:
            _emit({"ok": False, "error": "line too long"})
            buf.clear()


async def _main(listen: tuple[str, int], target: tuple[str, int]) -> None:
    proxy = FaultProxy(target[0], target[1], listen_host=listen[0], listen_port=listen[1])
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        _emit({"listen": listen[0], "port": proxy.port})
        # A dup so trio's non-blocking mode and close stay off the interpreter's fd 0.
        async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as stdin:
            await _control(proxy, stdin)
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python3 -m federation.faultproxy", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument(
        "--listen", type=_hostport, default=("127.0.0.1", 0), help="HOST:PORT (port 0: any)"
    )
    parser.add_argument("--target", type=_hostport, required=True, help="HOST:PORT to forward to")
    args = parser.parse_args(argv)
    trio.run(_main, args.listen, args.target)


if __name__ == "__main__":
    main()
