"""`fedgram client listen`: what this device missed, then live updates, across restarts.

The profile keeps the device's sync state (pts and per-chat seq). A listen starts from it
with ``updates.getDifference``; a new device (no state yet) is shown its recent dialogs
(last message, unread count), like a phone that just logged in, and goes live from there.
When the connection is lost (the node restarts, the network drops), it reconnects with
capped exponential backoff and resumes with getDifference: nothing missed, nothing twice.
When the device is logged out (revoked from another device, by the admin, banned) it exits
non-zero saying so.
"""

from __future__ import annotations

import contextlib
import json as jsonlib
import random
import sys
from typing import TYPE_CHECKING, Annotated, Any

import trio
import typer

from node.protocol.errors import ErrorCode, RpcError

from .chat_client_cmds import describe, dialog_line
from .client_cmds import ProfileOpt, _profile, client_app
from .common import JsonOpt, run_async

if TYPE_CHECKING:
    from node.client import Client, Profile

BACKOFF_FIRST = 1.0  # seconds before the first reconnection attempt, doubled after each
BACKOFF_MAX = 30.0
KEEPALIVE = 30.0  # a quiet connection is pinged this often: a dead one is noticed
RECENT_DIALOGS = 20  # what a new device is shown first

# worth reconnecting for; anything else (logged out, banned, key mismatch...) ends listen
TRANSIENT = {
    ErrorCode.CONNECTION_LOST,
    ErrorCode.TIMEOUT,
    ErrorCode.HANDSHAKE_TIMEOUT,
    ErrorCode.NODE_SHUTDOWN,
    ErrorCode.IDLE_TIMEOUT,
    ErrorCode.TOO_MANY_SESSIONS,
    ErrorCode.TOO_MANY_REQUESTS,
    ErrorCode.FLOOD_WAIT,
    ErrorCode.INTERNAL,
}

# close reasons that mean this device may not listen any more
LOGGED_OUT = {
    ErrorCode.SESSION_REVOKED: "this device was logged out (from another device or by the "
    "node's admin)",
    ErrorCode.USER_BANNED: "this account was banned from the node",
}


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _copy(state: dict[str, Any]) -> dict[str, Any]:
    """A snapshot for the writer thread (the live loop keeps changing the chats map)."""
    return {"pts": state["pts"], "chats": dict(state["chats"])}


def _describe_update(u: dict[str, Any]) -> str:
    kind = u.get("type")
    if kind == "chat.event":
        return f"{u['event']['chat']} {describe(u['event'])}"
    if kind == "chat.typing":
        return f"{u['chat']} {u['user']} is typing..."
    if kind == "user.update":
        rest = {k: v for k, v in u.items() if k not in ("type", "kind", "pts", "ts")}
        return f"pts {u['pts']}: {u['kind']} {jsonlib.dumps(rest, sort_keys=True)}"
    return jsonlib.dumps(u, sort_keys=True, default=str)


def backoff(failures: int, retry_after: float | None = None) -> float:
    """Seconds to wait before reconnection attempt number ``failures`` (0-based): doubling
    from BACKOFF_FIRST up to BACKOFF_MAX, with jitter so that the clients of a restarted
    node do not all come back in the same instant."""
    capped: float = min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** min(failures, 16))
    return max(capped * random.uniform(0.8, 1.0), retry_after or 0.0)


class Listener:
    def __init__(self, prof: Profile, count: int | None, catch_up: bool, as_json: bool) -> None:
        self.prof = prof
        self.count = count
        self.catch_up = catch_up
        self.as_json = as_json
        self.printed = 0
        self.state: dict[str, Any] | None = None

    # --- output ---------------------------------------------------------------------
    def emit(self, u: dict[str, Any]) -> None:
        line = jsonlib.dumps(u, sort_keys=True, default=str) if self.as_json else None
        sys.stdout.write((line or _describe_update(u)) + "\n")
        sys.stdout.flush()
        self.printed += 1

    def show_dialogs(self, dialogs: list[dict[str, Any]]) -> None:
        """A new device's first view: the recent dialogs (not counted as updates)."""
        for d in dialogs[:RECENT_DIALOGS]:
            line = (
                jsonlib.dumps({"type": "dialog", "dialog": d}, sort_keys=True, default=str)
                if self.as_json
                else dialog_line(d)
            )
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
        if len(dialogs) > RECENT_DIALOGS:
            _say(f"{len(dialogs) - RECENT_DIALOGS} more chats: fedgram client chats")

    def done(self) -> bool:
        return self.count is not None and (self.count == 0 or self.printed >= self.count)

    async def save(self) -> None:
        # an fsynced file write: in a thread, never on the event loop
        assert self.state is not None
        await trio.to_thread.run_sync(self.prof.save_sync_state, _copy(self.state))

    # --- sync -----------------------------------------------------------------------
    async def difference(self, c: Client, state: dict[str, Any]) -> dict[str, Any]:
        """Print what was missed since ``state``; return the state after it."""
        while True:
            diff = await c.call("updates.getDifference", state)
            for upd in diff["updates"]:
                self.emit({"type": "user.update", **upd})
            for ev in diff["events"]:
                self.emit({"type": "chat.event", "event": ev})
            for chat_id, last in diff["too_long"].items():
                self.emit({"type": "chat.too_long", "chat": chat_id, "last_seq": last})
            state = {"pts": diff["pts"], "chats": {**diff["chats"], **diff["too_long"]}}
            if diff["complete"]:
                return state

    async def first_sync(self, c: Client) -> None:
        """Where this listen starts: after what the profile holds (printing what it missed),
        or, for a new device, after its recent dialogs; --no-catch-up: from now."""
        if self.state is not None and self.catch_up:
            self.state = await self.difference(c, self.state)
            return
        new_device = self.state is None
        state = await c.call("updates.getState")  # pushes from here on are not missed
        if new_device and self.catch_up:
            dialogs = (await c.call("chats.list"))["chats"]
            self.show_dialogs(dialogs)
            for d in dialogs:  # what the dialogs show is not printed again as an update
                state["chats"][d["id"]] = max(state["chats"].get(d["id"], 0), d["last_seq"])
        self.state = state

    def gap(self, u: dict[str, Any]) -> bool:
        """A push that does not follow what we hold: something in between was lost."""
        assert self.state is not None
        if u.get("type") == "chat.event":
            have = self.state["chats"].get(u["event"]["chat"])
            return have is not None and u["event"]["seq"] > have + 1
        if u.get("type") == "user.update":
            return bool(u["pts"] > self.state["pts"] + 1)
        return False

    async def stream(self, c: Client) -> bool:
        """Print pushes until the count is reached (True) or the connection ends (False).
        A gap (a seq or pts jump, or the node saying this session fell behind) is filled
        with getDifference before going on; nothing is printed twice."""
        assert self.state is not None
        async for u in c.updates():
            kind = u.get("type")
            if kind == "session.behind" or c.behind or self.gap(u):
                c.behind = False  # re-sync: the difference covers what was dropped
                self.state = await self.difference(c, self.state)
            elif kind == "chat.event":
                ev = u["event"]
                if ev["seq"] <= self.state["chats"].get(ev["chat"], 0):
                    continue  # already printed by a catch-up
                self.emit(u)
                self.state["chats"][ev["chat"]] = ev["seq"]
            elif kind == "user.update":
                if u["pts"] <= self.state["pts"]:
                    continue
                self.emit(u)
                self.state["pts"] = u["pts"]
            else:
                self.emit(u)
            await self.save()
            if self.done():
                return True
        return False

    # --- one connection ---------------------------------------------------------------
    async def session(self, c: Client, first: bool) -> bool:
        """Sync, then stream; True when done. Raises RpcError when the connection ends."""
        if first or self.state is None:
            await self.first_sync(c)
        else:
            assert self.state is not None
            self.state = await self.difference(c, self.state)
        await self.save()
        if self.done():
            return True
        finished = False
        failure: BaseException | None = None
        async with trio.open_nursery() as nursery:

            async def live() -> None:
                nonlocal finished, failure
                try:
                    finished = await self.stream(c)
                except Exception as e:  # re-raised below, after the keepalive stops
                    failure = e
                nursery.cancel_scope.cancel()

            async def keepalive() -> None:
                nonlocal failure
                while True:
                    await trio.sleep(KEEPALIVE)
                    try:
                        await c.call("system.ping", {"ping_id": 1}, timeout=KEEPALIVE / 2)
                    except RpcError as e:
                        failure = failure or e
                        nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(live)
            nursery.start_soon(keepalive)
        if finished:
            return True
        closed = c.close_code or ""
        if closed in LOGGED_OUT:
            why = LOGGED_OUT[ErrorCode(closed)]
            name = (self.prof.session() or {}).get("name") or "NAME"
            raise RpcError(closed, f"{why}; sign in again: fedgram client login {c.url} {name}")
        if failure is not None:
            raise failure
        code = closed if closed in TRANSIENT else ErrorCode.CONNECTION_LOST
        raise RpcError(code, c.closed_reason or "closed")

    async def run(self) -> None:
        self.state = self.prof.sync_state()
        connected = False  # once: later losses are retried, a first failure is reported
        failures = 0
        from node.client.signed_in import connect_signed_in

        while True:
            try:
                async with connect_signed_in(self.prof) as c:
                    if connected:
                        _say(f"reconnected to {c.url}")
                    first, connected = not connected, True
                    failures = 0
                    if await self.session(c, first):
                        return
            except RpcError as e:
                if not connected or e.code not in TRANSIENT:
                    raise
                delay = backoff(failures, e.retry_after)
                what = "connection lost" if failures == 0 else "cannot reconnect"
                _say(f"{what} ({e}); reconnecting in {delay:.0f}s")
                failures += 1
                await trio.sleep(delay)


@client_app.command()
def listen(
    count: Annotated[
        int | None,
        typer.Option(
            help="Exit after printing this many updates (missed ones included); 0: print what "
            "was missed and exit (default: run until ^C).",
            min=0,
        ),
    ] = None,
    catch_up: Annotated[
        bool,
        typer.Option(
            help="First print what this profile missed since it last listened (a new "
            "device: its recent chats)."
        ),
    ] = True,
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Stream updates as they arrive (JSON lines with --json).

    The profile remembers the sync state (pts and per-chat seq), so after a pause the
    missed events are printed first, then the live ones, with nothing lost between. A new
    device first sees its recent chats (last message, unread count). When the node goes
    away, listen reconnects (with growing pauses, said on stderr) and resumes where it was;
    it exits non-zero when this device is logged out."""
    listener = Listener(_profile(profile), count, catch_up, json)
    with contextlib.suppress(KeyboardInterrupt):
        run_async(listener.run)
