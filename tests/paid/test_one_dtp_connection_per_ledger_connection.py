"""One ledger connection, one DTP connection at a time (docs/escrow.md §6.1: the server
admits "an Open connection of this client"; every receipt is checked "against the
escrow"): a second DTP connection naming a connection ID the server is serving (or has
not settled yet) is refused. Served on its own gate, it counted the receipts of the
first again -- a client paid once for twice the service -- and took a second allowance
on credit from one escrow. Real LocalLedger file, real DTP connections on 127.0.0.1, the
server in this process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp.socket
from dtp.chain.local import LocalLedger
from dtp.chain.objects import Sla
from dtp.errors import DTPError
from dtp.hostid.paid import ServicePolicy
from dtp.metering import MeteringConfig
from tests.support.paid_twins import again, funded_ledger, ident, streams_forever

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
PORT = 7000
ALLOWANCE = 500
POLICY = ServicePolicy(allowance=ALLOWANCE, pause_timeout=0.5)
DEPOSIT = 200_000
FIRST = 1 << 20

SERVER, CLIENT = ident(0x65), ident(0x66)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LocalLedger]:
    with funded_ledger(tmp_path, CLIENT) as ledger:
        yield ledger


def _again(address: tuple[str, int], cid: str, receipt: bytes) -> int:
    return again(
        address, cid, receipt, client=CLIENT, server_key=SERVER.noise_public, port=PORT, limit=FIRST
    )


def test_a_second_dtp_connection_on_a_live_connection_id_is_refused(
    ledger: LocalLedger, tmp_path: Path
) -> None:
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "twice", SLA)
    with (
        dtp.socket.serve(
            host_id,
            PORT,
            streams_forever,
            ledger=ledger,
            identity=SERVER,
            receipts=tmp_path / "receipts.db",
            policy=POLICY,
        ) as server,
        dtp.socket.create_connection(
            f"dtp://{host_id}:{PORT}",
            timeout=20,
            ledger=ledger,
            identity=CLIENT,
            deposit=DEPOSIT,
            metering=MeteringConfig(every_bytes=16 << 10),
        ) as first,
    ):
        cid = first.connection_id
        assert cid is not None
        first.sendall(b"go")
        got = 0
        while got < FIRST:
            got += len(first.recv(1 << 16))
        payment = first._engine.hook
        assert payment is not None
        paid = payment.meter.latest
        assert paid is not None and paid.total_amount > 9000
        # the same connection ID again, from the same client, with the first one's
        # receipt: before, 1 MiB more was served on it
        with pytest.raises(DTPError):
            _again(server.address, cid, paid.encode())
        # the first one is served on as before
        first.recv(1 << 16)
    escrow = ledger.get_escrow(ledger.get_connection(cid).escrow)
    assert escrow.claimed >= paid.total_amount
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
