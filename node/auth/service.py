"""The accounts service: sign-up, login codes, device binding, device management, admin.

Rules that shape it:
* A device is an Ed25519 key made on the client.  Sign-in and later authorization both
  carry a signature over the session's handshake transcript, so a key can only be bound by
  whoever holds it, and a captured signature is useless on any other session.
* A wrong code spends an attempt in a committed transaction (a rolled-back attempt would
  make guessing free); rate limits refuse to evaluate guesses at all past their budget.
* Revocation, bans and removal close live sessions at once through the updates hub.  A
  session becomes signed in (is bound and listed in the hub) only while it holds its user's
  *gate*, right after a check of the device and user that started after taking it; the
  code ending sessions takes the same gate after its change committed.  So whichever order
  a sign-in and a revocation land in, either the check sees the revocation or the closing
  sees the session: no window in which a revoked device stays signed in.
* On nodes whose registration is not `open`, auth.requestCode and auth.signIn answer the
  same, after the same work, whether or not the name is a (usable) user: a name that is not
  gets a decoy code that is never sent and that answers guesses like a wrong code.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import re
import secrets
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
from nacl.signing import SigningKey

from .. import log
from ..config import Config
from ..interfaces import (
    CallContext,
    Caller,
    CommittedEvents,
    Effects,
    Sessions,
    Storage,
    UserDirectory,
)
from ..protocol.errors import ErrorCode, RpcError
from ..protocol.handshake import check_device_proof
from ..rpc import Router
from ..tokens import new_token
from . import store
from .delivery import CodeDelivery
from .passwords import check_password, hash_password

UserRemoval = Callable[[sqlite3.Connection, Effects, int], None]
"""Runs inside the job that deletes a local user, before the row goes: another service's
share of the removal (the chats service makes them leave every chat)."""

_log = log.get("auth")
NAME_RE = re.compile(r"[a-z0-9_]{3,32}")


def canonical_name(name: str) -> str:
    n = name.strip().lower()
    if not NAME_RE.fullmatch(n):
        raise RpcError(ErrorCode.NAME_INVALID)
    return n


class _Gates:
    """One lock per user id, made on demand and dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[int, tuple[trio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, user_id: int) -> AsyncIterator[None]:
        lock, users = self._locks.get(user_id, (None, 0))
        if lock is None:
            lock = trio.Lock()
        self._locks[user_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[user_id]
            if users == 1:
                del self._locks[user_id]
            else:
                self._locks[user_id] = (lock, users - 1)


# real deliveries remembered to make a decoy's answer time (and outcome) look like theirs
DELIVERY_SAMPLES = 32
# how often the users online are written as last seen: "last seen" is to the minute, and
# one write job a minute for all of them costs nothing next to a write per request
LAST_SEEN_INTERVAL = 60.0


class Accounts:
    def __init__(
        self,
        config: Config,
        identity: SigningKey,
        db: Storage,
        sessions: Sessions,
        directory: UserDirectory,
        events: CommittedEvents,
    ) -> None:
        self.db = db
        self.hub = sessions
        self.directory = directory
        self.events = events
        # other services' shares of a user's removal (see UserRemoval), and what they do
        # before it that cannot be part of the job (telling other nodes)
        self.removal: list[UserRemoval] = []
        self.before_removal: list[Callable[[int], Awaitable[None]]] = []
        # what other services do once devices were revoked (the secret queues drop theirs
        # and tell their chats' other devices): called with (user id, device ids)
        self.revocation: list[Callable[[int, list[int]], Awaitable[None]]] = []
        acc = config.values["accounts"]
        self.policy: str = acc["registration"]
        self.code_ttl: int = acc["code_ttl"]
        self.code_length: int = acc["code_length"]
        self.code_attempts: int = acc["code_attempts"]
        self.delivery = CodeDelivery(config)
        # closed and invite nodes do not tell who exists (open ones do anyway: NAME_TAKEN)
        self.hide_names = self.policy != "open"
        self._deliveries: deque[tuple[float, bool]] = deque(maxlen=DELIVERY_SAMPLES)
        self._gates = _Gates()
        # users signed in since the last last-seen write (sign-in itself writes it); the
        # loop asks the hub which of them are still online
        self._online: set[int] = set()
        # Codes are stored keyed-hashed: a leaked database does not hand out live codes.
        self._code_key = hashlib.blake2b(
            bytes(identity), digest_size=32, person=b"fedgram-codes"
        ).digest()

    def reconfigure(self, config: Config) -> None:
        """Take the ``[accounts]`` settings of a reloaded config (SIGHUP): registration
        policy, code settings and delivery change for the next request."""
        acc = config.values["accounts"]
        self.policy = acc["registration"]
        self.code_ttl = acc["code_ttl"]
        self.code_length = acc["code_length"]
        self.code_attempts = acc["code_attempts"]
        self.delivery = CodeDelivery(config)
        self.hide_names = self.policy != "open"

    # --- helpers ------------------------------------------------------------------------
    def _hash(self, secret: str) -> bytes:
        return hmac.new(self._code_key, secret.encode(), "sha256").digest()

    def _address(self, name: str) -> str:
        # canonical here, as everywhere inside the node; results show it as name@petname
        return self.directory.canonical_of(name)

    def _authorization(self, user: store.User, device_id: int) -> dict[str, Any]:
        return {
            "user_id": user.id,
            "name": user.name,
            "address": self._address(user.name),
            "display_name": user.display_name,
            "device_id": device_id,
            "node_id": self.directory.self_id,
        }

    def _profile(self, u: store.User, about: str) -> dict[str, Any]:
        return {
            "user_id": u.id,
            "name": u.name,
            "address": self._address(u.name),
            "display_name": u.display_name,
            "about": about,
            "has_password": u.password_hash is not None,
            "is_admin": u.is_admin,
            "created": u.created,
        }

    def _device_rows(
        self, user_id: int, devices: list[store.DeviceRow], current: int | None
    ) -> list[dict[str, Any]]:
        online = self.hub.online_devices(user_id)
        return [
            {
                "device_id": d.id,
                "name": d.name,
                "created": d.created,
                "last_seen": d.last_seen,
                "current": d.id == current,
                "online": d.id in online,
            }
            for d in devices
        ]

    def _user_row(
        self, u: store.User, devices: int, last_seen: float | None = None
    ) -> dict[str, Any]:
        return {
            "user_id": u.id,
            "name": u.name,
            "address": self._address(u.name),
            "display_name": u.display_name,
            "is_admin": u.is_admin,
            "banned": u.banned,
            "devices": devices,
            "created": u.created,
            "last_seen": last_seen,
            "online": bool(self.hub.online_devices(u.id)),
        }

    @staticmethod
    def _session(ctx: CallContext) -> Caller:
        assert ctx.session is not None
        return ctx.session

    def _not_signed_in(self, ctx: CallContext) -> Caller:
        s = self._session(ctx)
        if s.user_id is not None:
            raise RpcError(ErrorCode.ALREADY_AUTHORIZED)
        return s

    def _check_proof(self, s: Caller, p: dict[str, Any]) -> None:
        if not check_device_proof(p["device_key"], s.transcript_hash, p["sig"]):
            raise RpcError(ErrorCode.SIGNATURE_INVALID)

    async def _bind(
        self,
        s: Caller,
        user_id: int,
        check: Callable[[sqlite3.Connection], tuple[store.User, store.DeviceRow]],
        new: bool,
        write: bool = True,
    ) -> dict[str, Any]:
        """Sign the session in as the device ``check`` returns, under the user's gate.

        ``check`` runs after the gate is taken and must refuse a revoked device or a banned
        or removed user; whoever ends sessions takes the gate after committing, so it either
        happened before ``check`` (which sees it) or finds this session bound."""
        async with self._gates.hold(user_id):
            user, device = await (self.db.write if write else self.db.read)(check)
            if device.user_id != user_id or user.id != user_id:
                raise RpcError(ErrorCode.DEVICE_UNKNOWN)
            if s.user_id is not None:  # a pipelined sign-in of this session won
                raise RpcError(ErrorCode.ALREADY_AUTHORIZED)
            s.device_name = device.name
            s.user_id, s.device_id = user.id, device.id
            await self.hub.attach(s)  # lists the session before its first checkpoint
            self._online.add(user.id)
        device_id = device.id
        if new:
            self.hub.push_to_user(
                user.id,
                [
                    {
                        "type": "account.newSignIn",
                        "device_id": device_id,
                        "device_name": s.device_name,
                        "time": time.time(),
                    }
                ],
                exclude=s,
            )
        log.event(
            _log,
            "device.bound" if new else "device.authorized",
            logging.DEBUG,
            user=user.name,
            device=device_id,
            session=s.id,
        )
        log.security(
            "sign_in" if new else "authorize",
            logging.INFO if new else logging.DEBUG,
            user=user.name,
            device=device_id,
            device_name=s.device_name,
            ip=s.ip,
        )
        return self._authorization(user, device_id)

    @staticmethod
    def _usable(conn: sqlite3.Connection, device: store.DeviceRow) -> store.User:
        """The user of a device that may be signed in, or the reason it may not."""
        if device.revoked is not None:
            raise RpcError(ErrorCode.DEVICE_REVOKED)
        u = store.user_by_id(conn, device.user_id)
        if u is None:
            raise RpcError(ErrorCode.DEVICE_UNKNOWN)
        if u.banned:
            raise RpcError(ErrorCode.USER_BANNED)
        return u

    def _new_code(self) -> tuple[str, bytes]:
        code = "".join(secrets.choice("0123456789") for _ in range(self.code_length))
        return code, self._hash(code)

    async def issue_code(self, name: str) -> tuple[str, store.User]:
        """A fresh code for an existing user (the admin's `fedgram user code`)."""
        code, digest = self._new_code()

        def job(conn: sqlite3.Connection) -> store.User:
            u = store.need_user(conn, name)
            store.set_code(conn, name, u.id, digest, self.code_ttl, self.code_attempts)
            return u

        return code, await self.db.write(job)

    async def _end_sessions(
        self, user_id: int, reason: ErrorCode, device_ids: list[int] | None = None
    ) -> int:
        """Close the sessions of ``device_ids`` (None: all) of a user, after the change that
        ends them committed. Under the user's gate, so no sign-in can slip in between its
        check and its binding; shielded, so a caller's cancellation cannot skip it."""
        with trio.CancelScope(shield=True):
            async with self._gates.hold(user_id):
                if device_ids is None:
                    self.hub.close_user(user_id, reason)
                for device_id in device_ids or ():
                    self.hub.close_user(user_id, reason, device_id=device_id)
        return len(device_ids or ())

    async def _revoked(self, user_id: int, ids: list[int], by: str, ip: str = "-") -> int:
        if ids:
            log.security(
                "devices_revoked",
                user_id=user_id,
                devices=",".join(map(str, ids)),
                by=by,
                ip=ip,
            )
        n = await self._end_sessions(user_id, ErrorCode.SESSION_REVOKED, ids)
        with trio.CancelScope(shield=True):  # committed already: its consequences must follow
            for step in self.revocation:
                try:
                    await step(user_id, ids)
                except Exception:  # the revocation stands; the step's own sweep retries
                    _log.exception("a revocation step failed")
        return n

    async def _decoy_delivery(self) -> None:
        """What a real delivery looks like from outside, for a name that gets none: the
        time (and outcome) of a recent real one."""
        if not self._deliveries:
            return
        took, failed = random.choice(self._deliveries)
        await trio.sleep(took)
        if failed:
            raise RpcError(
                ErrorCode.DELIVERY_FAILED, f"code delivery ({self.delivery.kind}) failed"
            )

    async def _deliver(self, name: str, code: str) -> None:
        start = trio.current_time()
        try:
            await self.delivery.deliver(name, code, self.code_ttl)
        except RpcError:
            self._deliveries.append((trio.current_time() - start, True))
            raise
        self._deliveries.append((trio.current_time() - start, False))

    # --- auth.* -------------------------------------------------------------------------
    def _holder(self, name: str, u: store.User | None) -> int | None:
        """Whom a code for NAME may sign in: a user that exists and is not banned. None
        (a decoy) where names are hidden; on open nodes the reason is told instead."""
        if u is not None and not u.banned:
            return u.id
        if self.hide_names:
            return None
        if u is None:
            raise RpcError(ErrorCode.USER_NOT_FOUND, f"no user {name!r}")
        raise RpcError(ErrorCode.USER_BANNED)

    async def request_code(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        self._not_signed_in(ctx)
        name = canonical_name(p["name"])
        code, digest = self._new_code()

        def job(conn: sqlite3.Connection) -> int | None:
            holder = self._holder(name, store.user_by_name(conn, name))
            # a name that is no usable user gets a decoy: same row, same work, never sent
            stored = digest if holder is not None else secrets.token_bytes(len(digest))
            store.set_code(conn, name, holder, stored, self.code_ttl, self.code_attempts)
            return holder

        if await self.db.write(job) is None:
            await self._decoy_delivery()
        else:
            await self._deliver(name, code)
        return {"expires_in": self.code_ttl, "length": self.code_length, "via": self.delivery.kind}

    async def sign_in(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        s = self._not_signed_in(ctx)
        self._check_proof(s, p)
        name = canonical_name(p["name"])
        digest = self._hash(p["code"])

        def matches(stored: bytes) -> bool:
            return hmac.compare_digest(stored, digest)

        def check(conn: sqlite3.Connection) -> tuple[store.User | None, RpcError | None]:
            u = store.user_by_name(conn, name)
            holder = self._holder(name, u)
            return u, store.check_code(conn, name, holder, matches)

        user, err = await self.db.write(check)
        if err is not None:
            _failed(name, s.ip, err)
            raise err
        assert user is not None  # check_code accepts only a code issued to this user
        if user.password_hash is not None:
            if "password" not in p:
                raise RpcError(ErrorCode.PASSWORD_REQUIRED)
            if not await check_password(user.password_hash, p["password"]):
                await self.db.write(lambda c: store.spend_attempt(c, name))
                _failed(name, s.ip, RpcError(ErrorCode.PASSWORD_INVALID))
                raise RpcError(ErrorCode.PASSWORD_INVALID)

        def bind(conn: sqlite3.Connection) -> tuple[store.User, store.DeviceRow]:
            # the code may have been used or voided (ban, removal) meanwhile: check again
            if store.check_code(conn, name, user.id, matches) is not None:
                raise RpcError(ErrorCode.CODE_EXPIRED)
            store.delete_code(conn, name)
            device_id = store.add_device(conn, user.id, p["device_key"], p["device_name"])
            device = store.device_by_id(conn, device_id)
            assert device is not None
            return self._usable(conn, device), device

        return await self._bind(s, user.id, bind, new=True)

    async def sign_up(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        s = self._not_signed_in(ctx)
        if self.policy == "closed" or (self.policy == "invite" and "invite" not in p):
            raise RpcError(ErrorCode.REGISTRATION_CLOSED)
        self._check_proof(s, p)
        name = canonical_name(p["name"])
        invite = self._hash(p["invite"]) if self.policy == "invite" else None

        def job(conn: sqlite3.Connection) -> tuple[store.User, int]:
            if invite is not None:
                store.use_invite(conn, invite)
            u = store.create_user(conn, name, p.get("display_name", ""), False)
            return u, store.add_device(conn, u.id, p["device_key"], p["device_name"])

        user, device_id = await self.db.write(job)
        log.security("sign_up", user=name, device=device_id, ip=s.ip, policy=self.policy)

        def check(conn: sqlite3.Connection) -> tuple[store.User, store.DeviceRow]:
            # an admin may have banned or removed the new account meanwhile
            device = store.device_by_id(conn, device_id)
            if device is None:
                raise RpcError(ErrorCode.DEVICE_UNKNOWN)
            return self._usable(conn, device), device

        return await self._bind(s, user.id, check, new=True, write=False)

    async def authorize(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        s = self._not_signed_in(ctx)
        self._check_proof(s, p)
        key = p["device_key"]
        # whose device it is (that never changes) says which user's gate to take
        found = await self.db.read(lambda c: store.device_by_key(c, key))
        if found is None:
            raise RpcError(ErrorCode.DEVICE_UNKNOWN)

        def check(conn: sqlite3.Connection) -> tuple[store.User, store.DeviceRow]:
            d = store.device_by_key(conn, key)
            if d is None:
                raise RpcError(ErrorCode.DEVICE_UNKNOWN)
            u = self._usable(conn, d)
            store.touch_device(conn, d.id)
            return u, d

        return await self._bind(s, found.user_id, check, new=False)

    async def log_out(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        s = self._session(ctx)
        user_id, device_id = s.user_id, s.device_id
        assert user_id is not None and device_id is not None
        await self.db.write(lambda c: store.revoke_devices(c, user_id, device_id))
        self.hub.detach(s)
        s.user_id = s.device_id = None  # this session stays open, signed out
        await self._revoked(user_id, [device_id], "logout", s.ip)
        return {}

    # --- account.* ----------------------------------------------------------------------
    async def _me(self, ctx: CallContext) -> store.User:
        uid = self._session(ctx).user_id
        assert uid is not None
        u = await self.db.read(lambda c: store.user_by_id(c, uid))
        if u is None:
            raise RpcError(ErrorCode.USER_NOT_FOUND)
        return u

    async def _profile_of(self, u: store.User) -> dict[str, Any]:
        """The Profile answer: the user row plus its about line (migration 9)."""
        about = await self.db.read(lambda c: _about(c, u.id))
        return self._profile(u, about)

    async def get_profile(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        return await self._profile_of(await self._me(ctx))

    async def update_profile(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        uid = self._session(ctx).user_id

        def job(conn: sqlite3.Connection) -> tuple[store.User | None, str]:
            for key in ("display_name", "about"):  # fixed column names, values bound
                if key in p:
                    conn.execute(f"UPDATE users SET {key} = ? WHERE id = ?", (p[key], uid))
            return store.user_by_id(conn, uid or 0), _about(conn, uid or 0)

        u, about = await self.db.write(job)
        if u is None:
            raise RpcError(ErrorCode.USER_NOT_FOUND)
        return self._profile(u, about)

    async def set_password(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        me = await self._me(ctx)
        if me.password_hash is not None:
            if "current" not in p:
                raise RpcError(ErrorCode.PASSWORD_REQUIRED, "give the current password")
            if not await check_password(me.password_hash, p["current"]):
                raise RpcError(ErrorCode.PASSWORD_INVALID)
        new_hash = await hash_password(p["new"]) if "new" in p else None

        def job(conn: sqlite3.Connection) -> store.User | None:
            conn.execute("UPDATE users SET password_hash = ? WHERE id = ?", (new_hash, me.id))
            return store.user_by_id(conn, me.id)

        u = await self.db.write(job)
        assert u is not None
        return await self._profile_of(u)

    async def devices(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        s = self._session(ctx)
        uid = s.user_id
        assert uid is not None
        rows = await self.db.read(lambda c: store.devices_of(c, uid))
        return {"devices": self._device_rows(uid, rows, s.device_id)}

    async def revoke_device(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        s = self._session(ctx)
        uid = s.user_id
        assert uid is not None
        if p["device_id"] == s.device_id:
            await self.log_out(ctx, {})
            return {"revoked": 1}
        ids = await self.db.write(lambda c: store.revoke_devices(c, uid, p["device_id"]))
        if not ids:
            raise RpcError(ErrorCode.DEVICE_NOT_FOUND)
        return {"revoked": await self._revoked(uid, ids, "user", s.ip)}

    async def revoke_others(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        s = self._session(ctx)
        uid, keep = s.user_id, s.device_id
        assert uid is not None
        ids = await self.db.write(lambda c: store.revoke_devices(c, uid, keep=keep))
        return {"revoked": await self._revoked(uid, ids, "user", s.ip)}

    # --- admin.* ------------------------------------------------------------------------
    async def admin_user_add(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        name = canonical_name(p["name"])
        u = await self.db.write(
            lambda c: store.create_user(c, name, p.get("display_name", ""), p.get("admin", False))
        )
        log.security("user_added", user=name, admin=bool(p.get("admin", False)))
        return self._user_row(u, 0)

    async def admin_user_list(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        def job(c: sqlite3.Connection) -> tuple[list[tuple[store.User, int]], dict[int, Any]]:
            return store.list_users(c), store.last_seen(c)

        rows, seen = await self.db.read(job)
        now = time.time()
        return {
            "users": [
                # online now: seen now, whatever the last once-a-minute write said
                self._user_row(u, n, now if self.hub.online_devices(u.id) else seen.get(u.id))
                for u, n in rows
            ]
        }

    # --- last seen ------------------------------------------------------------------------
    async def run(self) -> None:
        """The node's last-seen loop: once a minute, users with a signed-in session are
        written as seen now (sign-in and authorize write it at once)."""
        while True:
            await trio.sleep(LAST_SEEN_INTERVAL)
            try:
                await self.flush_last_seen()
            except Exception:  # a failed write must not end the loop; the next one retries
                _log.exception("last seen write failed")

    async def flush_last_seen(self) -> int:
        """Write last seen for every user online now; returns how many."""
        online: dict[int, set[int]] = {}
        for uid in list(self._online):
            devices = self.hub.online_devices(uid)
            if devices:
                online[uid] = devices
            else:
                self._online.discard(uid)  # gone: their last write is their last seen
        if online:
            now = time.time()
            await self.db.write(lambda c: store.mark_seen(c, online, now))
        return len(online)

    # --- admin: password reset ------------------------------------------------------------
    async def admin_password_reset(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        """Remove a user's password (the second factor) for a user who forgot it. Pending
        login codes are voided too: a code someone obtained and that only the password
        stopped must not now let them in. The user's devices stay signed in (usually the
        person's own phone, and how they get back in) unless ``logout`` (a taken-over
        account): then every device is revoked and only a fresh code gets in."""
        name = canonical_name(p["name"])
        logout = bool(p.get("logout", False))

        def job(conn: sqlite3.Connection) -> tuple[store.User, list[int]]:
            u = store.need_user(conn, name)
            conn.execute("UPDATE users SET password_hash = NULL WHERE id = ?", (u.id,))
            store.delete_codes_of(conn, u.id)
            return u, store.revoke_devices(conn, u.id) if logout else []

        u, ids = await self.db.write(job)
        revoked = await self._revoked(u.id, ids, "admin") if ids else 0
        log.security(
            "password_reset", user=name, had_password=u.password_hash is not None, revoked=revoked
        )
        return {"name": name, "had_password": u.password_hash is not None, "revoked": revoked}

    async def admin_user_code(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        code, _ = await self.issue_code(canonical_name(p["name"]))
        return {"code": code, "expires_in": self.code_ttl}

    async def admin_user_devices(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        name = canonical_name(p["name"])

        def job(conn: sqlite3.Connection) -> tuple[store.User, list[store.DeviceRow]]:
            u = store.need_user(conn, name)
            return u, store.devices_of(conn, u.id)

        u, rows = await self.db.read(job)
        return {"devices": self._device_rows(u.id, rows, None)}

    async def admin_user_logout(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        name = canonical_name(p["name"])
        one = p.get("device_id")

        def job(conn: sqlite3.Connection) -> tuple[store.User, list[int]]:
            u = store.need_user(conn, name)
            ids = store.revoke_devices(conn, u.id, one)
            if one is not None and not ids:
                raise RpcError(ErrorCode.DEVICE_NOT_FOUND)
            return u, ids

        u, ids = await self.db.write(job)
        return {"revoked": await self._revoked(u.id, ids, "admin")}

    async def _set_banned(self, name: str, banned: bool) -> dict[str, Any]:
        def job(conn: sqlite3.Connection) -> tuple[store.User, int]:
            u = store.need_user(conn, name)
            conn.execute("UPDATE users SET banned = ? WHERE id = ?", (int(banned), u.id))
            store.delete_codes_of(conn, u.id)
            u2 = store.user_by_id(conn, u.id)
            assert u2 is not None
            return u2, len(store.devices_of(conn, u.id))

        u, n = await self.db.write(job)
        if banned:
            await self._end_sessions(u.id, ErrorCode.USER_BANNED)
        log.security("user_banned" if banned else "user_unbanned", user=name)
        return self._user_row(u, n)

    async def admin_user_ban(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        return await self._set_banned(canonical_name(p["name"]), True)

    async def admin_user_unban(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        return await self._set_banned(canonical_name(p["name"]), False)

    async def admin_user_remove(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        name = canonical_name(p["name"])
        found = await self.db.read(lambda c: store.need_user(c, name))
        for step in self.before_removal:
            await step(found.id)

        def job(conn: sqlite3.Connection, fx: Effects) -> int:
            u = store.need_user(conn, name)
            for share in self.removal:
                share(conn, fx, u.id)
            conn.execute("DELETE FROM users WHERE id = ?", (u.id,))
            return u.id

        uid = await self.events.commit(self.db, job)
        await self._end_sessions(uid, ErrorCode.SESSION_REVOKED)
        log.security("user_removed", user=name)
        return {"removed": name}

    async def admin_invite_create(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        token = new_token()
        uses = p.get("uses", 1)
        expires_in = p.get("expires_in")
        expires = time.time() + expires_in if expires_in else None
        digest = self._hash(token)
        await self.db.write(lambda c: store.create_invite(c, digest, uses, expires))
        return {"token": token, "uses": uses, "expires": expires}

    def register(self, router: Router) -> None:
        for name, fn in {
            "auth.requestCode": self.request_code,
            "auth.signIn": self.sign_in,
            "auth.signUp": self.sign_up,
            "auth.authorize": self.authorize,
            "auth.logOut": self.log_out,
            "account.getProfile": self.get_profile,
            "account.updateProfile": self.update_profile,
            "account.setPassword": self.set_password,
            "account.devices": self.devices,
            "account.revokeDevice": self.revoke_device,
            "account.revokeOtherDevices": self.revoke_others,
            "admin.userAdd": self.admin_user_add,
            "admin.userList": self.admin_user_list,
            "admin.userCode": self.admin_user_code,
            "admin.userDevices": self.admin_user_devices,
            "admin.userLogout": self.admin_user_logout,
            "admin.userBan": self.admin_user_ban,
            "admin.userUnban": self.admin_user_unban,
            "admin.userRemove": self.admin_user_remove,
            "admin.inviteCreate": self.admin_invite_create,
            "admin.userPasswordReset": self.admin_password_reset,
        }.items():
            router.add(name, fn)


def _failed(name: str, ip: str, err: RpcError) -> None:
    """security.sign_in_failed: who was tried from where, and what is left of the code
    (its attempts, from the refusal's own message). Never the code or password tried."""
    m = re.search(r"(\d+) attempts left", err.message)
    log.security(
        "sign_in_failed",
        logging.WARNING,
        name=name,
        ip=ip,
        reason=err.code,
        attempts_left=m.group(1) if m else 0,
    )


def _about(conn: sqlite3.Connection, user_id: int) -> str:
    """A user's about line (a column of its own since migration 9, outside store.User)."""
    row = conn.execute("SELECT about FROM users WHERE id = ?", (user_id,)).fetchone()
    return str(row[0]) if row else ""
