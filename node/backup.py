"""Backups of a data folder: one archive (tar, optionally gzip) holding a consistent copy of
the database, the media files it names, ``node.key`` and ``config.toml``, with a manifest.

Why it is consistent while a node runs: the database is copied with SQLite's online backup
API from a connection that first opens a read transaction. In WAL mode that transaction is
a snapshot: everything committed before it began is in it (a message is acknowledged only
after its COMMIT, so every acknowledged message is), nothing committed later is, and the
node's writer is never blocked. Because the source connection holds its snapshot for the
whole copy, the stepped copy never restarts however much the node writes meanwhile
(without it, SQLite restarts a backup whenever another connection changes the source).
The one cost: the node's WAL cannot be checkpointed past the snapshot until the copy ends,
so it grows by what is written meanwhile.

Media files are content-addressed and never change once renamed into place, so they are
copied as they are, after the database snapshot, exactly those the snapshot's media rows
name. A file the node's sweep removed between the snapshot and its copy is listed as
``missing`` in the manifest: its row then names bytes the restored node does not have,
which is a state the node already knows (a file of another node not fetched yet). Unfinished
uploads (``media/tmp``) are not copied, and their rows are dropped from the copy: a client
resuming one after a restore starts it over.

When no node runs, the data-folder lock is held for the whole copy, so none starts halfway.

Restore extracts into a staging folder beside the target, hashing every file as it comes,
checks the manifest (format, every file with its size and SHA-256, nothing else) and only
then renames the staging folder into place: a damaged or truncated archive leaves nothing.

Blocking code: the CLI runs it directly (no event loop there); the node never runs it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from . import __version__
from .config import CONFIG_FILE, ConfigError
from .lock import LOCK_FILE, DataDirLock, node_running
from .media.files import fsync_dir
from .storage.migrations import MIGRATIONS

FORMAT = 1
MANIFEST = "fedgram-backup.json"
DB_FILE = "fedgram.db"
KEY_FILE = "node.key"
PAGES_PER_STEP = 1024  # 4 MiB at SQLite's default page size: the node's writer goes on between
CHUNK = 1 << 20
_BLOB = re.compile(r"media/([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{64})")

Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes in all) as the work advances."""


class BackupError(ConfigError):
    """A backup could not be made or an archive is not a usable backup (damaged, truncated,
    of a newer Fedgram, or the target is not empty): a local problem, one line."""


@dataclass
class _Snapshot:
    """What the database snapshot says, read in the same read transaction as the copy."""

    user_version: int
    schemas: dict[str, int]
    node_id: str | None
    blobs: list[tuple[str, int]]  # (sha256 hex, size) named by media rows
    db_bytes: int


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class _Hashing:
    """A file object that hashes and counts what tarfile reads through it."""

    def __init__(self, f: IO[bytes], tick: Callable[[int], None]) -> None:
        self.f = f
        self.h = hashlib.sha256()
        self.tick = tick

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        self.tick(len(data))
        return data


def _open_snapshot(db_path: Path) -> sqlite3.Connection:
    """A connection to the live database holding a read transaction (the snapshot)."""
    if not db_path.is_file():
        raise BackupError(f"{db_path}: no database yet (start the node once first)")
    src = sqlite3.connect(db_path, isolation_level=None, timeout=10.0)
    try:
        src.execute("BEGIN")
        # the snapshot starts at the first read, not at BEGIN
        src.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except BaseException:
        src.close()
        raise
    return src


def _describe(src: sqlite3.Connection) -> _Snapshot:
    user_version = int(src.execute("PRAGMA user_version").fetchone()[0])
    schemas: dict[str, int] = {}
    if src.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_versions'").fetchone():
        schemas = {
            str(n): int(v) for n, v in src.execute("SELECT name, version FROM schema_versions")
        }
    node_id = None
    if src.execute("SELECT 1 FROM sqlite_master WHERE name = 'nodes'").fetchone():
        row = src.execute("SELECT fingerprint FROM nodes WHERE state = 'self'").fetchone()
        node_id = row[0] if row else None
    blobs: list[tuple[str, int]] = []
    if src.execute("SELECT 1 FROM sqlite_master WHERE name = 'media'").fetchone():
        blobs = [
            (bytes(sha).hex(), int(size))
            for sha, size in src.execute("SELECT sha256, max(size) FROM media GROUP BY sha256")
        ]
    pages = int(src.execute("PRAGMA page_count").fetchone()[0])
    page_size = int(src.execute("PRAGMA page_size").fetchone()[0])
    return _Snapshot(user_version, schemas, node_id, blobs, pages * page_size)


def _copy_database(
    src: sqlite3.Connection, dest: Path, tick: Callable[[int], None], page_size: int
) -> None:
    """Copy the snapshot ``src`` holds into ``dest`` in steps, then make the copy a plain
    self-contained file without unfinished uploads."""
    dst = sqlite3.connect(dest, isolation_level=None)
    try:
        done = [0]

        def step(status: int, remaining: int, total: int) -> None:
            now = (total - remaining) * page_size
            tick(now - done[0])
            done[0] = now

        src.backup(dst, pages=PAGES_PER_STEP, progress=step)
        dst.execute("PRAGMA journal_mode = DELETE")  # one file; the node turns WAL back on
        dst.execute("PRAGMA secure_delete = ON")  # as the node's: what is dropped is zeroed
        tables = {r[0] for r in dst.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if {"media_parts", "media_uploads"} <= tables:
            dst.execute("DELETE FROM media_parts")
            dst.execute("DELETE FROM media_uploads")
        check = dst.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise BackupError(f"the database copy does not check out ({check}); not kept")
    finally:
        dst.close()


def create(
    data_dir: Path, out: Path, progress: Progress | None = None, *, gzip: bool | None = None
) -> dict[str, Any]:
    """Write a backup of ``data_dir`` to ``out`` (via ``out.part``, fsynced, mode 0600, then
    renamed) and return its manifest. ``gzip``: None decides by the name (.gz, .tgz)."""
    data_dir = data_dir.absolute()
    out = out.absolute()
    if not (data_dir / CONFIG_FILE).is_file():
        raise BackupError(f"{data_dir}: not a Fedgram data folder (no {CONFIG_FILE})")
    if out.exists():
        raise BackupError(f"{out}: already exists; choose another name")
    if not out.parent.is_dir():
        raise BackupError(f"{out.parent}: no such folder for the backup")
    if out.is_relative_to(data_dir):
        raise BackupError(f"{out}: inside the data folder; write the backup elsewhere")
    if gzip is None:
        gzip = out.name.endswith((".gz", ".tgz"))
    lock = DataDirLock(data_dir)
    held = lock.acquire(patience=0.5)  # no node runs: none may start while we copy
    try:
        return _create(data_dir, out, progress or (lambda done, total: None), gzip, held)
    finally:
        if held:
            lock.release()


def _create(
    data_dir: Path, out: Path, progress: Progress, gzip: bool, offline: bool
) -> dict[str, Any]:
    part = out.with_name(out.name + ".part")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".db", dir=out.parent)
    os.close(fd)
    db_copy = Path(tmp_name)
    files: list[dict[str, Any]] = []
    missing: list[str] = []
    try:
        src = _open_snapshot(data_dir / DB_FILE)
        try:
            snap = _describe(src)
            page_size = int(src.execute("PRAGMA page_size").fetchone()[0])
            small = [data_dir / CONFIG_FILE, data_dir / KEY_FILE]
            total = snap.db_bytes + sum(s for _, s in snap.blobs)
            total += sum(p.stat().st_size for p in small if p.exists())
            done = [0]

            def tick(n: int) -> None:
                done[0] += n
                progress(done[0], max(total, done[0]))

            _copy_database(src, db_copy, tick, page_size)
        finally:
            src.close()  # the snapshot ends: the node's checkpoints catch up
        # counted in pages above; the final file (uploads dropped) may differ slightly
        created = time.time()
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        with os.fdopen(os.open(part, flags, 0o600), "wb") as raw:
            os.fchmod(raw.fileno(), 0o600)  # an old .part's mode does not carry over
            with tarfile.open(fileobj=raw, mode="w:gz" if gzip else "w") as tar:

                def add(path: Path, arcname: str, mode: int) -> dict[str, Any] | None:
                    try:
                        f = open(path, "rb")  # noqa: SIM115 - closed below
                    except FileNotFoundError:
                        return None
                    with f:
                        info = tar.gettarinfo(fileobj=f, arcname=arcname)
                        info.mode, info.uid, info.gid, info.uname, info.gname = mode, 0, 0, "", ""
                        hashing = _Hashing(f, tick if arcname != DB_FILE else (lambda n: None))
                        tar.addfile(info, hashing)
                    entry = {"path": arcname, "size": info.size, "sha256": hashing.h.hexdigest()}
                    files.append(entry)
                    return entry

                add(db_copy, DB_FILE, 0o600)
                if add(data_dir / KEY_FILE, KEY_FILE, 0o600) is None:
                    raise BackupError(f"{data_dir / KEY_FILE}: no node key to back up")
                add(data_dir / CONFIG_FILE, CONFIG_FILE, 0o600)
                for sha, _size in snap.blobs:
                    arc = f"media/{sha[:2]}/{sha[2:4]}/{sha}"
                    if add(data_dir / arc, arc, 0o600) is None:
                        missing.append(sha)  # removed by the sweep after the snapshot
                manifest = {
                    "format": FORMAT,
                    "fedgram": __version__,
                    "created": created,
                    "node_id": snap.node_id,
                    "schema": {"node": snap.user_version, **snap.schemas},
                    "online": not offline,
                    "files": files,
                    "missing_media": missing,
                }
                text = json.dumps(manifest, indent=2, sort_keys=True).encode()
                info = tarfile.TarInfo(MANIFEST)
                info.size, info.mode, info.mtime = len(text), 0o600, int(created)
                tar.addfile(info, _Hashing(_BytesReader(text), lambda n: None))  # type: ignore[arg-type]
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(part, out)
        fsync_dir(out.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            part.unlink()
        raise
    finally:
        with contextlib.suppress(OSError):
            db_copy.unlink()
    progress(max(done[0], total), max(done[0], total))
    return {**manifest, "path": str(out), "bytes": out.stat().st_size}


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        out, self.pos = self.data[self.pos : end], min(end, len(self.data))
        return out


# --- restore ---------------------------------------------------------------------------------
def _allowed(name: str) -> bool:
    return name in (DB_FILE, KEY_FILE, CONFIG_FILE, MANIFEST) or _BLOB.fullmatch(name) is not None


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    try:
        yield from tar
    except (tarfile.TarError, EOFError, OSError) as e:
        raise BackupError(f"the archive is damaged or truncated ({e})") from None


def _check_target(target: Path) -> None:
    if target.exists():
        if not target.is_dir():
            raise BackupError(f"{target}: exists and is not a folder")
        if node_running(target):
            raise BackupError(f"{target}: a node is running on it; stop it first")
        if (target / DB_FILE).exists():
            raise BackupError(
                f"{target}: already holds a database; restore into an empty or new folder"
            )
        leftovers = [p.name for p in target.iterdir() if p.name != LOCK_FILE]
        if leftovers:
            raise BackupError(
                f"{target}: not empty ({', '.join(sorted(leftovers)[:3])}); restore into an "
                "empty or new folder"
            )


def restore(archive: Path, target: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Restore ``archive`` into ``target`` (absent or empty); return the manifest."""
    archive, target = archive.absolute(), target.absolute()
    _check_target(target)
    try:
        total = archive.stat().st_size
    except FileNotFoundError:
        raise BackupError(f"{archive}: no such backup file") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.restoring.", dir=target.parent))
    os.chmod(staging, 0o700)
    tick = progress or (lambda done, total: None)
    try:
        manifest, got = _extract(archive, staging, total, tick)
        _verify(manifest, got, staging)
        # written and fsynced file by file; now the folders, then the move into place
        for folder in sorted({p.parent for p in staging.rglob("*")}, key=lambda p: -len(p.parts)):
            fsync_dir(folder)
        _check_target(target)  # again: nothing may have moved in meanwhile
        with contextlib.suppress(FileNotFoundError):
            (target / LOCK_FILE).unlink()
        if target.exists():
            target.rmdir()
        os.rename(staging, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    (target / "media").mkdir(exist_ok=True, mode=0o700)
    tick(total, total)
    return manifest


def _extract(
    archive: Path, staging: Path, total: int, tick: Progress
) -> tuple[dict[str, Any], dict[str, tuple[int, str]]]:
    got: dict[str, tuple[int, str]] = {}
    manifest: dict[str, Any] | None = None
    try:
        raw = open(archive, "rb")  # noqa: SIM115 - closed below
    except OSError as e:
        raise BackupError(f"{archive}: cannot read ({e.strerror})") from None
    with raw:
        try:
            tar = tarfile.open(fileobj=raw, mode="r|*")  # noqa: SIM115 - `with tar` below
        except (tarfile.TarError, EOFError) as e:
            raise BackupError(f"{archive}: not a backup archive ({e})") from None
        with tar:
            for m in _members(tar):
                if not m.isfile() or not _allowed(m.name) or m.name in got:
                    raise BackupError(
                        f"{archive}: unexpected entry {m.name!r}: not a Fedgram backup"
                    )
                f = tar.extractfile(m)
                assert f is not None
                h = hashlib.sha256()
                if m.name == MANIFEST:
                    if m.size > 64 << 20:
                        raise BackupError(f"{archive}: manifest too large")
                    try:
                        data = f.read()
                        manifest = json.loads(data)
                    except (tarfile.TarError, EOFError, OSError) as e:
                        raise BackupError(f"the archive is damaged or truncated ({e})") from None
                    except ValueError:
                        raise BackupError(f"{archive}: the manifest is not JSON") from None
                    got[m.name] = (len(data), "")
                    continue
                dest = staging / m.name
                dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                size = 0
                with os.fdopen(
                    os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb"
                ) as w:
                    try:
                        while chunk := f.read(CHUNK):
                            h.update(chunk)
                            w.write(chunk)
                            size += len(chunk)
                            tick(min(raw.tell(), total), total)
                    except (tarfile.TarError, EOFError, OSError) as e:
                        raise BackupError(f"the archive is damaged or truncated ({e})") from None
                    w.flush()
                    os.fsync(w.fileno())
                if size != m.size:
                    raise BackupError(
                        f"the archive is truncated ({m.name}: {size} of {m.size} bytes)"
                    )
                got[m.name] = (size, h.hexdigest())
    if manifest is None:
        raise BackupError(
            f"{archive}: no manifest: the archive is truncated or not a Fedgram backup"
        )
    return manifest, got


def _verify(manifest: dict[str, Any], got: dict[str, tuple[int, str]], staging: Path) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(
            f"backup format {manifest.get('format') if isinstance(manifest, dict) else '?'} "
            f"is not one this Fedgram reads ({FORMAT}); use the Fedgram that made it"
        )
    listed = {f["path"]: f for f in manifest.get("files", [])}
    present = {name for name in got if name != MANIFEST}
    if set(listed) != present:
        lost = ", ".join(sorted(set(listed) - present)[:3]) or "-"
        extra = ", ".join(sorted(present - set(listed))[:3]) or "-"
        raise BackupError(
            f"the archive does not hold what its manifest lists (missing: {lost}; extra: {extra})"
        )
    for name, entry in listed.items():
        size, sha = got[name]
        if size != entry.get("size") or sha != entry.get("sha256"):
            raise BackupError(f"{name}: damaged in the archive (size or SHA-256 differs)")
        m = _BLOB.fullmatch(name)
        if m is not None and m.group(3) != sha:
            raise BackupError(f"{name}: the file's bytes do not match its content address")
    for name in (DB_FILE, KEY_FILE, CONFIG_FILE):
        if name not in got:
            raise BackupError(f"the backup has no {name}")
    version = manifest.get("schema", {}).get("node", 0)
    latest = len(MIGRATIONS)
    if version > latest:
        raise BackupError(
            f"the backup's database schema ({version}) is newer than this Fedgram knows (up to "
            f"{latest}): restore it with Fedgram {manifest.get('fedgram')} (which made it) or newer"
        )
    conn = sqlite3.connect(f"{(staging / DB_FILE).as_uri()}?mode=ro", uri=True)
    try:
        if int(conn.execute("PRAGMA user_version").fetchone()[0]) != version:
            raise BackupError("the database's schema version differs from the manifest's")
    except sqlite3.DatabaseError as e:
        raise BackupError(f"the database in the backup does not open ({e})") from None
    finally:
        conn.close()
