"""The updates hub: which sessions are online for which user, and pushing to them.

A push is encoded once and queued on every target session without waiting
(:meth:`Session.push_frame`): a slow session is marked behind and re-syncs instead of
slowing the sender.  The per-user pts log and chat fan-out build on this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .protocol import frames
from .protocol.codec import encode
from .protocol.errors import ErrorCode

if TYPE_CHECKING:
    from .gateway import Session


class Hub:
    def __init__(self) -> None:
        self._by_user: dict[int, dict[int, Session]] = {}

    def attach(self, session: Session) -> None:
        assert session.user_id is not None
        self._by_user.setdefault(session.user_id, {})[session.id] = session

    def detach(self, session: Session) -> None:
        if session.user_id is None:
            return
        sessions = self._by_user.get(session.user_id)
        if sessions is not None:
            sessions.pop(session.id, None)
            if not sessions:
                del self._by_user[session.user_id]

    def sessions_of(self, user_id: int) -> list[Session]:
        return list(self._by_user.get(user_id, {}).values())

    def online_devices(self, user_id: int) -> set[int]:
        return {s.device_id for s in self.sessions_of(user_id) if s.device_id is not None}

    def push_to_user(
        self, user_id: int, updates: list[dict[str, Any]], exclude: Session | None = None
    ) -> int:
        """Queue updates for every online session of a user; returns how many took it."""
        targets = [s for s in self.sessions_of(user_id) if s is not exclude]
        if not targets:
            return 0
        frame = encode(frames.push(updates))
        return sum(1 for s in targets if s.push_frame(frame))

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

    @property
    def online_users(self) -> int:
        return len(self._by_user)
