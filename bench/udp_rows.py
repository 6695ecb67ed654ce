"""The udp_tunnel_pps row: 512-byte datagrams through forwarder → DTP → relay → UDP
echo backend, against a plain Python UDP relay pair on the same path.

Each side's near half (bench/udp_near.py) and far half (bench/udp_far.py) run in
processes of their own, apart from the one driving the datagrams, as the services
daemon runs apart from the applications it serves. Ours run on the event loop the daemon
takes by default (uvloop when installed); the plain relay pair is threads."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bench.workload import Workload

__all__ = ["udp_tunnel_pps"]

ROOT = Path(__file__).resolve().parent.parent
SIZE = 512
WINDOW = 32


class _Side:
    """A process of this row (``script`` with ``args``), announcing a port (and a key)."""

    def __init__(self, script: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench/{script} {' '.join(args)} did not start")
        info = json.loads(line)
        self.address = ("127.0.0.1", int(info["port"]))
        self.key: str = info.get("key", "")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def _drive(
    target: tuple[str, int],
    count: int,
    sockets: list[socket.socket],
    window: int = WINDOW,
    timeout: float = 0.2,
) -> Callable[[], object]:
    """Send ``count`` datagrams in windows of ``window``, reading each window's echoes
    (a lost one costs a short ``timeout``, so loss shows in the rate); the client's
    socket goes into ``sockets``, for the workload's close."""
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sockets.append(client)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    client.bind(("127.0.0.1", 0))
    client.settimeout(timeout)
    payload = bytes(SIZE)

    def op() -> object:
        for _ in range(count // window):
            for _ in range(window):
                client.sendto(payload, target)
            for _ in range(window):
                try:
                    client.recv(65535)
                except TimeoutError:
                    break
        return None

    op()  # warm up: the tunnel's session is opened by the first datagram
    return op


def udp_tunnel_pps(count: int = 4096, path: str = "daemon") -> Workload:
    """``path="daemon"``: the services daemon's asyncio forwarder and relay
    (dtp.hostid.udp._asyncio); ``"blocking"``: the dtp.hostid.udp threads."""
    kind = "dtp-aio" if path == "daemon" else "dtp"
    sides: list[_Side] = []
    try:
        sides.append(ours_far := _Side("udp_far.py", kind))
        sides.append(ours := _Side("udp_near.py", kind, str(ours_far.address[1]), ours_far.key))
        sides.append(peer_far := _Side("udp_far.py", "plain"))
        sides.append(peer := _Side("udp_near.py", "plain", str(peer_far.address[1])))
    except BaseException:
        for side in sides:
            side.close()
        raise

    clients: list[socket.socket] = []

    def close() -> None:
        for client in clients:
            client.close()
        for side in sides:
            side.close()

    return Workload(
        "udp_tunnel_pps",
        "dgram/s",
        count,
        _drive(ours.address, count, clients),
        _drive(peer.address, count, clients),
        bar=0.85,
        note=f"512 B datagrams, windows of 32 echoed: forwarder→DTP→relay→UDP ({path}) "
        "vs a UDP relay pair, each half in its own process",
        close=close,
    )
