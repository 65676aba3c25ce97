"""Accounts hardening (issue 10): revocation races, id reuse, rate-limit eviction, user
enumeration. Real nodes on 127.0.0.1, the real SDK over real WebSockets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from nacl.signing import SigningKey

from node import ratelimit
from node.app import Node
from node.client import Client, RpcError
from node.ratelimit import RateLimiter, Rule
from tests.conftest import make_config
from tests.helpers import add_user, admin, fresh_code

BOUND = 5.0
LAX = {  # rate limits out of the way of tests that are not about them
    "authorize_per_ip": "100000/1",
    "signin_per_ip": "100000/1",
    "signin_per_name": "100000/1",
    "code_per_ip": "100000/1",
    "code_per_name": "100000/1",
}


@asynccontextmanager
async def node_with(tmp_path: Path, **sections: dict[str, Any]) -> AsyncIterator[Node]:
    async with Node.start(make_config(tmp_path / "node", **sections)) as n:
        yield n


async def outcome(coro: Any) -> str:
    try:
        await coro
        return "OK"
    except RpcError as e:
        return e.code


# --- (1) a revoked device never stays signed in ---------------------------------------------
async def race(
    node: Node, key: SigningKey, end: Callable[[], Awaitable[Any]], offset: float
) -> list[str]:
    """Four fresh sessions authorize as ``key`` while ``end`` (after ``offset`` s) ends the
    device or its user. Once ``end`` is acknowledged, every session must be over: returns
    the answers of their next call that are not CONNECTION_LOST or AUTH_REQUIRED."""
    async with (
        Client.connect(node.url) as a0,
        Client.connect(node.url) as a1,
        Client.connect(node.url) as a2,
        Client.connect(node.url) as a3,
    ):
        sessions = [a0, a1, a2, a3]
        results: list[str] = []

        async def authorize(c: Client) -> None:
            results.append(await outcome(c.authorize(key)))

        async def ending() -> None:
            await trio.sleep(offset)
            await end()

        async with trio.open_nursery() as n:
            for c in sessions:
                n.start_soon(authorize, c)
            n.start_soon(ending)
        assert set(results) <= {"OK", "DEVICE_REVOKED", "DEVICE_UNKNOWN", "CONNECTION_LOST"}
        after = [await outcome(c.call("account.getProfile", timeout=BOUND)) for c in sessions]
        return [a for a in after if a not in {"CONNECTION_LOST", "AUTH_REQUIRED"}]


async def test_authorize_racing_revoke_never_survives(tmp_path: Path) -> None:
    """Sessions authorize as device X while another device revokes X. Whatever order they
    land in, once the revocation is acknowledged no session of X may still work."""
    survivors: list[tuple[int, str]] = []
    async with node_with(tmp_path, ratelimit=LAX) as node:
        await add_user(node, "alice")
        async with Client.connect(node.url) as ctl:
            await ctl.sign_in("alice", await fresh_code(node, "alice"), SigningKey.generate(), "c")
            for r in range(60):
                key = SigningKey.generate()
                async with Client.connect(node.url) as first:
                    dev = await first.sign_in("alice", await fresh_code(node, "alice"), key, "x")

                async def revoke(device_id: int = dev["device_id"]) -> None:
                    p = {"device_id": device_id}
                    assert await ctl.call("account.revokeDevice", p) == {"revoked": 1}

                # sweep the offset a little: the race is a matter of microseconds
                survivors += [(r, a) for a in await race(node, key, revoke, (r % 6) * 0.0003)]
    assert survivors == []


async def test_removal_racing_authorize_leaves_no_session(tmp_path: Path) -> None:
    """The same race with the whole user removed: no session may outlive its account."""
    survivors: list[tuple[int, str]] = []
    async with node_with(tmp_path, ratelimit=LAX) as node:
        for r in range(40):
            name = f"victim{r}"
            await add_user(node, name)
            key = SigningKey.generate()
            async with Client.connect(node.url) as first:
                await first.sign_in(name, await fresh_code(node, name), key, "x")

            async def remove(name: str = name) -> None:
                await admin(node, "admin.userRemove", {"name": name})

            # the admin call has no network hop: give the sign-ins a head start
            survivors += [(r, a) for a in await race(node, key, remove, (r % 8) * 0.0004)]
    assert survivors == []


# --- (2) ids are never reused -----------------------------------------------------------------
async def test_new_user_never_inherits_a_removed_users_id(node: Node) -> None:
    await add_user(node, "bob")
    await add_user(node, "carol")  # the newest user: her id is the one SQLite would reuse
    bob_key, carol_key, dave_key = (SigningKey.generate() for _ in range(3))
    async with Client.connect(node.url) as bob, Client.connect(node.url) as carol:
        await bob.sign_in("bob", await fresh_code(node, "bob"), bob_key, "b")
        carol_auth = await carol.sign_in("carol", await fresh_code(node, "carol"), carol_key, "c")
        made = await bob.call("chats.createGroup", {"title": "g", "members": ["carol"]})
        group = made["chat"]["id"]
        rid = 424242
        sent = await carol.call("messages.send", {"chat": group, "random_id": rid, "text": "hi"})
        await admin(node, "admin.userRemove", {"name": "carol"})
        with trio.fail_after(BOUND):
            await carol.wait_closed()
        await add_user(node, "dave")
        async with Client.connect(node.url) as dave:
            dave_auth = await dave.sign_in("dave", await fresh_code(node, "dave"), dave_key, "d")
            assert dave_auth["user_id"] != carol_auth["user_id"]
            assert dave_auth["device_id"] != carol_auth["device_id"]
            await bob.call("chats.addMembers", {"chat": group, "users": ["dave"]})
            # carol's message is not dave's: he can neither edit it nor collide with its rid
            p = {"chat": group, "seq": sent["seq"], "text": "mine now"}
            assert await outcome(dave.call("messages.edit", p)) == "MESSAGE_NOT_EDITABLE"
            again = await dave.call("messages.send", {"chat": group, "random_id": rid, "text": "x"})
            assert not again["duplicate"] and again["seq"] > sent["seq"]
            hist = (await bob.call("chats.history", {"chat": group}))["events"]
            old = next(ev for ev in hist if ev["seq"] == sent["seq"])
            assert old["body"]["text"] == "hi" and old["edited"] is None


# --- (3) a flood never resets anyone's rate limit ---------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limit_code(limiter: RateLimiter, ip: str, name: str) -> str:
    try:
        limiter.check("auth.code", {"ip": ip, "name": name})
        return "OK"
    except RpcError as e:
        return e.code


def test_junk_name_flood_from_one_ip_keeps_victims_budget_and_costs_no_memory() -> None:
    clock = Clock()
    limiter = RateLimiter(
        {"code_per_name": Rule.parse("5/3600"), "code_per_ip": Rule.parse("30/3600")}, clock
    )
    for _ in range(5):
        assert limit_code(limiter, "10.0.0.1", "alice") == "OK"
    assert limit_code(limiter, "10.0.0.1", "alice") == "FLOOD_WAIT"
    refused = 0
    for i in range(210_000):
        clock.now += 0.00001
        refused += limit_code(limiter, "6.6.6.6", f"junk{i}") == "FLOOD_WAIT"
    assert refused == 210_000 - 30
    # alice's spent budget survived the flood, whoever asks for her next
    assert limit_code(limiter, "10.0.0.2", "alice") == "FLOOD_WAIT"
    # refused calls stored nothing: 31 name buckets and 2 IP buckets
    assert limiter.size == 1 + 30 + 2


def test_distributed_flood_fails_closed_and_never_evicts_a_spent_bucket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ratelimit, "MAX_BUCKETS", 100)
    clock = Clock()
    rules = {"code_per_name": Rule.parse("2/100"), "code_per_ip": Rule.parse("1000/1")}
    limiter = RateLimiter(rules, clock)
    assert limit_code(limiter, "10.0.0.1", "alice") == "OK"
    assert limit_code(limiter, "10.0.0.1", "alice") == "OK"
    # 5,000 names from 5,000 IPs: the name table fills with 100 spent buckets, then waits
    outcomes = [limit_code(limiter, f"ip{i}", f"junk{i}") for i in range(5_000)]
    assert limit_code(limiter, "10.0.0.2", "alice") == "FLOOD_WAIT"  # not evicted
    assert outcomes.count("OK") == 99 and limiter.size <= 100 + 99 + 1
    clock.now += 51  # one token back for alice: she may ask once, not twice
    assert limit_code(limiter, "10.0.0.2", "alice") == "OK"
    assert limit_code(limiter, "10.0.0.2", "alice") == "FLOOD_WAIT"
    clock.now += 100  # everything refilled: full buckets are dropped, new names admitted
    assert limit_code(limiter, "10.0.0.3", "newcomer") == "OK"
    assert limiter.size <= 3


async def test_flood_through_a_node_does_not_restore_a_victims_code_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end: one IP spends alice's code budget, then floods junk names until most are
    refused (its own budget refills fast, to show the per-name one is what holds)."""
    monkeypatch.setattr(ratelimit, "MAX_BUCKETS", 1000)  # a small limiter keeps this quick
    limits = {"code_per_name": "3/3600", "code_per_ip": "30/3"}
    async with node_with(tmp_path, ratelimit=limits) as node:
        await add_user(node, "alice")
        async with Client.connect(node.url) as c:
            for _ in range(3):
                await c.request_code("alice")
            assert await outcome(c.request_code("alice")) == "FLOOD_WAIT"
            results: list[str] = []

            async def junk(i: int) -> None:
                results.append(await outcome(c.request_code(f"junk_{i}")))

            for start in range(0, 1_200, 50):
                async with trio.open_nursery() as n:
                    for i in range(start, start + 50):
                        n.start_soon(junk, i)
            assert results.count("FLOOD_WAIT") > 1_000
            await trio.sleep(0.5)  # the IP has tokens again; alice's name must not
            assert await outcome(c.request_code("junk_after")) != "FLOOD_WAIT"
            with pytest.raises(RpcError) as e:
                await c.request_code("alice")
            assert e.value.code == "FLOOD_WAIT" and (e.value.retry_after or 0) > 600


# --- (9) who exists is not told -----------------------------------------------------------------
async def test_closed_node_answers_alike_for_existing_missing_and_banned_names(
    tmp_path: Path,
) -> None:
    codes = tmp_path / "codes.txt"
    async with node_with(
        tmp_path,
        accounts={"code_delivery": "file", "code_file": str(codes)},
        ratelimit=LAX,
    ) as node:
        await add_user(node, "alice")
        await add_user(node, "mallory")
        await admin(node, "admin.userBan", {"name": "mallory"})
        async with Client.connect(node.url) as c:
            # before any code: "no valid code" for everyone
            for name in ("alice", "nobody", "mallory"):
                assert await outcome(c.sign_in(name, "123456", SigningKey.generate(), "d")) == (
                    "CODE_EXPIRED"
                )
            answers = [await c.request_code(n) for n in ("alice", "nobody", "mallory")]
            assert answers[0] == answers[1] == answers[2]
            assert [ln.split()[0] for ln in codes.read_text().splitlines()] == ["alice@test"]
            real = codes.read_text().split()[1]
            wrong = "000000" if real != "000000" else "111111"
            for name in ("alice", "nobody", "mallory"):
                seen = []
                for _ in range(5):
                    try:
                        await c.sign_in(name, wrong, SigningKey.generate(), "d")
                    except RpcError as e:
                        seen.append((e.code, e.message))
                assert seen == [
                    ("CODE_INVALID", f"wrong code; {n} attempts left") for n in (4, 3, 2, 1, 0)
                ], name
                # and then the code is spent, the same way
                err = await outcome(c.sign_in(name, real, SigningKey.generate(), "d"))
                assert err == "CODE_EXPIRED", name
            # alice's own code (sent to her) still works, the decoys' never
            for name in ("nobody", "mallory"):
                await c.request_code(name)
                assert await outcome(c.sign_in(name, real, SigningKey.generate(), "d")) == (
                    "CODE_INVALID"
                )
            await c.request_code("alice")
            code = codes.read_text().split()[-1]
            await c.sign_in("alice", code, SigningKey.generate(), "d")


async def test_missing_name_takes_as_long_as_a_real_delivery(tmp_path: Path) -> None:
    script = tmp_path / "slow_sms.py"
    script.write_text("import time; time.sleep(0.4)\n")
    import sys

    cmd = f"{sys.executable} {script}"
    async with node_with(
        tmp_path, accounts={"code_delivery": "command", "code_command": cmd}, ratelimit=LAX
    ) as node:
        await add_user(node, "alice")
        async with Client.connect(node.url) as c:
            timings: dict[str, float] = {}
            for name in ("alice", "nobody", "alice", "nobody2"):
                start = trio.current_time()
                assert (await c.request_code(name))["via"] == "command"
                timings[name] = trio.current_time() - start
            assert timings["alice"] >= 0.4
            assert timings["nobody"] >= 0.35 and timings["nobody2"] >= 0.35


async def test_open_node_still_says_who_is_missing(tmp_path: Path) -> None:
    """Sign-up tells NAME_TAKEN on open nodes anyway, so hiding would only hurt users."""
    async with (
        node_with(tmp_path, accounts={"registration": "open"}) as node,
        Client.connect(node.url) as c,
    ):
        assert await outcome(c.request_code("nobody")) == "USER_NOT_FOUND"
        p = ("nobody", "123456", SigningKey.generate(), "d")
        assert await outcome(c.sign_in(*p)) == "USER_NOT_FOUND"
