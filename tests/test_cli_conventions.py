"""What holds for every `fedgram` command: `--json` is accepted (and errors are then JSON:
`{"error": CODE, "message": ...}`), help shows no value type on flags, shell completion
works, and `--profile` can be given once to `fedgram client`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import typer
from typer.testing import CliRunner

from cli.main import app
from node.protocol.errors import ErrorCode
from tests.conftest import REPO, fedgram


def _leaf_commands() -> list[tuple[list[str], Any]]:
    out: list[tuple[list[str], Any]] = []

    def walk(cmd: Any, path: list[str]) -> None:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, [*path, name])
        else:
            out.append((path, cmd))

    walk(typer.main.get_command(app), [])
    return out


def test_every_command_takes_json() -> None:
    leaves = _leaf_commands()
    assert len(leaves) > 50
    missing = [
        " ".join(path)
        for path, cmd in leaves
        if "--json" not in {o for p in cmd.params for o in getattr(p, "opts", [])}
    ]
    assert missing == [], f"commands without --json: {missing}"


def test_help_shows_no_bool_metavar_on_flags() -> None:
    runner = CliRunner()
    for path, _ in _leaf_commands():
        result = runner.invoke(app, [*path, "--help"], terminal_width=120)
        assert result.exit_code == 0, (path, result.output)
        assert "<bool>" not in result.output, (path, result.output)
        assert "--json" in result.output


def test_errors_are_json_with_json(tmp_path: Path) -> None:
    # a usage error
    r = fedgram("client", "send", "--json")
    assert r.returncode == 2
    assert json.loads(r.stdout) == {"error": "USAGE", "message": "Missing argument 'chat'."}
    # a local problem: no node runs there
    r = fedgram("status", "--data", str(tmp_path / "none"), "--json")
    assert r.returncode == 3 and json.loads(r.stdout)["error"] == ErrorCode.NO_NODE_RUNNING
    # the node's refusal (offline admin on the database), with the node's own code
    data = str(tmp_path / "n1")
    fedgram("init", "--data", data, "--json", check=True)
    fedgram("user", "add", "alice", "--data", data, check=True)
    r = fedgram("user", "add", "alice", "--data", data, "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["error"] == ErrorCode.NAME_TAKEN
    assert r.stderr == ""
    # without --json the same error stays one line on stderr
    r = fedgram("user", "add", "alice", "--data", data)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("error: NAME_TAKEN")
    # a damaged client profile is a local problem with its own code
    prof = tmp_path / "prof"
    prof.mkdir()
    (prof / "session.json").write_text("{not json")
    r = fedgram("client", "--profile", str(prof), "whoami", "--json")
    assert r.returncode == 2, r
    assert json.loads(r.stdout)["error"] in (ErrorCode.PROFILE_INVALID, ErrorCode.AUTH_REQUIRED)


def test_shell_completion(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # what `pip install` writes: a script named fedgram calling cli.main:main
    launcher = "import sys; sys.argv[0] = 'fedgram'; from cli.main import main; main()"
    (bin_dir / "fedgram").write_text(f'#!/bin/sh\nexec "{sys.executable}" -c "{launcher}" "$@"\n')
    (bin_dir / "fedgram").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
    env |= {"_FEDGRAM_COMPLETE": "complete_bash", "COMP_WORDS": "fedgram client se"}
    env["COMP_CWORD"] = "2"
    r = subprocess.run(["fedgram"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    offered = set(r.stdout.split())
    assert {"send", "search", "secret"} <= offered and all(w.startswith("se") for w in offered)
    shown = fedgram("--show-completion", "bash", check=True).stdout
    assert "complete" in shown and "_FEDGRAM_COMPLETE" in shown.upper()
