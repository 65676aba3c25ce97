"""`fedgram chat list|show|export|verify`: the node admin's view of chats (admin socket when
the node runs, the database directly when it is stopped)."""

from __future__ import annotations

import json as jsonlib
import sys
import time
from typing import Annotated, Any

import typer

from node.chats.events import open_event

from .admin_cmds import admin_call
from .chat_client_cmds import describe
from .common import DataOpt, JsonOpt, fail, print_json

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


@chat_app.command()
def export(chat: ChatIdArg, data: DataOpt = None) -> None:
    """The whole log as JSON lines, exactly as signed: each line has the decoded event and
    its raw bytes, hash and signature in hex (enough to verify it elsewhere)."""
    after = 0
    while True:
        page = admin_call(
            data, "admin.chatExport", {"chat": chat, "after": after, "limit": EXPORT_PAGE}
        )
        for e in page["events"]:
            ev = open_event(e["raw"])
            ev["prev"] = ev["prev"].hex() if isinstance(ev.get("prev"), bytes) else ev.get("prev")
            line = {
                "seq": e["seq"],
                "event": ev,
                "raw": e["raw"].hex(),
                "hash": e["hash"].hex(),
                "sig": e["sig"].hex(),
                "home_key": page["home_key"].hex(),
            }
            sys.stdout.write(jsonlib.dumps(line, sort_keys=True, default=str) + "\n")
        if len(page["events"]) < EXPORT_PAGE:
            return
        after = page["events"][-1]["seq"]


@chat_app.command()
def verify(chat: ChatIdArg, data: DataOpt = None, json: JsonOpt = False) -> None:
    """Check the chat's hash chain and the home node's signatures over every event."""
    r: dict[str, Any] = admin_call(data, "admin.chatVerify", {"chat": chat})
    if json:
        print_json(r)
    elif r["ok"]:
        typer.echo(f"ok: {r['events']} events, chain and signatures verify")
    if not r["ok"]:
        fail(f"chain broken: {r['error']}")
