"""Start a real node for a benchmark: `fedgram init` + `fedgram run` in their own process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def start_node(folder: Path, config_toml: str) -> tuple[subprocess.Popen[str], str, Path]:
    """A node in a fresh data folder under ``folder`` configured by ``config_toml``;
    returns (process, ws:// URL, data folder) once it listens."""
    data = folder / "node"
    cfg = folder / "bench.toml"
    cfg.write_text(config_toml)
    cli = [sys.executable, "-m", "cli"]
    subprocess.run(
        [*cli, "init", "--data", str(data), "--config", str(cfg)],
        check=True,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    proc = subprocess.Popen(
        [*cli, "run", "--data", str(data)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "listening on" in line:
            return proc, line.rsplit(" ", 1)[1].strip(), data
    raise SystemExit(f"node did not start ({proc.wait()})")
