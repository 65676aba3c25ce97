"""`fedgram client profile` and `fedgram client password`: one's own account from the
command line (account.getProfile/updateProfile, account.setPassword).

Passwords are never echoed: when not given with ``--password``/``--new-password`` (for
scripts) they are asked for without echo, and a new one is asked twice, so a typo does not
lock the account's owner out of their next sign-in.
"""

from __future__ import annotations

import getpass
from typing import Annotated, Any

import typer

from .client_cmds import ProfileOpt, _profile, client_app
from .common import LOCAL, JsonOpt, fail, print_json, run_async

profile_app = typer.Typer(
    help="Your profile: show it, or `profile set` your display name and about line.",
    invoke_without_command=True,
)
password_app = typer.Typer(
    help="Your account password, the second factor asked at sign-in.", no_args_is_help=True
)
client_app.add_typer(profile_app, name="profile")
client_app.add_typer(password_app, name="password")

CurrentOpt = Annotated[
    str | None,
    typer.Option("--password", help="The current password (asked without echo if absent)."),
]
NewOpt = Annotated[
    str | None,
    typer.Option("--new-password", help="The new password (asked twice without echo if absent)."),
]


def _account_call(
    profile: Any, method: str, params: dict[str, Any], needs_password: bool = False
) -> dict[str, Any]:
    """One account call; ``needs_password``: refuse locally first when the account has no
    password (the node would accept removing a password that is not there)."""
    prof = _profile(profile)
    from node.client.signed_in import connect_signed_in

    async def go() -> dict[str, Any]:
        async with connect_signed_in(prof) as c:
            if needs_password and not (await c.call("account.getProfile"))["has_password"]:
                fail(
                    "this account has no password; set one with `fedgram client password set`",
                    LOCAL,
                    "PASSWORD_NOT_SET",
                )
            r: dict[str, Any] = await c.call(method, params)
            return r

    return run_async(go)


def _show(me: dict[str, Any]) -> None:
    typer.echo(f"{me['address']}  {me['display_name'] or '(no display name)'}")
    typer.echo(f"about: {me['about'] or '(empty)'}")
    typer.echo(f"password: {'set' if me['has_password'] else 'none'}")


@profile_app.callback()
def profile_show(ctx: typer.Context, profile: ProfileOpt = None, json: JsonOpt = False) -> None:
    """Show your profile: address, display name, about line, whether a password is set."""
    if ctx.invoked_subcommand is not None:
        return
    me = _account_call(profile, "account.getProfile", {})
    if json:
        print_json(me)
    else:
        _show(me)


@profile_app.command("set")
def profile_set(
    display_name: Annotated[
        str | None, typer.Option("--display-name", help="The name others see (64 at most).")
    ] = None,
    about: Annotated[
        str | None, typer.Option("--about", help="A line about yourself (256 at most).")
    ] = None,
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Change your display name and/or about line (what you do not give stays)."""
    params = {k: v for k, v in (("display_name", display_name), ("about", about)) if v is not None}
    if not params:
        raise typer.BadParameter("give --display-name and/or --about")
    me = _account_call(profile, "account.updateProfile", params)
    if json:
        print_json(me)
        return
    changed = " and ".join(
        f"{'display name' if k == 'display_name' else 'about line'} to {v!r}"
        for k, v in params.items()
    )
    typer.echo(f"set your {changed}")


def _ask(prompt: str) -> str:
    try:
        return getpass.getpass(prompt)
    except EOFError:
        fail(f"no terminal to ask for the {prompt.rstrip(': ')}; pass it as an option", LOCAL)


def _current(given: str | None) -> str:
    return given if given is not None else _ask("current password: ")


def _new(given: str | None) -> str:
    if given is not None:
        return given
    first = _ask("new password: ")
    if first != _ask("new password again: "):
        fail("the two new passwords differ; nothing was changed", LOCAL, "USAGE")
    if not first:
        fail("an empty password is no password; nothing was changed", LOCAL, "USAGE")
    return first


def _password_done(me: dict[str, Any], json: bool, sentence: str) -> None:
    if json:
        print_json(me)
    else:
        typer.echo(sentence)


@password_app.command("set")
def password_set(
    new_password: NewOpt = None, profile: ProfileOpt = None, json: JsonOpt = False
) -> None:
    """Set a password on an account that has none (else: `password change`)."""
    me = _account_call(profile, "account.setPassword", {"new": _new(new_password)})
    _password_done(me, json, "password set: signing in on a new device now asks for it")


@password_app.command("change")
def password_change(
    password: CurrentOpt = None,
    new_password: NewOpt = None,
    profile: ProfileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Change the password (the current one is needed)."""
    params = {"current": _current(password), "new": _new(new_password)}
    me = _account_call(profile, "account.setPassword", params, needs_password=True)
    _password_done(me, json, "password changed")


@password_app.command("remove")
def password_remove(
    password: CurrentOpt = None, profile: ProfileOpt = None, json: JsonOpt = False
) -> None:
    """Remove the password (the current one is needed): sign-in asks for a code only."""
    params = {"current": _current(password)}
    me = _account_call(profile, "account.setPassword", params, needs_password=True)
    _password_done(me, json, "password removed: signing in asks for a login code only")
