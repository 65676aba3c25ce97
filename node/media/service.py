"""Media: chunked, resumable uploads; verified, content-addressed, deduplicated storage;
authorized ranged downloads; expiry and garbage collection.

Nothing here reads file content except to hash it and to sniff image dimensions, so secret
chats can later upload client-side-encrypted files through the same path. Disk I/O and
hashing run in threads; the event loop only moves bytes between frames and threads.

Modules: ``store`` (SQL), ``files`` (the media folder, blocking, run in threads), ``guard``
(a part write never overlaps its upload's completion), ``budget`` (quota and the cap on
uploads in progress, checked before a part touches the disk, without a read per part).

Files of other nodes: a message replicated here names its attachments by content address;
the chat log makes a media row for one this node lacks (store.refer), so readers get a
media id at once. The first ``media.info``/``media.download`` of it by a reader makes the
node fetch the bytes through federation (``remote.fetch_media``, i.e. ``fed.media``): from
the chat's home first, then from the sender's node, in parts of ``FETCH_PART`` bytes kept on
disk as they come (a cut fetch resumes), verified (size and SHA-256: a peer is trusted for
nothing it cannot prove) before the file is placed in the store, where it is then served
like any other. Readers asking meanwhile share the one fetch; each waits at most
``[media] fetch_wait`` seconds (default 20), then gets MEDIA_FETCHING (retry_after) while
it goes on.

Secret files (docs/secret-chats.md 6.6): ``media.complete`` with ``opaque`` records that
the uploader encrypted the bytes on the device under a one-time key. Such a file is read
by its content address with ``media.downloadSecret`` by any signed-in user: the SHA-256 of
that ciphertext is a capability nobody can guess, carried to the recipient inside the
secret message with the key. Its recipient on another node names the uploader's node; this
node fetches the file from there the same way (``fed.media``, which serves an opaque file
to any approved peer), verified, and keeps it under an opaque row of its own. An ordinary
file never becomes readable by hash: no opaque row is made for bytes an ordinary row names,
and every refusal is the same MEDIA_NOT_FOUND.

Garbage: an unfinished upload lives ``upload_ttl`` from its first part. A finished media
row older than ``upload_ttl`` that no readable message carries (never attached, or only by
messages deleted for everyone) is dropped; an opaque row, which no message ever carries,
lives ``[secret] ttl`` (its key waits that long in a device's queue), at least
``upload_ttl``. A file goes once no media row names its hash.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import trio

from .. import bigbuffers, log
from ..config import Config
from ..interfaces import CallContext, Federated, Storage
from ..protocol.codec import Blob
from ..protocol.errors import ErrorCode, RpcError
from ..rpc import Router
from . import files, store
from .budget import Budgets
from .guard import Completing, UploadGuards

Params = dict[str, Any]
_log = log.get("media")
IO_THREADS = 8  # concurrent part writes/reads; each holds at most one part in memory
# uploads one user may have in progress: each is a file and rows for upload_ttl, and empty
# parts cost no quota, so without a cap they could pile up unbounded
MAX_UPLOADS_PER_USER = 1000
FETCH_PART = 512 * 1024  # a fed.media range (its schema's cap)
FETCH_RETRY_AFTER = 2.0


class _Upload:
    """What this process keeps of an upload in progress between its parts: the running hash
    (files.RunningHash) and the group sync of its file.

    Group sync: parts in flight are written to the same file, and one fdatasync after their
    writes makes them all durable, so a part waits for a sync that *started* after its write
    ended (begun by itself or by another part) instead of each paying its own (measured on
    this box: fdatasync per MiB 150-184 MB/s, per 4 MiB 342 MB/s). It runs in the part's
    worker thread, right after its write: one thread hop per part (each hop cost the event
    loop ~10% of its samples in a profile of the upload). Generations: ``_started`` counts
    syncs begun, ``_done`` the last one that succeeded."""

    def __init__(self, part_size: int) -> None:
        self.hash = files.RunningHash(part_size)
        self._cv = threading.Condition()
        self._started = 0
        self._done = 0
        self._syncing = False

    def sync(self, path: Path) -> None:
        """In a worker thread, after this thread's write: return once a sync begun after
        the call has made ``path`` durable (raises what that thread's own sync raised; a
        failed sync of another thread is retried)."""
        with self._cv:
            target = self._started + 1
            while self._done < target:
                if self._syncing:
                    self._cv.wait()
                    continue
                self._syncing = True
                self._started += 1
                gen = self._started
                ok = False
                self._cv.release()  # the others wait on the condition, not the fdatasync
                try:
                    files.sync_file(path)
                    ok = True
                finally:
                    self._cv.acquire()
                    self._syncing = False
                    if ok:
                        self._done = max(self._done, gen)
                    self._cv.notify_all()


class _Fetch:
    """One fetch of a file in progress, shared by every reader asking for it meanwhile."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: RpcError | None = None


def _no_secret() -> RpcError:
    """The one answer for every hash media.downloadSecret will not serve: absent, an
    ordinary file's, or not served by the node named; it tells none of them apart."""
    return RpcError(
        ErrorCode.MEDIA_NOT_FOUND, "no secret file with this SHA-256 and size is available"
    )


def _uid(ctx: CallContext) -> int:
    assert ctx.session is not None and ctx.session.user_id is not None
    return ctx.session.user_id


class Media:
    def __init__(self, config: Config, db: Storage) -> None:
        bigbuffers.tune()  # parts and chunks are ~1 MiB buffers: no mmap + page faults each
        self.db = db
        cfg = config
        self.root: Path = cfg.media_dir
        self.part_size = int(cfg.get("media", "part_max_bytes"))
        self.file_max = int(cfg.get("media", "file_max_bytes"))
        self.quota = int(cfg.get("media", "quota_bytes"))
        self.upload_ttl = float(cfg.get("media", "upload_ttl"))
        # an opaque file's key travels in a secret envelope that waits up to [secret] ttl for
        # its device: the file must outlive it (and never live less than a plain upload)
        self.opaque_ttl = max(self.upload_ttl, float(cfg.get("secret", "ttl")))
        self.gc_interval = float(cfg.get("media", "gc_interval"))
        self.chunk_max = int(cfg.get("media", "download_chunk_max"))
        # how long a reader's call waits for a fetch before MEDIA_FETCHING: under the SDK's
        # default call timeout (30 s), so a client hears a clear, retryable answer, not TIMEOUT
        self.fetch_wait = float(cfg.get("media", "fetch_wait"))
        self._io = trio.CapacityLimiter(IO_THREADS)
        self._gc_lock = trio.Lock()
        self._guards = UploadGuards()
        self._budgets = Budgets(self.quota, MAX_UPLOADS_PER_USER)
        # uploads with parts written by this process (dropped at complete and by the gc;
        # losing one costs only speed: complete then hashes the whole file)
        self._uploads: dict[tuple[int, str], _Upload] = {}
        # filled when federation is attached (it wires the node's remote slot here): where
        # files this node lacks come from
        self.remote: Federated | None = None
        self._fetches: dict[str, _Fetch] = {}  # sha256 hex -> its fetch in progress
        self._present: set[str] = set()  # blobs known on disk (saves a stat per chunk)
        self._nursery: trio.Nursery | None = None  # fetches outlive the call that began them

    def register(self, router: Router) -> None:
        for name, fn in {
            "media.uploadPart": self.upload_part,
            "media.uploadStatus": self.upload_status,
            "media.complete": self.complete,
            "media.info": self.info,
            "media.download": self.download,
            "media.downloadSecret": self.download_secret,
            "admin.mediaStats": self.admin_stats,
            "admin.mediaGc": self.admin_gc,
            "admin.mediaDelete": self.admin_delete,
        }.items():
            router.add(name, fn)

    async def _thread(self, fn: Any, *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._io)

    # --- uploads --------------------------------------------------------------------------
    async def upload_part(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = _uid(ctx)
        upload_id, index, data = p["upload_id"], p["index"], p["data"]
        if len(data) > self.part_size:
            raise RpcError(ErrorCode.PART_TOO_BIG, f"parts are at most {self.part_size} bytes")
        if index * self.part_size >= self.file_max:
            raise RpcError(ErrorCode.FILE_TOO_BIG, f"files are at most {self.file_max} bytes")
        if not data and index:  # only an empty file has an empty part, its only one
            raise RpcError(ErrorCode.PART_INVALID, "only part 0 of an empty file may be empty")
        if not self._budgets.take(uid, upload_id, len(data)):
            await self._check_budget(uid, upload_id, len(data))
        try:
            async with self._guards.part((uid, upload_id)):
                # one transaction per part (add_part also registers the upload): the gc's
                # sweep spares a just-written file by its mtime until the row exists
                path = files.upload_path(self.root, uid, upload_id)
                up = self._uploads.get((uid, upload_id))
                if up is None:
                    up = self._uploads[uid, upload_id] = _Upload(self.part_size)
                try:
                    await self._thread(self._write_part, up, path, index, data)
                except files.DiskFull:
                    raise RpcError(ErrorCode.DISK_FULL) from None
                # recorded only once the bytes are on disk: a listed part is a durable part
                await self.db.write(lambda c: store.add_part(c, uid, upload_id, index, len(data)))
        except Completing:
            raise RpcError(ErrorCode.PART_INVALID, "the upload is being completed") from None
        return {"index": index, "size": len(data)}

    def _write_part(self, up: _Upload, path: Path, index: int, data: bytes) -> None:
        """In a worker thread: write the part at its offset, advance the running hash, and
        make it durable (a sync shared with the parts in flight)."""
        up.hash.begin(index)
        written: bytes | None = None
        try:
            files.write_at(path, index * self.part_size, data)
            written = data
        finally:
            up.hash.end(path, index, written)
        up.sync(path)

    async def _check_budget(self, uid: int, upload_id: str, size: int) -> None:
        """Before a part touches the disk: the user's quota (parts of unfinished uploads
        count too, or one user could fill the disk with uploads never completed) and the
        cap on uploads in progress. Grants an allowance so the next parts need no read."""
        use, uploads, known = await self.db.read(
            lambda c: store.part_budget(c, uid, upload_id, self.quota > 0)
        )
        if not known and uploads >= MAX_UPLOADS_PER_USER:
            raise RpcError(
                ErrorCode.QUOTA_EXCEEDED,
                f"{uploads} uploads in progress: complete them or let them expire",
            )
        if self.quota and use + size > self.quota:
            raise RpcError(ErrorCode.QUOTA_EXCEEDED, f"{use} of {self.quota} bytes in use")
        self._budgets.grant(uid, upload_id, size, use, uploads)

    async def upload_status(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = _uid(ctx)

        def job(c: sqlite3.Connection) -> tuple[float | None, dict[int, int]]:
            return store.upload_started(c, uid, p["upload_id"]), store.parts(c, uid, p["upload_id"])

        started, parts = await self.db.read(job)
        return {
            "parts": sorted(parts),
            "part_size": self.part_size,
            "expires": int(started + self.upload_ttl) if started is not None else 0,
        }

    async def complete(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = _uid(ctx)
        upload_id, count, size = p["upload_id"], p["parts"], p["size"]
        if size > self.file_max:
            raise RpcError(ErrorCode.FILE_TOO_BIG, f"files are at most {self.file_max} bytes")
        # checked before anything is enumerated: the count is bounded by the size, itself
        # bounded by file_max (a hostile count must not cost anything)
        expected = max(1, -(-size // self.part_size))
        if count != expected:
            raise RpcError(
                ErrorCode.PART_INVALID,
                f"{size} bytes are {expected} part(s) of {self.part_size} bytes, not {count}",
            )
        # no part of this upload is written meanwhile, and a second complete of it waits
        # for this one (and then finds it gone)
        async with self._guards.complete((uid, upload_id)):
            try:
                return await self._complete(uid, p)
            finally:
                self._budgets.forget(uid)
                # done or failed, the next part of this id starts a new hash (at worst the
                # next complete hashes the whole file, as without one)
                self._uploads.pop((uid, upload_id), None)

    async def _complete(self, uid: int, p: Params) -> dict[str, Any]:
        upload_id, count, size = p["upload_id"], p["parts"], p["size"]
        sha = bytes.fromhex(p["sha256"])
        opaque = bool(p.get("opaque", False))

        def check(c: sqlite3.Connection) -> tuple[float | None, dict[int, int], int, int]:
            return (
                store.upload_started(c, uid, upload_id),
                store.parts(c, uid, upload_id),
                store.used_bytes(c, uid),
                store.charge(c, uid, sha, size),
            )

        started, parts, used, extra = await self.db.read(check)
        if started is None:
            raise RpcError(ErrorCode.UPLOAD_NOT_FOUND)
        missing = [i for i in range(count) if i not in parts]
        if missing:
            shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
            raise RpcError(ErrorCode.PART_MISSING, f"missing parts: {shown}")
        short = [i for i in range(count - 1) if parts[i] != self.part_size]
        if short or any(i >= count for i in parts):
            raise RpcError(
                ErrorCode.PART_INVALID,
                f"all parts but the last must be {self.part_size} bytes and indexes < {count}",
            )
        if sum(parts.values()) != size:
            raise RpcError(
                ErrorCode.PART_INVALID,
                f"the parts hold {sum(parts.values())} bytes, not the declared {size}",
            )
        if self.quota and used + extra > self.quota:
            raise RpcError(ErrorCode.QUOTA_EXCEEDED, f"{used} of {self.quota} bytes in use")

        def job(c: sqlite3.Connection) -> dict[str, Any]:
            # again inside the transaction: completes of other uploads may have run since
            use = store.used_bytes(c, uid)
            if self.quota and use + store.charge(c, uid, sha, size) > self.quota:
                raise RpcError(ErrorCode.QUOTA_EXCEEDED, f"{use} of {self.quota} bytes in use")
            store.end_upload(c, uid, upload_id)
            return store.insert(c, uid, sha, size, p["mime"], p["name"], dims, opaque)

        path = files.upload_path(self.root, uid, upload_id)
        try:
            # the long part (hashing up to 2 GiB) runs without the gc lock: completes of
            # different uploads proceed side by side
            up = self._uploads.get((uid, upload_id))
            prefix = up.hash.prefix() if up is not None else None  # no part is being written
            head = await self._thread(files.verify, path, size, p["sha256"], prefix)
        except files.Mismatch as e:
            # a corrupted upload keeps nothing; the client starts it again
            await self.db.write(lambda c: store.end_upload(c, uid, upload_id))
            raise RpcError(ErrorCode.CHECKSUM_MISMATCH, str(e)) from None
        except files.DiskFull:
            raise RpcError(ErrorCode.DISK_FULL) from None
        except FileNotFoundError:  # expired and swept meanwhile
            raise RpcError(ErrorCode.UPLOAD_NOT_FOUND) from None
        # ciphertext has no dimensions (and an opaque file's type is not the node's to know)
        dims = files.image_size(head) if p["mime"].startswith("image/") and not opaque else None
        async with self._gc_lock:  # the blob must not be collected between rename and row
            try:
                await self._thread(files.place, path, self.root, p["sha256"])
            except files.DiskFull:
                raise RpcError(ErrorCode.DISK_FULL) from None
            except FileNotFoundError:
                raise RpcError(ErrorCode.UPLOAD_NOT_FOUND) from None
            try:
                info: dict[str, Any] = await self.db.write(job)
            except RpcError:
                # over quota after all (a concurrent complete won): the upload ends; its
                # bytes, now placed but unreferenced, are the next gc's
                await self.db.write(lambda c: store.end_upload(c, uid, upload_id))
                raise
        return info

    # --- downloads ------------------------------------------------------------------------
    async def info(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = _uid(ctx)
        meta: dict[str, Any] = await self.db.read(
            lambda c: store.need_readable(c, uid, p["media_id"])
        )
        await self._ensure_local(meta["sha256"], meta["size"])
        return meta

    async def download(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        uid = _uid(ctx)
        meta = await self.db.read(lambda c: store.need_readable(c, uid, p["media_id"]))
        await self._ensure_local(meta["sha256"], meta["size"])
        return await self._chunk(meta["sha256"], meta["size"], p["offset"], p["limit"])

    async def _chunk(self, sha: str, size: int, offset: int, limit: int) -> dict[str, Any]:
        """A range of a file this node holds, as media.download answers it."""
        data = b""
        if offset < size:
            path = files.blob_path(self.root, sha)
            limit = min(limit, self.chunk_max)
            try:
                data = await self._thread(files.read_range, path, offset, limit)
            except FileNotFoundError:  # collected between the row read and the file read
                self._present.discard(sha)
                raise RpcError(ErrorCode.MEDIA_NOT_FOUND, "the file is gone") from None
        # a Blob: encoded into the reply frame at memory speed (cbor2's buffer is slow)
        return {"data": Blob(data), "size": size, "eof": offset + len(data) >= size}

    async def download_secret(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        """A chunk of an opaque file named by its content address, for any signed-in user.

        Why no membership check: the bytes were encrypted on the sender's device under a
        one-time key, and their SHA-256 reaches the recipient only inside the secret message
        that also carries the key; nobody can guess it, so naming it is the grant. An
        ordinary file's hash grants nothing: it is answered exactly like a hash this node has
        never seen (MEDIA_NOT_FOUND, same message), so the call cannot probe for it either.

        Not here yet and ``node`` names another node (the uploader's): fetched from there
        first, as media.download does for a chat's file (MEDIA_FETCHING while it runs), and
        kept under an opaque row of this node's."""
        _uid(ctx)  # any signed-in user: the hash is the capability
        sha, size = p["sha256"], p["size"]
        raw = bytes.fromhex(sha)
        meta = await self.db.read(lambda c: store.find_opaque(c, raw, size))
        origin = await self._origin(p.get("node"))
        if meta is None:
            if origin is None or await self.db.read(lambda c: store.has_plain(c, raw)):
                raise _no_secret()
            try:
                await self._ensure_local(sha, size, origin)
            except RpcError as e:
                if e.code == ErrorCode.MEDIA_NOT_FOUND:  # not the peer's refusal, verbatim
                    raise _no_secret() from None
                raise
            # made by the fetch, right where it placed the bytes; not if this reader joined
            # a fetch of an ordinary file, or the bytes were here already without a grant
            meta = await self.db.read(lambda c: store.find_opaque(c, raw, size))
            if meta is None:
                raise _no_secret()
        else:
            await self._ensure_local(sha, size, origin)
        return await self._chunk(sha, size, p["offset"], p["limit"])

    async def _origin(self, node: str | None) -> str | None:
        """The node to fetch an opaque file from: ``node`` unless absent or this node."""
        if not node:
            return None
        me = await self.db.read(
            lambda c: c.execute("SELECT fingerprint FROM nodes WHERE state = 'self'").fetchone()
        )
        return None if me is not None and me[0] == node else node

    # --- files held by other nodes ----------------------------------------------------------
    async def _ensure_local(self, sha: str, size: int, origin: str | None = None) -> None:
        """Return once the file is in this node's store, fetching it from another node
        first if need be (the caller may read it: checked before, so only a reader makes
        the node fetch anything). ``origin``: an opaque file, fetched from that node only
        (no chat names its sources) and given an opaque row once placed."""
        if sha in self._present:
            return
        if await self._thread(files.blob_path(self.root, sha).exists):
            self._present.add(sha)
            return
        fetch = self._fetches.get(sha)
        if fetch is None:
            fetch = self._fetches[sha] = _Fetch()
            if self._nursery is not None:
                self._nursery.start_soon(self._run_fetch, fetch, sha, size, origin)
            else:  # not running (a bare service in a test): fetch in the caller's task
                await self._run_fetch(fetch, sha, size, origin)
        with trio.move_on_after(self.fetch_wait):
            await fetch.done.wait()
        if not fetch.done.is_set():
            raise RpcError(
                ErrorCode.MEDIA_FETCHING,
                "this node is still fetching the file from the node that holds it",
                retry_after=FETCH_RETRY_AFTER,
            )
        if fetch.error is not None:
            e = fetch.error
            raise RpcError(e.code, e.message, e.retry_after)
        self._present.add(sha)

    async def _run_fetch(self, fetch: _Fetch, sha: str, size: int, origin: str | None) -> None:
        try:
            await self._fetch(sha, size, origin)
        except RpcError as e:
            fetch.error = e
        except Exception as e:  # a failed fetch answers its readers; the node goes on
            _log.exception("media fetch failed")
            fetch.error = RpcError(ErrorCode.INTERNAL, f"fetching the file failed: {e}")
        finally:
            del self._fetches[sha]  # the next reader after a failure tries again
            fetch.done.set()

    async def _fetch(self, sha: str, size: int, origin: str | None = None) -> None:
        """Fetch from each node that may hold the file, best first, until one gives bytes
        that verify. The best error is kept: a mismatch (someone served wrong bytes) over an
        unreachable node (try again later) over a node that lacks it. With ``origin`` (an
        opaque file) that node is the only source."""
        if self.remote is None:  # a node that does not federate has only its own files
            raise RpcError(ErrorCode.MEDIA_NOT_FOUND, "the file is not on this node")
        if size > self.file_max:  # an address from elsewhere: this node's limit holds too
            raise RpcError(ErrorCode.FILE_TOO_BIG, f"files here are at most {self.file_max} bytes")
        if origin is not None:
            sources = [origin]
        else:
            sources = await self.db.read(lambda c: store.sources(c, bytes.fromhex(sha)))
        errors: list[RpcError] = []
        for node_id in sources:
            try:
                await self._fetch_from(node_id, sha, size, opaque=origin is not None)
                log.event(_log, "media.fetched", sha256=sha[:16], size=size, peer=node_id[:12])
                return
            except RpcError as e:
                log.event(
                    _log, "media.fetch_failed", sha256=sha[:16], peer=node_id[:12], why=e.code
                )
                errors.append(e)
        for code in (ErrorCode.CHECKSUM_MISMATCH, ErrorCode.DISK_FULL, ErrorCode.PEER_UNREACHABLE):
            for err in errors:
                if err.code == code:
                    retry = FETCH_RETRY_AFTER if code == ErrorCode.PEER_UNREACHABLE else None
                    raise RpcError(code, err.message, retry)
        if errors:
            raise RpcError(ErrorCode.MEDIA_NOT_FOUND, f"no node holds it: {errors[-1].message}")
        raise RpcError(ErrorCode.MEDIA_NOT_FOUND, "no other node is known to hold the file")

    async def _fetch_from(self, node_id: str, sha: str, size: int, opaque: bool = False) -> None:
        """Fetch the file from ``node_id`` in ranges, verify it and place it. ``opaque``: no
        row names these bytes yet, so the opaque row that keeps them is made in the same
        gc-locked step as the placing (else a sweep could take them in between)."""
        assert self.remote is not None
        folder = files.fetch_dir(self.root, sha)
        count = -(-size // FETCH_PART)
        start = await self._thread(files.fetch_progress, folder, size)
        try:
            for i in range(min(start, count), count):
                offset = i * FETCH_PART
                want = min(FETCH_PART, size - offset)
                data, total = await self.remote.fetch_media(
                    node_id, sha, offset, want, opaque=opaque
                )
                if total != size or len(data) != want:
                    raise files.Mismatch(
                        f"node {node_id[:12]} has {total} bytes under this SHA-256 (gave "
                        f"{len(data)} at {offset}), the message says {size}"
                    )
                await self._thread(files.fetch_write, folder, i, FETCH_PART, size, data)
            data_path = await self._thread(files.fetch_data, folder)
            await self._thread(files.verify, data_path, size, sha)
            async with self._gc_lock:  # the row exists: from here the blob is live
                await self._thread(files.place, data_path, self.root, sha)
                if opaque:
                    raw = bytes.fromhex(sha)
                    await self.db.write(lambda c: store.adopt_opaque(c, raw, size))
        except files.Mismatch as e:
            # what a peer cannot prove is not kept: the next attempt starts from nothing
            await self._thread(files.remove_tree, folder)
            raise RpcError(
                ErrorCode.CHECKSUM_MISMATCH, f"node {node_id[:12]} served a different file: {e}"
            ) from None
        except files.DiskFull:
            raise RpcError(ErrorCode.DISK_FULL) from None
        await self._thread(files.remove_tree, folder)

    async def read_blob(self, sha: str, offset: int, length: int) -> tuple[bytes, int]:
        """A range of a stored file and its size, for a peer (federation's fed.media): read
        in a thread. MEDIA_NOT_FOUND if this node does not hold the bytes (it never fetches
        for a peer: a file is asked of the nodes that have it)."""
        try:
            data, size = await self._thread(files.read_blob, self.root, sha, offset, length)
        except FileNotFoundError:
            raise RpcError(ErrorCode.MEDIA_NOT_FOUND, "this node does not hold the file") from None
        return data, size

    # --- housekeeping ---------------------------------------------------------------------
    async def run(self) -> None:
        """The node's sweep loop: expiry and garbage collection every gc_interval."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery  # fetches run here, whoever started them
            while True:
                await trio.sleep(self.gc_interval)
                try:
                    r = await self.gc()
                except Exception:  # a failed sweep (disk, database) must not take it down
                    _log.exception("media gc failed")
                    continue
                if any(r.values()):
                    log.event(_log, "media.gc", **r)

    async def gc(self) -> dict[str, int]:
        now = time.time()
        cutoff, opaque_cutoff = now - self.upload_ttl, now - self.opaque_ttl
        async with self._gc_lock:
            expired = await self.db.write(lambda c: store.expired_uploads(c, cutoff))
            dropped = await self.db.write(lambda c: store.drop_unattached(c, cutoff, opaque_cutoff))
            live = await self.db.read(store.live_blobs)
            active = await self.db.read(store.active_uploads)
            fetching = {files.fetch_dir(self.root, sha).name for sha in self._fetches}
            removed, freed = await self._thread(self._sweep_disk, live, active, fetching)
            self._budgets.clear()
            self._present.clear()
            # expired uploads are gone (one begun since `active` was read only loses speed)
            self._uploads = {k: v for k, v in self._uploads.items() if k in active}
        return {
            "expired_uploads": len(expired),
            "dropped_media": dropped,
            "removed_files": removed,
            "freed_bytes": freed,
        }

    def _sweep_disk(
        self,
        live: set[str],
        active: set[tuple[int, str]],
        fetching: frozenset[str] | set[str] = frozenset(),
    ) -> tuple[int, int]:
        """Delete files no media row refers to, and upload leftovers nobody owns any more.
        A leftover must also be quiet for a grace period: its upload may have started after
        ``active`` was read."""
        removed = freed = 0
        for sha in files.stored_blobs(self.root):
            if sha not in live:
                freed += files.remove_blob(self.root, sha)
                removed += 1
        grace = min(60.0, self.upload_ttl)
        keep = {files.upload_path(self.root, u, up).name for u, up in active}
        keep |= fetching
        tmp = self.root / "tmp"
        for entry in list(tmp.iterdir()) if tmp.exists() else []:
            try:
                # a cut fetch waits for its next reader as long as an unfinished upload does
                quiet = self.upload_ttl if entry.name.startswith("fetch-") else grace
                if entry.name in keep or time.time() - entry.stat().st_mtime < quiet:
                    continue
                freed += files.tree_size(entry)
            except FileNotFoundError:  # a failed complete removed it meanwhile
                continue
            files.remove_tree(entry)
        return removed, freed

    async def admin_stats(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        counts = await self.db.read(store.stats)

        def disk() -> tuple[int, int, int]:
            blobs = files.stored_blobs(self.root)
            return len(blobs), sum(blobs.values()), files.tree_size(self.root / "tmp")

        n, total, partial = await self._thread(disk)
        return {**counts, "files_on_disk": n, "bytes_on_disk": total, "partial_bytes": partial}

    async def admin_gc(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        return await self.gc()

    async def admin_delete(self, ctx: CallContext, p: Params) -> dict[str, Any]:
        """Erase one file from this node: every media row naming its bytes (so every message
        carrying it shows the attachment without a media id: gone) and the bytes on disk,
        now. Named by a media id or by its SHA-256 (hex). Under the gc lock, so no sweep or
        fetch places or counts it meanwhile. Other nodes keep their copies; a fresh upload
        of the same bytes stores them again."""
        by_id, by_sha = p.get("media_id"), p.get("sha256")
        if (by_id is None) == (by_sha is None):
            raise RpcError(ErrorCode.PARAMS_INVALID, "give media_id or sha256, not both")

        def job(c: sqlite3.Connection) -> tuple[bytes, int, int, int]:
            if by_id is not None:
                row = store.get(c, by_id)
                if row is None:
                    raise RpcError(ErrorCode.MEDIA_NOT_FOUND, f"no media {by_id}")
                sha = bytes(row[1])
            else:
                sha = bytes.fromhex(str(by_sha))
            rows = c.execute("SELECT count(*), max(size) FROM media WHERE sha256 = ?", (sha,))
            n, size = rows.fetchone()
            if not n:
                raise RpcError(ErrorCode.MEDIA_NOT_FOUND, f"no media with SHA-256 {sha.hex()}")
            refs = c.execute(
                "SELECT count(*) FROM media_refs r JOIN media m ON m.id = r.media_id "
                "WHERE m.sha256 = ?",
                (sha,),
            ).fetchone()[0]
            c.execute("DELETE FROM media WHERE sha256 = ?", (sha,))  # refs cascade
            return sha, int(n), int(refs), int(size or 0)

        async with self._gc_lock:
            sha, rows, refs, size = await self.db.write(job)
            sha_hex = sha.hex()
            freed = await self._thread(files.remove_blob, self.root, sha_hex)
            self._present.discard(sha_hex)
        log.event(_log, "media.deleted", sha256=sha_hex[:16], rows=rows, messages=refs)
        return {"sha256": sha_hex, "size": size, "records": rows, "messages": refs, "freed": freed}
