"""The node's secret-chat service: ``secret.*`` handlers, and what federation calls.

The node is a post office for sealed envelopes (docs/secret-chats.md): it keeps each
device's published prekeys, queues opaque payloads per recipient *device*, pushes them to
that device's online sessions, deletes them on acknowledgement or after ``[secret] ttl``,
and hands envelopes for other nodes' devices to federation (``remote.secret_forward``,
inside the same write job, so "forwarded" is as durable as "queued"). It has no key that
could open a payload and no code path that looks inside one: payloads are only stored,
passed on and counted; logs carry sizes and ids, never bytes.

Pushes (``secret.item``) go to the recipient device's sessions directly after the commit,
not through the update log (no pts, nothing in ``updates``): the queue itself is the
durable record, and ``secret.fetch`` is how a device that was offline catches up.

Addresses: everything stored and everything exchanged with federation is canonical
(``name@<node id>``); what a client reads (``from`` of a SecretItem, ``user`` of getKeys) is
in display form like every other address a client reads (docs/api.md, Addresses).
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Callable
from typing import Any, Protocol

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from .. import log
from ..address import Address, AddressError
from ..config import Config
from ..interfaces import CallContext, Caller, CommittedEvents, Effects, Storage
from ..nodes import Directory
from ..protocol import frames
from ..protocol.api_secret import KINDS, ONE_TIME_KEPT, PAYLOAD_MAX, KeyBundle
from ..protocol.errors import ErrorCode, RpcError
from ..protocol.schema import SchemaViolation
from ..remote import RemoteSlot
from ..rpc import Router
from . import store
from .sweeper import Sweeper

_log = log.get("secret")

SPK_CONTEXT = b"fedgram-spk\x00"
HOPS = 3  # docs section 4: the hop limit of an envelope
FETCH_DEFAULT = 100
FETCH_BYTES = 768 * 1024  # bytes per secret.fetch reply (frames are capped at 1 MiB)
ITEM_OVERHEAD = 256  # an item's encoded fields besides its payload, at most (its address...)
NOTICE_TTL_MIN = 7 * 24 * 3600.0  # seconds a node notice waits at least
SWEEP_BATCH = 500  # expired rows per write job
BACKSTOP_EVERY = 60.0  # seconds between scans for revoked devices left with secret rows

Params = dict[str, Any]
Push = tuple[int, store.Item]  # (recipient user id, the item queued for one of its devices)


class DeviceSessions(Protocol):
    """What the service needs of the updates hub (node/updates.py's Hub): a user's online
    sessions (each knows its device), and how pushes are presented to clients."""

    present: Callable[[Any], Any]

    def sessions_of(self, user_id: int) -> list[Caller]: ...


def _caller(ctx: CallContext) -> tuple[int, int]:
    """(user id, device id) of the signed-in caller (the router lets only them in)."""
    s = ctx.session
    assert s is not None and s.user_id is not None and s.device_id is not None
    return s.user_id, s.device_id


def spk_message(key_id: int, key: bytes) -> bytes:
    """What a device signs for its signed prekey (docs section 2)."""
    return SPK_CONTEXT + key_id.to_bytes(8, "big") + key


class SecretService:
    def __init__(
        self,
        config: Config,
        db: Storage,
        events: CommittedEvents,
        sessions: DeviceSessions,
        directory: Directory,
        remote: RemoteSlot,
        erased: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        # jobs that may hand envelopes to federation are committed through the node's
        # publications: federation learns of the commit there and sends at once
        self.events = events
        self.sessions = sessions
        self.directory = directory
        self.remote = remote
        self.ttl = float(config.get("secret", "ttl"))
        # a notice must outlive the messages it reports: a device away for the whole TTL
        # still finds "expired" on its return, even with a short configured TTL
        self.notice_ttl = max(self.ttl, NOTICE_TTL_MIN)
        self.queue_max = int(config.get("secret", "queue_max"))
        frame_max = int(config.get("limits", "frame_max_bytes"))
        self.fetch_bytes = max(1, min(FETCH_BYTES, frame_max - PAYLOAD_MAX))
        # acknowledged payloads are zeroed in the file (secure_delete) but linger in the WAL
        # until it is checkpointed: the node's compaction truncates it after this call
        self._erased = erased or (lambda: None)
        self.sweeper = Sweeper(self._next_expiry, self.sweep)
        self._backstop_at = 0.0
        # told (user id, device id) when a message waits for a device with no live session:
        # the node's push service notifies it ("new secret message", nothing more)
        self.offline: Callable[[int, int], None] | None = None

    def register(self, router: Router) -> None:
        for name, fn in {
            "secret.publishKeys": self.publish_keys,
            "secret.keysLeft": self.keys_left,
            "secret.getKeys": self.get_keys,
            "secret.send": self.send,
            "secret.fetch": self.fetch,
            "secret.ack": self.ack,
        }.items():
            router.add(name, fn)

    async def run(self) -> None:
        """The service's background work (the node's nursery): the TTL sweeper."""
        await self.sweeper.run()

    # --- helpers ------------------------------------------------------------------------
    def _resolve(self, text: str) -> Address:
        try:
            return self.directory.resolve(text.lstrip("@"))
        except AddressError as e:
            code = ErrorCode.PEER_UNKNOWN if "no node" in str(e) else ErrorCode.USER_NOT_FOUND
            raise RpcError(code, str(e)) from None

    def _local(self, a: Address) -> bool:
        return a.node == self.directory.self_id

    def _push(self, pushes: list[Push]) -> None:
        """Queue each item on the online sessions of its recipient device (after commit)."""
        for user_id, item in pushes:
            targets = [
                s for s in self.sessions.sessions_of(user_id) if s.device_id == item.device_id
            ]
            if not targets:
                if item.kind == "message" and self.offline is not None:
                    self.offline(user_id, item.device_id)
                continue
            upd = {"type": "secret.item", **item.wire(self.directory.display(item.sender))}
            encoded = frames.encode_updates(self.sessions.present([upd]))
            for s in targets:
                s.push(encoded)

    def _forward_notice(self, conn: sqlite3.Connection, fx: Effects, item: dict[str, Any]) -> None:
        """Hand a node notice for another node's device to federation, inside the job;
        without federation (FEDERATION_OFF) or if it refuses, the notice is dropped and
        the rest of the job stands (a nested savepoint keeps the two apart)."""
        conn.execute("SAVEPOINT secret_notice")
        try:
            self.remote.secret_forward(conn, fx, item)
        except RpcError as e:
            conn.execute("ROLLBACK TO secret_notice")
            if e.code != ErrorCode.FEDERATION_OFF:
                log.event(_log, "secret.notice_dropped", kind=item["kind"], code=e.code)
        except Exception:  # a bug there must not wedge the sweep (it would retry forever)
            conn.execute("ROLLBACK TO secret_notice")
            _log.exception("secret notice for another node dropped")
        conn.execute("RELEASE secret_notice")

    def _notice(
        self,
        conn: sqlite3.Connection,
        fx: Effects,
        now: float,
        kind: str,
        to: str,
        device: int,
        about: str,
        about_device: int,
        msg_id: int = 0,
        count: int = 0,
    ) -> Push | None:
        """Queue a node notice for device ``device`` of ``to`` (canonical) about the device
        ``about_device`` of ``about``: directly for a live device of this node (the push to
        make after commit is returned), through federation for another node's."""
        a = Address.parse(to)
        if a.node != self.directory.self_id:
            self._forward_notice(
                conn,
                fx,
                {
                    "to": to,
                    "device": device,
                    "from": about,
                    "from_device": about_device,
                    "id": msg_id,
                    "payload": b"",
                    "kind": kind,
                    "sent": now,
                    "expires": now + self.notice_ttl,
                    "hops": HOPS,
                    "count": count,
                },
            )
            return None
        uid = store.local_user(conn, a.name)
        if uid is None or not store.live_device(conn, uid, device):
            return None
        if kind == "expired":  # one notice per chat until read: counts add up
            qid_merged = store.merge_expired(
                conn, device, about, about_device, msg_id, count, now, now + self.notice_ttl
            )
            if qid_merged is not None:
                merged = store.item(conn, qid_merged)
                return (uid, merged) if merged is not None else None
        qid, new = store.queue_put(
            conn, device, kind, about, about_device, msg_id, b"", now, now + self.notice_ttl, count
        )
        item = store.item(conn, qid) if new else None
        return (uid, item) if item is not None else None

    def _me(self, conn: sqlite3.Connection, device_id: int) -> str:
        """The canonical address of the user of a device of this node."""
        owner = store.device_owner(conn, device_id)
        if owner is None:  # signed in a moment ago; removed since
            raise RpcError(ErrorCode.SECRET_DEVICE_GONE, "this device no longer exists")
        return self.directory.canonical_of(owner[1])

    # --- prekeys ------------------------------------------------------------------------
    async def publish_keys(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        _, did = _caller(ctx)
        spk = p.get("signed_prekey")
        one_time = p.get("one_time", [])
        if spk is not None:
            public = await self.db.read(lambda c: store.device_public_key(c, did))
            if public is None:
                raise RpcError(ErrorCode.SECRET_DEVICE_GONE, "this device no longer exists")
            try:
                VerifyKey(public).verify(spk_message(spk["id"], spk["key"]), spk["sig"])
            except BadSignatureError:
                raise RpcError(ErrorCode.SECRET_KEYS_INVALID) from None
        now = time.time()
        left = await self.db.write(
            lambda c: store.publish_keys(c, did, spk, one_time, ONE_TIME_KEPT, now)
        )
        log.event(
            _log,
            "secret.keys_published",
            device=did,
            signed_prekey=spk["id"] if spk else None,
            one_time=len(one_time),
            left=left,
        )
        return {"one_time_left": left}

    async def keys_left(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        _, did = _caller(ctx)

        def read(c: sqlite3.Connection) -> dict[str, Any]:
            return {
                "one_time_left": store.one_time_left(c, did),
                "signed_prekey_id": store.signed_prekey_id(c, did),
            }

        return await self.db.read(read)

    async def get_keys(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        a = self._resolve(p["user"])
        if self._local(a):
            return await self.keys_for(a.name)
        answer = await self.remote.secret_keys(str(a))
        try:  # a peer's answer is checked like a request before a client relies on it
            KeyBundle.check(answer, "answer")
        except SchemaViolation as e:
            raise RpcError(
                ErrorCode.PEER_UNREACHABLE, f"bad key answer from its node: {e}"
            ) from None
        return {**answer, "user": str(a)}

    async def keys_for(self, name: str) -> dict[str, Any]:
        """``secret.getKeys`` for user ``name`` of this node (federation's ``fed.secretKeys``
        too): one write job, so each one-time prekey is handed out once."""

        def job(c: sqlite3.Connection) -> list[dict[str, Any]]:
            uid = store.local_user(c, name)
            if uid is None:
                raise RpcError(ErrorCode.USER_NOT_FOUND)
            return store.take_bundles(c, uid)

        devices = await self.db.write(job)
        log.event(_log, "secret.keys_taken", devices=len(devices))
        return {"user": self.directory.canonical_of(name), "devices": devices}

    # --- queues -------------------------------------------------------------------------
    async def send(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        _, did = _caller(ctx)
        a = self._resolve(p["to"])
        to, device, msg_id, payload = str(a), p["device"], p["id"], p["payload"]
        now = time.time()
        expires = now + self.ttl
        if not self._local(a):

            def forward(c: sqlite3.Connection, fx: Effects) -> None:
                me = self._me(c, did)
                store.touch_contact(c, did, to, device, now)
                self.remote.secret_forward(
                    c,
                    fx,
                    {
                        "to": to,
                        "device": device,
                        "from": me,
                        "from_device": did,
                        "id": msg_id,
                        "payload": payload,
                        "kind": "message",
                        "sent": now,
                        "expires": expires,
                        "hops": HOPS,
                    },
                )

            await self.events.commit(self.db, forward)
            log.event(
                _log,
                "secret.forwarded",
                logging.DEBUG,
                device=did,
                to_device=device,
                size=len(payload),
            )
            return {"id": msg_id, "state": "forwarded"}

        def queue(c: sqlite3.Connection) -> Push | None:
            me = self._me(c, did)
            uid = store.local_user(c, a.name)
            if uid is None:
                raise RpcError(ErrorCode.USER_NOT_FOUND)
            if not store.live_device(c, uid, device):
                raise RpcError(ErrorCode.SECRET_DEVICE_GONE)
            try:
                qid, new = store.queue_put(
                    c, device, "message", me, did, msg_id, payload, now, expires, 0, self.queue_max
                )
            except store.QueueFull:
                raise RpcError(ErrorCode.SECRET_QUEUE_FULL) from None
            store.touch_contact(c, did, to, device, now)
            store.touch_contact(c, device, me, did, now)
            item = store.item(c, qid) if new else None
            return (uid, item) if item is not None else None

        pushed = await self.db.write(queue)
        if pushed is not None:
            self._push([pushed])
            self.sweeper.soon(expires)
        log.event(
            _log, "secret.queued", logging.DEBUG, device=did, to_device=device, size=len(payload)
        )
        return {"id": msg_id, "state": "queued"}

    async def fetch(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        _, did = _caller(ctx)
        limit = p.get("limit", FETCH_DEFAULT)
        items = await self.db.read(lambda c: store.fetch(c, did, limit))
        out: list[dict[str, Any]] = []
        size = 0
        for it in items:
            size += len(it.payload) + ITEM_OVERHEAD
            if out and size > self.fetch_bytes:
                break
            out.append(it.wire(self.directory.display(it.sender)))
        return {"items": out}

    async def ack(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        _, did = _caller(ctx)
        ids = p["ids"]
        n = await self.db.write(lambda c: store.ack(c, did, ids)) if ids else 0
        if n:
            self._erased()
        log.event(_log, "secret.acked", logging.DEBUG, device=did, items=n)
        return {"acked": n}

    # --- federation -> node -------------------------------------------------------------
    def _ttl_for(self, kind: str) -> float:
        """How long this node keeps an item of ``kind`` for an absent device."""
        return self.ttl if kind == "message" else self.notice_ttl

    async def deliver(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Queue items from federation (any kind) for devices of this node and push them;
        one result per item, in order: ``{"ok": True}`` once committed (also for a resend
        of one already queued), or ``{"error": code}``."""
        results: list[dict[str, Any] | None] = [None] * len(items)
        valid: list[tuple[int, Address, dict[str, Any]]] = []
        for i, it in enumerate(items):
            code = self._check_item(it)
            if code is not None:
                results[i] = {"error": str(code)}
                continue
            valid.append((i, Address.parse(it["to"]), it))
        now = time.time()

        def job(c: sqlite3.Connection) -> list[Push]:
            pushes: list[Push] = []
            for i, a, it in valid:
                uid = store.local_user(c, a.name)
                if uid is None or not store.live_device(c, uid, it["device"]):
                    results[i] = {"error": str(ErrorCode.SECRET_DEVICE_GONE)}
                    continue
                sender = str(Address.parse(it["from"]))
                expires = min(float(it["expires"]), now + self._ttl_for(it["kind"]))
                kind = it["kind"]
                try:
                    qid, new = store.queue_put(
                        c,
                        it["device"],
                        kind,
                        sender,
                        it["from_device"],
                        it["id"],
                        it["payload"] if kind == "message" else b"",
                        float(it["sent"]),
                        expires,
                        int(it.get("count", 0) or 0),
                        self.queue_max if kind == "message" else None,
                    )
                except store.QueueFull:
                    results[i] = {"error": str(ErrorCode.SECRET_QUEUE_FULL)}
                    continue
                if kind == "revoked":  # that chat is over: nothing more to tell it
                    c.execute(
                        "DELETE FROM secret_contacts WHERE device_id = ? AND peer = ? "
                        "AND peer_device = ?",
                        (it["device"], sender, it["from_device"]),
                    )
                else:
                    store.touch_contact(c, it["device"], sender, it["from_device"], now)
                results[i] = {"ok": True}
                item = store.item(c, qid) if new else None
                if item is not None:
                    pushes.append((uid, item))
            return pushes

        if valid:
            pushes = await self.db.write(job)
            self._push(pushes)
            if pushes:  # the earliest expiry queued: each item's own, capped by our TTL
                self.sweeper.soon(
                    min(
                        min(float(it["expires"]), now + self._ttl_for(it["kind"]))
                        for _, _, it in valid
                    )
                )
        log.event(
            _log,
            "secret.delivered",
            logging.DEBUG,
            items=len(items),
            ok=sum(1 for r in results if r and r.get("ok")),
            size=sum(len(it.get("payload") or b"") for _, _, it in valid),
        )
        return [r if r is not None else {"error": str(ErrorCode.INTERNAL)} for r in results]

    def _check_item(self, it: Any) -> ErrorCode | None:
        """The shape of an item from federation (it validated the wire already; this is the
        node's own boundary): PARAMS_INVALID, or SECRET_NO_ROUTE if not for this node."""
        ints = ("device", "from_device", "id")
        try:
            ok = (
                isinstance(it, dict)
                and all(
                    isinstance(it.get(k), int) and not isinstance(it.get(k), bool) for k in ints
                )
                and it["device"] >= 1
                and it["from_device"] >= 0
                and 0 <= it["id"] < 2**63
                and isinstance(it.get("payload"), bytes)
                and len(it["payload"]) <= PAYLOAD_MAX
                and it.get("kind") in KINDS
                and all(
                    isinstance(it.get(k), int | float)
                    and not isinstance(it.get(k), bool)
                    and math.isfinite(it[k])
                    for k in ("sent", "expires")
                )
                and isinstance(it.get("to"), str)
                and isinstance(it.get("from"), str)
            )
            if not ok:
                return ErrorCode.PARAMS_INVALID
            to, sender = Address.parse(it["to"]), Address.parse(it["from"])
        except (AddressError, KeyError, TypeError):
            return ErrorCode.PARAMS_INVALID
        if not sender.canonical:
            return ErrorCode.PARAMS_INVALID
        if to.node != self.directory.self_id:
            return ErrorCode.SECRET_NO_ROUTE
        if it["kind"] == "message" and (it["id"] == 0 or not it["payload"]):
            return ErrorCode.PARAMS_INVALID
        return None

    # --- TTL ----------------------------------------------------------------------------
    async def _next_expiry(self) -> float | None:
        return await self.db.read(store.next_expiry)

    async def sweep(self, now: float) -> None:
        """Delete what passed its TTL; for unread messages, an ``expired`` notice (with the
        count) to the recipient device (it sees it on its return) and one to the sender
        device (at once if on this node, through federation if not)."""
        expired_total = 0
        while True:

            def job(c: sqlite3.Connection, fx: Effects) -> tuple[list[Push], int, int]:
                groups, rows = store.take_expired(c, now, SWEEP_BATCH)
                pushes: list[Push] = []
                for g in groups:
                    owner = store.device_owner(c, g.device_id)
                    if owner is None:
                        continue
                    recipient = self.directory.canonical_of(owner[1])
                    for to, device, about, about_device in (
                        (recipient, g.device_id, g.sender, g.sender_device),
                        (g.sender, g.sender_device, recipient, g.device_id),
                    ):
                        pushed = self._notice(
                            c,
                            fx,
                            now,
                            "expired",
                            to,
                            device,
                            about,
                            about_device,
                            g.last_id,
                            g.count,
                        )
                        if pushed is not None:
                            pushes.append(pushed)
                return pushes, rows, sum(g.count for g in groups)

            pushes, rows, expired = await self.events.commit(self.db, job)
            self._push(pushes)
            expired_total += expired
            if rows < SWEEP_BATCH:
                break
        if expired_total:
            self._erased()
            log.event(_log, "secret.expired", messages=expired_total)
        if now - self._backstop_at >= BACKSTOP_EVERY:
            self._backstop_at = now
            left = await self.db.read(store.revoked_with_data)
            if left:
                await self.on_revoked(None, left)

    # --- revocation ---------------------------------------------------------------------
    async def on_revoked(self, user_id: int | None, device_ids: list[int]) -> None:
        """Devices were revoked (auth, after its commit): drop their queues and prekeys and
        tell every device they exchanged envelopes with (``revoked``: the chat is over)."""
        if not device_ids:
            return
        now = time.time()
        pushes = await self.events.commit(
            self.db, lambda c, fx: self._revoke(c, fx, now, device_ids)
        )
        self._push(pushes)
        log.event(_log, "secret.revoked", devices=len(device_ids), told=len(pushes))

    def on_user_removed(self, conn: sqlite3.Connection, fx: Effects, user_id: int) -> None:
        """Auth's removal share (inside the job deleting a user): the same as revoking each
        of its devices; local peers find the notice on their next fetch."""
        ids = [
            int(r[0]) for r in conn.execute("SELECT id FROM devices WHERE user_id = ?", (user_id,))
        ]
        self._revoke(conn, fx, time.time(), ids)

    def _revoke(
        self, c: sqlite3.Connection, fx: Effects, now: float, device_ids: list[int]
    ) -> list[Push]:
        pushes: list[Push] = []
        for did in device_ids:
            owner = store.device_owner(c, did)
            if owner is not None:
                me = self.directory.canonical_of(owner[1])
                for peer, peer_device in store.contacts_of(c, did):
                    pushed = self._notice(c, fx, now, "revoked", peer, peer_device, me, did)
                    if pushed is not None:
                        pushes.append(pushed)
                c.execute(
                    "DELETE FROM secret_contacts WHERE peer = ? AND peer_device = ?", (me, did)
                )
            store.drop_device(c, did)
        return pushes
