"""`fedgram backup create|restore`: a consistent copy of a data folder in one archive, taken
while the node runs or not (node/backup.py says how), with a progress bar on stderr."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from node import backup, config

from .common import DataOpt, JsonOpt, print_json
from .progress import work_bar

backup_app = typer.Typer(
    help="Back up a data folder into one archive, and restore it.", no_args_is_help=True
)
PathArg = Annotated[Path, typer.Argument(help="The archive (.tar, or .tar.gz to compress).")]


def _size(n: int) -> str:
    return f"{n / 1048576:.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.1f} KiB"


@backup_app.command("create")
def create(
    path: PathArg,
    data: DataOpt = None,
    json: JsonOpt = False,
) -> None:
    """Write a backup of the data folder to PATH (database, media, node.key, config.toml),
    consistent even while the node runs; PATH is mode 0600 (it holds the node's key)."""
    data_dir = config.resolve_data_dir(data)
    start = time.monotonic()
    with work_bar("backup", enabled=not json) as progress:
        m = backup.create(data_dir, path, progress)
    took = time.monotonic() - start
    if json:
        print_json({**m, "seconds": round(took, 3)})
        return
    media = sum(1 for f in m["files"] if f["path"].startswith("media/"))
    how = "while the node was running" if m["online"] else "with the node stopped"
    typer.echo(
        f"backed up {data_dir} to {m['path']} ({_size(m['bytes'])}: the database, {media} "
        f"media file(s), node.key and config.toml) {how}, in {took:.1f} s"
    )
    if m["missing_media"]:
        typer.echo(
            f"{len(m['missing_media'])} media file(s) were removed by the node's sweep during "
            "the copy and are not in it",
            err=True,
        )


@backup_app.command("restore")
def restore(
    path: PathArg,
    data: DataOpt = None,
    json: JsonOpt = False,
) -> None:
    """Restore the backup PATH into the data folder, which must be new or empty (a folder
    holding a database, or one a node runs on, is refused). Checks every file's SHA-256."""
    data_dir = config.resolve_data_dir(data)
    with work_bar("restore", enabled=not json) as progress:
        m: dict[str, Any] = backup.restore(path, data_dir, progress)
    if json:
        print_json({**m, "data": str(data_dir)})
        return
    made = time.strftime("%Y-%m-%d %H:%M", time.localtime(m["created"]))
    typer.echo(
        f"restored the backup of node {m['node_id']} made {made} into {data_dir} "
        f"({len(m['files'])} files, all checked); start it with `fedgram run --data {data_dir}`"
    )
