"""`fedgram client secret ...`: end-to-end encrypted chats between two devices.

The chats live in the profile (``secret.db``), never on a node. Every command first sends
what waits in this device's out-queue and takes in what waits for it on the node (so
``accept`` sees a request that arrived while the device was off), and publishes this
device's prekeys when they run low: a device takes secret chats once it has run any
``secret`` command. Every command prints text, or JSON with ``--json``.
"""

from __future__ import annotations

import json as jsonlib
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import trio
import typer

from .client_cmds import ProfileOpt, _profile, client_app
from .common import LOCAL, JsonOpt, fail, print_json, run_async
from .progress import transfer_bar

if TYPE_CHECKING:
    from node.client import Profile
    from node.client.secret.chats import SecretChats
    from node.protocol.errors import RpcError

T = TypeVar("T")

secret_app = typer.Typer(
    help="Secret chats: end-to-end encrypted, one device on each side, kept on this device.",
    no_args_is_help=True,
)
client_app.add_typer(secret_app, name="secret")

ChatIdArg = Annotated[str, typer.Argument(help="Secret chat id (see `secret list`).")]
MsgArg = Annotated[int, typer.Argument(help="Message number or id (see `secret history`).", min=1)]
TtlOpt = Annotated[
    int | None,
    typer.Option("--ttl", min=1, help="Self-destruct: seconds after the peer reads it."),
]


def _with_secret(profile: Path | None, fn: Callable[[SecretChats], Awaitable[T]]) -> T:
    """Connect with the profile's session, open its secret chats, sync, run ``fn``."""
    prof = _profile(profile)
    from node.client.secret.chats import SecretChats
    from node.client.secret.errors import SecretError
    from node.client.signed_in import connect_signed_in

    async def go() -> T:
        me, device = _identity(prof)
        async with connect_signed_in(prof) as c:
            sc = SecretChats(c, prof, prof.device_key(), me=me, device_id=device)
            try:
                await sc.ensure_keys()
                await sc.sync()
                return await fn(sc)
            finally:
                sc.close_store()

    try:
        return run_async(go)
    except SecretError as e:
        fail(f"{e} ({e.code})", error=e.code)


def _identity(prof: Profile) -> tuple[str | None, int | None]:
    session = prof.session() or {}
    address, device = session.get("address"), session.get("device_id")
    return (
        address if isinstance(address, str) else None,
        device if isinstance(device, int) else None,
    )


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def describe_message(m: dict[str, Any]) -> str:
    """One message as a line: id, time, direction, state, content."""
    arrow = ">" if m["out"] else "<"
    timer = ""
    if m.get("delete_at"):
        timer = f" (self-destructs at {_when(m['delete_at'])})"
    elif m.get("ttl"):
        timer = f" (self-destructs {m['ttl']}s after read)"
    if m["state"] == "deleted":
        body = "(deleted)"
    elif m["kind"] == "file" and m.get("file"):
        f = m["file"]
        body = f"[file: {f.get('name')} {f.get('size')} B]"
    else:
        body = m.get("text") or ""
    return f"[{m['seq']}] {_when(m['sent'])} {arrow} {m['state']:<9} {body}{timer}"


def describe_chat(d: dict[str, Any]) -> str:
    dev = f" #{d['peer_device']}" if d.get("peer_device") is not None else ""
    why = f" ({d['reason']})" if d.get("reason") else ""
    unread = f" ({d['unread']} unread)" if d.get("unread") else ""
    return f"{d['id']}  {d['state']:<9} {d['peer']}{dev}{why}{unread}"


def describe_event(ev: dict[str, Any]) -> str:
    """One event of `secret listen` as a line a person reads."""
    t, chat = ev["type"], ev.get("chat", "")
    if t == "message":
        return f"{chat} {describe_message(ev['message'])}"
    if t == "request":
        return (
            f"{chat} secret chat request from {ev['peer']} (device #{ev['device']}): "
            f"fedgram client secret accept {chat}"
        )
    if t == "accepted":
        return f"{chat} accepted by device #{ev['device']}"
    if t == "error":
        return f"rejected an envelope from {ev['from']} #{ev['device']}: {ev['error']}"
    if t == "expired":
        if ev.get("direction") == "in":
            return f"{chat} {ev['count']} message(s) expired on the node before arriving here"
        return f"{chat} {ev['count']} sent message(s) expired before the peer fetched them"
    if t == "closed":
        return f"{chat} closed: {ev.get('reason')}"
    if t == "taken":
        return f"{chat} was accepted on another of your devices"
    ids = ev.get("ids")
    return f"{chat} {t}" + (f" {', '.join(str(i) for i in ids)}" if ids else "")


@secret_app.command()
def start(
    user: Annotated[str, typer.Argument(help="@name or @name@node of the other user.")],
    ttl: TtlOpt = None,
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Request a secret chat with every device of a user; prints the chat id. The chat can
    be written to at once; the first of their devices to accept it gets it."""

    async def go(sc: SecretChats) -> dict[str, Any]:
        chat_id = await sc.start(user, ttl=ttl)
        return sc.chat(chat_id)

    r = _with_secret(profile, go)
    if json:
        print_json(r)
    else:
        typer.echo(r["id"])


@secret_app.command("list")
def list_cmd(profile: ProfileOpt = None, json: JsonOpt = False) -> None:
    """List this device's secret chats (requests to accept show as `incoming`)."""

    async def go(sc: SecretChats) -> list[dict[str, Any]]:
        return sc.list()

    chats = _with_secret(profile, go)
    if json:
        print_json(chats)
        return
    if not chats:
        typer.echo("no secret chats")
    for d in chats:
        typer.echo(describe_chat(d))


@secret_app.command()
def accept(chat: ChatIdArg, profile: ProfileOpt = None, json: JsonOpt = False) -> None:
    """Accept a secret chat request: this device becomes the chat's device."""

    async def go(sc: SecretChats) -> dict[str, Any]:
        return await sc.accept(chat)

    r = _with_secret(profile, go)
    if json:
        print_json(r)
    else:
        typer.echo(f"accepted {r['id']} with {r['peer']}")


@secret_app.command()
def send(
    chat: ChatIdArg,
    text: Annotated[str, typer.Argument(help="Message text.")],
    ttl: TtlOpt = None,
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Send a message; prints its number in the chat (its id with --json)."""

    async def go(sc: SecretChats) -> dict[str, Any]:
        return await sc.send(chat, text, ttl=ttl)

    m = _with_secret(profile, go)
    if json:
        print_json(m)
    else:
        typer.echo(f"sent to secret chat {chat} as #{m['seq']}")


@secret_app.command("send-file")
def send_file(
    chat: ChatIdArg,
    path: Annotated[Path, typer.Argument(help="The file.", exists=True, dir_okay=False)],
    ttl: TtlOpt = None,
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Encrypt a file on this device, upload the ciphertext, send its key in the chat;
    prints the message's number in the chat."""

    async def go(sc: SecretChats) -> dict[str, Any]:
        with transfer_bar(path.name, path.stat().st_size) as bar:
            return await sc.send_file(chat, path, ttl=ttl, progress=bar.advance)

    m = _with_secret(profile, go)
    if json:
        print_json(m)
    else:
        typer.echo(f"sent {path.name} to secret chat {chat} as #{m['seq']} (encrypted here)")


@secret_app.command()
def download(
    chat: ChatIdArg,
    message: MsgArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to save it.")],
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Download and decrypt the file of a message."""
    if not output.parent.is_dir():
        fail(f"cannot save to {output}: folder {output.parent} does not exist", LOCAL, "FILE_ERROR")

    async def go(sc: SecretChats) -> int:
        mid = sc.message_id(chat, message)
        found = sc.store.find_message(chat, mid)
        total = int(found["file"]["media_size"]) if found and found.get("file") else 0
        with transfer_bar(output.name, total) as bar:
            return await sc.download(chat, mid, output, progress=bar.advance)

    size = _with_secret(profile, go)
    if json:
        print_json({"path": str(output), "size": size})
    else:
        typer.echo(f"saved {output} ({size} bytes, decrypted and verified)")


@secret_app.command()
def history(
    chat: ChatIdArg,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the newest N.")] = None,
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Show the chat's messages, oldest first; what was unread is now read (the peer is
    told, and self-destruct timers start)."""

    async def go(sc: SecretChats) -> list[dict[str, Any]]:
        await sc.mark_read(chat)
        return sc.history(chat, limit)

    msgs = _with_secret(profile, go)
    if json:
        print_json(msgs)
        return
    for m in msgs:
        typer.echo(describe_message(m))


@secret_app.command()
def delete(
    chat: ChatIdArg, message: MsgArg, profile: ProfileOpt = None, json: JsonOpt = False
) -> None:
    """Delete a message on both devices."""

    async def go(sc: SecretChats) -> int:
        mid = sc.message_id(chat, message)
        await sc.delete_for_both(chat, mid)
        return mid

    mid = _with_secret(profile, go)
    if json:
        print_json({"chat": chat, "deleted": [mid]})
    else:
        typer.echo("deleted")


@secret_app.command()
def verify(chat: ChatIdArg, profile: ProfileOpt = None, json: JsonOpt = False) -> None:
    """Print the chat's safety number: the same on both devices unless a node swapped a
    key. Compare it with the other person out of band."""

    async def go(sc: SecretChats) -> dict[str, Any]:
        d = sc.chat(chat)
        return {"chat": chat, "peer": d["peer"], "fingerprint": sc.verify(chat)}

    r = _with_secret(profile, go)
    if json:
        print_json(r)
    else:
        typer.echo(r["fingerprint"])


@secret_app.command()
def close(chat: ChatIdArg, profile: ProfileOpt = None, json: JsonOpt = False) -> None:
    """End a secret chat on both devices (its keys are destroyed; the history stays)."""

    async def go(sc: SecretChats) -> dict[str, Any]:
        return await sc.close(chat)

    r = _with_secret(profile, go)
    if json:
        print_json(r)
    else:
        typer.echo(f"closed {r['id']}")


@secret_app.command()
def listen(
    count: Annotated[
        int | None, typer.Option(min=0, help="Exit after this many events (default: run on).")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(min=0, help="Exit after this many seconds.")
    ] = None,
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Print secret-chat events as they happen (with --json: one JSON object a line):
    messages, requests, receipts, and envelopes rejected as tampered or replayed. When
    the connection is lost it reconnects with backoff; nothing is missed (what arrived
    meanwhile waits on the node until this device has stored it)."""
    prof = _profile(profile)
    from node.client.secret.chats import SecretChats
    from node.client.secret.errors import SecretError
    from node.client.signed_in import connect_signed_in

    from .client_listen import TRANSIENT, backoff

    printed = 0

    def emit(ev: dict[str, Any]) -> None:
        nonlocal printed
        line = jsonlib.dumps(ev, sort_keys=True, default=str) if json else describe_event(ev)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        printed += 1

    def done() -> bool:
        return count is not None and printed >= count

    async def session(sc: SecretChats) -> None:
        """One connection: what the first sync brought, then live events."""
        await sc.ensure_keys()
        await sc.sync()
        for ev in sc.pending_events():
            if done():
                return
            emit(ev)
        async with trio.open_nursery() as nursery:
            await nursery.start(sc.listen)
            while not done():
                emit(await sc.next_event(timeout=float("inf")))
            nursery.cancel_scope.cancel()

    async def go() -> None:
        me, device = _identity(prof)
        failures = 0
        while not done():
            try:
                async with connect_signed_in(prof) as c:
                    if failures:
                        _say(f"reconnected to {c.url}")
                    failures = 0
                    sc = SecretChats(c, prof, prof.device_key(), me=me, device_id=device)
                    try:
                        await session(sc)
                    finally:
                        sc.close_store()
                return
            except BaseException as e:  # a lost connection may come wrapped in a group
                rpc = _rpc_error(e)
                if rpc is None or rpc.code not in TRANSIENT:
                    raise
                wait = backoff(failures, rpc.retry_after)
                _say(f"connection lost ({rpc}); reconnecting in {wait:.1f}s")
                failures += 1
                await trio.sleep(wait)

    async def bounded() -> None:
        with trio.move_on_after(timeout if timeout is not None else float("inf")):
            await go()

    try:
        run_async(bounded)
    except SecretError as e:
        fail(f"{e} ({e.code})", error=e.code)


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _rpc_error(e: BaseException) -> RpcError | None:
    """The RpcError in ``e`` (itself, or the first one inside exception groups), or None."""
    from node.protocol.errors import RpcError

    if isinstance(e, RpcError):
        return e
    if isinstance(e, BaseExceptionGroup):
        for sub in e.exceptions:
            found = _rpc_error(sub)
            if found is not None:
                return found
    return None
