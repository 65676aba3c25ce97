"""Secret chats on this device: the SDK over the crypto (``ratchet``, ``prekeys``, ``files``)
and the node's ciphertext queues (``secret.*``, docs/secret-chats.md §3, §6).

    sc = SecretChats(client, profile, device_key)
    await sc.ensure_keys()                 # publish prekeys so others can start chats
    chat = await sc.start("bob@n2")        # a request to each of bob's devices
    await sc.send(chat, "hi", ttl=30)      # usable at once; self-destructs 30 s after read
    async with trio.open_nursery() as n:
        n.start_soon(sc.listen)            # consume secret.item pushes
        ev = await sc.next_event(10)       # {"type": "message", ...}

Why it is built this way:

* The chat lives only here (``store.SecretStore``, ``secret.db`` in the profile). The node
  holds ciphertext until we acknowledge it, so an item is acknowledged only after the
  transaction recording its effect has committed: acknowledged-on-device means durable.
* Every envelope we produce is written to the store's out-queue in the same transaction as
  the ratchet state that produced it, then sent; a crash in between sends it again with the
  same id (``secret.send`` is idempotent per id) and never reuses a message key.
* A request goes to every device of the peer (a session per device, ``candidates``); the
  first device to answer "accept" is bound, the others get "taken". Messages sent before
  that go to every candidate, so the chat is usable before the peer is online.
* What arrives and does not open (tampered, replayed, too far out of order) is reported as
  an ``error`` event and never becomes a message.
* Inner plaintext is a CBOR map ``{"t": kind, ...}``; kinds: request, accept, taken, text,
  file, delivered, read, delete, typing, close. The node sees none of it.
"""

from __future__ import annotations

import builtins
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import trio
from nacl.signing import SigningKey

from ...protocol.errors import ErrorCode, RpcError
from ..connection import Client
from ..errors import ClientError, FileError
from ..profile import Profile
from . import files, prekeys, ratchet
from .errors import Replayed, SecretError, Tampered, UnknownPrekey
from .store import ChatRow, SecretStore

ONE_TIME_BATCH = 100  # one-time prekeys per publish (the node takes at most 100 a call)
ONE_TIME_LOW = 25  # refill below this many unused on the node
SPK_ROTATE = 7 * 86400.0  # a new signed prekey each week
SPK_KEEP = 30 * 86400.0  # old signed-prekey privates kept this long (requests in flight)
FETCH_LIMIT = 100
CALL_TIMEOUT = 30.0
EVENT_BUFFER = 100_000
WAKE_MAX = 30.0  # listen re-fetches at least this often even without a push
UPLOAD_NAME = ""  # the node learns no file name: the real one travels inside the message
UPLOAD_MIME = "application/octet-stream"

# the order errors are reported in when several sessions fail to open an envelope: the most
# specific (a replay on the right session beats "does not authenticate" on the others)
_ERROR_RANK = {"SECRET_REPLAYED": 3, "SECRET_OUT_OF_WINDOW": 2, "SECRET_PREKEY_UNKNOWN": 1}


_WAITING = ("queued", "sent")  # an outgoing message not yet known to have arrived


class SecretChatError(ClientError):
    """A secret-chat operation that cannot be done (no such chat, closed, not accepted)."""


def _now() -> float:
    return time.time()


def _new_id() -> int:
    return secrets.randbits(63) or 1


def _encode(inner: dict[str, Any]) -> bytes:
    data: bytes = cbor2.dumps(inner)
    return data


def _decode(plain: bytes) -> dict[str, Any]:
    try:
        inner = cbor2.loads(plain)
    except Exception as e:
        raise Tampered("inner message is not CBOR") from e
    if not isinstance(inner, dict) or not isinstance(inner.get("t"), str):
        raise Tampered("inner message has no type")
    return inner


def _ids(inner: dict[str, Any]) -> list[int]:
    ids = inner.get("ids")
    if not isinstance(ids, list):
        return []
    return [i for i in ids if isinstance(i, int) and not isinstance(i, bool)][:10_000]


def _encrypt_to(src: Path, dst: Path) -> dict[str, Any]:
    """Thread: encrypt a file to a new owner-only file; returns the meta."""
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
        return files.encrypt_stream(fin, fout)


def _decrypt_to(src: Path, dest: Path, meta: dict[str, Any]) -> int:
    """Thread: decrypt into ``dest.part`` (0600), fsync, rename; nothing left on failure."""
    part = dest.with_name(dest.name + ".part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            size = files.decrypt_stream(fin, fout, meta)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return size


def public_message(m: dict[str, Any]) -> dict[str, Any]:
    """A message as shown to the user and printed by the CLI: the file key stays inside."""
    out = dict(m)
    if out.get("file"):
        out["file"] = {k: v for k, v in out["file"].items() if k != "meta"}
    return out


class SecretChats:
    """This device's secret chats over a signed-in :class:`Client`.

    ``profile``: the profile folder (or :class:`Profile`) whose ``secret.db`` holds the
    chats; ``device_key``: the key this device signed in with (its identity in every chat).
    ``me``/``device_id``: this device's address (as ``auth.signIn`` returned it) and id,
    asked of the node on first need when not given.
    """

    def __init__(
        self,
        client: Client,
        profile: Profile | Path,
        device_key: SigningKey,
        *,
        me: str | None = None,
        device_id: int | None = None,
    ) -> None:
        self.client = client
        folder = profile.path if isinstance(profile, Profile) else Path(profile)
        self.store = SecretStore(folder)
        self.key = device_key
        self.me = me
        self.device_id = device_id
        self._flush_lock = trio.Lock()
        self._process_lock = trio.Lock()
        self._events_send, self._events_recv = trio.open_memory_channel[dict[str, Any]](
            EVENT_BUFFER
        )
        self.events_dropped = 0  # events nobody read before the buffer filled
        self._wake = trio.Event()

    def close_store(self) -> None:
        """Close the store (the SDK object is unusable afterwards)."""
        self.store.close()

    # --- identity and keys ----------------------------------------------------------------
    async def whoami(self) -> tuple[str, int]:
        """This device's address (as the node shows addresses to clients, the form the
        ``from`` of secret items and ``secret.getKeys`` use) and device id, asked once."""
        if self.me is None or self.device_id is None:
            prof = await self.client.call("account.getProfile", timeout=CALL_TIMEOUT)
            devs = await self.client.call("account.devices", timeout=CALL_TIMEOUT)
            self.me = str(prof["address"])
            self.device_id = next(d["device_id"] for d in devs["devices"] if d["current"])
        return self.me, self.device_id

    async def ensure_keys(self) -> dict[str, Any]:
        """Publish a signed prekey and one-time prekeys, refilling when few are left.

        The privates are committed to the store *before* the node learns the public
        halves: a crash in between leaves unused privates, never a published key whose
        private half is lost. Returns the node's ``secret.keysLeft`` after the refill."""
        left = await self.client.call("secret.keysLeft", timeout=CALL_TIMEOUT)
        spk_id = self.store.meta("spk_id")
        spk_made = self.store.meta("spk_made") or 0.0
        bundle_raw = self.store.meta("spk_bundle")
        rotate = (
            spk_id is None
            or bundle_raw is None
            or left.get("signed_prekey_id") != spk_id
            or _now() - float(spk_made) > SPK_ROTATE
        )
        one_time: builtins.list[dict[str, Any]] = []
        with self.store.tx() as c:
            if rotate:
                spk_id = int(self.store.meta("spk_next") or 1)
                private, bundle = prekeys.make_signed_prekey(self.key, spk_id)
                self.store.add_prekeys(c, "spk", {spk_id: private})
                self.store.set_meta(c, "spk_id", spk_id)
                self.store.set_meta(c, "spk_next", spk_id + 1)
                self.store.set_meta(c, "spk_made", _now())
                self.store.set_meta(c, "spk_bundle", _encode(bundle))
                self.store.drop_old_signed(c, spk_id, _now() - SPK_KEEP)
            else:
                bundle = cbor2.loads(bundle_raw)
            # a store that never published (new, or its file was lost) publishes a batch
            # even if the node still holds older one-time keys whose privates are not here
            if left["one_time_left"] < ONE_TIME_LOW or self.store.meta("otk_next") is None:
                start = int(self.store.meta("otk_next") or 1)
                privates, one_time = prekeys.make_one_time(start, ONE_TIME_BATCH)
                self.store.add_prekeys(c, "otk", privates)
                self.store.set_meta(c, "otk_next", start + ONE_TIME_BATCH)
        if rotate or one_time:
            r = await self.client.call(
                "secret.publishKeys",
                {"signed_prekey": bundle, "one_time": one_time},
                timeout=CALL_TIMEOUT,
            )
            return {"one_time_left": r["one_time_left"], "signed_prekey_id": spk_id}
        return dict(left)

    # --- starting and accepting -----------------------------------------------------------
    async def start(self, address: str, ttl: int | None = None) -> str:
        """Request a secret chat with every device of ``address``; returns the chat id.

        The chat can be written to at once (messages go to every device until one accepts).
        ``ttl``: a default self-destruct timer (seconds) for messages sent in it."""
        me, my_device = await self.whoami()
        await self.ensure_keys()  # the peer answers with a first envelope to our keys' owner
        keys = await self.client.call(
            "secret.getKeys", {"user": address.lstrip("@")}, timeout=CALL_TIMEOUT
        )
        peer: str = keys["user"]
        sessions: dict[int, bytes] = {}
        for dev in keys["devices"]:
            if peer.lower() == me.lower() and dev["device"] == my_device:
                continue
            try:
                s = ratchet.Session.initiate(
                    self.key, dev["key"], dev["signed_prekey"], dev.get("one_time")
                )
            except SecretError:
                continue  # a forged or broken bundle: that device is left out
            sessions[dev["device"]] = s.to_bytes()
        if not sessions:
            raise SecretChatError(
                f"{peer} has no device that takes secret chats (none has published keys); "
                "they need to open the app once"
            )
        chat_id = secrets.token_hex(8)
        now = _now()
        with self.store.tx() as c:
            self.store.add_chat(
                c,
                ChatRow(chat_id, peer, None, "initiator", "requested", None, ttl, None, None,
                        now, now),
            )  # fmt: skip
            for device, blob in sessions.items():
                self.store.add_candidate(c, chat_id, device, blob)
            self._encrypt(c, self.store.chat(chat_id), {"t": "request", "chat": chat_id})
        await self.flush()
        return chat_id

    async def accept(self, chat_id: str) -> dict[str, Any]:
        """Accept an incoming request (this device becomes the chat's device)."""
        chat = self._chat(chat_id)
        if chat.state != "incoming":
            raise SecretChatError(f"secret chat {chat_id} is {chat.state}, not a request")
        # the request proved only that its sender holds *some* device key: check it is the
        # one the node lists for that device (the fingerprint then covers the node too)
        assert chat.session is not None
        claimed = ratchet.Session.from_bytes(chat.session).peer_device_pub
        keys = await self.client.call("secret.getKeys", {"user": chat.peer}, timeout=CALL_TIMEOUT)
        listed = {int(d["device"]): bytes(d["key"]) for d in keys["devices"]}
        if listed.get(int(chat.peer_device or 0)) != claimed:
            why = "the request's device key is not the one the node lists for that device"
            with self.store.tx() as c:
                self._close(c, chat_id, why)
            raise SecretChatError(f"secret chat {chat_id} refused: {why}")
        with self.store.tx() as c:
            self.store.update_chat(c, chat_id, state="active")
            self._encrypt(c, self.store.chat(chat_id), {"t": "accept"})
        await self.flush()
        return self._chat(chat_id).public()

    # --- sending --------------------------------------------------------------------------
    async def send(self, chat_id: str, text: str, ttl: int | None = None) -> dict[str, Any]:
        """Send a text; returns the stored message (state ``sent``, or ``queued`` when the
        node could not take it yet: it goes with the next flush)."""
        chat = self._writable(chat_id)
        ttl = ttl if ttl is not None else chat.ttl
        mid = _new_id()
        inner: dict[str, Any] = {"t": "text", "m": mid, "text": text, "at": _now()}
        if ttl:
            inner["ttl"] = int(ttl)
        with self.store.tx() as c:
            self.store.add_message(c, chat_id, mid, True, "text", text, None, ttl, inner["at"],
                                   "queued")  # fmt: skip
            self._encrypt(c, chat, inner, mid)
        await self.flush()
        return self._message(chat_id, mid, True)

    async def send_file(
        self,
        chat_id: str,
        path: Path,
        ttl: int | None = None,
        mime: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Encrypt a file with a one-time key, upload the ciphertext through the media path
        (the node stores opaque bytes under no name), then send the media id and the key in
        a secret message. The file is streamed (encrypted to a temporary file in the
        profile, then uploaded in parallel parts), so its size costs no memory."""
        chat = self._writable(chat_id)
        from ..media import guess_mime, upload_file

        enc = self._temp(".enc")
        try:
            try:
                size = path.stat().st_size
                meta = await trio.to_thread.run_sync(_encrypt_to, path, enc)
            except OSError as e:
                raise FileError(f"cannot read {path}: {e.strerror or e}") from None
            media = await upload_file(
                self.client,
                enc,
                secrets.token_hex(12),
                mime=UPLOAD_MIME,
                name=UPLOAD_NAME,
                opaque=True,  # readable by whoever names its SHA-256: the recipient
                progress=progress,
            )
        finally:
            enc.unlink(missing_ok=True)
        ttl = ttl if ttl is not None else chat.ttl
        mid = _new_id()
        desc = {
            "name": path.name,
            "mime": mime or guess_mime(path),
            "size": size,
            "media_id": media["media_id"],
            "media_sha256": media["sha256"],
            "media_size": media["size"],
            "node": self.client.node_id,  # where the ciphertext is: the recipient's node
            "meta": meta,  # fetches it from there if it is another
        }
        inner: dict[str, Any] = {"t": "file", "m": mid, "file": desc, "at": _now()}
        if ttl:
            inner["ttl"] = int(ttl)
        with self.store.tx() as c:
            self.store.add_message(c, chat_id, mid, True, "file", None, desc, ttl, inner["at"],
                                   "queued")  # fmt: skip
            self._encrypt(c, chat, inner, mid)
        await self.flush()
        return self._message(chat_id, mid, True)

    async def download(
        self,
        chat_id: str,
        msg_id: int,
        dest: Path,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Fetch a file message's ciphertext by its content address
        (``media.downloadSecret``: the SHA-256 in the message is the grant; from the
        sender's node through one's own if they differ; verified), decrypt it into ``dest``
        (owner-only, through ``dest.part`` and renamed: a tampered file never appears
        there); returns its size."""
        m = self.store.find_message(chat_id, msg_id)
        if m is None or m["kind"] != "file" or not m["file"]:
            raise SecretChatError(f"no file message {msg_id} in secret chat {chat_id}")
        f = m["file"]
        from ..media import check_destination, download_secret_file

        check_destination(dest)
        node = f.get("node")
        enc = self._temp(".enc")
        try:
            await download_secret_file(
                self.client,
                str(f["media_sha256"]),
                int(f["media_size"]),
                enc,
                node if isinstance(node, str) and node != self.client.node_id else None,
                progress=progress,
            )
            return await trio.to_thread.run_sync(_decrypt_to, enc, dest, f["meta"])
        finally:
            enc.unlink(missing_ok=True)
            enc.with_name(enc.name + ".part").unlink(missing_ok=True)

    async def download_bytes(self, chat_id: str, msg_id: int) -> bytes:
        """A file message's plaintext in memory (small files)."""
        out = self._temp(".plain")
        try:
            await self.download(chat_id, msg_id, out)
            return await trio.to_thread.run_sync(out.read_bytes)
        finally:
            out.unlink(missing_ok=True)

    def _temp(self, suffix: str) -> Path:
        """A fresh path in the profile's private folder for a file in transit."""
        folder = self.store.path.parent / "secret-files"
        folder.mkdir(mode=0o700, exist_ok=True)
        return folder / (secrets.token_hex(8) + suffix)

    async def typing(self, chat_id: str) -> None:
        """Tell the peer this side is typing (not stored anywhere)."""
        chat = self._writable(chat_id)
        with self.store.tx() as c:
            self._encrypt(c, chat, {"t": "typing"})
        await self.flush()

    async def mark_read(self, chat_id: str) -> builtins.list[int]:
        """Mark what arrived as read and tell the peer; messages with a timer start their
        countdown now (they are deleted on both devices at read + ttl)."""
        chat = self._chat(chat_id)
        unread = self.store.unread_in(chat_id)
        if not unread:
            return []
        now = _now()
        with self.store.tx() as c:
            self.store.mark_read(c, chat_id, unread, False, now)
            if chat.state == "active":
                self._encrypt(c, chat, {"t": "read", "ids": unread, "at": now})
        await self.flush()
        return unread

    async def delete_for_both(self, chat_id: str, msg_id: int) -> None:
        """Delete a message (either side's) here and on the peer's device."""
        chat = self._writable(chat_id)
        if self.store.find_message(chat_id, msg_id) is None:
            raise SecretChatError(f"no message {msg_id} in secret chat {chat_id}")
        with self.store.tx() as c:
            self.store.wipe(c, chat_id, [msg_id], "deleted")
            self._encrypt(c, chat, {"t": "delete", "ids": [msg_id]})
        self.store.forget_wiped()
        await self.flush()

    async def close(self, chat_id: str) -> dict[str, Any]:
        """End the chat on both devices; its keys are destroyed here at once (the history
        stays until deleted)."""
        chat = self._chat(chat_id)
        if chat.state in ("closed", "taken"):
            return chat.public()
        with self.store.tx() as c:
            if chat.state in ("active", "requested", "incoming"):
                self._encrypt(c, chat, {"t": "close"})
            self._close(c, chat_id, "closed here")
        self.store.forget_wiped()
        await self.flush()
        return self._chat(chat_id).public()

    # --- reading --------------------------------------------------------------------------
    def list(self) -> builtins.list[dict[str, Any]]:
        """All secret chats on this device, most recently changed first."""
        self.purge()
        out = []
        for chat in self.store.chats():
            d = chat.public()
            hist = self.store.history(chat.id, 1)
            d["last"] = public_message(hist[0]) if hist else None
            d["unread"] = len(self.store.unread_in(chat.id))
            out.append(d)
        return out

    def chat(self, chat_id: str) -> dict[str, Any]:
        return self._chat(chat_id).public()

    def history(self, chat_id: str, limit: int | None = None) -> builtins.list[dict[str, Any]]:
        """The chat's messages, oldest first, self-destructed ones already wiped."""
        self._chat(chat_id)
        self.purge()
        return [public_message(m) for m in self.store.history(chat_id, limit)]

    def message_id(self, chat_id: str, ref: int) -> int:
        """A message's id from what a person typed: its id, or its local number (``seq``,
        the short one the CLI's history shows)."""
        self._chat(chat_id)
        m = self.store.find_message(chat_id, ref) or self.store.by_seq(chat_id, ref)
        if m is None:
            raise SecretChatError(f"no message {ref} in secret chat {chat_id}")
        return int(m["id"])

    def verify(self, chat_id: str) -> str:
        """The chat's safety number: compare it with the peer's out of band."""
        chat = self._chat(chat_id)
        if chat.fingerprint:
            return chat.fingerprint
        blob = chat.session
        if blob is None:
            cands = self.store.candidates(chat_id)
            if len(cands) != 1:
                raise SecretChatError(
                    f"secret chat {chat_id} has no device bound yet: verify once accepted"
                )
            blob = next(iter(cands.values()))
        return ratchet.Session.from_bytes(blob).fingerprint()

    def purge(self, now: float | None = None) -> builtins.list[dict[str, Any]]:
        """Wipe messages whose self-destruct time has come; returns the events."""
        due = self.store.due(now if now is not None else _now())
        events = []
        if due:
            with self.store.tx() as c:
                for chat_id, mids in due.items():
                    gone = self.store.wipe(c, chat_id, mids, "deleted")
                    if gone:
                        events.append({"type": "destroyed", "chat": chat_id, "ids": gone})
        if events:
            self.store.forget_wiped()
        for ev in events:
            self._emit(ev)
        return events

    # --- receiving ------------------------------------------------------------------------
    async def sync(self) -> builtins.list[dict[str, Any]]:
        """Send what waits in the out-queue, then fetch and process all that waits on the
        node for this device; returns the events (also queued for :meth:`next_event`)."""
        await self.flush()
        events: builtins.list[dict[str, Any]] = []
        while True:
            r = await self.client.call("secret.fetch", {"limit": FETCH_LIMIT}, timeout=CALL_TIMEOUT)
            items = r["items"]
            if not items:
                break
            events.extend(await self.process(items))
        events.extend(self.purge())
        return events

    async def process(
        self, items: dict[str, Any] | builtins.list[dict[str, Any]]
    ) -> builtins.list[dict[str, Any]]:
        """Process ``secret.item`` updates (or ``secret.fetch`` items): decrypt, store, and
        only then acknowledge them to the node. Returns the events they caused."""
        batch = [items] if isinstance(items, dict) else list(items)
        if not batch:
            return []
        await self.whoami()
        events: builtins.list[dict[str, Any]] = []
        async with self._process_lock:
            delivered: dict[str, builtins.list[int]] = {}
            acks: builtins.list[int] = []
            # one durable commit for the whole batch, then the ack
            with self.store.tx() as c:
                for item in batch:
                    events.extend(self._process_one(item, delivered))
                    acks.append(int(item["qid"]))
                for chat_id, mids in delivered.items():
                    chat = self.store.chat(chat_id)
                    if chat is not None and chat.state == "active":
                        self._encrypt(c, chat, {"t": "delivered", "ids": mids})
            # stored: show it now, even if the ack is lost (the node then delivers it again,
            # and it is recognised as seen and acknowledged quietly: shown once either way)
            for ev in events:
                self._emit(ev)
            await self.client.call("secret.ack", {"ids": acks}, timeout=CALL_TIMEOUT)
        if any(ev["type"] in ("deleted", "closed", "taken") for ev in events):
            self.store.forget_wiped()
        await self.flush()
        if any(ev["type"] == "request" for ev in events):
            await self.ensure_keys()  # a request used up a one-time prekey
        return events

    async def listen(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled: take ``secret.item`` pushes as wake-ups and fetch what
        waits (so items are processed in queue order, in batches), wipe self-destructed
        messages on time. Events go to :meth:`next_event` / :meth:`pending_events`.

        It reads the client's update stream (other updates are skipped): an app that reads
        the updates itself calls :meth:`process` with each ``secret.item`` instead."""
        await self.ensure_keys()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_updates)
            task_status.started()
            while True:
                self._wake = trio.Event()
                await self.sync()
                due = self.store.next_due()
                wait = WAKE_MAX if due is None else max(0.0, min(WAKE_MAX, due - _now()))
                with trio.move_on_after(wait):
                    await self._wake.wait()
                if self.client.closed:
                    raise RpcError(ErrorCode.CONNECTION_LOST, self.client.closed_reason or "closed")

    async def _watch_updates(self) -> None:
        async for u in self.client.updates():
            if u.get("type") == "secret.item":
                self._wake.set()
        self._wake.set()  # the connection ended: listen notices it

    async def next_event(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next event (message, request, accepted, read, error, ...)."""
        with trio.fail_after(timeout):
            return await self._events_recv.receive()

    def pending_events(self) -> builtins.list[dict[str, Any]]:
        """The events not read yet, without waiting."""
        out = []
        while True:
            try:
                out.append(self._events_recv.receive_nowait())
            except trio.WouldBlock:
                return out

    def _emit(self, ev: dict[str, Any]) -> None:
        try:
            self._events_send.send_nowait(ev)
        except trio.WouldBlock:
            self.events_dropped += 1

    # --- the out-queue --------------------------------------------------------------------
    async def flush(self) -> int:
        """Hand the out-queue's envelopes to the node, oldest first; returns how many. A
        device the node no longer has (``SECRET_DEVICE_GONE``) fails its messages; a full
        queue on the node leaves them queued here for the next flush."""
        sent = 0
        async with self._flush_lock:
            while True:
                rows = self.store.outq()
                if not rows:
                    return sent
                for n, chat_id, peer, device, env_id, payload, mid in rows:
                    try:
                        await self.client.call(
                            "secret.send",
                            {"to": peer, "device": device, "id": env_id, "payload": payload},
                            timeout=CALL_TIMEOUT,
                        )
                    except RpcError as e:
                        if e.code == ErrorCode.SECRET_QUEUE_FULL:
                            return sent
                        if e.code not in (ErrorCode.SECRET_DEVICE_GONE, ErrorCode.USER_NOT_FOUND):
                            raise
                        with self.store.tx() as c:
                            self.store.dequeue(c, n)
                            self._device_gone(c, chat_id, device, mid)
                        continue
                    with self.store.tx(durable=False) as c:  # resent if lost: idempotent
                        self.store.dequeue(c, n)
                        if mid is not None:
                            self.store.set_state(c, chat_id, [mid], True, "sent", ("queued",))
                    sent += 1

    def _device_gone(self, c: Any, chat_id: str, device: int, mid: int | None) -> None:
        """The node has no such live device any more: a candidate of a request is dropped
        (the request stands for the others); the chat's own device ends the chat."""
        chat = self.store.chat(chat_id)
        if chat is None or chat.state in ("closed", "taken"):
            return
        if chat.peer_device == device:
            if mid is not None:
                self.store.set_state(c, chat_id, [mid], True, "failed", _WAITING)
            self._close(c, chat_id, "the other device is gone")
            self._emit({"type": "closed", "chat": chat_id, "reason": "the other device is gone"})
            return
        c.execute("DELETE FROM candidates WHERE chat_id = ? AND device = ?", (chat_id, device))
        if chat.state == "requested" and not self.store.candidates(chat_id):
            if mid is not None:
                self.store.set_state(c, chat_id, [mid], True, "failed", _WAITING)
            self._close(c, chat_id, "no device of the peer is left")
            self._emit({"type": "closed", "chat": chat_id, "reason": "no device is left"})

    # --- internals ------------------------------------------------------------------------
    def _chat(self, chat_id: str) -> ChatRow:
        chat = self.store.chat(chat_id)
        if chat is None:
            raise SecretChatError(f"no secret chat {chat_id} on this device")
        return chat

    def _writable(self, chat_id: str) -> ChatRow:
        chat = self._chat(chat_id)
        if chat.state == "incoming":
            raise SecretChatError(
                f"secret chat {chat_id} is a request: accept it first (secret accept {chat_id})"
            )
        if chat.state not in ("active", "requested"):
            why = f" ({chat.reason})" if chat.reason else ""
            raise SecretChatError(f"secret chat {chat_id} is {chat.state}{why}")
        return chat

    def _message(self, chat_id: str, mid: int, out: bool) -> dict[str, Any]:
        m = self.store.message(chat_id, mid, out)
        assert m is not None
        return public_message(m)

    def _encrypt(
        self, c: Any, chat: ChatRow | None, inner: dict[str, Any], mid: int | None = None
    ) -> None:
        """Encrypt ``inner`` for the chat's device (or, while requested, each candidate)
        and queue the envelopes, saving the advanced sessions in the same transaction."""
        assert chat is not None
        plain = _encode(inner)
        if chat.session is not None and chat.peer_device is not None:
            s = ratchet.Session.from_bytes(chat.session)
            env = s.encrypt(plain)
            self.store.update_chat(c, chat.id, session=s.to_bytes())
            self.store.enqueue(c, chat.id, chat.peer, chat.peer_device, _new_id(), env, mid)
            return
        for device, blob in self.store.candidates(chat.id).items():
            s = ratchet.Session.from_bytes(blob)
            env = s.encrypt(plain)
            self.store.add_candidate(c, chat.id, device, s.to_bytes())
            self.store.enqueue(c, chat.id, chat.peer, device, _new_id(), env, mid)

    def _close(self, c: Any, chat_id: str, reason: str) -> None:
        self.store.update_chat(c, chat_id, state="closed", session=None, reason=reason)
        self.store.drop_candidates(c, chat_id)

    def _process_one(
        self, item: dict[str, Any], delivered: dict[str, builtins.list[int]]
    ) -> builtins.list[dict[str, Any]]:
        """One item: its effect is committed before this returns (the caller acks it)."""
        kind = item.get("kind")
        sender, device, env_id = str(item["from"]), int(item["device"]), int(item["id"])
        if kind == "message":
            if self.store.seen(sender, device, env_id):
                return []  # processed before a crash cut the ack short
            try:
                return self._open(sender, device, env_id, bytes(item["payload"]), delivered)
            except SecretError as e:
                with self.store.tx() as c:
                    self.store.mark_seen(c, sender, device, env_id)
                return [
                    {
                        "type": "error",
                        "error": e.code,
                        "message": str(e),
                        "from": sender,
                        "device": device,
                        "id": env_id,
                    }
                ]
        if kind == "revoked":
            return self._revoked(sender, device)
        if kind == "expired":
            return self._expired(sender, device, env_id, int(item.get("count") or 0))
        if kind == "failed":
            return self._failed(sender, device, env_id)
        return []

    def _open(
        self,
        sender: str,
        device: int,
        env_id: int,
        payload: bytes,
        delivered: dict[str, builtins.list[int]],
    ) -> builtins.list[dict[str, Any]]:
        """Find the session that opens the envelope (trial decryption: sessions are
        unchanged by a failed attempt), or start one from a new request."""
        header = ratchet.first_header(payload)  # Tampered if not an envelope at all
        errors: builtins.list[SecretError] = []
        for chat in self.store.chats_with(sender, device):
            blobs: builtins.list[tuple[int | None, bytes]] = []
            if chat.session is not None and chat.peer_device == device:
                blobs.append((None, chat.session))
            cand = self.store.candidates(chat.id).get(device)
            if cand is not None and chat.peer_device != device:
                blobs.append((device, cand))
            for which, blob in blobs:
                s = ratchet.Session.from_bytes(blob)
                if header is not None and (s.initiator or s.ephemeral != header["ek"]):
                    continue  # another request of the same device: not this session
                try:
                    plain = s.decrypt(payload)
                except SecretError as e:
                    errors.append(e)
                    continue
                return self._apply(chat, which, s, sender, device, env_id, plain, delivered)
        if header is not None and not any(isinstance(e, Replayed) for e in errors):
            return self._request(sender, device, env_id, payload, header)
        errors.sort(key=lambda e: _ERROR_RANK.get(e.code, 0), reverse=True)
        raise errors[0] if errors else Tampered("no secret chat with that device opens it")

    def _request(
        self, sender: str, device: int, env_id: int, payload: bytes, header: dict[str, Any]
    ) -> builtins.list[dict[str, Any]]:
        """A first envelope from a device we have no session with: a new request."""
        spk = self.store.prekey("spk", int(header["spk"]))
        if spk is None:
            raise UnknownPrekey(f"the request used signed prekey {header['spk']}, not here")
        otk = None
        if header["opk"] is not None:
            otk = self.store.prekey("otk", int(header["opk"]))
            if otk is None:
                raise UnknownPrekey(f"the request used one-time prekey {header['opk']}")
        s, plain = ratchet.Session.respond(self.key, spk, otk, payload)
        inner = _decode(plain)
        chat_id = inner.get("chat")
        if inner["t"] != "request" or not isinstance(chat_id, str) or not 1 <= len(chat_id) <= 64:
            raise Tampered("a first envelope that is not a chat request")
        if self.store.chat(chat_id) is not None:
            raise Replayed(f"a request for secret chat {chat_id}, which is here already")
        now = _now()
        with self.store.tx() as c:
            self.store.add_chat(
                c,
                ChatRow(chat_id, sender, device, "responder", "incoming", s.to_bytes(), None,
                        s.fingerprint(), None, now, now),
            )  # fmt: skip
            if header["opk"] is not None:
                self.store.drop_prekey(c, "otk", int(header["opk"]))
            self.store.mark_seen(c, sender, device, env_id)
        return [{"type": "request", "chat": chat_id, "peer": sender, "device": device,
                 "device_key": s.peer_device_pub.hex()}]  # fmt: skip

    def _apply(
        self,
        chat: ChatRow,
        candidate: int | None,
        s: ratchet.Session,
        sender: str,
        device: int,
        env_id: int,
        plain: bytes,
        delivered: dict[str, builtins.list[int]],
    ) -> builtins.list[dict[str, Any]]:
        """The effect of one opened inner message, committed with the session's new state."""
        events: builtins.list[dict[str, Any]] = []
        try:
            inner = _decode(plain)
        except SecretError as e:
            # it authenticated, so the peer device itself sent something we cannot read:
            # the session moves on (the key is spent), the user is told, nothing is shown
            inner = {"t": "?"}
            events.append({"type": "error", "error": e.code, "message": str(e),
                           "from": sender, "device": device, "id": env_id})  # fmt: skip
        t = inner["t"]
        cid = chat.id
        if s.last_gap:
            # earlier envelopes of this chat are missing (still awaited: their keys are kept
            # within the window; an "expired" notice says if the node dropped them)
            events.append({"type": "gap", "chat": cid, "missing": s.last_gap})
        with self.store.tx() as c:
            self.store.mark_seen(c, sender, device, env_id)
            if candidate is not None:
                self.store.add_candidate(c, cid, candidate, s.to_bytes())
            else:
                self.store.update_chat(c, cid, session=s.to_bytes())
            bound_elsewhere = chat.peer_device is not None and chat.peer_device != device
            if candidate is not None and (bound_elsewhere or chat.state == "closed"):
                # a late answer (or message) from a device that did not get the chat: it
                # was told "taken" when another device was bound; nothing else to do
                return events
            if t == "accept" and chat.state == "requested" and candidate is not None:
                events.extend(self._bind(c, chat, device, s))
            elif t == "taken" and chat.role == "responder":
                self.store.update_chat(c, cid, state="taken", session=None,
                                       reason="accepted on another device")  # fmt: skip
                self.store.wipe_chat(c, cid)
                events.append({"type": "taken", "chat": cid})
            elif t in ("text", "file"):
                events.extend(self._incoming(c, chat, inner, delivered))
            elif t == "delivered":
                ids = self.store.set_state(c, cid, _ids(inner), True, "delivered",
                                           ("queued", "sent"))  # fmt: skip
                if ids:
                    events.append({"type": "delivered", "chat": cid, "ids": ids})
            elif t == "read":
                at = inner.get("at")
                at = float(at) if isinstance(at, int | float) else _now()
                ids = self.store.mark_read(c, cid, _ids(inner), True, min(at, _now()))
                if ids:
                    events.append({"type": "read", "chat": cid, "ids": ids})
            elif t == "delete":
                ids = self.store.wipe(c, cid, _ids(inner), "deleted")
                if ids:
                    events.append({"type": "deleted", "chat": cid, "ids": ids})
            elif t == "typing":
                events.append({"type": "typing", "chat": cid, "peer": sender})
            elif t == "close":
                self._close(c, cid, "closed by the peer")
                events.append({"type": "closed", "chat": cid, "reason": "closed by the peer"})
        return events

    def _encrypt_to_candidate(
        self, c: Any, chat: ChatRow, device: int, inner: dict[str, Any]
    ) -> None:
        blob = self.store.candidates(chat.id).get(device)
        if blob is None:
            return
        s = ratchet.Session.from_bytes(blob)
        env = s.encrypt(_encode(inner))
        self.store.add_candidate(c, chat.id, device, s.to_bytes())
        self.store.enqueue(c, chat.id, chat.peer, device, _new_id(), env, None)

    def _bind(
        self, c: Any, chat: ChatRow, device: int, s: ratchet.Session
    ) -> builtins.list[dict[str, Any]]:
        """The first device to accept gets the chat; every other candidate is told."""
        others = [d for d in self.store.candidates(chat.id) if d != device]
        for other in others:
            self._encrypt_to_candidate(c, chat, other, {"t": "taken"})
        # the bound device's session lives in the chat row from now on: its copy as a
        # candidate must go (a stale state would open replays of later envelopes); the
        # others' stay, only to recognise their late answers
        c.execute("DELETE FROM candidates WHERE chat_id = ? AND device = ?", (chat.id, device))
        self.store.update_chat(
            c, chat.id, state="active", peer_device=device, session=s.to_bytes(),
            fingerprint=s.fingerprint(),
        )  # fmt: skip
        return [{"type": "accepted", "chat": chat.id, "device": device, "others": others}]

    def _incoming(
        self, c: Any, chat: ChatRow, inner: dict[str, Any], delivered: dict[str, builtins.list[int]]
    ) -> builtins.list[dict[str, Any]]:
        mid = inner.get("m")
        if not isinstance(mid, int) or isinstance(mid, bool):
            return []
        ttl = inner.get("ttl")
        ttl = int(ttl) if isinstance(ttl, int) and not isinstance(ttl, bool) and ttl > 0 else None
        at = inner.get("at")
        sent = float(at) if isinstance(at, int | float) else _now()
        text, desc = None, None
        if inner["t"] == "text":
            text = str(inner.get("text", ""))
        else:
            f = inner.get("file")
            if not isinstance(f, dict) or not isinstance(f.get("meta"), dict):
                return []
            desc = {
                k: f.get(k)
                for k in (
                    "name",
                    "mime",
                    "size",
                    "media_id",
                    "media_sha256",
                    "media_size",
                    "node",
                    "meta",
                )
            }
        if not self.store.add_message(c, chat.id, mid, False, inner["t"], text, desc, ttl, sent,
                                      "received"):  # fmt: skip
            return []
        delivered.setdefault(chat.id, []).append(mid)
        m = self.store.message(chat.id, mid, False)
        assert m is not None
        return [{"type": "message", "chat": chat.id, "message": public_message(m)}]

    def _revoked(self, sender: str, device: int) -> builtins.list[dict[str, Any]]:
        events = []
        with self.store.tx() as c:
            for chat in self.store.chats_with(sender, device):
                if chat.peer_device == device:
                    self._close(c, chat.id, "the other device was revoked")
                    events.append(
                        {"type": "closed", "chat": chat.id, "reason": "the other device was "
                         "revoked"}
                    )  # fmt: skip
                elif chat.state == "requested":
                    c.execute(
                        "DELETE FROM candidates WHERE chat_id = ? AND device = ?",
                        (chat.id, device),
                    )
                    if not self.store.candidates(chat.id):
                        self._close(c, chat.id, "every device of the peer was revoked")
                        why = "every device of the peer was revoked"
                        events.append({"type": "closed", "chat": chat.id, "reason": why})
        return events

    def _expired(
        self, sender: str, device: int, env_id: int, count: int
    ) -> builtins.list[dict[str, Any]]:
        """Messages the node dropped after its TTL: ours (sent, never fetched) are marked
        expired; theirs are lost, which the user is told of in the history."""
        known = self.store.envelope(env_id) if env_id else None
        events = []
        with self.store.tx() as c:
            if known is not None:
                # ours: the last of ``count`` messages that waited too long for the peer
                chat_id, mid = known
                ids = []
                if mid is not None:
                    ids = self.store.set_state(c, chat_id, [mid], True, "expired", _WAITING)
                older = [x for x in self.store.oldest_sent(chat_id, count) if x != mid]
                ids += self.store.set_state(c, chat_id, older[: max(0, count - len(ids))],
                                            True, "expired", _WAITING)  # fmt: skip
                events.append({"type": "expired", "chat": chat_id, "direction": "out",
                               "ids": ids, "count": max(count, len(ids))})  # fmt: skip
                return events
            for chat in self.store.chats_with(sender, device):
                if chat.peer_device != device:
                    continue
                lost = max(count, 1)
                self.store.add_message(
                    c, chat.id, _new_id(), False, "notice",
                    f"{lost} message(s) from {sender} expired on the node before this device "
                    "fetched them", None, None, _now(), "notice",
                )  # fmt: skip
                events.append({"type": "expired", "chat": chat.id, "direction": "in",
                               "count": lost})  # fmt: skip
                break
        return events

    def _failed(self, sender: str, device: int, env_id: int) -> builtins.list[dict[str, Any]]:
        known = self.store.envelope(env_id) if env_id else None
        if known is None:
            return []
        chat_id, mid = known
        with self.store.tx() as c:
            ids = self.store.set_state(c, chat_id, [mid], True, "failed") if mid else []
        return [{"type": "failed", "chat": chat_id, "ids": ids, "id": env_id}]


__all__ = ["SecretChatError", "SecretChats", "public_message"]
