"""`fedgram client listen`: what this device missed, then live updates, across restarts.

The profile keeps the device's sync state (pts and per-chat seq). A listen starts from it
with ``updates.getDifference``; a new device (no state yet) is shown its recent dialogs
(last message, unread count), like a phone that just logged in, and goes live from there.
When the connection is lost (the node restarts, the network drops), it reconnects with
capped exponential backoff and resumes with getDifference: nothing missed, nothing twice.
When the device is logged out (revoked from another device, by the admin, banned) it exits
non-zero saying so.

Lines are for people (:class:`Render`: chat titles, short names, typing, read receipts);
``--json`` prints every update as one JSON line, exactly as the node pushed it, for scripts.
"""

from __future__ import annotations

import contextlib
import json as jsonlib
import random
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import trio
import typer

from node.protocol.errors import ErrorCode, RpcError

from .chat_client_cmds import dialog_line, message_text, service_text
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


class Render:
    """Updates as lines a person reads (``listen`` without --json), e.g.
    ``[12:03] Family #42 bob: dinner at 8?``, ``bob is typing in Family…``, ``carol read
    up to #42 in Family``. Chats are named by their titles (learnt from the dialogs and
    kept current by title events), users of this node by their bare name."""

    def __init__(self, me: str | None) -> None:
        self.titles: dict[str, str] = {}
        # "@n1" of "alice@n1": addresses on this node are shown without it
        self.here = "@" + me.split("@", 1)[1] if me and "@" in me else None

    def who(self, address: str | None) -> str:
        if not address:
            return "someone"
        if self.here and address.endswith(self.here):
            return address[: -len(self.here)]
        return address

    def chat(self, chat_id: str) -> str:
        return self.titles.get(chat_id) or chat_id

    def line(self, u: dict[str, Any]) -> str:
        kind = u.get("type")
        if kind == "chat.event":
            return self.event(u["event"])
        if kind == "chat.typing":
            return f"{self.who(u['user'])} is typing in {self.chat(u['chat'])}…"
        if kind == "chat.readOutbox":
            return f"{self.who(u['user'])} read up to #{u['read_seq']} in {self.chat(u['chat'])}"
        if kind == "chat.too_long":
            return (
                f"{self.chat(u['chat'])}: too much was missed to print (up to #{u['last_seq']}); "
                f"see fedgram client history {u['chat']}"
            )
        if kind == "user.update":
            return self.user_update(u)
        return jsonlib.dumps(u, sort_keys=True, default=str)  # e.g. secret chats' items

    def event(self, ev: dict[str, Any]) -> str:
        b = ev.get("body") or {}
        title = self.chat(ev["chat"])
        stamp = f"[{time.strftime('%H:%M', time.localtime(ev['ts']))}]"
        who = self.who(ev.get("sender"))
        kind = ev["kind"]
        if kind == "title" and b.get("title"):
            self.titles[ev["chat"]] = b["title"]
        if kind == "create" and b.get("title"):
            self.titles.setdefault(ev["chat"], b["title"])
            title = self.chat(ev["chat"])
        if kind == "message":
            if ev.get("deleted"):
                return f"{stamp} {title} #{ev['seq']} {who}: (deleted)"
            return f"{stamp} {title} #{ev['seq']} {who}: {message_text(ev)}"
        if kind == "edit":
            return f"{stamp} {title}: {who} edited #{b.get('target')}: {b.get('text', '')}"
        if kind == "delete":
            return f"{stamp} {title}: {who} deleted #{b.get('target')}"
        if kind in ("pin", "unpin"):
            return f"{stamp} {title}: {who} {kind}ned #{b.get('target')}"
        if kind in ("join", "leave"):
            return f"{stamp} {title}: {who} {'joined' if kind == 'join' else 'left'}"
        if kind in ("add", "remove", "ban", "unban", "role"):
            users = b.get("users") or [b.get("user")]
            names = ", ".join(self.who(x) for x in users)
            verb = {"add": "added", "remove": "removed", "ban": "banned", "unban": "unbanned"}
            if kind == "role":
                return f"{stamp} {title}: {who} made {names} {b.get('role')}"
            return f"{stamp} {title}: {who} {verb[kind]} {names}"
        return f"{stamp} {title}: {who} {service_text(kind, b)}"

    def user_update(self, u: dict[str, Any]) -> str:
        kind = u["kind"]
        title = self.chat(u["chat"]) if "chat" in u else ""
        if kind == "chat.joined":
            return f"you are now in {title}"
        if kind == "chat.left":
            why = f" ({u['reason']})" if u.get("reason") else ""
            return f"you are no longer in {title}{why}"
        if kind == "chat.read":
            return f"you read {title} up to #{u['read_seq']}"
        if kind == "dialog.updated":
            flags = [f for f in ("pinned", "muted", "archived") if u.get(f)]
            return (
                f"{title} is now {', '.join(flags) if flags else 'unpinned, unmuted, unarchived'}"
            )
        if kind == "message.hidden":
            return f"you deleted #{u['seq']} in {title} for yourself"
        rest = {k: v for k, v in u.items() if k not in ("type", "kind", "pts", "ts")}
        return f"{kind} {jsonlib.dumps(rest, sort_keys=True, default=str)}"


def _chat_of(u: dict[str, Any]) -> str | None:
    """The chat an update is about, if any."""
    if u.get("type") == "chat.event":
        return str(u["event"]["chat"])
    chat = u.get("chat")
    return chat if isinstance(chat, str) else None


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
        me = (prof.session() or {}).get("address")
        self.render = Render(me if isinstance(me, str) else None)

    # --- output ---------------------------------------------------------------------
    async def emit(self, c: Client, u: dict[str, Any]) -> None:
        if self.as_json:
            line = jsonlib.dumps(u, sort_keys=True, default=str)
        else:
            await self.learn_title(c, _chat_of(u))
            line = self.render.line(u)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        self.printed += 1

    async def learn_titles(self, c: Client, dialogs: list[dict[str, Any]] | None = None) -> None:
        """Chat titles for the human-readable lines (not needed for --json): all dialogs
        once a connection is up, so lines name chats without a call each."""
        if self.as_json:
            return
        if dialogs is None:
            dialogs = (await c.call("chats.list"))["chats"]
        for d in dialogs:
            self.render.titles[d["id"]] = d["title"] or d["id"]

    async def learn_title(self, c: Client, chat_id: str | None) -> None:
        """A chat not seen yet (joined since): ask for its dialog; one it is no longer in
        keeps being named by its id."""
        if chat_id is None or chat_id in self.render.titles:
            return
        try:
            d = (await c.call("chats.get", {"chat": chat_id}))["chat"]
            self.render.titles[chat_id] = d["title"] or chat_id
        except RpcError as e:
            if e.code not in (ErrorCode.NOT_A_MEMBER, ErrorCode.CHAT_NOT_FOUND):
                raise
            self.render.titles[chat_id] = chat_id

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
                await self.emit(c, {"type": "user.update", **upd})
            for ev in diff["events"]:
                await self.emit(c, {"type": "chat.event", "event": ev})
            for chat_id, last in diff["too_long"].items():
                await self.emit(c, {"type": "chat.too_long", "chat": chat_id, "last_seq": last})
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
                await self.emit(c, u)
                self.state["chats"][ev["chat"]] = ev["seq"]
            elif kind == "user.update":
                if u["pts"] <= self.state["pts"]:
                    continue
                await self.emit(c, u)
                self.state["pts"] = u["pts"]
            else:
                await self.emit(c, u)
            await self.save()
            if self.done():
                return True
        return False

    # --- one connection ---------------------------------------------------------------
    async def session(self, c: Client, first: bool) -> bool:
        """Sync, then stream; True when done. Raises RpcError when the connection ends."""
        await self.learn_titles(c)
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
    """Stream updates as they arrive, as lines to read (JSON lines with --json).

    Messages show as `[12:03] Family #42 bob: dinner at 8?`, with edits, deletes, joins
    and leaves, who is typing, and read receipts (`carol read up to #42 in Family`).

    The profile remembers the sync state (pts and per-chat seq), so after a pause the
    missed events are printed first, then the live ones, with nothing lost between. A new
    device first sees its recent chats (last message, unread count). When the node goes
    away, listen reconnects (with growing pauses, said on stderr) and resumes where it was;
    it exits non-zero when this device is logged out."""
    listener = Listener(_profile(profile), count, catch_up, json)
    with contextlib.suppress(KeyboardInterrupt):
        run_async(listener.run)
