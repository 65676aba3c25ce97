"""`fedgram dev cluster` and federation/cluster.py: real node processes on real ports.

The end-to-end test is what the README's walk-through does: start three nodes, take the
printed codes, sign in on the nodes, make a group across all three, and see a message
arrive on the third node; then Ctrl-C (SIGINT) must stop everything, leaving no process.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio
from nacl.signing import SigningKey

from federation.cluster import Cluster, ClusterError, free_ports
from node.client import Client
from node.lock import node_running
from tests.conftest import REPO, fedgram
from tests.helpers import next_of, send
from tests.test_cli import one_clear_line

WAIT = 15.0


def read_json_document(proc: subprocess.Popen[bytes], timeout: float) -> Any:
    """The one JSON document `dev cluster --json` prints once its nodes are ready, read
    from the raw pipe with a deadline: a hung cluster fails the test instead of hanging
    it (select() on a buffered file object would miss lines already in its buffer)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    got = b""
    deadline = time.monotonic() + timeout
    while not got.endswith(b"\n}\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"no cluster description in {timeout}s: {got!r}")
        chunk = os.read(fd, 65536)
        if not chunk:
            err = proc.stderr.read() if proc.stderr else b""
            raise AssertionError(f"cluster exited ({proc.wait()}): {got!r} {err!r}")
        got += chunk
    return json.loads(got)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_dev_cluster_three_nodes_group_message_and_ctrl_c(tmp_path: Path) -> None:
    data = tmp_path / "cluster"
    # free ports (0): base+1..base+3 from a port found free could be taken meanwhile by a
    # node of the other test worker (the cluster then exits with "cannot listen")
    args = ["--base-port", "0", "--data", str(data), "--json", "--log-level", "warning"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "dev", "cluster", "--nodes", "3", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        info = read_json_document(proc, 60)
        nodes = info["nodes"]
        assert [x["name"] for x in nodes] == ["n1", "n2", "n3"]
        assert [x["address"] for x in nodes] == ["alice@n1", "bob@n2", "carol@n3"]
        assert len({x["url"] for x in nodes}) == 3
        for x in nodes:
            assert re.fullmatch(r"ws://127\.0\.0\.1:\d+/", x["url"]), x["url"]
            assert x["login"].startswith(f"fedgram client login {x['url']} {x['user']} ")
            assert f"--code {x['code']} --pin {x['node_id']} --profile " in x["login"]

        listed = fedgram("peer", "list", "--json", "--data", nodes[0]["data"], check=True)
        peers = json.loads(listed.stdout)
        assert sorted(p["name"] for p in peers) == ["n2", "n3"]
        assert {p["link"] for p in peers} == {"up"}

        # the printed codes sign the demo users in (SDK), and a group spans the 3 nodes
        async with (
            Client.connect(nodes[0]["url"], pin=nodes[0]["node_id"]) as alice,
            Client.connect(nodes[2]["url"], pin=nodes[2]["node_id"]) as carol,
        ):
            for c, x in ((alice, nodes[0]), (carol, nodes[2])):
                await c.sign_in(x["user"], x["code"], SigningKey.generate(), "test")
            group = await alice.call(
                "chats.createGroup", {"title": "Three", "members": ["bob@n2", "carol@n3"]}
            )
            chat_id = group["chat"]["id"]
            await send(alice, chat_id, "hello from n1")
            with trio.fail_after(WAIT):
                while True:
                    u = await next_of(carol, "chat.event", timeout=WAIT)
                    ev = u["event"]
                    if ev["chat"] == chat_id and ev["kind"] == "message":
                        break
            assert ev["body"]["text"] == "hello from n1" and ev["sender"] == "alice@n1"

        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert b"stopped all nodes" in (proc.stderr.read() if proc.stderr else b"")
        for x in nodes:
            assert gone(x["pid"]), f"{x['name']} (pid {x['pid']}) still runs"
            assert not node_running(Path(x["data"]))
    finally:
        if proc.poll() is None:  # the test failed half-way: stop it the way a person would
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()  # its nodes get SIGTERM from the kernel (PR_SET_PDEATHSIG)
                proc.wait(10)


def test_dev_cluster_that_cannot_start_says_why_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "cluster"
    (data / "n1").mkdir(parents=True)
    (data / "n1" / "config.toml").write_text("[node]\nnmae = 1\n")  # a damaged reused folder
    proc = fedgram("dev", "cluster", "--nodes", "2", "--base-port", "0", "--data", str(data))
    one_clear_line(proc, "config.toml", "nmae")
    assert proc.returncode == 2


async def test_cluster_kill_and_restart_a_node(tmp_path: Path) -> None:
    async with Cluster.running(tmp_path, 2, 0, log_level="warning") as cluster:
        n1, n2 = cluster.nodes
        assert cluster.urls == [n1.url, n2.url] and cluster.data_dirs == [n1.data, n2.data]
        code = await cluster.add_user(2, "bob")
        assert code.isdigit() and (await cluster.add_user(2, "bob")).isdigit()  # again: fine

        cluster.kill(2)  # a crash: SIGKILL
        assert await cluster.wait_exit(2) == -signal.SIGKILL
        with trio.fail_after(WAIT):
            while (await cluster.peers(1))[0]["link"] == "up":
                await trio.sleep(0.1)

        await cluster.restart(2)
        assert n2.running and n2.url == cluster.urls[1]  # same folder, same port
        await cluster.wait_links_up(WAIT)
        looked = await cluster.admin(1, "admin.userLookup", {"address": "bob@n2"})
        assert looked["node_id"] == n2.node_id

        pids = [n.process.pid for n in cluster.nodes if n.process]
    for pid in pids:
        assert gone(pid)
    assert not any(node_running(d) for d in (n1.data, n2.data))

    # started again on the same folder: the same nodes (keys, ports, peers, users)
    async with Cluster.running(tmp_path, 2, 0, log_level="warning") as again:
        assert [x.node_id for x in again.nodes] == [n1.node_id, n2.node_id]
        assert again.urls == [n1.url, n2.url]
        assert (await again.add_user(2, "bob")).isdigit()


async def test_cluster_start_failure_stops_what_started(tmp_path: Path) -> None:
    busy = free_ports(1)[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", busy))
        s.listen()
        cluster = Cluster(tmp_path, 2, busy - 2, log_level="warning", start_timeout=WAIT)
        try:
            await cluster.start()
        except ClusterError as e:
            assert "n2 exited with code" in str(e) and "while starting" in str(e)
            assert "in use" in str(e) and "node.log" in str(e)  # the node's own words
        else:
            raise AssertionError("n2 should not start on a busy port")
        assert not cluster.nodes[0].running and not node_running(cluster.nodes[0].data)


def test_killed_dev_cluster_leaves_no_node_behind(tmp_path: Path) -> None:
    """kill -9 of the cluster (no chance to clean up): the kernel stops its nodes."""
    args = ["--nodes", "1", "--base-port", "0", "--data", str(tmp_path), "--json"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "dev", "cluster", *args, "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    try:
        nodes = read_json_document(proc, 60)["nodes"]
    finally:
        proc.kill()
        proc.wait(10)
    deadline = time.monotonic() + WAIT
    while not all(gone(x["pid"]) for x in nodes) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(gone(x["pid"]) for x in nodes)
    # they stopped cleanly (SIGTERM), not killed: `fedgram run` said its last word
    for x in nodes:
        assert Path(x["log"]).read_text().endswith("stopped\n")
