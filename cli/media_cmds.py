"""`fedgram media stats|gc`: the node admin's view of stored files."""

from __future__ import annotations

import typer

from .admin_cmds import admin_call
from .common import DataOpt, JsonOpt, print_json

media_app = typer.Typer(help="Stored media (admin).", no_args_is_help=True)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


@media_app.command()
def stats(data: DataOpt = None, json: JsonOpt = False) -> None:
    """Files and bytes on disk, uploads in progress, attachments."""
    s = admin_call(data, "admin.mediaStats")
    if json:
        print_json(s)
        return
    typer.echo(
        f"files: {s['files_on_disk']} ({_mib(s['bytes_on_disk'])}), media: {s['media']}, "
        f"attached: {s['refs']}"
    )
    typer.echo(f"uploads in progress: {s['uploads_in_progress']} ({_mib(s['partial_bytes'])})")


@media_app.command()
def gc(data: DataOpt = None, json: JsonOpt = False) -> None:
    """Expire abandoned uploads and delete files nothing refers to (also runs by itself)."""
    r = admin_call(data, "admin.mediaGc")
    if json:
        print_json(r)
        return
    typer.echo(
        f"expired {r['expired_uploads']} upload(s), dropped {r['dropped_media']} "
        f"unattached media, removed {r['removed_files']} file(s), freed "
        f"{_mib(r['freed_bytes'])}"
    )
