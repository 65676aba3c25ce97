"""The media folder on disk. Blocking functions, called through ``trio.to_thread``.

Layout under the data folder's ``media/``:

* ``ab/cd/<sha256>``: finished files, content-addressed, so identical bytes exist once;
* ``tmp/u<user>-<upload>``: an upload in progress, each part written at its own offset
  (index x part size) and fsynced before the database records it, so an acknowledged part
  survives a crash and a half-written one is never counted;
* ``tmp/fetch-<sha256>/``: a file being fetched from another node: ``data`` (parts written
  in order, each fsynced) and ``done`` (how many parts are durable, replaced atomically after
  each), so a fetch cut by a dropped link or a restart resumes after its last durable part.

A finished file becomes visible only complete: hashed and verified, fsynced, renamed into
place, and the directory fsynced.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import struct
import threading
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


class DiskFull(Exception):
    """No space left; nothing partial was kept."""


class Mismatch(Exception):
    """The assembled bytes are not the declared size/hash; nothing was kept."""


def blob_path(root: Path, sha_hex: str) -> Path:
    return root / sha_hex[:2] / sha_hex[2:4] / sha_hex


def upload_path(root: Path, user_id: int, upload_id: str) -> Path:
    return root / "tmp" / f"u{user_id}-{upload_id}"


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (the directory entry itself)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _full(e: OSError) -> bool:
    # EFBIG: the file may not grow (a size limit on the node's process or filesystem):
    # to the uploader that is the same as a full disk
    return e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextlib.contextmanager
def _disk_full_as_such() -> Any:
    """A full disk (or a file that may not grow) raises DiskFull; other OSErrors pass."""
    try:
        yield
    except OSError as e:
        if _full(e):
            raise DiskFull(str(e)) from None
        raise


def write_part(path: Path, offset: int, data: bytes) -> None:
    """Write one part at its offset and make it durable."""
    write_at(path, offset, data, sync=True)


def write_at(path: Path, offset: int, data: bytes, *, sync: bool = False) -> None:
    """Write bytes at ``offset`` (durable only with ``sync``, else see :func:`sync_file`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _disk_full_as_such():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            view = memoryview(data)
            while view:
                n = os.pwrite(fd, view, offset)
                view, offset = view[n:], offset + n
            if sync:
                os.fdatasync(fd)
        finally:
            os.close(fd)


def sync_file(path: Path) -> None:
    """Make every write to ``path`` finished so far durable (fdatasync through a fd of its
    own: the kernel flushes the file's dirty pages whichever descriptor wrote them)."""
    with _disk_full_as_such():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)


class RunningHash:
    """The SHA-256 of an upload's first parts, advanced as parts are written, so that
    ``media.complete`` hashes only what is left instead of reading the whole file back (for
    1 GiB ~0.6-1 s in which the client waits with nothing in flight).

    Parts arrive in any order: each is hashed when all before it are (the one just written
    from memory, later ones read back from the page cache). It is trusted only for bytes
    written once each through it: a part index written a second time (a resend, a new
    upload under the same id) breaks it, and :func:`verify` then hashes the whole file as
    before. The lock serialises writers' bookkeeping and the hashing (in worker threads).
    """

    def __init__(self, part_size: int) -> None:
        self.part_size = part_size
        self._lock = threading.Lock()
        self._h = hashlib.sha256()
        self._next = 0  # the next part index to hash
        self._covered = 0  # bytes hashed: parts [0, _next)
        self._writing: set[int] = set()
        self._written: dict[int, int] = {}  # written (not yet hashed) part -> its length
        self._broken = False

    def begin(self, index: int) -> None:
        """Before part ``index`` is written."""
        with self._lock:
            if index < self._next or index in self._writing or index in self._written:
                self._broken = True
            self._writing.add(index)

    def end(self, path: Path, index: int, data: bytes | None) -> None:
        """After part ``index`` was written (``data``: its bytes; None: the write failed)."""
        with self._lock:
            self._writing.discard(index)
            if data is None:
                self._broken = True  # what is on disk there is unknown
                return
            if self._broken:
                return
            self._written[index] = len(data)
            while self._next in self._written and not self._broken:
                n = self._written.pop(self._next)
                chunk = data if self._next == index else _read_exact(path, self._covered, n)
                if chunk is None:
                    self._broken = True
                    break
                self._h.update(chunk)
                self._next += 1
                self._covered += n
                if n != self.part_size:  # a short part is the last: nothing follows it
                    self._broken = bool(self._written)
                    break

    def prefix(self) -> tuple[Any, int] | None:
        """A copy of the hash so far and the bytes it covers (None if it cannot be used).
        Called while no part is being written (the upload's guard)."""
        with self._lock:
            if self._broken or self._writing:
                return None
            return self._h.copy(), self._covered


def _read_exact(path: Path, offset: int, n: int) -> bytes | None:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(n)
    except OSError:
        return None
    return data if len(data) == n else None


def verify(path: Path, size: int, sha256_hex: str, prefix: tuple[Any, int] | None = None) -> bytes:
    """Check an upload's bytes (size and SHA-256, streamed, never all in memory) and make
    them durable; returns the first bytes for sniffing. On a mismatch the file is deleted.
    ``prefix``: the hash of the file's first bytes and their count (:class:`RunningHash`),
    so only the rest is read and hashed here.

    The caller has checked that the recorded parts cover exactly ``size`` bytes, so the file
    is first cut to that size: a last part re-sent shorter than before leaves stale bytes
    past the end, which must not fail an otherwise correct upload."""
    h, total = prefix if prefix is not None and prefix[1] <= size else (hashlib.sha256(), 0)
    head = b""
    try:
        with open(path, "r+b") as f:
            if os.fstat(f.fileno()).st_size > size:
                f.truncate(size)
            if total:
                head = f.read(64 * 1024)
                f.seek(total)
            while chunk := f.read(CHUNK):
                if len(head) < 64 * 1024:
                    head += chunk[: 64 * 1024 - len(head)]
                h.update(chunk)
                total += len(chunk)
            if total != size or h.hexdigest() != sha256_hex:
                raise Mismatch(
                    f"got {total} bytes with SHA-256 {h.hexdigest()}, declared {size} "
                    f"bytes with {sha256_hex}"
                )
            os.fsync(f.fileno())
        return head
    except Mismatch:
        path.unlink(missing_ok=True)
        raise
    except OSError as e:
        if _full(e):
            raise DiskFull(str(e)) from None
        raise


def place(path: Path, root: Path, sha256_hex: str) -> Path:
    """Move verified bytes into the content-addressed store; identical content already
    stored is kept as is (dedupe) and the duplicate dropped."""
    final = blob_path(root, sha256_hex)
    try:
        if final.exists():
            path.unlink(missing_ok=True)  # missing: a concurrent complete placed it
        else:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, final)
            fsync_dir(final.parent)
    except OSError as e:
        if _full(e):
            raise DiskFull(str(e)) from None
        raise
    return final


def read_range(path: Path, offset: int, limit: int) -> bytes:
    """One download chunk (FileNotFoundError if the file was collected meanwhile)."""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(limit)


def fetch_dir(root: Path, sha256_hex: str) -> Path:
    return root / "tmp" / f"fetch-{sha256_hex}"


def fetch_progress(folder: Path, size: int) -> int:
    """How many parts of a fetch of a ``size``-byte file are durable in ``folder`` (0: start
    over; a record for another size, or an unreadable one, is no progress)."""
    try:
        text = (folder / "done").read_text()
        parts, recorded = (int(x) for x in text.split())
    except (OSError, ValueError):
        return 0
    return parts if recorded == size and parts >= 0 else 0


def fetch_write(folder: Path, index: int, part_size: int, size: int, data: bytes) -> None:
    """Part ``index`` of a fetch, made durable, then recorded as done (the record is written
    aside and renamed over: a crash leaves the old count or the new, never a torn one)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_part(folder / "data", index * part_size, data)
    tmp = folder / "done.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(f"{index + 1} {size}")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / "done")
        fsync_dir(folder)
    except OSError as e:
        if _full(e):
            raise DiskFull(str(e)) from None
        raise


def fetch_data(folder: Path) -> Path:
    """The fetched bytes (created empty if no part was written: an empty file has none)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "data"
    path.touch(exist_ok=True)
    return path


def read_blob(root: Path, sha256_hex: str, offset: int, limit: int) -> tuple[bytes, int]:
    """A range of a stored file and the file's size (FileNotFoundError if absent)."""
    with open(blob_path(root, sha256_hex), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(offset)
        return f.read(limit), size


def remove_tree(path: Path) -> None:
    """A folder (an upload's parts) or a single leftover file."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def tree_size(path: Path) -> int:
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def remove_blob(root: Path, sha_hex: str) -> int:
    """Delete one stored file; returns the bytes freed."""
    path = blob_path(root, sha_hex)
    try:
        n = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return 0
    for parent in (path.parent, path.parent.parent):
        with contextlib.suppress(OSError):
            parent.rmdir()  # only if empty
    return n


def stored_blobs(root: Path) -> dict[str, int]:
    """sha256 hex -> size of every finished file on disk."""
    out: dict[str, int] = {}
    for d1 in root.iterdir() if root.exists() else ():
        if len(d1.name) != 2 or not d1.is_dir():
            continue
        for d2 in d1.iterdir():
            if not d2.is_dir():
                continue
            for f in d2.iterdir():
                if len(f.name) == 64:
                    out[f.name] = f.stat().st_size
    return out


def image_size(head: bytes) -> tuple[int, int] | None:
    """Width and height of a PNG, GIF or JPEG from its first bytes (None if not one)."""
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24 and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        return int(w), int(h)
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        w, h = struct.unpack("<HH", head[6:10])
        return int(w), int(h)
    if head.startswith(b"\xff\xd8"):
        i = 2
        while i + 9 < len(head):
            if head[i] != 0xFF:
                return None
            marker = head[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            length = struct.unpack(">H", head[i + 2 : i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", head[i + 5 : i + 9])
                return int(w), int(h)
            i += 2 + length
    return None
