"""The far side of the udp_tunnel_pps row, in its own process: a UDP echo backend and,
in front of it, either a DTP server relaying datagrams (``dtp``: the blocking relay;
``dtp-aio``: the asyncio relay the services daemon runs) or a plain Python UDP relay
(``plain``). Prints one JSON line: the port to reach (and the DTP key).

``dtp-aio`` runs on the event loop the daemon takes by default (:func:`dtp.eventloop.run`:
uvloop when installed; ``DTP_EVENT_LOOP=asyncio`` for asyncio's own)."""

from __future__ import annotations

import functools
import json
import socket
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dtp.eventloop
import dtp.socket
from dtp.hostid.udp import relay_udp
from dtp.identity.keys import HostIdentity


def echo_backend() -> tuple[str, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))

    def run() -> None:
        while True:
            data, peer = sock.recvfrom(65535)
            sock.sendto(data, peer)

    threading.Thread(target=run, daemon=True).start()
    return sock.getsockname()


def plain_relay(backend: tuple[str, int]) -> int:
    """A UDP relay: whatever arrives goes to the backend; replies go to the last sender
    (one flow, as the benchmark drives)."""
    front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    front.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    front.bind(("127.0.0.1", 0))
    back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    back.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    back.connect(backend)
    last: list[tuple[str, int] | None] = [None]

    def forward() -> None:
        while True:
            data, peer = front.recvfrom(65535)
            last[0] = peer
            back.send(data)

    def reply() -> None:
        while True:
            data = back.recv(65535)
            if last[0] is not None:
                front.sendto(data, last[0])

    threading.Thread(target=forward, daemon=True).start()
    threading.Thread(target=reply, daemon=True).start()
    return int(front.getsockname()[1])


def serve_aio(backend: tuple[str, int]) -> None:
    """The services daemon's UDP path: dtp.aio server + relay_udp_async."""
    import asyncio

    import dtp.aio
    from dtp.hostid.udp._asyncio import relay_udp_async

    identity = HostIdentity.generate()

    async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        await relay_udp_async(reader, writer, backend)

    async def run() -> None:
        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        info = {"port": server.address[1], "key": identity.noise_public.hex()}
        print(json.dumps(info), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    dtp.eventloop.run(run())


def main() -> None:
    kind = sys.argv[1]
    backend = echo_backend()
    if kind == "plain":
        print(json.dumps({"port": plain_relay(backend), "key": ""}), flush=True)
    elif kind == "dtp-aio":
        serve_aio(backend)
        return
    else:
        identity = HostIdentity.generate()
        server = dtp.socket.create_server(("127.0.0.1", 0), identity=identity)
        handler = functools.partial(relay_udp, backend=backend)
        threading.Thread(target=server.serve_forever, args=(handler,), daemon=True).start()
        info = {"port": server.address[1], "key": identity.noise_public.hex()}
        print(json.dumps(info), flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin (or kills us)


if __name__ == "__main__":
    main()
