"""The README's Quick start, run as written: its code blocks are read out of README.md and
pasted into real shells (terminal 1 runs the node, terminal 2 the admin and the two people,
terminal 3 bob's live view), with `fedgram` on PATH. Only the port is changed, to a free one,
so the test can run beside others."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO

README_PORT = "127.0.0.1:7601"


def quick_start_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _shell_env(tmp: Path) -> dict[str, str]:
    """`fedgram` on PATH is this checkout's CLI (what `pip install .` would put there)."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "fedgram"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cli "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDGRAM_")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(REPO)
    env["HOME"] = str(tmp / "home")  # no real profile of whoever runs the tests is touched
    return env


def test_quick_start_runs_as_written(tmp_path: Path) -> None:
    blocks = quick_start_blocks()
    assert len(blocks) == 3, "terminal 1 (node), 2 (people), 3 (listen)"
    port = f"127.0.0.1:{_free_port()}"
    blocks = [b.replace(README_PORT, port) for b in blocks]
    assert all(README_PORT not in b for b in blocks)
    env = _shell_env(tmp_path)
    work = tmp_path / "work"
    work.mkdir()

    # terminal 1: every line but the last (`fedgram run`, which stays in the foreground)
    node_lines = [ln for ln in blocks[0].splitlines() if ln and not ln.startswith("#")]
    assert node_lines[-1].startswith("fedgram run"), node_lines
    setup = subprocess.run(
        ["bash", "-euc", "\n".join(node_lines[:-1])],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert setup.returncode == 0, setup.stderr
    assert "next:" in setup.stdout and "fedgram user add NAME" in setup.stdout
    node = subprocess.Popen(
        ["bash", "-c", f"exec {node_lines[-1]}"],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    listen = None
    try:
        assert node.stdout is not None
        started = [node.stdout.readline() for _ in range(3)]
        assert "listening on" in started[0], started

        # terminal 2, pasted whole: any failing line fails the test
        people = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", blocks[1]],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert people.returncode == 0, people.stderr
        out = people.stdout
        assert "logged in as alice@n1" in out and "logged in as bob@n1" in out
        assert re.search(r"sent to @bob as #\d+", out) and re.search(r"sent to @alice as #", out)
        assert "hello bob" in out and "hi alice!" in out  # alice's history
        assert (work / "bob-list.txt").read_text() == "bring bread\n"
        assert "Family" in out  # bob's chat list
        assert "uploaded list.txt" in people.stderr

        # terminal 3: bob's live view starts with his chats, then shows what comes
        listen = subprocess.Popen(
            ["bash", "-c", f"exec {blocks[2].strip().splitlines()[-1]}"],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        seen = _read_until(listen, ["Family", "alice"], timeout=30)
        assert "Family" in seen and "alice" in seen, seen
        subprocess.run(
            ["bash", "-c", 'fedgram client --profile ./alice send @bob "are you there?"'],
            cwd=work,
            env=env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        seen = _read_until(listen, ["are you there?"], timeout=30)
        assert "are you there?" in seen, seen
    finally:
        for proc in (listen, node):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
    assert node.returncode == 0


def _read_until(proc: subprocess.Popen[bytes], words: list[str], timeout: float) -> str:
    """Output of a running process until all ``words`` appeared (or time ran out)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while not all(w.encode() in seen for w in words):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        seen += chunk
    return seen.decode(errors="replace")
