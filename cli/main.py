"""The ``fedgram`` command: node lifecycle, admin commands, development tools."""

from __future__ import annotations

import json as jsonlib
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import trio
import typer

from node import __version__, config, log
from node.client.admin import AdminClient
from node.config import ConfigError
from node.lock import node_running

from . import (  # noqa: F401
    account_cmds,
    chat_client_cmds,
    client_listen,
    client_media_cmds,
    helpfmt,
    secret_cmds,
)
from .admin_cmds import invite_app, session_app, user_app
from .backup_cmds import backup_app
from .chat_admin_cmds import chat_app
from .check_cmd import check as check_cmd
from .client_cmds import client_app
from .common import (
    NO_NODE,
    DataOpt,
    JsonOpt,
    fail,
    json_errors_from,
    print_json,
    report_errors,
    run_async,
)
from .dev_cluster import cluster as dev_cluster
from .media_cmds import media_app
from .peer_cmds import peer_app, user_lookup
from .push_cmds import push_app  # noqa: F401  (importing it adds `fedgram client push`)

app = typer.Typer(
    name="fedgram",
    help="Fedgram: a Telegram-like messenger node that anyone can run, and that federates.",
    no_args_is_help=False,
    add_completion=True,
    pretty_exceptions_enable=False,
)
dev_app = typer.Typer(help="Development tools.", no_args_is_help=True)
helpfmt.install()
app.add_typer(dev_app, name="dev")
dev_app.command("cluster")(dev_cluster)
app.add_typer(user_app, name="user")
app.add_typer(invite_app, name="invite")
app.add_typer(client_app, name="client")
app.add_typer(chat_app, name="chat")
app.add_typer(media_app, name="media")
app.add_typer(peer_app, name="peer")
app.add_typer(backup_app, name="backup")
app.command("check")(check_cmd)
app.add_typer(session_app, name="session")
user_app.command("lookup")(user_lookup)

ListenOpt = Annotated[
    str | None, typer.Option("--listen", help="host:port for the gateway (port 0: any free).")
]
LogOpt = Annotated[str | None, typer.Option("--log-level", help="debug|info|warning|error")]


def _overrides(name: str | None, listen: str | None, log_level: str | None) -> dict[str, Any]:
    node: dict[str, Any] = {}
    if name is not None:
        node["name"] = name
    if listen is not None:
        node["listen"] = listen
    if log_level is not None:
        node["log_level"] = log_level
    return {"node": node} if node else {}


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


def _base_config(value: str) -> tuple[dict[str, Any], str]:
    """``--config``: a file if VALUE names one, else a config bundled with Fedgram (package
    data, found the same from a checkout or an installed wheel)."""
    path = Path(value).expanduser()
    if path.is_file():
        return config.read_raw(path), str(path)
    import tomllib

    import configs

    text = configs.read(value)
    if text is None:
        raise ConfigError(
            f"--config {value}: no such file, and no bundled config of that name "
            f"(bundled: {', '.join(configs.names())})"
        )
    source = f"bundled config {value.removesuffix('.toml')}"
    try:
        return tomllib.loads(text), source
    except tomllib.TOMLDecodeError as e:  # a broken file in the package itself
        raise ConfigError(f"{source}: invalid TOML: {e}") from None


@app.command()
def init(
    data: DataOpt = None,
    name: Annotated[str | None, typer.Option(help="Node name (users are name@node).")] = None,
    listen: ListenOpt = None,
    log_level: LogOpt = None,
    config_file: Annotated[
        str | None,
        typer.Option(
            "--config",
            help="Start from a bundled config (community, personal, local-federation/n1; "
            "see --list-configs) or from this TOML file.",
        ),
    ] = None,
    list_configs: Annotated[
        bool, typer.Option("--list-configs", help="List the bundled configs and exit.")
    ] = False,
    json: JsonOpt = False,
) -> None:
    """Create a data folder with a documented config.toml and the node's identity key."""
    if list_configs:
        import configs

        names = list(configs.names())
        print_json(names) if json else typer.echo("\n".join(names))
        return
    data_dir = config.resolve_data_dir(data)
    if (data_dir / config.CONFIG_FILE).exists():
        fail(f"{data_dir / config.CONFIG_FILE}: already exists; edit it instead", 2)
    try:
        base, source = _base_config(config_file) if config_file else ({}, "options")
        config.validate(base, source)
        over = config.merge(base, _overrides(name, listen, log_level))
        cfg = config.init_data_dir(data_dir, over)
        from node.keyfile import load_or_create_key
        from node.protocol.identity import fingerprint

        key = load_or_create_key(cfg.key_path)
    except (ConfigError, ValueError) as e:
        fail(str(e), 2, "CONFIG_INVALID")
    node_id = fingerprint(bytes(key.verify_key))
    listen_at = cfg.values["node"]["listen"]
    if json:
        print_json(
            {"data": str(data_dir), "name": cfg.name, "node_id": node_id, "listen": listen_at}
        )
        return
    typer.echo(f"initialised {data_dir}")
    typer.echo(f"node name: {cfg.name}")
    typer.echo(f"node id:   {node_id}")
    typer.echo(f"listen:    {listen_at}")
    typer.echo("")
    typer.echo("next:")
    url = f"{'wss' if cfg.tls else 'ws'}://{listen_at}"
    steps = _first_steps(data_dir, url, cfg.get("accounts", "registration"))
    start = (f"fedgram run --data {data_dir}", "start the node (Ctrl-C stops it)")
    for line in _aligned([start, *steps]):
        typer.echo(f"  {line}")


def _first_steps(data_dir: Path, url: str, registration: str) -> list[tuple[str, str]]:
    """What a new operator does next, with this node's own folder and URL filled in."""
    d = f" --data {data_dir}"
    if registration == "open":
        steps = [(f"fedgram client signup {url} NAME", "anyone can create an account")]
    else:
        steps = [
            (f"fedgram user add NAME{d}", f"registration is {registration}: add each person"),
            (f"fedgram user code NAME{d}", "a login code to give them"),
            (f"fedgram client login {url} NAME --code CODE", "on their device"),
        ]
    if registration == "invite":
        steps.append((f"fedgram invite create{d}", "or a sign-up token to hand out"))
    return steps


def _aligned(steps: list[tuple[str, str]]) -> list[str]:
    width = max(len(cmd) for cmd, _ in steps)
    return [f"{cmd:<{width}}   # {why}" for cmd, why in steps]


@app.command()
def run(
    data: DataOpt = None,
    listen: ListenOpt = None,
    log_level: LogOpt = None,
    json: Annotated[
        bool, typer.Option("--json", help="Say 'listening' and 'stopped' as JSON lines.")
    ] = False,
) -> None:
    """Run the node in the foreground (first run creates the data folder). Ctrl-C stops it."""
    data_dir = config.resolve_data_dir(data)
    try:
        if not (data_dir / config.CONFIG_FILE).exists():
            config.init_data_dir(data_dir)
        cfg = config.load(data_dir)
        over = _overrides(None, listen, log_level)
        if over:
            cfg = config.Config(
                data_dir, config.validate(config.merge(cfg.values, over), "command line")
            )
        _setup_log(cfg)
    except ConfigError as e:
        fail(str(e), 2, "CONFIG_INVALID")
    from federation import Federation  # lazy, like the node: only `run` needs them
    from node.app import Node

    async def serve() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async with Node.start(cfg, parts=[Federation()]) as node:
                _say_listening(node.url, node.node_id, cfg, json)
                async for signum in signals:
                    if signum != signal.SIGHUP:
                        break
                    await _reload(node, data_dir, over)
        typer.echo(jsonlib.dumps({"event": "stopped"}) if json else "stopped")

    run_async(serve)


def _say_listening(url: str, node_id: str, cfg: config.Config, json: bool) -> None:
    """The first lines of `run`: where the node is, and, for a new operator, what next."""
    if json:
        info = {"event": "listening", "url": url, "node_id": node_id, "name": cfg.name}
        info |= {"version": __version__, "data": str(cfg.data_dir)}
        typer.echo(jsonlib.dumps(info))
        return
    typer.echo(f"fedgram {__version__} node '{cfg.name}' listening on {url}")
    typer.echo(f"node id: {node_id}")
    typer.echo(f"data:    {cfg.data_dir}")
    typer.echo("in another terminal:")
    for line in _aligned(_first_steps(cfg.data_dir, url, cfg.get("accounts", "registration"))):
        typer.echo(f"  {line}")
    sys.stdout.flush()


def _setup_log(cfg: config.Config) -> None:
    """Logging as ``[node] log_level``/``log_format``/``log_file`` say (a file that cannot
    be opened is a ConfigError naming it)."""
    file = cfg.path("node", "log_file")
    try:
        log.setup(cfg.get("node", "log_level"), cfg.get("node", "log_format"), file)
    except OSError as e:
        raise ConfigError(f"[node] log_file = {file}: cannot open ({e.strerror})") from None


async def _reload(node: Any, data_dir: Path, over: dict[str, Any]) -> None:
    """SIGHUP: re-read config.toml (the command line's --listen/--log-level still win),
    validate it, and apply what can change live; a bad file is logged and the running
    configuration kept. Logging is set up again, which also reopens ``log_file`` (so
    logrotate can move it away and send SIGHUP)."""
    _rlog = log.get("node")

    def load() -> config.Config:
        cfg = config.load(data_dir)
        if over:
            cfg = config.Config(
                data_dir, config.validate(config.merge(cfg.values, over), "command line")
            )
        return cfg

    try:
        new = await trio.to_thread.run_sync(load)
        _setup_log(new)
    except ConfigError as e:
        log.event(_rlog, "config.reload_failed", logging.ERROR, error=str(e), kept="old config")
        return
    node.reload(new)


@app.command()
def status(data: DataOpt = None, json: JsonOpt = False) -> None:
    """Ask the running node for its status over the admin socket."""
    data_dir = config.resolve_data_dir(data)
    if not node_running(data_dir):
        fail(
            f"no node is running on {data_dir}: start it with `fedgram run --data {data_dir}`",
            NO_NODE,
        )

    async def ask() -> Any:
        async with AdminClient.connect(data_dir) as admin:
            return await admin.call("admin.status")

    st = run_async(ask)
    if json:
        print_json(st)
        return
    typer.echo(f"node:     {st['name']} ({st['node_id']})")
    typer.echo(f"version:  {st['version']}")
    typer.echo(f"url:      {st['url']}")
    typer.echo(f"uptime:   {st['uptime']:.0f} s")
    typer.echo(f"sessions: {st['sessions']}")
    typer.echo(f"database: {st['db_bytes'] / 1048576:.2f} MiB")
    typer.echo(f"data:     {st['data_dir']}  (pid {st['pid']})")
    if "push" in st:
        pu = st["push"]
        typer.echo(
            f"push:     {pu['endpoints']} endpoints, {pu['queued']} queued, {pu['sent']} sent, "
            f"{pu['failed']} failed, {pu['dropped']} dropped, {pu['unregistered']} unregistered"
        )


@dev_app.command("api-docs")
def api_docs(
    out: Annotated[Path, typer.Option(help="Where to write the reference.")] = Path("docs/api.md"),
    check: Annotated[bool, typer.Option("--check", help="Only check that OUT is current.")] = False,
    json: JsonOpt = False,
) -> None:
    """Render the API reference from the schema (docs/api.md)."""
    from node.protocol.apidoc import render

    text = render()
    if check:
        current = out.read_text() if out.exists() else ""
        if current != text:
            fail(f"{out} is out of date; run `fedgram dev api-docs`", 1)
        print_json({"path": str(out), "current": True}) if json else typer.echo(f"{out} is current")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print_json({"path": str(out), "written": True}) if json else typer.echo(f"wrote {out}")


def main() -> None:
    json_errors_from(sys.argv[1:])
    with report_errors():
        # not standalone: usage errors reach report_errors (JSON with --json); Exit returns
        try:
            rc = app(prog_name="fedgram", standalone_mode=False)
        except typer.Abort:
            typer.echo("aborted", err=True)
            rc = 130
    sys.exit(rc if isinstance(rc, int) else 0)
