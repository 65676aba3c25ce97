"""The federation part: peers, links, replication and forwarded posts, attached to a node.

``fedgram run`` hands a :class:`Federation` to the node (node never imports this package).
Attached, it registers the ``fed.*`` handlers (what peers call on the links they dial to
us) and ``admin.peer*``, fills the node's remote slot (remote users, posts into chats homed
elsewhere, private chats homed elsewhere), subscribes to committed changes (to poke the
replicas of chats homed here, and to wake the outbox), and runs one link per peer.

Trust: a peer is trusted for nothing it cannot prove. Its node key is proven by the
handshake; it may post only as its own users and only into chats they are members of; it
may pull only chats where it has members; what it ships is verified (hash chain, the
home's signature) before anything is stored.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import cbor2
import trio

from node import __version__, log
from node.address import Address, AddressError
from node.chats import store as chat_store
from node.interfaces import CallContext, Caller, Effects
from node.nodes import load as load_nodes
from node.protocol.errors import ErrorCode, RpcError
from node.protocol.identity import fingerprint
from node.storage import Schema

from . import peers, replication
from .discovery import Discovery, Seen
from .links import Link
from .media import FedMedia
from .reads import FedReads
from .schema import SCHEMA
from .secret_relay import FedSecret

if TYPE_CHECKING:
    from node.app import Node

_log = log.get("federation")
OUTBOX_BATCH = 256  # posts per fed.post at most (its schema's limit): a backlog drains fast
OUTBOX_BYTES = 256 * 1024  # and about this much of them (a post's text alone may be 16 KB)
PUSH_EVENTS = 1000  # events of one chat pushed with a poke at most (the rest is pulled)
PUSH_BYTES = 512 * 1024  # events pushed with one poke at most (a frame is 1 MiB); the rest pulls
PUSH_WAIT = 0.25  # seconds a push waits for a pull of its chat under way before leaving it
VERIFY_INLINE = 32  # a pushed batch up to this size is verified on the event loop
RELAY_TTL = 120.0  # seconds a fellow replica that offered us a head hears of our progress
USER_TTL = 3600.0  # a cached remote user is asked again after this (display name changes)


class Federation:
    name = "federation"
    schema: Schema | None = SCHEMA

    def __init__(self) -> None:
        self.links: dict[str, Link] = {}
        self._dirty: dict[str, int] = {}  # chat -> head, committed since the last round
        self._membership: set[str] = set()  # chats whose members changed meanwhile
        self._dirty_wake = trio.Event()
        self._homes: dict[str, str] = {}  # chat -> home (never changes)
        self._replicas: dict[str, set[str]] = {}  # chat homed here -> replica nodes
        self._users_seen: dict[tuple[str, str], float] = {}
        self._nursery: trio.Nursery | None = None
        self._pull_locks: dict[str, trio.Lock] = {}
        self._callers: dict[str, peers.Peer] = {}  # node id -> its row, until the table changes
        self._outbox_lock = trio.Lock()
        self._left: set[int] = set()  # outbox rows on their way to the home (not cancellable)
        self._left_upto = 0  # every row up to this id was queued before this start
        self._replicas_seen: dict[str, set[str]] = {}  # chat homed elsewhere -> its replicas
        self._relay_to: dict[str, dict[str, float]] = {}  # chat -> replica -> offer until
        # chat homed elsewhere -> (seq, hash) of our copy after our last apply: a pushed
        # batch must follow it (a hint only: the write job checks the stored head again)
        self._copy_heads: dict[str, tuple[int, bytes]] = {}
        self._addresses: dict[int, str] = {}  # user id -> canonical address (never changes)
        # outbox posts the home acknowledged and not yet deleted, and those deleted since
        # the last flush's read, by (chat, sender, random_id): row ids are reused by SQLite
        # once the newest rows are deleted, a post's key is not
        self._posted: set[tuple[str, int, int]] = set()
        self._deleted: set[tuple[str, int, int]] = set()

    # --- attaching ------------------------------------------------------------------------
    def attach(self, node: Node) -> None:
        self.node = node
        self.db = node.db
        self.identity = node.identity
        self.node_id = node.node_id
        self.home = node.chats.home
        cfg = node.config
        self.peering: str = cfg.get("federation", "peering")
        self.link_timeout = float(cfg.get("federation", "link_timeout"))
        self.retry_max = float(cfg.get("federation", "retry_max"))
        self.public_url: str = cfg.get("federation", "public_url")
        self.discovery: Discovery | None = None
        self._discover = bool(cfg.get("federation", "discovery")) and self.peering != "off"
        node.remote.impl = self
        self.secret = FedSecret(self)
        node.remote.secret = self.secret
        self.media = FedMedia(self)
        self.reads = FedReads(self)
        node.media.remote = node.remote  # files this node lacks are fetched through us
        node.events.subscribe(self._committed)
        node.events.subscribe(self.reads.committed)
        for name, fn in {
            "fed.hello": self.fed_hello,
            "fed.resolveUser": self.fed_resolve_user,
            "fed.poke": self.fed_poke,
            "fed.pull": self.fed_pull,
            "fed.post": self.fed_post,
            "fed.startPrivate": self.fed_start_private,
            "fed.act": self.fed_act,
            "fed.read": self.fed_read,
            "fed.media": self.fed_media,
            "fed.secretKeys": self.fed_secret_keys,
            "fed.secretPut": self.fed_secret_put,
            "fed.secretRoute": self.fed_secret_route,
            "admin.peerAdd": self.admin_peer_add,
            "admin.peerList": self.admin_peer_list,
            "admin.peerApprove": self.admin_peer_approve,
            "admin.peerBlock": self.admin_peer_block,
            "admin.peerRemove": self.admin_peer_remove,
        }.items():
            node.router.add(name, fn)
        node.background.append(self.run)
        node.metrics.gauge(
            "federation_links_up",
            "Links to peers that are up now.",
            lambda: sum(1 for link in self.links.values() if link.state == "up"),
        )
        node.metrics.gauge_async(
            "federation_outbox",
            "Posts waiting in the outbox for chats homed on other nodes.",
            lambda: self.db.read(
                lambda c: int(c.execute("SELECT count(*) FROM fed_outbox").fetchone()[0])
            ),
        )

    def hello_params(self) -> dict[str, Any]:
        return {"name": self.node.config.name, "url": self.url(), "version": __version__}

    def url(self) -> str:
        return self.public_url or self.node.url

    async def run(self) -> None:
        self._left_upto = await self.db.read(
            lambda c: int(c.execute("SELECT coalesce(max(id), 0) FROM fed_outbox").fetchone()[0])
        )
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for p in await self.db.read(peers.all_peers):
                if p.state == "peer" and p.url:
                    self._start_link(p.node_id, p.url)
            nursery.start_soon(self._dispatch)
            nursery.start_soon(self.secret.run)
            nursery.start_soon(self.reads.run)
            if self._discover:  # the port is known only once the node listens: now
                node = self.node
                self.discovery = Discovery(
                    self.node_id, node.config.name, node.host, node.port, self.url()
                )
                nursery.start_soon(self.discovery.run, self._discovered)

    async def _discovered(self, seen: Seen) -> None:
        """A node announced itself on the LAN: with open peering it becomes a peer (it must
        prove the key its announced id names); else it waits in ``peer list`` for an
        admin's ``peer approve``."""
        if await self.db.read(lambda c: peers.get(c, seen.node_id)) is not None:
            return
        log.event(_log, "peer.discovered", peer=seen.node_id[:12], name=seen.name, url=seen.url)
        if self.peering == "open":
            try:
                await self._add_peer(seen.url, seen.node_id)
            except RpcError as e:
                log.event(_log, "peer.discovered_unreachable", peer=seen.node_id[:12], why=e.code)

    def _start_link(self, node_id: str, url: str) -> Link:
        link = self.links.get(node_id)
        if link is not None and link.url == url:
            link.kick()
            return link
        if link is not None:
            link.stop()
        link = Link(self, node_id, url)
        self.links[node_id] = link
        if self._nursery is not None:
            self._nursery.start_soon(link.run)
        return link

    def _stop_link(self, node_id: str) -> None:
        link = self.links.pop(node_id, None)
        if link is not None:
            link.stop()

    async def _reload_directory(self) -> None:
        """After any change to the nodes table (every such change goes through here)."""
        self._callers.clear()
        self.node.directory.replace(await self.db.read(load_nodes))

    # --- links ----------------------------------------------------------------------------
    def link_failed(self, node_id: str, why: str, was_up: bool) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._note_error, node_id, why)
            if was_up:
                self._nursery.start_soon(self._home_lost, node_id)

    async def _home_lost(self, node_id: str) -> None:
        """A peer's link just went down: for the chats homed there, the replicas now fill
        each other's gaps, so tell them how far this node has each."""
        homed = await self.db.read(
            lambda c: c.execute(
                "SELECT id, last_seq FROM chats WHERE home = ?", (node_id,)
            ).fetchall()
        )
        await self._relay_heads(node_id, [(str(r[0]), int(r[1])) for r in homed])

    async def _note_error(self, node_id: str, why: str | None) -> None:
        await self.db.write(lambda c: peers.note_error(c, node_id, why))

    async def link_up(self, link: Link) -> None:
        """A link just came up: catch up both ways."""
        await self._note_error(link.node_id, None)
        self.secret.link_up()
        peer = await self.db.read(lambda c: peers.get(c, link.node_id))
        if peer is None:
            return
        # as the home: tell it about every chat it replicates (new ones included)
        for chat_id, head in await self.db.read(
            lambda c: replication.chats_replicated_by(c, peer.row)
        ):
            link.poke(chat_id, head)
        # as a replica: pull every chat homed there that we follow
        homed = await self.db.read(
            lambda c: c.execute(
                "SELECT id, last_seq FROM chats WHERE home = ?", (link.node_id,)
            ).fetchall()
        )
        for chat_id, head in homed:
            link.want_pull(chat_id, head)
        # as a fellow replica: for chats whose home is unreachable now, tell it our heads
        down = {n for n, x in self.links.items() if x.state != "up" and n != link.node_id}
        if down:
            for chat_id, head in await self.db.read(
                functools.partial(_shared_chats, peer_row=peer.row, homes=down)
            ):
                link.poke(chat_id, head)
        link.outbox_ready()

    # --- home side: poke the replicas of what committed -----------------------------------
    def _committed(self, fx: Effects, origin: Caller | None) -> None:
        for chat_id, _, _ in fx.membership:
            self._membership.add(chat_id)
            self._replicas_seen.pop(chat_id, None)
        for chat_id, ev in fx.chat_events:
            if self._replicas.get(chat_id) == set() and chat_id not in self._membership:
                continue  # homed here, no member elsewhere: nothing to tell anyone
            seq = ev.get("seq")
            if isinstance(seq, int):
                self._dirty[chat_id] = max(seq, self._dirty.get(chat_id, 0))
        if fx.envelopes_to:
            self.secret.committed()
        for home in fx.posts_to:
            link = self.links.get(home)
            if link is not None:
                link.outbox_ready()
        if self._dirty:
            self._dirty_wake.set()

    async def _dispatch(self) -> None:
        while True:
            await self._dirty_wake.wait()
            self._dirty_wake = trio.Event()
            dirty, self._dirty = self._dirty, {}
            changed, self._membership = self._membership, set()
            try:
                await self._poke_replicas(dirty, changed)
            except Exception:  # a failed round (the disk, a bug) must not stop the next
                _log.exception("poking replicas failed")
                self._membership |= changed  # recompute those chats' replicas next time

    async def _poke_replicas(self, dirty: dict[str, int], changed: set[str]) -> None:
        for chat_id, head in dirty.items():
            home = self._homes.get(chat_id)
            if home is None:
                chat = await self.db.read(functools.partial(_chat, chat_id=chat_id))
                if chat is None:
                    continue
                home = self._homes[chat_id] = chat.home
            if home != self.node_id:
                continue  # a replica's applied events: only the home pokes
            before = self._replicas.get(chat_id)
            if before is None or chat_id in changed:
                now = await self.db.read(functools.partial(_replicas, chat_id=chat_id))
                self._replicas[chat_id] = now
                targets = now | (before or set())  # leavers learn of their leave
            else:
                targets = before
            for node_id in targets:
                link = self.links.get(node_id)
                if link is not None:
                    link.poke(chat_id, head)

    # --- replica side: pull and apply -----------------------------------------------------
    async def pull_chat(self, link: Link, chat_id: str, head: int | None) -> None:
        """Pull a chat from ``link``'s peer until this node has ``head`` (None: until it
        has what that peer has now).

        The peer is the chat's home, or (gap fill) another replica while the home's link
        is not up: a relay's copy is verified against the home's key exactly like the
        home's own. While the home is up, a pull offered by a relay goes to the home. A
        fellow replica that offers a head behind ours is offered ours back, and hears of
        our progress for a while (``RELAY_TTL``): it may be cut off from the home while
        we are not (a partial partition).

        Pipelined: batch k+1 is pulled and verified while batch k is applied (the writer
        thread, the verify thread and the link work side by side during a catch-up); at
        most one verified batch waits."""
        lock = self._pull_locks.setdefault(chat_id, trio.Lock())
        async with lock:
            chat = await self.db.read(lambda c: chat_store.get_chat(c, chat_id))
            after = chat.last_seq if chat else None
            home_id = chat.home if chat else link.node_id  # a first pull is from the home
            if home_id == self.node_id:
                return  # homed here: nobody's copy is newer than ours
            relay = home_id != link.node_id
            if relay:  # a fellow replica offered its head: it follows the chat too
                wanted = self._relay_to.setdefault(chat_id, {})
                wanted[link.node_id] = trio.current_time() + RELAY_TTL
            if after is not None and head is not None and after >= head:
                if relay and after > head:
                    link.poke(chat_id, after)  # it is behind us: offer our copy back
                return
            if relay:
                home_link = self.links.get(home_id)
                if home_link is not None and home_link.state == "up":
                    home_link.want_pull(chat_id, head if head is not None else (after or 0) + 1)
                    return
            prev = chat.last_hash if chat else bytes(32)
            home_key = await self._key_of(home_id)
            start = got = after or 0
            send, recv = trio.open_memory_channel[replication.Batch](1)
            async with _plain_rpc_errors(), trio.open_nursery() as nursery:
                nursery.start_soon(self._apply_pulled, home_id, recv)
                async with send:
                    while True:
                        try:
                            pulled = await link.call(
                                "fed.pull",
                                {"chat": chat_id, "after": after, "limit": replication.PULL_EVENTS},
                            )
                        except RpcError as e:
                            if e.code not in (ErrorCode.NOT_A_REPLICA, ErrorCode.CHAT_NOT_FOUND):
                                raise
                            log.event(_log, "pull.refused", chat=chat_id, why=e.code)
                            break  # no members there any more: keep what we have
                        batch = await trio.to_thread.run_sync(
                            replication.verify_pulled, pulled, chat_id, home_key, prev, got
                        )
                        got += len(batch.items)
                        head = max(head or 0, batch.head)
                        link.lag[chat_id] = max(0, head - got)
                        if batch.items:
                            await send.send(batch)
                        if not batch.items or got >= batch.head:
                            break
                        after, prev = got, batch.items[-1][0].hash
            if got > start and home_id != link.node_id:
                link.relayed += got - start
                log.event(
                    _log, "pull.relayed", chat=chat_id, peer=link.node_id[:12], events=got - start
                )
            if got > start:
                await self._relay_heads(home_id, [(chat_id, got)])

    async def _relay_heads(self, home_id: str, heads: list[tuple[str, int]]) -> None:
        """Offer this node's head of chats homed elsewhere (a ``fed.poke`` from a replica)
        to the fellow replicas that may need it; whoever is behind pulls the rest from us.
        While the home is unreachable from here: to every other replica of the chat. While
        it is up (its own pokes reach everyone it reaches): only to replicas that offered
        us a head lately, which may be cut off from it."""
        home_link = self.links.get(home_id)
        home_up = home_link is not None and home_link.state == "up"
        now = trio.current_time()
        for chat_id, head in heads:
            wanted = self._relay_to.get(chat_id, {})
            for node_id, until in list(wanted.items()):
                if until < now:
                    del wanted[node_id]
            targets = set(wanted)
            if not home_up:
                others = self._replicas_seen.get(chat_id)
                if others is None:
                    others = await self.db.read(functools.partial(_replicas, chat_id=chat_id))
                    self._replicas_seen[chat_id] = others
                targets |= others
            for node_id in targets - {home_id, self.node_id}:
                link = self.links.get(node_id)
                if link is not None and link.state == "up":
                    link.poke(chat_id, head)

    async def _apply_pulled(
        self, home_id: str, batches: trio.MemoryReceiveChannel[replication.Batch]
    ) -> None:
        async for batch in batches:
            await self._apply(home_id, batch)

    async def _apply(self, home_id: str, batch: replication.Batch) -> int:
        """Store a verified batch (pulled or pushed); returns the chat's head here. Our
        head's hash is remembered for the next push (dropped if the write failed)."""
        apply = functools.partial(
            replication.apply_batch, home=self.home, home_id=home_id, batch=batch
        )
        try:
            now = await self.node.events.commit(self.db, apply)
        except BaseException:
            self._copy_heads.pop(batch.chat_id, None)
            raise
        if batch.items and now == batch.first_seq - 1 + len(batch.items):
            self._copy_heads[batch.chat_id] = (now, batch.items[-1][0].hash)
        else:
            self._copy_heads.pop(batch.chat_id, None)
        known = self.node.directory.book.petnames
        if any(n not in known and n != self.node_id for n in batch.nodes):
            await self._reload_directory()  # a third node's users: name them
        return int(now)

    async def _apply_pushed(
        self, link: Link, home: peers.Peer, chat_id: str, head: int, pushed: dict[str, Any]
    ) -> int | None:
        """Events of ``chat_id`` its home sent with a poke: verified (chain and the home's
        signature, as a pulled batch) and applied if they follow our copy's head; returns
        our head then (None: not known here, the caller pulls). Anything unusual (a gap,
        a pull under way, a batch that does not verify or apply) is left to a pull, which
        checks the same things and takes the link down if the home is at fault."""
        after = pushed.get("after")
        if chat_id not in self._copy_heads or not isinstance(after, int):
            return None
        lock = self._pull_locks.setdefault(chat_id, trio.Lock())
        locked = False
        # a pull under way is usually a fallback's, about to end: wait a little for it
        # (else every push that meets a pull causes another pull, and so on); a longer
        # one (a catch-up) gets these events too, or the pull queued after it does
        with trio.move_on_after(PUSH_WAIT):
            await lock.acquire()
            locked = True
        if not locked:
            return None
        try:
            known = self._copy_heads.get(chat_id)
            if known is None:
                return None
            if known[0] != after:
                return known[0]  # a gap or a repeat: the home learns our head, we pull if behind
            events = pushed.get("events")
            try:
                if isinstance(events, list) and len(events) <= VERIFY_INLINE:
                    batch = replication.verify_pulled(pushed, chat_id, home.key, known[1], after)
                else:
                    batch = await trio.to_thread.run_sync(
                        replication.verify_pulled, pushed, chat_id, home.key, known[1], after
                    )
                if not batch.items:
                    return after
                now = await self._apply(home.node_id, batch)
            except RpcError as e:
                log.event(_log, "push.refused", chat=chat_id, peer=home.node_id[:12], why=e.message)
                self._copy_heads.pop(chat_id, None)
                return None
        finally:
            lock.release()
        link.lag[chat_id] = max(0, max(head, batch.head) - now)
        await self._relay_heads(home.node_id, [(chat_id, now)])
        return now

    async def push_events(self, link: Link, batch: list[tuple[str, int]]) -> dict[str, Any]:
        """As a chat's home: for the chats of a poke batch whose replica head on ``link``'s
        peer is known and behind, what ``fed.pull`` would answer it after that head (the
        same entitlement checks: a push is a pull the replica did not have to make).
        Chats the peer may not read any more (it left) are left out: the poke alone tells it."""
        wanted = [
            (chat_id, link.heads[chat_id])
            for chat_id, head in batch
            if self._homes.get(chat_id) == self.node_id
            and chat_id in link.heads
            and link.heads[chat_id] < head
        ]
        if not wanted:
            return {}
        node_id = link.node_id

        def serve(c: sqlite3.Connection) -> dict[str, Any]:
            peer = self._callers.get(node_id) or peers.get(c, node_id)
            out: dict[str, Any] = {}
            if peer is None:
                return out
            total = 0
            for chat_id, after in wanted:
                try:
                    got = replication.serve_pull(c, self.home, peer, chat_id, after, PUSH_EVENTS)
                except RpcError:
                    continue
                size = sum(len(r) + len(s) + len(x or b"") + 16 for r, s, x in got["events"])
                if got["events"] and total + size <= PUSH_BYTES:
                    total += size
                    del got["chat"]  # only for a first pull (after = null)
                    out[chat_id] = {"after": after, **got}
            return out

        return await self.db.read(serve)

    async def _key_of(self, node_id: str) -> bytes:
        peer = await self.db.read(lambda c: peers.get(c, node_id))
        if peer is None:
            raise RpcError(ErrorCode.PEER_UNKNOWN, node_id)
        return peer.key

    # --- outbox ---------------------------------------------------------------------------
    def forward_post(
        self,
        conn: sqlite3.Connection,
        fx: Effects,
        chat_id: str,
        home: str,
        sender_id: int,
        random_id: int,
        params: dict[str, Any],
    ) -> None:
        """In the send's job (writer thread): the post as an outbox row; the commit makes it
        durable before the client hears "pending"."""
        conn.execute(
            "INSERT OR IGNORE INTO fed_outbox(home, chat_id, sender_id, random_id, post, "
            "created) VALUES (?, ?, ?, ?, ?, ?)",
            (home, chat_id, sender_id, random_id, cbor2.dumps(params), time.time()),
        )
        fx.posts_to.add(home)  # the pump is woken by this commit's publication

    async def flush_outbox(self, link: Link) -> int:
        """Forward the oldest posts waiting for ``link``'s peer; returns how many went.

        The rows the home acknowledged are deleted by a write of their own that the pump
        does not wait for (it joins the writer's next batch: no commit and fsync between
        one ``fed.post`` and the next); until it commits, reads skip them. A crash before
        it commits sends them again, which the home's idempotency by random_id absorbs
        (the same as a lost acknowledgement)."""
        posted = set(self._posted)
        deleted, self._deleted = self._deleted, set()

        def oldest(c: sqlite3.Connection) -> list[tuple[Any, ...]]:
            rows = c.execute(
                "SELECT o.id, o.chat_id, o.sender_id, o.random_id, o.post FROM fed_outbox o "
                "WHERE o.home = ? ORDER BY o.id LIMIT ?",
                (link.node_id, OUTBOX_BATCH + len(posted)),
            ).fetchall()
            out: list[tuple[Any, ...]] = []
            size = 0
            for r in rows:
                if (r[1], r[2], r[3]) in posted:
                    continue
                size += len(r[4]) + 128
                if len(out) == OUTBOX_BATCH or (out and size > OUTBOX_BYTES):
                    break
                out.append(r)
            return out

        async with self._outbox_lock:  # a post selected here has left: cancel answers False
            rows = await self.db.read(oldest)
            self._left.update(int(r[0]) for r in rows)
        # deleted before that read began: no read from now on can see them
        self._posted.difference_update(deleted)
        if not rows:
            return 0
        posts = []
        for _, chat_id, sender_id, rid, post in rows:
            sender = self._addresses.get(sender_id)
            if sender is None:
                sender = await self.db.read(functools.partial(_address, user_id=sender_id))
                sender = sender or ""
                if sender:
                    self._addresses[sender_id] = sender
            posts.append(
                {
                    "chat": chat_id,
                    "sender": sender,
                    "random_id": rid,
                    **cbor2.loads(post),
                }
            )
        answer = await link.call("fed.post", {"posts": posts})
        results = answer.get("results", [])
        done: list[int] = []
        for row, res in zip(rows, results, strict=False):
            done.append(int(row[0]))
            if isinstance(res, dict) and res.get("error"):
                # refused for good (no longer a member, say): tell the sender's devices
                log.event(_log, "post.refused", chat=row[1], why=res["error"])
                self.node.hub.push_to_user(
                    int(row[2]),
                    [
                        {
                            "type": "message.failed",
                            "chat": row[1],
                            "random_id": row[3],
                            "error": res["error"],
                        }
                    ],
                )
        keys = [(str(r[1]), int(r[2]), int(r[3])) for r in rows[: len(done)]]
        self._posted.update(keys)
        if self._nursery is not None:
            self._nursery.start_soon(self._delete_posted, done, keys)
        else:  # not running (a test's direct call): delete in line
            await self._delete_posted(done, keys)
        return len(done)

    async def _delete_posted(self, done: list[int], keys: list[tuple[str, int, int]]) -> None:
        """Delete outbox rows their home acknowledged (see flush_outbox). If the write
        fails (the disk), the rows stay skipped until a restart sends them again."""
        try:
            await self.db.write(
                lambda c: c.executemany(
                    "DELETE FROM fed_outbox WHERE id = ? AND chat_id = ? AND sender_id = ? "
                    "AND random_id = ?",
                    [(i, *k) for i, k in zip(done, keys, strict=True)],
                )
            )
        except Exception:
            _log.exception("deleting posted outbox rows failed")
            return
        self._left.difference_update(done)
        self._deleted.update(keys)

    async def cancel_post(self, chat_id: str, sender_id: int, random_id: int) -> bool | None:
        """Drop a queued post that has not left for its home (see Federated.cancel_post).
        A post counts as left from the moment a flush selected it until its home
        acknowledged it, and every post queued before this node started counts as left
        (it may have gone out before a crash): the home may sequence those, so they are
        never reported cancelled."""
        async with self._outbox_lock:
            row = await self.db.read(
                lambda c: c.execute(
                    "SELECT id FROM fed_outbox WHERE chat_id = ? AND sender_id = ? "
                    "AND random_id = ?",
                    (chat_id, sender_id, random_id),
                ).fetchone()
            )
            if row is None:
                return None
            post_id = int(row[0])
            if post_id in self._left or post_id <= self._left_upto:
                return False
            await self.db.write(
                lambda c: c.execute("DELETE FROM fed_outbox WHERE id = ?", (post_id,))
            )
            return True

    # --- the remote slot (node/remote.py) ---------------------------------------------------
    async def ensure_user(self, node_id: str, name: str) -> None:
        def cached(c: sqlite3.Connection) -> bool:
            return bool(
                c.execute(
                    "SELECT 1 FROM users u JOIN nodes n ON n.id = u.node "
                    "WHERE u.name = ? AND n.fingerprint = ?",
                    (name, node_id),
                ).fetchone()
            )

        fresh = time.monotonic() - self._users_seen.get((node_id, name), -USER_TTL) < USER_TTL
        have = await self.db.read(cached)
        if have and fresh:
            return
        link = self.links.get(node_id)
        if link is None:
            if have:
                return
            raise RpcError(ErrorCode.PEER_UNREACHABLE, f"node {node_id[:12]} is not a peer here")
        try:
            info = await link.call("fed.resolveUser", {"name": name})
        except RpcError as e:
            if have and e.code == ErrorCode.PEER_UNREACHABLE:
                return  # what we know will do until it is back
            raise

        def store_user(c: sqlite3.Connection) -> None:
            row = c.execute("SELECT id FROM nodes WHERE fingerprint = ?", (node_id,)).fetchone()
            replication.remember_user(c, int(row[0]), name, info)

        await self.db.write(store_user)
        self._users_seen[(node_id, name)] = time.monotonic()

    async def start_private(self, home: str, me: str, other: str) -> str:
        link = self.links.get(home)
        if link is None:
            raise RpcError(ErrorCode.PEER_UNREACHABLE, f"node {home[:12]} is not a peer here")
        answer = await link.call("fed.startPrivate", {"from": me, "to": other})
        chat_id = str(answer["chat"])
        await self.pull_chat(link, chat_id, None)
        return chat_id

    async def act(self, home: str, sender: str, method: str, params: dict[str, Any]) -> Any:
        link = self.links.get(home)
        if link is None:
            raise RpcError(ErrorCode.PEER_UNREACHABLE, f"node {home[:12]} is not a peer here")
        result = await link.call("fed.act", {"sender": sender, "method": method, "params": params})
        # read your writes: the change is replicated here before the caller hears of it
        chat_id = params.get("chat")
        if chat_id is None and isinstance(result, dict) and isinstance(result.get("chat"), dict):
            chat_id = result["chat"].get("id")
        if isinstance(chat_id, str):
            await self.pull_chat(link, chat_id, None)
        return result

    async def fetch_media(
        self, node_id: str, sha256: str, offset: int, length: int, *, opaque: bool = False
    ) -> tuple[bytes, int]:
        return await self.media.fetch(node_id, sha256, offset, length, opaque=opaque)

    # --- fed.* handlers (a peer's calls on the link it dialled) -----------------------------
    async def _caller(self, ctx: CallContext, *, hello: bool = False) -> peers.Peer | None:
        s = ctx.session
        assert s is not None and s.peer_identity is not None  # access "node"
        node_id = fingerprint(s.peer_identity)
        peer = self._callers.get(node_id)
        if peer is None:  # a database read on every fed.* call was 7% of a busy home's time
            peer = await self.db.read(lambda c: peers.get(c, node_id))
            if peer is not None:
                self._callers[node_id] = peer
        if peer is not None and peer.state == "blocked":
            s.close(ErrorCode.PEER_BLOCKED)
            raise RpcError(ErrorCode.PEER_BLOCKED)
        if self.peering == "off":
            raise RpcError(ErrorCode.FEDERATION_OFF)
        if not hello and (peer is None or peer.state != "peer"):
            raise RpcError(ErrorCode.PEER_PENDING, "waiting for this node's admin to approve")
        return peer

    async def fed_hello(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        peer = await self._caller(ctx, hello=True)
        s = ctx.session
        assert s is not None and s.peer_identity is not None
        key = s.peer_identity
        state = "peer" if self.peering == "open" or (peer and peer.state == "peer") else "pending"
        url = _dialable(p.get("url"))  # announced: used only if nothing better is known
        peer = await self.db.write(lambda c: peers.remember(c, key, p["name"], state, url))
        await self._reload_directory()
        if peer.state == "peer" and peer.url:
            self._start_link(peer.node_id, peer.url)  # or kick ours: it may wait on us
        else:
            log.event(_log, "peer.pending", peer=peer.node_id[:12], name=peer.name)
        return {"name": self.node.config.name, "state": peer.state}

    async def fed_resolve_user(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        await self._caller(ctx)
        row = await self.db.read(
            lambda c: c.execute(
                "SELECT display_name, created, banned FROM users "
                "WHERE name = ? AND node = (SELECT id FROM nodes WHERE state = 'self')",
                (p["name"],),
            ).fetchone()
        )
        if row is None or row[2]:
            raise RpcError(ErrorCode.USER_NOT_FOUND, p["name"])
        return {"name": p["name"], "display_name": row[0], "created": row[1]}

    async def fed_poke(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        peer = await self._caller(ctx)
        assert peer is not None
        link = self.links.get(peer.node_id)
        if link is None:
            return {}
        pushed = p.get("events")
        if not isinstance(pushed, dict):
            pushed = {}
        heads: dict[str, int] = {}
        for entry in p["chats"]:
            chat_id, head = entry
            if isinstance(chat_id, str) and isinstance(head, int) and len(chat_id) <= 64:
                got = pushed.get(chat_id)
                if isinstance(got, dict):
                    now = await self._apply_pushed(link, peer, chat_id, head, got)
                    if now is not None:
                        heads[chat_id] = now
                        if now >= head:
                            continue
                link.want_pull(chat_id, head)
        return {"heads": heads} if heads else {}

    async def fed_pull(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        peer = await self._caller(ctx)
        assert peer is not None
        limit = int(p.get("limit", replication.PULL_EVENTS))
        out = await self.db.read(
            lambda c: replication.serve_pull(c, self.home, peer, p["chat"], p["after"], limit)
        )
        link = self.links.get(peer.node_id)
        if link is not None:  # where it will be once it applied this: our next push follows
            link.heads[p["chat"]] = (p["after"] or 0) + len(out["events"])
        return out

    async def fed_post(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        peer = await self._caller(ctx)
        assert peer is not None
        messages = self.node.chats.messages
        results: list[dict[str, Any]] = []

        def job(c: sqlite3.Connection, fx: Effects) -> None:
            for post in p["posts"]:
                c.execute("SAVEPOINT fed_post")
                try:
                    uid = _sender_of(c, peer, post)
                    res = messages.post_from_peer(
                        c, fx, str(post["chat"]), uid, int(post["random_id"]), post
                    )
                    c.execute("RELEASE fed_post")
                except RpcError as e:
                    c.execute("ROLLBACK TO fed_post")
                    c.execute("RELEASE fed_post")
                    res = {"error": str(e.code)}
                results.append(res)

        await self.node.events.commit(self.db, job)
        return {"results": results}

    async def fed_start_private(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        peer = await self._caller(ctx)
        assert peer is not None
        try:
            a, b = Address.parse(p["from"]), Address.parse(p["to"])
        except AddressError as e:
            raise RpcError(ErrorCode.PEER_INVALID, str(e)) from None
        if a.node != peer.node_id or b.node != self.node_id:
            raise RpcError(ErrorCode.PEER_INVALID, "from must be the caller's, to this node's")
        await self.ensure_user(a.node, a.name)

        def job(c: sqlite3.Connection, fx: Effects) -> str:
            ids = chat_store.user_ids(c, self.home, [str(a), str(b)])
            chat_id, _ = self.node.chats.membership.open_private(c, fx, ids[str(a)], ids[str(b)])
            return chat_id

        return {"chat": await self.node.events.commit(self.db, job)}

    async def fed_act(self, ctx: CallContext, p: dict[str, Any]) -> Any:
        peer = await self._caller(ctx)
        assert peer is not None and ctx.session is not None
        try:
            a = Address.parse(p["sender"])
        except AddressError as e:
            raise RpcError(ErrorCode.NOT_A_REPLICA, str(e)) from None
        if a.node != peer.node_id:
            raise RpcError(ErrorCode.NOT_A_REPLICA, "a node acts only for its own users")
        params = p["params"]
        if not isinstance(params, dict):
            raise RpcError(ErrorCode.PARAMS_INVALID, "params must be a map")
        await self.ensure_user(a.node, a.name)
        uid = await self.db.read(
            lambda c: c.execute(
                "SELECT id FROM users WHERE name = ? AND node = ?", (a.name, peer.row)
            ).fetchone()
        )
        if uid is None:
            raise RpcError(ErrorCode.NOT_A_REPLICA, f"{a.name} is unknown here")
        sub = CallContext("ws", RemoteUser(int(uid[0]), ctx.session), {"forwarded": True})
        return await self.node.router.dispatch(sub, p["method"], params, present=False)

    async def fed_read(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        peer = await self._caller(ctx)
        assert peer is not None
        return await self.reads.serve(peer, p)

    async def fed_media(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        peer = await self._caller(ctx)
        assert peer is not None
        return await self.media.serve(peer, p)

    async def fed_secret_keys(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        peer = await self._caller(ctx)
        assert peer is not None
        return await self.secret.serve_keys(peer, p)

    async def fed_secret_put(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        peer = await self._caller(ctx)
        assert peer is not None
        return await self.secret.serve_put(peer, p)

    async def fed_secret_route(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        peer = await self._caller(ctx)
        assert peer is not None
        return await self.secret.serve_route(peer, p)

    # --- admin.peer* ------------------------------------------------------------------------
    async def admin_peer_add(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        return await self._info(await self._add_peer(p["url"], p.get("pin")))

    async def _add_peer(self, raw_url: str, pin: str | None) -> peers.Peer:
        """Dial a node, learn (or check) its key, and make it a peer with that URL."""
        from node.client.connection import Client

        url = _dialable(raw_url)
        if url is None:
            raise RpcError(ErrorCode.PEER_INVALID, f"{raw_url!r} is not a ws:// or wss:// node URL")
        try:
            async with Client.connect(
                url,
                pin=pin,
                identity=self.identity,
                timeout=self.link_timeout,
                tls_ca=self.node.config.path("federation", "tls_ca"),
            ) as client:
                key = client.node_key
                info = await client.call("system.info", {}, timeout=self.link_timeout)
        except RpcError as e:
            if e.code == ErrorCode.NODE_KEY_MISMATCH:
                raise
            raise RpcError(ErrorCode.PEER_UNREACHABLE, e.message) from None
        if fingerprint(key) == self.node_id:
            raise RpcError(ErrorCode.PEER_INVALID, f"{url} is this node itself")
        peer = await self.db.write(
            lambda c: peers.remember(c, key, info["name"], "peer", url, url_from_admin=True)
        )
        await self._reload_directory()
        self._start_link(peer.node_id, url)
        log.event(_log, "peer.added", peer=peer.node_id[:12], name=peer.name, url=url)
        return peer

    async def admin_peer_list(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        known = await self.db.read(peers.all_peers)
        out = [await self._info(x) for x in known]
        ids = {x.node_id for x in known}
        for seen in self.discovery.seen.values() if self.discovery else ():
            if seen.node_id not in ids:
                out.append(_discovered_info(seen))
        return {"peers": out}

    async def admin_peer_approve(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        seen = self._seen_by_ref(p["peer"])
        if seen is not None:  # heard of on the LAN: dial it, it must prove the id's key
            return await self._info(await self._add_peer(seen.url, seen.node_id))
        peer = await self.db.read(lambda c: peers.find(c, p["peer"]))
        peer = await self.db.write(lambda c: peers.set_state(c, peer.node_id, "peer"))
        await self._reload_directory()
        if peer.url:
            self._start_link(peer.node_id, peer.url)
        log.event(_log, "peer.approved", peer=peer.node_id[:12], name=peer.name)
        return await self._info(peer)

    async def admin_peer_block(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        peer = await self.db.read(lambda c: peers.find(c, p["peer"]))
        peer = await self.db.write(lambda c: peers.set_state(c, peer.node_id, "blocked"))
        await self._reload_directory()
        self._stop_link(peer.node_id)
        for s in list(self.node.gateway.sessions.values()):
            if s.peer_identity is not None and fingerprint(s.peer_identity) == peer.node_id:
                s.close(ErrorCode.PEER_BLOCKED)
        log.event(_log, "peer.blocked", peer=peer.node_id[:12], name=peer.name)
        return await self._info(peer)

    async def admin_peer_remove(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        peer = await self.db.read(lambda c: peers.find(c, p["peer"]))
        await self.db.write(lambda c: peers.forget_link(c, peer.node_id))
        await self._reload_directory()
        self._stop_link(peer.node_id)
        return {"removed": peer.node_id}

    def _seen_by_ref(self, ref: str) -> Seen | None:
        """A node only discovered on the LAN (not in the nodes table), by id, prefix, name."""
        if self.discovery is None:
            return None
        ids = set(self.node.directory.book.petnames)
        found = [
            s
            for s in self.discovery.seen.values()
            if s.node_id not in ids
            and (s.node_id == ref or s.name == ref or (len(ref) >= 6 and s.node_id.startswith(ref)))
        ]
        return found[0] if len(found) == 1 else None

    async def _info(self, peer: peers.Peer) -> dict[str, Any]:
        link = self.links.get(peer.node_id)

        def counts(c: sqlite3.Connection) -> tuple[int, int]:
            chats = c.execute(
                "SELECT count(*) FROM chats WHERE home = ?", (peer.node_id,)
            ).fetchone()[0]
            outbox = c.execute(
                "SELECT count(*) FROM fed_outbox WHERE home = ?", (peer.node_id,)
            ).fetchone()[0]
            return int(chats), int(outbox)

        chats, outbox = await self.db.read(counts)
        usage = await self.secret.usage(peer.node_id)
        return {
            **usage,
            "node_id": peer.node_id,
            "name": peer.name,
            "url": peer.url,
            "state": peer.state,
            "link": link.state if link else "down",
            "first_seen": peer.first_seen,
            "last_seen": peer.last_seen,
            "replicated_chats": chats,
            "since": link.since if link else None,
            "lag": sum(link.lag.values()) if link else 0,
            "relayed": link.relayed if link else 0,
            "outbox": outbox,
            "last_error": (link.last_error if link else None) or peer.last_error,
        }


class RemoteUser:
    """The caller of a call a peer makes for one of its users (fed.act): a signed-in user
    without a session of its own here (pushes to it go nowhere: its node has the
    replica and pushes to its sessions)."""

    role = "client"
    transcript_hash = b""
    peer_identity: bytes | None = None
    device_id: int | None = None
    device_name = ""

    def __init__(self, user_id: int, link: Caller) -> None:
        self.user_id: int | None = user_id
        self.id = link.id
        self.ip = link.ip

    def push(self, updates: Any) -> bool:
        return False

    def resync(self) -> None:
        return None

    def close(self, reason: ErrorCode) -> None:
        return None


def _discovered_info(seen: Seen) -> dict[str, Any]:
    return {
        "node_id": seen.node_id,
        "name": seen.name,
        "url": seen.url,
        "state": "discovered",
        "link": "down",
        "first_seen": seen.first_seen,
        "last_seen": seen.last_seen,
        "replicated_chats": 0,
        "since": None,
        "lag": 0,
        "relayed": 0,
        "secret_relayed_for": 0,
        "secret_relayed_by": 0,
        "outbox": 0,
        "last_error": None,
    }


def _dialable(url: object) -> str | None:
    """A node URL this node can dial (ws:// or wss://, a host, a port), else None."""
    from node.client.errors import UrlInvalid
    from node.client.urls import check_url

    if not isinstance(url, str):
        return None
    try:
        return check_url(url)
    except UrlInvalid:
        return None


def _sender_of(c: sqlite3.Connection, peer: peers.Peer, post: dict[str, Any]) -> int:
    """The posting user: one of the calling node's own users, known here."""
    try:
        a = Address.parse(str(post.get("sender")))
    except AddressError:
        raise RpcError(ErrorCode.NOT_A_REPLICA, "sender is not an address") from None
    if a.node != peer.node_id:
        raise RpcError(ErrorCode.NOT_A_REPLICA, "a node posts only for its own users")
    row = c.execute(
        "SELECT id FROM users WHERE name = ? AND node = ?", (a.name, peer.row)
    ).fetchone()
    if row is None:
        raise RpcError(ErrorCode.NOT_A_REPLICA, f"{a.name} is not a member here")
    return int(row[0])


def _chat(c: sqlite3.Connection, chat_id: str) -> chat_store.Chat | None:
    return chat_store.get_chat(c, chat_id)


def _replicas(c: sqlite3.Connection, chat_id: str) -> set[str]:
    return replication.replica_nodes(c, chat_id)


@contextlib.asynccontextmanager
async def _plain_rpc_errors() -> AsyncIterator[None]:
    """An RpcError from a nursery's tasks (a pull that timed out, a batch that does not
    verify) leaves as itself, not inside an ExceptionGroup: callers (the link's guard)
    tell a peer's failure from a bug by ``except RpcError``."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        first = next((e for e in leaves if isinstance(e, RpcError)), None)
        if first is not None and all(isinstance(e, RpcError | trio.Cancelled) for e in leaves):
            raise first from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for e in group.exceptions:
        if isinstance(e, BaseExceptionGroup):
            yield from _leaves(e)
        else:
            yield e


def _shared_chats(c: sqlite3.Connection, peer_row: int, homes: set[str]) -> list[tuple[str, int]]:
    """Chats homed on one of ``homes`` in which the peer has members: (chat, our head)."""
    marks = ",".join("?" * len(homes))
    rows = c.execute(
        "SELECT DISTINCT ch.id, ch.last_seq FROM chats ch JOIN chat_members m "
        "ON m.chat_id = ch.id JOIN users u ON u.id = m.user_id "
        f"WHERE u.node = ? AND m.state = 'member' AND ch.home IN ({marks})",
        (peer_row, *homes),
    ).fetchall()
    return [(str(r[0]), int(r[1])) for r in rows]


def _address(c: sqlite3.Connection, user_id: int) -> str | None:
    return replication.user_address(c, user_id)
