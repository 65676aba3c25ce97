"""Secret chats' files on the node (docs/secret-chats.md 6.6): a file encrypted on the device
under a one-time key is uploaded as *opaque*, and anyone who names its SHA-256 and size may
read it with media.downloadSecret (the hash of such ciphertext is a capability nobody can
guess); an ordinary file is never readable that way, and the refusal does not tell whether
it exists. Across nodes the recipient's node fetches the file from the uploader's node
(fed.media serves opaque files to any approved peer), verified, and keeps only ciphertext.
The gc keeps an opaque file [secret] ttl, not upload_ttl.

Real nodes, real SDK clients over real WebSockets; a stalled link is a real FaultProxy."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import trio
from nacl.secret import SecretBox
from nacl.utils import random as random_bytes

from node.app import Node
from node.client import Client, RpcError
from node.client.media import (
    download_secret,
    download_secret_file,
    upload_file,
    upload_secret,
)
from node.media import files
from node.media.service import FETCH_PART
from tests.conftest import make_config
from tests.helpers import admin, signed_in
from tests.test_federation import cluster
from tests.test_federation_media import (
    FETCH_WAIT,
    linked_through_proxy,
    media_on,
    post_file,
    served,
    stored,
)

PART = 64 * 1024  # small parts on the one-node tests: the code path is the same
MARKER = b"PLAINTEXT-MARKER-7f3c1a"  # never leaves the "device" unencrypted


def secret_file(size: int) -> tuple[bytes, bytes]:
    """(plaintext, ciphertext) as a secret chat's device would make them: the plaintext
    sprinkled with MARKER, encrypted under a fresh one-time key."""
    plain = (MARKER + os.urandom(1000)) * (size // (len(MARKER) + 1000) + 1)
    return plain[:size], SecretBox(random_bytes(SecretBox.KEY_SIZE)).encrypt(plain[:size])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def refused(c: Client, params: dict[str, Any]) -> RpcError:
    with pytest.raises(RpcError) as e:
        await c.call("media.downloadSecret", {"offset": 0, "limit": 1 << 20, **params})
    return e.value


def marker_in(folder: Path) -> list[Path]:
    """Every file under ``folder`` (databases, WAL, logs, media) holding MARKER."""
    return [p for p in folder.rglob("*") if p.is_file() and MARKER in p.read_bytes()]


@pytest.fixture
async def mnode(tmp_path: Path) -> Any:
    cfg = make_config(tmp_path / "n", media={"part_max_bytes": PART})
    async with Node.start(cfg) as n:
        yield n


async def test_opaque_file_by_hash_on_one_node(mnode: Node, tmp_path: Path) -> None:
    plain, ct = secret_file(3 * PART + 123)
    async with signed_in(mnode, "alice") as al, signed_in(mnode, "bob") as bo:
        info = await upload_secret(al, ct)
        assert info["opaque"] is True and info["size"] == len(ct) and info["sha256"] == sha(ct)
        assert info["name"] == "" and info["mime"] == "application/octet-stream"
        assert "width" not in info

        # bob is in no chat with it: by media id it stays the uploader's ...
        with pytest.raises(RpcError) as e:
            await bo.call("media.download", {"media_id": info["media_id"], "offset": 0, "limit": 9})
        assert e.value.code == "MEDIA_FORBIDDEN"
        # ... by its content address anyone signed in reads it, in ranges
        got = await download_secret(bo, sha(ct), len(ct), chunk=PART)
        assert got == ct
        r = await bo.call(
            "media.downloadSecret",
            {"sha256": sha(ct), "size": len(ct), "offset": len(ct) - 5, "limit": 100},
        )
        assert r == {"data": ct[-5:], "size": len(ct), "eof": True}
        r = await bo.call(
            "media.downloadSecret",
            {"sha256": sha(ct), "size": len(ct), "offset": len(ct) + 7, "limit": 100},
        )
        assert r == {"data": b"", "size": len(ct), "eof": True}

        # resumed from a partial file, the helper's other form
        out = tmp_path / "ct.bin"
        (tmp_path / "ct.bin.part").write_bytes(ct[: PART + 9])
        moved: list[int] = []
        done = await download_secret_file(bo, sha(ct), len(ct), out, progress=moved.append)
        assert out.read_bytes() == ct and done["size"] == len(ct)
        assert moved[0] == PART + 9 and sum(moved) == len(ct)
        # and from bytes already held
        assert await download_secret(bo, sha(ct), len(ct), have=ct[:100]) == ct

        # upload_file's opaque flag does the same for a file on disk
        f = tmp_path / "enc.bin"
        _, ct2 = secret_file(500)
        f.write_bytes(ct2)
        info2 = await upload_file(al, f, "enc", opaque=True, name="", mime="application/x-x")
        assert info2["opaque"] is True
        assert await download_secret(bo, sha(ct2), len(ct2)) == ct2

        # nothing on the node holds the plaintext
        assert MARKER in plain and marker_in(mnode.config.data_dir) == []


async def test_ordinary_files_are_not_readable_by_hash(mnode: Node, tmp_path: Path) -> None:
    f = tmp_path / "plain.txt"
    f.write_bytes(b"an ordinary file " * 1000)
    data = f.read_bytes()
    _, ct = secret_file(2000)
    async with signed_in(mnode, "alice") as al, signed_in(mnode, "bob") as bo:
        plain = await upload_file(al, f, "plain")
        assert "opaque" not in plain
        secret = await upload_secret(al, ct)
        never = await refused(bo, {"sha256": sha(b"never uploaded"), "size": 14})
        assert never.code == "MEDIA_NOT_FOUND"
        other_node = "a" * 32
        for params in (
            {"sha256": sha(data), "size": len(data)},  # an ordinary file: as if unknown
            {"sha256": sha(data), "size": len(data), "node": other_node},
            {"sha256": sha(ct), "size": len(ct) + 1},  # the wrong size
            {"sha256": sha(ct), "size": len(ct) - 1},
            {"sha256": sha(ct + b"x"), "size": len(ct)},  # the wrong hash
            {"sha256": sha(b"never uploaded"), "size": 14, "node": other_node},
        ):
            err = await refused(bo, params)
            assert (err.code, err.message) == (never.code, never.message), params
        # even its uploader reads an ordinary file by media id only
        err = await refused(al, {"sha256": sha(data), "size": len(data)})
        assert (err.code, err.message) == (never.code, never.message)
        # this node named as the source: the local answer, no fetch
        err = await refused(bo, {"sha256": sha(data), "size": len(data), "node": mnode.node_id})
        assert (err.code, err.message) == (never.code, never.message)
        # malformed names are the schema's
        for params in (
            {"sha256": sha(ct).upper(), "size": len(ct)},
            {"sha256": sha(ct)[:-1], "size": len(ct)},
            {"sha256": sha(ct), "size": -1},
            {"sha256": sha(ct), "size": len(ct), "node": "N1"},
        ):
            assert (await refused(bo, params)).code == "PARAMS_INVALID", params
        # the opaque one still reads, and the ordinary one by its media id for its uploader
        assert await download_secret(bo, secret["sha256"], secret["size"]) == ct
        r = await al.call(
            "media.download", {"media_id": plain["media_id"], "offset": 0, "limit": 1 << 20}
        )
        assert r["data"] == data


async def test_gc_keeps_an_opaque_file_for_the_secret_ttl(tmp_path: Path) -> None:
    cfg = make_config(
        tmp_path / "n",
        media={"part_max_bytes": PART, "upload_ttl": 1, "gc_interval": 3600},
        secret={"ttl": 2},
    )
    _, ct = secret_file(PART + 5)
    async with (
        Node.start(cfg) as node,
        signed_in(node, "alice") as al,
        signed_in(node, "bob") as bo,
    ):
        f = tmp_path / "plain.bin"
        f.write_bytes(os.urandom(PART + 6))
        plain = await upload_file(al, f, "plain")
        await upload_secret(al, ct)
        await trio.sleep(1.2)
        # past upload_ttl: the unsent ordinary upload goes, the opaque one stays
        r = await admin(node, "admin.mediaGc")
        assert r["dropped_media"] == 1 and r["removed_files"] == 1
        assert not stored(node, plain["sha256"]) and stored(node, sha(ct))
        assert await download_secret(bo, sha(ct), len(ct)) == ct
        await trio.sleep(1.0)
        # past [secret] ttl: collected like the rest
        r = await admin(node, "admin.mediaGc")
        assert r["dropped_media"] == 1 and r["removed_files"] == 1 and r["freed_bytes"] == len(ct)
        assert not stored(node, sha(ct))
        assert (await refused(bo, {"sha256": sha(ct), "size": len(ct)})).code == "MEDIA_NOT_FOUND"


async def media_rows(n: Node, digest: str) -> list[tuple[Any, ...]]:
    return list(
        await n.db.read(
            lambda c: c.execute(
                "SELECT uploader_id, name, mime, opaque FROM media WHERE sha256 = ?",
                (bytes.fromhex(digest),),
            ).fetchall()
        )
    )


async def test_recipient_on_another_node_downloads_through_its_own_node(tmp_path: Path) -> None:
    plain, ct = secret_file(3 * FETCH_PART - 100)  # three fed.media ranges, the last short
    assert -(-len(ct) // FETCH_PART) == 3
    async with (
        cluster(tmp_path, 2) as (a, b),
        signed_in(a, "alice") as al,
        signed_in(b, "bob") as bo,
        signed_in(b, "carol") as ca,
    ):
        info = await upload_secret(al, ct)
        digest = info["sha256"]
        assert not stored(b, digest)
        # not named: bob's node has no way to know where it is
        err = await refused(bo, {"sha256": digest, "size": len(ct)})
        assert err.code == "MEDIA_NOT_FOUND" and served(a) == 0

        got = await download_secret(bo, digest, len(ct), a.node_id)
        assert got == ct and served(a) == 3 and stored(b, digest)
        # n2 keeps it under an opaque row of its own: nobody's upload, no name
        assert await media_rows(b, digest) == [(None, "", "application/octet-stream", 1)]
        # then served by n2 itself, to anyone there who names it
        assert await download_secret(ca, digest, len(ct), a.node_id) == ct
        assert await download_secret(ca, digest, len(ct)) == ct
        assert served(a) == 3
        # the wrong size is not fetched as named
        err = await refused(bo, {"sha256": digest, "size": len(ct) + 1, "node": a.node_id})
        assert err.code in ("MEDIA_NOT_FOUND", "CHECKSUM_MISMATCH")

        # an ordinary file on n1: n1 does not serve it by hash, n2 keeps nothing
        f = tmp_path / "ordinary.bin"
        f.write_bytes(os.urandom(5000))
        plain_info = await upload_file(al, f, "ordinary")
        never = await refused(bo, {"sha256": sha(b"never"), "size": 5, "node": a.node_id})
        err = await refused(bo, {"sha256": plain_info["sha256"], "size": 5000, "node": a.node_id})
        assert (err.code, err.message) == (never.code, never.message)
        assert not stored(b, plain_info["sha256"])

        # an ordinary file in a chat with bob: n1 would serve it to n2 (a member's
        # node), but n2 never makes it readable by hash to carol, who is not a member
        chat = (await al.call("chats.startPrivate", {"user": "bob@n2"}))["chat"]["id"]
        g = tmp_path / "chat.bin"
        g.write_bytes(os.urandom(6000))
        sent = await post_file(al, chat, g, "chatfile")
        await media_on(bo, chat, sent["seq"])
        err = await refused(ca, {"sha256": sent["sha256"], "size": 6000, "node": a.node_id})
        assert (err.code, err.message) == (never.code, never.message)
        assert not stored(b, sent["sha256"]) and await media_rows(b, sent["sha256"]) == [
            (None, "chat.bin", "application/octet-stream", 0)
        ]
        # and n1 itself: asked for it as a secret file (opaque), it refuses even n2, whose
        # member may read it by the chat rule (n2 would keep it readable by hash)
        async with Client.connect(a.url, identity=b.identity) as as_b:
            ask = {"sha256": sent["sha256"], "offset": 0, "length": 100}
            assert len((await as_b.call("fed.media", ask))["data"]) == 100
            with pytest.raises(RpcError) as e:
                await as_b.call("fed.media", {**ask, "opaque": True})
            assert e.value.code == "NOT_A_REPLICA"
            got_ct = await as_b.call("fed.media", {"sha256": digest, "offset": 0, "length": 10})
            assert got_ct["data"] == ct[:10]

    # only ciphertext on either node: the blob is the encrypted bytes, no plaintext anywhere
    assert files.blob_path(b.config.media_dir, digest).read_bytes() == ct
    assert MARKER in plain
    assert marker_in(tmp_path / "n1") == [] and marker_in(tmp_path / "n2") == []


async def test_fetching_node_answers_media_fetching_and_the_sdk_retries(tmp_path: Path) -> None:
    _, ct = secret_file(FETCH_PART + 1000)  # two fed.media ranges
    async with (
        linked_through_proxy(tmp_path) as (a, b, proxy),
        signed_in(a, "alice") as al,
        signed_in(b, "bob") as bo,
    ):
        info = await upload_secret(al, ct)
        proxy.pause()  # a slow link: n2's fetch stalls
        asked = trio.current_time()
        # bounded: with no time to wait, the first MEDIA_FETCHING is the answer
        with pytest.raises(RpcError) as e:
            await download_secret(bo, info["sha256"], len(ct), a.node_id, fetch_wait=0)
        assert e.value.code == "MEDIA_FETCHING" and e.value.retry_after
        assert trio.current_time() - asked >= FETCH_WAIT and not stored(b, info["sha256"])

        got: list[bytes] = []

        async def download() -> None:
            got.append(await download_secret(bo, info["sha256"], len(ct), a.node_id))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(download)
            await trio.sleep(FETCH_WAIT + 0.3)  # it has heard MEDIA_FETCHING and waits
            assert got == []
            proxy.resume()
        assert got == [ct] and served(a) == 2 and stored(b, info["sha256"])
