"""Chatting from the real CLI (subprocesses) against a real node process: two people, two
devices each, private chat, group and channel, offline catch-up, admin inspection."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import REPO, cli_login, fedgram


def _client(profile: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return fedgram("client", *args, "--profile", str(profile), check=check)


def _seq(sent: subprocess.CompletedProcess[str]) -> int:
    """The seq from `send`'s sentence ("sent to CHAT as #N")."""
    return int(sent.stdout.strip().rsplit("#", 1)[1])


def _listener(profile: Path, count: int) -> subprocess.Popen[str]:
    """`fedgram client listen --json --count N` running in the background."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "client",
            "listen",
            "--json",
            "--count",
            str(count),
            "--profile",
            str(profile),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def _json(profile: Path, *args: str) -> Any:
    return json.loads(_client(profile, *args, "--json").stdout)


def test_two_people_chat_from_the_cli(node_process: Any, tmp_path: Path) -> None:
    n = node_process("n1")
    d = str(n.data)
    for name in ("alice", "bob", "carol"):
        fedgram("user", "add", name, "--data", d, check=True)
    p = {
        (name, dev): tmp_path / f"{name}-{dev}"
        for name in ("alice", "bob")
        for dev in ("phone", "laptop")
    }
    for (name, dev), prof in p.items():
        cli_login(n.url, d, name, prof, dev)
    carol = tmp_path / "carol"
    cli_login(n.url, d, "carol", carol, "phone")
    a1, a2, b1, b2 = (
        p["alice", "phone"],
        p["alice", "laptop"],
        p["bob", "phone"],
        p["bob", "laptop"],
    )

    # both of bob's devices record where they stand; the laptop then goes offline
    for prof in (b1, b2):
        assert _client(prof, "listen", "--count", "0").stdout == ""

    # a private chat by @name; a live listener on bob's phone sees the messages arrive
    chat = _client(a1, "start", "@bob").stdout.strip()
    # bob's phone listens: what arrives before it is connected comes from its catch-up,
    # the rest live; either way 5 updates (joined, create, 3 messages), none twice
    listener = _listener(b1, 5)
    try:
        s1 = _seq(_client(a1, "send", "@bob", "hello bob"))
        s2 = _seq(_client(a2, "send", chat, "from my laptop", "--reply-to", str(s1)))
        s3 = _seq(_client(b2, "send", "@alice", "hi alice!"))
        out, err = listener.communicate(timeout=30)
    finally:
        if listener.poll() is None:
            listener.kill()
    lines = [json.loads(x) for x in out.splitlines()]
    events = [u["event"] for u in lines if u["type"] == "chat.event"]
    assert [e["seq"] for e in events] == [1, s1, s2, s3], (out, err)
    events = events[1:]
    assert events[1]["body"] == {"text": "from my laptop", "reply_to": s1}

    # edit, pin, delete, read; history shows the result on every device
    _client(a1, "edit", chat, str(s1), "hello bob (edited)")
    _client(b1, "pin", chat, str(s1))
    _client(b2, "delete", chat, str(s3))
    hist = _json(b1, "history", chat)
    by_seq = {e["seq"]: e for e in hist}
    assert by_seq[s1]["body"]["text"] == "hello bob (edited)" and by_seq[s1]["edited"]
    assert by_seq[s3]["deleted"] is True
    text = _client(a2, "history", chat).stdout
    assert "hello bob (edited) (edited)" in text and "(deleted)" in text and "pinned" in text
    assert _client(b1, "read", chat).stdout.strip() == f"read {chat} up to #{s3 + 3}, 0 unread"
    dialogs = _json(b2, "chats")
    assert [(x["id"], x["unread"]) for x in dialogs] == [(chat, 0)]  # read on the phone

    # bob's laptop comes back and sees exactly what it missed, then nothing twice
    missed = [
        json.loads(x) for x in _client(b2, "listen", "--count", "0", "--json").stdout.splitlines()
    ]
    missed_events = [u["event"] for u in missed if u["type"] == "chat.event"]
    assert [e["seq"] for e in missed_events] == list(range(1, hist[-1]["seq"] + 2))[
        : len(missed_events)
    ]
    assert {e["kind"] for e in missed_events} >= {"create", "message", "edit", "pin", "delete"}
    assert [u["kind"] for u in missed if u["type"] == "user.update"] == ["chat.joined", "chat.read"]
    again = _client(b2, "listen", "--count", "0", "--json").stdout
    assert again == ""

    # a group with members, an invite, a channel
    g = _client(a1, "create-group", "Weekend", "--members", "bob").stdout.strip()
    token = _client(a1, "invite", g, "--uses", "1").stdout.strip()
    assert _client(carol, "join", token).stdout.strip() == g
    _client(carol, "send", g, "carol here")
    assert "carol here" in _client(b1, "history", g).stdout
    denied = _client(carol, "kick", g, "bob", check=False)
    assert denied.returncode == 1 and "CHAT_ADMIN_REQUIRED" in denied.stderr
    _client(a1, "kick", g, "carol")
    gone = _client(carol, "history", g, check=False)
    assert gone.returncode == 1 and "NOT_A_MEMBER" in gone.stderr
    _client(b1, "leave", g)
    ch = _client(a1, "create-channel", "Announcements").stdout.strip()
    _client(a1, "add", ch, "bob")
    _client(a1, "send", ch, "the first announcement")
    posting = _client(b1, "send", ch, "may I?", check=False)
    assert posting.returncode == 1 and "CHAT_WRITE_FORBIDDEN" in posting.stderr
    found = _json(b2, "search", "announcement")
    assert [(r["chat"], r["body"]["text"]) for r in found] == [(ch, "the first announcement")]
    assert _json(carol, "search", "announcement") == []

    # the admin's view: list, show, export (JSON lines), verify
    chats = json.loads(fedgram("chat", "list", "--json", "--data", d, check=True).stdout)
    assert {c["id"] for c in chats} == {chat, g, ch}
    shown = fedgram("chat", "show", g, "--data", d, check=True).stdout
    assert "Weekend" in shown and "alice@n1 owner" in shown
    lines = fedgram("chat", "export", chat, "--data", d, check=True).stdout.splitlines()
    exported = [json.loads(x) for x in lines]
    assert [e["seq"] for e in exported] == list(range(1, len(exported) + 1))
    # the edit erased the original text; the signed event still commits to it by hash
    assert exported[1]["seq"] == s1 and exported[1]["erased"] is True
    assert exported[1]["content"] is None and "text" not in exported[1]["event"]["body"]
    assert len(exported[1]["event"]["content_hash"]) == 64
    edit = next(e for e in exported if e["event"]["kind"] == "edit")
    assert edit["content_body"] == {"text": "hello bob (edited)"} and not edit["erased"]
    assert "ok:" in fedgram("chat", "verify", chat, "--data", d, check=True).stdout
    missing = fedgram("chat", "show", "nosuchchat", "--data", d)
    assert missing.returncode == 1 and "CHAT_NOT_FOUND" in missing.stderr
    # and with the node stopped, directly on the database
    assert n.stop() == 0
    offline = json.loads(fedgram("chat", "list", "--json", "--data", d, check=True).stdout)
    assert {c["id"] for c in offline} == {chat, g, ch}


async def test_listen_overlapping_catch_up_prints_everything_once(
    node_process: Any, tmp_path: Path
) -> None:
    import trio
    from nacl.signing import SigningKey

    from node.client import Client

    n = node_process("n1")
    d = str(n.data)
    for name in ("alice", "bob"):
        fedgram("user", "add", name, "--data", d, check=True)
    bob = tmp_path / "bob"
    cli_login(n.url, d, "bob", bob, "laptop")
    assert _client(bob, "listen", "--count", "0").stdout == ""
    code = fedgram("user", "code", "alice", "--data", d, check=True).stdout.strip()
    async with Client.connect(n.url) as a:
        await a.sign_in("alice", code, SigningKey.generate(), "phone")
        chat = (await a.call("chats.startPrivate", {"user": "bob"}))["chat"]["id"]
        for i in range(50):  # missed before bob listens
            await a.call("messages.send", {"chat": chat, "random_id": i + 1, "text": f"m{i}"})
        listener = _listener(bob, 202)
        try:
            # more while it catches up and after: catch-up and live stream overlap
            for i in range(50, 200):
                await a.call("messages.send", {"chat": chat, "random_id": i + 1, "text": f"m{i}"})
                if i % 25 == 0:
                    await trio.sleep(0.05)
            out, err = await trio.to_thread.run_sync(lambda: listener.communicate(timeout=60))
        finally:
            if listener.poll() is None:
                listener.kill()
    lines = [json.loads(x) for x in out.splitlines()]
    seqs = [u["event"]["seq"] for u in lines if u["type"] == "chat.event"]
    assert seqs == list(range(1, 202)), err  # the create event and 200 messages, once each
    assert [u["kind"] for u in lines if u["type"] == "user.update"] == ["chat.joined"]
