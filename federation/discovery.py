"""LAN discovery: announce this node as ``_fedgram._tcp.local.`` and list the nodes seen.

zeroconf's API blocks (registering probes the network for ~1.6 s), so every call runs in a
thread and the browser's callbacks reach trio through the trio token; the event loop never
waits on the network (measured in ../shared/reference/dependencies-under-trio.md: 1.61 s
stall when called directly, 14 ms worst gap through threads).

What is seen is only a hint: a discovered node is a name, an id and an address, not a
peer. It becomes one when an admin approves it (``fedgram peer approve``: the node is
dialled and must prove the key the id names), or at once with ``peering = "open"``.
Nothing is announced unless ``[federation] discovery = true``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from node import __version__, log

SERVICE = "_fedgram._tcp.local."
QUEUE = 64  # browser events waiting for the trio side; more are dropped (re-announced)
LOOKUP_MS = 3000

_log = log.get("discovery")


@dataclass
class Seen:
    node_id: str
    name: str
    url: str
    version: str
    first_seen: float
    last_seen: float


OnSeen = Callable[[Seen], Awaitable[None]]


class Discovery:
    def __init__(self, node_id: str, name: str, host: str, port: int, url: str) -> None:
        self.node_id = node_id
        self.name = name
        self.host = host
        self.port = port
        self.url = url
        self.seen: dict[str, Seen] = {}  # node id -> what was heard
        self._names: dict[str, str] = {}  # service name -> node id (for removals)

    def _interfaces(self) -> Any:
        from zeroconf import InterfaceChoice

        try:
            ip = ipaddress.ip_address(self.host)
        except ValueError:
            return InterfaceChoice.All
        return InterfaceChoice.All if ip.is_unspecified else [self.host]

    def _address(self) -> str:
        if self.host in ("0.0.0.0", "::", ""):
            return socket.gethostbyname(socket.gethostname())
        return self.host

    async def run(self, on_seen: OnSeen) -> None:
        """Announce and browse until cancelled; ``on_seen`` for each node heard of."""
        from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

        token = trio.lowlevel.current_trio_token()
        send, recv = trio.open_memory_channel[tuple[str, bool]](QUEUE)

        def heard(zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
            # a zeroconf thread: hand over to trio, never block, drop when full
            gone = state_change is ServiceStateChange.Removed

            def offer() -> None:
                with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
                    send.send_nowait((name, gone))

            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(offer)

        zc = await trio.to_thread.run_sync(
            lambda: Zeroconf(interfaces=self._interfaces(), ip_version=IPVersion.V4Only)
        )
        try:
            address = await trio.to_thread.run_sync(self._address)  # may ask the resolver
            info = ServiceInfo(
                SERVICE,
                f"{self.node_id}.{SERVICE}",
                addresses=[socket.inet_aton(address)],
                port=self.port,
                properties={
                    "id": self.node_id,
                    "name": self.name,
                    "version": __version__,
                    "url": self.url,
                },
                server=f"{self.node_id}.local.",
            )
            await trio.to_thread.run_sync(zc.register_service, info)
            log.event(_log, "discovery.announced", service=SERVICE, port=self.port)
            browser = await trio.to_thread.run_sync(
                lambda: ServiceBrowser(zc, SERVICE, handlers=[heard])
            )
            try:
                async for name, gone in recv:
                    if gone:
                        self.seen.pop(self._names.pop(name, ""), None)
                        continue
                    found = await trio.to_thread.run_sync(
                        zc.get_service_info, SERVICE, name, LOOKUP_MS
                    )
                    seen = self._parse(found)
                    if seen is None or seen.node_id == self.node_id:
                        continue
                    old = self.seen.get(seen.node_id)
                    if old is not None:
                        seen.first_seen = old.first_seen
                    self.seen[seen.node_id] = seen
                    self._names[name] = seen.node_id
                    await on_seen(seen)
            finally:
                await trio.to_thread.run_sync(browser.cancel)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_close, zc)

    @staticmethod
    def _parse(info: Any) -> Seen | None:
        """What a peer's TXT record says (hostile input: everything checked)."""
        if info is None:
            return None
        props = {
            k.decode(errors="replace"): (v or b"").decode(errors="replace")[:512]
            for k, v in (info.properties or {}).items()
            if isinstance(k, bytes)
        }
        node_id, addresses = props.get("id", ""), info.parsed_addresses()
        if not node_id or len(node_id) > 128 or not (addresses or props.get("url")):
            return None
        url = props.get("url") or f"ws://{addresses[0]}:{int(info.port)}/"
        now = time.time()
        return Seen(node_id, props.get("name", "")[:64], url, props.get("version", ""), now, now)


def _close(zc: Any) -> None:
    zc.unregister_all_services()
    zc.close()
