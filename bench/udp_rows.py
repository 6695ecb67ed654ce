"""The udp_tunnel_pps row: 512-byte datagrams through forwarder → DTP → relay → UDP
echo backend, against a plain Python UDP relay pair on the same path."""

from __future__ import annotations

import functools
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import dtp.socket
from bench.workload import Workload
from dtp.udp import UdpForwarder

__all__ = ["udp_tunnel_pps"]

ROOT = Path(__file__).resolve().parent.parent
SIZE = 512
WINDOW = 32


class _Far:
    """The far side's process (bench/udp_far.py)."""

    def __init__(self, kind: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "udp_far.py"), kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        info = json.loads(self.proc.stdout.readline())
        self.address = ("127.0.0.1", int(info["port"]))
        self.key = bytes.fromhex(info["key"])

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


class _NearRelay:
    """The near half of the plain relay pair: local UDP in, to the far relay, back."""

    def __init__(self, far: tuple[str, int]) -> None:
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.front.bind(("127.0.0.1", 0))
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.connect(far)
        self.address = self.front.getsockname()
        self.last: tuple[str, int] | None = None
        self.closed = False
        for target in (self._forward, self._reply):
            threading.Thread(target=target, daemon=True).start()

    def _forward(self) -> None:
        while not self.closed:
            try:
                data, self.last = self.front.recvfrom(65535)
                self.back.send(data)
            except OSError:
                return

    def _reply(self) -> None:
        while not self.closed:
            try:
                data = self.back.recv(65535)
                if self.last is not None:
                    self.front.sendto(data, self.last)
            except OSError:
                return

    def close(self) -> None:
        self.closed = True
        self.front.close()
        self.back.close()


def _drive(target: tuple[str, int], count: int) -> Callable[[], object]:
    """Send ``count`` datagrams in windows of WINDOW, reading each window's echoes
    (a lost one costs a short timeout, so loss shows in the rate)."""
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    client.bind(("127.0.0.1", 0))
    client.settimeout(0.2)
    payload = bytes(SIZE)

    def op() -> object:
        for _ in range(count // WINDOW):
            for _ in range(WINDOW):
                client.sendto(payload, target)
            for _ in range(WINDOW):
                try:
                    client.recv(65535)
                except TimeoutError:
                    break
        return None

    op()  # warm up: the tunnel's session is opened by the first datagram
    return op


class _AsyncForwarder:
    """The services daemon's forwarder path (dtp.udp_aio) on an event loop thread."""

    def __init__(self, far: _Far) -> None:
        import asyncio

        import dtp.aio
        from dtp.udp_aio import AsyncUdpForwarder

        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

        async def connect() -> tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]:
            return await dtp.aio.open_connection(*far.address, server_key=far.key, timeout=10)

        async def start() -> AsyncUdpForwarder:
            return await AsyncUdpForwarder.start(("127.0.0.1", 0), connect)

        self.forwarder = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        self.address = self.forwarder.address

    def close(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.forwarder.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


def udp_tunnel_pps(count: int = 4096, path: str = "daemon") -> Workload:
    """``path="daemon"``: the services daemon's asyncio forwarder and relay
    (dtp.udp_aio); ``"blocking"``: the dtp.udp threads."""
    ours_far = _Far("dtp-aio" if path == "daemon" else "dtp")
    peer_far = _Far("plain")
    forwarder: _AsyncForwarder | UdpForwarder
    if path == "daemon":
        forwarder = _AsyncForwarder(ours_far)
    else:
        connect = functools.partial(
            dtp.socket.create_connection, ours_far.address, server_key=ours_far.key, timeout=10
        )
        forwarder = UdpForwarder(("127.0.0.1", 0), connect)
    near = _NearRelay(peer_far.address)

    def close() -> None:
        forwarder.close()
        near.close()
        ours_far.close()
        peer_far.close()

    return Workload(
        "udp_tunnel_pps",
        "dgram/s",
        count,
        _drive(forwarder.address, count),
        _drive(near.address, count),
        bar=0.5,
        note=f"512 B datagrams, windows of 32 echoed: forwarder→DTP→relay→UDP ({path}) "
        "vs a UDP relay pair",
        close=close,
    )
