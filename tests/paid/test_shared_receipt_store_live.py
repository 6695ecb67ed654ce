"""Two paid servers on one receipt store file (docs/escrow.md §6.1: a server claims at
start what its store holds unclaimed). Started while another server was live on the same
file -- two services of one host configured with the same ``receipts=`` path -- the
second claimed the first's live connections' receipts: it settled those connections on
the ledger under the first (the client refunded the rest at once), and all the first
served after that was never paid. Real LocalLedger file, real DTP connections on
127.0.0.1, servers in this process and a store held by another process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp.aio
import dtp.socket
from dtp.hostid.paid import ServicePolicy
from dtp.ledger._objects import ConnectionState, Sla
from dtp.ledger.local import LocalLedger
from dtp.payments.metering import MeteringConfig
from dtp.payments.receipt_store import ReceiptStore
from dtp.payments.receipts import Receipt, fee
from tests.support.paid_twins import funded_ledger, ident, loop_in_thread, stop, streams_forever
from tests.support.settlements import is_settled, settled_escrow

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
FIRST, SECOND = 7000, 7001
POLICY = ServicePolicy(allowance=500, pause_timeout=2)
DEPOSIT = 200_000
SERVED = 1 << 20

SERVER, CLIENT = ident(0x71), ident(0x72)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LocalLedger]:
    with funded_ledger(tmp_path, CLIENT) as ledger:
        yield ledger


def conserved(ledger: LocalLedger) -> bool:
    audit = ledger.audit()
    return audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


def _host(ledger: LocalLedger) -> str:
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, FIRST, "first", SLA)
    ledger.add_service(SERVER, host_id, SECOND, "second", SLA)
    return host_id


def _paid_and_receipted(client: dtp.socket.DTPSocket, server: object) -> int:
    """Read SERVED bytes; the amount of the client's latest receipt once the server
    has it on disk."""
    client.sendall(b"go")
    got = 0
    while got < SERVED:
        got += len(client.recv(1 << 16))
    payment = client._engine.hook
    assert payment is not None and payment.meter.latest is not None
    return payment.meter.latest.total_amount


@pytest.mark.parametrize("second_api", ["blocking", "asyncio"])
def test_a_server_started_on_a_live_servers_store_leaves_its_receipts(
    ledger: LocalLedger, tmp_path: Path, second_api: str
) -> None:
    host_id = _host(ledger)
    receipts = tmp_path / "receipts.db"
    with (
        dtp.socket.serve(
            host_id,
            FIRST,
            streams_forever,
            ledger=ledger,
            identity=SERVER,
            receipts=receipts,
            policy=POLICY,
        ) as first,
        dtp.socket.create_connection(
            f"dtp://{host_id}:{FIRST}",
            timeout=20,
            ledger=ledger,
            identity=CLIENT,
            deposit=DEPOSIT,
            metering=MeteringConfig(every_bytes=16 << 10),
        ) as client,
    ):
        cid = client.connection_id
        assert cid is not None
        paid = _paid_and_receipted(client, first)
        assert first.receipt_writer.flush()
        with ReceiptStore(receipts) as look:
            stored = look.latest(cid)
        assert stored is not None and stored.unclaimed > 0  # live, on the shared file
        if second_api == "blocking":
            with dtp.socket.serve(
                host_id,
                SECOND,
                streams_forever,
                ledger=ledger,
                identity=SERVER,
                receipts=receipts,
                policy=POLICY,
            ) as second:
                recovered = second.recovered
        else:
            with loop_in_thread() as loop:

                async def start_and_stop() -> list[object]:
                    server = await dtp.aio.serve(
                        host_id,
                        SECOND,
                        streams_forever,  # (never called: no client)
                        ledger=ledger,
                        identity=SERVER,
                        receipts=receipts,
                        policy=POLICY,
                    )
                    found = list(server.recovered)
                    await stop(server)
                    return found

                recovered = asyncio.run_coroutine_threadsafe(start_and_stop(), loop).result(10)
        # before: [(cid, settlement)], the connection settled under the first server
        assert recovered == []
        tc = ledger.get_connection(cid)
        assert tc.state == ConnectionState.OPEN and not tc.settled
        # the first server goes on serving, and is paid for it
        more = 0
        while more < SERVED:
            more += len(client.recv(1 << 16))
        later = client._engine.hook.meter.latest
        assert later is not None and later.total_amount > paid
    escrow = settled_escrow(ledger, cid)
    assert is_settled(ledger, cid)
    assert escrow.claimed >= later.total_amount  # before: only what the second claimed
    assert escrow.claimed + escrow.refunded == DEPOSIT
    assert conserved(ledger)


def test_a_store_tells_live_servers_apart_across_handles_and_processes(
    ledger: LocalLedger, tmp_path: Path
) -> None:
    path = tmp_path / "r.db"
    with ReceiptStore(path) as one, ReceiptStore(path) as two:
        assert one.attach_server()  # alone
        assert not one.attach_server()  # a second server on the same handle
        assert not two.attach_server()  # another handle on the file
        one.detach_server()
        assert not two.attach_server()  # the first handle still has a live server
        one.detach_server()
        two.detach_server()
        two.detach_server()
        two.detach_server()  # (more detaches than attaches change nothing)
        assert two.attach_server()  # none left: alone again
        two.detach_server()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from dtp.payments.receipt_store import ReceiptStore\n"
            "s = ReceiptStore(sys.argv[1]); assert s.attach_server()\n"
            "print('held', flush=True); sys.stdin.read(); s.close()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with ReceiptStore(path) as store:
            assert not store.attach_server()  # a server in another process is live
            store.detach_server()
    finally:
        holder.communicate("", timeout=10)
    assert holder.returncode == 0
    with ReceiptStore(path) as store:  # it ended (its lock went with it)
        assert store.attach_server()


def test_a_restart_alone_still_claims_what_the_last_run_left(
    ledger: LocalLedger, tmp_path: Path
) -> None:
    host_id = _host(ledger)
    ledger.faucet(CLIENT.sui_address, 0)
    cap = ledger.create_spending_cap(CLIENT, DEPOSIT)
    opened = ledger.open_connection(CLIENT, host_id, FIRST, cap, DEPOSIT)
    cid = opened.connection_id
    receipt = Receipt(ledger.receipt_scope(cid), 10240, 1, fee(SLA, 10240, 1), 1).sign(CLIENT)
    path = tmp_path / "receipts.db"
    with ReceiptStore(path) as crashed:  # a run that kept a receipt, then died
        assert crashed.keep(receipt)
    with dtp.socket.serve(
        host_id, SECOND, streams_forever, ledger=ledger, identity=SERVER, receipts=path
    ) as server:
        assert [c for c, _ in server.recovered] == [cid]
    assert ledger.get_escrow(opened.escrow_id).claimed == receipt.total_amount
    assert conserved(ledger)
