"""Media between federating nodes: a file sent from one node downloads, verified, on the
others (fetched through fed.media from the chat's home, else the sender's node), once per
node, resumably; fed.media answers only peers that may read the file; bytes that do not
match the message's SHA-256 are never kept. Real nodes (test_federation's ``cluster``),
real SDK clients; a cut or stalled link is a real FaultProxy between the nodes."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from federation import Federation
from federation.faultproxy import FaultProxy
from node.app import Node
from node.client import Client
from node.client.media import download_file, upload_file
from node.media import files
from node.media.service import FETCH_PART
from node.protocol.errors import RpcError
from tests.conftest import make_config
from tests.helpers import admin, signed_in
from tests.test_federation import cluster, has_chat, links_up, rid, until

SIZE = 1536 * 1024  # 1.5 MiB: three fed.media ranges of 512 KiB


def served(n: Node) -> int:
    """Ranges a node has answered on fed.media."""
    fed = n.remote.impl
    assert isinstance(fed, Federation)
    return fed.media.ranges_served


async def media_on(c: Client, chat_id: str, seq: int | None = None) -> dict[str, Any]:
    """The media item of the chat's (last, or ``seq``) message with media, as the client's
    node shows it, once it has replicated it."""
    found: dict[str, Any] = {}

    async def there() -> bool:
        try:
            h = await c.call("chats.history", {"chat": chat_id, "limit": 100})
        except RpcError as e:
            if e.code == "CHAT_NOT_FOUND":
                return False
            raise
        for ev in h["events"]:
            media = ev["body"].get("media") if ev["kind"] == "message" else None
            if media and (seq is None or ev["seq"] == seq):
                found.update(media[0])
        return bool(found)

    await until(there)
    return found


async def post_file(c: Client, chat_id: str, path: Path, upload_id: str) -> dict[str, Any]:
    info = await upload_file(c, path, upload_id)
    sent = await c.call(
        "messages.send",
        {
            "chat": chat_id,
            "random_id": rid(),
            "text": "a file",
            "media": [{"media_id": info["media_id"], "kind": "document"}],
        },
    )
    return {**info, "seq": sent["seq"]}


def stored(n: Node, sha: str) -> bool:
    return files.blob_path(n.config.media_dir, sha).exists()


def fetch_leftovers(n: Node) -> list[str]:
    tmp = n.config.media_dir / "tmp"
    return [p.name for p in tmp.iterdir() if p.name.startswith("fetch-")] if tmp.exists() else []


async def test_file_from_the_home_downloads_once_per_node_on_each_replica(tmp_path: Path) -> None:
    async with cluster(tmp_path, 3) as nodes:
        a, b, c = nodes
        async with (
            signed_in(a, "alice") as al,
            signed_in(b, "bob") as bo,
            signed_in(b, "bill") as bi,
            signed_in(c, "carol") as ca,
        ):
            g = await al.call(
                "chats.createGroup",
                {"title": "Files", "members": ["bob@n2", "bill@n2", "carol@n3"]},
            )
            chat_id = g["chat"]["id"]
            await has_chat(b, chat_id)
            await has_chat(c, chat_id)
            src = tmp_path / "photo.bin"
            src.write_bytes(os.urandom(SIZE))
            sha = hashlib.sha256(src.read_bytes()).hexdigest()
            sent = await post_file(al, chat_id, src, "up1")

            # n2: two members, three concurrent downloads (and an info): one fetch
            item = await media_on(bo, chat_id, sent["seq"])
            assert item["sha256"] == sha and item["size"] == SIZE and item["media_id"]
            assert (await media_on(bi, chat_id))["media_id"] == item["media_id"]
            assert not stored(b, sha)
            outs = [tmp_path / f"b{i}.bin" for i in range(3)]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(download_file, bo, item["media_id"], outs[0])
                nursery.start_soon(download_file, bo, item["media_id"], outs[1])
                nursery.start_soon(download_file, bi, item["media_id"], outs[2])
                nursery.start_soon(bi.call, "media.info", {"media_id": item["media_id"]})
            assert all(o.read_bytes() == src.read_bytes() for o in outs)
            assert served(a) == 3 and stored(b, sha) and fetch_leftovers(b) == []

            # n3 the same; n2 asked again serves its own copy
            item3 = await media_on(ca, chat_id, sent["seq"])
            out3 = tmp_path / "c.bin"
            await download_file(ca, item3["media_id"], out3)
            assert out3.read_bytes() == src.read_bytes()
            await download_file(bo, item["media_id"], tmp_path / "again.bin")
            assert served(a) == 6
            stats = await admin(b, "admin.mediaStats")
            assert stats["blobs"] == 1 and stats["files_on_disk"] == 1
            assert stats["bytes_on_disk"] == SIZE


async def test_file_uploaded_on_the_senders_node_reaches_home_and_third(tmp_path: Path) -> None:
    async with (
        cluster(tmp_path, 3) as (a, b, c),
        signed_in(a, "alice") as al,
        signed_in(b, "bob") as bo,
        signed_in(c, "carol") as ca,
    ):
        g = await al.call(
            "chats.createGroup", {"title": "Remote", "members": ["bob@n2", "carol@n3"]}
        )
        chat_id = g["chat"]["id"]
        await has_chat(b, chat_id)
        await has_chat(c, chat_id)
        src = tmp_path / "doc.bin"
        src.write_bytes(os.urandom(SIZE))
        sha = hashlib.sha256(src.read_bytes()).hexdigest()
        await post_file(bo, chat_id, src, "up2")  # pending: forwarded to n1, sequenced there
        item_a = await media_on(al, chat_id)
        item_c = await media_on(ca, chat_id)
        assert item_a["sha256"] == item_c["sha256"] == sha
        assert not stored(a, sha) and not stored(c, sha)

        # the home lacks the bytes: it says so to a replica (which may read the file)
        async with Client.connect(a.url, identity=c.identity) as link:
            with pytest.raises(RpcError) as e:
                await link.call("fed.media", {"sha256": sha, "offset": 0, "length": 10})
            assert e.value.code == "MEDIA_NOT_FOUND"

        # n3 first: the home (n1) does not have it, the sender's node (n2) does
        out_c = tmp_path / "c.bin"
        await download_file(ca, item_c["media_id"], out_c)
        assert out_c.read_bytes() == src.read_bytes() and served(b) == 3
        # then the home itself, from the sender's node
        out_a = tmp_path / "a.bin"
        await download_file(al, item_a["media_id"], out_a)
        assert out_a.read_bytes() == src.read_bytes() and served(b) == 6
        assert served(a) == 0 and served(c) == 0 and stored(a, sha) and stored(c, sha)


async def test_fed_media_only_for_nodes_that_may_read_it(tmp_path: Path) -> None:
    async with (
        cluster(tmp_path, 3) as (a, b, c),
        signed_in(a, "alice") as al,
        signed_in(b, "bob") as bo,
    ):
        chat_id = (await al.call("chats.startPrivate", {"user": "bob@n2"}))["chat"]["id"]
        await has_chat(b, chat_id)
        src = tmp_path / "secret.bin"
        src.write_bytes(os.urandom(1000))
        sha = hashlib.sha256(src.read_bytes()).hexdigest()
        await post_file(al, chat_id, src, "up3")
        await media_on(bo, chat_id)
        params = {"sha256": sha, "offset": 0, "length": 1000}
        # n3 has nobody in that chat: refused, whether or not the file is there
        async with Client.connect(a.url, identity=c.identity) as link:
            for p in (params, {**params, "sha256": "0" * 64}):
                with pytest.raises(RpcError) as e:
                    await link.call("fed.media", p)
                assert e.value.code == "NOT_A_REPLICA"
        # n2 has: it gets the range
        async with Client.connect(a.url, identity=b.identity) as link:
            r = await link.call("fed.media", params)
            assert r == {"data": src.read_bytes(), "size": 1000}
        # a client is never served fed.*
        with pytest.raises(RpcError):
            await al.call("fed.media", params)


async def test_tampered_bytes_are_detected_and_not_kept(tmp_path: Path) -> None:
    async with (
        cluster(tmp_path, 2) as (a, b),
        signed_in(a, "alice") as al,
        signed_in(b, "bob") as bo,
    ):
        chat_id = (await al.call("chats.startPrivate", {"user": "bob@n2"}))["chat"]["id"]
        await has_chat(b, chat_id)
        src = tmp_path / "orig.bin"
        src.write_bytes(os.urandom(SIZE))
        sha = hashlib.sha256(src.read_bytes()).hexdigest()
        await post_file(al, chat_id, src, "up4")
        item = await media_on(bo, chat_id)
        blob = files.blob_path(a.config.media_dir, sha)
        good = blob.read_bytes()
        blob.write_bytes(good[:1000] + bytes([good[1000] ^ 1]) + good[1001:])
        out = tmp_path / "got.bin"
        mid = item["media_id"]
        for method, p in (
            ("media.info", {"media_id": mid}),
            ("media.download", {"media_id": mid, "offset": 0, "limit": 10}),
        ):
            with pytest.raises(RpcError) as e:
                await bo.call(method, p)
            assert e.value.code == "CHECKSUM_MISMATCH" and a.node_id[:12] in e.value.message
        assert not stored(b, sha) and fetch_leftovers(b) == [] and not out.exists()
        blob.write_bytes(good)  # repaired: the next reader fetches it whole
        await download_file(bo, item["media_id"], out)
        assert out.read_bytes() == src.read_bytes()


# the n2 -> n1 link's one-way latency while a fetch is cut: the request for the second range
# sits this long in the proxy, so the cut (made as soon as the first range is on n2's disk)
# lands before n1 ever sees it; and n2's wait for a fetch before MEDIA_FETCHING, longer than
# that latency (the cut fetch answers its reader with its own error, not MEDIA_FETCHING)
CUT_LATENCY = 0.5
FETCH_WAIT = 1.5


@asynccontextmanager
async def linked_through_proxy(tmp: Path) -> AsyncIterator[tuple[Node, Node, FaultProxy]]:
    """n1 and n2, where n2 reaches n1 only through a FaultProxy (its admin added n1 by the
    proxy's URL; n1 dials n2 directly, back on n2's hello). n2 answers MEDIA_FETCHING after
    ``[media] fetch_wait`` = FETCH_WAIT seconds."""
    async with AsyncExitStack() as stack:
        a, b = [
            await stack.enter_async_context(
                Node.start(
                    make_config(
                        tmp / f"n{i}",
                        node={"name": f"n{i}", "listen": "127.0.0.1:0", "log_level": "warning"},
                        federation={"peering": "open"},
                        **({"media": {"fetch_wait": FETCH_WAIT}} if i == 2 else {}),
                    ),
                    parts=[Federation()],
                )
            )
            for i in (1, 2)
        ]
        proxy = await stack.enter_async_context(FaultProxy.open("127.0.0.1", a.port))
        via = f"ws://127.0.0.1:{proxy.port}/"
        await admin(b, "admin.peerAdd", {"url": via})
        await links_up(b, 1)
        await links_up(a, 1)
        assert [p["url"] for p in (await admin(b, "admin.peerList"))["peers"]] == [via]
        yield a, b, proxy


async def link_to(n: Node, peer: Node) -> dict[str, Any]:
    peers = (await admin(n, "admin.peerList"))["peers"]
    [found] = [p for p in peers if p["node_id"] == peer.node_id]
    return dict(found)


async def test_cut_fetch_resumes_and_slow_fetch_answers_media_fetching(tmp_path: Path) -> None:
    async with (
        linked_through_proxy(tmp_path) as (a, b, proxy),
        signed_in(a, "alice") as al,
        signed_in(b, "bob") as bo,
    ):
        chat_id = (await al.call("chats.startPrivate", {"user": "bob@n2"}))["chat"]["id"]
        await has_chat(b, chat_id)
        src = tmp_path / "big.bin"
        content = os.urandom(SIZE)
        src.write_bytes(content)
        sha = hashlib.sha256(content).hexdigest()
        await post_file(al, chat_id, src, "up5")
        item = await media_on(bo, chat_id)
        folder = files.fetch_dir(b.config.media_dir, sha)
        assert served(a) == 0 and not stored(b, sha)

        # the link is cut once the first range is on n2's disk (the second one's request
        # still in the proxy): a retryable error, the range kept on disk
        async def first_range_kept() -> bool:
            return files.fetch_progress(folder, SIZE) >= 1

        errors: list[RpcError] = []

        async def reader() -> None:
            with pytest.raises(RpcError) as e:
                await bo.call("media.info", {"media_id": item["media_id"]})
            errors.append(e.value)

        down, connections = proxy.bytes_down, proxy.connections
        proxy.delay(CUT_LATENCY, "up")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await until(first_range_kept)
            assert proxy.cut() >= 1
            proxy.delay(0)
        [err] = errors
        assert err.code == "PEER_UNREACHABLE" and err.retry_after
        assert fetch_leftovers(b) == [f"fetch-{sha}"] and served(a) == 1
        assert FETCH_PART <= proxy.bytes_down - down < 2 * FETCH_PART
        assert files.fetch_progress(folder, SIZE) == 1  # resumes at offset FETCH_PART
        assert (folder / "data").read_bytes() == content[:FETCH_PART]

        # n2 dials n1 again through the proxy
        async def relinked() -> bool:
            return proxy.connections > connections and (await link_to(b, a))["link"] == "up"

        await until(relinked)

        # a slow peer (the link stalls): the reader waits fetch_wait, then hears MEDIA_FETCHING
        proxy.pause()
        down, asked = proxy.bytes_down, trio.current_time()
        with pytest.raises(RpcError) as e:
            await bo.call("media.download", {"media_id": item["media_id"], "offset": 0, "limit": 9})
        assert e.value.code == "MEDIA_FETCHING" and e.value.retry_after
        assert trio.current_time() - asked >= FETCH_WAIT
        assert served(a) == 1 and not stored(b, sha)
        proxy.resume()

        async def fetched() -> bool:  # placed, and its parts cleared away
            return stored(b, sha) and fetch_leftovers(b) == []

        await until(fetched)
        # resumed: only the two missing ranges were asked for and came over the link
        assert served(a) == 3 and fetch_leftovers(b) == []
        assert SIZE - FETCH_PART <= proxy.bytes_down - down < SIZE - FETCH_PART // 2
        out = tmp_path / "out.bin"
        await download_file(bo, item["media_id"], out)
        got = out.read_bytes()
        assert got == content and hashlib.sha256(got).hexdigest() == sha
