"""A blocking metered client whose application is not reading still answers a server's
request for a final receipt in time: its engine is looked at every
``METERED_MAX_WAIT`` seconds, from the start (the timers start once the payment is
set), well within the server's ``final_receipt_timeout`` (1 s by default). It answered
at its next pass, up to a second later: often after the server had settled without
the receipt, the usage since the last one unpaid."""

from __future__ import annotations

import time
from pathlib import Path

import dtp.socket
from dtp.chain.objects import Sla
from dtp.escrow import fee
from dtp.hostid.paid import PaidSocket, ServicePolicy
from dtp.hostid.payment_hook import METERED_MAX_WAIT
from dtp.metering import MeteringConfig
from dtp.transport.blocking.timers import TIMERS
from tests.support.paid_inprocess import ident, paid_service

SLA = Sla(price_per_kib=10, price_per_request=0, min_deposit=1 << 30)
SENT = 100_000
SERVER, CLIENT = ident(0x73), ident(0x74)


def test_an_idle_blocking_client_answers_the_final_receipt_request(tmp_path: Path) -> None:
    def handle(sock: PaidSocket) -> None:
        got = 0
        while got < SENT:
            got += len(sock.recv(65536))
        # and the server ends the connection: it asks for a final receipt first

    # a server less patient than the default, still well above the client's passes
    policy = ServicePolicy(final_receipt_timeout=0.6)
    with paid_service(tmp_path, SERVER, CLIENT, 82, SLA, handle, policy) as service:
        ledger = service.ledger
        for _ in range(3):
            # receipts only when asked (or at the close): what it sent is all unpaid
            with dtp.socket.create_connection(
                service.address,
                timeout=10,
                ledger=ledger,
                identity=CLIENT,
                deposit=1 << 30,
                metering=MeteringConfig(every_bytes=0, every_ms=0),
            ) as sock:
                # the engine's first pass is due within METERED_MAX_WAIT already
                engine = sock._engine
                with TIMERS._lock:
                    due = min(d for d, _, ref in TIMERS._heap if ref() is engine)
                assert due - time.monotonic() <= METERED_MAX_WAIT
                sock.sendall(bytes(SENT))
                cid = sock.connection_id
                assert cid is not None
                # the application does not read: only the engine's passes see the request
                deadline = time.monotonic() + 10
                while not (tc := ledger.get_connection(cid)).settled:
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
            escrow = ledger.get_escrow(tc.escrow)
            # the server settled with the answer: every byte paid
            assert escrow.claimed == fee(SLA, SENT, 1)
