"""`fedgram client chats|start|send|history|listen|...`: chatting from the command line.

CHAT arguments take a chat id or ``@name`` (the private chat with that user, created on
first use). Every command prints readable text, or JSON with ``--json`` for scripts.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .admin_cmds import parse_duration
from .client_cmds import ProfileOpt, _profile, client_app
from .common import JsonOpt, print_json, run_async

if TYPE_CHECKING:
    from node.client import Client

ChatArg = Annotated[str, typer.Argument(help="Chat id, or @name for a private chat.")]
SeqArg = Annotated[int, typer.Argument(help="Message seq (see `client history`).", min=1)]


async def resolve_chat(c: Client, ref: str) -> str:
    """A chat id from a CHAT argument: ``@name`` opens (or creates) the private chat."""
    if ref.startswith("@"):
        r = await c.call("chats.startPrivate", {"user": ref[1:]})
        return str(r["chat"]["id"])
    return ref


def _call(profile: Any, method: str, params: dict[str, Any], chat: str | None = None) -> Any:
    """One call with the profile's session; CHAT refs resolved first."""
    prof = _profile(profile)
    from node.client.signed_in import connect_signed_in

    async def go() -> Any:
        async with connect_signed_in(prof) as c:
            if chat is not None:
                params["chat"] = await resolve_chat(c, chat)
            return await c.call(method, params)

    return run_async(go)


def _said(json: bool, result: Any, sentence: str) -> None:
    """A command's answer: the node's result with --json, else one sentence."""
    if json:
        print_json(result)
    else:
        typer.echo(sentence)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def describe(ev: dict[str, Any]) -> str:
    """One event as a line a person reads."""
    b = ev.get("body") or {}
    who = ev.get("sender") or "?"
    head = f"[{ev['seq']}] {_when(ev['ts'])} {who}"
    kind = ev["kind"]
    if kind == "message":
        if ev.get("deleted"):
            return f"{head}: (deleted)"
        parts = []
        if "fwd" in b:
            parts.append(f"(forwarded from {b['fwd'].get('sender')})")
        if "reply_to" in b:
            parts.append(f"(reply to {b['reply_to']})")
        for m in b.get("media", []):
            parts.append(
                f"[{m.get('kind')}: {m.get('name')} {m.get('size')} B id={m.get('media_id')}]"
            )
        parts.append(b.get("text", ""))
        edited = " (edited)" if ev.get("edited") else ""
        return f"{head}: {' '.join(p for p in parts if p)}{edited}"
    detail = _service_text(kind, b)
    return f"{head} * {detail}"


def _service_text(kind: str, b: dict[str, Any]) -> str:
    """What a service event (not a message) says."""
    texts = {
        "create": f"created the {b.get('kind')} {b.get('title') or ''}".rstrip(),
        "edit": f"edited {b.get('target')}: {b.get('text')}",
        "delete": f"deleted {b.get('target')}",
        "pin": f"pinned {b.get('target')}",
        "unpin": f"unpinned {b.get('target')}",
        "title": f"set the title to {b.get('title')!r}",
        "about": f"set the description to {b.get('about')!r}",
        "join": "joined",
        "leave": "left",
        "add": f"added {', '.join(b.get('users', []))}",
        "remove": f"removed {b.get('user')}",
        "ban": f"banned {b.get('user')}",
        "unban": f"unbanned {b.get('user')}",
        "role": f"made {b.get('user')} {b.get('role')}",
    }
    return texts.get(kind, kind)


@client_app.command("chats")
def chats_cmd(
    archived: Annotated[bool, typer.Option(help="Show archived chats instead.")] = False,
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """List your chats: pinned first, then by last activity."""
    r = _call(profile, "chats.list", {"archived": archived})
    if json:
        print_json(r["chats"])
        return
    if not r["chats"]:
        typer.echo("no chats")
    for d in r["chats"]:
        typer.echo(dialog_line(d))


def dialog_line(d: dict[str, Any]) -> str:
    """One dialog as a line: id, kind, flags (*: pinned, m: muted), title, unread count and
    the last event."""
    flags = "".join(f for f, on in (("*", d["pinned"]), ("m", d["muted"])) if on)
    last = describe(d["last"]).split(" ", 3)[-1] if d["last"] else ""
    unread = f" ({d['unread']} unread)" if d["unread"] else ""
    return f"{d['id']}  {d['kind']:<7} {flags:<2} {d['title']}{unread}  {last}"


@client_app.command()
def start(
    user: Annotated[str, typer.Argument(help="@name (or name) of the other user.")],
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Open (or create) the private chat with a user; prints its chat id."""
    r = _call(profile, "chats.startPrivate", {"user": user.lstrip("@")})
    if json:
        print_json(r)
    else:
        typer.echo(r["chat"]["id"])  # the id on stdout (for `C=$(...)`), the sentence on stderr
        typer.echo(f"private chat with {r['chat']['title']}", err=True)


def _create(
    method: str, title: str, about: str | None, members: str | None, json: bool, profile: Any
) -> None:
    params: dict[str, Any] = {"title": title}
    if about:
        params["about"] = about
    if members:
        params["members"] = [m.strip().lstrip("@") for m in members.split(",") if m.strip()]
    r = _call(profile, method, params)
    if json:
        print_json(r["chat"])
    else:
        typer.echo(r["chat"]["id"])  # the id on stdout (for `G=$(...)`), the sentence on stderr
        kind = "channel" if method == "chats.createChannel" else "group"
        typer.echo(f"created {kind} {r['chat']['title']!r}; you are its owner", err=True)


@client_app.command("create-group")
def create_group(
    title: Annotated[str, typer.Argument()],
    members: Annotated[str | None, typer.Option(help="Comma-separated user names.")] = None,
    about: Annotated[str | None, typer.Option(help="Description.")] = None,
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Create a group (you are its owner); prints its chat id."""
    _create("chats.createGroup", title, about, members, json, profile)


@client_app.command("create-channel")
def create_channel(
    title: Annotated[str, typer.Argument()],
    about: Annotated[str | None, typer.Option(help="Description.")] = None,
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Create a channel (admins post, subscribers read); prints its chat id."""
    _create("chats.createChannel", title, about, None, json, profile)


@client_app.command()
def invite(
    chat: ChatArg,
    uses: Annotated[int | None, typer.Option(help="How many joins (default unlimited).")] = None,
    expires: Annotated[str | None, typer.Option(help="e.g. 12h, 7d (default never).")] = None,
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Create an invite token for a group or channel (admins); prints the token."""
    params: dict[str, Any] = {}
    if uses is not None:
        params["uses"] = uses
    if expires is not None:
        params["expires_in"] = parse_duration(expires)
    r = _call(profile, "chats.createInvite", params, chat)
    if json:
        print_json(r)
        return
    typer.echo(r["invite"])  # the token on stdout, the sentence on stderr
    typer.echo(f"invite link created: `fedgram client join {r['invite']}` joins {chat}", err=True)


@client_app.command()
def join(
    token: Annotated[str, typer.Argument(help="Invite token.")],
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Join a group or channel with an invite token; prints its chat id."""
    r = _call(profile, "chats.join", {"invite": token})
    if json:
        print_json(r)
        return
    typer.echo(r["chat"]["id"])
    typer.echo(f"joined {r['chat']['title']!r}", err=True)


@client_app.command()
def leave(chat: ChatArg, profile: ProfileOpt = None, json: JsonOpt = False) -> None:
    """Leave a group or channel."""
    r = _call(profile, "chats.leave", {}, chat)
    _said(json, r, f"left {chat}")


@client_app.command()
def add(
    chat: ChatArg,
    users: Annotated[list[str], typer.Argument(help="User names.")],
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Add users to a group (or, for admins, a channel)."""
    r = _call(profile, "chats.addMembers", {"users": [u.lstrip("@") for u in users]}, chat)
    who = ", ".join(users)
    _said(json, r, f"already members: {who}" if r["seq"] is None else f"added {who} (#{r['seq']})")


@client_app.command()
def kick(
    chat: ChatArg,
    user: Annotated[str, typer.Argument(help="User name.")],
    ban: Annotated[bool, typer.Option("--ban", help="Also ban from rejoining.")] = False,
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Remove (and optionally ban) a member (admins)."""
    r = _call(profile, "chats.kick", {"user": user.lstrip("@"), "ban": ban}, chat)
    _said(json, r, f"{'banned' if ban else 'removed'} {user} from {chat} (#{r['seq']})")


@client_app.command()
def send(
    chat: ChatArg,
    text: Annotated[str, typer.Argument(help="Message text (up to 4096 characters).")],
    reply_to: Annotated[int | None, typer.Option("--reply-to", min=1)] = None,
    random_id: Annotated[
        int | None,
        typer.Option("--random-id", help="Idempotency key: a resend with it is stored once."),
    ] = None,
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Send a message; prints its seq, or "queued" when the chat lives on another node (the
    post is stored here and forwarded; its seq arrives with the chat's updates; `fedgram
    client cancel` takes it back while it has not left)."""
    params: dict[str, Any] = {"text": text, "random_id": random_id or secrets.randbits(63)}
    if reply_to is not None:
        params["reply_to"] = reply_to
    r = _call(profile, "messages.send", params, chat)
    if json:
        print_json(r)
    elif r.get("pending"):
        typer.echo(
            f"queued for {chat}: its chat lives on another node and gets it as soon as the "
            f"link is up (random id {params['random_id']}; `fedgram client cancel {chat} "
            f"{params['random_id']}` takes it back until then)"
        )
    else:
        typer.echo(f"sent to {chat} as #{r['seq']}")


@client_app.command()
def cancel(
    chat: ChatArg,
    random_id: Annotated[int, typer.Argument(help="The random id `send` printed as queued.")],
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Take back a queued post (one for a chat on another node that has not left yet)."""
    r = _call(profile, "messages.cancel", {"random_id": random_id}, chat)
    if json:
        print_json(r)
    elif r["cancelled"]:
        typer.echo("cancelled")
    elif r["seq"] is not None:
        typer.echo(f"already sent (seq {r['seq']})")
    else:
        typer.echo("already on its way: it will be sent")


@client_app.command()
def edit(
    chat: ChatArg, seq: SeqArg, text: str, profile: ProfileOpt = None, json: JsonOpt = False
) -> None:
    """Edit one of your messages."""
    r = _call(profile, "messages.edit", {"seq": seq, "text": text}, chat)
    _said(json, r, f"edited #{seq} in {chat}")


@client_app.command()
def delete(
    chat: ChatArg,
    seq: SeqArg,
    for_me: Annotated[bool, typer.Option("--for-me", help="Hide it only for yourself.")] = False,
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Delete a message for everyone (yours, or as admin), or --for-me."""
    r = _call(profile, "messages.delete", {"seq": seq, "for_everyone": not for_me}, chat)
    whom = "for you" if for_me else "for everyone"
    _said(json, r, f"deleted #{seq} in {chat} {whom}")


@client_app.command()
def pin(chat: ChatArg, seq: SeqArg, profile: ProfileOpt = None, json: JsonOpt = False) -> None:
    """Pin a message."""
    r = _call(profile, "messages.pin", {"seq": seq}, chat)
    _said(json, r, f"pinned #{seq} in {chat}")


@client_app.command()
def read(
    chat: ChatArg,
    seq: Annotated[int | None, typer.Option(help="Read up to here (default: all).", min=1)] = None,
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Mark a chat read (on all your devices)."""
    r = _call(profile, "messages.read", {} if seq is None else {"seq": seq}, chat)
    _said(json, r, f"read {chat} up to #{r['read_seq']}, {r['unread']} unread")


@client_app.command()
def history(
    chat: ChatArg,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 20,
    before: Annotated[int | None, typer.Option(min=1)] = None,
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Show a chat's messages, oldest first (edits and deletes applied)."""
    params: dict[str, Any] = {"limit": limit}
    if before is not None:
        params["before"] = before
    r = _call(profile, "chats.history", params, chat)
    if json:
        print_json(r["events"])
        return
    for ev in r["events"]:
        typer.echo(describe(ev))


@client_app.command()
def search(
    words: Annotated[str, typer.Argument(help="Words to find (all must match).")],
    chat: Annotated[str | None, typer.Option(help="Only this chat (id or @name).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 20,
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Search messages in the chats you can read."""
    r = _call(profile, "messages.search", {"query": words, "limit": limit}, chat)
    if json:
        print_json(r["results"])
        return
    if not r["results"]:
        typer.echo("nothing found")
    for ev in r["results"]:
        typer.echo(f"{ev['chat']} {describe(ev)}")
