"""What this machine itself costs for the operations a node cannot avoid (issue 17).

The performance targets are absolute numbers (an ack in 0.8 ms, half a core for a fan-out
to 1,000 members at 50 msgs/s, 250 MB/s of media), set on another machine. Before reading
Fedgram's figures against them, measure the floor here, without Fedgram:

- ``loopback_send``: one process writes a small frame (250 bytes, one ``write(2)``) to each
  of 1,000 loopback TCP sockets, round after round, while reader processes wait in epoll
  and read, as the fan-out benchmark's receivers do. On loopback the sender's system call
  also runs the receiving half of TCP and wakes the reader, so this is what a node pays
  per delivered push in the kernel alone; times 50,000 deliveries a second it is the
  fan-out target's CPU floor.
- ``fdatasync_4k``: append 4 KiB to a file and ``fdatasync`` it (the durability of one
  acknowledged send, at least).
- ``sqlite_commit``: one small INSERT committed in WAL mode with ``synchronous=FULL`` (the
  node's settings), from Python.
- ``seal_250b`` / ``seal_mib`` / ``sha256`` / ``unmask``: ChaCha20-Poly1305 (libsodium,
  through PyNaCl's cffi module as node/protocol/seal.py calls it), hashlib SHA-256, and the
  ``websockets`` package's C unmasking; per media byte the node does each at least once.

    python3 scripts/bench_floor.py [--sockets 1000] [--rounds 100] [--readers 2]

Prints ONE JSON document.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import selectors
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# this checkout's code, whatever `pip install -e` elsewhere points at
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from node.protocol import wsframe
from node.protocol.seal import Sealer
from scripts.bench import machine

FRAME = 250


def _reader(port: int, count: int, ready_w: int, expect: int) -> None:
    """A child process: open COUNT connections, say so, then read EXPECT bytes from each."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    os.write(ready_w, b"x")
    sel = selectors.EpollSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    want, got = expect * count, 0
    deadline = time.monotonic() + 120
    while got < want and time.monotonic() < deadline:
        for key, _ in sel.select(1.0):
            try:
                data = key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            if not data:
                sel.unregister(key.fileobj)
            got += len(data)
    os._exit(0)


def loopback_send(sockets: int, rounds: int, readers: int) -> dict[str, Any]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    port = listener.getsockname()[1]
    per = sockets // readers
    children = []
    for _ in range(readers):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            listener.close()
            _reader(port, per, w, rounds * FRAME)
        children.append(pid)
        os.read(r, 1)
        os.close(r)
        os.close(w)
    conns = []
    while len(conns) < per * readers:
        c, _ = listener.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.setblocking(False)
        conns.append(c)
    frame = wsframe.header(wsframe.BINARY, FRAME - 4) + b"y" * (FRAME - 4)
    fds = [c.fileno() for c in conns]
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    pause = 0.02  # 50 rounds a second, as the fan-out benchmark sends
    for _ in range(rounds):
        start = time.perf_counter()
        for fd in fds:
            os.write(fd, frame)
        time.sleep(max(0.0, pause - (time.perf_counter() - start)))
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    for pid in children:
        os.waitpid(pid, 0)
    for c in conns:
        c.close()
    listener.close()
    n = rounds * len(fds)
    # the kernel splits a process's CPU into user and system time by sampling: the sum is
    # what is exact, and nearly all of it is the system call
    cpu_us = (r1.ru_stime - r0.ru_stime + r1.ru_utime - r0.ru_utime) / n * 1e6
    return {
        "sockets": len(fds),
        "reader_processes": readers,
        "frame_bytes": FRAME,
        "sends": n,
        "cpu_us_per_send": round(cpu_us, 2),
        "cores_at_50k_sends_per_s": round(cpu_us * 50_000 / 1e6, 3),
        "wall_s": round(wall, 2),
    }


def _p50(samples: list[float]) -> float:
    return round(statistics.median(samples), 4)


def fdatasync_4k(folder: Path, n: int = 300) -> dict[str, Any]:
    path = folder / "sync.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    block = b"z" * 4096
    times = []
    try:
        for _ in range(n):
            t = time.perf_counter()
            os.write(fd, block)
            os.fdatasync(fd)
            times.append((time.perf_counter() - t) * 1000)
    finally:
        os.close(fd)
    return {"n": n, "p50_ms": _p50(times), "p90_ms": round(sorted(times)[n * 9 // 10], 4)}


def sqlite_commit(folder: Path, n: int = 300) -> dict[str, Any]:
    db = sqlite3.connect(folder / "floor.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
    body = b"b" * 200
    times = []
    for _ in range(n):
        t = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t (body) VALUES (?)", (body,))
        db.execute("COMMIT")
        times.append((time.perf_counter() - t) * 1000)
    db.close()
    return {"n": n, "p50_ms": _p50(times), "p90_ms": round(sorted(times)[n * 9 // 10], 4)}


def _rate(fn: Any, nbytes: int, seconds: float = 0.5) -> float:
    """MB/s of ``fn()`` over ``nbytes`` per call, best of three spells."""
    best = 0.0
    for _ in range(3):
        calls, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds:
            fn()
            calls += 1
        best = max(best, calls * nbytes / elapsed / 1e6)
    return round(best, 1)


def crypto() -> dict[str, Any]:
    sealer = Sealer(os.urandom(32))
    small, big = os.urandom(FRAME), os.urandom(1 << 20)
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.5:
        sealer.seal(small)
        calls += 1
    key = os.urandom(4)
    return {
        "seal_250b_us": round((time.perf_counter() - t0) / calls * 1e6, 2),
        "seal_mib_mb_per_s": _rate(lambda: sealer.seal(big), len(big)),
        "sha256_mb_per_s": _rate(lambda: hashlib.sha256(big).digest(), len(big)),
        "unmask_mb_per_s": _rate(lambda: wsframe.apply_mask(big, key), len(big)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sockets", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--readers", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedgram-floor-") as tmp:
        folder = Path(tmp)
        out = {
            "machine": machine(),
            "loopback_send": loopback_send(args.sockets, args.rounds, args.readers),
            "fdatasync_4k": fdatasync_4k(folder),
            "sqlite_commit": sqlite_commit(folder),
            "crypto": crypto(),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
