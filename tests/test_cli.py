"""The real `fedgram` command in subprocesses: init, run, status, config errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from node.config import SPEC, read_raw, validate
from tests.conftest import REPO, NodeProcess, fedgram


def one_clear_line(proc: Any, *needles: str) -> None:
    assert proc.returncode not in (0, None)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_help_lists_commands() -> None:
    out = fedgram("--help", check=True).stdout
    for cmd in ("init", "run", "status", "dev"):
        assert cmd in out
    assert "--data" in fedgram("run", "--help", check=True).stdout


def test_init_creates_private_key_and_documented_config(tmp_path: Path) -> None:
    d = tmp_path / "n1"
    out = fedgram(
        "init", "--data", str(d), "--name", "n1", "--listen", "127.0.0.1:7601", check=True
    ).stdout
    assert "node id:" in out
    assert stat.S_IMODE((d / "node.key").stat().st_mode) == 0o600
    cfg = read_raw(d / "config.toml")
    assert cfg["node"]["name"] == "n1" and cfg["node"]["listen"] == "127.0.0.1:7601"
    assert "# Human name of the node" in (d / "config.toml").read_text()
    again = fedgram("init", "--data", str(d))
    one_clear_line(again, "already exists")


def test_shipped_configs_are_valid() -> None:
    files = sorted((REPO / "configs").rglob("*.toml"))
    assert len(files) >= 5
    for f in files:
        validate(read_raw(f), str(f))


@pytest.mark.parametrize(
    ("toml", "needles"),
    [
        ('[node]\nnmae = "x"\n', ["unknown key", "nmae"]),
        ('[nodes]\nname = "x"\n', ["unknown section", "nodes"]),
        ('[limits]\nmax_sessions = "many"\n', ["max_sessions", "must be int"]),
        ('[node]\nlisten = "somewhere"\n', ["listen", "host:port"]),
        ('[node]\nlisten = "127.0.0.1:99999"\n', ["listen", "port"]),
        ("[node\n", ["invalid TOML"]),
    ],
)
def test_config_errors_are_one_line(tmp_path: Path, toml: str, needles: list[str]) -> None:
    d = tmp_path / "n"
    d.mkdir()
    (d / "config.toml").write_text(toml)
    proc = fedgram("run", "--data", str(d))
    one_clear_line(proc, "config.toml", *needles)
    assert proc.returncode == 2


def test_port_in_use_and_unwritable_data_dir(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = fedgram("run", "--data", str(tmp_path / "n"), "--listen", f"127.0.0.1:{port}")
        one_clear_line(proc, "listen", str(port), "in use")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = fedgram("run", "--data", str(blocker / "sub"))
    one_clear_line(proc, str(blocker / "sub"))


def test_run_status_and_clean_shutdown(node_process: Any, tmp_path: Path) -> None:
    n: NodeProcess = node_process("n1")
    assert n.url.startswith("ws://127.0.0.1:") and len(n.node_id) == 32
    sock = n.data / "admin.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    st = json.loads(fedgram("status", "--data", str(n.data), "--json", check=True).stdout)
    assert st["node_id"] == n.node_id and st["url"] == n.url
    assert st["sessions"] == 0 and st["db_bytes"] > 0 and st["uptime"] >= 0
    text = fedgram("status", "--data", str(n.data), check=True).stdout
    assert n.node_id in text and "sessions: 0" in text
    # a second node on the same data folder is refused
    again = fedgram("run", "--data", str(n.data), "--listen", "127.0.0.1:0")
    one_clear_line(again, "already running")
    n.proc.send_signal(signal.SIGINT)
    assert n.proc.wait(15) == 0
    n.stop()
    assert not sock.exists()
    proc = fedgram("status", "--data", str(n.data))
    one_clear_line(proc, "no node is running")
    assert proc.returncode == 3


def test_data_folder_from_environment(tmp_path: Path) -> None:
    d = tmp_path / "envdata"
    fedgram("init", "--listen", "127.0.0.1:0", env={"FEDGRAM_DATA": str(d)}, check=True)
    assert (d / "config.toml").exists() and (d / "node.key").exists()


def test_run_with_no_arguments_uses_user_data_dir(tmp_path: Path) -> None:
    """`fedgram run` alone: default data folder (XDG), 127.0.0.1, default port."""
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 7443)) == 0:
            pytest.skip("something already listens on 127.0.0.1:7443")
    env = {k: v for k, v in os.environ.items() if k != "FEDGRAM_DATA"}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "run"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "ws://127.0.0.1:7443/" in first, first + (proc.stderr.read() if proc.poll() else "")
        data = tmp_path / "xdg" / "fedgram"
        assert (data / "config.toml").exists() and (data / "fedgram.db").exists()
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        proc.stdout.close() if proc.stdout else None
        proc.stderr.close() if proc.stderr else None


def test_config_spec_is_documented() -> None:
    for section, keys in SPEC.items():
        for key, spec in keys.items():
            assert spec.doc, f"[{section}] {key} lacks a doc"


def test_api_docs_are_current() -> None:
    proc = fedgram("dev", "api-docs", "--check")
    assert proc.returncode == 0, proc.stderr
