"""Uploading and downloading files with the SDK: parts in parallel, resumable, verified.

    info = await upload_file(client, Path("cat.jpg"), upload_id_for(Path("cat.jpg")))
    await download_file(client, info["media_id"], Path("copy.jpg"))

Both read and write the file in threads and keep at most ``parallel`` parts in memory, so a
2 GiB file costs a few MiB. Re-running either after an interruption continues where it
stopped: the node tells which parts it has; a download continues its ``.part`` file.

Secret chats' files (docs/secret-chats.md 6.6): the caller encrypts on the device under a
one-time key, :func:`upload_secret` stores the ciphertext as *opaque* (no name, no type),
and the recipient, given the SHA-256, size and uploader's node inside the secret message,
fetches it with :func:`download_secret` (or :func:`download_secret_file`), on its own node,
which fetches it from the uploader's node if need be. Nothing here encrypts or decrypts.

    info = await upload_secret(client, ciphertext)
    data = await download_secret(client, info["sha256"], info["size"], sender_node_id)
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from .. import bigbuffers
from ..protocol.codec import Blob
from ..protocol.errors import ErrorCode, RpcError
from .connection import Client
from .errors import ChecksumError, FileError

Progress = Callable[[int], None]  # called with the bytes just transferred
HASH_CHUNK = 1 << 20
# how an opaque upload is described to the node: the real name and type travel encrypted
SECRET_NAME = ""
SECRET_MIME = "application/octet-stream"
SECRET_CHUNK = 512 * 1024  # a media.downloadSecret range (the node caps it too)
# a media.download range: the node's default download_chunk_max. Each call costs ~1-2 ms of
# CPU on the two sides beside its bytes, so fewer, larger chunks (a node that caps lower
# answers short, and the rest of the range is asked for in a second call)
DOWNLOAD_CHUNK = 960 * 1024
# a download syncs what it has written every this many bytes, in a thread beside the
# transfer: otherwise the whole file waits in the page cache for the final fsync (with
# 24 GiB of RAM the kernel starts no writeback for a 1 GiB file), and that fsync alone took
# seconds at the end, with nothing on the wire
SYNC_EVERY = 64 << 20
# how long download_secret waits, in all, while the node answers MEDIA_FETCHING (it is
# fetching the file from the uploader's node): past it the MEDIA_FETCHING error is raised
SECRET_FETCH_WAIT = 120.0


def upload_id_for(path: Path) -> str:
    """Stable for the same file content location and version, so a re-run resumes."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()
    return hashlib.blake2b(key, digest_size=12).hexdigest()


def guess_mime(path: Path) -> str:
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def kind_for(mime: str) -> str:
    """How a file shows in a chat: photo, video, voice or document."""
    if mime.startswith("image/"):
        return "photo"
    if mime.startswith("video/"):
        return "video"
    if mime.startswith("audio/"):
        return "voice"
    return "document"


@asynccontextmanager
async def _one_error() -> AsyncIterator[None]:
    """Parts travel in parallel; the caller gets the node's first refusal as the RpcError it
    is (PART_TOO_BIG, DISK_FULL, ...) rather than a group of them."""
    try:
        yield
    except BaseExceptionGroup as group:
        rpc = [e for e in _leaves(group) if isinstance(e, RpcError)]
        if rpc:
            raise rpc[0] from None
        raise


def _leaves(e: BaseException) -> list[BaseException]:
    if isinstance(e, BaseExceptionGroup):
        return [leaf for sub in e.exceptions for leaf in _leaves(sub)]
    return [e]


def _hash_into(h: Any, path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)


def _append(f: Any, h: Any, data: bytes) -> None:
    """Chunks arrive in order here, so the file is hashed as it is written."""
    h.update(data)
    f.write(data)


def _read_hashed(fd: int, h: Any, offset: int, size: int) -> bytes:
    """The part at ``offset``, added to the file's hash: parts are read in order, so the
    file is read once for both (the hash releases the GIL, so this runs beside the loop)."""
    data = os.pread(fd, size, offset)
    h.update(data)
    return data


async def upload_file(
    client: Client,
    path: Path,
    upload_id: str,
    *,
    mime: str | None = None,
    name: str | None = None,
    progress: Progress | None = None,
    parallel: int = 8,
    opaque: bool = False,
    resumed: Progress | None = None,
) -> dict[str, Any]:
    """Upload (or finish uploading) a file; returns the node's media info. ``opaque``: the
    file is ciphertext under a one-time key (see :func:`upload_secret`), readable by anyone
    who names its SHA-256: never for a plain file. ``resumed`` (else ``progress``) is told
    the bytes an earlier attempt already stored, so a progress bar can say it resumes."""
    size = path.stat().st_size
    status = await client.call("media.uploadStatus", {"upload_id": upload_id})
    part_size: int = status["part_size"]
    count = max(1, -(-size // part_size))
    have = set(status["parts"])
    already = sum(min(part_size, size - i * part_size) for i in have if i < count)
    report = resumed or progress
    if already and report is not None:
        report(already)
    bigbuffers.tune()
    slots = trio.Semaphore(parallel)  # parts read and not yet acknowledged
    digest = hashlib.sha256()

    async def send(i: int, data: bytes) -> None:
        try:
            # a Blob: framed at memory speed, not through cbor2's slow buffer (codec.Blob)
            await client.call(
                "media.uploadPart", {"upload_id": upload_id, "index": i, "data": Blob(data)}
            )
            if progress is not None:
                progress(len(data))
        finally:
            slots.release()

    fd = os.open(path, os.O_RDONLY)
    try:
        async with _one_error(), trio.open_nursery() as nursery:
            # one reader, in order: each part is read and hashed in one thread call, then
            # sent by its own task while the next is read (``parallel`` in flight)
            for i in range(count):
                stored = i in have  # read only for the hash
                if not stored:
                    await slots.acquire()
                data = await trio.to_thread.run_sync(
                    _read_hashed, fd, digest, i * part_size, part_size
                )
                if not stored:
                    nursery.start_soon(send, i, data)
    finally:
        os.close(fd)
    params: dict[str, Any] = {
        "upload_id": upload_id,
        "parts": count,
        "size": size,
        "sha256": digest.hexdigest(),
        "name": name if name is not None else path.name,
        "mime": mime or guess_mime(path),
    }
    if opaque:  # sent only when set: a node before secret files refuses unknown fields
        params["opaque"] = True
    info: dict[str, Any] = await client.call("media.complete", params, timeout=120)
    return info


async def upload_secret(
    client: Client,
    ciphertext: bytes,
    *,
    upload_id: str | None = None,
    progress: Progress | None = None,
    parallel: int = 4,
) -> dict[str, Any]:
    """Upload bytes already encrypted on this device under a one-time key as an *opaque*
    file (media.complete ``opaque``), with no name and ``application/octet-stream``: the
    node learns nothing but the size. Returns the node's media info (``sha256``, ``size``,
    ``media_id``, ``opaque: True``); the recipient needs ``sha256`` and ``size`` (and the
    uploader's node id) to fetch it with :func:`download_secret`.

    Only for ciphertext: an opaque file is readable by anyone who names its SHA-256, which
    is safe because the hash of bytes under a fresh random key cannot be guessed. Give the
    same ``upload_id`` again to resume an interrupted upload (default: a random one)."""
    upload_id = upload_id or secrets.token_hex(12)
    size = len(ciphertext)
    status = await client.call("media.uploadStatus", {"upload_id": upload_id})
    part_size: int = status["part_size"]
    count = max(1, -(-size // part_size))
    have = set(status["parts"])
    slots = trio.Semaphore(parallel)
    view = memoryview(ciphertext)

    async def send(i: int) -> None:
        try:
            data = bytes(view[i * part_size : (i + 1) * part_size])
            await client.call(
                "media.uploadPart", {"upload_id": upload_id, "index": i, "data": Blob(data)}
            )
            if progress is not None:
                progress(len(data))
        finally:
            slots.release()

    sha = hashlib.sha256(ciphertext).hexdigest()
    async with _one_error(), trio.open_nursery() as nursery:
        for i in range(count):
            if i not in have:
                await slots.acquire()
                nursery.start_soon(send, i)
    info: dict[str, Any] = await client.call(
        "media.complete",
        {
            "upload_id": upload_id,
            "parts": count,
            "size": size,
            "sha256": sha,
            "name": SECRET_NAME,
            "mime": SECRET_MIME,
            "opaque": True,
        },
        timeout=120,
    )
    return info


async def _secret_chunks(
    client: Client,
    sha256: str,
    size: int,
    node: str | None,
    start: int,
    chunk: int,
    fetch_wait: float,
) -> AsyncIterator[bytes]:
    """The opaque file's bytes from ``start`` on, in order (each call names the offset it
    needs, so a retry resumes exactly there). While the node answers MEDIA_FETCHING (it is
    getting the file from ``node``), wait its retry_after and ask again, at most
    ``fetch_wait`` seconds in all."""
    offset = start
    waited = 0.0
    params: dict[str, Any] = {"sha256": sha256, "size": size}
    if node:
        params["node"] = node
    while True:
        try:
            r = await client.call(
                "media.downloadSecret", {**params, "offset": offset, "limit": chunk}
            )
        except RpcError as e:
            if e.code != ErrorCode.MEDIA_FETCHING or waited >= fetch_wait:
                raise
            pause = min(max(e.retry_after or 1.0, 0.05), fetch_wait - waited)
            await trio.sleep(pause)
            waited += pause
            continue
        data: bytes = r["data"]
        if data:
            yield data
        offset += len(data)
        if r["eof"] or offset >= size:
            return
        if not data:  # not at the end, yet nothing: the node's file is shorter than named
            raise ChecksumError(f"the node's file ends at {offset} bytes, expected {size}")


async def download_secret(
    client: Client,
    sha256: str,
    size: int,
    node: str | None = None,
    *,
    have: bytes = b"",
    chunk: int = SECRET_CHUNK,
    progress: Progress | None = None,
    fetch_wait: float = SECRET_FETCH_WAIT,
) -> bytes:
    """The opaque file (a secret chat's ciphertext) with this SHA-256 (hex) and size, read
    by content address through ``media.downloadSecret``: the hash is the grant, so this
    works for the recipient, who is in no chat with the file. ``node``: the uploader's node
    id, for a recipient on another node (the own node fetches it from there; meanwhile it
    answers MEDIA_FETCHING, retried here for up to ``fetch_wait`` seconds). ``have``: a
    prefix already downloaded, resumed from its end. Verified (size and SHA-256) before it
    is returned: :class:`ChecksumError` otherwise; the caller decrypts it."""
    buf = bytearray(have[:size])
    async for data in _secret_chunks(client, sha256, size, node, len(buf), chunk, fetch_wait):
        buf += data
        if progress is not None:
            progress(len(data))
    got = hashlib.sha256(buf).hexdigest()
    if len(buf) != size or got != sha256:
        raise ChecksumError(
            f"downloaded {len(buf)} bytes with SHA-256 {got}, expected {size} with {sha256}"
        )
    return bytes(buf)


async def download_secret_file(
    client: Client,
    sha256: str,
    size: int,
    dest: Path,
    node: str | None = None,
    *,
    chunk: int = SECRET_CHUNK,
    progress: Progress | None = None,
    fetch_wait: float = SECRET_FETCH_WAIT,
) -> dict[str, Any]:
    """:func:`download_secret` into ``dest`` (the ciphertext, for files too big to hold in
    memory), through ``dest.part``, which a re-run resumes by its length; verified, then
    renamed into place. Returns ``{sha256, size, path}``. :class:`FileError` if ``dest``
    cannot be written, :class:`ChecksumError` (the partial file removed) if the bytes do
    not match."""
    check_destination(dest)
    partial = dest.with_name(dest.name + ".part")
    start = partial.stat().st_size if partial.exists() else 0
    if start > size:
        partial.unlink()
        start = 0
    digest = hashlib.sha256()
    if start:
        await trio.to_thread.run_sync(_hash_into, digest, partial)
        if progress is not None:
            progress(start)
    try:
        f = open(partial, "ab")  # noqa: SIM115 - closed below, used from threads
    except OSError as e:
        raise FileError(f"cannot save to {dest}: {e.strerror or e}") from None
    written = start
    try:
        async for data in _secret_chunks(client, sha256, size, node, start, chunk, fetch_wait):
            await trio.to_thread.run_sync(_append, f, digest, data)
            written += len(data)
            if progress is not None:
                progress(len(data))
        await trio.to_thread.run_sync(f.flush)
        await trio.to_thread.run_sync(os.fsync, f.fileno())
    finally:
        f.close()
    got = digest.hexdigest()
    if written != size or got != sha256:
        partial.unlink()
        raise ChecksumError(
            f"downloaded file has {written} bytes with SHA-256 {got}, expected {size} with "
            f"{sha256}; download it again"
        )
    try:
        os.replace(partial, dest)
    except OSError as e:
        raise FileError(f"cannot save to {dest}: {e.strerror or e}") from None
    return {"sha256": sha256, "size": size, "path": str(dest)}


def check_destination(dest: Path) -> None:
    """Raise :class:`FileError` unless a download can be saved at ``dest`` (its folder
    exists, and it is not itself a folder): checked before any byte is fetched."""
    folder = dest.parent
    if not folder.is_dir():
        why = "is a file, not a folder" if folder.exists() else "does not exist"
        raise FileError(
            f"cannot save to {dest}: folder {folder} {why}; create it or choose another path"
        )
    if dest.is_dir():
        raise FileError(f"cannot save to {dest}: it is a folder; name a file inside it")


async def download_file(
    client: Client,
    media_id: str,
    dest: Path,
    *,
    progress: Progress | None = None,
    parallel: int = 4,
    chunk: int = DOWNLOAD_CHUNK,
    resumed: Progress | None = None,
) -> dict[str, Any]:
    """Download to ``dest`` (through ``dest.part``, resumed if present), verify the SHA-256,
    then rename into place. Returns the media info. ``resumed`` (else ``progress``) is told
    the bytes already in ``dest.part``.

    A target that cannot be written raises :class:`FileError`, a file whose SHA-256 differs
    from the node's :class:`ChecksumError` (the partial file is removed)."""
    check_destination(dest)
    bigbuffers.tune()
    info: dict[str, Any] = await client.call("media.info", {"media_id": media_id})
    size: int = info["size"]
    partial = dest.with_name(dest.name + ".part")
    start = partial.stat().st_size if partial.exists() else 0
    if start > size:
        partial.unlink()
        start = 0
    report = resumed or progress
    if start and report is not None:
        report(start)
    digest = hashlib.sha256()
    if start:
        await trio.to_thread.run_sync(_hash_into, digest, partial)
    offsets = list(range(start, size, chunk))
    ready: dict[int, bytes] = {}
    in_order = trio.Lock()  # chunks are appended in offset order
    slots = trio.Semaphore(parallel)
    try:
        f = open(partial, "ab")  # noqa: SIM115 - closed below, used from threads
    except OSError as e:
        raise FileError(f"cannot save to {dest}: {e.strerror or e}") from None
    try:
        next_offset = start
        unsynced = 0
        syncing = False

        async def sync_behind() -> None:
            nonlocal syncing
            try:
                await trio.to_thread.run_sync(os.fdatasync, f.fileno())
            finally:
                syncing = False

        async def fetch(offset: int, nursery: trio.Nursery) -> None:
            nonlocal next_offset, unsynced, syncing
            want = min(chunk, size - offset)
            pieces: list[bytes] = []
            got = 0
            while got < want:  # more than one call only where the node caps chunks lower
                r = await client.call(
                    "media.download",
                    {"media_id": media_id, "offset": offset + got, "limit": want - got},
                )
                if not r["data"]:
                    raise ChecksumError(
                        f"the node's file ends at {offset + got} bytes, expected {size}"
                    )
                pieces.append(r["data"])
                got += len(r["data"])
            async with in_order:
                ready[offset] = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                # write in order: whoever holds the next chunk writes all that is contiguous
                while next_offset in ready:
                    data = ready.pop(next_offset)
                    await trio.to_thread.run_sync(_append, f, digest, data)
                    next_offset += len(data)
                    unsynced += len(data)
                    if unsynced >= SYNC_EVERY and not syncing:
                        syncing, unsynced = True, 0
                        nursery.start_soon(sync_behind)
                    if progress is not None:
                        progress(len(data))
                    slots.release()

        async with _one_error(), trio.open_nursery() as nursery:
            for offset in offsets:
                await slots.acquire()
                nursery.start_soon(fetch, offset, nursery)
        await trio.to_thread.run_sync(f.flush)
        await trio.to_thread.run_sync(os.fsync, f.fileno())
    finally:
        f.close()
    got = digest.hexdigest()
    if got != info["sha256"]:
        partial.unlink()
        raise ChecksumError(
            f"downloaded file has SHA-256 {got}, expected {info['sha256']}; download it again"
        )
    try:
        os.replace(partial, dest)
    except OSError as e:
        raise FileError(f"cannot save to {dest}: {e.strerror or e}") from None
    return info
