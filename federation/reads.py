"""Read receipts across nodes (``fed.read``): a member's read position reaches the nodes
where the senders of what they read are.

A read is made on the reader's node (messages.read writes the row there and logs a
``chat.read`` update for the reader's devices). This part sees that update among the
committed effects and tells the chat's home; the home moves its row for the reader, tells
its own users whose messages it covers (a ``chat.readOutbox`` push, node/chats/receipts.py)
and passes the position on to the chat's other replicas, which do the same for theirs. A
read by a user of the home itself goes to every replica directly.

Best-effort and coalesced, like Telegram's read receipts: positions waiting to leave are
kept in memory per (chat, reader), only the furthest one travels, in batches, after a short
pause (:data:`COALESCE`); a position that cannot be delivered (the link is down, the node
restarts) is dropped, and the reader's next read, or next message (which every replica
applies as a read of everything before it), brings the others up to date. Nothing here is
trusted further than the sender's standing: the reader's own node speaks for the reader on
the chat's home, the home speaks for every member on its replicas; anything else is ignored.
"""

from __future__ import annotations

import functools
import sqlite3
from typing import TYPE_CHECKING, Any

import trio

from node import log
from node.address import Address, AddressError
from node.interfaces import Caller, Effects
from node.protocol.api_fed import READS_MAX
from node.protocol.errors import RpcError

from . import peers, replication

if TYPE_CHECKING:
    from .service import Federation

COALESCE = 0.2  # seconds a read waits for others to go with it
_log = log.get("federation")

Key = tuple[str, str]  # (chat, reader's canonical address)


class FedReads:
    """Both ends of ``fed.read`` for one node."""

    def __init__(self, fed: Federation) -> None:
        self.fed = fed
        self._local: dict[tuple[str, int], int] = {}  # (chat, local user id) -> position
        self._relay: dict[Key, tuple[int, str]] = {}  # (chat, reader) -> (position, from)
        self._wake = trio.Event()
        self.sent = 0  # positions delivered (tests)
        self.applied = 0  # positions that moved here on a peer's word (tests)

    # --- outgoing -----------------------------------------------------------------------
    def committed(self, fx: Effects, origin: Caller | None) -> None:
        """From the committed changes: this node's users' reads (their ``chat.read``
        updates). Only when there are links: a node alone has nobody to tell."""
        if not self.fed.links:
            return
        for uid, upd in fx.user_updates:
            if upd.get("kind") == "chat.read":
                key = (str(upd["chat"]), uid)
                self._local[key] = max(int(upd["read_seq"]), self._local.get(key, 0))
                self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            await trio.sleep(COALESCE)
            self._wake = trio.Event()
            local, self._local = self._local, {}
            relay, self._relay = self._relay, {}
            try:
                await self._send(local, relay)
            except Exception:  # a failed round (the disk, a bug) must not stop the next
                _log.exception("sending read positions failed")

    async def _send(
        self, local: dict[tuple[str, int], int], relay: dict[Key, tuple[int, str]]
    ) -> None:
        plan = await self.fed.db.read(
            functools.partial(_destinations, me=self.fed.node_id, local=local, relay=relay)
        )
        for node_id, reads in plan.items():
            link = self.fed.links.get(node_id)
            if link is None or link.state != "up":
                continue  # best-effort: the reader's next read or message carries it
            for i in range(0, len(reads), READS_MAX):
                try:
                    await link.call("fed.read", {"reads": reads[i : i + READS_MAX]})
                    self.sent += len(reads[i : i + READS_MAX])
                except RpcError as e:
                    log.event(_log, "read.undelivered", peer=node_id[:12], why=str(e.code))
                    break

    # --- incoming -----------------------------------------------------------------------
    async def serve(self, peer: peers.Peer, p: dict[str, Any]) -> dict[str, Any]:
        """Apply what ``peer`` may say: its own users' positions in chats homed here, or
        any member's position in a chat homed on it. Moved positions of chats homed here
        go on to the other replicas."""
        messages = self.fed.node.chats.messages
        me = self.fed.node_id

        def job(c: sqlite3.Connection, fx: Effects) -> list[tuple[Key, int, bool]]:
            moved: list[tuple[Key, int, bool]] = []
            for r in p["reads"]:
                try:
                    a = Address.parse(r["user"])
                except AddressError:
                    continue
                row = c.execute("SELECT home FROM chats WHERE id = ?", (r["chat"],)).fetchone()
                if row is None:
                    continue
                home = str(row[0])
                if not (home == peer.node_id or (home == me and a.node == peer.node_id)):
                    continue  # neither the chat's home nor the reader's node
                uid = c.execute(
                    "SELECT u.id FROM users u JOIN nodes n ON n.id = u.node "
                    "WHERE u.name = ? AND n.fingerprint = ?",
                    (a.name, a.node),
                ).fetchone()
                if uid is None:
                    continue
                seq = messages.read_from_peer(c, fx, r["chat"], int(uid[0]), int(r["read_seq"]))
                if seq is not None:
                    moved.append(((r["chat"], str(a)), seq, home == me))
            return moved

        moved = await self.fed.node.events.commit(self.fed.db, job)
        for key, seq, homed_here in moved:
            if homed_here:
                old = self._relay.get(key, (0, ""))[0]
                self._relay[key] = (max(seq, old), peer.node_id)
                self._wake.set()
        self.applied += len(moved)
        return {"applied": len(moved)}


def _destinations(
    c: sqlite3.Connection,
    me: str,
    local: dict[tuple[str, int], int],
    relay: dict[Key, tuple[int, str]],
) -> dict[str, list[dict[str, Any]]]:
    """Where each position goes: a local reader's to the chat's home (or, for a chat homed
    here, to its replicas); a relayed one to the replicas but the node it came from."""
    plan: dict[str, list[dict[str, Any]]] = {}
    homes: dict[str, str | None] = {}

    def home_of(chat_id: str) -> str | None:
        if chat_id not in homes:
            row = c.execute("SELECT home FROM chats WHERE id = ?", (chat_id,)).fetchone()
            homes[chat_id] = str(row[0]) if row else None
        return homes[chat_id]

    def add(targets: set[str], chat_id: str, user: str, seq: int) -> None:
        for node_id in targets:
            plan.setdefault(node_id, []).append({"chat": chat_id, "user": user, "read_seq": seq})

    for (chat_id, uid), seq in local.items():
        home = home_of(chat_id)
        user = replication.user_address(c, uid)
        if home is None or user is None:
            continue
        add({home} if home != me else replication.replica_nodes(c, chat_id), chat_id, user, seq)
    for (chat_id, user), (seq, origin) in relay.items():
        if home_of(chat_id) == me:
            add(replication.replica_nodes(c, chat_id) - {origin}, chat_id, user, seq)
    return plan
