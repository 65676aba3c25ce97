"""A tiny HTTP/1.1 receiver for push notifications (tests and scripts/bench_push.py).

A real server on 127.0.0.1 (trio ``serve_tcp``, keep-alive, Content-Length bodies only,
which is what httpx sends): it records each POST (path, headers, body, arrival time) and
answers with the status ``status(path, n)`` chooses (n: how many requests that path got
before), 200 by default. Enough HTTP for a push endpoint; not a general web server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

HEAD_MAX = 16 * 1024
BODY_MAX = 64 * 1024


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # trio clock


class PushReceiver:
    def __init__(self, status: Callable[[str, int], int] | None = None) -> None:
        self.status = status or (lambda path, n: 200)
        self.received: list[Received] = []
        self.hits: dict[str, int] = {}  # requests per path, whatever was answered
        self.port = 0
        self._changed = trio.Event()

    def url(self, path: str = "/push") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def of(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def wait_for(self, pred: Callable[[], bool], timeout: float = 20.0) -> None:
        with trio.fail_after(timeout):
            while not pred():
                await self._changed.wait()

    async def serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._conn, listeners, handler_nursery=nursery)

    async def _conn(self, stream: trio.SocketStream) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = await stream.receive_some(65536)
                    if not chunk or len(buf) > HEAD_MAX:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
                size = int(headers.get("content-length", "0"))
                if size > BODY_MAX:
                    return
                while len(buf) < size:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    buf += chunk
                body, buf = buf[:size], buf[size:]
                n = self.hits.get(path, 0)
                self.hits[path] = n + 1
                status = self.status(path, n)
                if method == "POST" and 200 <= status < 300:
                    self.received.append(Received(path, headers, body, trio.current_time()))
                self._changed.set()
                self._changed = trio.Event()
                await stream.send_all(
                    f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n".encode("latin-1")
                )
        except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError):
            return


def main() -> None:
    """``python3 scripts/push_receiver.py``: serve on a free port (printed as the first
    line), answering 200 to everything, until killed: the bench's receiver in a process of
    its own, so that it does not share a CPU's time with the load clients."""

    async def serve() -> None:
        rx = PushReceiver()
        async with trio.open_nursery() as nursery:
            port = await nursery.start(rx.serve)
            print(port, flush=True)
            while True:  # keep memory flat: the bench counts on the node's side
                await trio.sleep(1.0)
                rx.received.clear()

    trio.run(serve)


if __name__ == "__main__":
    main()
