"""chats.*: creating chats, members, roles, bans, invites, the caller's dialogs.

Each change: check the caller may, build a draft, sequence it (log.py applies it)."""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING, Any

from ..address import Address, canonical
from ..interfaces import Effects
from ..protocol.errors import ErrorCode, RpcError
from . import log, store
from .handlers import Handler, Handlers, Params, caller
from .store import ADMIN_ROLES

if TYPE_CHECKING:
    from ..interfaces import CallContext


class Membership(Handlers):
    def methods(self) -> dict[str, Handler]:
        return {
            "chats.list": self.list_chats,
            "chats.get": self.get,
            "chats.startPrivate": self.start_private,
            "chats.createGroup": self.create_group,
            "chats.createChannel": self.create_channel,
            "chats.members": self.members,
            "chats.addMembers": self.add_members,
            "chats.kick": self.kick,
            "chats.unban": self.unban,
            "chats.setRole": self.set_role,
            "chats.leave": self.leave,
            "chats.edit": self.edit_chat,
            "chats.createInvite": self.create_invite,
            "chats.join": self.join,
            "chats.updateDialog": self.update_dialog,
            "chats.listInvites": self.list_invites,
            "chats.revokeInvite": self.revoke_invite,
        }

    async def list_chats(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = caller(ctx)
        archived = p.get("archived")
        return {"chats": await self.db.read(lambda c: store.dialogs(c, self.home, uid, archived))}

    async def get(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = caller(ctx)

        def job(c: sqlite3.Connection) -> dict[str, Any]:
            store.need_member(c, p["chat"], uid)
            return store.dialog(c, self.home, p["chat"], uid)

        return {"chat": await self.db.read(job)}

    async def start_private(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = caller(ctx)
        ref = p["user"].lstrip("@")
        await self.learn_users([ref])

        def peer_of(c: sqlite3.Connection) -> tuple[int, str, str]:
            try:
                addr, peer = next(iter(store.user_ids(c, self.home, [ref]).items()))
            except RpcError as e:
                raise RpcError(ErrorCode.PEER_INVALID, e.message) from None
            if peer == uid:
                raise RpcError(ErrorCode.PEER_INVALID, "a private chat needs another user")
            me = store.address(c, self.home, uid)
            assert me is not None
            return peer, me, addr

        peer, me, other = await self.db.read(peer_of)
        # The home of a private chat is the node of the lower address: both nodes derive
        # the same id and the same home, so starting it from either side meets in one chat.
        home = Address.parse(min(me, other)).node
        if home != self.home.node_id:
            chat_id = await self.shared.remote.start_private(home, me, other)
            return {
                "chat": await self.db.read(lambda c: store.dialog(c, self.home, chat_id, uid)),
                "created": False,
            }

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            peer_of(c)  # again, on the job's snapshot
            chat_id, created = self.open_private(c, fx, uid, peer)
            return {"chat": store.dialog(c, self.home, chat_id, uid), "created": created}

        return await self.write(ctx, job)

    def open_private(
        self, c: sqlite3.Connection, fx: Effects, uid: int, peer: int
    ) -> tuple[str, bool]:
        """Inside a job on the private chat's home: the chat of these two accounts, made
        by ``uid`` if they have none (a removed account's rows went with it)."""
        lo, hi = sorted((uid, peer))
        row = c.execute(
            "SELECT chat_id FROM private_chats WHERE user_lo = ? AND user_hi = ?", (lo, hi)
        ).fetchone()
        if row is not None:
            return str(row[0]), False
        chat_id = store.new_private_chat_id(c, self.home, uid, peer)
        self._create_chat(c, fx, chat_id, "private", uid, "", "", [peer])
        c.execute(
            "INSERT INTO private_chats(user_lo, user_hi, chat_id) VALUES (?, ?, ?)",
            (lo, hi, chat_id),
        )
        return chat_id, True

    async def _create(self, ctx: CallContext, p: Params, kind: str) -> dict[str, Any]:
        uid = caller(ctx)
        names = list(p.get("members", []))
        await self.learn_users(names)

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            ids = list(store.user_ids(c, self.home, [n.lstrip("@") for n in names]).values())
            if kind == "group" and len(set(ids) | {uid}) > self.home.max_group_members:
                raise RpcError(ErrorCode.CHAT_TOO_BIG)
            chat_id = store.new_chat_id()
            self._create_chat(c, fx, chat_id, kind, uid, p["title"], p.get("about", ""), ids)
            return {"chat": store.dialog(c, self.home, chat_id, uid)}

        return await self.write(ctx, job)

    def _create_chat(
        self,
        c: sqlite3.Connection,
        fx: Effects,
        chat_id: str,
        kind: str,
        creator_id: int,
        title: str,
        about: str,
        member_ids: list[int],
    ) -> None:
        """A chat homed here: its row, then its first event (which makes the members)."""
        chat = store.insert_chat(c, chat_id, kind, self.home.node_id)
        others = [u for u in dict.fromkeys(member_ids) if u != creator_id]
        body: dict[str, Any] = {"kind": kind, "title": title, "about": about}
        if others:
            body["members"] = [store.address(c, self.home, u) for u in others]
        log.sequence(c, self.home, chat, log.Draft("create", creator_id, body), fx)

    def _admit(
        self,
        c: sqlite3.Connection,
        fx: Effects,
        chat: store.Chat,
        actor_id: int,
        ids: list[int],
        kind: str = "add",
    ) -> log.Sequenced | None:
        """Add users (or one user joining by invite); banned users must be unbanned first."""
        new: list[int] = []
        for uid in dict.fromkeys(ids):
            m = store.get_member(c, chat.id, uid)
            if m is not None and m.state == "banned":
                raise RpcError(ErrorCode.USER_BANNED_IN_CHAT, f"user #{uid} is banned here")
            if m is not None and m.state == "member":
                if kind == "join":
                    raise RpcError(ErrorCode.ALREADY_MEMBER)
                continue
            new.append(uid)
        if not new:
            return None
        limit = self.home.max_group_members
        if chat.kind == "group" and chat.members + len(new) > limit:
            raise RpcError(ErrorCode.CHAT_TOO_BIG, f"a group holds {limit} members")
        if kind == "join":
            body: dict[str, Any] = {"user": store.address(c, self.home, actor_id)}
        else:
            body = {"users": [store.address(c, self.home, u) for u in new]}
        return log.sequence(c, self.home, chat, log.Draft(kind, actor_id, body), fx)

    def _end(
        self,
        c: sqlite3.Connection,
        fx: Effects,
        chat: store.Chat,
        actor_id: int,
        user_id: int,
        state: str,
    ) -> log.Sequenced:
        """Leave, remove or ban (a ban also keeps a non-member out)."""
        kind = {"left": "leave", "kicked": "remove", "banned": "ban"}[state]
        m = store.get_member(c, chat.id, user_id)
        if (m is None or m.state != "member") and state != "banned":
            raise RpcError(ErrorCode.NOT_A_MEMBER, "that user is not a member")
        body = {"user": store.address(c, self.home, user_id)}
        return log.sequence(c, self.home, chat, log.Draft(kind, actor_id, body), fx)

    async def create_group(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        return await self._create(ctx, p, "group")

    async def create_channel(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        return await self._create(ctx, p, "channel")

    async def members(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = caller(ctx)
        state = p.get("state", "member")

        def job(c: sqlite3.Connection) -> dict[str, Any]:
            store.need_member(c, p["chat"], uid)
            rows = c.execute(
                "SELECT u.name, u.display_name, m.role, m.state, n.fingerprint FROM chat_members m "
                "JOIN users u ON u.id = m.user_id JOIN nodes n ON n.id = u.node "
                "WHERE m.chat_id = ? AND m.state = ? "
                "ORDER BY CASE m.role WHEN 'owner' THEN 0 WHEN 'admin' THEN 1 ELSE 2 END, "
                "u.name LIMIT ? OFFSET ?",
                (p["chat"], state, p.get("limit", 200), p.get("offset", 0)),
            ).fetchall()
            count = c.execute(
                "SELECT COUNT(*) FROM chat_members WHERE chat_id = ? AND state = ?",
                (p["chat"], state),
            ).fetchone()[0]
            return {
                "members": [
                    {
                        "user": canonical(r[0], r[4]),
                        "display_name": r[1],
                        "role": r[2],
                        "state": r[3],
                    }
                    for r in rows
                ],
                "count": count,
            }

        return await self.db.read(job)

    async def add_members(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = caller(ctx)
        await self.learn_users(list(p["users"]))

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            chat, m = store.need_member(c, p["chat"], uid)
            if chat.kind == "private":
                raise RpcError(ErrorCode.CHAT_ADMIN_REQUIRED, "private chats have two members")
            if chat.kind == "channel" and m.role not in ADMIN_ROLES:
                raise RpcError(ErrorCode.CHAT_ADMIN_REQUIRED)
            ids = list(store.user_ids(c, self.home, [u.lstrip("@") for u in p["users"]]).values())
            if m.role not in ADMIN_ROLES:
                for target in ids:  # members may add, but only admins may re-admit the banned
                    t = store.get_member(c, chat.id, target)
                    if t is not None and t.state == "banned":
                        raise RpcError(ErrorCode.USER_BANNED_IN_CHAT)
            done = self._admit(c, fx, chat, uid, ids)
            return {"seq": done.seq if done else None}

        return await self.write(ctx, job)

    def _target(self, c: sqlite3.Connection, ref: str) -> int:
        return next(iter(store.user_ids(c, self.home, [ref.lstrip("@")]).values()))

    async def kick(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = caller(ctx)

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            chat, me = store.need_admin(c, p["chat"], uid)
            target = self._target(c, p["user"])
            t = store.get_member(c, chat.id, target)
            if target == uid:
                raise RpcError(ErrorCode.CHAT_ADMIN_REQUIRED, "use chats.leave to leave")
            if t is not None and t.role in ADMIN_ROLES and me.role != "owner":
                raise RpcError(ErrorCode.CHAT_OWNER_REQUIRED, "only the owner removes admins")
            if t is not None and t.role == "owner":
                raise RpcError(ErrorCode.CHAT_OWNER_REQUIRED, "the owner cannot be removed")
            state = "banned" if p.get("ban") else "kicked"
            return {"seq": self._end(c, fx, chat, uid, target, state).seq}

        return await self.write(ctx, job)

    async def unban(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = caller(ctx)

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            chat, _ = store.need_admin(c, p["chat"], uid)
            target = self._target(c, p["user"])
            t = store.get_member(c, chat.id, target)
            if t is None or t.state != "banned":
                raise RpcError(ErrorCode.NOT_A_MEMBER, "that user is not banned here")
            draft = log.Draft("unban", uid, {"user": store.address(c, self.home, target)})
            return {"seq": log.sequence(c, self.home, chat, draft, fx).seq}

        return await self.write(ctx, job)

    async def set_role(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = caller(ctx)

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            chat, me = store.need_admin(c, p["chat"], uid)
            if me.role != "owner":
                raise RpcError(ErrorCode.CHAT_OWNER_REQUIRED)
            target = self._target(c, p["user"])
            t = store.get_member(c, chat.id, target)
            if t is None or t.state != "member":
                raise RpcError(ErrorCode.NOT_A_MEMBER, "that user is not a member")
            if target == uid:
                raise RpcError(ErrorCode.CHAT_OWNER_REQUIRED, "hand ownership to someone else")
            body = {"user": store.address(c, self.home, target), "role": p["role"]}
            return {"seq": log.sequence(c, self.home, chat, log.Draft("role", uid, body), fx).seq}

        return await self.write(ctx, job)

    async def leave(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = caller(ctx)

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            chat, m = store.need_member(c, p["chat"], uid)
            if chat.kind == "private":
                raise RpcError(ErrorCode.CANNOT_LEAVE_PRIVATE)
            if m.role == "owner" and chat.members > 1:
                raise RpcError(ErrorCode.OWNER_CANNOT_LEAVE)
            return {"seq": self._end(c, fx, chat, uid, uid, "left").seq}

        return await self.write(ctx, job)

    async def edit_chat(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = caller(ctx)

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            chat, _ = store.need_admin(c, p["chat"], uid)
            seqs = []
            for key in ("title", "about"):
                if key in p and p[key] != getattr(chat, key):
                    draft = log.Draft(key, uid, {key: p[key]})
                    seqs.append(log.sequence(c, self.home, chat, draft, fx).seq)
            return {"seqs": seqs}

        return await self.write(ctx, job)

    async def create_invite(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = caller(ctx)

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            chat, _ = store.need_admin(c, p["chat"], uid)
            if chat.home != self.home.node_id:
                raise log.HomeElsewhere(chat.id, chat.home)
            token = store.create_invite(c, chat.id, uid, p.get("uses"), p.get("expires_in"))
            # the link names the chat's home, so a user of any node can join with it
            return {"invite": f"{token}.{self.home.node_id}"}

        return await self.write(ctx, job)

    async def join(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = caller(ctx)
        token, _, home = p["invite"].rpartition(".")
        if not token:  # an invite made before links named their home
            token, home = home, self.home.node_id
        if home != self.home.node_id:
            me = await self.db.read(lambda c: store.address(c, self.home, uid))
            assert me is not None
            joined: dict[str, Any] = await self.shared.remote.act(
                home, me, "chats.join", {"invite": p["invite"]}
            )
            return joined

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            chat = store.get_chat(c, store.use_invite(c, token))
            if chat is None:
                raise RpcError(ErrorCode.CHAT_INVITE_INVALID)
            done = self._admit(c, fx, chat, uid, [uid], kind="join")
            assert done is not None
            return {"chat": store.dialog(c, self.home, chat.id, uid), "seq": done.seq}

        return await self.write(ctx, job)

    async def update_dialog(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = caller(ctx)
        if "mute_for" in p and not p.get("muted"):
            raise RpcError(ErrorCode.PARAMS_INVALID, "mute_for goes with muted: true")

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            store.need_member(c, p["chat"], uid)
            for key in ("pinned", "muted", "archived"):
                if key in p:
                    c.execute(
                        f"UPDATE chat_members SET {key} = ? WHERE chat_id = ? AND user_id = ?",
                        (int(p[key]), p["chat"], uid),
                    )
            if "muted" in p:  # a new mute (or unmute) replaces a timed one
                until = time.time() + p["mute_for"] if "mute_for" in p else None
                c.execute(
                    "UPDATE chat_members SET muted_until = ? WHERE chat_id = ? AND user_id = ?",
                    (until, p["chat"], uid),
                )
            row = c.execute(
                "SELECT pinned, muted, archived, muted_until FROM chat_members "
                "WHERE chat_id = ? AND user_id = ?",
                (p["chat"], uid),
            ).fetchone()
            body = {
                "chat": p["chat"],
                "pinned": bool(row[0]),
                "muted": store.muted_now(bool(row[1]), row[3]),
                "muted_until": row[3],
                "archived": bool(row[2]),
            }
            return {"pts": store.add_update(c, fx, uid, "dialog.updated", body)}

        return await self.write(ctx, job)

    # --- invite links (issue 15) --------------------------------------------------------
    def _invite_admin(self, c: sqlite3.Connection, chat_id: str, uid: int) -> store.Chat:
        """An admin of a chat homed here: invites live on the home (chats.createInvite), so a
        replica's call goes there through fed.act (HomeElsewhere)."""
        chat, _ = store.need_admin(c, chat_id, uid)
        if chat.home != self.home.node_id:
            raise log.HomeElsewhere(chat.id, chat.home)
        return chat

    async def list_invites(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = caller(ctx)

        # a write job only so that a chat homed elsewhere is forwarded (Chats.write); it
        # writes nothing
        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            chat = self._invite_admin(c, p["chat"], uid)
            rows = store.list_invites(c, chat.id)
            for r in rows:
                r["creator"] = store.address(c, self.home, r.pop("creator_id"))
            return {"invites": rows}

        result = await self.write(ctx, job)
        if ctx.extra.get("forwarded"):
            return result  # a peer's call for its user: it shows the addresses its own way
        for r in result["invites"]:
            if r["creator"] is not None:
                r["creator"] = self.shared.directory.display(r["creator"])
        return result

    async def revoke_invite(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = caller(ctx)

        def job(c: sqlite3.Connection, fx: Effects) -> dict[str, Any]:
            chat = self._invite_admin(c, p["chat"], uid)
            return {"id": store.revoke_invite(c, chat.id, p["invite"], self.home.node_id)}

        return await self.write(ctx, job)
