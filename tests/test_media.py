"""Media through the real SDK against a real node: parts out of order and resumed, verified
and deduplicated storage, ranged downloads, authorization, expiry/gc, quota, limits."""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
import trio
from nacl.signing import SigningKey

from node.app import Node
from node.client import Client, RpcError
from node.client.media import download_file, upload_file, upload_id_for
from tests.conftest import fedgram, make_config
from tests.helpers import admin, next_of, send, signed_in

PART = 64 * 1024  # small parts keep the tests fast; the code path is the same


@pytest.fixture
async def mnode(tmp_path: Path) -> Any:
    cfg = make_config(
        tmp_path / "n",
        media={"part_max_bytes": PART, "file_max_bytes": 4 << 20, "quota_bytes": 3 << 20},
    )
    async with Node.start(cfg) as n:
        yield n


def blobs(node: Node) -> list[Path]:
    return [p for p in node.config.media_dir.rglob("*") if p.is_file() and len(p.name) == 64]


def png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = b"".join(b"\x00" + b"\x00\x00\x00" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + (chunk(b"IEND", b""))
    )


async def _parts(c: Any, upload_id: str, data: bytes, order: list[int]) -> None:
    for i in order:
        await c.call(
            "media.uploadPart",
            {"upload_id": upload_id, "index": i, "data": data[i * PART : (i + 1) * PART]},
        )


async def test_out_of_order_resume_after_killed_connection(mnode: Node) -> None:
    data = os.urandom(5 * PART + 1234)  # 6 parts, the last one short
    sha = hashlib.sha256(data).hexdigest()
    async with signed_in(mnode, "alice") as c:
        await _parts(c, "up1", data, [4, 0, 2])
    # the connection is gone; a new one asks what is there and sends the rest
    async with signed_in(mnode, "alice", create=False) as c:
        status = await c.call("media.uploadStatus", {"upload_id": "up1"})
        assert status["parts"] == [0, 2, 4] and status["part_size"] == PART
        with pytest.raises(RpcError) as e:
            await c.call(
                "media.complete",
                {
                    "upload_id": "up1",
                    "parts": 6,
                    "size": len(data),
                    "sha256": sha,
                    "name": "x.bin",
                    "mime": "application/octet-stream",
                },
            )
        assert e.value.code == "PART_MISSING" and "1, 3, 5" in e.value.message
        await _parts(c, "up1", data, [5, 3, 1])
        info = await c.call(
            "media.complete",
            {
                "upload_id": "up1",
                "parts": 6,
                "size": len(data),
                "sha256": sha,
                "name": "x.bin",
                "mime": "application/octet-stream",
            },
        )
        assert info["size"] == len(data) and info["sha256"] == sha
        # ranged download reassembles to the same bytes
        got = b""
        for offset in range(0, len(data), 100_000):
            r = await c.call(
                "media.download", {"media_id": info["media_id"], "offset": offset, "limit": 100_000}
            )
            got += r["data"]
        assert got == data and r["eof"] is True
    assert len(blobs(mnode)) == 1
    assert not list((mnode.config.media_dir / "tmp").iterdir())  # parts cleaned up


async def test_corrupted_part_stores_nothing(mnode: Node) -> None:
    data = os.urandom(3 * PART)
    sha = hashlib.sha256(data).hexdigest()
    bad = bytearray(data)
    bad[PART + 10] ^= 0xFF
    async with signed_in(mnode, "alice") as c:
        await _parts(c, "up", bytes(bad), [0, 1, 2])
        with pytest.raises(RpcError) as e:
            await c.call(
                "media.complete",
                {
                    "upload_id": "up",
                    "parts": 3,
                    "size": len(data),
                    "sha256": sha,
                    "name": "f",
                    "mime": "application/octet-stream",
                },
            )
        assert e.value.code == "CHECKSUM_MISMATCH"
        status = await c.call("media.uploadStatus", {"upload_id": "up"})
        assert status["parts"] == []  # the upload is gone: start again
    assert blobs(mnode) == []
    assert [p for p in mnode.config.media_dir.rglob("*") if p.is_file()] == []


async def test_same_file_twice_is_stored_once(mnode: Node, tmp_path: Path) -> None:
    f = tmp_path / "photo.png"
    f.write_bytes(png(40, 30) + os.urandom(3 * PART))
    async with signed_in(mnode, "alice") as a, signed_in(mnode, "bob") as b:
        ia = await upload_file(a, f, "one")
        ib = await upload_file(b, f, "other")
        assert ia["media_id"] != ib["media_id"] and ia["sha256"] == ib["sha256"]
        assert (ia["width"], ia["height"]) == (40, 30) and ia["mime"] == "image/png"
    assert len(blobs(mnode)) == 1
    stats = await admin(mnode, "admin.mediaStats")
    assert (stats["media"], stats["blobs"], stats["files_on_disk"]) == (2, 1, 1)


async def test_media_in_messages_and_who_may_download(mnode: Node, tmp_path: Path) -> None:
    f = tmp_path / "report.pdf"
    f.write_bytes(os.urandom(2 * PART + 5))
    async with (
        signed_in(mnode, "alice") as a,
        signed_in(mnode, "bob") as b,
        signed_in(mnode, "carol") as c,
    ):
        info = await upload_file(a, f, "rep", mime="application/pdf")
        mid = info["media_id"]
        # before it is sent anywhere only the uploader may read it
        for who in (b, c):
            with pytest.raises(RpcError) as e:
                await who.call("media.download", {"media_id": mid, "offset": 0, "limit": 10})
            assert e.value.code == "MEDIA_FORBIDDEN"
        chat = (await a.call("chats.startPrivate", {"user": "bob"}))["chat"]["id"]
        seq = await send(a, chat, "the report", media=[{"media_id": mid, "kind": "document"}])
        ev = await next_of(b, "chat.event", timeout=5)
        while ev["event"]["seq"] != seq:
            ev = await next_of(b, "chat.event", timeout=5)
        (m,) = ev["event"]["body"]["media"]
        assert m["media_id"] == mid and m["size"] == f.stat().st_size and m["kind"] == "document"
        assert m["name"] == "report.pdf" and m["mime"] == "application/pdf"
        out = tmp_path / "copy.pdf"
        await download_file(b, mid, out)
        assert out.read_bytes() == f.read_bytes()
        # carol is in no chat that carries it, and cannot attach it either
        with pytest.raises(RpcError) as e:
            await c.call("media.info", {"media_id": mid})
        assert e.value.code == "MEDIA_FORBIDDEN"
        cb = (await c.call("chats.startPrivate", {"user": "bob"}))["chat"]["id"]
        with pytest.raises(RpcError) as e:
            await send(c, cb, "stolen", media=[{"media_id": mid, "kind": "document"}])
        assert e.value.code == "MEDIA_FORBIDDEN"
        # bob may forward it (he can read it), and then carol can download it
        fwd = await b.call(
            "messages.send",
            {"chat": cb, "random_id": 7, "forward_from": {"chat": chat, "seq": seq}},
        )
        assert fwd["seq"] > 1
        assert (await c.call("media.info", {"media_id": mid}))["size"] == f.stat().st_size
        # deleting the message for everyone takes bob's access away (alice uploaded it)
        await a.call("messages.delete", {"chat": chat, "seq": seq})
        await b.call("messages.delete", {"chat": cb, "seq": fwd["seq"]})
        with pytest.raises(RpcError) as e:
            await b.call("media.info", {"media_id": mid})
        assert e.value.code == "MEDIA_FORBIDDEN"
        with pytest.raises(RpcError) as e:
            await b.call("media.info", {"media_id": "nosuchmedia"})
        assert e.value.code == "MEDIA_NOT_FOUND"


async def test_part_and_file_limits_and_quota(mnode: Node, tmp_path: Path) -> None:
    async with signed_in(mnode, "alice") as c:
        cases = [
            ({"upload_id": "u", "index": 0, "data": b"x" * (PART + 1)}, "PART_TOO_BIG"),
            ({"upload_id": "u", "index": 64, "data": b"x"}, "FILE_TOO_BIG"),
            ({"upload_id": "bad id!", "index": 0, "data": b"x"}, "PARAMS_INVALID"),
            ({"upload_id": "u", "index": -1, "data": b"x"}, "PARAMS_INVALID"),
        ]
        for params, code in cases:
            with pytest.raises(RpcError) as e:
                await c.call("media.uploadPart", params)
            assert e.value.code == code, params
        # a short part in the middle
        await c.call("media.uploadPart", {"upload_id": "s", "index": 0, "data": b"x" * 10})
        await c.call("media.uploadPart", {"upload_id": "s", "index": 1, "data": b"x" * 10})
        with pytest.raises(RpcError) as e:
            await c.call(
                "media.complete",
                {
                    "upload_id": "s",
                    "parts": 2,
                    "size": 20,
                    "sha256": "0" * 64,
                    "name": "s",
                    "mime": "text/plain",
                },
            )
        assert e.value.code == "PART_INVALID"
        with pytest.raises(RpcError) as e:
            await c.call(
                "media.complete",
                {
                    "upload_id": "never",
                    "parts": 1,
                    "size": 1,
                    "sha256": "0" * 64,
                    "name": "n",
                    "mime": "text/plain",
                },
            )
        assert e.value.code == "UPLOAD_NOT_FOUND"
        # quota: 3 MiB per user; two 1.4 MiB files fit, a third does not (not two of exactly
        # 1.5 MiB: with the 20 bytes of the unfinished upload above they are 20 bytes over,
        # which the second upload hit in one CI run of four)
        for i in range(3):
            f = tmp_path / f"q{i}"
            f.write_bytes(os.urandom((14 << 20) // 10))
            if i < 2:
                await upload_file(c, f, f"q{i}")
            else:
                with pytest.raises(RpcError) as e:
                    await upload_file(c, f, f"q{i}")
                assert e.value.code == "QUOTA_EXCEEDED"
        # the node kept serving
        assert (await c.call("system.ping", {"ping_id": 3}))["ping_id"] == 3


async def test_expiry_and_gc(tmp_path: Path) -> None:
    cfg = make_config(
        tmp_path / "n", media={"part_max_bytes": PART, "upload_ttl": 1, "gc_interval": 3600}
    )
    async with Node.start(cfg) as node, signed_in(node, "alice") as c:
        f = tmp_path / "kept"
        f.write_bytes(os.urandom(PART + 1))
        kept = await upload_file(c, f, "kept")
        chat = (await c.call("chats.createGroup", {"title": "me"}))["chat"]["id"]
        await send(c, chat, "keep", media=[{"media_id": kept["media_id"], "kind": "document"}])
        g = tmp_path / "unsent"
        g.write_bytes(os.urandom(PART + 2))
        await upload_file(c, g, "unsent")
        # carried only by a message deleted for everyone: no one else can read it any more
        h = tmp_path / "deleted"
        h.write_bytes(os.urandom(PART + 3))
        gone = await upload_file(c, h, "deleted")
        seq = await send(
            c, chat, "oops", media=[{"media_id": gone["media_id"], "kind": "document"}]
        )
        await c.call("messages.delete", {"chat": chat, "seq": seq})
        await c.call("media.uploadPart", {"upload_id": "abandoned", "index": 0, "data": b"x"})
        assert len(blobs(node)) == 3
        await trio.sleep(1.2)
        # the gc of leftovers waits out a grace period of min(60 s, upload_ttl)
        r = await admin(node, "admin.mediaGc")
        assert r["expired_uploads"] == 1 and r["dropped_media"] == 2 and r["removed_files"] == 2
        with pytest.raises(RpcError) as e:
            await c.call("media.info", {"media_id": gone["media_id"]})
        assert e.value.code == "MEDIA_NOT_FOUND"
        assert [p.name for p in blobs(node)] == [kept["sha256"]]
        assert list((node.config.media_dir / "tmp").iterdir()) == []
        status = await c.call("media.uploadStatus", {"upload_id": "abandoned"})
        assert status["parts"] == []
        # the attached one still downloads
        out = tmp_path / "again"
        await download_file(c, kept["media_id"], out)
        assert out.read_bytes() == f.read_bytes()


async def test_download_resumes_a_partial_file(mnode: Node, tmp_path: Path) -> None:
    f = tmp_path / "big.bin"
    f.write_bytes(os.urandom(10 * PART + 77))
    async with signed_in(mnode, "alice") as c:
        info = await upload_file(c, f, "big")
        out = tmp_path / "out.bin"
        (tmp_path / "out.bin.part").write_bytes(f.read_bytes()[: 3 * PART + 5])
        moved: list[int] = []
        await download_file(c, info["media_id"], out, progress=moved.append, chunk=PART)
        assert out.read_bytes() == f.read_bytes()
        assert moved[0] == 3 * PART + 5  # what was already there
        assert sum(moved) == f.stat().st_size


async def test_200_mb_round_trip(node: Node, tmp_path: Path) -> None:
    """Default part and chunk sizes, the real ones: 200 MB up and down, same SHA-256."""
    f = tmp_path / "big.bin"
    block = os.urandom(1 << 20)
    with open(f, "wb") as out:
        for i in range(200):
            out.write(block[i:] + block[:i])
    async with signed_in(node, "alice") as c:
        info = await upload_file(c, f, upload_id_for(f))
        copy = tmp_path / "copy.bin"
        await download_file(c, info["media_id"], copy)
    assert info["size"] == 200 << 20
    assert copy.stat().st_size == f.stat().st_size
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == info["sha256"]


async def test_full_disk_keeps_nothing_and_the_node_serves(
    node_process: Any, tmp_path: Path
) -> None:
    # the node process may not grow any file past 24 MiB: writes fail as on a full disk
    n = node_process("n1", max_file_bytes=24 << 20)
    fedgram("user", "add", "alice", "--data", str(n.data), check=True)
    code = fedgram("user", "code", "alice", "--data", str(n.data), check=True).stdout.strip()
    big, small = tmp_path / "big.bin", tmp_path / "small.bin"
    big.write_bytes(os.urandom(32 << 20))
    small.write_bytes(os.urandom(1 << 20))
    async with Client.connect(n.url) as c:
        await c.sign_in("alice", code, SigningKey.generate(), "phone")
        with pytest.raises(RpcError) as e:
            await upload_file(c, big, "big")
        assert e.value.code == "DISK_FULL"
        assert [p for p in (n.data / "media").rglob("*") if len(p.name) == 64] == []
        # the node keeps serving, and a file that fits is stored
        info = await upload_file(c, small, "small")
        assert info["size"] == 1 << 20
        assert (await c.call("system.ping", {"ping_id": 9}))["ping_id"] == 9


async def test_acknowledged_parts_survive_kill_9(node_process: Any, tmp_path: Path) -> None:
    n = node_process("n1")
    fedgram("user", "add", "alice", "--data", str(n.data), check=True)
    code = fedgram("user", "code", "alice", "--data", str(n.data), check=True).stdout.strip()
    key = SigningKey.generate()
    f = tmp_path / "doc.bin"
    async with Client.connect(n.url) as c:
        await c.sign_in("alice", code, key, "phone")
        part = (await c.call("media.uploadStatus", {"upload_id": "doc"}))["part_size"]
        f.write_bytes(os.urandom(6 * part + 99))
        data = f.read_bytes()
        for i in (5, 0, 3):
            await c.call(
                "media.uploadPart",
                {"upload_id": "doc", "index": i, "data": data[i * part : (i + 1) * part]},
            )
    n.kill9()
    n2 = node_process("n1")
    async with Client.connect(n2.url) as c:
        await c.authorize(key)
        status = await c.call("media.uploadStatus", {"upload_id": "doc"})
        assert status["parts"] == [0, 3, 5]
        info = await upload_file(c, f, "doc")  # sends only 1, 2, 4 and completes
        out = tmp_path / "back.bin"
        await download_file(c, info["media_id"], out)
    assert out.read_bytes() == data


async def test_hostile_complete_params_answer_at_once(mnode: Node) -> None:
    """A part count that does not match the size is refused before anything is listed or
    hashed (a huge count must not make the node enumerate it)."""
    async with signed_in(mnode, "alice") as c:
        await c.call("media.uploadPart", {"upload_id": "h", "index": 0, "data": b"x" * PART})
        await c.call("media.uploadPart", {"upload_id": "h", "index": 1, "data": b"y" * 10})
        base = {"upload_id": "h", "sha256": "0" * 64, "name": "h", "mime": "text/plain"}
        for parts, size in [(2**52, PART + 10), (3, PART + 10), (1, PART + 10), (2, 4 << 40)]:
            with trio.fail_after(5), pytest.raises(RpcError) as e:
                await c.call("media.complete", {**base, "parts": parts, "size": size})
            assert e.value.code in ("PART_INVALID", "FILE_TOO_BIG"), (parts, size)
        # parts recorded that do not add up to the declared size: refused without hashing
        with pytest.raises(RpcError) as e:
            await c.call("media.complete", {**base, "parts": 2, "size": PART + 11})
        assert e.value.code == "PART_INVALID"
        assert (await c.call("media.uploadStatus", {"upload_id": "h"}))["parts"] == [0, 1]
        assert (await c.call("system.ping", {"ping_id": 1}))["ping_id"] == 1


def _stored_files_match_their_names(node: Node) -> None:
    for p in blobs(node):
        assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name


async def _complete_into(c: Any, params: dict[str, Any], results: list[str]) -> None:
    try:
        await c.call("media.complete", params)
        results.append("ok")
    except RpcError as e:
        results.append(e.code)


async def _late_part(c: Any, upload_id: str) -> None:
    try:
        await c.call("media.uploadPart", {"upload_id": upload_id, "index": 3, "data": b"z" * PART})
    except RpcError as e:
        assert e.code == "PART_INVALID"  # refused while the upload is being completed


async def test_parts_racing_a_complete_never_touch_a_stored_file(mnode: Node) -> None:
    """Two completes and a re-sent (different) part at the same moment: one complete wins,
    the other finds the upload gone, and whatever the order, every content-addressed file
    still hashes to its name (a late part write cannot land in a verified file)."""
    async with signed_in(mnode, "alice") as c:
        for round_ in range(4):
            up = f"race{round_}"
            data = os.urandom(8 * PART)
            await _parts(c, up, data, list(range(8)))
            params = {
                "upload_id": up,
                "parts": 8,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "name": "r",
                "mime": "application/octet-stream",
            }
            results: list[str] = []
            async with trio.open_nursery() as n:
                n.start_soon(_complete_into, c, params, results)
                n.start_soon(_late_part, c, up)
                n.start_soon(_complete_into, c, params, results)
            # the late part came first (mismatch), or the first complete won
            assert sorted(results) in (
                ["UPLOAD_NOT_FOUND", "ok"],
                ["CHECKSUM_MISMATCH", "UPLOAD_NOT_FOUND"],
            ), results
            _stored_files_match_their_names(mnode)
        assert (await c.call("system.ping", {"ping_id": 2}))["ping_id"] == 2
    assert len(mnode.media._guards) == 0  # nothing is kept per upload once it is quiet


async def test_unfinished_uploads_count_against_the_quota(mnode: Node) -> None:
    """Quota 3 MiB: parts of uploads never completed count too, so no one can fill the disk
    with abandoned uploads; completing an upload does not count its bytes twice."""
    chunk = os.urandom(PART)
    async with signed_in(mnode, "alice") as c:
        for i in range(48):  # 48 x 64 KiB = 3 MiB, spread over several uploads
            await c.call("media.uploadPart", {"upload_id": f"p{i % 3}", "index": i, "data": chunk})
        with pytest.raises(RpcError) as e:
            await c.call("media.uploadPart", {"upload_id": "p9", "index": 0, "data": b"x"})
        assert e.value.code == "QUOTA_EXCEEDED"
    async with signed_in(mnode, "bob") as c:  # quotas are per user
        await c.call("media.uploadPart", {"upload_id": "p9", "index": 0, "data": chunk})


async def test_last_part_resent_shorter_still_completes(mnode: Node) -> None:
    data = os.urandom(PART + 50)
    async with signed_in(mnode, "alice") as c:
        await c.call("media.uploadPart", {"upload_id": "s", "index": 0, "data": data[:PART]})
        # first a wrong, longer last part; then the right one
        await c.call("media.uploadPart", {"upload_id": "s", "index": 1, "data": b"q" * 100})
        await c.call("media.uploadPart", {"upload_id": "s", "index": 1, "data": data[PART:]})
        info = await c.call(
            "media.complete",
            {
                "upload_id": "s",
                "parts": 2,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "name": "s",
                "mime": "application/octet-stream",
            },
        )
        r = await c.call(
            "media.download", {"media_id": info["media_id"], "offset": 0, "limit": 1 << 20}
        )
        assert r["data"] == data and r["eof"] is True
    _stored_files_match_their_names(mnode)


async def test_upload_ids_are_per_user(mnode: Node) -> None:
    """Another user naming the same upload id neither sees nor completes nor mixes into it."""
    data = os.urandom(PART + 9)
    async with signed_in(mnode, "alice") as a, signed_in(mnode, "bob") as b:
        await _parts(a, "same", data, [0, 1])
        assert (await b.call("media.uploadStatus", {"upload_id": "same"}))["parts"] == []
        params = {
            "upload_id": "same",
            "parts": 2,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "name": "a",
            "mime": "application/octet-stream",
        }
        with pytest.raises(RpcError) as e:
            await b.call("media.complete", params)
        assert e.value.code == "UPLOAD_NOT_FOUND"
        await b.call("media.uploadPart", {"upload_id": "same", "index": 0, "data": b"b" * PART})
        info = await a.call("media.complete", params)
        assert info["sha256"] == params["sha256"]
        assert (await b.call("media.uploadStatus", {"upload_id": "same"}))["parts"] == [0]


async def test_uploads_in_progress_are_capped(mnode: Node) -> None:
    """Empty parts cost no quota, so the number of unfinished uploads is capped instead."""
    from node.media.service import MAX_UPLOADS_PER_USER

    async with signed_in(mnode, "alice") as c:
        with pytest.raises(RpcError) as e:
            await c.call("media.uploadPart", {"upload_id": "e", "index": 1, "data": b""})
        assert e.value.code == "PART_INVALID"
        slots = trio.Semaphore(32)

        async def start(i: int) -> None:
            async with slots:
                await c.call("media.uploadPart", {"upload_id": f"e{i}", "index": 0, "data": b""})

        async with trio.open_nursery() as n:
            for i in range(MAX_UPLOADS_PER_USER):
                n.start_soon(start, i)
        # parts that were in flight together may overshoot the cap by what was in flight
        # (as any check before a write would); one by one, the cap then holds
        extra = 0
        with pytest.raises(RpcError) as e:
            for extra in range(64):
                await c.call(
                    "media.uploadPart", {"upload_id": f"x{extra}", "index": 0, "data": b""}
                )
        assert e.value.code == "QUOTA_EXCEEDED" and extra <= 48
        stats = await admin(mnode, "admin.mediaStats")
        assert stats["uploads_in_progress"] <= MAX_UPLOADS_PER_USER + 48
        with pytest.raises(RpcError) as e:
            await c.call("media.uploadPart", {"upload_id": "one-more", "index": 0, "data": b""})
        assert e.value.code == "QUOTA_EXCEEDED"
        # an upload already in progress goes on, and the empty one completes
        await c.call("media.uploadPart", {"upload_id": "e7", "index": 0, "data": b""})
        info = await c.call(
            "media.complete",
            {
                "upload_id": "e7",
                "parts": 1,
                "size": 0,
                "sha256": hashlib.sha256(b"").hexdigest(),
                "name": "empty",
                "mime": "text/plain",
            },
        )
        assert info["size"] == 0
