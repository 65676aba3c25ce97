"""Media between nodes: serving ranges of stored files to peers (``fed.media``) and asking a
peer for one (the remote slot's ``fetch_media``).

The node's media service (node/media/service.py) decides what to fetch, from whom, keeps
the parts, verifies and stores the file; this part only carries ranges over the links.

Trust: a peer gets the bytes of a file only if one of its users is a current member of a
chat with a readable message carrying that SHA-256 (knowing a hash is not a right to its
content), or if the file is opaque (a secret chat's file, encrypted on the device under a
one-time key: its hash travels only inside the secret message, with the key, so naming it
is the grant, for any approved peer as for any local user; docs/secret-chats.md 6.6);
what a peer serves is trusted for nothing (the fetching node checks size and SHA-256
before keeping anything).
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from node.media import store as media_store
from node.protocol.errors import ErrorCode, RpcError

from . import peers

if TYPE_CHECKING:
    from .service import Federation

RANGE_MAX = 512 * 1024  # fed.media's schema cap


class FedMedia:
    """Both ends of ``fed.media`` for one node."""

    def __init__(self, fed: Federation) -> None:
        self.fed = fed
        self.ranges_served = 0  # answered ranges (tests check a file is fetched once)

    async def serve(self, peer: peers.Peer, p: dict[str, Any]) -> dict[str, Any]:
        """A range for ``peer``: NOT_A_REPLICA unless it may read the file (checked first, so
        a stranger cannot learn whether a hash is stored here), MEDIA_NOT_FOUND if this node
        lacks the bytes. Read in a thread. An opaque file is readable by its hash alone (the
        capability of a secret chat's file); any other only by the chat rule."""
        sha: str = p["sha256"]
        raw = bytes.fromhex(sha)
        only_opaque = bool(p.get("opaque", False))
        target = p.get("node")
        if target is not None and target != self.fed.node_id:
            return await self._relay(peer, target, p)

        def may(c: sqlite3.Connection) -> bool:
            if media_store.is_opaque(c, raw):
                return True
            # asked as a secret file: an ordinary one is not served, whatever the chat rule
            # says (the asking node would keep it under an opaque row, readable by hash)
            return not only_opaque and media_store.node_may_fetch(c, peer.row, raw)

        allowed = await self.fed.db.read(may)
        if not allowed:
            raise RpcError(ErrorCode.NOT_A_REPLICA, "no chat your users are in carries this file")
        length = min(int(p["length"]), RANGE_MAX)
        data, size = await self.fed.node.media.read_blob(sha, int(p["offset"]), length)
        self.ranges_served += 1
        return {"data": data, "size": size}

    async def fetch(
        self, node_id: str, sha256: str, offset: int, length: int, *, opaque: bool = False
    ) -> tuple[bytes, int]:
        """Ask ``node_id`` for a range over our link to it; the answer is checked for shape
        only (the caller verifies the bytes). ``opaque``: only an opaque file will do."""
        link = self.fed.links.get(node_id)
        params: dict[str, Any] = {"sha256": sha256, "offset": offset, "length": length}
        if opaque:
            params["opaque"] = True
            if link is None or link.state != "up":
                # a secret file of a node we have no link to: through a peer that reaches
                # it, as secret-chat envelopes go (it carries ciphertext only)
                link = await self.fed.secret.route(node_id)
                if link.node_id != node_id:
                    params["node"] = node_id
        if link is None:
            raise RpcError(ErrorCode.PEER_UNREACHABLE, f"node {node_id[:12]} is not a peer here")
        answer = await link.call("fed.media", params)
        data, size = answer.get("data"), answer.get("size")
        if not isinstance(data, bytes) or not isinstance(size, int) or len(data) > length:
            raise RpcError(ErrorCode.CHECKSUM_MISMATCH, f"node {node_id[:12]}: malformed range")
        return data, size

    async def _relay(self, peer: peers.Peer, target: str, p: dict[str, Any]) -> dict[str, Any]:
        """A range of a secret file held by ``target``, for a peer with no link to it: asked
        of ``target`` over our link and handed back (opaque files only: ciphertext, and
        nothing the chat rule would have to judge), counted against the peer's relay
        allowance like its envelopes."""
        if not p.get("opaque"):
            raise RpcError(ErrorCode.SECRET_RELAY_REFUSED, "only secret files are relayed")
        secret = self.fed.secret
        if not secret.relay:
            raise RpcError(ErrorCode.SECRET_RELAY_REFUSED, "this node does not relay")
        link = self.fed.links.get(target)
        if link is None or link.state != "up":
            raise RpcError(ErrorCode.SECRET_NO_ROUTE, f"no link to {target[:12]} here")
        length = min(int(p["length"]), RANGE_MAX)
        await secret.charge(peer.node_id, length)
        answer = await link.call(
            "fed.media",
            {"sha256": p["sha256"], "offset": p["offset"], "length": length, "opaque": True},
        )
        data, size = answer.get("data"), answer.get("size")
        if not isinstance(data, bytes) or not isinstance(size, int) or len(data) > length:
            raise RpcError(ErrorCode.CHECKSUM_MISMATCH, f"node {target[:12]}: malformed range")
        return {"data": data, "size": size}
