"""The node's push service: ``account.*Push`` handlers, and what triggers a notification.

A device that is not connected still learns that something arrived: it registers a push
endpoint (a UnifiedPush endpoint or any webhook URL) with its X25519 public key, and when a
message reaches one of its chats while it has no live session, the node POSTs a small
sealed notification there (node/push/payload.py).

Triggers:

* **Chat messages**: the service subscribes to the node's committed changes
  (node/publications.py). Replicated events from other nodes are published there exactly
  like local ones, so federation needs no code of its own here. The subscriber only notes
  which chats got messages (on the event loop, never blocking); a task looks the endpoints
  up in a reader thread with one query per chat driven by the push table
  (:func:`store.chat_targets`), never per member.
* **Secret chats**: the secret service calls :meth:`PushService.secret_waiting` when it
  queued a message for a device with no live session; the push says "new secret message"
  and nothing else (no chat, no sender, no content).

The lookups are themselves bounded (``[push] queue_max``): beyond it a change is not looked
at (counted as dropped). A node with no endpoint at all does no lookup.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import time
from typing import Any
from urllib.parse import urlsplit

import trio

from .. import log
from ..config import Config
from ..interfaces import CallContext, Caller, Effects, Sessions, Storage
from ..nodes import Directory
from ..protocol.errors import ErrorCode, RpcError
from ..rpc import Router
from . import payload, store
from .notifier import Notifier, Settings

_log = log.get("push")

URL_MAX = 2048
RECOUNT_EVERY = 60.0  # seconds
MESSAGE = "message"

# what the lookup task is handed: ("chat", chat id, [(sender, ts, preview)]) for chat
# messages, ("secret", device id, count) for a secret item waiting for an offline device
Lookup = tuple[str, Any, Any]


def _caller(ctx: CallContext) -> tuple[int, int]:
    s = ctx.session
    assert s is not None and s.user_id is not None and s.device_id is not None
    return s.user_id, s.device_id


def check_url(url: str) -> str | None:
    """Why ``url`` cannot be a push endpoint, or None: http(s) only, a host, no spaces or
    control characters, at most URL_MAX characters."""
    if len(url) > URL_MAX:
        return f"longer than {URL_MAX} characters"
    if any(c.isspace() or ord(c) < 32 or ord(c) >= 127 for c in url):
        return "has spaces, control or non-ASCII characters (percent-encode them)"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is not a number or out of range
    except ValueError as e:
        return f"not a URL ({e})"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "has no host"
    del port
    return None


def _preview(body: dict[str, Any]) -> str:
    text = body.get("text")
    if isinstance(text, str) and text:
        return text
    return "[attachment]" if body.get("media") else ""


class PushService:
    def __init__(
        self, config: Config, db: Storage, sessions: Sessions, directory: Directory
    ) -> None:
        self.db = db
        self.sessions = sessions
        self.directory = directory
        p = config.values["push"]
        self.default_previews = bool(p["previews"])
        self.max_per_user = int(p["max_per_user"])
        self.notifier = Notifier(
            Settings(
                quiet=float(p["coalesce_quiet"]),
                cap=float(p["coalesce_max"]),
                timeout=float(p["timeout"]),
                workers=int(p["workers"]),
                queue_max=int(p["queue_max"]),
                retries=int(p["retries"]),
                retry_base=float(p["retry_base"]),
                retry_max=float(p["retry_max"]),
                max_rate=float(p["max_rate"]),
            ),
            online=self._online,
            unregister=self._unregister,
        )
        self._lookups_tx, self._lookups_rx = trio.open_memory_channel[Lookup](int(p["queue_max"]))
        self.endpoints: int | None = None  # how many are registered (None: not counted yet)

    def register(self, router: Router) -> None:
        for name, fn in {
            "account.registerPush": self.register_push,
            "account.listPush": self.list_push,
            "account.unregisterPush": self.unregister_push,
            "account.testPush": self.test_push,
            "account.setPushSettings": self.set_settings,
        }.items():
            router.add(name, fn)

    async def run(self) -> None:
        """The service's tasks (in the node's nursery): lookups, and the notifier's."""
        self.endpoints = await self.db.read(store.count)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.notifier.run)
            nursery.start_soon(self._lookup_loop)
            nursery.start_soon(self._recount)

    async def _recount(self) -> None:
        """The endpoint count, from the table now and then: removing a user deletes its
        endpoints by cascade, which the handlers here never see."""
        while True:
            await trio.sleep(RECOUNT_EVERY)
            self.endpoints = await self.db.read(store.count)

    def stats(self) -> dict[str, Any]:
        """For ``admin.status`` (`fedgram status`)."""
        return {"endpoints": self.endpoints or 0, **self.notifier.snapshot()}

    # --- triggers (event loop, never blocking) ---------------------------------------------
    def on_committed(self, fx: Effects, origin: Caller | None) -> None:
        """Subscriber of committed changes: note the chats that got messages."""
        if self.endpoints == 0 or not fx.chat_events:
            return
        by_chat: dict[str, list[tuple[str | None, float, str]]] = {}
        for chat_id, ev in fx.chat_events:
            if ev.get("kind") != MESSAGE:
                continue
            body = ev.get("body") if isinstance(ev.get("body"), dict) else {}
            by_chat.setdefault(chat_id, []).append(
                (ev.get("sender"), float(ev.get("ts") or time.time()), _preview(body or {}))
            )
        for chat_id, msgs in by_chat.items():
            self._look(("chat", chat_id, msgs))

    def secret_waiting(self, user_id: int, device_id: int) -> None:
        """A secret message was queued for a device of this node with no live session."""
        if self.endpoints == 0:
            return
        self._look(("secret", device_id, user_id))

    def _look(self, what: Lookup) -> None:
        try:
            self._lookups_tx.send_nowait(what)
        except trio.WouldBlock:
            self.notifier.stats.dropped += 1

    def _online(self, user_id: int, device_id: int) -> bool:
        return device_id in self.sessions.online_devices(user_id)

    async def _lookup_loop(self) -> None:
        """Looks up the endpoints of what was noted, many changes per reader job."""
        async for first in self._lookups_rx:
            batch = [first]
            while len(batch) < 256:
                try:
                    batch.append(self._lookups_rx.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                found = await self.db.read(functools.partial(self._find, batch=batch))
            except Exception:  # a bug or a damaged row: these pushes are lost, not the loop
                _log.exception("push lookup failed")
                continue
            for what, result in zip(batch, found, strict=True):
                self._queue(what, result)

    def _find(self, c: sqlite3.Connection, *, batch: list[Lookup]) -> list[Any]:
        out: list[Any] = []
        for kind, key, _ in batch:
            if kind == "chat":
                out.append(store.chat_targets(c, key, self.default_previews, self.endpoints or 0))
            else:
                out.append(store.device_targets(c, key))
        return out

    def _queue(self, what: Lookup, found: Any) -> None:
        kind, key, extra = what
        if kind == "secret":
            for e in found:
                if not self._online(e.user_id, e.device_id):
                    self.notifier.add(e, "secret", time.time())
            return
        chat_kind, title, targets = found
        msgs: list[tuple[str | None, float, str]] = extra
        for t in targets:
            e = t.endpoint
            me = self.directory.canonical_of(t.name)
            mine = [m for m in msgs if m[0] != me]  # the sender is not told of their own
            if not mine or self._online(e.user_id, e.device_id):
                continue
            sender, ts, text = mine[-1]
            self.notifier.add(
                e,
                "message",
                ts,
                count=len(mine),
                chat=key,
                title=title if chat_kind != "private" else None,
                sender=self.directory.display(sender) if sender else None,
                preview=text if t.previews else None,
            )

    async def _unregister(self, endpoint_id: int) -> None:
        if await self.db.write(lambda c: store.remove(c, endpoint_id)):
            self.endpoints = max(0, (self.endpoints or 1) - 1)

    async def on_revoked(self, user_id: int | None, device_ids: list[int]) -> None:
        """Auth's revocation step: a revoked device's endpoints are deleted."""
        if not device_ids:
            return
        gone = await self.db.write(lambda c: self._drop_devices(c, device_ids))
        for eid in gone:
            self.notifier.forget(eid)
        if gone and self.endpoints is not None:
            self.endpoints = max(0, self.endpoints - len(gone))

    @staticmethod
    def _drop_devices(c: sqlite3.Connection, device_ids: list[int]) -> list[int]:
        marks = ",".join("?" * len(device_ids))
        ids = [
            int(r[0])
            for r in c.execute(
                f"SELECT id FROM push_endpoints WHERE device_id IN ({marks})", device_ids
            )
        ]
        store.remove_devices(c, device_ids)
        return ids

    # --- handlers ---------------------------------------------------------------------------
    async def register_push(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        uid, did = _caller(ctx)
        url, key = p["url"], p["key"]
        why = check_url(url)
        if why is not None:
            raise RpcError(ErrorCode.PUSH_URL_INVALID, f"push endpoint URL {why}")
        if not payload.check_key(key):
            raise RpcError(
                ErrorCode.PUSH_KEY_INVALID,
                f"key must be the device's X25519 public key, 32 bytes (got {len(key)})",
            )
        now = time.time()

        def job(c: sqlite3.Connection) -> tuple[store.Endpoint, bool]:
            try:
                return store.register(c, uid, did, url, key, now, self.max_per_user)
            except store.TooMany:
                raise RpcError(
                    ErrorCode.PUSH_TOO_MANY,
                    f"at most {self.max_per_user} push endpoints per account; remove one first",
                ) from None

        e, new = await self.db.write(job)
        if new:
            self.endpoints = (self.endpoints or 0) + 1
        log.event(_log, "push.registered", user=uid, device=did, endpoint=e.id, new=new)
        return e.wire(did)

    async def list_push(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        uid, did = _caller(ctx)

        def read(c: sqlite3.Connection) -> dict[str, Any]:
            chosen = store.previews(c, uid)
            return {
                "endpoints": [e.wire(did) for e in store.of_user(c, uid)],
                "previews": self.default_previews if chosen is None else chosen,
            }

        return await self.db.read(read)

    async def unregister_push(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        uid, _ = _caller(ctx)
        eid = int(p["id"])
        if not await self.db.write(lambda c: store.remove(c, eid, uid)):
            raise RpcError(ErrorCode.PUSH_NOT_FOUND)
        self.notifier.forget(eid)
        self.endpoints = max(0, (self.endpoints or 1) - 1)
        return {"removed": eid}

    async def test_push(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        uid, _ = _caller(ctx)
        eid = int(p["id"])
        e = await self.db.read(lambda c: store.get(c, uid, eid))
        if e is None:
            raise RpcError(ErrorCode.PUSH_NOT_FOUND)
        out = await self.notifier.test(e, time.time())
        log.event(_log, "push.tested", logging.DEBUG, endpoint=eid, result=out.result)
        return {
            "id": eid,
            "result": {"ok": "sent", "gone": "unregistered", "retry": "failed"}.get(
                out.result, "failed"
            ),
            "status": out.status,
            "error": out.error,
        }

    async def set_settings(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        uid, _ = _caller(ctx)
        on = bool(p["previews"])
        await self.db.write(lambda c: store.set_previews(c, uid, on))
        return {"previews": on}
