"""Acknowledged means durable: SIGKILL a real node process and read back what it acked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from nacl.signing import SigningKey

from node.client import Client, RpcError
from tests.conftest import fedgram


async def test_acknowledged_writes_survive_kill_9(node_process: Any, tmp_path: Path) -> None:
    n = node_process("n1")
    fedgram("user", "add", "alice", "--data", str(n.data), check=True)
    code = fedgram("user", "code", "alice", "--data", str(n.data), check=True).stdout.strip()
    key = SigningKey.generate()
    acked: list[str] = []
    async with Client.connect(n.url) as c:
        await c.sign_in("alice", code, key, "phone")  # the device binding is a write too

        async def burst() -> None:
            for i in range(10_000):
                name = f"name-{i}"
                try:
                    await c.call("account.updateProfile", {"display_name": name})
                except RpcError:
                    return  # the node died under us: this write was never acknowledged
                acked.append(name)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(burst)
            while len(acked) < 200:
                await trio.sleep(0.01)
            n.kill9()  # mid-burst, no warning
            with trio.move_on_after(5):
                await c.wait_closed()
            nursery.cancel_scope.cancel()
    assert len(acked) >= 200
    n2 = node_process("n1")  # same data folder, fresh process
    async with Client.connect(n2.url) as c:
        await c.authorize(key)
        me = await c.call("account.getProfile")
    # the node may have committed one write it could not acknowledge, never fewer
    last = int(acked[-1].split("-")[1])
    got = int(me["display_name"].split("-")[1])
    assert got in (last, last + 1), (me["display_name"], acked[-1])
    assert n2.node_id == n.node_id


async def test_unacked_call_reports_connection_lost(node_process: Any) -> None:
    n = node_process("n1")
    async with Client.connect(n.url) as c:
        n.kill9()
        try:
            await c.call("system.ping", timeout=5)
        except RpcError as e:
            assert e.code in ("CONNECTION_LOST",)
