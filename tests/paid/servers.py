"""A paid DTP service the tests run in a separate OS process, on a shared LocalLedger file.

    python -m tests.paid.servers LEDGER HOST_ID PORT SEED_HEX RECEIPTS
        [--api blocking|asyncio] [--mode echo|sink] [--pause-timeout S] [--refresh S]

The host (authority = the identity from SEED_HEX) and its service must exist. Prints
one JSON line {"port", "recovered"} once serving (the endpoint is published in the Host
by then), then serves until killed. Modes: ``echo`` echoes every stream; ``sink`` counts
the bytes of the first stream until EOF and replies with the count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import threading

import dtp.aio
import dtp.socket
from dtp.chain.local import LocalLedger
from dtp.hostid.paid import PaidSocket, ServicePolicy
from dtp.hostid.paid.aio import PaidReader, PaidWriter
from dtp.keys import HostIdentity


def _announce(port: int, recovered: int) -> None:
    print(json.dumps({"port": port, "recovered": recovered}), flush=True)


def serve_blocking(args: argparse.Namespace, identity: HostIdentity, policy: ServicePolicy) -> None:
    def echo_stream(sock: PaidSocket) -> None:
        while data := sock.recv(65536):
            sock.sendall(data)

    def handle(sock: PaidSocket) -> None:
        if args.mode == "sink":
            total = 0
            while data := sock.recv(1 << 16):
                total += len(data)
            sock.sendall(str(total).encode())
            return

        def extra() -> None:
            while True:
                try:
                    stream = sock.accept_stream()
                except Exception:
                    return
                threading.Thread(target=echo_stream, args=(stream,), daemon=True).start()

        threading.Thread(target=extra, daemon=True).start()
        echo_stream(sock)

    server = dtp.socket.serve(
        args.host_id,
        args.port,
        handle,
        ledger=LocalLedger(args.ledger),
        identity=identity,
        receipts=args.receipts,
        policy=policy,
    )
    _announce(server.address[1], len(server.recovered))
    server.serve_forever()


async def serve_asyncio(
    args: argparse.Namespace, identity: HostIdentity, policy: ServicePolicy
) -> None:
    async def handle(reader: PaidReader, writer: PaidWriter) -> None:
        if args.mode == "sink":
            total = 0
            while data := await reader.read(1 << 16):
                total += len(data)
            writer.write(str(total).encode())
            await writer.drain()
            return
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

    server = await dtp.aio.serve(
        args.host_id,
        args.port,
        handle,
        ledger=LocalLedger(args.ledger),
        identity=identity,
        receipts=args.receipts,
        policy=policy,
    )
    _announce(server.address[1], len(server.recovered))
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("ledger")
    parser.add_argument("host_id")
    parser.add_argument("port", type=int)
    parser.add_argument("seed")
    parser.add_argument("receipts")
    parser.add_argument("--api", choices=["blocking", "asyncio"], default="blocking")
    parser.add_argument("--mode", choices=["echo", "sink"], default="echo")
    parser.add_argument("--pause-timeout", type=float, default=10.0)
    parser.add_argument("--refresh", type=float, default=2.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    seed = bytes.fromhex(args.seed)
    identity = HostIdentity.from_private_bytes(seed, seed)
    policy = ServicePolicy(pause_timeout=args.pause_timeout, refresh_interval=args.refresh)
    if args.api == "blocking":
        serve_blocking(args, identity, policy)
    else:
        asyncio.run(serve_asyncio(args, identity, policy))


if __name__ == "__main__":
    sys.exit(main())
