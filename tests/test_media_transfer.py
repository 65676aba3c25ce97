"""The pieces that make media fast (issue 17) keep its bytes exact: the CBOR Blob, the
node's running hash of an upload (with parts re-sent with other bytes, out of order,
concurrently) and its group sync, through a real node and the real SDK."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio

from node.app import Node
from node.client import RpcError
from node.client.media import download_file, upload_file
from node.media import files
from node.protocol.codec import Blob, decode, encode
from tests.conftest import make_config
from tests.helpers import signed_in

PART = 64 * 1024


def test_blob_encodes_as_a_plain_byte_string() -> None:
    for n in (0, 1, 23, 24, 255, 256, 65_535, 65_536, 700_000):
        data = os.urandom(n)
        frame = {"id": 7, "r": {"data": Blob(data), "size": n, "list": [Blob(b"ab"), 3]}}
        plain = {"id": 7, "r": {"data": data, "size": n, "list": [b"ab", 3]}}
        assert encode(frame) == cbor2.dumps(plain)
        assert decode(encode(frame))["r"]["data"] == data
    with pytest.raises(cbor2.CBOREncodeError):
        encode({"x": object()})  # an unknown type is still refused


def test_running_hash_any_order_and_resends(tmp_path: Path) -> None:
    data = os.urandom(7 * PART + 999)
    count = 8
    path = tmp_path / "up"

    def write(h: files.RunningHash, i: int, chunk: bytes) -> None:
        h.begin(i)
        files.write_at(path, i * PART, chunk)
        h.end(path, i, chunk)

    order = list(range(count))
    random.Random(3).shuffle(order)
    h = files.RunningHash(PART)
    for i in order:
        write(h, i, data[i * PART : (i + 1) * PART])
    prefix = h.prefix()
    assert prefix is not None and prefix[1] == len(data)
    assert prefix[0].hexdigest() == hashlib.sha256(data).hexdigest()
    files.verify(path, len(data), hashlib.sha256(data).hexdigest(), prefix)

    # a part written twice (other bytes the second time): the hash is not trusted, and the
    # file's real bytes are what verify checks
    path.unlink()
    h = files.RunningHash(PART)
    for i in range(count):
        write(h, i, data[i * PART : (i + 1) * PART])
    other = bytearray(data)
    other[PART : 2 * PART] = os.urandom(PART)
    write(h, 1, bytes(other[PART : 2 * PART]))
    assert h.prefix() is None
    files.verify(path, len(other), hashlib.sha256(other).hexdigest(), h.prefix())

    # a failed write: unknown bytes on disk, never trusted
    h = files.RunningHash(PART)
    h.begin(0)
    h.end(path, 0, None)
    assert h.prefix() is None


@pytest.fixture
async def node(tmp_path: Path) -> Any:
    cfg = make_config(
        tmp_path / "n",
        media={"part_max_bytes": PART, "download_chunk_max": PART, "quota_bytes": 0},
    )
    async with Node.start(cfg) as n:
        yield n


async def test_part_resent_with_other_bytes_is_what_completes(node: Node, tmp_path: Path) -> None:
    """The node hashed part 1's first bytes as they came; the client then sent other bytes
    for it. The file is the second bytes, and only their hash completes."""
    first = os.urandom(3 * PART)
    final = first[:PART] + os.urandom(PART) + first[2 * PART :]
    async with signed_in(node, "alice") as c:
        for i in range(3):
            await c.call(
                "media.uploadPart",
                {"upload_id": "re", "index": i, "data": first[i * PART : (i + 1) * PART]},
            )
        await c.call(
            "media.uploadPart", {"upload_id": "re", "index": 1, "data": final[PART : 2 * PART]}
        )
        done = {"upload_id": "re", "parts": 3, "size": len(final), "name": "f", "mime": "a/b"}
        with pytest.raises(RpcError) as e:
            await c.call("media.complete", {**done, "sha256": hashlib.sha256(first).hexdigest()})
        assert e.value.code == "CHECKSUM_MISMATCH"
        # the mismatch dropped the upload: send it again, with the part resent concurrently
        async with trio.open_nursery() as nursery:
            for i in (2, 1, 0, 1):
                chunk = final[i * PART : (i + 1) * PART]
                nursery.start_soon(
                    c.call, "media.uploadPart", {"upload_id": "re", "index": i, "data": chunk}
                )
        info = await c.call("media.complete", {**done, "sha256": hashlib.sha256(final).hexdigest()})
        out = tmp_path / "out.bin"
        await download_file(c, info["media_id"], out, chunk=PART // 2 + 7)
    assert out.read_bytes() == final


async def test_many_parts_in_flight_share_syncs_and_complete(node: Node, tmp_path: Path) -> None:
    """32 parts in flight: all durable when acknowledged (listed), hashed as they came, and
    the file downloads back identical in chunks the node caps (asked for more than it
    serves: the SDK asks again for the rest of each range)."""
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(40 * PART + 5))
    async with signed_in(node, "bob") as c:
        info = await upload_file(c, src, "many", parallel=32)
        assert info["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
        out = tmp_path / "back.bin"
        await download_file(c, info["media_id"], out, chunk=3 * PART + 1, parallel=5)
    assert out.read_bytes() == src.read_bytes()
