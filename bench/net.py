"""Network rows of bench/compare.py: DTP against Python's ``ssl`` (TLS 1.3), each
server in its own process on 127.0.0.1 (bench/netpeers.py). The ``*_uvloop`` rows run
both sides of both pairs on uvloop (``dtp-sui[fast]``): ours on uvloop against asyncio's
TLS streams on uvloop, in the same run."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import dtp.aio
import dtp.eventloop
import dtp.socket
from bench.netpeers import client_tls_context
from bench.workload import Floor, Workload

ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000
CHUNK = 64 * 1024


class Peer:
    """A benchmark server process."""

    def __init__(self, kind: str, mode: str, cpu: int | None = None, loop: str = "asyncio") -> None:
        cmd = [sys.executable, str(ROOT / "bench" / "netpeers.py"), kind, mode]
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
        if loop != "asyncio":
            cmd += ["--loop", loop]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark server {kind} {mode} did not start")
        info = json.loads(line)
        self.port: int = info["port"]
        self.key = bytes.fromhex(info["key"])
        self.cert: str | None = info.get("cert")  # PEM text
        self.endpoint = ("127.0.0.1", self.port)

    def tls_context(self) -> ssl.SSLContext:
        assert self.cert is not None
        return client_tls_context(self.cert)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()


def _tls_connect(peer: Peer) -> ssl.SSLSocket:
    raw = socket.create_connection(peer.endpoint)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return peer.tls_context().wrap_socket(raw, server_hostname="localhost")


def _send_bulk(sock: object, total: int) -> None:
    chunk = memoryview(os.urandom(CHUNK))
    sock.sendall(total.to_bytes(8, "big"))  # type: ignore[attr-defined]
    for _ in range(total // CHUNK):
        sock.sendall(chunk)  # type: ignore[attr-defined]
    reply = sock.recv(64)  # type: ignore[attr-defined]
    assert int(reply) == total, reply


def _with_peers(
    name: str,
    ours_kind: str,
    peer_kind: str,
    mode: str,
    make_ours: Callable[[Peer], Callable[[], object]],
    make_peer: Callable[[Peer], Callable[[], object]],
    units: float,
    unit: str,
    bar: float | None,
    note: str,
    cpu: int | None = None,
    loop: str = "asyncio",
) -> Workload:
    ours_srv = Peer(ours_kind, mode, cpu, loop)
    peer_srv = Peer(peer_kind, mode, cpu, loop)
    previous_affinity = os.sched_getaffinity(0)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})

    def close() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, previous_affinity)
        ours_srv.close()
        peer_srv.close()

    return Workload(
        name,
        unit,
        units,
        make_ours(ours_srv),
        make_peer(peer_srv),
        bar=bar,
        note=note,
        close=close,
    )


def tcp_bulk_blocking(total: int = 256 << 20) -> Workload:
    def ours(peer: Peer) -> Callable[[], object]:
        def op() -> None:
            with dtp.socket.create_connection(peer.endpoint, server_key=peer.key) as s:
                _send_bulk(s, total)

        return op

    def tls(peer: Peer) -> Callable[[], object]:
        def op() -> None:
            with _tls_connect(peer) as s:
                _send_bulk(s, total)

        return op

    return _with_peers(
        "tcp_bulk_blocking",
        "dtp-blocking",
        "tls-blocking",
        "sink",
        ours,
        tls,
        total / MB,
        "MB/s",
        bar=Floor(1.3),
        note="one-way 256 MiB, 64 KiB writes, blocking API vs ssl (TLS 1.3)",
    )


async def _async_bulk(reader: object, writer: object, total: int) -> None:
    chunk = os.urandom(CHUNK)
    writer.write(total.to_bytes(8, "big"))  # type: ignore[attr-defined]
    for _ in range(total // CHUNK):
        writer.write(chunk)  # type: ignore[attr-defined]
        await writer.drain()  # type: ignore[attr-defined]
    reply = await reader.read(64)  # type: ignore[attr-defined]
    assert int(reply) == total, reply
    writer.close()  # type: ignore[attr-defined]
    await writer.wait_closed()  # type: ignore[attr-defined]


def run_on(loop: str, main: Coroutine[Any, Any, object]) -> object:
    """``asyncio.run(main)`` on ``loop``: ``"asyncio"`` as asyncio.run does it, else that
    loop (dtp.eventloop: ``"uvloop"``)."""
    if loop == "asyncio":
        return asyncio.run(main)
    return dtp.eventloop.run(main, loop=loop)


def _tcp_bulk_aio(name: str, loop: str, total: int, note: str, bar: float | None) -> Workload:
    def ours(peer: Peer) -> Callable[[], object]:
        async def run() -> None:
            r, w = await dtp.aio.open_connection("127.0.0.1", peer.port, server_key=peer.key)
            await _async_bulk(r, w, total)

        return lambda: run_on(loop, run())

    def tls(peer: Peer) -> Callable[[], object]:
        ctx = peer.tls_context()

        async def run() -> None:
            r, w = await asyncio.open_connection(
                "127.0.0.1", peer.port, ssl=ctx, server_hostname="localhost"
            )
            await _async_bulk(r, w, total)

        return lambda: run_on(loop, run())

    return _with_peers(
        name,
        "dtp-asyncio",
        "tls-asyncio",
        "sink",
        ours,
        tls,
        total / MB,
        "MB/s",
        bar=bar,
        note=note,
        loop=loop,
    )


def tcp_bulk_asyncio(total: int = 256 << 20) -> Workload:
    return _tcp_bulk_aio(
        "tcp_bulk_asyncio",
        "asyncio",
        total,
        "one-way 256 MiB through dtp.aio vs asyncio streams with TLS",
        bar=Floor(1.0),
    )


def tcp_bulk_uvloop(total: int = 256 << 20) -> Workload:
    """tcp_bulk_asyncio with every side on uvloop (report: no bar yet)."""
    return _tcp_bulk_aio(
        "tcp_bulk_uvloop",
        "uvloop",
        total,
        "one-way 256 MiB through dtp.aio vs asyncio streams with TLS, both on uvloop",
        bar=None,
    )


def _pingpong(sock: object, rounds: int) -> None:
    message = os.urandom(100)
    for _ in range(rounds):
        sock.sendall(message)  # type: ignore[attr-defined]
        got = 0
        while got < 100:
            got += len(sock.recv(100 - got))  # type: ignore[attr-defined]


def pingpong_100b(rounds: int = 2000) -> Workload:
    state: dict[str, object] = {}

    def ours(peer: Peer) -> Callable[[], object]:
        sock = dtp.socket.create_connection(peer.endpoint, server_key=peer.key)
        state["ours"] = sock
        return lambda: _pingpong(sock, rounds)

    def tls(peer: Peer) -> Callable[[], object]:
        sock = _tls_connect(peer)
        state["tls"] = sock
        return lambda: _pingpong(sock, rounds)

    w = _with_peers(
        "pingpong_100b",
        "dtp-blocking",
        "tls-blocking",
        "echo",
        ours,
        tls,
        rounds,
        "rt/s",
        bar=Floor(0.84),
        note="100-byte round trips on one connection, both processes on CPU 0",
        cpu=0,
    )
    inner_close = w.close

    def close() -> None:
        for sock in state.values():
            sock.close()  # type: ignore[attr-defined]
        if inner_close:
            inner_close()

    w.close = close
    return w


def connect_rate(per_op: int = 20) -> Workload:
    def ours(peer: Peer) -> Callable[[], object]:
        def op() -> None:
            for _ in range(per_op):
                with dtp.socket.create_connection(peer.endpoint, server_key=peer.key) as s:
                    _pingpong(s, 1)

        return op

    def tls(peer: Peer) -> Callable[[], object]:
        def op() -> None:
            for _ in range(per_op):
                with _tls_connect(peer) as s:
                    _pingpong(s, 1)

        return op

    return _with_peers(
        "connect_rate",
        "dtp-blocking",
        "tls-blocking",
        "echo",
        ours,
        tls,
        per_op,
        "conn/s",
        bar=1.4,
        note="connect + handshake + one 100-byte round trip vs ssl",
    )


NET_ROWS: dict[str, Callable[[], Workload]] = {
    "tcp_bulk_blocking": tcp_bulk_blocking,
    "tcp_bulk_asyncio": tcp_bulk_asyncio,
    "tcp_bulk_uvloop": tcp_bulk_uvloop,
    "pingpong_100b": pingpong_100b,
    "connect_rate": connect_rate,
}
