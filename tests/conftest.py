"""Shared fixtures: real nodes on 127.0.0.1 (port 0), real SQLite in tmp folders."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from node.app import Node
from node.config import Config, validate
from tests.helpers import NodeLogs

REPO = Path(__file__).resolve().parent.parent
# The CLI and node processes the tests start may cache their bytecode (__pycache__ is
# ignored by git): with PYTHONDONTWRITEBYTECODE set, as on some machines, every `fedgram`
# call recompiled the whole package (~0.2-0.3 s of each ~1 s call).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def make_config(data_dir: Path, **sections: dict[str, Any]) -> Config:
    raw: dict[str, dict[str, Any]] = {
        "node": {"name": "test", "listen": "127.0.0.1:0", "log_level": "warning"}
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    data_dir.mkdir(parents=True, exist_ok=True)
    return Config(data_dir, validate(raw, "test"))


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with Node.start(make_config(tmp_path / "n1")) as n:
        yield n


def fedgram(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=REPO,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"fedgram {args} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def _limit_file_size(limit: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


class NodeProcess:
    """A node started as a real subprocess (`python -m cli run`). ``log_level=None`` keeps
    the log settings of the node's own config (the log tests); by default it logs warnings."""

    def __init__(
        self,
        data: Path,
        listen: str = "127.0.0.1:0",
        max_file_bytes: int | None = None,
        log_level: str | None = "warning",
    ) -> None:
        self.data = data
        if not (data / "config.toml").exists():
            fedgram(
                "init", "--data", str(data), "--name", data.name, "--listen", listen, check=True
            )
        # stderr goes to a file: an unread pipe would block a chatty node
        self.stderr_path = data.parent / f"{data.name}.stderr.log"
        self._stderr = open(self.stderr_path, "a")  # noqa: SIM115 - closed in stop()/fixture
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli",
                "run",
                "--data",
                str(data),
                "--listen",
                listen,
                *(["--log-level", log_level] if log_level else []),
            ],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            # RLIMIT_FSIZE: writes past it fail (EFBIG) like on a full disk, without root
            preexec_fn=(lambda: _limit_file_size(max_file_bytes)) if max_file_bytes else None,
            text=True,
            cwd=REPO,
        )
        self.url = ""
        self.node_id = ""
        deadline = time.monotonic() + 30
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                err = self.stderr_path.read_text()
                raise AssertionError(f"node exited early ({self.proc.wait()}): {err}")
            if "listening on" in line:
                self.url = line.rsplit(" ", 1)[1].strip()
            if line.startswith("node id:"):
                self.node_id = line.split(":", 1)[1].strip()
                return
        raise AssertionError("node did not start in time")

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(15)
        finally:
            self.close_files()

    def close_files(self) -> None:
        if self.proc.stdout:
            self.proc.stdout.close()
        self._stderr.close()


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[Any]:
    started: list[NodeProcess] = []

    def start(
        name: str = "n1", listen: str = "127.0.0.1:0", max_file_bytes: int | None = None
    ) -> NodeProcess:
        p = NodeProcess(tmp_path / name, listen, max_file_bytes)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(10)
        p.close_files()


def cli_login(url: str, data: str, name: str, profile: Path, device: str = "dev") -> None:
    """Sign a CLI profile in as NAME with a code the admin issued (real subprocesses)."""
    code = fedgram("user", "code", name, "--data", data, check=True).stdout.strip()
    fedgram(
        "client", "login", url, name, "--code", code, "--device-name", device,
        "--profile", str(profile), check=True,
    )  # fmt: skip


def cli_people(n: Any, tmp_path: Path, *names: str) -> list[Path]:
    """Users NAMES on the node process ``n``, each signed in in its own CLI profile
    (tmp_path/NAME), through the real CLI: the usual start of a CLI test."""
    profiles = []
    for name in names:
        fedgram("user", "add", name, "--data", str(n.data), check=True)
    for name in names:
        profiles.append(tmp_path / name)
        cli_login(n.url, str(n.data), name, tmp_path / name)
    return profiles


@pytest.fixture
def node_logs() -> Iterator[NodeLogs]:
    """The nodes' log lines at debug level, for the test's duration."""
    root = logging.getLogger("fedgram")
    handler, level = NodeLogs(), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
