"""Secret-chat benchmark: end-to-end encrypted messages beside cloud messages, one run.

Three real node processes in a line, n1 - n2 - n3 (federation/cluster.py, peered by hand:
n1 and n3 have no link, so n2 relays between them). Devices are real SDK clients in this
process (``SecretChats``: Double Ratchet, the device's own SQLite store, ack after the
store committed). Four cases, each ``--messages`` messages from one sender to one
receiver:

* ``secret_one_node``: alice@n1 -> bob@n1, a secret chat (ciphertext queued on n1);
* ``secret_relay``: alice@n1 -> carol@n3, a secret chat carried n1 -> n2 -> n3;
* ``cloud_one_node``: alice@n1 -> bob@n1 in a cloud group (messages.send, pushed updates);
* ``cloud_federated``: alice@n1 -> dave@n2 in a cloud group homed on n1 (replicated to n2).

Per case: throughput (the sender sends back to back, each send waiting for its answer;
msgs/s from the first send to the last receipt) and latency (a separate open loop at
``--rate`` msgs/s; receipt time minus the send time carried in the text).

    python3 scripts/bench_secret.py [--messages 1000] [--rate 50] [--latency-messages 200]

Prints ONE JSON document. Rounds alternate the cases (``--rounds``), medians reported.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio
from nacl.signing import SigningKey

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from federation.cluster import Cluster  # noqa: E402
from node.client import Client  # noqa: E402
from node.client.secret.chats import SecretChats  # noqa: E402
from node.ratelimit import DEFAULT_RULES  # noqa: E402
from scripts.bench import lat, machine, median_of  # noqa: E402

EXTRA: dict[str, dict[str, Any]] = {
    "limits": {"max_inflight": 256},
    "ratelimit": {name: "1000000/1" for name in DEFAULT_RULES},
}


class Receiver:
    """Receipt times of texts ``tag|k|t_ns`` as they arrive at one device."""

    def __init__(self) -> None:
        self.got: dict[tuple[str, int], float] = {}
        self.lat_ms: dict[str, list[float]] = {}
        self.wake = trio.Event()

    def on_text(self, text: str) -> None:
        now = time.time_ns()
        parts = text.split("|")
        if len(parts) < 3:
            return
        tag, k, t_ns = parts[0], int(parts[1]), int(parts[2])
        if (tag, k) in self.got:
            return
        self.got[(tag, k)] = now / 1e9
        self.lat_ms.setdefault(tag, []).append((now - t_ns) / 1e6)
        self.wake.set()

    def count(self, tag: str) -> int:
        return sum(1 for t, _ in self.got if t == tag)

    async def wait(self, tag: str, n: int, timeout: float) -> bool:
        with trio.move_on_after(timeout):
            while self.count(tag) < n:
                self.wake = trio.Event()
                await self.wake.wait()
            return True
        return False


def body(tag: str, k: int) -> str:
    return f"{tag}|{k}|{time.time_ns()}|" + "x" * 40


async def device(
    stack: AsyncExitStack, cluster: Cluster, i: int, name: str, folder: Path
) -> tuple[Client, SecretChats]:
    code = await cluster.add_user(i, name)
    client = await stack.enter_async_context(Client.connect(cluster.node(i).url))
    key = SigningKey.generate()
    await client.sign_in(name, code, key, "bench")
    sc = SecretChats(client, folder / name, key)
    await sc.ensure_keys()
    return client, sc


async def links_up(cluster: Cluster, pairs: list[tuple[int, int]]) -> None:
    """Wait (bounded) until each node i has its link to node j up."""
    with trio.fail_after(30):
        while True:
            missing = []
            for i, j in pairs:
                up = {p["node_id"] for p in await cluster.peers(i) if p["link"] == "up"}
                if cluster.node(j).node_id not in up:
                    missing.append((i, j))
            if not missing:
                return
            await trio.sleep(0.1)


async def secret_listener(sc: SecretChats, rx: Receiver) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(sc.listen)
        while True:
            ev = await sc.next_event(3600)
            if ev.get("type") == "message":
                rx.on_text(str(ev["message"].get("text", "")))


async def cloud_listener(client: Client, rx: Receiver) -> None:
    async for u in client.updates():
        if u.get("type") == "chat.event":
            text = u.get("event", {}).get("body", {}).get("text")
            if isinstance(text, str):
                rx.on_text(text)


async def measure(
    send: Callable[[str], Awaitable[None]], rx: Receiver, tag: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Back-to-back throughput, then an open loop at --rate for latency."""
    n = args.messages
    t0 = time.perf_counter()
    for k in range(n):
        await send(body(f"{tag}-t", k))
    sent_s = time.perf_counter() - t0
    ok = await rx.wait(f"{tag}-t", n, 120)
    total_s = time.perf_counter() - t0
    m = args.latency_messages
    start = trio.current_time()
    for k in range(m):
        await trio.sleep_until(start + k / args.rate)
        await send(body(f"{tag}-l", k))
    ok_l = await rx.wait(f"{tag}-l", m, 60)
    return {
        "messages": n,
        "all_received": ok and ok_l,
        "sender_msgs_per_s": round(n / sent_s, 1),
        "msgs_per_s_to_last_receipt": round(rx.count(f"{tag}-t") / total_s, 1),
        "latency_at_rate": {"rate_msgs_per_s": args.rate, **lat(rx.lat_ms.get(f"{tag}-l", []))},
        "latency_back_to_back": lat(rx.lat_ms.get(f"{tag}-t", [])),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="fedgram-secretbench-"))
    out: dict[str, Any] = {"server": "fedgram-secret", "machine": machine(), "rounds": []}
    try:
        async with AsyncExitStack() as stack:
            cluster = Cluster(folder / "c", 3, 0, log_level="warning", extra_config=EXTRA)
            await cluster.start(peer=False)
            stack.push_async_callback(cluster.stop)
            n1, n2, n3 = cluster.node(1), cluster.node(2), cluster.node(3)
            for a, b in ((1, 2), (2, 1), (2, 3), (3, 2)):
                other = cluster.node(b)
                await cluster.admin(a, "admin.peerAdd", {"url": other.url, "pin": other.node_id})
            await links_up(cluster, [(1, 2), (2, 1), (2, 3), (3, 2)])
            profiles = folder / "profiles"
            alice_c, alice = await device(stack, cluster, 1, "alice", profiles)
            _, bob = await device(stack, cluster, 1, "bob", profiles)
            _, carol = await device(stack, cluster, 3, "carol", profiles)
            dave_c, _ = await device(stack, cluster, 2, "dave", profiles)
            # bob's cloud messages go to a second device of his (the first one's update
            # stream feeds its SecretChats; a device without prekeys gets no secret chats)
            bob_cloud = await stack.enter_async_context(Client.connect(n1.url))
            await bob_cloud.sign_in(
                "bob", await cluster.add_user(1, "bob"), SigningKey.generate(), "bench-cloud"
            )
            nursery = await stack.enter_async_context(trio.open_nursery())
            rx = {k: Receiver() for k in ("bob", "carol", "bob_cloud", "dave_cloud")}
            nursery.start_soon(secret_listener, bob, rx["bob"])
            nursery.start_soon(secret_listener, carol, rx["carol"])
            nursery.start_soon(cloud_listener, bob_cloud, rx["bob_cloud"])
            nursery.start_soon(cloud_listener, dave_c, rx["dave_cloud"])
            nursery.start_soon(alice.listen)  # receipts and acceptances for the sender

            async def secret_chat(address: str, peer: SecretChats) -> str:
                chat = await alice.start(address)
                with trio.fail_after(30):
                    while True:
                        evs = await peer.sync()
                        if any(e["type"] == "request" for e in evs) or peer.list():
                            break
                        await trio.sleep(0.05)
                await peer.accept(chat)
                return chat

            s_local = await secret_chat("bob", bob)
            s_relay = await secret_chat(f"carol@{n3.node_id}", carol)
            g_local = (
                await alice_c.call("chats.createGroup", {"title": "cloud", "members": ["bob"]})
            )["chat"]["id"]
            g_fed = (
                await alice_c.call(
                    "chats.createGroup", {"title": "fed", "members": [f"dave@{n2.node_id}"]}
                )
            )["chat"]["id"]
            with trio.fail_after(30):
                while not (await dave_c.call("chats.list", {})).get("chats"):
                    await trio.sleep(0.05)

            async def cloud_send(chat: str, text: str) -> None:
                p = {"chat": chat, "random_id": secrets.randbits(63), "text": text}
                await alice_c.call("messages.send", p)

            cases: dict[str, tuple[Callable[[str], Awaitable[Any]], Receiver]] = {
                "secret_one_node": (lambda t: alice.send(s_local, t), rx["bob"]),
                "secret_relay": (lambda t: alice.send(s_relay, t), rx["carol"]),
                "cloud_one_node": (lambda t: cloud_send(g_local, t), rx["bob_cloud"]),
                "cloud_federated": (lambda t: cloud_send(g_fed, t), rx["dave_cloud"]),
            }
            for r in range(args.rounds):
                order = list(cases) if r % 2 == 0 else list(reversed(cases))
                got: dict[str, Any] = {}
                for name in order:
                    send, receiver = cases[name]
                    got[name] = await measure(send, receiver, f"{name}{r}", args)
                    await trio.sleep(0.5)
                out["rounds"].append(got)
            relayed = await cluster.peers(2)
            out["relay_n2_peers"] = {
                p["name"]: {k: p[k] for k in ("secret_relayed_for", "secret_relayed_by")}
                for p in relayed
            }
            nursery.cancel_scope.cancel()
        out["median"] = median_of(out["rounds"])
        del out["rounds"][1:]  # the medians say it; keep one round's detail
        med = out["median"]

        def rate(case: str) -> float:
            v = med[case]["msgs_per_s_to_last_receipt"]
            return float(v["median"] if isinstance(v, dict) else v)

        out["ratios"] = {
            "secret_one_node_vs_cloud_one_node": round(
                rate("secret_one_node") / rate("cloud_one_node"), 3
            ),
            "secret_relay_vs_secret_one_node": round(
                rate("secret_relay") / rate("secret_one_node"), 3
            ),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--messages", type=int, default=1000, help="back-to-back messages per case")
    p.add_argument("--rate", type=float, default=50.0, help="open-loop rate for latency")
    p.add_argument("--latency-messages", type=int, default=200, help="messages at --rate")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians)")
    args = p.parse_args()
    print(json.dumps(trio.run(run, args), indent=2))


if __name__ == "__main__":
    main()
