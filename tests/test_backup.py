"""`fedgram backup create|restore` against a real node process: a backup taken while a
writer keeps sending holds every message acknowledged before it began (a consistent prefix
of the chat), and a node started on the restored folder serves them and the file's bytes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from tests.conftest import REPO, cli_login, cli_people, fedgram

# A writer that keeps sending as alice (the CLI profile's device) and prints "seq text" for
# every message the node acknowledged, until its stdin closes.
WRITER = r"""
import pathlib, secrets, sys, threading, trio
from node.client.profile import Profile
from node.client.signed_in import connect_signed_in

stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()

async def main():
    async with connect_signed_in(Profile(pathlib.Path(sys.argv[1]))) as c:
        chat = (await c.call("chats.startPrivate", {"user": "bob"}))["chat"]["id"]
        print("chat", chat, flush=True)
        i = 0
        while not stop.is_set():
            i += 1
            text = f"w{i}"
            r = await c.call("messages.send",
                             {"chat": chat, "random_id": secrets.randbits(62), "text": text})
            print(r["seq"], text, flush=True)
            await trio.sleep(0.01)

trio.run(main)
"""


def _history(profile: Path) -> dict[int, str]:
    """Every message of the private chat with alice, paging back 100 at a time."""
    out: dict[int, str] = {}
    before: list[str] = []
    while True:
        page = json.loads(
            fedgram(
                "client", "history", "@alice", "--limit", "100", *before, "--json",
                "--profile", str(profile), check=True,
            ).stdout
        )  # fmt: skip
        out.update({e["seq"]: e["body"].get("text", "") for e in page if e["kind"] == "message"})
        if len(page) < 100 or min(e["seq"] for e in page) <= 1:
            return out
        before = ["--before", str(min(e["seq"] for e in page))]


def test_backup_while_writing_then_restore_into_a_fresh_node(
    node_process: Any, tmp_path: Path
) -> None:
    n = node_process("n1")
    d = str(n.data)
    alice, bob = cli_people(n, tmp_path, "alice", "bob")
    blob = os.urandom(1_300_000)
    src = tmp_path / "photo.bin"
    src.write_bytes(blob)
    up = fedgram(
        "client", "upload", str(src), "--to", "@bob", "--caption", "the photo", "--json",
        "--profile", str(alice), check=True,
    )  # fmt: skip
    media_id = json.loads(up.stdout)["media"]["media_id"]
    for i in range(5):
        fedgram("client", "send", "@bob", f"before {i}", "--profile", str(alice), check=True)

    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(alice)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=REPO,
    )  # fmt: skip
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().startswith("chat ")
        acked: list[tuple[float, int, str]] = []
        # let it write a while, so the backup starts with a busy writer
        while len(acked) < 30:
            seq, text = writer.stdout.readline().split()
            acked.append((time.monotonic(), int(seq), text))
        began = time.monotonic()
        archive = tmp_path / "backups" / "n1.tar.gz"
        archive.parent.mkdir()
        r = fedgram("backup", "create", str(archive), "--data", d, "--json", check=True)
        m = json.loads(r.stdout)
    finally:
        rest, err = writer.communicate("", timeout=30)  # stdin closes: the writer stops
    assert writer.returncode == 0, err
    for line in rest.splitlines():
        seq, text = line.split()
        acked.append((time.monotonic(), int(seq), text))
    during = [a for a in acked if a[0] >= began]
    assert during, "the writer kept sending while the backup ran"
    assert m["online"] is True and r.stderr == ""  # --json: no progress bar
    assert m["node_id"] == n.node_id
    assert (archive.stat().st_mode & 0o777) == 0o600
    assert not list(archive.parent.glob("*.part")) and len(list(archive.parent.iterdir())) == 1
    sha = json.loads(fedgram("client", "history", "@alice", "--json", "--profile", str(bob)).stdout)
    names = {f["path"] for f in m["files"]}
    assert {"fedgram.db", "node.key", "config.toml"} <= names
    assert any(p.startswith("media/") and p.endswith(blob_sha(blob)) for p in names)
    assert sha  # the live chat reads

    # restore into a fresh folder and run a node there
    fresh = tmp_path / "r1"
    r = fedgram("backup", "restore", str(archive), "--data", str(fresh))
    assert r.returncode == 0, r.stderr
    assert "restored the backup" in r.stdout
    assert "restore" in r.stderr  # the progress bar
    assert (fresh / "node.key").read_bytes() == (n.data / "node.key").read_bytes()
    assert (fresh / "node.key").stat().st_mode & 0o777 == 0o600
    r1 = node_process("r1")
    assert r1.node_id == n.node_id
    bob2 = tmp_path / "bob2"
    cli_login(r1.url, str(fresh), "bob", bob2)
    restored = _history(bob2)
    live = _history(bob)
    # a prefix of the live chat: seqs 1..K, each the same message as on the live node
    last = max(restored)
    assert all(restored[s] == live[s] for s in restored)
    assert sorted(s for s in live if s <= last) == sorted(restored)
    # every message acknowledged before the backup began is in it
    for _, seq, text in acked:
        if _ < began:
            assert restored.get(seq) == text
    # in seq order (_history pages backwards, so the dict's own order is by page)
    in_order = [restored[s] for s in sorted(restored)]
    assert [f"before {i}" for i in range(5)] == [t for t in in_order if "before" in t]
    copy = tmp_path / "copy.bin"
    fedgram("client", "download", media_id, "-o", str(copy), "--profile", str(bob2), check=True)
    assert copy.read_bytes() == blob

    # refused: a folder holding a database, a folder a node runs on
    again = fedgram("backup", "restore", str(archive), "--data", str(fresh))
    assert again.returncode == 2 and "a node is running" in again.stderr
    r1.stop()
    again = fedgram("backup", "restore", str(archive), "--data", str(fresh))
    assert again.returncode == 2 and "already holds a database" in again.stderr
    # an existing backup file is never overwritten
    twice = fedgram("backup", "create", str(archive), "--data", d)
    assert twice.returncode == 2 and "already exists" in twice.stderr


def blob_sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _plain_backup(tmp_path: Path, node_process: Any) -> tuple[Path, bytes]:
    """A stopped node's backup as a plain tar, with one uploaded file."""
    n = node_process("n1")
    d = str(n.data)
    fedgram("user", "add", "alice", "--data", d, check=True)
    fedgram("user", "add", "bob", "--data", d, check=True)
    alice = tmp_path / "alice"
    cli_login(n.url, d, "alice", alice)
    blob = os.urandom(200_000)
    (tmp_path / "f.bin").write_bytes(blob)
    fedgram("client", "upload", str(tmp_path / "f.bin"), "--to", "@bob", "--profile", str(alice),
            check=True)  # fmt: skip
    n.stop()
    archive = tmp_path / "n1.tar"
    r = fedgram("backup", "create", str(archive), "--data", d)
    assert r.returncode == 0, r.stderr
    assert "with the node stopped" in r.stdout
    return archive, blob


def test_damaged_and_truncated_archives_are_refused(node_process: Any, tmp_path: Path) -> None:
    archive, blob = _plain_backup(tmp_path, node_process)
    raw = archive.read_bytes()
    # one flipped byte inside the file's bytes
    at = raw.index(blob[1000:1032])
    bad = tmp_path / "flipped.tar"
    bad.write_bytes(raw[:at] + bytes([raw[at] ^ 1]) + raw[at + 1 :])
    r = fedgram("backup", "restore", str(bad), "--data", str(tmp_path / "x1"))
    assert r.returncode == 2
    assert "damaged in the archive" in r.stderr
    assert not (tmp_path / "x1").exists()
    assert not [p for p in tmp_path.iterdir() if ".restoring." in p.name]
    # cut short: in the middle of a file, and just before the manifest
    # (the zero blocks that close a tar carry nothing: without them it restores, verified)
    manifest_at = raw.index(b"fedgram-backup.json")
    for cut, says in ((at, "truncated"), (manifest_at, "no manifest")):
        short = tmp_path / f"short{cut}.tar"
        short.write_bytes(raw[:cut])
        r = fedgram("backup", "restore", str(short), "--data", str(tmp_path / f"y{cut}"))
        assert r.returncode == 2, r.stderr
        assert says in r.stderr
        assert not (tmp_path / f"y{cut}").exists()
    # not a tar at all
    junk = tmp_path / "junk.tar"
    junk.write_bytes(os.urandom(5000))
    r = fedgram("backup", "restore", str(junk), "--data", str(tmp_path / "z"))
    assert r.returncode == 2 and "not a backup archive" in r.stderr
    # a tar that smuggles a path out of the data folder
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as t:
        info = tarfile.TarInfo("../outside")
        info.size = 3
        t.addfile(info, io.BytesIO(b"hey"))
    r = fedgram("backup", "restore", str(evil), "--data", str(tmp_path / "e"), "--json")
    assert r.returncode == 2 and json.loads(r.stdout)["error"] == "BACKUP_INVALID"
    assert "unexpected entry" in json.loads(r.stdout)["message"]
    assert not (tmp_path / "outside").exists()
    # and the intact one restores
    r = fedgram("backup", "restore", str(archive), "--data", str(tmp_path / "ok"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["format"] == 1 and r.stderr == ""


def test_backup_of_a_newer_schema_is_refused_on_restore(node_process: Any, tmp_path: Path) -> None:
    archive, _ = _plain_backup(tmp_path, node_process)
    with tarfile.open(archive) as t:
        members = [(m, t.extractfile(m).read() if m.isfile() else b"") for m in t]  # type: ignore[union-attr]
    edited = tmp_path / "newer.tar"
    with tarfile.open(edited, "w") as t:
        for m, data in members:
            if m.name == "fedgram-backup.json":
                doc = json.loads(data)
                doc["schema"]["node"] = 999
                data = json.dumps(doc).encode()
                m.size = len(data)
            t.addfile(m, io.BytesIO(data))
    r = fedgram("backup", "restore", str(edited), "--data", str(tmp_path / "new"))
    assert r.returncode == 2
    assert "newer than this Fedgram knows" in r.stderr
