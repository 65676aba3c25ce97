"""`fedgram peer ...` (which nodes this node federates with) and `fedgram user lookup`.

Like the other admin commands they go through :func:`cli.admin_cmds.admin_call`: over the
running node's admin socket, else on the stopped node's database with the same handlers.
A peer is named by its node id, a unique prefix of it (6+ characters) or its petname; the
node resolves the reference (admin.peer*), so every command accepts the same forms.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from .admin_cmds import admin_call
from .common import DataOpt, JsonOpt, print_json

peer_app = typer.Typer(
    help="Peers: the nodes this node federates with (admin).", no_args_is_help=True
)

PeerArg = Annotated[
    str, typer.Argument(help="Peer: node id, a unique prefix of it (6+ chars) or its name.")
]
ID_SHORT = 12  # as the node's own log lines shorten node ids


def _ago(ts: float | None, now: float) -> str:
    """How long ago, in the largest unit that is at least 1: a table is read at a glance."""
    if not ts:
        return "never"
    secs = max(0, int(now - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit} ago"
    return "now" if secs < 2 else f"{secs}s ago"


def _size(n: int) -> str:
    """Bytes in the largest unit that keeps a short number (a column read at a glance)."""
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


_COLUMNS = (
    "NAME",
    "ID",
    "URL",
    "STATE",
    "LINK",
    "SINCE",
    "LAST SEEN",
    "CHATS",
    "BEHIND",
    "OUTBOX",
    "SECRET",
    "ERROR",
)


def _row(p: dict[str, Any], now: float) -> list[str]:
    return [
        p["name"],
        p["node_id"][:ID_SHORT],
        p["url"] or "-",  # null: it dials us, we do not dial it
        p["state"],
        p["link"],
        _ago(p.get("since"), now).removesuffix(" ago") if p.get("since") else "-",
        "now" if p["link"] == "up" else _ago(p["last_seen"], now),  # it is being seen
        str(p["replicated_chats"]),
        str(p["lag"]),
        str(p["outbox"]),
        f"{_size(p.get('secret_relayed_for', 0))}/{_size(p.get('secret_relayed_by', 0))}",
        p["last_error"] or "-",
    ]


def print_peers(peers: list[dict[str, Any]]) -> None:
    """An aligned table, the error last so a long one does not push the rest apart."""
    if not peers:
        typer.echo("no peers (add one with `fedgram peer add ws://HOST:PORT`)")
        return
    now = time.time()
    rows = [list(_COLUMNS)] + [_row(p, now) for p in peers]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS) - 1)]
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r, widths, strict=False)]
        typer.echo("  ".join([*cells, r[-1]]).rstrip())


def _said(verb: str, p: dict[str, Any]) -> str:
    return f"{verb} {p['name']} ({p['node_id'][:ID_SHORT]}): state {p['state']}, link {p['link']}"


@peer_app.command("add")
def peer_add(
    url: Annotated[str, typer.Argument(help="The other node's URL, e.g. ws://10.0.0.2:7443")],
    pin: Annotated[
        str | None,
        typer.Option(
            "--pin", help="Require this node id (its `fedgram status`): refuse any other key."
        ),
    ] = None,
    data: DataOpt = None,
    json: JsonOpt = False,
) -> None:
    """Dial a node, learn (or check) its key and make it a peer. With [federation]
    peering = "approve" on its side, its admin still has to `fedgram peer approve` us."""
    from node.client.urls import check_url

    url = check_url(url)  # a typo is a local error (exit 2), said before a node is involved
    params: dict[str, Any] = {"url": url}
    if pin is not None:
        params["pin"] = pin.strip()
    p = admin_call(data, "admin.peerAdd", params)
    print_json(p) if json else typer.echo(_said("added", p))


@peer_app.command("list")
def peer_list(data: DataOpt = None, json: JsonOpt = False) -> None:
    """Every node this node knows, with its link and replication state."""
    peers = admin_call(data, "admin.peerList")["peers"]
    print_json(peers) if json else print_peers(peers)


@peer_app.command("approve")
def peer_approve(peer: PeerArg, data: DataOpt = None, json: JsonOpt = False) -> None:
    """Accept a pending node (or unblock one) as a peer; links come up at once."""
    p = admin_call(data, "admin.peerApprove", {"peer": peer})
    print_json(p) if json else typer.echo(_said("approved", p))


@peer_app.command("block")
def peer_block(peer: PeerArg, data: DataOpt = None, json: JsonOpt = False) -> None:
    """Refuse a node: its links are cut now and it is turned away until approved again."""
    p = admin_call(data, "admin.peerBlock", {"peer": peer})
    print_json(p) if json else typer.echo(_said("blocked", p))


@peer_app.command("remove")
def peer_remove(peer: PeerArg, data: DataOpt = None, json: JsonOpt = False) -> None:
    """Forget how to reach a peer (its users and shared chats stay; it may ask again)."""
    r = admin_call(data, "admin.peerRemove", {"peer": peer})
    print_json(r) if json else typer.echo(f"removed {r['removed']}")


def user_lookup(
    address: Annotated[str, typer.Argument(help="name, or name@node (node: its name or id).")],
    data: DataOpt = None,
    json: JsonOpt = False,
) -> None:
    """Find a user, here or on a peer (asked over the link and cached here)."""
    u = admin_call(data, "admin.userLookup", {"address": address})
    if json:
        print_json(u)
        return
    where = "this node" if u["local"] else f"node {u['node_id']}"
    typer.echo(f"{u['address']:<40} {u['display_name'] or '-':<24} on {where}")
