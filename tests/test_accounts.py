"""Accounts, devices and sign-in against a real node over real WebSockets."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from nacl.signing import SigningKey

from node.app import Node
from node.client import Client, ErrorCode, RpcError
from node.protocol.api import METHODS
from node.protocol.handshake import device_proof
from tests.conftest import make_config
from tests.helpers import add_user, admin, fresh_code, signed_in

BOUND = 5.0


async def expect(code: str, coro: Any) -> RpcError:
    with pytest.raises(RpcError) as e:
        await coro
    assert e.value.code == code, e.value
    return e.value


@asynccontextmanager
async def node_with(tmp_path: Path, **sections: dict[str, Any]) -> AsyncIterator[Node]:
    async with Node.start(make_config(tmp_path / "node", **sections)) as n:
        yield n


async def test_request_code_by_file_and_sign_in(tmp_path: Path) -> None:
    codes = tmp_path / "codes.txt"
    async with node_with(
        tmp_path, accounts={"code_delivery": "file", "code_file": str(codes)}
    ) as node:
        await add_user(node, "Alice", display_name="Alice A.")
        async with Client.connect(node.url) as c:
            sent = await c.request_code("alice")
            assert sent == {"expires_in": 300, "length": 6, "via": "file"}
            line = codes.read_text().strip().splitlines()[-1]
            assert line.startswith("alice@test ")
            code = line.split()[1]
            auth = await c.sign_in("ALICE", code, SigningKey.generate(), "laptop")
            assert auth["name"] == "alice" and auth["address"] == "alice@test"
            assert auth["display_name"] == "Alice A." and auth["node_id"] == node.node_id
            me = await c.call("account.getProfile")
            assert me["user_id"] == auth["user_id"] and not me["has_password"]
            # the code was consumed
            await expect("ALREADY_AUTHORIZED", c.sign_in("alice", code, SigningKey.generate(), "x"))
        async with Client.connect(node.url) as c2:
            await expect("CODE_EXPIRED", c2.sign_in("alice", code, SigningKey.generate(), "x"))


async def test_every_user_method_refused_before_sign_in(node: Node) -> None:
    user_methods = [m for m in METHODS.values() if m.access == "user"]
    assert len(user_methods) >= 7
    async with Client.connect(node.url) as c:
        for m in user_methods:
            await expect("AUTH_REQUIRED", c.call(m.name, {}))
        for m in [m for m in METHODS.values() if m.access == "admin"]:
            await expect("ADMIN_ONLY", c.call(m.name, {}))
        assert (await c.call("system.ping"))["time"] > 0


async def test_sign_up_per_policy(tmp_path: Path) -> None:
    async with node_with(tmp_path / "closed") as node, Client.connect(node.url) as c:
        await expect("REGISTRATION_CLOSED", c.sign_up("bob", SigningKey.generate(), "d"))
    async with node_with(tmp_path / "invite", accounts={"registration": "invite"}) as node:
        token = (await admin(node, "admin.inviteCreate", {"uses": 1}))["token"]
        async with Client.connect(node.url) as c:
            await expect("REGISTRATION_CLOSED", c.sign_up("bob", SigningKey.generate(), "d"))
            await expect(
                "INVITE_INVALID",
                c.sign_up("bob", SigningKey.generate(), "d", invite="not-a-real-token"),
            )
            auth = await c.sign_up("bob", SigningKey.generate(), "d", "Bob", invite=token)
            assert auth["address"] == "bob@test" and auth["display_name"] == "Bob"
        async with Client.connect(node.url) as c:
            await expect(
                "INVITE_INVALID", c.sign_up("carol", SigningKey.generate(), "d", invite=token)
            )
        users = (await admin(node, "admin.userList"))["users"]
        assert [u["name"] for u in users] == ["bob"]
    async with node_with(tmp_path / "open", accounts={"registration": "open"}) as node:
        async with Client.connect(node.url) as c:
            await c.sign_up("dave", SigningKey.generate(), "d")
        async with Client.connect(node.url) as c:
            await expect("NAME_TAKEN", c.sign_up("DAVE", SigningKey.generate(), "d"))
            await expect("PARAMS_INVALID", c.sign_up("no spaces", SigningKey.generate(), "d"))
            await expect("PARAMS_INVALID", c.sign_up("ab", SigningKey.generate(), "d"))


async def test_expired_code(tmp_path: Path) -> None:
    async with node_with(tmp_path, accounts={"code_ttl": 1}) as node:
        await add_user(node, "alice")
        code = await fresh_code(node, "alice")
        await trio.sleep(1.2)
        async with Client.connect(node.url) as c:
            await expect("CODE_EXPIRED", c.sign_in("alice", code, SigningKey.generate(), "d"))


async def test_wrong_codes_then_locked(node: Node) -> None:
    await add_user(node, "alice")
    code = await fresh_code(node, "alice")
    wrong = "000000" if code != "000000" else "111111"
    async with Client.connect(node.url) as c:
        for left in (4, 3, 2, 1, 0):
            err = await expect(
                "CODE_INVALID", c.sign_in("alice", wrong, SigningKey.generate(), "d")
            )
            assert f"{left} attempts left" in err.message
        # five wrong attempts voided the code: even the right one is refused now
        await expect("CODE_EXPIRED", c.sign_in("alice", code, SigningKey.generate(), "d"))
        await c.sign_in("alice", await fresh_code(node, "alice"), SigningKey.generate(), "d")


async def test_replayed_transcript_signature_is_refused(node: Node) -> None:
    await add_user(node, "alice")
    key = SigningKey.generate()
    async with Client.connect(node.url) as a, Client.connect(node.url) as b:
        stolen = device_proof(key, a.transcript_hash)
        p = {
            "name": "alice",
            "code": await fresh_code(node, "alice"),
            "device_name": "d",
            "device_key": bytes(key.verify_key),
            "sig": stolen,
        }
        await expect("SIGNATURE_INVALID", b.call("auth.signIn", p))
        await a.call("auth.signIn", p)  # on its own session the same proof is fine
    async with Client.connect(node.url) as a, Client.connect(node.url) as b:
        proof = {"device_key": bytes(key.verify_key), "sig": device_proof(key, a.transcript_hash)}
        await expect("SIGNATURE_INVALID", b.call("auth.authorize", proof))
        await a.call("auth.authorize", proof)
        await expect("DEVICE_UNKNOWN", b.authorize(SigningKey.generate()))


async def test_two_devices_list_announce_and_revoke_mid_session(node: Node) -> None:
    k1, k2 = SigningKey.generate(), SigningKey.generate()
    await add_user(node, "alice")
    async with Client.connect(node.url) as d1:
        a1 = await d1.sign_in("alice", await fresh_code(node, "alice"), k1, "phone")
        async with Client.connect(node.url) as d2:
            a2 = await d2.sign_in("alice", await fresh_code(node, "alice"), k2, "laptop")
            upd = await d1.next_update(BOUND)
            assert upd["type"] == "account.newSignIn" and upd["device_id"] == a2["device_id"]
            assert upd["device_name"] == "laptop"
            devs = (await d1.call("account.devices"))["devices"]
            assert [(d["name"], d["current"], d["online"]) for d in devs] == [
                ("phone", True, True),
                ("laptop", False, True),
            ]
            await expect(
                "DEVICE_NOT_FOUND", d1.call("account.revokeDevice", {"device_id": 999_999})
            )
            r = await d1.call("account.revokeDevice", {"device_id": a2["device_id"]})
            assert r == {"revoked": 1}
            with trio.fail_after(BOUND):
                reason = await d2.wait_closed()
            assert reason is not None and "4007" in reason and "SESSION_REVOKED" in reason
            await expect("CONNECTION_LOST", d2.call("system.ping"))
        async with Client.connect(node.url) as again:
            await expect("DEVICE_REVOKED", again.authorize(k2))
        assert [d["device_id"] for d in (await d1.call("account.devices"))["devices"]] == [
            a1["device_id"]
        ]


async def test_revoke_others_and_log_out(node: Node) -> None:
    keys = [SigningKey.generate() for _ in range(3)]
    await add_user(node, "alice")
    for i, k in enumerate(keys):
        async with Client.connect(node.url) as c:
            await c.sign_in("alice", await fresh_code(node, "alice"), k, f"d{i}")
    async with signed_in(node, "alice", keys[0]) as c0, signed_in(node, "alice", keys[1]) as c1:
        assert (await c0.call("account.revokeOtherDevices")) == {"revoked": 2}
        with trio.fail_after(BOUND):
            await c1.wait_closed()
        assert len((await c0.call("account.devices"))["devices"]) == 1
        await c0.call("auth.logOut")
        await expect("AUTH_REQUIRED", c0.call("account.getProfile"))
    async with Client.connect(node.url) as c:
        await expect("DEVICE_REVOKED", c.authorize(keys[0]))


async def test_ban_cuts_sessions_and_refuses_sign_in(node: Node) -> None:
    key = SigningKey.generate()
    await add_user(node, "mallory")
    async with Client.connect(node.url) as c:
        await c.sign_in("mallory", await fresh_code(node, "mallory"), key, "d")
        await admin(node, "admin.userBan", {"name": "mallory"})
        with trio.fail_after(BOUND):
            reason = await c.wait_closed()
        assert reason is not None and "USER_BANNED" in reason
    async with Client.connect(node.url) as c:
        await expect("USER_BANNED", c.authorize(key))  # told only to a holder of the key
        # by name, a banned user looks like any other name: a code is "sent" (none is) and
        # no code gets in
        assert (await c.request_code("mallory"))["length"] == 6
        await expect("CODE_INVALID", c.sign_in("mallory", "123456", SigningKey.generate(), "d"))
    await admin(node, "admin.userUnban", {"name": "mallory"})
    async with Client.connect(node.url) as c:
        await c.authorize(key)


async def test_password_second_factor(node: Node) -> None:
    async with signed_in(node, "alice") as c:
        me = await c.call("account.setPassword", {"new": "correct horse battery"})
        assert me["has_password"]
        await expect("PASSWORD_REQUIRED", c.call("account.setPassword", {"new": "x"}))
        await expect(
            "PASSWORD_INVALID", c.call("account.setPassword", {"current": "nope", "new": "x"})
        )
    raw = sqlite3.connect(node.config.db_path).execute("SELECT password_hash FROM users")
    stored = raw.fetchone()[0]
    assert b"correct horse" not in stored and stored.startswith(b"$argon2id$")
    code = await fresh_code(node, "alice")
    async with Client.connect(node.url) as c:
        await expect("PASSWORD_REQUIRED", c.sign_in("alice", code, SigningKey.generate(), "d"))
        await expect(
            "PASSWORD_INVALID", c.sign_in("alice", code, SigningKey.generate(), "d", "wrong")
        )
        await c.sign_in("alice", code, SigningKey.generate(), "d", "correct horse battery")


async def test_ten_thousand_guesses_never_get_in(tmp_path: Path) -> None:
    async with node_with(
        tmp_path, ratelimit={"signin_per_name": "10/2", "signin_per_ip": "50/2"}
    ) as node:
        await add_user(node, "alice")
        real = await fresh_code(node, "alice")
        guesses = [f"{i:06d}" for i in range(10_000) if f"{i:06d}" != real][:9_999]
        guesses.insert(5_000, real)  # the attacker even tries the right code, eventually
        outcomes: dict[str, int] = {}
        waits: list[float] = []
        async with Client.connect(node.url) as attacker:

            async def guess(code: str) -> None:
                try:
                    await attacker.sign_in("alice", code, SigningKey.generate(), "evil")
                    outcomes["SUCCESS"] = outcomes.get("SUCCESS", 0) + 1
                except RpcError as e:
                    outcomes[e.code] = outcomes.get(e.code, 0) + 1
                    if e.code == "FLOOD_WAIT":
                        waits.append(e.retry_after or 0)

            for start in range(0, len(guesses), 50):
                async with trio.open_nursery() as n:
                    for code in guesses[start : start + 50]:
                        n.start_soon(guess, code)
        assert outcomes.get("SUCCESS", 0) == 0
        assert sum(outcomes.values()) == 10_000
        assert outcomes["FLOOD_WAIT"] > 9_000
        assert waits and all(1 <= w <= 2 for w in waits)
        # the rightful user: a fresh code, wait out the flood window, get in
        await trio.sleep(2.1)
        async with Client.connect(node.url) as c:
            await c.sign_in(
                "alice", await fresh_code(node, "alice"), SigningKey.generate(), "phone"
            )


async def test_code_requests_are_rate_limited(tmp_path: Path) -> None:
    async with node_with(tmp_path, ratelimit={"code_per_name": "3/60"}) as node:
        await add_user(node, "alice")
        async with Client.connect(node.url) as c:
            for _ in range(3):
                await c.request_code("alice")
            err = await expect("FLOOD_WAIT", c.request_code("alice"))
            assert err.retry_after is not None and 1 <= err.retry_after <= 20


async def test_delivery_by_command_and_its_failures(tmp_path: Path) -> None:
    out = tmp_path / "sms.txt"
    script = tmp_path / "sms.py"
    script.write_text(
        "import sys, pathlib\n"
        f"pathlib.Path({str(out)!r}).open('a').write(' '.join(sys.argv[1:]) + '\\n')\n"
    )
    cmd = f"{sys.executable} {script}"
    async with node_with(
        tmp_path / "ok", accounts={"code_delivery": "command", "code_command": cmd}
    ) as node:
        await add_user(node, "alice")
        async with Client.connect(node.url) as c:
            assert (await c.request_code("alice"))["via"] == "command"
            name, code = out.read_text().split()
            assert name == "alice"
            await c.sign_in("alice", code, SigningKey.generate(), "d")
    failing = f"{sys.executable} -c 'import sys; sys.exit(3)'"
    slow = f"{sys.executable} -c 'import time; time.sleep(30)'"
    for label, command in (("fail", failing), ("slow", slow)):
        async with node_with(
            tmp_path / label,
            accounts={
                "code_delivery": "command",
                "code_command": command,
                "code_delivery_timeout": 1.0,
            },
        ) as node:
            await add_user(node, "alice")
            async with Client.connect(node.url) as c:
                with trio.fail_after(BOUND):
                    await expect("DELIVERY_FAILED", c.request_code("alice"))
                assert (await c.call("system.ping"))["time"] > 0


async def test_delivery_by_log(node: Node, caplog: pytest.LogCaptureFixture) -> None:
    await add_user(node, "alice")
    async with Client.connect(node.url) as c:
        with caplog.at_level("WARNING", logger="fedgram"):
            await c.request_code("alice")
        recs = [r for r in caplog.records if r.getMessage() == "login.code"]
        assert recs and recs[-1].kv["user"] == "alice"  # type: ignore[attr-defined]
        code = recs[-1].kv["code"]  # type: ignore[attr-defined]
        await c.sign_in("alice", code, SigningKey.generate(), "d")


async def test_delivery_by_webhook(tmp_path: Path) -> None:
    received: list[bytes] = []

    async def http(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(4096)
        head, body = data.split(b"\r\n\r\n", 1)
        length = int(
            next(
                ln.split(b":")[1]
                for ln in head.split(b"\r\n")
                if ln.lower().startswith(b"content-length")
            )
        )
        while len(body) < length:
            body += await stream.receive_some(4096)
        received.append(body)
        status = b"200 OK" if b"alice" in body else b"500 Oops"
        await stream.send_all(
            b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, http, 0)
        port = listeners[0].socket.getsockname()[1]
        url = f"http://127.0.0.1:{port}/codes"
        async with node_with(
            tmp_path, accounts={"code_delivery": "webhook", "code_webhook": url}
        ) as node:
            await add_user(node, "alice")
            await add_user(node, "bob")
            async with Client.connect(node.url) as c:
                assert (await c.request_code("alice"))["via"] == "webhook"
                import json

                body = json.loads(received[-1])
                assert body["name"] == "alice" and body["node"] == "test"
                await c.sign_in("alice", body["code"], SigningKey.generate(), "d")
            async with Client.connect(node.url) as c:
                await expect("DELIVERY_FAILED", c.request_code("bob"))  # receiver says 500
        nursery.cancel_scope.cancel()
    async with node_with(
        tmp_path / "down", accounts={"code_delivery": "webhook", "code_webhook": url}
    ) as node:
        await add_user(node, "alice")
        async with Client.connect(node.url) as c:
            with trio.fail_after(15):
                await expect("DELIVERY_FAILED", c.request_code("alice"))


async def test_admin_removes_user(node: Node) -> None:
    async with signed_in(node, "alice") as c:
        await admin(node, "admin.userRemove", {"name": "alice"})
        with trio.fail_after(BOUND):
            await c.wait_closed()
    assert (await admin(node, "admin.userList"))["users"] == []
    with pytest.raises(RpcError) as e:
        await admin(node, "admin.userCode", {"name": "alice"})
    assert e.value.code == ErrorCode.USER_NOT_FOUND


async def test_many_requests_in_flight_on_slow_method(tmp_path: Path) -> None:
    """1,000 DB-backed requests at once: each is answered (result or TOO_MANY_REQUESTS)."""
    async with (
        node_with(tmp_path, limits={"max_inflight": 8}) as node,
        signed_in(node, "alice") as c,
        signed_in(node, "bob") as witness,
    ):
        codes: dict[str, int] = {}

        async def one(i: int) -> None:
            try:
                await c.call("account.updateProfile", {"display_name": f"n{i}"})
                codes["ok"] = codes.get("ok", 0) + 1
            except RpcError as e:
                codes[e.code] = codes.get(e.code, 0) + 1

        with trio.fail_after(30):
            async with trio.open_nursery() as n:
                for i in range(1000):
                    n.start_soon(one, i)
        assert sum(codes.values()) == 1000
        assert codes.get("TOO_MANY_REQUESTS", 0) > 0 and codes.get("ok", 0) > 0
        assert set(codes) <= {"ok", "TOO_MANY_REQUESTS"}
        assert (await witness.call("account.getProfile"))["name"] == "bob"
