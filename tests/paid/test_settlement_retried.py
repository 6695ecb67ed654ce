"""A live paid server retries its own failed settlements. A connection whose
settlement failed as it ended (the ledger briefly unavailable)
stays Open on the ledger, its final receipt kept in the store. Each recovery round
retries the settlements of the server's own connections that claimed nothing
(SettlementRetries), not only the receipts of dead server runs, with a backoff and one
warning, never one being served, and not after close(): the kept receipt does not wait
for the server's next start, while the client, which half-closed the connection as it
left, could settle alone and take the receipted fee back with its deposit.

Real LocalLedger files, real receipt stores, real paid servers on 127.0.0.1 and real SDK
clients (metered, half-closing on the ledger); the outage is a ledger wrapper raising
LedgerUnavailable at the server's settlement calls only."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.hostid.paid._aio
import dtp.hostid.paid._blocking_server
import dtp.payments._serving
import dtp.socket
from dtp.errors import ConnectionStateError
from dtp.hostid.paid import PaidServer
from dtp.hostid.paid._aio import PaidAioServer
from dtp.ledger._objects import ConnectionState, Settlement, Sla
from dtp.payments._receipt_writer import ReceiptWriter
from dtp.payments._settlement import collect_refund
from dtp.payments.receipt_store import ReceiptStore
from dtp.payments.receipts import Receipt, fee
from tests.paid.conftest import exchange
from tests.support.paid_twins import (
    OutageLedger,
    PaidWorld,
    echo,
    echo_aio,
    hosted_ledgers,
    ident,
    loop_in_thread,
    stop,
)
from tests.support.polling import wait_for
from tests.support.scopes import scope_of
from tests.support.settlements import is_settled

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
SERVER = ident(0xC5)
CLIENT = ident(0xC6)
PORT = 35
DEPOSIT = 200_000
ROUND = 0.05  # RECOVERY_INTERVAL here (30 s in production)
CLAIM_HELD = 30.0  # the most a claim is held for the test (a close() that waits for it)
APIS = ["blocking", "asyncio"]


class World(PaidWorld):
    def connect(self) -> dtp.socket.DTPSocket:
        return self.connect_as(CLIENT, PORT, DEPOSIT)

    def settled(self, cid: str) -> bool:
        return is_settled(self.ledger, cid)

    def conserved(self) -> None:
        audit = self.ledger.audit()
        assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with hosted_ledgers(tmp_path, SERVER, CLIENT, PORT, SLA) as ledgers:
        yield World(*ledgers, tmp_path)


@pytest.fixture(autouse=True)
def short_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dtp.payments._serving, "RECOVERY_INTERVAL", ROUND)


def _session(world: World) -> str:
    """A paid connection served, then closed by the client: its ledger connection ID."""
    with world.connect() as sock:
        cid = sock.connection_id
        assert cid is not None
        exchange(sock, 4)
    return cid


@contextmanager
def _serving(api: str, world: World, ledger: Any, receipts: Path) -> Iterator[Any]:
    """A paid echo server of the kind ``api`` on ``ledger``, closed and released at the
    end of the block (the caller may have closed it already)."""
    if api == "blocking":
        server = PaidServer(
            world.host_id, PORT, echo, ledger=ledger, identity=SERVER, receipts=receipts
        )
        try:
            yield server
        finally:
            server.close()
            assert server.wait_released(30)
        return
    with loop_in_thread() as loop:
        started = dtp.aio.serve(
            world.host_id, PORT, echo_aio, ledger=ledger, identity=SERVER, receipts=receipts
        )
        aio: PaidAioServer = asyncio.run_coroutine_threadsafe(started, loop).result(30)
        aio.test_loop = loop  # type: ignore[attr-defined]
        try:
            yield aio
        finally:
            assert asyncio.run_coroutine_threadsafe(_released(aio), loop).result(60)


async def _released(server: PaidAioServer) -> bool:
    """Close the asyncio server (on its loop) and wait for its release."""
    await stop(server)
    return await server.wait_released(30)


def _settlements(server: Any, cid: str) -> list[Settlement]:
    return [s for c, s in list(server.settlements) if c == cid]


def _kept(server: Any, cid: str) -> Receipt:
    """The receipt the server keeps for ``cid``, unclaimed."""
    stored = server.receipt_writer.latest(cid)
    assert stored is not None and stored.unclaimed == stored.receipt.total_amount > 0
    return stored.receipt


def _rounds_pass(server: Any, n: int) -> None:
    """Wait until ``n`` more recovery rounds have started."""
    start = server.retries.rounds
    assert wait_for(lambda: server.retries.rounds >= start + n, 10)


def _failed_settlement(world: World, server: Any, outage: OutageLedger) -> tuple[str, Receipt]:
    """A session whose settlement fails (the ledger away as it ends): the client has
    half-closed the connection on the ledger, the server keeps its receipt."""
    refused = outage.refused
    cid = _session(world)
    assert wait_for(lambda: outage.refused > refused and cid not in server._serving, 10)
    tc = world.ledger.get_connection(cid)
    assert tc.state != ConnectionState.OPEN and not tc.settled  # (the client half-closed)
    assert world.claimed(cid) == 0
    return cid, _kept(server, cid)


@pytest.mark.parametrize("api", APIS)
def test_a_failed_settlement_is_claimed_by_the_live_server(
    api: str, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    receipts = world.tmp_path / "receipts.db"
    outage = OutageLedger(world.server_ledger)
    with (
        caplog.at_level(logging.DEBUG, logger="dtp.payments._serving"),
        _serving(api, world, outage, receipts) as server,
    ):
        outage.down.set()
        cid, kept = _failed_settlement(world, server, outage)
        # retried while the ledger is away: each retry fails, with a backoff
        assert wait_for(lambda: outage.refused >= 4, 10)
        assert world.claimed(cid) == 0 and not world.settled(cid)
        # the client cannot settle alone yet (its half-close timeout runs)
        with pytest.raises(ConnectionStateError):
            collect_refund(world.ledger, CLIENT, cid)
        balance = world.ledger.balance(CLIENT.sui_address)
        outage.down.clear()  # the ledger is back: the same server, not restarted, claims

        assert wait_for(lambda: _settlements(server, cid), 10)
        [settlement] = _settlements(server, cid)
        assert settlement.claimed == kept.total_amount
        assert settlement.claimed + settlement.refunded == DEPOSIT
        assert world.settled(cid) and world.claimed(cid) == kept.total_amount
        assert cid not in server.retries
        assert cid not in dict(server.recovered)  # its own, not a dead run's
        # claimed once: later rounds leave it alone, and the store marks it claimed
        _rounds_pass(server, 3)
        assert len(_settlements(server, cid)) == 1
        assert server.receipt_writer.flush(cid, 10)
        stored = server.store.latest(cid)
        assert stored is not None and stored.unclaimed == 0
        # the client's refund is the settlement's
        assert collect_refund(world.ledger, CLIENT, cid) == settlement.refunded
        assert world.ledger.balance(CLIENT.sui_address) == balance + settlement.refunded
    world.conserved()
    retries = [r for r in caplog.records if "retrying the settlement of connection" in r.message]
    # one warning for the retries that failed, however many there were
    assert [r.levelno for r in retries] == [logging.WARNING], [r.message for r in retries]
    assert [r for r in caplog.records if r.message.startswith("retry ") and cid in r.message]


@pytest.mark.parametrize("api", APIS)
def test_the_retry_leaves_a_connection_being_served_alone(api: str, world: World) -> None:
    receipts = world.tmp_path / "receipts.db"
    outage = OutageLedger(world.server_ledger)
    with _serving(api, world, outage, receipts) as server:
        outage.down.set()
        failed, kept = _failed_settlement(world, server, outage)
        with world.connect() as live:
            live_cid = live.connection_id
            assert live_cid is not None
            exchange(live, 4)
            assert wait_for(lambda: server.receipt_writer.latest(live_cid) is not None, 10)
            outage.down.clear()
            assert wait_for(lambda: _settlements(server, failed), 10)
            # named for a retry too, it is skipped while it is served: the retry
            # reserves its ID as a new DTP connection on it would
            server.retries.add(live_cid)
            _rounds_pass(server, 3)
            assert world.claimed(failed) == kept.total_amount
            tc = world.ledger.get_connection(live_cid)
            assert tc.state == ConnectionState.OPEN and not tc.settled
            assert world.claimed(live_cid) == 0 and not _settlements(server, live_cid)
            assert live_cid in server.retries
            exchange(live, 4)  # served on
        # its own settlement as it ends; the retry then finds it claimed: not twice
        assert wait_for(lambda: _settlements(server, live_cid), 10)
        assert wait_for(lambda: live_cid not in server.retries, 10)
        [settlement] = _settlements(server, live_cid)
        assert settlement.claimed > 0
        assert settlement.claimed + settlement.refunded == DEPOSIT
        assert world.claimed(live_cid) == settlement.claimed
        assert len(_settlements(server, failed)) == 1
    world.conserved()


@pytest.mark.parametrize("api", APIS)
def test_close_stops_the_retries_between_claims(
    api: str, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() during a retry's claim: the claim under way ends, no other is made (the
    other kept receipt is claimed by the next start), and the blocking close() does not
    wait for the claim."""
    monkeypatch.setattr(dtp.hostid.paid._blocking_server, "RECOVERY_CLOSE_WAIT", 0.2)
    receipts = world.tmp_path / "receipts.db"
    outage = OutageLedger(world.server_ledger)
    started = threading.Event()
    # each retry's claim is held until the test has closed the server: it cannot end
    # (and the next one begin) before the close, however late a loaded machine runs it
    closed = threading.Event()
    claims: list[bool] = []  # per claim held: whether the close let it go (else its bound)
    real = dtp.payments._serving.claim_and_settle

    # a claim begun under the outage runs whole with it (the gate held): one that saw
    # the outage here and then reached a ledger already back would settle unheld
    gate = threading.Lock()

    def held(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == "dtp-paid-recovery":
            with gate:
                if outage.down.is_set():
                    return real(*args, **kwargs)
            started.set()
            claims.append(closed.wait(CLAIM_HELD))
        return real(*args, **kwargs)

    monkeypatch.setattr(dtp.payments._serving, "claim_and_settle", held)
    with _serving(api, world, outage, receipts) as server:
        outage.down.set()
        first, _ = _failed_settlement(world, server, outage)
        second, _ = _failed_settlement(world, server, outage)
        with gate:
            outage.down.clear()
        assert started.wait(10)
        if api == "blocking":
            server.close()
            assert not claims  # close() returned with the claim held: it did not wait for it
            closed.set()
            assert server.wait_released(30)
        else:
            loop = server.test_loop
            asyncio.run_coroutine_threadsafe(stop(server), loop).result(30)
            closed.set()
            assert asyncio.run_coroutine_threadsafe(_released(server), loop).result(30)
        assert claims == [True]  # the one claim under way, let go after the close
        done = [cid for cid in (first, second) if world.settled(cid)]
        assert len(done) == 1
        assert [c for c, _ in server.settlements if c in (first, second)] == done
    [left] = {first, second} - set(done)
    assert not world.settled(left)
    # the next start claims what is left
    with PaidServer(
        world.host_id, PORT, echo, ledger=world.server_ledger, identity=SERVER, receipts=receipts
    ) as restarted:
        recovered = dict(restarted.recovered)
    assert left in recovered
    assert recovered[left].claimed + recovered[left].refunded == DEPOSIT
    assert world.settled(left)
    world.conserved()


def test_the_writer_reports_a_claim_not_yet_marked_in_the_store(tmp_path: Path) -> None:
    """ReceiptWriter.latest() counts the claimed marks still waiting (up to MARK_DELAY)
    for the next write: read before, a claim just made looked unclaimed, and a retry
    asked the ledger for it again."""
    cid = "0x" + "ab" * 32
    receipt = Receipt(scope_of(cid), 4096, 1, fee(SLA, 4096, 1), 1).sign(CLIENT)
    with ReceiptStore(tmp_path / "r.db") as store:
        writer = ReceiptWriter(store)
        try:
            writer.submit(receipt, lambda r: None)
            assert writer.flush(cid, 10)
            writer.mark_claimed(cid, receipt.total_amount)
            stored = writer.latest(cid)
            assert stored is not None and stored.unclaimed == 0
            newer = Receipt(scope_of(cid), 8192, 2, fee(SLA, 8192, 2), 2).sign(CLIENT)
            writer.submit(newer, lambda r: None)  # waiting, above the mark
            stored = writer.latest(cid)
            assert stored is not None and stored.receipt == newer
            assert stored.unclaimed == newer.total_amount - receipt.total_amount
        finally:
            assert writer.close(10)
