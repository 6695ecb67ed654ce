"""A paid server and a paying client, each in its own OS process on one LocalLedger file,
for tests that kill them (SIGKILL: nothing of theirs runs after) and look at what the
client's book of refunds lets the next run take back.

    python -m tests.support.refund_procs server LEDGER SEED HOST_ID PORT RECEIPTS
    python -m tests.support.refund_procs client LEDGER SEED ADDRESS BOOK DEPOSIT

Each prints one JSON line once ready -- the server ``{"ready": true}`` once it serves,
the client ``{"connection_id", "cap_id"}`` once its connection carried a ping (recorded
in BOOK, a file of ``refunds_for(..., path=BOOK)``, by ``on_open``) -- then runs until
killed. SEED is one byte in hex (tests.support.paid_inprocess.ident).
"""

from __future__ import annotations

import json
import sys
import time

import dtp.socket
from dtp.hostid.paid import PaidSocket
from dtp.ledger.local import LocalLedger
from dtp.payments._refunds import refunds_for
from tests.support.paid_inprocess import ident


def _echo(sock: PaidSocket) -> None:
    while data := sock.recv(1 << 16):
        sock.sendall(data)


def server(ledger_path: str, seed: str, host_id: str, port: str, receipts: str) -> None:
    served = dtp.socket.serve(
        host_id,
        int(port),
        _echo,
        ledger=LocalLedger(ledger_path),
        identity=ident(int(seed, 16)),
        receipts=receipts,
    )
    print(json.dumps({"ready": True}), flush=True)
    served.serve_forever()


def client(ledger_path: str, seed: str, address: str, book: str, deposit: str) -> None:
    ledger = LocalLedger(ledger_path)
    me = ident(int(seed, 16))
    refunds = refunds_for(ledger, me, path=book)
    sock = dtp.socket.create_connection(
        address, 10, ledger=ledger, identity=me, deposit=int(deposit), on_open=refunds.record_open
    )
    sock.sendall(b"ping")
    assert sock.recv(4) == b"ping"
    tc = ledger.get_connection(sock.connection_id or "")
    print(json.dumps({"connection_id": tc.id, "cap_id": tc.spending_cap}), flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    {"server": server, "client": client}[role](*args)
