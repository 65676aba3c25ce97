"""Uploading and downloading files with the SDK: parts in parallel, resumable, verified.

    info = await upload_file(client, Path("cat.jpg"), upload_id_for(Path("cat.jpg")))
    await download_file(client, info["media_id"], Path("copy.jpg"))

Both read and write the file in threads and keep at most ``parallel`` parts in memory, so a
2 GiB file costs a few MiB. Re-running either after an interruption continues where it
stopped: the node tells which parts it has; a download continues its ``.part`` file.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from ..protocol.errors import RpcError
from .connection import Client
from .errors import ChecksumError, FileError

Progress = Callable[[int], None]  # called with the bytes just transferred
HASH_CHUNK = 1 << 20


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    _hash_into(h, path)
    return h.hexdigest()


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


def _read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


async def upload_file(
    client: Client,
    path: Path,
    upload_id: str,
    *,
    mime: str | None = None,
    name: str | None = None,
    progress: Progress | None = None,
    parallel: int = 8,
) -> dict[str, Any]:
    """Upload (or finish uploading) a file; returns the node's media info."""
    size = path.stat().st_size
    status = await client.call("media.uploadStatus", {"upload_id": upload_id})
    part_size: int = status["part_size"]
    count = max(1, -(-size // part_size))
    have = set(status["parts"])
    if progress is not None:
        progress(sum(min(part_size, size - i * part_size) for i in have if i < count))
    slots = trio.Semaphore(parallel)
    sha = ""

    async def hash_file() -> None:  # overlaps with sending the parts
        nonlocal sha
        sha = await trio.to_thread.run_sync(_sha256, path)

    async def send(i: int) -> None:
        try:
            data = await trio.to_thread.run_sync(_read_at, path, i * part_size, part_size)
            await client.call(
                "media.uploadPart", {"upload_id": upload_id, "index": i, "data": data}
            )
            if progress is not None:
                progress(len(data))
        finally:
            slots.release()

    async with _one_error(), trio.open_nursery() as nursery:
        nursery.start_soon(hash_file)
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
            "name": name if name is not None else path.name,
            "mime": mime or guess_mime(path),
        },
        timeout=120,
    )
    return info


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
    chunk: int = 512 * 1024,
) -> dict[str, Any]:
    """Download to ``dest`` (through ``dest.part``, resumed if present), verify the SHA-256,
    then rename into place. Returns the media info.

    A target that cannot be written raises :class:`FileError`, a file whose SHA-256 differs
    from the node's :class:`ChecksumError` (the partial file is removed)."""
    check_destination(dest)
    info: dict[str, Any] = await client.call("media.info", {"media_id": media_id})
    size: int = info["size"]
    partial = dest.with_name(dest.name + ".part")
    start = partial.stat().st_size if partial.exists() else 0
    if start > size:
        partial.unlink()
        start = 0
    if progress is not None and start:
        progress(start)
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

        async def fetch(offset: int) -> None:
            nonlocal next_offset
            r = await client.call(
                "media.download", {"media_id": media_id, "offset": offset, "limit": chunk}
            )
            async with in_order:
                ready[offset] = r["data"]
                # write in order: whoever holds the next chunk writes all that is contiguous
                while next_offset in ready:
                    data = ready.pop(next_offset)
                    await trio.to_thread.run_sync(_append, f, digest, data)
                    next_offset += len(data)
                    if progress is not None:
                        progress(len(data))
                    slots.release()

        async with _one_error(), trio.open_nursery() as nursery:
            for offset in offsets:
                await slots.acquire()
                nursery.start_soon(fetch, offset)
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
