"""`fedgram client ...`: a small client on the SDK, keeping its state in a profile folder
(device key 0600, pinned node keys, the saved session)."""

from __future__ import annotations

import getpass
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import trio
import typer

from node.protocol.errors import ErrorCode, RpcError

from .admin_cmds import print_devices
from .common import LOCAL, JsonOpt, fail, print_json, run_async

# the SDK (node.client: WebSocket stack, keys) is imported by the commands that use it, not
# by every command at start-up
if TYPE_CHECKING:
    from node.client import Profile

client_app = typer.Typer(help="A small Fedgram client.", no_args_is_help=True)

ProfileOpt = Annotated[
    Path | None,
    typer.Option(
        "--profile",
        envvar="FEDGRAM_PROFILE",
        show_envvar=True,
        help="Client profile folder (device key, pinned node keys, session); also accepted "
        "once before the command: `fedgram client --profile DIR send ...`.",
    ),
]
# `fedgram client --profile DIR COMMAND ...`: the profile for whichever command follows
_group_profile: Path | None = None


@client_app.callback()
def _client_group(
    profile: Annotated[
        Path | None,
        typer.Option(
            "--profile",
            help="Client profile folder for the command that follows (default: "
            "$FEDGRAM_PROFILE, else ~/.config/fedgram/profile).",
        ),
    ] = None,
) -> None:
    """A small Fedgram client: log in, chat, send files, secret chats."""
    global _group_profile
    _group_profile = profile


UrlArg = Annotated[str, typer.Argument(help="Node URL, e.g. ws://127.0.0.1:7443")]
NameArg = Annotated[str, typer.Argument(help="Your user name on that node.")]
DeviceNameOpt = Annotated[
    str | None, typer.Option("--device-name", help="Name of this device (default: hostname).")
]
PinOpt = Annotated[
    str | None,
    typer.Option("--pin", help="Require this node fingerprint (else trust on first use)."),
]


def _profile(path: Path | None) -> Profile:
    """The command's own --profile (or $FEDGRAM_PROFILE, which typer fills in), else the one
    given to the group (`fedgram client --profile DIR ...`), else the default folder. The
    group's is checked before the environment's: an explicit flag beats the environment."""
    from node.client import Profile, default_profile_dir

    if _group_profile is not None and (path is None or _from_env(path)):
        path = _group_profile
    return Profile(path.expanduser().absolute() if path else default_profile_dir())


def _from_env(path: Path) -> bool:
    env = os.environ.get("FEDGRAM_PROFILE")
    return env is not None and Path(env) == path


async def _ask(prompt: str, secret: bool = False) -> str:
    # in a thread, so the session keeps answering pings while a person types
    fn = getpass.getpass if secret else input
    try:
        return str(await trio.to_thread.run_sync(fn, prompt, abandon_on_cancel=True)).strip()
    except EOFError:
        what = "--password" if secret else "--code"
        fail(
            f"no input to read the {prompt.rstrip(': ')} from; pass it with {what}", LOCAL, "USAGE"
        )


def _save(prof: Profile, url: str, auth: dict[str, Any], tls_ca: str | None = None) -> None:
    prof.clear_session()  # a new device starts afresh: no sync state of another account
    prof.save_session({"url": url, **auth, **({"tls_ca": tls_ca} if tls_ca else {})})


def _print_auth(auth: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(auth)
    else:
        typer.echo(f"logged in as {auth['address']} (device #{auth['device_id']})")


@client_app.command()
def login(
    url: UrlArg,
    name: NameArg,
    code: Annotated[str | None, typer.Option(help="Login code (prompted for if absent).")] = None,
    password: Annotated[str | None, typer.Option(help="Account password, if it has one.")] = None,
    device_name: DeviceNameOpt = None,
    pin: PinOpt = None,
    profile: ProfileOpt = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option(
            "--tls-ca",
            help="PEM certificate (or CA) to trust for a wss:// node with a self-signed "
            "certificate; kept in the profile for later commands.",
        ),
    ] = None,
    json: JsonOpt = False,
) -> None:
    """Sign in with a login code; binds a new device key kept in the profile."""
    prof = _profile(profile)
    ca = str(tls_ca.expanduser().absolute()) if tls_ca else None

    from node.client import Client

    async def go() -> dict[str, Any]:
        async with Client.connect(url, pin=pin, profile=prof, tls_ca=ca) as c:
            the_code = code
            if the_code is None:
                sent = await c.request_code(name)
                typer.echo(
                    f"if {name} has an account on this node, a {sent['length']}-digit code was "
                    f"sent via {sent['via']} (a mistyped name looks like a wrong code)",
                    err=True,
                )
                the_code = await _ask("code: ")
            key = prof.new_device_key()
            dev = device_name or socket.gethostname()[:64] or "device"
            try:
                auth = await c.sign_in(name, the_code, key, dev, password)
            except RpcError as e:
                if e.code != ErrorCode.PASSWORD_REQUIRED:
                    raise
                auth = await c.sign_in(
                    name, the_code, key, dev, await _ask("password: ", secret=True)
                )
            _save(prof, url, auth, ca)
            return auth

    _print_auth(run_async(go), json)


@client_app.command()
def signup(
    url: UrlArg,
    name: NameArg,
    invite: Annotated[str | None, typer.Option(help="Invite token (policy `invite`).")] = None,
    display_name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    device_name: DeviceNameOpt = None,
    pin: PinOpt = None,
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Create an account on a node that allows sign-up (open, or invite with a token)."""
    prof = _profile(profile)

    from node.client import Client

    async def go() -> dict[str, Any]:
        async with Client.connect(url, pin=pin, profile=prof) as c:
            dev = device_name or socket.gethostname()[:64] or "device"
            auth = await c.sign_up(name, prof.new_device_key(), dev, display_name, invite)
            _save(prof, url, auth)
            return auth

    _print_auth(run_async(go), json)


@client_app.command()
def whoami(profile: ProfileOpt = None, json: JsonOpt = False) -> None:
    """Show the signed-in account."""
    prof = _profile(profile)

    from node.client.signed_in import connect_signed_in

    async def go() -> dict[str, Any]:
        async with connect_signed_in(prof) as c:
            me: dict[str, Any] = await c.call("account.getProfile")
            return me

    me = run_async(go)
    if json:
        print_json(me)
        return
    typer.echo(f"{me['address']}  {me['display_name']}".rstrip())
    typer.echo(f"password: {'set' if me['has_password'] else 'none'}")


@client_app.command()
def devices(profile: ProfileOpt = None, json: JsonOpt = False) -> None:
    """List this account's devices."""
    prof = _profile(profile)

    from node.client.signed_in import connect_signed_in

    async def go() -> list[dict[str, Any]]:
        async with connect_signed_in(prof) as c:
            r: dict[str, Any] = await c.call("account.devices")
            return list(r["devices"])

    print_devices(run_async(go), json)


@client_app.command()
def revoke(
    device_id: Annotated[
        int | None, typer.Argument(help="Device id (see `client devices`).")
    ] = None,
    others: Annotated[bool, typer.Option("--others", help="Revoke all other devices.")] = False,
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Log out another device of this account (or --others: all but this one)."""
    if (device_id is None) == (not others):
        raise typer.BadParameter("give a DEVICE_ID or --others")
    prof = _profile(profile)

    from node.client.signed_in import connect_signed_in

    async def go() -> int:
        async with connect_signed_in(prof) as c:
            if others:
                r = await c.call("account.revokeOtherDevices")
            else:
                r = await c.call("account.revokeDevice", {"device_id": device_id})
            return int(r["revoked"])

    n = run_async(go)
    print_json({"revoked": n}) if json else typer.echo(f"revoked {n} device(s)")


@client_app.command()
def logout(profile: ProfileOpt = None, json: JsonOpt = False) -> None:
    """Log this device out (the node forgets it) and clear the profile's session."""
    prof = _profile(profile)

    from node.client.signed_in import connect_signed_in

    async def go() -> bool:
        try:
            async with connect_signed_in(prof) as c:
                await c.call("auth.logOut")
        except RpcError as e:
            if e.code not in (ErrorCode.DEVICE_REVOKED, ErrorCode.DEVICE_UNKNOWN):
                raise
            return False  # the node has forgotten this device already
        return True

    told = run_async(go)
    prof.clear_session()
    if json:
        print_json({"logged_out": True, "node_told": told})
    else:
        typer.echo("logged out" if told else "this device was already logged out; session cleared")


@client_app.command("forget-node")
def forget_node(
    url: UrlArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Forget the node key pinned for URL, to accept a node that was really re-keyed.

    Do this only when you know why the key changed (ask the node's operator; `fedgram
    status` on the node prints its id): a man in the middle presents a new key too. The
    next connection pins whatever key the node presents then (or pass --pin to login)."""
    from node.client import node_address

    address = node_address(url)
    prof = _profile(profile)
    old = prof.pinned(address)
    if old is None:
        if json:
            print_json({"address": address, "forgotten": None})
        else:
            typer.echo(f"no node key is pinned for {address} in {prof.path}")
        return
    if not yes:
        if not sys.stdin.isatty():
            fail(
                f"forget-node {url}: not asking on a non-interactive input; pass --yes",
                LOCAL,
                "USAGE",
            )
        typer.confirm(
            f"forget the key {old} pinned for {address}? The next connection will trust the "
            "key the node presents then",
            abort=True,
        )
    prof.forget(address)
    if json:
        print_json({"address": address, "forgotten": old})
        return
    typer.echo(
        f"forgot the key of {address}; the next `fedgram client login {url} NAME` pins the "
        "key the node presents (check it: --pin FINGERPRINT)"
    )
