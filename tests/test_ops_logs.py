"""Logs an operator can use: ``[node] log_format = "json"`` to ``[node] log_file``, and
the security events (``fedgram.security``) of real sign-ins, failed codes, FLOOD_WAITs,
revocations, bans and admin calls, from a real node process driven by the real CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import NodeProcess, fedgram


def set_keys(data: Path, **keys: str) -> None:
    """Set keys in a data folder's config.toml (every key is written by `fedgram init`, so
    each is replaced in place): ``set_keys(d, registration='"open"')``."""
    path = data / "config.toml"
    lines = path.read_text().splitlines()
    for key, value in keys.items():
        hits = [i for i, line in enumerate(lines) if line.split(" = ")[0] == key]
        assert len(hits) == 1, f"{key}: {len(hits)} lines"
        lines[hits[0]] = f"{key} = {value}"
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Any]:
    """Start `fedgram run` on a data folder with its config's own log settings."""
    started: list[NodeProcess] = []

    def start(data: Path) -> NodeProcess:
        n = NodeProcess(data, log_level=None)
        started.append(n)
        return n

    yield start
    for n in started:
        if n.proc.poll() is None:
            n.proc.kill()
            n.proc.wait(10)
        n.close_files()


def init(data: Path) -> None:
    fedgram("init", "--data", str(data), "--name", data.name, "--listen", "127.0.0.1:0", check=True)


def events(lines: list[dict[str, Any]], name: str, /, **fields: Any) -> list[dict[str, Any]]:
    return [
        e
        for e in lines
        if e["event"] == name and all(e["fields"].get(k) == v for k, v in fields.items())
    ]


def test_security_events_as_json_lines_in_a_log_file(running: Any, tmp_path: Path) -> None:
    data = tmp_path / "n1"
    init(data)
    set_keys(data, log_format='"json"', log_file='"logs/node.log"', signin_per_name='"3/600"')
    node = running(data)
    d = str(data)
    fedgram("user", "add", "alice", "--data", d, check=True)
    code = fedgram("user", "code", "alice", "--data", d, check=True).stdout.strip()
    wrong = "000000" if code != "000000" else "111111"
    prof = str(tmp_path / "alice")
    login = ("client", "login", node.url, "alice", "--profile", prof, "--device-name", "laptop")
    assert fedgram(*login, "--code", wrong).returncode != 0
    assert fedgram(*login, "--code", code).returncode == 0
    fedgram("client", "whoami", "--profile", prof, check=True)
    fedgram("user", "logout", "alice", "--data", d, check=True)
    fedgram("user", "ban", "alice", "--data", d, check=True)
    fedgram("user", "unban", "alice", "--data", d, check=True)
    # signin_per_name is 3 per 10 minutes: two more tries, then FLOOD_WAIT
    for _ in range(3):
        fedgram(*login, "--code", wrong)
    node.stop()

    text = (data / "logs" / "node.log").read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert all(set(e) >= {"ts", "level", "logger", "event", "fields"} for e in lines)
    assert events(lines, "node.started")
    sec = [e for e in lines if e["logger"] == "fedgram.security"]
    assert sec and all(e["event"].startswith("security.") for e in sec)

    failed = events(lines, "security.sign_in_failed", name="alice", ip="127.0.0.1")
    assert failed[0]["level"] == "warning"
    assert failed[0]["fields"]["reason"] == "CODE_INVALID"
    assert failed[0]["fields"]["attempts_left"] == "4"
    (signin,) = events(lines, "security.sign_in", user="alice", ip="127.0.0.1")
    assert signin["fields"]["device_name"] == "laptop" and signin["fields"]["device"] >= 1
    (revoked,) = events(lines, "security.devices_revoked", by="admin")
    assert revoked["fields"]["devices"] == str(signin["fields"]["device"])
    assert events(lines, "security.user_banned", user="alice")
    assert events(lines, "security.user_unbanned", user="alice")
    flood = events(lines, "security.flood_wait", group="auth.signin", key="name")
    assert len(flood) == 1 and flood[0]["fields"]["ip"] == "127.0.0.1"  # logged once a minute
    for method in ("admin.userAdd", "admin.userCode", "admin.userLogout", "admin.userBan"):
        (call,) = events(lines, "security.admin", method=method)
        assert call["fields"]["name"] == "alice"
    # never a secret: not the code issued, not the codes tried
    assert code not in text and wrong not in text


def test_text_logs_on_stderr_and_a_bad_log_file(running: Any, tmp_path: Path) -> None:
    data = tmp_path / "n1"
    init(data)
    node = running(data)
    fedgram("user", "add", "bob", "--data", str(data), check=True)
    node.stop()
    err = node.stderr_path.read_text()
    assert "logger=fedgram.security event=security.admin method=admin.userAdd name=bob" in err
    (data / "blocker").write_text("a file, not a folder")
    set_keys(data, log_file='"blocker/node.log"')
    r = fedgram("run", "--data", str(data))
    assert r.returncode == 2 and "[node] log_file" in r.stderr and "cannot open" in r.stderr
