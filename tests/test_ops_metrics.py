"""GET /health and GET /metrics on the gateway's port (node/httpd.py, node/metrics.py):
real nodes, real traffic over the SDK, scraped over real TCP and parsed as Prometheus text."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from node import __version__
from node.app import Node
from node.client.media import upload_file
from node.httpd import MAX_HEAD
from node.protocol.errors import RpcError
from tests.conftest import make_config
from tests.helpers import send, signed_in


async def http(port: int, raw: bytes, timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes to 127.0.0.1:port, read the whole answer (the node closes after one),
    and split it into status, headers and body."""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(raw)
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    return int(lines[0].split(" ")[1]), headers, body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: test\r\n\r\n".encode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition text, keyed by name and sorted labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, headers, body = await http(port, get("/metrics"))
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(body.decode())


async def test_metrics_move_with_real_traffic(tmp_path: Path) -> None:
    async with Node.start(make_config(tmp_path / "n")) as node:
        before = await scrape(node.port)
        assert before[("fedgram_sessions", ())] == 0
        assert before[("fedgram_messages_sent_total", ())] == 0
        labels = (("name", "test"), ("node_id", node.node_id), ("version", __version__))
        assert before[("fedgram_build_info", labels)] == 1
        async with signed_in(node, "alice") as a, signed_in(node, "bob") as b:
            chat = (await a.call("chats.startPrivate", {"user": "bob"}))["chat"]["id"]
            for i in range(5):
                await send(a, chat, f"hello {i}")
            await b.call("chats.history", {"chat": chat, "limit": 10})
            with pytest.raises(RpcError):
                await a.call("chats.startPrivate", {"user": "nobody"})
            f = tmp_path / "f.bin"
            f.write_bytes(b"x" * 70_000)
            await upload_file(a, f, "u1")
            during = await scrape(node.port)
        after = await scrape(node.port)

    assert during[("fedgram_sessions", ())] == 2
    assert during[("fedgram_requests_total", (("code", "OK"), ("method", "messages.send")))] == 5
    assert during[("fedgram_messages_sent_total", ())] == 5
    assert during[("fedgram_requests_total", (("code", "OK"), ("method", "auth.signIn")))] == 2
    # an error is counted under its code
    errors = [
        v
        for (name, labels), v in during.items()
        if name == "fedgram_requests_total" and ("method", "chats.startPrivate") in labels
        and ("code", "OK") not in labels
    ]  # fmt: skip
    assert errors == [1]
    # the latency histogram of the messages group saw the 5 sends
    count = during[("fedgram_request_duration_seconds_count", (("group", "messages"),))]
    assert count == 5
    inf = (("group", "messages"), ("le", "+Inf"))
    assert during[("fedgram_request_duration_seconds_bucket", inf)] == count
    assert during[("fedgram_request_duration_seconds_sum", (("group", "messages"),))] > 0
    assert during[("fedgram_media_bytes", ())] == 70_000
    assert during[("fedgram_db_bytes", ())] > before[("fedgram_db_bytes", ())]
    assert during[("fedgram_storage_write_queue", ())] >= 0
    assert after[("fedgram_sessions", ())] == 0
    # the scrapes themselves are counted, once answered: the third saw the first two
    assert after[("fedgram_http_requests_total", (("path", "/metrics"), ("status", "200")))] == 2


async def test_health_and_other_http(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "n")
    async with Node.start(cfg) as node:
        status, headers, body = await http(node.port, get("/health"))
        assert status == 200 and headers["content-type"] == "application/json"
        h: dict[str, Any] = json.loads(body)
        assert h["status"] == "ok" and h["node_id"] == node.node_id and h["sessions"] == 0
        assert h["version"] and h["uptime"] >= 0
        assert (await http(node.port, b"HEAD /health HTTP/1.1\r\n\r\n"))[2] == b""
        assert (await http(node.port, get("/")))[0] == 404
        assert (await http(node.port, get("/admin")))[0] == 404
        assert (await http(node.port, b"POST /metrics HTTP/1.1\r\n\r\n"))[0] == 405
        assert (await http(node.port, b"\x16\x03\x01garbage\r\n\r\n"))[0] == 400
        assert (await http(node.port, b"GET " + b"a" * (MAX_HEAD - 4)))[0] == 431
        # a WebSocket session still works next to all that, and is counted in /health
        async with signed_in(node, "alice") as a:
            await a.call("system.ping", {"ping_id": 1})
            h = json.loads((await http(node.port, get("/health")))[2])
            assert h["sessions"] == 1
        # shutting down: 503, so a load balancer sends nobody new
        await node.gateway.close_all(timeout=1)
        status, _, body = await http(node.port, get("/health"))
        assert status == 503 and json.loads(body)["status"] == "shutting_down"


async def test_slowloris_gets_the_handshake_timeout(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "n", timeouts={"handshake": 1.0})
    async with Node.start(cfg) as node:
        stream = await trio.open_tcp_stream("127.0.0.1", node.port)
        start = time.monotonic()

        async def drip() -> None:  # one byte of header every 0.1 s: never a whole head
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(b"GET /health HTTP/1.1\r\nX-a: ")
                while True:
                    await stream.send_all(b"a")
                    await trio.sleep(0.1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drip)
            with trio.fail_after(5):
                try:
                    data = await stream.receive_some(100)
                except trio.BrokenResourceError:
                    data = b""
            nursery.cancel_scope.cancel()
        assert data == b""  # closed without an answer
        assert 0.9 <= time.monotonic() - start < 4
        await stream.aclose()
        # meanwhile and after, others are served
        assert (await http(node.port, get("/health")))[0] == 200


async def test_metrics_allow_list_and_off_switch(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "a", metrics={"allow": "10.0.0.0/8"})
    async with Node.start(cfg) as node:
        status, _, body = await http(node.port, get("/metrics"))
        assert status == 403 and b"fedgram_" not in body
        assert (await http(node.port, get("/health")))[0] == 200
    cfg = make_config(tmp_path / "b", metrics={"enabled": False})
    async with Node.start(cfg) as node:
        assert (await http(node.port, get("/metrics")))[0] == 404
        assert (await http(node.port, get("/health")))[0] == 404
        async with signed_in(node, "alice") as a:  # the gateway itself is untouched
            await a.call("system.ping", {"ping_id": 1})
