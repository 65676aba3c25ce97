"""Secret-chat envelopes between nodes: store-and-forward of ciphertext it cannot read.

The node's secret queues (node/secret/) hold envelopes for this node's devices; an envelope
for a device on another node comes here (``secret_forward``, inside ``secret.send``'s own
write job, so the client's "forwarded" is as durable as a queued one) and waits in
``fed_secret_outbox`` until a node takes it with ``fed.secretPut``: the recipient's node
(a direct link), or a peer linked to it (a relay), which stores it in *its* outbox and
forwards it the same way. Each hop decrements ``hops``; an envelope past ``expires`` is
dropped and its sender's device told (``failed``). Nothing here decodes a payload: it is
bytes with routing metadata, and that is all any relay ever sees.

Routes: the direct link first; else a peer that says it has a link up to the recipient's
node (``fed.secretRoute``), remembered for ``ROUTE_TTL``. A relay may refuse: relaying off
(``[secret] relay``), or a peer over its daily byte allowance (``relay_max_bytes``),
accounted per peer and day in ``fed_secret_usage`` (what this node carried *for* each peer,
and what each peer carried *for us*), shown by ``peer list``.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from typing import TYPE_CHECKING, Any

import trio

from node import log
from node.address import Address, AddressError
from node.interfaces import Effects
from node.protocol.errors import ErrorCode, RpcError

from . import peers

if TYPE_CHECKING:
    from .links import Link
    from .service import Federation

_log = log.get("federation")
HOPS = 3  # how many nodes an envelope may pass through after its sender's
ROUTE_TTL = 60.0  # seconds a relay found for a node is used before asking again
NO_ROUTE_TTL = 10.0  # seconds "nobody reaches that node" holds (unless a link comes up)
RETRY = 2.0  # seconds between looks at an outbox with nothing deliverable
PUT_ITEMS = 16  # envelopes per fed.secretPut (payloads are at most 64 KiB)
PUT_BYTES = 768 * 1024
KINDS = ("message", "expired", "failed", "revoked")
_FIELDS = ("to", "device", "from", "from_device", "id", "payload", "kind", "sent", "expires")


def _day(ts: float) -> int:
    return int(ts // 86400)


class FedSecret:
    """Both ends of ``fed.secret*`` for one node, and the pump of its secret outbox."""

    def __init__(self, fed: Federation) -> None:
        self.fed = fed
        self._wake = trio.Event()
        self._routes: dict[str, tuple[str, float]] = {}  # node -> (via peer, until)
        self._no_route: dict[str, float] = {}  # node -> until: not asked of every peer again
        cfg = fed.node.config
        self.ttl = float(cfg.get("secret", "ttl"))
        self.relay = bool(cfg.get("secret", "relay"))
        self.relay_max = int(cfg.get("secret", "relay_max_bytes"))

    # --- node -> federation (node.interfaces.SecretRelay) ----------------------------------
    def secret_forward(self, conn: sqlite3.Connection, fx: Effects, item: dict[str, Any]) -> None:
        """In the send's write job: the envelope as an outbox row (idempotent); this
        commit's publication wakes the pump (:meth:`committed`)."""
        dest = _node_of(item["to"])
        _insert(conn, dest, item, int(item.get("hops", HOPS)))
        fx.envelopes_to.add(dest)

    async def secret_keys(self, address: str) -> dict[str, Any]:
        a = _parse(address)
        if a.node == self.fed.node_id:
            return await self.fed.node.secret.keys_for(a.name)
        link = await self.route(a.node)
        return dict(await link.call("fed.secretKeys", {"user": str(a), "hops": HOPS - 1}))

    def link_up(self) -> None:
        """A link came up: routes may exist now; try what waits at once."""
        self._no_route.clear()
        self._wake.set()

    def committed(self) -> None:
        """A commit that queued envelopes was published (trio thread): wake the pump."""
        self._wake.set()

    # --- fed.* handlers -----------------------------------------------------------------------
    async def serve_keys(self, peer: peers.Peer, p: dict[str, Any]) -> dict[str, Any]:
        a = _parse(p["user"])
        if a.node == self.fed.node_id:
            return await self.fed.node.secret.keys_for(a.name)
        if not self.relay:
            raise RpcError(ErrorCode.SECRET_RELAY_REFUSED, "this node does not relay")
        hops = int(p["hops"])
        link = self.fed.links.get(a.node)
        if hops <= 0 or link is None or link.state != "up":
            raise RpcError(ErrorCode.SECRET_NO_ROUTE, f"no link to {a.node[:12]} here")
        return dict(await link.call("fed.secretKeys", {"user": str(a), "hops": hops - 1}))

    async def serve_route(self, peer: peers.Peer, p: dict[str, Any]) -> dict[str, Any]:
        link = self.fed.links.get(p["node"])
        return {"reachable": self.relay and link is not None and link.state == "up"}

    async def serve_put(self, peer: peers.Peer, p: dict[str, Any]) -> dict[str, Any]:
        """Envelopes from a peer: ours are queued for our devices; others are stored to
        be carried on (if relaying is on, the hop limit allows it and the peer is within
        today's allowance)."""
        now = time.time()
        results: list[dict[str, Any] | None] = [None] * len(p["items"])
        local: list[tuple[int, dict[str, Any]]] = []
        onward: list[tuple[int, dict[str, Any], str]] = []
        for i, item in enumerate(p["items"]):
            try:
                dest = _node_of(item["to"])
                _node_of(item["from"])
            except RpcError as e:
                results[i] = {"error": str(e.code)}
                continue
            if float(item["expires"]) < now:
                results[i] = {
                    "error": str(ErrorCode.SECRET_NO_ROUTE)
                }  # too late: the sender is told
            elif dest == self.fed.node_id:
                local.append((i, item))
            elif not self.relay:
                results[i] = {"error": str(ErrorCode.SECRET_RELAY_REFUSED)}
            elif int(item.get("hops", 0)) <= 0 or dest == peer.node_id:
                results[i] = {"error": str(ErrorCode.SECRET_NO_ROUTE)}
            else:
                onward.append((i, item, dest))
        if local:
            answers = await self.fed.node.secret.deliver([x for _, x in local])
            for (i, _), res in zip(local, answers, strict=True):
                results[i] = res
        if onward:

            def store(c: sqlite3.Connection) -> list[dict[str, Any]]:
                day = _day(now)
                row = c.execute(
                    "SELECT bytes_for FROM fed_secret_usage WHERE node = ? AND day = ?",
                    (peer.node_id, day),
                ).fetchone()
                used = int(row[0]) if row else 0
                out: list[dict[str, Any]] = []
                for _, item, dest in onward:
                    size = len(item["payload"])
                    if used + size > self.relay_max:
                        out.append({"error": str(ErrorCode.SECRET_RELAY_REFUSED)})
                        continue
                    used += size
                    _insert(c, dest, item, int(item["hops"]) - 1)
                    out.append({"ok": True})
                c.execute(
                    "INSERT INTO fed_secret_usage(node, day, bytes_for, bytes_via) "
                    "VALUES (?, ?, ?, 0) ON CONFLICT(node, day) DO UPDATE SET bytes_for = ?",
                    (peer.node_id, day, used, used),
                )
                return out

            answers = await self.fed.db.write(store)
            for (i, _, _), res in zip(onward, answers, strict=True):
                results[i] = res
            self._wake.set()
        return {"results": results}

    # --- the pump -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Deliver what waits in the outbox, node by node, until cancelled."""
        while True:
            with trio.move_on_after(RETRY):
                await self._wake.wait()
            self._wake = trio.Event()
            try:
                await self._expire()
                for dest in await self.fed.db.read(_destinations):
                    await self._flush(dest)
            except RpcError as e:
                log.event(_log, "secret.pump_error", why=str(e.code))
            except Exception:  # a bug must cost a round, not the node's secret traffic
                _log.exception("secret pump failed")

    async def _flush(self, dest: str) -> None:
        while True:
            rows = await self.fed.db.read(lambda c: _oldest(c, dest))
            if not rows:
                return
            try:
                link = await self.route(dest)
            except RpcError:
                return  # no way there now: the rows wait (until they expire)
            items = [_item(r) for r in rows]
            try:
                answer = await link.call("fed.secretPut", {"items": items})
            except RpcError as e:
                log.event(_log, "secret.put_failed", node=dest[:12], why=str(e.code))
                self._routes.pop(dest, None)
                return
            results = answer.get("results", [])
            done: list[int] = []
            failed: list[dict[str, Any]] = []
            for row, item, res in zip(rows, items, results, strict=False):
                err = res.get("error") if isinstance(res, dict) else "bad answer"
                if err in (ErrorCode.SECRET_NO_ROUTE, ErrorCode.SECRET_RELAY_REFUSED):
                    self._routes.pop(dest, None)  # try another way next round
                    continue
                done.append(int(row[0]))
                if err and item["kind"] == "message":
                    failed.append(_failed(item, str(err)))
            sent = sum(len(i["payload"]) for i, r in zip(items, rows, strict=True) if r[0] in done)

            via = link.node_id if link.node_id != dest else None
            await self.fed.db.write(functools.partial(_delivered, done=done, via=via, size=sent))
            if failed:
                await self._tell_senders(failed)
            if len(done) < len(rows):
                return  # refused for now: the rest waits for another route

    async def _expire(self) -> None:
        """Envelopes past their TTL leave the outbox; their senders' devices are told."""
        now = time.time()

        def take(c: sqlite3.Connection) -> list[tuple[Any, ...]]:
            rows = c.execute(
                f"SELECT id, {', '.join(_COLS)} FROM fed_secret_outbox WHERE expires < ?",
                (now,),
            ).fetchall()
            c.executemany("DELETE FROM fed_secret_outbox WHERE id = ?", [(r[0],) for r in rows])
            return rows

        items = [_item(r) for r in await self.fed.db.write(take)]
        why = str(ErrorCode.SECRET_NO_ROUTE)
        if gone := [_failed(i, why) for i in items if i["kind"] == "message"]:
            await self._tell_senders(gone)

    async def _tell_senders(self, notices: list[dict[str, Any]]) -> None:
        """``failed`` notices to the senders' devices: ours queued here, others' carried."""
        mine = [n for n in notices if _node_of(n["to"]) == self.fed.node_id]
        theirs = [n for n in notices if _node_of(n["to"]) != self.fed.node_id]
        if mine:
            await self.fed.node.secret.deliver(mine)
        if theirs:

            def store(c: sqlite3.Connection) -> None:
                for n in theirs:
                    _insert(c, _node_of(n["to"]), n, HOPS)

            await self.fed.db.write(store)
            self._wake.set()

    async def route(self, dest: str) -> Link:
        """The link an envelope for node ``dest`` leaves on: direct, else a relay."""
        link = self.fed.links.get(dest)
        if link is not None and link.state == "up":
            return link
        now = trio.current_time()
        cached = self._routes.get(dest)
        if cached is not None and cached[1] > now:
            via = self.fed.links.get(cached[0])
            if via is not None and via.state == "up":
                return via
        if self._no_route.get(dest, 0.0) > now:  # asked every peer lately: wait for a link
            raise RpcError(ErrorCode.SECRET_NO_ROUTE, f"no route to node {dest[:12]}")
        for node_id, via in list(self.fed.links.items()):
            if via.state != "up" or node_id == dest:
                continue
            try:
                ok = await via.call("fed.secretRoute", {"node": dest})
            except RpcError:
                continue
            if ok.get("reachable"):
                self._routes[dest] = (node_id, trio.current_time() + ROUTE_TTL)
                return via
        self._no_route[dest] = trio.current_time() + NO_ROUTE_TTL
        raise RpcError(ErrorCode.SECRET_NO_ROUTE, f"no route to node {dest[:12]}")

    async def charge(self, node_id: str, size: int) -> None:
        """Count ``size`` relayed bytes against peer ``node_id``'s allowance for today
        (secret-file ranges carried for it); SECRET_RELAY_REFUSED once it is spent."""
        day = _day(time.time())

        def job(c: sqlite3.Connection) -> None:
            row = c.execute(
                "SELECT bytes_for FROM fed_secret_usage WHERE node = ? AND day = ?",
                (node_id, day),
            ).fetchone()
            used = int(row[0]) if row else 0
            if used + size > self.relay_max:
                raise RpcError(ErrorCode.SECRET_RELAY_REFUSED, "today's relay allowance is spent")
            c.execute(
                "INSERT INTO fed_secret_usage(node, day, bytes_for, bytes_via) VALUES (?, ?, ?, 0) "
                "ON CONFLICT(node, day) DO UPDATE SET bytes_for = bytes_for + excluded.bytes_for",
                (node_id, day, size),
            )

        await self.fed.db.write(job)

    async def usage(self, node_id: str) -> dict[str, int]:
        """Secret bytes carried for a peer and by it (today, and all kept days)."""
        row = await self.fed.db.read(
            lambda c: c.execute(
                "SELECT coalesce(sum(bytes_for), 0), coalesce(sum(bytes_via), 0) "
                "FROM fed_secret_usage WHERE node = ?",
                (node_id,),
            ).fetchone()
        )
        return {"secret_relayed_for": int(row[0]), "secret_relayed_by": int(row[1])}


_COLS = (
    "to_addr",
    "device",
    "from_addr",
    "from_device",
    "msg_id",
    "payload",
    "kind",
    "sent",
    "expires",
    "hops",
    "count",
)


def _insert(c: sqlite3.Connection, dest: str, item: dict[str, Any], hops: int) -> None:
    c.execute(
        "INSERT OR IGNORE INTO fed_secret_outbox(dest, to_addr, device, from_addr, "
        "from_device, msg_id, payload, kind, sent, expires, hops, count) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            dest,
            str(item["to"]),
            int(item["device"]),
            str(item["from"]),
            int(item["from_device"]),
            int(item["id"]),
            bytes(item["payload"]),
            str(item["kind"]),
            float(item["sent"]),
            float(item["expires"]),
            hops,
            int(item.get("count") or 0),
        ),
    )


def _delivered(c: sqlite3.Connection, done: list[int], via: str | None, size: int) -> None:
    """Rows taken by the next node leave the outbox; bytes a relay took are counted."""
    c.executemany("DELETE FROM fed_secret_outbox WHERE id = ?", [(i,) for i in done])
    if via is not None and size:
        c.execute(
            "INSERT INTO fed_secret_usage(node, day, bytes_for, bytes_via) VALUES (?, ?, 0, ?) "
            "ON CONFLICT(node, day) DO UPDATE SET bytes_via = bytes_via + excluded.bytes_via",
            (via, _day(time.time()), size),
        )


def _item(row: tuple[Any, ...]) -> dict[str, Any]:
    r = dict(zip(_COLS, row[1:], strict=True))
    return {
        "to": r["to_addr"],
        "device": int(r["device"]),
        "from": r["from_addr"],
        "from_device": int(r["from_device"]),
        "id": int(r["msg_id"]),
        "payload": bytes(r["payload"]),
        "kind": str(r["kind"]),
        "sent": float(r["sent"]),
        "expires": float(r["expires"]),
        "hops": int(r["hops"]),
        "count": int(r["count"]),
    }


def _failed(item: dict[str, Any], why: str) -> dict[str, Any]:
    """The ``failed`` notice for an undeliverable message, addressed to its sender's device
    (the notice's ``from`` is the device it did not reach)."""
    log.event(_log, "secret.failed", why=why, size=len(item["payload"]))
    now = time.time()
    return {
        "to": item["from"],
        "device": item["from_device"],
        "from": item["to"],
        "from_device": item["device"],
        "id": item["id"],
        "payload": b"",
        "kind": "failed",
        "sent": now,
        "expires": now + 7 * 86400,
        "hops": HOPS,
    }


def _destinations(c: sqlite3.Connection) -> list[str]:
    return [str(r[0]) for r in c.execute("SELECT DISTINCT dest FROM fed_secret_outbox")]


def _oldest(c: sqlite3.Connection, dest: str) -> list[tuple[Any, ...]]:
    rows = c.execute(
        f"SELECT id, {', '.join(_COLS)} FROM fed_secret_outbox WHERE dest = ? ORDER BY id LIMIT ?",
        (dest, PUT_ITEMS),
    ).fetchall()
    out: list[tuple[Any, ...]] = []
    size = 0
    for r in rows:
        size += len(r[6]) + 256
        if out and size > PUT_BYTES:
            break
        out.append(r)
    return out


def _parse(text: str) -> Address:
    try:
        return Address.parse(text)
    except AddressError as e:
        raise RpcError(ErrorCode.USER_NOT_FOUND, str(e)) from None


def _node_of(text: Any) -> str:
    """The node id of a canonical address (name@<node id>)."""
    if not isinstance(text, str):
        raise RpcError(ErrorCode.PEER_INVALID, "an address must be a string")
    a = _parse(text)
    if not a.canonical:
        raise RpcError(ErrorCode.PEER_INVALID, f"{text!r} is not a canonical address")
    return a.node
