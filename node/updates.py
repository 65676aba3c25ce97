"""The updates hub: which sessions are online, which chats they are in, and pushing to them.

A push is encoded once and queued on every target session without waiting
(:meth:`Caller.push`): a slow session is marked behind and re-syncs instead of
slowing the sender. For chats the hub keeps an index chat -> online members, so a message
in a group of 200,000 with 50 members online costs 50 queue operations, not 200,000 lookups.

Committed changes reach the hub as a subscriber of the node's publications
(node/publications.py, :meth:`Hub.on_committed`), in commit order, so one chat's events are
pushed in seq order.

The index is loaded from the database when a user's first session comes online. Membership
changes that commit while that load is running are recorded and replayed on top of it; each
change states the final membership of one (chat, user) pair, so replaying one that the load
already saw is harmless, and a removal can never be lost to the race (a removed member must
stop receiving the chat's events at once).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .interfaces import Caller, Effects
from .protocol import frames
from .protocol.errors import ErrorCode

ChatLoader = Callable[[int], Awaitable[set[str]]]


class Hub:
    def __init__(self, present: Callable[[Any], Any] | None = None) -> None:
        self._by_user: dict[int, dict[int, Caller]] = {}
        self._chats_of: dict[int, set[str]] = {}  # online user -> chats they are in
        self._online_in: dict[str, set[int]] = {}  # chat -> its online members
        self._loading: dict[int, tuple[trio.Event, list[tuple[str, bool]]]] = {}
        self.chat_loader: ChatLoader | None = None
        # how updates look to clients (the node's: addresses in display form)
        self.present: Callable[[Any], Any] = present or (lambda updates: updates)

    # --- sessions -------------------------------------------------------------------------
    async def attach(self, session: Caller) -> None:
        uid = session.user_id
        assert uid is not None
        self._by_user.setdefault(uid, {})[session.id] = session
        if uid in self._chats_of or self.chat_loader is None:
            return
        if uid in self._loading:
            await self._loading[uid][0].wait()
            return
        done = trio.Event()
        self._loading[uid] = (done, [])
        try:
            chats = await self.chat_loader(uid)
        finally:
            _, changes = self._loading.pop(uid)
            done.set()
        if uid not in self._by_user:
            return  # every session left while we loaded
        for chat_id, is_member in changes:
            (chats.add if is_member else chats.discard)(chat_id)
        self._chats_of[uid] = chats
        for chat_id in chats:
            self._online_in.setdefault(chat_id, set()).add(uid)

    def detach(self, session: Caller) -> None:
        uid = session.user_id
        if uid is None:
            return
        sessions = self._by_user.get(uid)
        if sessions is None:
            return
        sessions.pop(session.id, None)
        if sessions:
            return
        del self._by_user[uid]
        for chat_id in self._chats_of.pop(uid, ()):
            online = self._online_in.get(chat_id)
            if online is not None:
                online.discard(uid)
                if not online:
                    del self._online_in[chat_id]

    def member_changed(self, chat_id: str, user_id: int, is_member: bool) -> None:
        """Called after a membership change committed."""
        if user_id in self._loading:
            self._loading[user_id][1].append((chat_id, is_member))
        chats = self._chats_of.get(user_id)
        if chats is None:
            return
        if is_member:
            chats.add(chat_id)
            self._online_in.setdefault(chat_id, set()).add(user_id)
        else:
            chats.discard(chat_id)
            online = self._online_in.get(chat_id)
            if online is not None:
                online.discard(user_id)
                if not online:
                    del self._online_in[chat_id]

    def sessions_of(self, user_id: int) -> list[Caller]:
        return list(self._by_user.get(user_id, {}).values())

    def online_devices(self, user_id: int) -> set[int]:
        return {s.device_id for s in self.sessions_of(user_id) if s.device_id is not None}

    # --- pushing --------------------------------------------------------------------------
    def on_committed(self, fx: Effects, origin: Caller | None) -> None:
        """The hub's subscription to committed changes: push them to online sessions
        (the origin session has its reply, so it gets no echo)."""
        # joins first (new members see the event that added them), leaves last (leavers see
        # the event that removed them)
        for chat_id, uid, is_member in fx.membership:
            if is_member:
                self.member_changed(chat_id, uid, True)
        for chat_id, ev in fx.chat_events:
            self.push_to_chat(chat_id, [{"type": "chat.event", "event": ev}], exclude=origin)
        for chat_id, uid, is_member in fx.membership:
            if not is_member:
                self.member_changed(chat_id, uid, False)
        for uid, upd in fx.user_updates:
            self.push_to_user(uid, [{"type": "user.update", **upd}], exclude=origin)
        # one push told to several users (a read receipt to the senders it covers) is
        # presented and encoded once, not once per user
        encoded: dict[int, frames.Updates] = {}
        for uid, push in fx.pushes:
            sessions = self._by_user.get(uid)
            if not sessions:
                continue
            items = encoded.get(id(push))
            if items is None:
                items = encoded[id(push)] = frames.encode_updates(self.present([push]))
            for s in sessions.values():
                s.push(items)

    def push_to_user(
        self, user_id: int, updates: list[dict[str, Any]], exclude: Caller | None = None
    ) -> int:
        """Queue updates for every online session of a user; returns how many took it."""
        sessions = self._by_user.get(user_id)
        if not sessions:
            return 0
        targets = [s for s in sessions.values() if s is not exclude]
        if not targets:
            return 0
        items = frames.encode_updates(self.present(updates))
        return sum(1 for s in targets if s.push(items))

    def push_to_chat(
        self,
        chat_id: str,
        updates: list[dict[str, Any]],
        exclude: Caller | None = None,
        exclude_user: int | None = None,
    ) -> int:
        """Queue updates for every online session of every member of a chat."""
        online = self._online_in.get(chat_id)
        if not online:
            return 0
        items = frames.encode_updates(self.present(updates))
        n = 0
        by_user = self._by_user  # fetched once a fan-out; an offline member makes no empty dict
        for uid in online:
            if uid == exclude_user:
                continue
            sessions = by_user.get(uid)
            if sessions:
                for s in sessions.values():
                    if s is not exclude and s.push(items):
                        n += 1
        return n

    def close_user(
        self, user_id: int, reason: ErrorCode, device_id: int | None = None, keep: int | None = None
    ) -> int:
        """Close a user's sessions (all, or one device's), except device ``keep``."""
        n = 0
        for s in self.sessions_of(user_id):
            if (device_id is None or s.device_id == device_id) and s.device_id != keep:
                s.close(reason)
                n += 1
        return n
