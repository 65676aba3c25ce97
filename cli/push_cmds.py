"""`fedgram client push ...`: push notifications for this device when it is not connected.

``register URL`` makes (once) this device's push key, an X25519 key pair kept in the
profile folder (``push.key``, mode 0600), and registers URL (a UnifiedPush endpoint or any
webhook) with its public half. ``open`` is the device side of a notification: it reads a
POST body (stdin or a file) and opens it with that key; a webhook script on the device
pipes the body into it. Every command prints a sentence, or JSON with ``--json``.
"""

from __future__ import annotations

import base64
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from .client_cmds import ProfileOpt, _profile, client_app
from .common import LOCAL, JsonOpt, fail, print_json, run_async

if TYPE_CHECKING:
    from node.client import Client, Profile

T = TypeVar("T")
PUSH_KEY = "push.key"

push_app = typer.Typer(
    help="Push notifications (UnifiedPush or a webhook) while this device is offline.",
    no_args_is_help=True,
)
client_app.add_typer(push_app, name="push")

IdArg = Annotated[int, typer.Argument(help="Endpoint id (see `push list`).", min=1)]


def push_key(prof: Profile, create: bool) -> bytes:
    """This device's X25519 private key for push payloads (32 bytes), made on first use."""
    from nacl.public import PrivateKey

    from node.client.errors import ProfileError
    from node.client.profile import write_private

    path = prof.path / PUSH_KEY
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        if not create:
            raise ProfileError(
                f"{path}: no push key in this profile; run `fedgram client push register URL`"
            ) from None
        prof.ensure()
        key = bytes(PrivateKey.generate())
        write_private(path, key)
        return key
    if len(key) != 32:
        raise ProfileError(f"{path}: damaged push key (not 32 bytes); remove it and register again")
    return key


def _with_client(profile: Path | None, fn: Callable[[Client, Profile], Awaitable[T]]) -> T:
    prof = _profile(profile)
    from node.client.signed_in import connect_signed_in

    async def go() -> T:
        async with connect_signed_in(prof) as c:
            return await fn(c, prof)

    return run_async(go)


def _jsonable(e: dict[str, Any]) -> dict[str, Any]:
    return {**e, "key": base64.b64encode(e["key"]).decode()} if "key" in e else e


@push_app.command()
def register(
    url: Annotated[str, typer.Argument(help="UnifiedPush endpoint or webhook (http/https).")],
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Register URL for this device's notifications (makes its push key on first use)."""
    from nacl.public import PrivateKey

    async def go(c: Client, prof: Profile) -> dict[str, Any]:
        key = bytes(PrivateKey(push_key(prof, create=True)).public_key)
        r: dict[str, Any] = await c.call("account.registerPush", {"url": url, "key": key})
        return r

    e = _with_client(profile, go)
    if json:
        print_json(_jsonable(e))
    else:
        typer.echo(
            f"registered push endpoint #{e['id']} for this device (device #{e['device_id']})"
        )


@push_app.command("list")
def list_cmd(profile: ProfileOpt = None, json: JsonOpt = False) -> None:
    """List this account's push endpoints and whether notifications carry previews."""

    async def go(c: Client, prof: Profile) -> dict[str, Any]:
        r: dict[str, Any] = await c.call("account.listPush")
        return r

    r = _with_client(profile, go)
    if json:
        print_json({**r, "endpoints": [_jsonable(e) for e in r["endpoints"]]})
        return
    eps = r["endpoints"]
    previews = "with" if r["previews"] else "without"
    if not eps:
        typer.echo(f"no push endpoints; notifications would come {previews} previews")
        return
    typer.echo(f"{len(eps)} push endpoint(s); notifications come {previews} previews:")
    for e in eps:
        mine = "  (this device)" if e["this_device"] else ""
        typer.echo(f"  #{e['id']}  device #{e['device_id']}  {e['url']}{mine}")


@push_app.command()
def test(endpoint: IdArg, profile: ProfileOpt = None, json: JsonOpt = False) -> None:
    """Send a test notification to an endpoint now and say what came of it."""

    async def go(c: Client, prof: Profile) -> dict[str, Any]:
        r: dict[str, Any] = await c.call("account.testPush", {"id": endpoint})
        return r

    r = _with_client(profile, go)
    if json:
        print_json(r)
    elif r["result"] == "sent":
        typer.echo(f"test notification sent to endpoint #{endpoint} (HTTP {r['status']})")
    elif r["result"] == "unregistered":
        typer.echo(
            f"endpoint #{endpoint} answered HTTP {r['status']}: it no longer exists there, "
            "so it was unregistered"
        )
    else:
        typer.echo(f"test notification to endpoint #{endpoint} failed: {r['error']}")


@push_app.command()
def remove(endpoint: IdArg, profile: ProfileOpt = None, json: JsonOpt = False) -> None:
    """Unregister a push endpoint (of any of this account's devices)."""

    async def go(c: Client, prof: Profile) -> dict[str, Any]:
        r: dict[str, Any] = await c.call("account.unregisterPush", {"id": endpoint})
        return r

    r = _with_client(profile, go)
    print_json(r) if json else typer.echo(f"removed push endpoint #{r['removed']}")


@push_app.command()
def previews(
    state: Annotated[str, typer.Argument(help="on or off.", metavar="on|off")],
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Whether notifications carry the first characters of the message."""
    if state not in ("on", "off"):
        raise typer.BadParameter("say on or off", param_hint="STATE")

    async def go(c: Client, prof: Profile) -> dict[str, Any]:
        r: dict[str, Any] = await c.call("account.setPushSettings", {"previews": state == "on"})
        return r

    r = _with_client(profile, go)
    if json:
        print_json(r)
    else:
        typer.echo(f"notifications now come {'with' if r['previews'] else 'without'} previews")


def describe(fields: dict[str, Any]) -> str:
    """A notification as a sentence."""
    n = int(fields.get("count", 1))
    when = time.strftime("%H:%M", time.localtime(float(fields.get("ts", 0))))
    if fields["kind"] == "test":
        return f"test notification from the node ({when})"
    if fields["kind"] == "secret":
        return f"{n} new secret message{'s' if n != 1 else ''} ({when})"
    where = fields.get("chat_title") or fields.get("chat", "?")
    who = f" from {fields['from']}" if fields.get("from") else ""
    text = f": {fields['preview']}" if fields.get("preview") else ""
    return f"{n} new message{'s' if n != 1 else ''} in {where}{who} ({when}){text}"


@push_app.command("open")
def open_cmd(
    file: Annotated[
        Path | None, typer.Argument(help="The POST body; stdin when omitted or '-'.")
    ] = None,
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Open a notification's body with this profile's push key (for a webhook script)."""
    from node.push.payload import PayloadError, open_sealed

    prof = _profile(profile)
    key = push_key(prof, create=False)
    body = sys.stdin.buffer.read() if file is None or str(file) == "-" else file.read_bytes()
    try:
        fields = open_sealed(body, key)
    except PayloadError as e:
        fail(str(e), LOCAL, "PUSH_PAYLOAD_INVALID")
    print_json(fields) if json else typer.echo(describe(fields))
