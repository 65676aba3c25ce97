"""`fedgram media stats|gc|delete`: the node admin's view of stored files."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from .admin_cmds import YesOpt, admin_call, confirm
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


@media_app.command()
def delete(
    file: Annotated[str, typer.Argument(help="The file's SHA-256 (hex) or a media id.")],
    yes: YesOpt = False,
    data: DataOpt = None,
    json: JsonOpt = False,
) -> None:
    """Erase one file from this node (every record of its bytes, and the bytes); messages
    carrying it then show it as gone."""
    key = "sha256" if re.fullmatch(r"[0-9a-fA-F]{64}", file) else "media_id"
    confirm(yes, f"media delete {file}", f"erase the file {file} from this node for good?")
    r = admin_call(data, "admin.mediaDelete", {key: file.lower()})
    if json:
        print_json(r)
        return
    typer.echo(
        f"erased {r['sha256']} ({_mib(r['freed'])} freed, {r['records']} record(s)); "
        f"{r['messages']} message(s) carried it and now show it as gone"
    )
