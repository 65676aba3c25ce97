"""`fedgram chat list|show|export|verify`: the node admin's view of chats (admin socket when
the node runs, the database directly when it is stopped)."""

from __future__ import annotations

import json as jsonlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from .admin_cmds import YesOpt, admin_call, confirm
from .chat_client_cmds import describe
from .common import LOCAL, DataOpt, JsonOpt, fail, print_json

chat_app = typer.Typer(help="Inspect chats on this node (admin).", no_args_is_help=True)
ChatIdArg = Annotated[str, typer.Argument(help="Chat id (see `fedgram chat list`).")]
EXPORT_PAGE = 1000


@chat_app.command("list")
def list_chats(data: DataOpt = None, json: JsonOpt = False) -> None:
    """All chats: id, kind, members, last seq, title."""
    chats = admin_call(data, "admin.chatList")["chats"]
    if json:
        print_json(chats)
        return
    if not chats:
        typer.echo("no chats")
    for c in chats:
        created = time.strftime("%Y-%m-%d", time.localtime(c["created"]))
        typer.echo(
            f"{c['id']}  {c['kind']:<7} members={c['members']:<6} seq={c['last_seq']:<7} "
            f"{created}  {c['title']}"
        )


@chat_app.command()
def show(chat: ChatIdArg, data: DataOpt = None, json: JsonOpt = False) -> None:
    """One chat: settings, members (first 100) and its last events."""
    c = admin_call(data, "admin.chatShow", {"chat": chat})
    if json:
        print_json(c)
        return
    typer.echo(f"{c['id']}  {c['kind']}  {c['title']!r}")
    if c["about"]:
        typer.echo(f"about: {c['about']}")
    typer.echo(f"home node: {c['home']}  members: {c['members']}  last seq: {c['last_seq']}")
    typer.echo("members:")
    for m in c["member_list"]:
        state = "" if m["state"] == "member" else f" ({m['state']})"
        typer.echo(f"  {m['user']} {m['role']}{state}")
    typer.echo("last events:")
    for ev in c["last_events"]:
        typer.echo("  " + describe(ev))


def _hexed(obj: Any) -> Any:
    """Bytes inside a decoded event as hex, for JSON."""
    if isinstance(obj, bytes):
        return obj.hex()
    if isinstance(obj, dict):
        return {k: _hexed(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_hexed(v) for v in obj]
    return obj


@chat_app.command()
def export(
    chat: ChatIdArg,
    data: DataOpt = None,
    json: Annotated[
        bool, typer.Option("--json", help="Accepted: the output is JSON lines.")
    ] = False,
) -> None:
    """The whole log as JSON lines, exactly as signed: each line has the decoded event, its
    raw bytes, hash and signature in hex, and its content record in hex (null when it was
    erased, e.g. deleted for everyone, or the event never had any; "erased" tells which).
    Enough to verify it elsewhere: `fedgram chat verify ID --export FILE`."""
    from node.chats.events import open_content, open_event

    after = 0
    while True:
        page = admin_call(
            data, "admin.chatExport", {"chat": chat, "after": after, "limit": EXPORT_PAGE}
        )
        for e in page["events"]:
            ev = open_event(e["raw"])
            content = e.get("content")
            line = {
                "seq": e["seq"],
                "event": _hexed(ev),
                "raw": e["raw"].hex(),
                "hash": e["hash"].hex(),
                "sig": e["sig"].hex(),
                "content": content.hex() if content is not None else None,
                "content_body": _hexed(open_content(content)) if content is not None else None,
                "erased": content is None and ev.get("content_hash") is not None,
                "home_key": page["home_key"].hex(),
            }
            sys.stdout.write(jsonlib.dumps(line, sort_keys=True, default=str) + "\n")
        if len(page["events"]) < EXPORT_PAGE:
            return
        after = page["events"][-1]["seq"]


Row = tuple[int, bytes, bytes, bytes, bytes | None]


def _export_rows(path: Path, keys: set[str]) -> Iterator[Row]:
    """The (seq, raw, hash, sig, content) rows of an export file; the home keys it names
    are collected in ``keys``."""
    from node.chats.events import ChainError

    with path.open() as f:
        for n, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                line = jsonlib.loads(text)
                keys.add(line["home_key"])
                content = line.get("content")
                yield (
                    int(line["seq"]),
                    bytes.fromhex(line["raw"]),
                    bytes.fromhex(line["hash"]),
                    bytes.fromhex(line["sig"]),
                    bytes.fromhex(content) if content is not None else None,
                )
            except (ValueError, KeyError, TypeError) as e:
                raise ChainError(f"{path}:{n}: not an export line ({e})") from None


def _verify_export(chat: str, path: Path) -> dict[str, Any]:
    """Verify an export file with the home key it carries (a verifier that trusts a key
    should compare it with the one it expects: it is printed)."""
    from nacl.exceptions import CryptoError
    from nacl.signing import VerifyKey

    from node.chats.events import ChainError, open_event, verify_chain

    keys: set[str] = set()
    rows = list(_export_rows(path, keys))
    if len(keys) != 1:
        raise ChainError(f"{path}: {len(keys)} different home keys")
    (home_key,) = keys
    try:
        key = VerifyKey(bytes.fromhex(home_key))
    except (ValueError, CryptoError):
        raise ChainError(f"{path}: bad home key") from None
    n = verify_chain(key, chat, rows)
    erased = 0
    for _seq, raw, _h, _sig, content in rows:
        erased += content is None and open_event(raw).get("content_hash") is not None
    return {"ok": True, "events": n, "erased": erased, "home_key": home_key, "error": None}


@chat_app.command()
def verify(
    chat: ChatIdArg,
    data: DataOpt = None,
    json: JsonOpt = False,
    export_file: Annotated[
        Path | None,
        typer.Option(
            "--export",
            help="Verify this file of `fedgram chat export` lines instead of the node's copy.",
        ),
    ] = None,
) -> None:
    """Check the chat's hash chain and the home node's signatures over every event, and the
    content that is still there against the hash the event commits to."""
    if export_file is not None:
        from node.chats.events import ChainError
        from node.protocol.codec import DecodeError

        try:
            r: dict[str, Any] = _verify_export(chat, export_file)
        except OSError as e:
            fail(f"{export_file}: {e.strerror}", LOCAL, "FILE_ERROR")
        except (ChainError, DecodeError) as e:
            r = {"ok": False, "events": 0, "error": str(e)}
        if not json and r["ok"]:
            typer.echo(
                f"ok: {r['events']} events ({r['erased']} with erased content), chain, "
                f"signatures and content verify; home key {r['home_key']}"
            )
            return
    else:
        r = admin_call(data, "admin.chatVerify", {"chat": chat})
    if json:
        print_json(r)
    elif r["ok"]:
        typer.echo(f"ok: {r['events']} events, chain, signatures and content verify")
    if not r["ok"]:
        fail(f"chain broken: {r['error']}", error="CHAIN_BROKEN")


@chat_app.command()
def purge(
    chat: ChatIdArg, yes: YesOpt = False, data: DataOpt = None, json: JsonOpt = False
) -> None:
    """Remove a chat and all of it (messages, content, members, its files) from this node.
    A chat homed elsewhere is first left through its home; other nodes keep their copies."""
    confirm(yes, f"chat purge {chat}", f"remove chat {chat} and all its messages from this node?")
    r = admin_call(data, "admin.chatPurge", {"chat": chat})
    gc = admin_call(data, "admin.mediaGc")  # the files only it carried go now, not in an hour
    if json:
        print_json({**r, "freed_bytes": gc["freed_bytes"]})
        return
    typer.echo(
        f"purged chat {r['chat']}: {r['events']} event(s), {r['members']} member(s), "
        f"{r['media']} media record(s) ({gc['freed_bytes'] / 1048576:.1f} MiB freed)"
        + (
            f"; {r['left_home']} local member(s) left through its home first"
            if r["left_home"]
            else ""
        )
    )
