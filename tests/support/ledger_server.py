"""A DTP host reachable only through the ledger carrier, run in its own OS process.

    python -m tests.support.ledger_server LEDGER_PATH SEED HOST_ID PORT MODE \
        [--loss P] [--duplicate P] [--reorder P]

The host identity is derived from SEED (the test registers the Host with the same key).
Prints one JSON line {"address"} once listening, then serves until killed. Modes: echo
(every byte back until EOF, then EOF), sink (count bytes until EOF, reply the count).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import dtp.socket
from dtp.hostid.ledger_carrier._bridge import LedgerCarrierOptions
from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger
from tests.support.ledger_faults import impair


def identity_from_seed(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("ledger")
    parser.add_argument("seed", type=int)
    parser.add_argument("host_id")
    parser.add_argument("port", type=int)
    parser.add_argument("mode", choices=["echo", "sink"])
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--duplicate", type=float, default=0.0)
    parser.add_argument("--reorder", type=float, default=0.0)
    args = parser.parse_args()
    if os.environ.get("DTP_TEST_DEBUG"):
        logging.basicConfig(level=logging.DEBUG, format="%(threadName)s %(name)s %(message)s")
    identity = identity_from_seed(args.seed)
    ledger = LocalLedger(args.ledger)
    wrap, _ = impair(
        seed=args.seed * 1000, loss=args.loss, duplicate=args.duplicate, reorder=args.reorder
    )
    server = dtp.socket.create_server(
        None,
        identity=identity,
        ledger=ledger,
        host_id=args.host_id,
        port=args.port,
        ledger_options=LedgerCarrierOptions(ledger_filter=wrap),
    )
    print(json.dumps({"address": identity.sui_address}), flush=True)

    def handle(sock: dtp.socket.DTPSocket) -> None:
        if args.mode == "sink":
            total = 0
            while data := sock.recv(1 << 20):
                total += len(data)
            sock.sendall(str(total).encode())
            return
        total = 0
        while data := sock.recv(1 << 20):
            total += len(data)
            sock.sendall(data)
        logging.getLogger("ledger_server").debug(
            "echoed %d bytes; %s", total, sock._engine.session.terminated
        )
        sock.shutdown(dtp.socket.SHUT_WR)
        sock.recv(1)  # until the client closes: our last bytes are acknowledged by then

    server.serve_forever(handle)


if __name__ == "__main__":
    sys.exit(main())
