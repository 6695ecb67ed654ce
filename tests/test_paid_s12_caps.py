"""A spending cap its owner lowers while a paid connection is open (docs/escrow.md §4:
"applies at once"; §6.1: a receipt counts only if the cap lets the server claim it): the
server reads the caps of its open connections again with the Host, stops counting
receipts beyond the lowered cap, and settles on the last one the cap pays. Real
LocalLedger file, real DTP connection on 127.0.0.1, the server in this process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp.socket
from dtp.chain.local import LocalLedger
from dtp.chain.objects import Sla
from dtp.errors import DTPError, PaymentRequired
from dtp.escrow import fee
from dtp.metering import MeteringConfig
from dtp.paid import PaidSocket, ServicePolicy
from tests.paid_twins import funded_ledger, ident
from tests.polling import wait_for

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
PORT = 7000
ALLOWANCE = 500
# refresh_interval long: the test refreshes itself, at the moment it chooses
POLICY = ServicePolicy(allowance=ALLOWANCE, pause_timeout=0.5, refresh_interval=3600)
DEPOSIT = 200_000
LOWERED = 6000

SERVER, CLIENT = ident(0x63), ident(0x64)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LocalLedger]:
    with funded_ledger(tmp_path, CLIENT) as ledger:
        yield ledger


def test_a_cap_lowered_while_open_stops_the_receipts_it_would_not_pay(
    ledger: LocalLedger, tmp_path: Path
) -> None:
    # the gate kept the cap as admission read it: it counted receipts up to the whole
    # deposit, served 4 MiB on them, and the settlement's claim was refused whole (the
    # receipt was beyond the lowered cap): nothing paid, the client refunded in full
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "caps", SLA)

    def handler(sock: PaidSocket) -> None:
        assert sock.recv(2) == b"go"
        chunk = b"x" * (64 << 10)
        with pytest.raises(DTPError):
            while True:
                sock.sendall(chunk)

    with dtp.socket.serve(
        host_id,
        PORT,
        handler,
        ledger=ledger,
        identity=SERVER,
        receipts=tmp_path / "receipts.db",
        policy=POLICY,
    ) as server:
        got = 0
        error: DTPError | None = None
        with dtp.socket.create_connection(
            f"dtp://{host_id}:{PORT}",
            timeout=20,
            ledger=ledger,
            identity=CLIENT,
            deposit=DEPOSIT,
            metering=MeteringConfig(every_bytes=16 << 10),
        ) as sock:
            cid = sock.connection_id
            assert cid is not None
            sock.sendall(b"go")
            while got < 200 << 10:  # 2000 MIST of service, paid as it comes
                got += len(sock.recv(1 << 16))
            cap = ledger.get_escrow(ledger.get_connection(cid).escrow).spending_cap
            ledger.set_max_per_epoch(CLIENT, cap, LOWERED)
            server.refresh_policy()
            try:
                while got < 4 << 20:
                    data = sock.recv(1 << 16)
                    if not data:
                        break
                    got += len(data)
            except DTPError as exc:
                error = exc
        # (before, the claim was refused and the connection left unsettled)
        settled = wait_for(lambda: ledger.get_connection(cid).settled, timeout=3)
    escrow = ledger.get_escrow(ledger.get_connection(cid).escrow)
    # nothing beyond the allowance went unpaid
    assert fee(SLA, got + 2, 1) - escrow.claimed <= ALLOWANCE + 1, (got, escrow.claimed)
    assert isinstance(error, PaymentRequired)
    # service stops at the lowered limit; what was served up to it (receipts for
    # bytes in flight included) is paid, the claims keeping the limit at open
    assert settled and 0 < escrow.claimed <= LOWERED + ALLOWANCE
    assert escrow.refunded == DEPOSIT - escrow.claimed
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
