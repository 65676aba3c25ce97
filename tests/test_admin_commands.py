"""The operator's admin commands through the real CLI against a real node process (and on
the stopped node's database where that makes sense): password reset, live sessions, last
seen in `user list`, purging a chat, deleting one media file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from node.app import Node
from node.client import Client
from tests.conftest import REPO, cli_login, cli_people, fedgram
from tests.helpers import admin, fresh_code

# one SDK call as a profile's device, in its own process (the CLI has no command for it)
SDK_CALL = r"""
import json, pathlib, sys, trio
from node.client.profile import Profile
from node.client.signed_in import connect_signed_in

async def main():
    async with connect_signed_in(Profile(pathlib.Path(sys.argv[1]))) as c:
        print(json.dumps(await c.call(sys.argv[2], json.loads(sys.argv[3]))))

trio.run(main)
"""


def sdk(profile: Path, method: str, params: dict[str, Any]) -> Any:
    r = subprocess.run(
        [sys.executable, "-c", SDK_CALL, str(profile), method, json.dumps(params)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _users(d: str) -> dict[str, dict[str, Any]]:
    out = fedgram("user", "list", "--json", "--data", d, check=True).stdout
    return {u["name"]: u for u in json.loads(out)}


def _login(
    url: str, d: str, name: str, profile: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    code = fedgram("user", "code", name, "--data", d, check=True).stdout.strip()
    return fedgram("client", "login", url, name, "--code", code, "--profile", str(profile), *extra)


def test_password_reset_online_and_offline(node_process: Any, tmp_path: Path) -> None:
    n = node_process("n1")
    d = str(n.data)
    fedgram("user", "add", "alice", "--data", d, check=True)
    phone = tmp_path / "phone"
    cli_login(n.url, d, "alice", phone)
    assert sdk(phone, "account.setPassword", {"new": "correct horse"})["has_password"]
    # a new device needs the password now
    laptop = tmp_path / "laptop"
    r = _login(n.url, d, "alice", laptop, "--password", "guess")
    assert r.returncode == 1 and "PASSWORD_INVALID" in r.stderr
    # a code issued before the reset is void after it
    early = fedgram("user", "code", "alice", "--data", d, check=True).stdout.strip()
    r = fedgram("user", "password-reset", "alice", "--data", d)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("removed the password of alice; their devices stay signed in")
    r = fedgram("client", "login", n.url, "alice", "--code", early, "--profile", str(laptop))
    assert r.returncode == 1 and "CODE_" in r.stderr
    r = _login(n.url, d, "alice", laptop)
    assert r.returncode == 0, r.stderr
    # the phone stayed signed in
    fedgram("client", "whoami", "--profile", str(phone), check=True)
    assert not sdk(phone, "account.getProfile", {})["has_password"]

    # --logout: every device revoked, sessions closed
    r = fedgram("user", "password-reset", "alice", "--logout", "--json", "--data", d)
    assert json.loads(r.stdout) == {"name": "alice", "had_password": False, "revoked": 2}
    gone = fedgram("client", "whoami", "--profile", str(phone))
    assert gone.returncode == 1 and "DEVICE_REVOKED" in gone.stderr

    # offline, on the stopped node's database, through the same handler
    n.stop()
    r = fedgram("user", "password-reset", "alice", "--data", d)
    assert r.returncode == 0 and r.stdout.startswith("no password was set for alice")
    r = fedgram("user", "password-reset", "nobody", "--data", d)
    assert r.returncode == 1 and "USER_NOT_FOUND" in r.stderr


def test_session_list_and_last_seen(node_process: Any, tmp_path: Path) -> None:
    start = time.time()
    n = node_process("n1")
    d = str(n.data)
    for name in ("alice", "bob"):
        fedgram("user", "add", name, "--data", d, check=True)
    alice = tmp_path / "alice"
    cli_login(n.url, d, "alice", alice, device="laptop")
    listen = subprocess.Popen(
        [sys.executable, "-m", "cli", "client", "listen", "--json", "--profile", str(alice)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rows = json.loads(fedgram("session", "list", "--json", "--data", d, check=True).stdout)
            if any(r["user"] == "alice@n1" for r in rows):
                break
            time.sleep(0.2)
        mine = [r for r in rows if r["user"] == "alice@n1"]  # name@node, as everywhere
        assert len(mine) == 1, json.dumps(rows)
        s = mine[0]
        assert s["role"] == "client" and s["device_name"] == "laptop"
        assert s["ip"] == "127.0.0.1" and s["remote"].startswith("127.0.0.1:")
        assert start - 1 < s["since"] <= time.time()
        text = fedgram("session", "list", "--user", "alice", "--data", d, check=True).stdout
        assert "alice@n1 device #" in text and "laptop" in text and "since" in text
        assert (
            json.loads(fedgram("session", "list", "--user", "bob", "--json", "--data", d).stdout)
            == []
        )
        r = fedgram("session", "list", "--user", "nobody", "--data", d)
        assert r.returncode == 1 and "USER_NOT_FOUND" in r.stderr

        users = _users(d)
        assert users["alice"]["online"] is True
        assert start - 1 < users["alice"]["last_seen"] <= time.time() + 1
        assert users["bob"]["last_seen"] is None and users["bob"]["online"] is False
        assert "online" in fedgram("user", "list", "--data", d, check=True).stdout
    finally:
        listen.terminate()
        listen.wait(10)
        if listen.stdout:
            listen.stdout.close()
    n.stop()
    # stopped: no sessions; last seen kept in the database (written at sign-in)
    r = fedgram("session", "list", "--data", d, check=True)
    assert "no node is running" in r.stdout
    users = _users(d)
    assert users["alice"]["online"] is False
    assert start - 1 < users["alice"]["last_seen"] <= time.time()
    assert "last seen 20" in fedgram("user", "list", "--data", d, check=True).stdout


async def test_last_seen_written_for_online_users(node: Node) -> None:
    """The once-a-minute write, run now: online users are seen now, offline ones keep theirs."""
    await admin(node, "admin.userAdd", {"name": "carol"})
    async with Client.connect(node.url) as c:
        await c.sign_in("carol", await fresh_code(node, "carol"), SigningKey.generate(), "d")
        first = (await admin(node, "admin.userList"))["users"][0]
        signed_in = await node.db.read(
            lambda conn: conn.execute("SELECT last_seen FROM users WHERE name='carol'").fetchone()[
                0
            ]
        )
        assert first["online"] and signed_in is not None
        assert await node.accounts.flush_last_seen() == 1
        later = await node.db.read(
            lambda conn: conn.execute("SELECT last_seen FROM users WHERE name='carol'").fetchone()[
                0
            ]
        )
        assert later >= signed_in
    # the session closed: the next write forgets carol, her last seen stays
    for _ in range(100):
        if not node.hub.online_devices(first["user_id"]):
            break
        import trio

        await trio.sleep(0.02)
    assert await node.accounts.flush_last_seen() == 0
    u = (await admin(node, "admin.userList"))["users"][0]
    assert u["online"] is False and u["last_seen"] == later


def _chat_fixture(node_process: Any, tmp_path: Path) -> tuple[Any, str, Path, Path]:
    n = node_process("n1")
    d = str(n.data)
    alice, bob = cli_people(n, tmp_path, "alice", "bob")
    return n, d, alice, bob


def _upload(src: Path, to: str, profile: Path) -> str:
    r = fedgram("client", "upload", str(src), "--to", to, "--json", "--profile", str(profile),
                check=True)  # fmt: skip
    return str(json.loads(r.stdout)["media"]["media_id"])


def test_chat_purge(node_process: Any, tmp_path: Path) -> None:
    n, d, alice, bob = _chat_fixture(node_process, tmp_path)
    group = fedgram(
        "client", "create-group", "Secret plans", "--members", "bob", "--profile", str(alice),
        check=True,
    ).stdout.strip()  # fmt: skip
    fedgram("client", "send", group, "zanzibar rendezvous", "--profile", str(alice), check=True)
    only_here, shared = tmp_path / "only.bin", tmp_path / "shared.bin"
    only_here.write_bytes(os.urandom(100_000))
    shared.write_bytes(os.urandom(90_000))
    only_id = _upload(only_here, group, alice)
    _upload(shared, group, alice)
    _upload(shared, "@bob", alice)
    # the id bob's message names (the same bytes uploaded twice are bound to one record)
    dm_hist = json.loads(
        fedgram("client", "history", "@alice", "--json", "--profile", str(bob), check=True).stdout
    )
    shared_dm = next(m["media_id"] for e in dm_hist for m in e["body"].get("media", []))
    before = json.loads(fedgram("media", "stats", "--json", "--data", d, check=True).stdout)

    refused = fedgram("chat", "purge", group, "--data", d)
    assert refused.returncode == 2 and "pass --yes" in refused.stderr
    r = fedgram("chat", "purge", group, "--yes", "--json", "--data", d)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["chat"] == group and out["events"] >= 4 and out["members"] == 2
    assert out["media"] == 1  # the file only this chat carried; the shared one stays
    assert out["freed_bytes"] == 100_000

    chats = json.loads(fedgram("chat", "list", "--json", "--data", d, check=True).stdout)
    assert group not in {c["id"] for c in chats}
    bobs = json.loads(
        fedgram("client", "chats", "--json", "--profile", str(bob), check=True).stdout
    )
    assert group not in {c["id"] for c in bobs}
    h = fedgram("client", "history", group, "--profile", str(bob))
    assert h.returncode == 1 and "CHAT_NOT_FOUND" in h.stderr
    found = fedgram("client", "search", "zanzibar", "--json", "--profile", str(bob), check=True)
    assert json.loads(found.stdout) == []
    dl = fedgram("client", "download", only_id, "-o", str(tmp_path / "x"), "--profile", str(alice))
    assert dl.returncode == 1 and "MEDIA_NOT_FOUND" in dl.stderr
    fedgram("client", "download", shared_dm, "-o", str(tmp_path / "s"), "--profile", str(bob),
            check=True)  # fmt: skip
    assert (tmp_path / "s").read_bytes() == shared.read_bytes()
    after = json.loads(fedgram("media", "stats", "--json", "--data", d, check=True).stdout)
    assert after["files_on_disk"] == before["files_on_disk"] - 1
    # bob's devices were told (a pts update): getDifference from 0 lists chat.left purged
    diff = sdk(bob, "updates.getDifference", {"pts": 0, "chats": {}})
    assert any(
        u["kind"] == "chat.left" and u.get("chat") == group and u.get("reason") == "purged"
        for u in diff["updates"]
    )
    again = fedgram("chat", "purge", group, "--yes", "--data", d)
    assert again.returncode == 1 and "CHAT_NOT_FOUND" in again.stderr

    # offline too: the private chat, on the stopped node's database
    dm = sdk(alice, "chats.startPrivate", {"user": "bob"})["chat"]["id"]
    n.stop()
    r = fedgram("chat", "purge", dm, "--yes", "--data", d)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"purged chat {dm}:") and "1 media record(s)" in r.stdout
    assert json.loads(fedgram("chat", "list", "--json", "--data", d, check=True).stdout) == []


def test_media_delete(node_process: Any, tmp_path: Path) -> None:
    n, d, alice, bob = _chat_fixture(node_process, tmp_path)
    f = tmp_path / "pic.bin"
    f.write_bytes(os.urandom(150_000))
    media_id = _upload(f, "@bob", alice)
    import hashlib

    sha = hashlib.sha256(f.read_bytes()).hexdigest()
    blob = n.data / "media" / sha[:2] / sha[2:4] / sha
    assert blob.exists()
    refused = fedgram("media", "delete", media_id, "--data", d)
    assert refused.returncode == 2 and "pass --yes" in refused.stderr
    r = fedgram("media", "delete", media_id, "--yes", "--data", d)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"erased {sha} (0.1 MiB freed, 1 record(s)); 1 message(s)")
    assert not blob.exists()
    hist = json.loads(
        fedgram("client", "history", "@alice", "--json", "--profile", str(bob), check=True).stdout
    )
    att = [m for e in hist for m in e["body"].get("media", [])]
    assert len(att) == 1 and att[0]["media_id"] is None and att[0]["sha256"] == sha  # gone
    dl = fedgram("client", "download", media_id, "-o", str(tmp_path / "x"), "--profile", str(bob))
    assert dl.returncode == 1 and "MEDIA_NOT_FOUND" in dl.stderr
    again = fedgram("media", "delete", sha, "--yes", "--data", d)
    assert again.returncode == 1 and "MEDIA_NOT_FOUND" in again.stderr

    # by SHA-256, on the stopped node
    g = tmp_path / "doc.bin"
    g.write_bytes(os.urandom(70_000))
    _upload(g, "@bob", alice)
    sha2 = hashlib.sha256(g.read_bytes()).hexdigest()
    n.stop()
    r = fedgram("media", "delete", sha2.upper(), "--yes", "--json", "--data", d)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out == {"sha256": sha2, "size": 70_000, "records": 1, "messages": 1, "freed": 70_000}
    assert not (n.data / "media" / sha2[:2] / sha2[2:4] / sha2).exists()
