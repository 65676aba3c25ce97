"""Admin and client account commands through the real CLI, node running and stopped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import fedgram


def test_admin_commands_on_stopped_node(tmp_path: Path) -> None:
    d = str(tmp_path / "n")
    fedgram("init", "--data", d, "--listen", "127.0.0.1:0", check=True)
    assert (
        "added alice"
        in fedgram(
            "user", "add", "alice", "--display-name", "Alice", "--data", d, check=True
        ).stdout
    )
    fedgram("user", "add", "bob", "--admin", "--data", d, check=True)
    users = json.loads(fedgram("user", "list", "--json", "--data", d, check=True).stdout)
    assert [(u["name"], u["is_admin"]) for u in users] == [("alice", False), ("bob", True)]
    code = fedgram("user", "code", "alice", "--data", d, check=True).stdout.strip()
    assert code.isdigit() and len(code) == 6
    dup = fedgram("user", "add", "ALICE", "--data", d)
    assert dup.returncode == 1 and "NAME_TAKEN" in dup.stderr and "Traceback" not in dup.stderr
    bad = fedgram("user", "add", "x", "--data", d)
    assert bad.returncode == 1 and "PARAMS_INVALID" in bad.stderr
    fedgram("user", "ban", "bob", "--data", d, check=True)
    users = json.loads(fedgram("user", "list", "--json", "--data", d, check=True).stdout)
    assert users[1]["banned"] is True
    fedgram("user", "unban", "bob", "--data", d, check=True)
    fedgram("user", "remove", "bob", "--data", d, check=True)
    missing = fedgram("user", "devices", "bob", "--data", d)
    assert missing.returncode == 1 and "USER_NOT_FOUND" in missing.stderr
    token = fedgram(
        "invite", "create", "--uses", "3", "--expires", "7d", "--data", d, check=True
    ).stdout.strip()
    assert len(token) >= 20
    bad_exp = fedgram("invite", "create", "--expires", "soon", "--data", d)
    assert bad_exp.returncode == 2 and "7d" in bad_exp.stderr


def test_two_people_two_devices_from_the_cli(node_process: Any, tmp_path: Path) -> None:
    n = node_process("n1")
    d = str(n.data)
    for name in ("alice", "bob"):
        fedgram("user", "add", name, "--data", d, check=True)
    profiles = {}
    for name in ("alice", "bob"):
        for dev in ("phone", "laptop"):
            prof = tmp_path / f"{name}-{dev}"
            profiles[(name, dev)] = prof
            code = fedgram("user", "code", name, "--data", d, check=True).stdout.strip()
            out = fedgram(
                "client",
                "login",
                n.url,
                name,
                "--code",
                code,
                "--device-name",
                dev,
                "--profile",
                str(prof),
                check=True,
            ).stdout
            assert f"logged in as {name}@n1" in out
    who = json.loads(
        fedgram(
            "client",
            "whoami",
            "--json",
            env={"FEDGRAM_PROFILE": str(profiles[("alice", "phone")])},
            check=True,
        ).stdout
    )
    assert who["address"] == "alice@n1"
    devs = json.loads(
        fedgram(
            "client",
            "devices",
            "--json",
            "--profile",
            str(profiles[("alice", "laptop")]),
            check=True,
        ).stdout
    )
    assert sorted(x["name"] for x in devs) == ["laptop", "phone"]
    assert [x["current"] for x in devs if x["name"] == "laptop"] == [True]
    admin_view = json.loads(
        fedgram("user", "devices", "bob", "--json", "--data", d, check=True).stdout
    )
    assert len(admin_view) == 2
    # alice revokes her phone from the laptop; the phone can no longer do anything
    phone_id = next(x["device_id"] for x in devs if x["name"] == "phone")
    fedgram(
        "client",
        "revoke",
        str(phone_id),
        "--profile",
        str(profiles[("alice", "laptop")]),
        check=True,
    )
    gone = fedgram("client", "whoami", "--profile", str(profiles[("alice", "phone")]))
    assert gone.returncode == 1 and "DEVICE_REVOKED" in gone.stderr
    # the admin logs bob out everywhere
    assert "revoked 2" in fedgram("user", "logout", "bob", "--data", d, check=True).stdout
    out = fedgram("client", "whoami", "--profile", str(profiles[("bob", "phone")]))
    assert "DEVICE_REVOKED" in out.stderr
    # logout clears the profile
    fedgram("client", "logout", "--profile", str(profiles[("alice", "laptop")]), check=True)
    after = fedgram("client", "whoami", "--profile", str(profiles[("alice", "laptop")]))
    assert after.returncode == 1 and "not logged in" in after.stderr
    # a wrong code from the CLI is a clear one-line error
    wrong = fedgram(
        "client", "login", n.url, "alice", "--code", "000000", "--profile", str(tmp_path / "x")
    )
    assert wrong.returncode == 1 and ("CODE_" in wrong.stderr) and "Traceback" not in wrong.stderr
