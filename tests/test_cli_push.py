"""`fedgram client push ...` from the real CLI (subprocesses) against a real node process,
with a real HTTP receiver on 127.0.0.1 in the test (scripts/push_receiver.py)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from scripts.push_receiver import PushReceiver
from tests.conftest import REPO, cli_login, fedgram


async def _cli(profile: Path, *args: str, stdin: bytes | None = None) -> Any:
    """`fedgram client ARGS --profile P` in a thread (the receiver keeps serving meanwhile)."""
    if stdin is None:
        return await trio.to_thread.run_sync(
            lambda: fedgram("client", *args, "--profile", str(profile))
        )

    def piped() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "cli", "client", *args, "--profile", str(profile)],
            input=stdin,
            capture_output=True,
            timeout=60,
            cwd=REPO,
        )

    return await trio.to_thread.run_sync(piped)


async def test_push_register_list_test_open_remove_from_the_cli(
    node_process: Any, tmp_path: Path
) -> None:
    n = node_process("n1")
    await trio.to_thread.run_sync(lambda: fedgram("user", "add", "bob", "--data", str(n.data)))
    prof = tmp_path / "bob"
    other = tmp_path / "other"
    await trio.to_thread.run_sync(lambda: cli_login(n.url, str(n.data), "bob", prof, "phone"))
    rx = PushReceiver()
    async with trio.open_nursery() as nursery:
        await nursery.start(rx.serve)

        bad = await _cli(prof, "push", "register", "ftp://example.org/x", "--json")
        assert bad.returncode == 1 and json.loads(bad.stdout)["error"] == "PUSH_URL_INVALID"

        reg = await _cli(prof, "push", "register", rx.url("/bob"), "--json")
        assert reg.returncode == 0, reg.stderr
        ep = json.loads(reg.stdout)
        assert ep["this_device"] is True and ep["url"] == rx.url("/bob")
        key_file = prof / "push.key"
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
        assert len(key_file.read_bytes()) == 32
        human = await _cli(prof, "push", "register", rx.url("/bob"))  # again: same endpoint
        assert human.stdout.strip() == (
            f"registered push endpoint #{ep['id']} for this device (device #{ep['device_id']})"
        )

        listed = json.loads((await _cli(prof, "push", "list", "--json")).stdout)
        assert [e["id"] for e in listed["endpoints"]] == [ep["id"]]
        assert listed["previews"] is False
        said = (await _cli(prof, "push", "list")).stdout
        assert f"#{ep['id']}" in said and "(this device)" in said and "without previews" in said

        on = await _cli(prof, "push", "previews", "on")
        assert on.stdout.strip() == "notifications now come with previews"
        assert json.loads((await _cli(prof, "push", "previews", "off", "--json")).stdout) == {
            "previews": False
        }

        tested = await _cli(prof, "push", "test", str(ep["id"]))
        assert tested.stdout.strip() == f"test notification sent to endpoint #{ep['id']} (HTTP 200)"
        assert len(rx.of("/bob")) == 1
        body = rx.of("/bob")[0].body

        # the device side: open the POST body from stdin or a file with the profile's key
        opened = await _cli(prof, "push", "open", "--json", stdin=body)
        assert opened.returncode == 0, opened.stderr
        fields = json.loads(opened.stdout)
        assert fields["kind"] == "test" and fields["v"] == 1 and fields["count"] == 1
        saved = tmp_path / "body.bin"
        saved.write_bytes(body)
        sentence = await _cli(prof, "push", "open", str(saved))
        assert sentence.stdout.startswith("test notification from the node")
        # another profile's key does not open it
        (other).mkdir()
        (other / "push.key").write_bytes(os.urandom(32))
        wrong = await _cli(other, "push", "open", str(saved), "--json")
        assert wrong.returncode == 2
        assert json.loads(wrong.stdout)["error"] == "PUSH_PAYLOAD_INVALID"

        removed = await _cli(prof, "push", "remove", str(ep["id"]))
        assert removed.stdout.strip() == f"removed push endpoint #{ep['id']}"
        again = await _cli(prof, "push", "remove", str(ep["id"]), "--json")
        assert again.returncode == 1 and json.loads(again.stdout)["error"] == "PUSH_NOT_FOUND"
        empty = await _cli(prof, "push", "list")
        assert empty.stdout.startswith("no push endpoints")

        status = await trio.to_thread.run_sync(
            lambda: fedgram("status", "--data", str(n.data), "--json")
        )
        push = json.loads(status.stdout)["push"]
        assert push["sent"] == 1 and push["endpoints"] == 0
        said = await trio.to_thread.run_sync(lambda: fedgram("status", "--data", str(n.data)))
        assert "push:     0 endpoints, 0 queued, 1 sent, 0 failed" in said.stdout
        nursery.cancel_scope.cancel()
