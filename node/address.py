"""User addresses: ``name@node``, in two forms.

* **Canonical**: ``alice@<node id>``, the node named by its identity (the fingerprint of its
  Ed25519 key that ``fedgram status`` prints as "node id", see protocol/identity.py). It is
  the only form that goes into signed events, chat ids (``private_chat_id``) and the
  database: it means the same person on every node.
* **Display**: ``alice@n2``, the node named by its *local petname* (this node's row of the
  ``nodes`` table names it, see nodes.py). It is what people type and read; two nodes may
  give the same node different petnames, so it never leaves this node in anything signed.

Events written before addresses became canonical (schema version < 5) carry
``alice@<the node's human name then>``: a node part that is not a fingerprint. Every address
in such a database was a user of this node (there was no federation), so stored addresses
with a non-fingerprint node part are *legacy* and name this node (see nodes.NodeBook).

This module is pure: parsing, formatting and comparing. Resolving a petname to a node id
needs the ``nodes`` table and lives in nodes.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# protocol/identity.fingerprint: base32 (a-z, 2-7) of a 20-byte digest, 32 characters
NODE_ID_RE = re.compile(r"[a-z2-7]{32}")
USER_NAME_RE = re.compile(r"[a-z0-9_]{1,64}")


class AddressError(ValueError):
    """Text that is not ``name`` or ``name@node``."""


def is_node_id(text: str) -> bool:
    """True if ``text`` has the shape of a node id (a key fingerprint)."""
    return NODE_ID_RE.fullmatch(text) is not None


@dataclass(frozen=True, order=True)
class Address:
    """A user's canonical address; ``node`` is a node id, or the node part of a legacy or
    typed address before it is resolved (``Address.parse`` keeps whatever was written)."""

    name: str
    node: str

    @classmethod
    def parse(cls, text: str) -> Address:
        """``name@node`` (case-insensitive, a leading ``@`` allowed). The node part may be a
        node id or a petname; a bare ``name`` has ``node == ""`` (this node)."""
        t = text.strip().lower().removeprefix("@")
        name, at, node = t.partition("@")
        if not USER_NAME_RE.fullmatch(name) or (at and not node) or "@" in node:
            raise AddressError(f"{text!r} is not an address (name or name@node)")
        return cls(name, node)

    @property
    def canonical(self) -> bool:
        """True if the node part is a node id (the form signed events carry)."""
        return is_node_id(self.node)

    def display(self, petname: str) -> str:
        """The form people read: the node named by the petname this node gives it."""
        return f"{self.name}@{petname}"

    def __str__(self) -> str:
        return f"{self.name}@{self.node}" if self.node else self.name


def canonical(name: str, node_id: str) -> str:
    """The canonical address text of user ``name`` on node ``node_id``."""
    if not is_node_id(node_id):
        raise AddressError(f"{node_id!r} is not a node id")
    return f"{name}@{node_id}"
