"""`fedgram check` through the real CLI: a healthy folder passes; each kind of problem is one
`fail` line and exit 2; a running node is reported, not mistaken for a busy port. Also the
upgrade rule the README states: a database newer than the code is refused (check and run)."""

from __future__ import annotations

import json
import socket
import sqlite3
from pathlib import Path
from typing import Any

from tests.conftest import fedgram


def _init(data: Path, listen: str = "127.0.0.1:0") -> None:
    fedgram("init", "--data", str(data), "--listen", listen, check=True)


def _checks(data: Path) -> tuple[int, dict[str, dict[str, Any]]]:
    r = fedgram("check", "--data", str(data), "--json")
    doc = json.loads(r.stdout)
    assert doc["ok"] == (r.returncode == 0)
    return r.returncode, {c["name"]: c for c in doc["checks"]}


def test_healthy_folder_passes_and_lines_are_human(tmp_path: Path) -> None:
    data = tmp_path / "n1"
    _init(data)
    fedgram("user", "add", "alice", "--data", str(data), check=True)  # makes the database
    r = fedgram("check", "--data", str(data))
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    for name in ("data", "config", "node.key", "database", "disk", "listen"):
        assert any(line.split()[1] == name for line in lines[:-1]), name
    assert all(line.split()[0] in ("ok", "warn") for line in lines[:-1])
    assert "schema current" in r.stdout
    assert lines[-1].startswith("all checks passed")


def test_each_problem_fails_its_check(tmp_path: Path) -> None:
    data = tmp_path / "n1"
    _init(data)
    fedgram("user", "add", "alice", "--data", str(data), check=True)
    key = data / "node.key"
    key.chmod(0o644)
    code, checks = _checks(data)
    assert code == 2 and checks["node.key"]["status"] == "fail"
    assert "chmod 600" in checks["node.key"]["message"]
    key.chmod(0o600)
    data.chmod(0o777)
    code, checks = _checks(data)
    assert code == 2 and checks["data"]["status"] == "fail"
    data.chmod(0o700)
    key.write_bytes(b"short")
    key.chmod(0o600)
    code, checks = _checks(data)
    assert code == 2 and "damaged node key" in checks["node.key"]["message"]

    bad = tmp_path / "n2"
    _init(bad)
    cfg = bad / "config.toml"
    cfg.write_text(cfg.read_text() + "\n[limits2]\nx = 1\n")
    r = fedgram("check", "--data", str(bad))
    assert r.returncode == 2
    assert r.stdout.splitlines()[1].startswith("fail  config")
    assert "unknown section [limits2]" in r.stdout

    missing = fedgram("check", "--data", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no such folder" in missing.stdout


def test_port_in_use_and_running_node(tmp_path: Path, node_process: Any) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        data = tmp_path / "p"
        _init(data, f"127.0.0.1:{port}")
        code, checks = _checks(data)
        assert code == 2 and checks["listen"]["status"] == "fail"
        assert str(port) in checks["listen"]["message"]
    code, checks = _checks(data)
    assert code == 0 and checks["listen"]["message"].endswith("free")

    n = node_process("n1")
    code, checks = _checks(n.data)
    assert code == 0, checks
    assert "a node is running on this folder" in checks["listen"]["message"]
    assert checks["database"]["status"] == "ok"


def test_database_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "n1"
    _init(data)
    fedgram("user", "add", "alice", "--data", str(data), check=True)
    conn = sqlite3.connect(data / "fedgram.db")
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    code, checks = _checks(data)
    assert code == 2 and checks["database"]["status"] == "fail"
    assert "newer than this Fedgram knows" in checks["database"]["message"]
    run = fedgram("run", "--data", str(data), timeout=30)
    assert run.returncode == 2
    assert "newer than this Fedgram knows" in run.stderr
    assert "Upgrade Fedgram or restore a backup" in run.stderr
    conn = sqlite3.connect(data / "fedgram.db")  # untouched: still what it was
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 999
    conn.close()


def test_tls_files_when_configured(tmp_path: Path) -> None:
    """[node] tls_cert/tls_key come with TLS in the node (another change): when the config
    has them, check loads them with the stdlib ssl module. Called directly, since this
    branch's config refuses keys it does not know yet."""
    import shutil
    import subprocess

    import pytest

    from cli.check_cmd import _Report, _tls
    from node.config import Config, validate

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a self-signed certificate")

    def pair(name: str) -> tuple[Path, Path]:
        cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out", str(cert),
             "-days", "1", "-subj", "/CN=localhost"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        return cert, key

    cert, key = pair("a")
    _, other_key = pair("b")

    def run(**node: str) -> list[tuple[str, str]]:
        cfg = Config(tmp_path, validate({}, "test"))
        cfg.values["node"].update(node)
        r = _Report()
        _tls(r, cfg)
        return [(c.status, c.message) for c in r.checks]

    assert run() == []  # not configured: nothing to say
    [(status, _)] = run(tls_cert=str(cert), tls_key=str(key))
    assert status == "ok"
    [(status, msg)] = run(tls_cert=str(cert), tls_key=str(other_key))
    assert status == "fail" and "cannot load" in msg
    [(status, msg)] = run(tls_cert=str(tmp_path / "none.crt"), tls_key=str(key))
    assert status == "fail"
    [(status, msg)] = run(tls_cert=str(cert))
    assert status == "fail" and "both" in msg
