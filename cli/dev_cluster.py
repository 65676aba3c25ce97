"""`fedgram dev cluster`: N real nodes on this machine, peered, each with a demo user.

The process management is federation/cluster.py (the multi-node tests use the same code);
this is the part a person sees: what to paste to log in, and Ctrl-C to stop everything.
"""

from __future__ import annotations

import shlex
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import platformdirs
import trio
import typer

from .common import JsonOpt, fail, print_json, run_async

NodesOpt = Annotated[int, typer.Option("--nodes", "-n", min=1, max=50, help="How many nodes.")]
BasePortOpt = Annotated[
    int,
    typer.Option(
        "--base-port",
        min=0,
        max=65000,
        help="Node K listens on 127.0.0.1:BASE+K (n1 on 7601); 0: free ports.",
    ),
]
ClusterDataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        "-d",
        help="Folder for the nodes' data folders n1..nN and the login profiles "
        "(default: the platform's user data dir, fedgram-cluster). Reused if it exists.",
    ),
]
LogLevelOpt = Annotated[str, typer.Option("--log-level", help="The nodes' log level.")]


def default_cluster_dir() -> Path:
    """Next to (not inside) the default node's data folder, so a dev cluster never mixes
    with a real node's data: ~/.local/share/fedgram-cluster on Linux."""
    return Path(platformdirs.user_data_dir("fedgram-cluster", appauthor=False))


def _login_command(url: str, user: str, code: str, node_id: str, profile: Path) -> str:
    words = ["fedgram", "client", "login", url, user, "--code", code, "--pin", node_id]
    return shlex.join([*words, "--profile", str(profile)])


async def _describe(cluster: Any, profiles: Path) -> list[dict[str, Any]]:
    from federation.cluster import demo_user

    out = []
    for node in cluster.nodes:
        user = demo_user(node.index)
        issued = await cluster.add_user_code(node.index, user)
        code = str(issued["code"])
        profile = profiles / user
        out.append(
            {
                "name": node.name,
                "url": node.url,
                "node_id": node.node_id,
                "data": str(node.data),
                "log": str(node.log_path),
                "pid": node.process.pid if node.process else None,
                "user": user,
                "address": f"{user}@{node.name}",
                "code": code,
                "expires_in": issued["expires_in"],
                "profile": str(profile),
                "login": _login_command(node.url, user, code, node.node_id, profile),
            }
        )
    return out


def _print_human(data_dir: Path, nodes: list[dict[str, Any]]) -> None:
    typer.echo(f"{len(nodes)} nodes running in {data_dir}, each peered with every other\n")
    for x in nodes:
        typer.echo(f"{x['name']}  {x['url']}  node id {x['node_id']}  (log: {x['log']})")
        typer.echo(f"    user {x['address']}, login code {x['code']}:")
        typer.echo(f"    {x['login']}")
    first = nodes[0]
    minutes = max(1, int(first["expires_in"]) // 60)
    typer.echo(
        f"\nCodes expire in {minutes} min; a new one: "
        f"fedgram user code {first['user']} --data {shlex.quote(first['data'])}"
    )
    typer.echo("Admin commands take --data of a node, e.g. fedgram peer list --data ...")
    typer.echo("Ctrl-C stops all nodes.")


async def _watch(node: Any) -> None:
    """Say when a node ends by itself (crashed, killed): the others keep running."""
    code = await node.wait()
    await trio.sleep(0.5)  # a Ctrl-C at the terminal reaches the nodes too: not news
    typer.echo(f"{node.name} exited with code {code} (log: {node.log_path})", err=True)


async def _until_signal(signals: Any, scope: trio.CancelScope) -> None:
    async for _ in signals:
        scope.cancel()
        return


def cluster(
    nodes: NodesOpt = 3,
    base_port: BasePortOpt = 7600,
    data: ClusterDataOpt = None,
    log_level: LogLevelOpt = "info",
    json: JsonOpt = False,
) -> None:
    """Run N nodes on this machine, peered, with a demo user each; Ctrl-C stops them.

    Data folders n1..nN (config, key, database, node.log) are made in DATA, or reused as
    they are; each node is a real `fedgram run` process. Prints each node's URL, id and a
    `fedgram client login` command with a fresh code, then waits."""
    from federation.cluster import Cluster, ClusterError

    data_dir = (data or default_cluster_dir()).expanduser().absolute()
    failure: list[str] = []

    async def go() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            c = Cluster(data_dir, nodes, base_port, log_level=log_level)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_until_signal, signals, nursery.cancel_scope)
                try:
                    await c.start()
                    info = await _describe(c, data_dir / "profiles")
                    if json:
                        print_json({"data": str(data_dir), "nodes": info})
                    else:
                        _print_human(data_dir, info)
                    sys.stdout.flush()  # a program reading us through a pipe sees it now
                    for node in c.nodes:
                        nursery.start_soon(_watch, node)
                    await trio.sleep_forever()
                except ClusterError as e:
                    failure.append(str(e))
                    nursery.cancel_scope.cancel()
                finally:
                    with trio.CancelScope(shield=True):
                        await c.stop()
        typer.echo("stopped all nodes", err=True)

    run_async(go)
    if failure:
        fail(failure[0])
