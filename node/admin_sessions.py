"""admin.sessionList: the live sessions of the running node, for `fedgram session list`.

Sessions are the gateway's (one per WebSocket); this reads its table, never changes it.
Registered by the node next to the gateway it describes (node/app.py); on a stopped node
(admin commands through ``Node.offline``) the table is empty, as it should be.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

from .interfaces import CallContext, Caller, Storage
from .protocol.errors import ErrorCode, RpcError
from .protocol.identity import fingerprint
from .rpc import Router


class SessionList:
    def __init__(self, sessions: Callable[[], Iterable[Caller]], db: Storage) -> None:
        # a provider, not the table: the gateway is built after the handlers are registered
        self._sessions = sessions
        self.db = db

    def register(self, router: Router) -> None:
        router.add("admin.sessionList", self.admin_session_list)

    async def admin_session_list(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        live = list(self._sessions())
        ids = sorted({s.user_id for s in live if s.user_id is not None})
        want = p.get("user")

        def names(c: sqlite3.Connection) -> tuple[dict[int, str], int | None]:
            rows = c.execute(
                f"SELECT id, name FROM users WHERE id IN ({','.join('?' * len(ids))})", ids
            ).fetchall()
            only = None
            if want is not None:
                row = c.execute(
                    "SELECT id FROM users WHERE name = ? AND node = "
                    "(SELECT id FROM nodes WHERE state = 'self')",
                    (want.lower(),),
                ).fetchone()
                if row is None:
                    raise RpcError(ErrorCode.USER_NOT_FOUND, f"no user {want!r}")
                only = int(row[0])
            return {int(i): str(n) for i, n in rows}, only

        by_id, only = await self.db.read(names)
        out = []
        for s in sorted(live, key=lambda s: s.id):
            if only is not None and s.user_id != only:
                continue
            out.append(
                {
                    "session_id": s.id,
                    "role": s.role,
                    "user": by_id.get(s.user_id) if s.user_id is not None else None,
                    "device_id": s.device_id,
                    "device_name": s.device_name or None,
                    "remote": getattr(s, "remote", s.ip),
                    "ip": s.ip,
                    "since": getattr(s, "opened", None),
                    "node": fingerprint(s.peer_identity) if s.peer_identity else None,
                }
            )
        return {"sessions": out}
