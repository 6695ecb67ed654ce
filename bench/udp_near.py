"""The near side of the udp_tunnel_pps row, in its own process, as the services daemon
runs apart from the applications it serves: a local UDP endpoint that carries datagrams
to the far side (bench/udp_far.py) and back, either through DTP (``dtp-aio``: the
daemon's asyncio forwarder, dtp.hostid.udp._asyncio; ``dtp``: the dtp.hostid.udp threads) or
as a plain Python UDP relay (``plain``).

    python bench/udp_near.py {dtp-aio,dtp,plain} FAR_PORT [FAR_KEY_HEX]

``dtp-aio`` runs on the event loop the daemon takes by default (:func:`dtp.eventloop.run`:
uvloop when installed, as with ``dtp-sui[fast]``; ``DTP_EVENT_LOOP=asyncio`` for asyncio's
own). The plain relay is threads, with no event loop to choose.

Prints one JSON line {"port"} once ready; runs until its stdin closes.

In the benchmark's own process the forwarder shared an interpreter lock with the
thread driving the datagrams: every ``sendto`` there let the forwarder take the two to
five datagrams that had arrived, where a separate daemon takes a window's worth at once.
"""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dtp.aio
import dtp.eventloop
import dtp.socket
from dtp.hostid.udp import UdpForwarder
from dtp.hostid.udp._asyncio import AsyncUdpForwarder


class PlainNearRelay:
    """The near half of the plain relay pair: local UDP in, to the far relay, back."""

    def __init__(self, far: tuple[str, int]) -> None:
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.front.bind(("127.0.0.1", 0))
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.connect(far)
        self.address = self.front.getsockname()
        self.last: tuple[str, int] | None = None
        for target in (self._forward, self._reply):
            threading.Thread(target=target, daemon=True).start()

    def _forward(self) -> None:
        while True:
            try:
                data, self.last = self.front.recvfrom(65535)
                self.back.send(data)
            except OSError:
                return

    def _reply(self) -> None:
        while True:
            try:
                data = self.back.recv(65535)
                if self.last is not None:
                    self.front.sendto(data, self.last)
            except OSError:
                return


def _announce(port: int) -> None:
    print(json.dumps({"port": port}), flush=True)


def serve_aio(far: tuple[str, int], key: bytes) -> None:
    async def run() -> None:
        async def connect() -> tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]:
            return await dtp.aio.open_connection(*far, server_key=key, timeout=10)

        forwarder = await AsyncUdpForwarder.start(("127.0.0.1", 0), connect)
        _announce(forwarder.address[1])
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await forwarder.close()

    dtp.eventloop.run(run())


def main() -> None:
    kind, far = sys.argv[1], ("127.0.0.1", int(sys.argv[2]))
    if kind == "dtp-aio":
        serve_aio(far, bytes.fromhex(sys.argv[3]))
        return
    if kind == "dtp":
        connect = functools.partial(
            dtp.socket.create_connection, far, server_key=bytes.fromhex(sys.argv[3]), timeout=10
        )
        forwarder = UdpForwarder(("127.0.0.1", 0), connect)
        _announce(forwarder.address[1])
        sys.stdin.read()
        forwarder.close()
        return
    if kind != "plain":
        raise SystemExit(f"unknown near side {kind}")
    relay = PlainNearRelay(far)
    _announce(relay.address[1])
    sys.stdin.read()


if __name__ == "__main__":
    main()
