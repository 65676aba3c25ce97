"""`fedgram client upload|download`: files with progress bars; re-running resumes."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated, Any

import typer

from .chat_client_cmds import resolve_chat
from .client_cmds import ProfileOpt, _profile, client_app
from .common import JsonOpt, print_json, run_async
from .progress import transfer_bar


@client_app.command()
def upload(
    file: Annotated[Path, typer.Argument(help="The file to upload.", exists=True, dir_okay=False)],
    to: Annotated[
        str | None, typer.Option("--to", help="Send it to this chat (id or @name).")
    ] = None,
    caption: Annotated[str | None, typer.Option(help="Caption of the message (with --to).")] = None,
    mime: Annotated[str | None, typer.Option(help="MIME type (default: from the name).")] = None,
    parallel: Annotated[int, typer.Option(min=1, max=32, help="Parts in flight.")] = 8,
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Upload a file (resumes an interrupted upload of the same file); prints its media id."""
    from node.client.media import guess_mime, kind_for, upload_file, upload_id_for
    from node.client.signed_in import connect_signed_in

    prof = _profile(profile)
    the_mime = mime or guess_mime(file)
    size = file.stat().st_size

    async def go() -> dict[str, Any]:
        async with connect_signed_in(prof) as c:
            with transfer_bar(file.name, size) as bar:
                info = await upload_file(
                    c,
                    file,
                    upload_id_for(file),
                    mime=the_mime,
                    progress=bar.advance,
                    resumed=bar.resumed,
                    parallel=parallel,
                )
            out: dict[str, Any] = {"media": info}
            if to is not None:
                chat = await resolve_chat(c, to)
                params = {
                    "chat": chat,
                    "random_id": secrets.randbits(63),
                    "text": caption or "",
                    "media": [{"media_id": info["media_id"], "kind": kind_for(the_mime)}],
                }
                out["message"] = {"chat": chat, **await c.call("messages.send", params)}
            return out

    r = run_async(go)
    if json:
        print_json(r)
        return
    typer.echo(r["media"]["media_id"])  # the id on stdout (for `M=$(...)`), sentences on stderr
    typer.echo(f"uploaded {file.name} ({_size(size)}) as media {r['media']['media_id']}", err=True)
    if "message" in r:
        m = r["message"]
        where = f"as #{m['seq']}" if m.get("seq") is not None else "(queued: chat on another node)"
        typer.echo(f"sent to {to} {where}", err=True)


def default_dest(name: str, media_id: str, folder: Path = Path()) -> Path:
    """Where a download goes without ``-o``: the sender's file name made harmless (no
    folders, no control characters, not hidden, so ``.bashrc`` or ``..`` cannot land where
    it would do harm), never over an existing file: ``name (1).ext`` and so on. A partial
    ``.part`` of the chosen name is resumed."""
    base = "".join(ch for ch in Path(name.replace("\\", "/")).name if ch.isprintable())
    base = base.lstrip(". ") or media_id
    stem, dot, ext = base.rpartition(".")
    if not stem:
        stem, dot, ext = ext, "", ""
    dest, n = folder / base, 0
    while dest.exists():
        n += 1
        dest = folder / f"{stem} ({n}){dot}{ext}"
    return dest


@client_app.command()
def download(
    media_id: Annotated[str, typer.Argument(help="Media id (from a message or an upload).")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Where to save it.")] = None,
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Download a file (resumes a partial download); verifies its SHA-256."""
    from node.client.media import check_destination, download_file
    from node.client.signed_in import connect_signed_in

    prof = _profile(profile)
    if output is not None:
        check_destination(output)  # a mistyped -o fails before any connection

    async def go() -> dict[str, Any]:
        async with connect_signed_in(prof) as c:
            info = await c.call("media.info", {"media_id": media_id})
            dest = output or default_dest(info["name"], media_id)
            check_destination(dest)  # before the progress bar shows
            with transfer_bar(dest.name, info["size"]) as bar:
                await download_file(c, media_id, dest, progress=bar.advance, resumed=bar.resumed)
            return {
                "path": str(dest),
                "media_id": media_id,
                "size": info["size"],
                "sha256": info["sha256"],
            }

    r = run_async(go)
    if json:
        print_json(r)
        return
    typer.echo(f"saved {r['path']} ({_size(r['size'])}, SHA-256 verified)")


def _size(n: int) -> str:
    """Bytes as a person reads them."""
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"
