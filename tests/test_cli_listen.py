"""`fedgram client listen` from the real CLI against real node processes: a new device sees
its recent dialogs first; a listener survives the node restarting (kill -9 and a clean
stop) and prints what was sent meanwhile exactly once; it exits non-zero, saying why, when
its device is revoked."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.conftest import REPO, cli_login, fedgram


def _client(profile: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return fedgram("client", *args, "--profile", str(profile), check=check)


class Listener:
    """`fedgram client listen --json` in the background; its lines read with a deadline."""

    def __init__(self, profile: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "client", "listen", "--json", *extra,
             "--profile", str(profile)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )  # fmt: skip
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.err: list[str] = []
        threading.Thread(target=self._pump_out, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line)

    def next(self, timeout: float = 30) -> dict[str, Any]:
        line = self.lines.get(timeout=timeout)
        assert line is not None, f"listen ended ({self.proc.wait(10)}): {''.join(self.err)}"
        return dict(json.loads(line))

    def wait(self, timeout: float = 60) -> int:
        rc = self.proc.wait(timeout)
        time.sleep(0.2)  # let the pumps drain
        return rc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _lines(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(x) for x in proc.stdout.splitlines()]


def _kinds(updates: list[dict[str, Any]]) -> list[str]:
    return [u["event"]["kind"] for u in updates if u["type"] == "chat.event"]


def _texts(updates: list[dict[str, Any]]) -> list[str]:
    return [
        u["event"]["body"]["text"]
        for u in updates
        if u["type"] == "chat.event" and u["event"]["kind"] == "message"
    ]


def test_new_device_listen_shows_recent_dialogs(node_process: Any, tmp_path: Path) -> None:
    n = node_process("n1")
    d = str(n.data)
    for name in ("alice", "bob"):
        fedgram("user", "add", name, "--data", d, check=True)
    alice, phone = tmp_path / "alice", tmp_path / "bob-phone"
    cli_login(n.url, d, "alice", alice)
    cli_login(n.url, d, "bob", phone, "phone")
    group = _client(alice, "create-group", "Family", "--members", "bob").stdout.strip()
    _client(alice, "send", group, "dinner at 8?")
    _client(phone, "send", group, "ok!")  # sending reads the chat up to there
    _client(alice, "send", group, "bring bread")
    chat = _client(alice, "start", "@bob").stdout.strip()
    _client(alice, "send", "@bob", "hi bob")
    _client(alice, "send", "@bob", "are you coming?")

    # a new device: the dialogs, most recent first, with last message and unread count
    laptop = tmp_path / "bob-laptop"
    cli_login(n.url, d, "bob", laptop, "laptop")
    text = _client(laptop, "listen", "--count", "0").stdout.splitlines()
    assert len(text) == 2, text
    assert text[0].startswith(chat) and "(2 unread)" in text[0]
    assert "alice@n1: are you coming?" in text[0]
    assert text[1].startswith(group) and "Family (1 unread)" in text[1]
    assert "alice@n1: bring bread" in text[1]
    # the state is saved: nothing of that is printed again
    assert _client(laptop, "listen", "--count", "0").stdout == ""

    tablet = tmp_path / "bob-tablet"
    cli_login(n.url, d, "bob", tablet, "tablet")
    dialogs = _lines(_client(tablet, "listen", "--count", "0", "--json"))
    assert [(x["type"], x["dialog"]["id"], x["dialog"]["unread"]) for x in dialogs] == [
        ("dialog", chat, 2),
        ("dialog", group, 1),
    ]
    assert dialogs[1]["dialog"]["last"]["body"]["text"] == "bring bread"

    # then only what is new, once
    _client(alice, "send", group, "and cheese")
    new = _lines(_client(tablet, "listen", "--count", "1", "--json"))
    assert _texts(new) == ["and cheese"]
    assert _client(tablet, "listen", "--count", "0").stdout == ""


def test_listen_survives_node_restarts(node_process: Any, tmp_path: Path) -> None:
    n = node_process("n1")
    port = urlsplit(n.url).port
    d = str(n.data)
    for name in ("alice", "bob"):
        fedgram("user", "add", name, "--data", d, check=True)
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    cli_login(n.url, d, "alice", alice)
    cli_login(n.url, d, "bob", bob)
    _client(alice, "send", "@bob", "before anything")
    assert len(_client(bob, "listen", "--count", "0").stdout.splitlines()) == 1  # the dialog

    listener = Listener(bob, "--count", "4")
    try:
        _client(alice, "send", "@bob", "before the crash")
        first = listener.next()
        assert _texts([first]) == ["before the crash"]

        # kill -9: the listener reconnects with backoff, saying so
        n.kill9()
        down = _client(alice, "send", "@bob", "nobody home", check=False)
        assert down.returncode == 1 and "is the node running" in down.stderr
        n = node_process("n1", listen=f"127.0.0.1:{port}")
        # sent while the listener is still waiting to reconnect: comes with getDifference
        _client(alice, "send", "@bob", "after the crash")
        second = listener.next()
        assert _texts([second]) == ["after the crash"]

        # a clean stop (the node says NODE_SHUTDOWN) and a start: the same
        assert n.stop() == 0
        n = node_process("n1", listen=f"127.0.0.1:{port}")
        _client(alice, "send", "@bob", "after the restart 1")
        _client(alice, "send", "@bob", "after the restart 2")
        rest = [listener.next(), listener.next()]
        assert listener.wait() == 0, "".join(listener.err)
    finally:
        listener.stop()
    updates = [first, second, *rest]
    assert _texts(updates) == [
        "before the crash",
        "after the crash",
        "after the restart 1",
        "after the restart 2",
    ]
    seqs = [u["event"]["seq"] for u in updates]
    assert seqs == sorted(set(seqs))  # nothing twice, in order
    err = "".join(listener.err)
    assert "Traceback" not in err
    assert err.count("connection lost (") == 2, err
    assert "reconnecting in" in err and err.count(f"reconnected to {n.url}") == 2, err
    # the saved state is where the listener stopped: nothing missed, nothing again
    assert _client(bob, "listen", "--count", "0").stdout == ""


def test_listen_exits_when_its_device_is_revoked(node_process: Any, tmp_path: Path) -> None:
    n = node_process("n1")
    d = str(n.data)
    for name in ("alice", "bob"):
        fedgram("user", "add", name, "--data", d, check=True)
    alice, phone, laptop = tmp_path / "alice", tmp_path / "phone", tmp_path / "laptop"
    cli_login(n.url, d, "alice", alice)
    cli_login(n.url, d, "bob", phone, "phone")
    cli_login(n.url, d, "bob", laptop, "laptop")
    _client(laptop, "listen", "--count", "0")

    listener = Listener(laptop)
    try:
        _client(alice, "send", "@bob", "are you there?")
        got = [listener.next()]
        while _kinds(got)[-1:] != ["message"]:  # the private chat is new: joined, created
            got.append(listener.next())
        assert _texts(got) == ["are you there?"]
        devices = json.loads(_client(phone, "devices", "--json").stdout)
        (laptop_id,) = [x["device_id"] for x in devices if x["name"] == "laptop"]
        _client(phone, "revoke", str(laptop_id))
        rc = listener.wait(30)
    finally:
        listener.stop()
    assert rc == 1
    # with --json the error is JSON too, the last line on stdout; nothing on stderr
    assert not [ln for ln in listener.err if ln.strip()], listener.err
    rest = []
    while (line := listener.lines.get(timeout=5)) is not None:
        rest.append(json.loads(line))
    error = rest[-1]
    assert error["error"] == "SESSION_REVOKED" and "logged out" in error["message"], rest
    assert "fedgram client login" in error["message"]

    # listening again with the revoked device: refused at once, saying what to do
    again = _client(laptop, "listen", check=False)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert "DEVICE_REVOKED" in again.stderr and "fedgram client login" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
