"""SIGHUP makes `fedgram run` re-read config.toml: live keys change without a restart,
the others are named as needing one, and a broken file keeps the running configuration."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from tests.conftest import NodeProcess, fedgram
from tests.test_ops_logs import init, running, set_keys

__all__ = ["running"]  # the fixture, used here


def wait_for(path: Path, text: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text()
        if text in content:
            return content
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {path}:\n{path.read_text()}")


def hup(node: NodeProcess, expect: str) -> str:
    node.proc.send_signal(signal.SIGHUP)
    return wait_for(node.stderr_path, expect)


def test_sighup_opens_registration_changes_limits_and_keeps_a_broken_config(
    running: Any, tmp_path: Path
) -> None:
    data = tmp_path / "n1"
    init(data)
    node = running(data)
    url = node.url

    def signup(name: str) -> Any:
        return fedgram("client", "signup", url, name, "--profile", str(tmp_path / name))

    r = signup("carol")
    assert r.returncode != 0 and "REGISTRATION_CLOSED" in r.stderr

    set_keys(data, registration='"open"', signup_per_ip='"3/3600"', edit_window="60")
    err = hup(node, "event=config.reloaded")
    line = next(x for x in err.splitlines() if "event=config.reloaded" in x)
    assert "accounts.registration" in line and "ratelimit.signup_per_ip" in line
    ignored = next(x for x in err.splitlines() if "event=config.reload_ignored" in x)
    assert "chats.edit_window" in ignored and "restart" in ignored
    assert signup("carol").returncode == 0  # no restart
    assert signup("dave").returncode == 0
    r = signup("erin")  # signup_per_ip 3 an hour: the refused first try counted
    assert r.returncode != 0 and "FLOOD_WAIT" in r.stderr

    # a broken file: logged, and the running configuration stays (still open)
    (data / "config.toml").write_text((data / "config.toml").read_text() + "\n[nope]\n")
    hup(node, "event=config.reload_failed")
    assert "unknown section [nope]" in node.stderr_path.read_text()
    set_keys(data, signup_per_ip='"10/3600"')
    text = (data / "config.toml").read_text().replace("\n[nope]\n", "\n")
    (data / "config.toml").write_text(text)

    # the log level changes live too: debug lines appear
    set_keys(data, log_level='"debug"')
    before = node.stderr_path.read_text().count("level=debug")
    hup(node, "node.log_level")
    assert signup("erin").returncode == 0  # signup_per_ip now 10: 7 left of it
    fedgram("client", "whoami", "--profile", str(tmp_path / "erin"), check=True)
    wait_for(node.stderr_path, "event=security.authorize")  # logged at debug only
    assert node.stderr_path.read_text().count("level=debug") > before

    assert node.proc.poll() is None  # SIGHUP never stopped it
    assert node.stop() == 0
