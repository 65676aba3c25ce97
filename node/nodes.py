"""The ``nodes`` table (migration 5) and the :class:`NodeBook` that turns canonical addresses
into the names people read, and typed names into canonical addresses.

A node is known by its identity: ``fingerprint`` (the node id) of its Ed25519
``public_key``. ``name`` is this node's local *petname* for it, unique here (a peer that
calls itself like a node already known gets a distinct petname). ``state`` is ``self``
(exactly one row: this node), ``peer``, ``pending`` (discovered, awaiting approval) or
``blocked``. ``users.node`` refers to ``nodes.id``, a local integer key: the migration that
created the table ran before the node's key was loaded, so the self row is made by the
migration (for the users it already has) and gets its fingerprint, key and name when the
node starts (:func:`ensure_self`); renaming the node in its config only changes its petname.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .address import Address, AddressError, canonical, is_node_id
from .config import ConfigError

STATES = ("self", "peer", "pending", "blocked")
# keys under which API results and pushes carry user addresses (a string or a list of them)
ADDRESS_KEYS = frozenset({"sender", "user", "users", "members", "address", "peer"})
SELF_ROW = "(SELECT id FROM nodes WHERE state = 'self')"
DISPLAY_CACHE = (
    65536  # addresses a NodeBook remembers the display form of  # SQL: this node's nodes.id
)


def ensure_self(
    conn: sqlite3.Connection, fingerprint: str, public_key: bytes, name: str
) -> NodeBook:
    """Make this node's row say its key and configured name; return the book of all nodes.

    Refuses a database made by a node with another key: its chats are signed by that key and
    its users live on that node, so the data folder's key was replaced or the database copied
    from elsewhere; starting anyway would silently split every address in two."""
    now = time.time()
    row = conn.execute("SELECT id, fingerprint FROM nodes WHERE state = 'self'").fetchone()
    if row is not None and row[1] is not None and row[1] != fingerprint:
        raise ConfigError(
            f"the database belongs to node {row[1]}, but the node key is {fingerprint}: "
            "restore the node.key that made it, or use a new data folder"
        )
    taken = conn.execute(
        "SELECT id, fingerprint FROM nodes WHERE name = ? COLLATE NOCASE AND state != 'self'",
        (name,),
    ).fetchone()
    if taken is not None:  # a peer had the petname this node now calls itself: rename it
        conn.execute(
            "UPDATE nodes SET name = ? WHERE id = ?", (free_name(conn, name, taken[1]), taken[0])
        )
    if row is None:
        conn.execute(
            "INSERT INTO nodes(fingerprint, public_key, name, state, first_seen, last_seen) "
            "VALUES (?, ?, ?, 'self', ?, ?)",
            (fingerprint, public_key, name, now, now),
        )
    else:
        conn.execute(
            "UPDATE nodes SET fingerprint = ?, public_key = ?, name = ?, last_seen = ?, "
            "first_seen = CASE WHEN fingerprint IS NULL THEN ? ELSE first_seen END WHERE id = ?",
            (fingerprint, public_key, name, now, now, row[0]),
        )
    return load(conn)


def free_name(conn: sqlite3.Connection, base: str, fingerprint: str | None) -> str:
    """A petname not yet used here, derived from ``base`` and the node id."""
    suffix = (fingerprint or "node")[:6]
    for n in range(1000):
        cand = f"{base}-{suffix}" + (f"-{n}" if n else "")
        if not conn.execute(
            "SELECT 1 FROM nodes WHERE name = ? COLLATE NOCASE", (cand,)
        ).fetchone():
            return cand
    raise RuntimeError(f"no free petname for {base!r}")


def load(conn: sqlite3.Connection) -> NodeBook:
    rows = conn.execute("SELECT fingerprint, name, state FROM nodes").fetchall()
    me = next((r for r in rows if r[2] == "self"), None)
    if me is None or me[0] is None:
        raise RuntimeError("the nodes table has no self row with a key: ensure_self first")
    return NodeBook(
        self_id=me[0],
        self_name=me[1],
        petnames={r[0]: r[1] for r in rows if r[0] is not None},
    )


def public_key(conn: sqlite3.Connection, fingerprint: str) -> bytes | None:
    """The key of a known node (to verify what it signed), or None."""
    row = conn.execute(
        "SELECT public_key FROM nodes WHERE fingerprint = ?", (fingerprint,)
    ).fetchone()
    return bytes(row[0]) if row and row[0] is not None else None


@dataclass(frozen=True)
class NodeBook:
    """A snapshot of the ``nodes`` table for formatting and resolving addresses without a
    database round trip. Replaced whole (never mutated) when the table changes."""

    self_id: str
    self_name: str
    petnames: Mapping[str, str]  # node id -> petname
    by_petname: Mapping[str, str] = field(init=False)  # lower-case petname -> node id
    # display() answers of this book: the book never changes, so neither do its answers
    # (every push and result passes its addresses through display: parsing each one again
    # was ~7% of the node's CPU in the reference workload)
    _shown: dict[str, str] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_petname", {v.lower(): k for k, v in self.petnames.items()})

    # --- canonical -> display -------------------------------------------------------------
    def display(self, text: str) -> str:
        """``alice@<node id>`` -> ``alice@<petname>``. A node part that is not a node id is
        already a petname, or else legacy (written before addresses were canonical, when
        every address was a user of this node) and shown with this node's petname. An
        unknown node id is shown as it is."""
        shown = self._shown
        out = shown.get(text)
        if out is None:
            out = self._display(text)
            if len(shown) >= DISPLAY_CACHE:
                shown.clear()
            shown[text] = out
        return out

    def _display(self, text: str) -> str:
        try:
            a = Address.parse(text)
        except AddressError:
            return text
        if not a.node:
            return a.display(self.self_name)
        if a.canonical:
            pet = self.petnames.get(a.node)
            return a.display(pet) if pet is not None else str(a)
        if a.node in self.by_petname:
            return text
        return a.display(self.self_name)

    def present(self, obj: Any) -> Any:
        """A copy of an API result or push with every address (under :data:`ADDRESS_KEYS`)
        in display form. Applied once where results and pushes leave the node (rpc.Router,
        updates.Hub); everything inside the node and everything signed stays canonical."""
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                if k in ADDRESS_KEYS:
                    if isinstance(v, str):
                        v = self.display(v)
                    elif isinstance(v, list):
                        v = [self.display(x) if isinstance(x, str) else self.present(x) for x in v]
                    else:
                        v = self.present(v)
                else:
                    v = self.present(v)
                out[k] = v
            return out
        if isinstance(obj, list):
            return [self.present(x) for x in obj]
        return obj

    # --- typed / stored -> canonical ------------------------------------------------------
    def resolve(self, text: str) -> Address:
        """What a person typed (``alice``, ``alice@n2``, ``alice@<node id>``) or a stored
        address (canonical or legacy) as a canonical :class:`Address`. Raises AddressError
        for a petname this node does not know."""
        a = Address.parse(text)
        if not a.node:
            return Address(a.name, self.self_id)
        if is_node_id(a.node) and a.node in self.petnames:
            return a
        node = self.by_petname.get(a.node)
        if node is not None:
            return Address(a.name, node)
        if is_node_id(a.node):
            return a
        raise AddressError(f"{text}: no node called {a.node!r} is known here")

    def canonical_of(self, name: str) -> str:
        """The canonical address of local user ``name``."""
        return canonical(name, self.self_id)


class Directory:
    """The node's user directory (node/interfaces.py's UserDirectory): the current
    :class:`NodeBook`, replaced whole when the nodes table changes (a peer added, renamed,
    blocked). Services and the hub hold the directory, so they never format with a stale
    book."""

    def __init__(self, book: NodeBook) -> None:
        self.book = book

    def replace(self, book: NodeBook) -> None:
        self.book = book

    @property
    def self_id(self) -> str:
        return self.book.self_id

    @property
    def self_name(self) -> str:
        return self.book.self_name

    def canonical_of(self, name: str) -> str:
        return self.book.canonical_of(name)

    def present(self, obj: Any) -> Any:
        return self.book.present(obj)

    def display(self, text: str) -> str:
        return self.book.display(text)

    def resolve(self, text: str) -> Address:
        return self.book.resolve(text)
