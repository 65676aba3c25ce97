"""Secret chats from the real CLI (subprocesses, ``--json``) against a real node process:
request, accept, messages both ways, a live listener, a file, fingerprints, close, and the
node's folder holding none of the plaintext."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.conftest import REPO, cli_login, cli_people, fedgram


def _client(profile: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return fedgram("client", "secret", *args, "--profile", str(profile), check=check)


def _json(profile: Path, *args: str) -> Any:
    return json.loads(_client(profile, *args, "--json").stdout)


def _listener(profile: Path, count: int) -> subprocess.Popen[str]:
    """`fedgram client secret listen --json --count N` in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "client", "secret", "listen", "--json", "--count",
         str(count), "--timeout", "40", "--profile", str(profile)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )  # fmt: skip


def test_secret_chat_from_the_cli(node_process: Any, tmp_path: Path) -> None:
    n = node_process("n1")
    d = str(n.data)
    for name in ("alice", "bob"):
        fedgram("user", "add", name, "--data", d, check=True)
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    cli_login(n.url, d, "alice", alice, "phone")
    cli_login(n.url, d, "bob", bob, "laptop")

    # any secret command publishes the device's prekeys: bob can now be asked
    assert _json(bob, "list") == []
    started = _json(alice, "start", "@bob")
    chat = started["id"]
    assert started["state"] == "requested" and started["peer"].startswith("bob@")

    listed = _json(bob, "list")
    assert [(c["id"], c["state"]) for c in listed] == [(chat, "incoming")]
    assert chat in _client(bob, "list").stdout
    refused = _client(bob, "send", chat, "too early", check=False)
    assert refused.returncode == 2 and "accept it first" in refused.stderr
    assert _json(bob, "accept", chat)["state"] == "active"

    sent = _json(alice, "send", chat, "hello bob, secretly")
    assert (
        sent["state"] == "sent" and sent["out"] is True and sent["text"] == ("hello bob, secretly")
    )
    hist = _json(bob, "history", chat)
    assert [(m["text"], m["out"]) for m in hist] == [("hello bob, secretly", False)]
    # history read it: alice's copy shows it read once her device syncs
    assert _json(alice, "history", chat)[0]["state"] == "read"

    # a live listener on alice's device sees bob's answer as one JSON line
    listener = _listener(alice, 1)
    try:
        reply = _json(bob, "send", chat, "hi alice", "--ttl", "3600")
        out, err = listener.communicate(timeout=60)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait(10)
    assert listener.returncode == 0, err
    ev = json.loads(out.strip().splitlines()[-1])
    assert ev["type"] == "message" and ev["message"]["text"] == "hi alice"
    assert ev["message"]["id"] == reply["id"] and ev["message"]["ttl"] == 3600

    # the safety numbers match
    fa, fb = _json(alice, "verify", chat), _json(bob, "verify", chat)
    assert fa["fingerprint"] == fb["fingerprint"] and len(fa["fingerprint"].split()) == 12
    assert _client(alice, "verify", chat).stdout.strip() == fa["fingerprint"]

    # a file: encrypted on the device, the node stores ciphertext under no name
    src = tmp_path / "diary.txt"
    src.write_bytes(b"DEAR-DIARY-PLAINTEXT " * 5000)
    fm = _json(bob, "send-file", chat, str(src))
    assert fm["kind"] == "file" and fm["file"]["name"] == "diary.txt"
    assert "meta" not in fm["file"] and "key" not in json.dumps(fm)
    got = _json(alice, "history", chat)[-1]
    assert got["kind"] == "file" and got["file"]["size"] == src.stat().st_size
    # the recipient fetches it by the hash in the message, and decrypts it
    copy = tmp_path / "copy.txt"
    got_file = _json(alice, "download", chat, str(got["seq"]), "-o", str(copy))
    assert got_file == {"path": str(copy), "size": src.stat().st_size}
    assert copy.read_bytes() == src.read_bytes()

    # delete for both, then close
    assert _json(alice, "delete", chat, str(sent["seq"]))["deleted"] == [sent["id"]]
    assert _json(bob, "history", chat)[0]["state"] == "deleted"
    assert _json(alice, "close", chat)["state"] == "closed"
    assert [c["state"] for c in _json(bob, "list")] == ["closed"]
    after = _client(bob, "send", chat, "still there?", check=False)
    assert after.returncode == 2 and "closed" in after.stderr

    # unknown chat: a one-line error, exit 2
    nope = _client(alice, "history", "0123456789abcdef", check=False)
    assert nope.returncode == 2 and nope.stderr.startswith("error: no secret chat")

    # the node's folder (database, WAL, media, logs) holds none of the plaintext
    for p in n.data.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            for needle in (b"hello bob, secretly", b"hi alice", b"DEAR-DIARY-PLAINTEXT"):
                assert needle not in data, (p, needle)
    # and the history is on the devices, in their profiles
    assert (alice / "secret.db").exists() and (bob / "secret.db").exists()


def test_secret_listen_survives_a_node_restart(node_process: Any, tmp_path: Path) -> None:
    n = node_process("n1")
    port = urlsplit(n.url).port
    alice, bob = cli_people(n, tmp_path, "alice", "bob")
    _json(bob, "list")
    chat = _json(alice, "start", "@bob")["id"]
    _json(bob, "accept", chat)
    _json(alice, "list")  # alice's device takes the accept in

    listener = _listener(alice, 2)
    try:
        _json(bob, "send", chat, "before the crash")
        n.kill9()  # the listener loses its connection and retries with backoff
        n = node_process("n1", listen=f"127.0.0.1:{port}")
        _json(bob, "send", chat, "after the crash")
        out, err = listener.communicate(timeout=60)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait(10)
    assert listener.returncode == 0, err
    texts = [json.loads(line)["message"]["text"] for line in out.splitlines()]
    assert texts == ["before the crash", "after the crash"]
    assert "reconnecting in" in err and "Traceback" not in err
