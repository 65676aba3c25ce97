"""Admin commands: act on the running node over its admin socket, or, when it is stopped,
on the database directly through the very same handlers (Node.offline)."""

from __future__ import annotations

import re
import sys
import time
from typing import Annotated, Any

import typer

from node import config
from node.client.admin import AdminClient
from node.config import ConfigError
from node.interfaces import CallContext
from node.lock import node_running

from .common import LOCAL, DataOpt, JsonOpt, fail, print_json, run_async

user_app = typer.Typer(help="Manage users (admin).", no_args_is_help=True)
invite_app = typer.Typer(help="Invite tokens for sign-up (admin).", no_args_is_help=True)
session_app = typer.Typer(help="Live sessions on the running node (admin).", no_args_is_help=True)
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]

NameArg = Annotated[str, typer.Argument(help="User name (3-32 of a-z, 0-9, _).")]


def admin_call(data: Any, method: str, params: dict[str, Any] | None = None) -> Any:
    data_dir = config.resolve_data_dir(data)

    async def go() -> Any:
        if node_running(data_dir):
            async with AdminClient.connect(data_dir) as admin:
                return await admin.call(method, params or {})
        cfg = config.load(data_dir)
        from federation import Federation  # lazy: the whole node, only when it is not running
        from node.app import Node

        async with Node.offline(cfg, parts=[Federation()]) as node:
            return await node.router.dispatch(CallContext("admin"), method, params or {})

    return run_async(go)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "never"


def _print_users(users: list[dict[str, Any]]) -> None:
    if not users:
        typer.echo("no users")
    for u in users:
        flags = [f for f, on in (("admin", u["is_admin"]), ("banned", u["banned"])) if on]
        extra = f" [{', '.join(flags)}]" if flags else ""
        who = u.get("address") or u["name"]  # name@node, the node by its local name
        seen = "online" if u.get("online") else f"last seen {_when(u.get('last_seen'))}"
        typer.echo(f"{who:<40} {u['display_name'] or '-':<24} devices={u['devices']} {seen}{extra}")


def print_devices(devices: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print_json(devices)
        return
    if not devices:
        typer.echo("no active devices")
    for d in devices:
        marks = "".join(
            [" (this device)" if d["current"] else "", " online" if d["online"] else ""]
        )
        typer.echo(f"#{d['device_id']:<5} {d['name']:<24} last seen {_when(d['last_seen'])}{marks}")


@user_app.command("add")
def user_add(
    name: NameArg,
    data: DataOpt = None,
    display_name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="Mark as node admin.")] = False,
    json: JsonOpt = False,
) -> None:
    """Create a user."""
    p: dict[str, Any] = {"name": name, "admin": admin}
    if display_name is not None:
        p["display_name"] = display_name
    u = admin_call(data, "admin.userAdd", p)
    print_json(u) if json else typer.echo(f"added {u['name']}")


@user_app.command("list")
def user_list(data: DataOpt = None, json: JsonOpt = False) -> None:
    """List users."""
    users = admin_call(data, "admin.userList")["users"]
    print_json(users) if json else _print_users(users)


@user_app.command("code")
def user_code(name: NameArg, data: DataOpt = None, json: JsonOpt = False) -> None:
    """Issue a fresh login code for NAME and print it (you deliver it to the person)."""
    r = admin_call(data, "admin.userCode", {"name": name})
    if json:
        print_json(r)
        return
    typer.echo(r["code"])  # the code alone on stdout (for `CODE=$(...)`), the advice on stderr
    typer.echo(
        f"login code for {name.lower()}, valid {r['expires_in'] // 60} min: they run "
        f"`fedgram client login {_node_url(data)} {name.lower()} --code {r['code']}`",
        err=True,
    )


def _node_url(data: Any) -> str:
    """The URL people log in at, as this node's config says (``URL`` when it cannot say:
    any free port, or a config that does not load)."""
    try:
        cfg = config.load(config.resolve_data_dir(data))
        public = str(cfg.get("federation", "public_url") or "")
        host, port = cfg.listen
    except (ConfigError, OSError, ValueError):
        return "URL"
    if public:
        return public
    if port == 0:
        return "URL"
    return f"{'wss' if cfg.tls else 'ws'}://{host}:{port}"


@user_app.command("devices")
def user_devices(name: NameArg, data: DataOpt = None, json: JsonOpt = False) -> None:
    """List a user's active devices."""
    print_devices(admin_call(data, "admin.userDevices", {"name": name})["devices"], json)


@user_app.command("logout")
def user_logout(
    name: NameArg,
    data: DataOpt = None,
    device: Annotated[int | None, typer.Option("--device", help="Only this device id.")] = None,
    json: JsonOpt = False,
) -> None:
    """Log out a user's devices (all, or --device ID); their sessions close at once."""
    p: dict[str, Any] = {"name": name}
    if device is not None:
        p["device_id"] = device
    r = admin_call(data, "admin.userLogout", p)
    print_json(r) if json else typer.echo(f"revoked {r['revoked']} device(s) of {name.lower()}")


@user_app.command("ban")
def user_ban(name: NameArg, data: DataOpt = None, json: JsonOpt = False) -> None:
    """Ban a user: sessions closed, sign-in refused."""
    r = admin_call(data, "admin.userBan", {"name": name})
    print_json(r) if json else typer.echo(f"banned {name.lower()}")


@user_app.command("unban")
def user_unban(name: NameArg, data: DataOpt = None, json: JsonOpt = False) -> None:
    """Lift a ban."""
    r = admin_call(data, "admin.userUnban", {"name": name})
    print_json(r) if json else typer.echo(f"unbanned {name.lower()}")


@user_app.command("remove")
def user_remove(name: NameArg, data: DataOpt = None, json: JsonOpt = False) -> None:
    """Delete a user and its devices."""
    r = admin_call(data, "admin.userRemove", {"name": name})
    print_json(r) if json else typer.echo(f"removed {name.lower()}")


def confirm(yes: bool, what: str, question: str) -> None:
    """Ask before an irreversible admin action; a script must say --yes."""
    if yes:
        return
    if not sys.stdin.isatty():
        fail(f"{what}: not asking on a non-interactive input; pass --yes", LOCAL)
    typer.confirm(question, abort=True)


@user_app.command("password-reset")
def user_password_reset(
    name: NameArg,
    data: DataOpt = None,
    logout: Annotated[
        bool,
        typer.Option("--logout", help="Also revoke every device (a taken-over account)."),
    ] = False,
    json: JsonOpt = False,
) -> None:
    """Remove NAME's password (2FA) so they can sign in with a login code alone; pending
    codes are voided. Their devices stay signed in unless --logout."""
    r = admin_call(data, "admin.userPasswordReset", {"name": name, "logout": logout})
    if json:
        print_json(r)
        return
    what = "removed the password of" if r["had_password"] else "no password was set for"
    tail = f"; revoked {r['revoked']} device(s)" if logout else "; their devices stay signed in"
    typer.echo(f"{what} {r['name']}{tail}. Give them a code: `fedgram user code {r['name']}`")


@session_app.command("list")
def session_list(
    data: DataOpt = None,
    user: Annotated[str | None, typer.Option("--user", help="Only this user's sessions.")] = None,
    json: JsonOpt = False,
) -> None:
    """Live sessions: id, role, user, device, address, since."""
    data_dir = config.resolve_data_dir(data)
    if not node_running(data_dir):
        # a stopped node has no sessions; the offline handlers would say so less clearly
        if json:
            print_json([])
            return
        typer.echo(f"no node is running on {data_dir}: there are no live sessions")
        return
    sessions = admin_call(data, "admin.sessionList", {"user": user} if user else {})["sessions"]
    if json:
        print_json(sessions)
        return
    if not sessions:
        typer.echo("no live sessions" + (f" of {user}" if user else ""))
    for x in sessions:
        if x["role"] == "node":
            who = f"node {x['node'] or '?'}"
        elif x["user"] is None:
            who = "(not signed in)"
        else:
            who = f"{x['user']} device #{x['device_id']} {x['device_name'] or ''}".rstrip()
        since = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(x["since"])) if x["since"] else "?"
        )
        typer.echo(
            f"#{x['session_id']:<6} {x['role']:<6} {who:<36} {x['remote']:<22} since {since}"
        )


_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> int:
    m = _DURATION.fullmatch(text.strip())
    if not m:
        fail(f"--expires {text!r}: use a number and a unit, e.g. 30m, 12h, 7d", 2, "USAGE")
    return int(m.group(1)) * _UNITS[m.group(2)]


@invite_app.command("create")
def invite_create(
    data: DataOpt = None,
    uses: Annotated[int, typer.Option(min=1, help="How many sign-ups it allows.")] = 1,
    expires: Annotated[str | None, typer.Option(help="Lifetime, e.g. 7d, 12h.")] = None,
    json: JsonOpt = False,
) -> None:
    """Create an invite token (registration policy `invite`)."""
    p: dict[str, Any] = {"uses": uses}
    if expires is not None:
        p["expires_in"] = parse_duration(expires)
    r = admin_call(data, "admin.inviteCreate", p)
    if json:
        print_json(r)
    else:
        typer.echo(r["token"])
        typer.echo(f"uses: {r['uses']}, expires: {_when(r['expires'])}", err=True)
