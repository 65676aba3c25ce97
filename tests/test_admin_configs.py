"""The example configs ship as package data: `fedgram init --config community` finds the
bundled file from anywhere, also from a tree built the way `pip install .` builds it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import REPO, fedgram


def _copy_sources(dest: Path) -> None:
    """The files a build sees (no caches, no tests)."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, dest / name)
    for pkg in ("node", "federation", "cli", "configs"):
        shutil.copytree(
            REPO / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )


def test_bundled_config_found_from_a_built_tree(tmp_path: Path) -> None:
    src, built, elsewhere = tmp_path / "src", tmp_path / "site", tmp_path / "elsewhere"
    src.mkdir()
    elsewhere.mkdir()
    _copy_sources(src)
    # setuptools' build_py copies exactly what the wheel would carry: packages + package data
    subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py",
         "-d", str(built)],
        cwd=src, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert (built / "configs" / "community.toml").is_file()
    assert (built / "configs" / "local-federation" / "n2.toml").is_file()
    env = {**os.environ, "PYTHONPATH": str(built)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli", *args],
            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    data = tmp_path / "node"
    r = run("init", "--data", str(data), "--config", "community", "--listen", "127.0.0.1:0")
    assert r.returncode == 0, r.stderr
    cfg = tomllib.loads((data / "config.toml").read_text())
    shipped = tomllib.loads((REPO / "configs" / "community.toml").read_text())
    assert cfg["node"]["name"] == shipped["node"]["name"] == "community"
    assert cfg["limits"]["max_sessions"] == shipped["limits"]["max_sessions"]
    # the code that ran is the built tree's, not the checkout's
    probe = subprocess.run(
        [sys.executable, "-c", "import configs; print(configs.__file__)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert probe.stdout.strip().startswith(str(built))

    # the path older docs gave, from outside a checkout: the bundled file
    r = run("init", "--data", str(tmp_path / "old"), "--config", "configs/personal.toml")
    assert r.returncode == 0, r.stderr
    assert 'name = "home"' in (tmp_path / "old" / "config.toml").read_text()  # personal.toml's

    listed = run("init", "--list-configs")
    assert listed.returncode == 0
    assert listed.stdout.split() == [
        "community", "local-federation/n1", "local-federation/n2", "local-federation/n3",
        "personal",
    ]  # fmt: skip


def test_config_by_name_by_path_and_unknown(tmp_path: Path) -> None:
    r = fedgram("init", "--data", str(tmp_path / "a"), "--config", "local-federation/n2")
    assert r.returncode == 0, r.stderr
    assert 'name = "n2"' in (tmp_path / "a" / "config.toml").read_text()
    own = tmp_path / "mine.toml"
    own.write_text('[node]\nname = "mine"\n')
    r = fedgram("init", "--data", str(tmp_path / "b"), "--config", str(own))
    assert r.returncode == 0, r.stderr
    assert 'name = "mine"' in (tmp_path / "b" / "config.toml").read_text()
    r = fedgram("init", "--data", str(tmp_path / "c"), "--config", "comunity")
    assert r.returncode == 2
    assert "no bundled config of that name" in r.stderr and "community" in r.stderr
    assert not (tmp_path / "c" / "config.toml").exists()


UNIT = REPO / "configs" / "systemd" / "fedgram.service"


def _unit() -> dict[str, list[str]]:
    """The unit's [Service] keys (a key may repeat)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_systemd_unit_runs_our_commands(tmp_path: Path) -> None:
    svc = _unit()
    assert svc["User"] == ["fedgram"]
    assert svc["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert svc["Restart"] == ["on-failure"]
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert svc[key] == ["yes"], key
    assert svc["ProtectSystem"] == ["strict"]
    assert "/var/lib/fedgram" in svc["ReadWritePaths"][0].split()
    assert int(svc["LimitNOFILE"][0]) >= 65536
    # the Exec lines are commands this CLI accepts: run them on a real data folder
    data = tmp_path / "var-lib-fedgram"
    fedgram("init", "--data", str(data), "--listen", "127.0.0.1:0", check=True)
    pre = svc["ExecStartPre"][0].split()
    assert pre[0].endswith("/fedgram") and pre[1:] == ["check", "--data", "/var/lib/fedgram"]
    r = fedgram(*[str(data) if a == "/var/lib/fedgram" else a for a in pre[1:]])
    assert r.returncode == 0, r.stdout
    start = svc["ExecStart"][0].split()
    assert start[1:] == ["run", "--data", "/var/lib/fedgram"]
    if shutil.which("systemd-analyze"):
        # the unit as systemd reads it, the fedgram path pointed at an executable that exists
        unit = tmp_path / "fedgram.service"
        unit.write_text(UNIT.read_text().replace("/opt/fedgram/bin/fedgram", sys.executable))
        v = subprocess.run(
            ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
        )
        # silent when every line parses ("Unknown key ...", "Failed to parse ..." otherwise)
        problems = [ln for ln in (v.stdout + v.stderr).splitlines() if "fedgram.service" in ln]
        assert not problems, problems
