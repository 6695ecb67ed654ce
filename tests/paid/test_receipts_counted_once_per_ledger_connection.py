"""One ledger connection, one DTP connection at a time (docs/escrow.md §6.1: the server
admits "an Open connection of this client"; every receipt is checked "against the
escrow"), on both paid servers: a second DTP connection naming a connection ID the
server is serving, or one whose receipts its store holds, is refused. Served on a gate
of its own, it counted the first one's receipts again -- a client paid once for 1 MiB
was served 2 -- and took a second allowance on credit from one escrow. Real LocalLedger
file, real DTP connections on 127.0.0.1, the server in this process.

(tests/hostid/test_one_dtp_connection_per_ledger_connection.py is the rule of any server
admitting through the ledger, for the Host's connection limits; this one is the paid
server's, for its receipts and allowance.)"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp.socket
from dtp.errors import DTPError
from dtp.hostid.paid import ServicePolicy
from dtp.ledger._objects import ConnectionState, Sla
from dtp.ledger.local import LocalLedger
from dtp.payments.metering import MeteringConfig
from tests.paid.conftest import Driver
from tests.support.paid_twins import again, funded_ledger, ident
from tests.support.polling import wait_for
from tests.support.settlements import settled_escrow

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
PORT = 7000
ALLOWANCE = 500
# (a paused stream waits up to 10 s for its receipt: a client starved of the CPU for
# half a second on a loaded machine is still paying, and these tests are not about that)
POLICY = ServicePolicy(allowance=ALLOWANCE, pause_timeout=10.0)
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


#: a receipt every 16 KiB
METERING = MeteringConfig(every_bytes=16 << 10)


def _connect(ledger: LocalLedger, host_id: str) -> dtp.socket.DTPSocket:
    return dtp.socket.create_connection(
        f"dtp://{host_id}:{PORT}",
        timeout=20,
        ledger=ledger,
        identity=CLIENT,
        deposit=DEPOSIT,
        metering=METERING,
    )


def test_a_second_dtp_connection_on_a_live_connection_id_is_refused(
    ledger: LocalLedger, driver: Driver
) -> None:
    with driver.connected(
        ledger,
        "streams_forever",
        host=SERVER,
        client=CLIENT,
        port=PORT,
        sla=SLA,
        deposit=DEPOSIT,
        kind="twice",
        metering=METERING,
        timeout=20,
        policy=POLICY,
    ) as (server, first):
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
        # admitted by the ledger, refused by the reservation: what the admission read
        # of it is dropped with the refusal, not kept until REMEMBERED newer ones come
        assert wait_for(lambda: not server.admission._admitted, 3)
        # the first one is served on as before
        assert first.recv(1 << 16)
    escrow = settled_escrow(ledger, cid)
    assert escrow.claimed >= paid.total_amount
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


def test_a_connection_id_whose_receipts_the_store_holds_is_refused(
    ledger: LocalLedger,
    tmp_path: Path,
    driver: Driver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the first DTP connection ended and its settlement could not claim (the ledger out
    # of reach, say: done here by a settlement that does nothing), so its receipts wait
    # in the store for a later claim. A new DTP connection on the same ID was served on
    # a fresh gate, which counted the amount of the stored receipt once more
    monkeypatch.setattr("dtp.hostid.paid._server_books.settle_ended", lambda *args, **kwargs: None)
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "twice", SLA)
    with driver.serve(
        host_id,
        PORT,
        "streams_forever",
        ledger=ledger,
        identity=SERVER,
        receipts=tmp_path / "receipts.db",
        policy=POLICY,
    ) as server:
        with _connect(ledger, host_id) as first:
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
            address = server.address
            # it ends as a client that died would, without its half-close on the ledger
            payment._finished = True
        # the first one ended (and "settled"): its receipts are in the store, unclaimed,
        # the connection still Open on the ledger
        driver.until_idle(server)
        assert ledger.get_connection(cid).state is ConnectionState.OPEN
        assert server.receipt_writer.latest(cid) is not None
        # the client signs the same cumulative amount again under a new nonce: no new
        # money, yet a fresh gate counted it in full
        resigned = dataclasses.replace(paid, nonce=paid.nonce + 1, signature=b"").sign(CLIENT)
        with pytest.raises(DTPError):
            _again(address, cid, resigned.encode())
