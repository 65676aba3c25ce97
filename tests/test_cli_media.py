"""Files from the real CLI against a real node process: upload with a progress bar, resume
after the upload process is killed, send to a chat, download, admin stats and gc."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import REPO, cli_login, cli_people, fedgram


def test_upload_resume_send_download_from_the_cli(node_process: Any, tmp_path: Path) -> None:
    n = node_process("n1")
    d = str(n.data)
    alice, bob = cli_people(n, tmp_path, "alice", "bob")
    f = tmp_path / "holiday.mp4"
    f.write_bytes(os.urandom(40 << 20))  # 43 parts of the default 960 KiB

    # start an upload and kill it part-way (a lost connection, a closed laptop)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "client",
            "upload",
            str(f),
            "--parallel",
            "1",
            "--profile",
            str(alice),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    deadline = time.monotonic() + 30
    partial = 0
    while time.monotonic() < deadline and partial < 4 << 20:
        time.sleep(0.1)
        partial = sum(p.stat().st_size for p in (n.data / "media" / "tmp").glob("u*"))
    proc.kill()
    proc.wait(10)
    assert 0 < partial < f.stat().st_size

    # re-running resumes: it sends the rest and sends the file to bob
    r = fedgram(
        "client",
        "upload",
        str(f),
        "--to",
        "@bob",
        "--caption",
        "look!",
        "--json",
        "--profile",
        str(alice),
        check=True,
    )
    out = json.loads(r.stdout)
    media_id = out["media"]["media_id"]
    assert out["media"]["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    assert out["message"]["seq"] == 2
    assert "holiday.mp4 (resuming)" in r.stderr and " MiB " in r.stderr  # the bar, on stderr

    hist = json.loads(
        fedgram("client", "history", "@alice", "--json", "--profile", str(bob), check=True).stdout
    )
    (m,) = hist[-1]["body"]["media"]
    assert (m["media_id"], m["kind"], m["mime"]) == (media_id, "video", "video/mp4")
    assert hist[-1]["body"]["text"] == "look!"
    text = fedgram("client", "history", "@alice", "--profile", str(bob), check=True).stdout
    assert f"[video: holiday.mp4 {40 << 20} B id={media_id}]" in text

    copy = tmp_path / "copy.mp4"
    fedgram("client", "download", media_id, "-o", str(copy), "--profile", str(bob), check=True)
    assert copy.read_bytes() == f.read_bytes()
    # an interrupted download left a partial file: re-running continues it
    again = tmp_path / "again.mp4"
    (tmp_path / "again.mp4.part").write_bytes(f.read_bytes()[: 5 << 20])
    r = fedgram("client", "download", media_id, "-o", str(again), "--profile", str(bob))
    assert r.returncode == 0, r.stderr
    assert again.read_bytes() == f.read_bytes() and not (tmp_path / "again.mp4.part").exists()
    missing = fedgram("client", "download", "nosuchmedia", "--profile", str(bob))
    assert missing.returncode == 1 and "MEDIA_NOT_FOUND" in missing.stderr

    stats = json.loads(fedgram("media", "stats", "--json", "--data", d, check=True).stdout)
    assert stats["files_on_disk"] == 1 and stats["bytes_on_disk"] == 40 << 20
    assert stats["refs"] == 1 and stats["uploads_in_progress"] == 0
    assert "removed 0 file(s)" in fedgram("media", "gc", "--data", d, check=True).stdout

    # someone who may not read it gets a clear error and no file
    fedgram("user", "add", "eve", "--data", d, check=True)
    eve = tmp_path / "eve"
    cli_login(n.url, d, "eve", eve)
    denied = fedgram(
        "client", "download", media_id, "-o", str(tmp_path / "x"), "--profile", str(eve)
    )
    assert denied.returncode == 1 and "MEDIA_FORBIDDEN" in denied.stderr
    assert not (tmp_path / "x").exists()


def test_download_names_from_senders_are_made_harmless(tmp_path: Path) -> None:
    """Without -o the file name comes from the uploader: no folders, no hidden files, no
    control characters, and never over an existing file."""
    from cli.client_media_cmds import default_dest

    (tmp_path / "a.png").write_bytes(b"mine")
    cases = {
        "..": "mid",
        ".bashrc": "bashrc",
        "a.png": "a (1).png",
        "..\\..\\evil.txt": "evil.txt",
        "/etc/passwd": "passwd",
        "x\x00y.txt": "xy.txt",
        "": "mid",
    }
    for name, want in cases.items():
        got = default_dest(name, "mid", tmp_path)
        assert got.parent == tmp_path and got.name == want, name
