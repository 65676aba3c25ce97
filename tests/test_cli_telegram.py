"""What Telegram users expect, from the real CLI (subprocesses) against a real node process
(issue 15): read receipts in history, readable `listen` with typing and receipts, unpin,
dialog settings, members and roles, unban, invite links, profile and password.

Alice uses the CLI; the others use the real SDK in the test (fewer ~1 s subprocesses)."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import trio
from nacl.signing import SigningKey

from node.client import Client
from node.client.admin import AdminClient
from tests.conftest import REPO, fedgram
from tests.helpers import next_of, send


async def _cli(profile: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """`fedgram client ARGS --profile P` in a thread (the test's SDK sessions keep going)."""
    proc = await trio.to_thread.run_sync(
        lambda: fedgram("client", *args, "--profile", str(profile))
    )
    if ok:
        assert proc.returncode == 0, (args, proc.stderr)
    else:
        assert proc.returncode != 0, (args, proc.stdout)
    return proc


async def _json(profile: Path, *args: str) -> Any:
    return json.loads((await _cli(profile, *args, "--json")).stdout)


async def _setup(n: Any, tmp_path: Path, names: tuple[str, ...]) -> tuple[Path, dict[str, str]]:
    """Users made on the admin socket; alice logged in with the CLI; codes for the others."""
    codes = {}
    async with AdminClient.connect(n.data) as admin:
        for name in ("alice", *names):
            await admin.call("admin.userAdd", {"name": name})
            codes[name] = (await admin.call("admin.userCode", {"name": name}))["code"]
    alice = tmp_path / "alice"
    await _cli(alice, "login", n.url, "alice", "--code", codes["alice"], "--device-name", "cli")
    return alice, codes


class _Listen:
    """`fedgram client listen` (human-readable) in the background, lines read with a deadline."""

    def __init__(self, profile: Path, count: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "client", "listen", "--count", str(count),
             "--profile", str(profile)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, cwd=REPO,
        )  # fmt: skip
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    async def line(self, timeout: float = 30) -> str:
        got = await trio.to_thread.run_sync(lambda: self.lines.get(timeout=timeout))
        assert got is not None, f"listen ended: {self.proc.stderr and self.proc.stderr.read()}"
        return got

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


async def test_receipts_listen_and_chat_settings_from_the_cli(
    node_process: Any, tmp_path: Path
) -> None:
    n = node_process("n1")
    alice, codes = await _setup(n, tmp_path, ("bob", "carol"))
    async with Client.connect(n.url) as b, Client.connect(n.url) as c:
        await b.sign_in("bob", codes["bob"], SigningKey.generate(), "phone")
        await c.sign_in("carol", codes["carol"], SigningKey.generate(), "phone")
        g = (await _cli(alice, "create-group", "Family", "--members", "bob,carol")).stdout.strip()
        s1 = (await _json(alice, "send", g, "dinner at 8?"))["seq"]
        s2 = (await _json(alice, "send", "@bob", "hi bob"))["seq"]
        pm = (await b.call("chats.startPrivate", {"user": "alice"}))["chat"]["id"]

        # read receipts in history: "read by N" in a group, "read" in a private chat
        await b.call("messages.read", {"chat": g})
        assert (
            (await _cli(alice, "history", g))
            .stdout.splitlines()[-1]
            .endswith("alice@n1: dinner at 8?  ✓ read by 1")
        )
        await b.call("messages.read", {"chat": pm})
        last = (await _cli(alice, "history", "@bob")).stdout.splitlines()[-1]
        assert last.startswith(f"[{s2}] ") and last.endswith("alice@n1: hi bob  ✓ read"), last

        # members with roles, set-role (and a role that is none), ban and unban, unpin
        ms = await _json(alice, "members", g)
        assert ms["chat"] == g and ms["count"] == 3
        assert [(m["user"], m["role"]) for m in ms["members"]] == [
            ("alice@n1", "owner"),
            ("bob@n1", "member"),
            ("carol@n1", "member"),
        ]
        out = (await _cli(alice, "set-role", g, "@bob", "admin")).stdout
        assert out.startswith(f"made bob admin of {g}")
        bad = await _cli(alice, "set-role", g, "bob", "boss", ok=False)
        assert "PARAMS_INVALID" in bad.stderr
        await b.call("chats.kick", {"chat": g, "user": "carol", "ban": True})
        banned = (await _cli(alice, "members", g, "--banned")).stdout
        assert banned.splitlines()[0] == f"1 banned user in {g}:" and "carol@n1" in banned
        assert (await _cli(alice, "unban", g, "carol")).stdout.startswith(f"unbanned carol in {g}")
        await b.call("chats.addMembers", {"chat": g, "users": ["carol"]})
        await b.call("messages.pin", {"chat": g, "seq": s1})
        assert "unpinned the pinned message" in (await _cli(alice, "unpin", g)).stdout
        assert (await b.call("chats.get", {"chat": g}))["chat"]["pinned_seq"] is None

        # dialog settings: mute for a while, pin, archive; then undo each
        muted = await _json(alice, "mute", g, "--for", "8h")
        assert muted["muted"] is True and muted["mute_for"] == 8 * 3600
        await _cli(alice, "pin-dialog", g)
        assert (await _cli(alice, "archive", g)).stdout.strip() == f"archived {g}"
        (d,) = await _json(alice, "chats", "--archived")
        assert (d["id"], d["muted"], d["pinned"], d["archived"]) == (g, True, True, True)
        assert abs(d["muted_until"] - (time.time() + 8 * 3600)) < 120
        for cmd in ("unmute", "unpin-dialog", "unarchive"):
            await _cli(alice, cmd, g)
        d = next(x for x in await _json(alice, "chats") if x["id"] == g)
        assert not (d["muted"] or d["pinned"] or d["archived"]) and d["muted_until"] is None

        # listen, readable: typing, a message, an edit, read receipts
        s3 = (await _json(alice, "send", g, "see you"))["seq"]
        listen = _Listen(alice, 5)
        try:
            # a new device first lists its two dialogs: it is live from then on
            dialogs = [await listen.line(), await listen.line()]
            assert sorted(x.split()[1] for x in dialogs) == ["group", "private"], dialogs
            await c.call("messages.setTyping", {"chat": g})
            m = await send(b, g, "ok")
            await b.call("messages.edit", {"chat": g, "seq": m, "text": "ok, 8 it is"})
            await c.call("messages.read", {"chat": g})
            got = [await listen.line() for _ in range(5)]
        finally:
            listen.stop()
        assert got[0] == "carol is typing in Family…", got
        assert got[1].endswith(f"] Family #{m} bob: ok") and got[1].startswith("["), got
        # bob's reply read alice's "see you" (#s3): a receipt, right after the reply
        assert got[2] == f"bob read up to #{m} in Family" and m > s3, got
        assert got[3].endswith(f"] Family: bob edited #{m}: ok, 8 it is"), got
        assert got[4] == f"carol read up to #{m + 1} in Family", got

        # typing from the CLI reaches the others
        assert (await _cli(alice, "typing", g)).stdout.strip() == (
            f"told the members of {g} you are typing"
        )
        t = await next_of(b, "chat.typing", timeout=10)
        if t["user"] == "carol@n1":  # bob saw carol typing before
            t = await next_of(b, "chat.typing", timeout=10)
        assert (t["chat"], t["user"]) == (g, "alice@n1")
        # a chat one is not in: the stable code
        async with AdminClient.connect(n.data) as admin:
            await admin.call("admin.userAdd", {"name": "dave"})
        other = (await b.call("chats.startPrivate", {"user": "dave"}))["chat"]["id"]
        assert "NOT_A_MEMBER" in (await _cli(alice, "mute", other, ok=False)).stderr


async def test_invites_profile_and_password_from_the_cli(node_process: Any, tmp_path: Path) -> None:
    n = node_process("n1")
    alice, codes = await _setup(n, tmp_path, ("bob",))
    g = (await _cli(alice, "create-group", "Club")).stdout.strip()
    link = (await _cli(alice, "invite", g, "--uses", "5")).stdout.strip()
    (inv,) = await _json(alice, "invites", g)
    assert inv["uses_left"] == 5 and inv["usable"] and inv["creator"] == "alice@n1"
    out = (await _cli(alice, "revoke-invite", g, link)).stdout
    assert out.startswith(f"revoked invite {inv['id']} of {g}")
    listed = (await _cli(alice, "invites", g)).stdout.splitlines()
    assert listed[0] == f"1 invite link for {g}" and "revoked" in listed[1], listed
    async with Client.connect(n.url) as b:
        await b.sign_in("bob", codes["bob"], SigningKey.generate(), "phone")
        try:
            await b.call("chats.join", {"invite": link})
            raise AssertionError("a revoked link let bob in")
        except Exception as e:
            assert getattr(e, "code", None) == "CHAT_INVITE_INVALID"
    bad = await _cli(alice, "revoke-invite", g, "0123456789abcdef", ok=False)
    assert "CHAT_INVITE_INVALID" in bad.stderr

    # profile
    args = ("profile", "set", "--display-name", "Alice A.", "--about", "hi")
    out = (await _cli(alice, *args)).stdout
    assert out.strip() == "set your display name to 'Alice A.' and about line to 'hi'"
    me = await _json(alice, "profile")
    assert (me["display_name"], me["about"], me["has_password"]) == ("Alice A.", "hi", False)

    # password: asked twice without echo (a mismatch changes nothing), set, change, remove
    proc = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-m", "cli", "client", "password", "set", "--profile", str(alice)],
            input="one\ntwo\n", capture_output=True, text=True, cwd=REPO, timeout=60,
        )
    )  # fmt: skip
    assert proc.returncode != 0 and "differ" in proc.stderr, proc.stderr
    out = (await _cli(alice, "password", "set", "--new-password", "s3cret")).stdout
    assert out.startswith("password set")
    again = await _cli(alice, "password", "set", "--new-password", "x", ok=False)
    assert "PASSWORD_REQUIRED" in again.stderr
    wrong = await _cli(
        alice, "password", "change", "--password", "nope", "--new-password", "x", ok=False
    )
    assert "PASSWORD_INVALID" in wrong.stderr
    args = ("password", "change", "--password", "s3cret", "--new-password", "n3w")
    assert (await _cli(alice, *args)).stdout.strip() == "password changed"
    assert (await _json(alice, "password", "remove", "--password", "n3w"))["has_password"] is False
    gone = await _cli(alice, "password", "remove", "--password", "n3w", ok=False)
    assert "has no password" in gone.stderr
