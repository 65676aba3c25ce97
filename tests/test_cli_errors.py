"""What a first-time user gets wrong, through the real `fedgram` command (subprocesses) and
real nodes: every expected failure is one line saying what is wrong and what to do, a
non-zero exit and no traceback. And the way to accept a node that was really re-keyed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import REPO, cli_login, fedgram


def one_clear_line(proc: Any, *needles: str, code: int | None = None) -> str:
    """Non-zero exit, no traceback, one line on stderr naming the problem."""
    assert proc.returncode not in (0, None), proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    if code is not None:
        assert proc.returncode == code, (proc.returncode, lines[0])
    return lines[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("url", "needles"),
    [
        ("127.0.0.1:7601", ["no scheme", "ws://127.0.0.1:7601"]),
        ("http://127.0.0.1:7601", ["not http", "ws://127.0.0.1:7601"]),
        ("https://chat.example.org", ["not https", "wss://chat.example.org"]),
        ("ftp://127.0.0.1:7601", ["scheme must be ws://"]),
        ("ws://127.0.0.1:99999", ["port", "1..65535"]),
        ("ws://:7601", ["no host"]),
        ("", ["empty node URL"]),
    ],
)
def test_bad_urls_say_how_to_write_one(tmp_path: Path, url: str, needles: list[str]) -> None:
    proc = fedgram(
        "client", "login", url, "alice", "--code", "123456", "--profile", str(tmp_path / "p")
    )
    one_clear_line(proc, *needles, code=2)
    assert not (tmp_path / "p").exists()  # refused before anything was written


def test_unreachable_nodes_say_why(tmp_path: Path) -> None:
    prof = str(tmp_path / "p")
    refused = fedgram(
        "client", "login", f"ws://127.0.0.1:{_free_port()}", "alice", "--code", "1234",
        "--profile", prof,
    )  # fmt: skip
    one_clear_line(refused, "CONNECTION_LOST", "connection refused", "is the node running", code=1)
    unknown = fedgram(
        "client", "login", "ws://no-such-host.invalid:7443", "alice", "--code", "1234",
        "--profile", prof,
    )  # fmt: skip
    one_clear_line(unknown, "CONNECTION_LOST", "host name not found", "check the address")


def test_client_errors_against_a_real_node(node_process: Any, tmp_path: Path) -> None:
    n = node_process("n1")
    d = str(n.data)
    fedgram("user", "add", "alice", "--data", d, check=True)
    prof = tmp_path / "alice"
    cli_login(n.url, d, "alice", prof)
    f = tmp_path / "note.txt"
    f.write_text("hello")
    media = fedgram("client", "upload", str(f), "--profile", str(prof), check=True).stdout.strip()

    # a download to a folder that does not exist, or onto a folder
    missing = fedgram(
        "client", "download", media, "-o", str(tmp_path / "missing" / "x"), "--profile", str(prof)
    )
    one_clear_line(missing, "missing", "does not exist", code=2)
    onto_dir = fedgram("client", "download", media, "-o", str(tmp_path), "--profile", str(prof))
    one_clear_line(onto_dir, "is a folder", code=2)
    fine = fedgram(
        "client", "download", media, "-o", str(tmp_path / "copy.txt"), "--profile", str(prof)
    )
    assert fine.returncode == 0 and (tmp_path / "copy.txt").read_text() == "hello"

    # a profile folder that cannot be made (under a file, or a file itself)
    for bad in (f / "profile", f):
        login = fedgram(
            "client", "login", n.url, "alice", "--code", "123456", "--profile", str(bad)
        )
        one_clear_line(login, str(bad), "profile", code=2)
        one_clear_line(fedgram("client", "whoami", "--profile", str(bad)), "profile", code=2)
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        login = fedgram("client", "login", n.url, "alice", "--code", "1", "--profile", str(ro))
        one_clear_line(login, "cannot write the client profile", code=2)

    # damaged profile files: each named, with what to do
    def damaged(name: str, content: bytes) -> subprocess.CompletedProcess[str]:
        copy = tmp_path / f"copy-{name}"
        subprocess.run(["cp", "-r", str(prof), str(copy)], check=True)
        (copy / name).write_bytes(content)
        return fedgram("client", "whoami", "--profile", str(copy))

    one_clear_line(damaged("device.key", b"short"), "device.key", "fedgram client login", code=2)
    one_clear_line(damaged("session.json", b"{oops"), "session.json", "login", code=2)
    one_clear_line(damaged("known_nodes.json", b"[1,"), "known_nodes.json", "remove it", code=2)
    empty = fedgram("client", "whoami", "--profile", str(tmp_path / "nobody"))
    one_clear_line(empty, "not logged in", "fedgram client login", code=1)

    # wss:// to a node that serves ws:// (no TLS proxy in front): says what to try
    port = urlsplit(n.url).port
    tls = fedgram(
        "client", "login", f"wss://127.0.0.1:{port}", "alice", "--code", "123456",
        "--profile", str(tmp_path / "tls"),
    )  # fmt: skip
    one_clear_line(tls, "CONNECTION_LOST", "TLS failed", "ws://", code=1)

    # the node stops: the saved session's node cannot be reached, and we are told why
    assert n.stop() == 0
    gone = fedgram("client", "whoami", "--profile", str(prof))
    one_clear_line(gone, "CONNECTION_LOST", n.url, "connection refused", "is the node running")


def test_damaged_node_key_and_database(tmp_path: Path) -> None:
    d = tmp_path / "n"
    fedgram("init", "--data", str(d), "--listen", "127.0.0.1:0", check=True)
    fedgram("user", "add", "alice", "--data", str(d), check=True)  # creates the database
    key = (d / "node.key").read_bytes()

    (d / "node.key").write_bytes(key[:5])
    for args in (["run"], ["user", "list"], ["chat", "list"]):
        proc = fedgram(*args, "--data", str(d))
        one_clear_line(proc, "node.key", "damaged node key", "backup", code=2)
    (d / "node.key").write_bytes(key)

    (d / "fedgram.db").write_bytes(os.urandom(8192))
    for args in (["run"], ["user", "list"], ["media", "stats"]):
        proc = fedgram(*args, "--data", str(d), timeout=30)
        one_clear_line(proc, "fedgram.db", "not a database", "backup", code=2)


def test_forget_node_accepts_a_rekeyed_node(node_process: Any, tmp_path: Path) -> None:
    old = node_process("old")
    port = urlsplit(old.url).port
    fedgram("user", "add", "alice", "--data", str(old.data), check=True)
    prof = tmp_path / "alice"
    cli_login(old.url, str(old.data), "alice", prof)
    assert old.node_id in (prof / "known_nodes.json").read_text()
    assert old.stop() == 0

    # a new node (a new key) on the same address: refused, and told how to accept it
    new = node_process("new", listen=f"127.0.0.1:{port}")
    assert new.node_id != old.node_id
    fedgram("user", "add", "alice", "--data", str(new.data), check=True)
    code = fedgram("user", "code", "alice", "--data", str(new.data), check=True).stdout.strip()
    refused = fedgram("client", "whoami", "--profile", str(prof))
    line = one_clear_line(refused, "NODE_KEY_MISMATCH", new.node_id, old.node_id, code=1)
    assert f"fedgram client forget-node {old.url}" in line
    login = ["client", "login", new.url, "alice", "--code", code, "--profile", str(prof)]
    one_clear_line(fedgram(*login), "NODE_KEY_MISMATCH", "forget-node")

    # not interactive and no --yes: refuses to guess
    no_tty = subprocess.run(
        [sys.executable, "-m", "cli", "client", "forget-node", new.url, "--profile", str(prof)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    one_clear_line(no_tty, "--yes", code=2)
    assert old.node_id in (prof / "known_nodes.json").read_text()
    bad = fedgram("client", "forget-node", "127.0.0.1:1", "--yes", "--profile", str(prof))
    one_clear_line(bad, "ws://127.0.0.1:1", code=2)

    out = fedgram("client", "forget-node", new.url, "--yes", "--profile", str(prof), check=True)
    assert f"127.0.0.1:{port}" in out.stdout
    assert json.loads((prof / "known_nodes.json").read_text()) == {}
    again = fedgram("client", "forget-node", new.url, "--yes", "--profile", str(prof), check=True)
    assert "no node key is pinned" in again.stdout

    # logging in again pins the new key
    assert "logged in as alice@new" in fedgram(*login, check=True).stdout
    assert json.loads((prof / "known_nodes.json").read_text()) == {f"127.0.0.1:{port}": new.node_id}
    who = fedgram("client", "whoami", "--profile", str(prof), check=True).stdout
    assert who.startswith("alice@new")
