"""`fedgram check`: what would stop (or soon hurt) a node, found without starting it.

Each check prints one line, ``ok``, ``warn`` or ``fail``, and the command exits 2 (a local
problem, as elsewhere in the CLI) if any failed. Nothing is written: the database is opened
read-only, the key is only read, the port is bound for an instant and released. A running
node is fine: its port and lock are then reported as held by it.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from node import config
from node.admin import UNIX_PATH_MAX
from node.config import ConfigError
from node.lock import LOCK_FILE, node_running

from .common import LOCAL, DataOpt, JsonOpt, print_json

DISK_WARN_BYTES = 1 << 30  # warn under 1 GiB free...
DISK_WARN_SHARE = 0.05  # ...or under 5% of the file system


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail
    message: str


class _Report:
    def __init__(self) -> None:
        self.checks: list[Check] = []

    def ok(self, name: str, message: str) -> None:
        self.checks.append(Check(name, "ok", message))

    def warn(self, name: str, message: str) -> None:
        self.checks.append(Check(name, "warn", message))

    def fail(self, name: str, message: str) -> None:
        self.checks.append(Check(name, "fail", message))


def _folder(r: _Report, data_dir: Path) -> bool:
    if not data_dir.is_dir():
        r.fail("data", f"{data_dir}: no such folder (create it with `fedgram init --data DIR`)")
        return False
    st = data_dir.stat()
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o002:
        r.fail("data", f"{data_dir}: writable by everyone (mode {mode:o}); chmod 700 it")
    elif not os.access(data_dir, os.W_OK | os.X_OK):
        r.fail("data", f"{data_dir}: not writable by this user")
    elif mode & 0o077:
        r.warn("data", f"{data_dir}: open to group/others (mode {mode:o}); chmod 700 is safer")
    elif st.st_uid != os.geteuid():
        r.warn("data", f"{data_dir}: owned by uid {st.st_uid}, not this user ({os.geteuid()})")
    else:
        r.ok("data", f"{data_dir}: exists, mode {mode:o}")
    sock = len(os.fsencode(data_dir / "admin.sock"))
    if sock > UNIX_PATH_MAX:
        r.fail("data", f"admin socket path is {sock} bytes, over {UNIX_PATH_MAX}: shorter --data")
    return True


def _config(r: _Report, data_dir: Path) -> config.Config | None:
    path = data_dir / config.CONFIG_FILE
    try:
        cfg = config.Config(data_dir, config.validate(config.read_raw(path), str(path)))
    except ConfigError as e:
        r.fail("config", str(e))
        return None
    r.ok("config", f"{path}: parses and validates")
    return cfg


def _key(r: _Report, cfg: config.Config) -> None:
    path = cfg.key_path
    if not path.exists():
        r.warn("node.key", f"{path}: none yet; the node makes one on first start")
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    try:
        config.check_node_key(path)
        from nacl.signing import SigningKey

        from node.protocol.identity import fingerprint

        node_id = fingerprint(bytes(SigningKey(path.read_bytes()).verify_key))
    except (ConfigError, OSError) as e:
        r.fail("node.key", str(e))
        return
    if mode & 0o077:
        r.fail("node.key", f"{path}: readable by others (mode {mode:o}); chmod 600 it")
        return
    r.ok("node.key", f"{path}: loads, mode {mode:o}, node id {node_id}")


def _schemas() -> dict[str, int]:
    """The schema versions this code knows: the node's and its registered parts'."""
    from federation.schema import SCHEMA as FED
    from node.secret.store import SCHEMA as SECRET
    from node.storage.migrations import MIGRATIONS

    return {
        "node": len(MIGRATIONS),
        SECRET.name: len(SECRET.migrations),
        FED.name: len(FED.migrations),
    }


def _database(r: _Report, cfg: config.Config) -> None:
    path = cfg.db_path
    if not path.exists():
        r.ok("database", f"{path}: none yet; made on first start")
        return
    known = _schemas()
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
        try:
            have = {"node": int(conn.execute("PRAGMA user_version").fetchone()[0])}
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name='schema_versions'").fetchone():
                have.update(
                    (str(n), int(v))
                    for n, v in conn.execute("SELECT name, version FROM schema_versions")
                )
        finally:
            conn.close()
    except sqlite3.Error as e:
        r.fail("database", f"{path}: cannot open it read-only ({e}); restore it from a backup")
        return
    newer = [f"{k} {v} > {known[k]}" for k, v in have.items() if k in known and v > known[k]]
    if newer:
        r.fail(
            "database",
            f"{path}: schema newer than this Fedgram knows ({', '.join(newer)}): upgrade "
            "Fedgram or restore a backup",
        )
        return
    older = [f"{k} {have.get(k, 0)} -> {v}" for k, v in known.items() if have.get(k, 0) < v]
    size = path.stat().st_size / 1048576
    if older:
        r.ok("database", f"{path}: {size:.1f} MiB; migrates on start ({', '.join(older)})")
    else:
        r.ok("database", f"{path}: {size:.1f} MiB, schema current ({have['node']})")


def _disk(r: _Report, data_dir: Path) -> None:
    u = shutil.disk_usage(data_dir)
    free, share = u.free / (1 << 30), u.free / u.total if u.total else 0.0
    text = f"{free:.1f} GiB free ({share:.0%} of the file system)"
    if u.free < DISK_WARN_BYTES or share < DISK_WARN_SHARE:
        r.warn("disk", f"{text}: low; the node refuses uploads and writes when it is full")
    else:
        r.ok("disk", text)


def _port(r: _Report, cfg: config.Config, running: bool) -> None:
    host, port = cfg.listen
    if running:
        pid = (cfg.data_dir / LOCK_FILE).read_text().strip() or "?"
        r.ok("listen", f"a node is running on this folder (pid {pid}); it holds {host}:{port}")
        return
    if port == 0:
        r.ok("listen", f"{host}:0: any free port is taken at start")
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, addr = infos[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the node binds it
            s.bind(addr)
    except OSError as e:
        r.fail(
            "listen",
            f"{host}:{port}: cannot listen ({e.strerror or e}); in use by another program?",
        )
        return
    r.ok("listen", f"{host}:{port}: free")


def _tls(r: _Report, cfg: config.Config) -> None:
    """``[node] tls_cert``/``tls_key`` when this Fedgram has them (checked only if set)."""
    node: dict[str, Any] = cfg.values.get("node", {})
    cert, key = node.get("tls_cert") or "", node.get("tls_key") or ""
    if not cert and not key:
        return
    if not cert or not key:
        r.fail("tls", "set both [node] tls_cert and tls_key, or neither")
        return
    import ssl

    paths = [Path(p) if Path(p).is_absolute() else cfg.data_dir / p for p in (cert, key)]
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(paths[0]), str(paths[1]))
    except (OSError, ssl.SSLError) as e:
        r.fail("tls", f"{paths[0]} / {paths[1]}: cannot load the certificate and key ({e})")
        return
    r.ok("tls", f"{paths[0]}: certificate and key load")


def run_checks(data_dir: Path) -> list[Check]:
    r = _Report()
    if _folder(r, data_dir):
        cfg = _config(r, data_dir)
        if cfg is not None:
            running = node_running(data_dir)
            _key(r, cfg)
            _database(r, cfg)
            _disk(r, data_dir)
            _port(r, cfg, running)
            _tls(r, cfg)
    return r.checks


def check(
    data: DataOpt = None,
    json: JsonOpt = False,
) -> None:
    """Check the config, data folder, key, database, disk and port without starting the node.
    One line per check (ok, warn, fail); exits 2 if any failed."""
    data_dir = config.resolve_data_dir(data)
    checks = run_checks(data_dir)
    failed = any(c.status == "fail" for c in checks)
    if json:
        print_json(
            {"ok": not failed, "data": str(data_dir), "checks": [c.__dict__ for c in checks]}
        )
    else:
        for c in checks:
            typer.echo(f"{c.status:<4}  {c.name:<9} {c.message}")
        typer.echo("some checks failed" if failed else "all checks passed: the node can start")
    if failed:
        raise typer.Exit(LOCAL)
