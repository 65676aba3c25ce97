"""`fedgram peer ...` and `fedgram user lookup` against real node processes.

Everything is a real subprocess: the nodes (`python -m cli run`) and every CLI call, so
the admin socket, the links between the nodes and the exit codes are the real ones.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import trio

from federation.cluster import free_ports
from node.client.admin import AdminClient
from node.config import init_data_dir
from tests.conftest import NodeProcess, fedgram
from tests.test_cli import one_clear_line

WAIT = 15.0  # links come up in well under a second; this is only the give-up point


def two_nodes(node_process: Any, tmp: Path, peering: str) -> tuple[NodeProcess, NodeProcess]:
    """Node processes n1 (peering "approve") and n2 (``peering``), started at once. Their
    configs are written in-process (the function `fedgram init` calls, without paying for
    a subprocess)."""

    def start(name: str, how: str) -> NodeProcess:
        init_data_dir(
            tmp / name,
            {
                "node": {"name": name, "listen": "127.0.0.1:0", "log_level": "warning"},
                "federation": {"peering": how, "retry_max": 2.0},
            },
        )
        node: NodeProcess = node_process(name)
        return node

    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(start, ("n1", "n2"), ("approve", peering))
    return a, b


def admin_call(node: NodeProcess, method: str, params: dict[str, Any] | None = None) -> Any:
    """An admin call over the node's socket, for set-up and polling: through a CLI
    subprocess it would cost a second a try (the CLI is checked where it is the subject)."""

    async def ask() -> Any:
        async with AdminClient.connect(node.data) as admin:
            return await admin.call(method, params or {})

    return trio.run(ask)


def peers(node: NodeProcess) -> list[dict[str, Any]]:
    """What `peer list --json` prints."""
    return list(admin_call(node, "admin.peerList")["peers"])


def in_parallel(*calls: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """Independent CLI runs at once (each is mostly interpreter start-up)."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda args: fedgram(*args), calls))


def until(node: NodeProcess, what: str, ok: Callable[[list[dict[str, Any]]], bool]) -> Any:
    """Poll the peer list of ``node`` until ``ok`` holds (or fail, saying what)."""
    deadline = time.monotonic() + WAIT
    while True:
        got = peers(node)
        if ok(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{node.data.name}: {what} not seen in {WAIT}s: {got}")
        time.sleep(0.2)


def one(listed: list[dict[str, Any]], node: NodeProcess) -> dict[str, Any]:
    (p,) = [p for p in listed if p["node_id"] == node.node_id]
    return p


def test_add_with_open_peering_links_both_ways_and_lookup(
    node_process: Any, tmp_path: Path
) -> None:
    a, b = two_nodes(node_process, tmp_path, "open")
    da, db = str(a.data), str(b.data)
    added = fedgram("peer", "add", b.url, "--pin", b.node_id, "--data", da, check=True)
    assert f"added n2 ({b.node_id[:12]}): state peer" in added.stdout

    # open peering on n2: it takes n1 as a peer at its hello and dials back at once
    until(a, "link up to n2", lambda ps: one(ps, b)["link"] == "up")
    until(b, "link up to n1", lambda ps: bool(ps) and one(ps, a)["link"] == "up")
    admin_call(b, "admin.userAdd", {"name": "bob", "display_name": "Bob B"})

    listed, table, found, missing = in_parallel(
        ("peer", "list", "--json", "--data", db),
        ("peer", "list", "--data", da),
        ("user", "lookup", "bob@n2", "--json", "--data", da),
        ("user", "lookup", "nobody@n2", "--data", da),
    )
    p = one(json.loads(listed.stdout), a)
    assert p["state"] == "peer" and p["name"] == "n1" and p["url"] == a.url
    assert p["link"] == "up" and p["last_error"] is None and p["outbox"] == 0

    rows = table.stdout.splitlines()
    assert rows[0].split()[:6] == ["NAME", "ID", "URL", "STATE", "LINK", "SINCE"]
    row = rows[1].split()
    assert row[:5] == ["n2", b.node_id[:12], b.url, "peer", "up"]
    assert re.fullmatch(r"now|\d+s", row[5]) and row[6] == "now"  # up since, seen now

    u = json.loads(found.stdout)
    assert u == {**u, "address": "bob@n2", "node_id": b.node_id, "local": False}
    assert u["display_name"] == "Bob B"
    one_clear_line(missing, "USER_NOT_FOUND")
    assert missing.returncode == 1


def test_approve_flow_then_block_and_remove(node_process: Any, tmp_path: Path) -> None:
    a, b = two_nodes(node_process, tmp_path, "approve")
    da, db = str(a.data), str(b.data)

    added = json.loads(fedgram("peer", "add", b.url, "--json", "--data", da, check=True).stdout)
    assert added["node_id"] == b.node_id and added["state"] == "peer"

    # n2 has not approved n1: it lists it as pending, and does not dial it
    p = one(until(b, "n1 pending", lambda ps: len(ps) == 1), a)
    assert p["state"] == "pending" and p["link"] == "down"

    approved = fedgram("peer", "approve", "n1", "--data", db, check=True)  # by petname
    assert f"approved n1 ({a.node_id[:12]}): state peer" in approved.stdout
    until(b, "link up to n1", lambda ps: one(ps, a)["link"] == "up")
    until(a, "link up to n2", lambda ps: one(ps, b)["link"] == "up")

    blocked = fedgram("peer", "block", a.node_id[:8], "--json", "--data", db, check=True)
    assert json.loads(blocked.stdout)["state"] == "blocked"  # by a unique id prefix
    p = one(peers(b), a)
    assert p["state"] == "blocked" and p["link"] == "down"
    # n2 cut n1's link and refuses it: n1's link to n2 goes down and says why
    p = one(until(a, "link down", lambda ps: one(ps, b)["link"] != "up"), b)
    until(a, "PEER_BLOCKED", lambda ps: "PEER_BLOCKED" in (one(ps, b)["last_error"] or ""))

    removed = fedgram("peer", "remove", b.node_id, "--data", da, check=True)  # by full id
    assert removed.stdout.strip() == f"removed {b.node_id}"
    p = one(peers(a), b)
    assert p["state"] == "known" and p["url"] is None and p["link"] == "down"


def test_bad_input_is_one_clear_line_with_its_exit_code(node_process: Any, tmp_path: Path) -> None:
    init_data_dir(tmp_path / "n1", {"node": {"name": "n1", "listen": "127.0.0.1:0"}})
    a: NodeProcess = node_process("n1")  # it is also the node that is dialled
    da = str(a.data)

    bad_urls = ("http://127.0.0.1:7601", "127.0.0.1:7601")
    (dead,) = free_ports(1)  # nothing listens there
    unknown = ("approve", "remove")  # block finds a peer the same way
    runs = in_parallel(
        *[("peer", "add", bad, "--data", da) for bad in bad_urls],
        ("peer", "add", f"ws://127.0.0.1:{dead}", "--data", da),
        ("peer", "add", a.url, "--pin", "a" * 32, "--data", da),
        ("peer", "add", a.url, "--data", da),
        *[("peer", cmd, "nosuchnode", "--data", da) for cmd in unknown],
    )
    for proc in runs[:2]:
        one_clear_line(proc, "node URL")
        assert proc.returncode == 2  # a local mistake: no node was asked
    unreachable, mismatch, itself, *unknowns = runs[2:]
    one_clear_line(unreachable, "PEER_UNREACHABLE", f"127.0.0.1:{dead}")
    assert unreachable.returncode == 1
    one_clear_line(mismatch, "NODE_KEY_MISMATCH", a.node_id)
    assert mismatch.returncode == 1
    one_clear_line(itself, "PEER_INVALID", "this node itself")
    assert itself.returncode == 1
    for proc in unknowns:
        one_clear_line(proc, "PEER_UNKNOWN", "nosuchnode")
        assert proc.returncode == 1

    assert peers(a) == []  # nothing was stored by any of it

    # a stopped node is managed offline, like the other admin commands
    a.stop()
    listed = fedgram("peer", "list", "--data", da)
    assert listed.returncode == 0 and listed.stdout.startswith("no peers")
