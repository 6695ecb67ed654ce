"""A paid server killed (SIGKILL) while its client's connection is open, and down past
the client's half-close timeout: it keeps what the client's receipts covered, because it
claimed them while the connection lived (docs/escrow.md §7.1, "Claims while a
connection lives"), by amount or by age. Without those claims it claimed only at a
connection's end, which it never saw: the client half-closed as its connection broke,
settled alone once the timeout had passed and took the whole deposit back -- 550 MIST
signed, 0 paid, 1,000 refunded. And a server back before the timeout claims at its
start what its store holds, whatever the claims while live did.

The server runs in its own OS process (tests/paid/servers.py) on the LocalLedger file
the client uses here; the ten minutes pass by moving that file's clock."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtp.errors import ConnectionStateError, DTPError
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import HALF_CLOSE_TIMEOUT_MS, Sla
from dtp.ledger.receipt import U64_MAX
from dtp.payments._refunder import collect_refund
from dtp.payments.metering import MeteringConfig
from dtp.payments.receipt_store import ReceiptStore
from dtp.socket import DTPSocket
from tests.paid.servers import SERVER, World, fund, hosted_world, paid_server
from tests.support.paid_twins import ident
from tests.support.polling import wait_for

#: 10 MIST per KiB, nothing per request: the echo of 27.5 KiB (55 KiB both ways) costs
#: 550 MIST; a deposit of 1,000, the least the service takes.
SLA = Sla(price_per_kib=10, price_per_request=0, min_deposit=1_000)
DEPOSIT = 1_000
ECHOED = 28_160  # bytes each way: 55 KiB in all
SIGNED = 550
#: The client signs whatever it used a tenth of a second after it used it.
METERING = MeteringConfig(every_bytes=1024, every_ms=100)
#: How the server claims: by amount (any, on a LocalLedger: it charges no gas), or by
#: age only (a receipt unclaimed for 0.2 % of the 600 s timeout, 1.2 s), or not at all.
BY_AMOUNT = ("--claim-interval", "0.2")
BY_AGE = ("--claim-above", str(U64_MAX), "--claim-age", "0.002", "--claim-interval", "0.2")
NEVER = ("--claim-above", str(U64_MAX), "--claim-age", "none")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with hosted_world(tmp_path, SLA) as made:
        yield made


def _used(world: World, client: HostIdentity) -> tuple[DTPSocket, str]:
    """``client`` connects, has 55 KiB echoed and signs for it (550 MIST), which the
    server stores: the connection, and its ID."""
    sock = world.connect(client, DEPOSIT, metering=METERING)
    cid = sock.connection_id
    assert cid is not None
    sock.sendall(b"x" * ECHOED)
    got = 0
    while got < ECHOED:
        got += len(sock.recv(ECHOED - got))
    payment = sock._engine.hook
    assert payment is not None
    assert wait_for(lambda: (r := payment.meter.latest) is not None and r.total_amount == SIGNED)
    with ReceiptStore(world.receipts) as store:
        assert wait_for(
            lambda: (s := store.latest(cid)) is not None and s.receipt.total_amount == SIGNED
        )
    return sock, cid


def _client_leaves(sock: DTPSocket) -> None:
    """The client's connection broke with its server: it closes (its final receipt goes
    nowhere) and half-closes on the ledger. Its settlement is the test's to make (not
    the process's refund collector, which would settle once the timeout passed)."""
    payment = sock._engine.hook
    assert payment is not None
    payment.collect_refunds = False
    with contextlib.suppress(DTPError, OSError):
        sock.close()


def _balances(world: World, client: HostIdentity) -> tuple[int, int]:
    return world.ledger.balance(SERVER.sui_address), world.ledger.balance(client.sui_address)


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
@pytest.mark.parametrize(
    ("claims", "kept"),
    [(BY_AMOUNT, SIGNED), (BY_AGE, SIGNED), (NEVER, 0)],
    ids=["by-amount", "by-age", "never"],
)
def test_a_server_down_past_the_timeout_keeps_what_it_claimed_while_live(
    world: World, api: str, claims: tuple[str, ...], kept: int
) -> None:
    client = ident(0x5A)
    fund(world, client, amount=10_000)
    server_before, client_before = _balances(world, client)
    with paid_server(world, api=api, claims=claims) as (proc, _):
        sock, cid = _used(world, client)
        if kept:
            assert wait_for(lambda: world.claimed(cid) == SIGNED, 15)
        proc.kill()  # (down from now on, for longer than the half-close timeout)
        proc.wait(10)
    _client_leaves(sock)
    ledger = world.ledger
    assert ledger.get_connection(cid).half_closed_at_ms is not None
    ledger.advance_clock(HALF_CLOSE_TIMEOUT_MS + 1_000)
    refunded = collect_refund(ledger, client, cid)  # (the client settles alone)
    with paid_server(world, api=api, claims=claims) as (_, info):
        # back, it finds the connection settled: nothing more to claim
        assert info["recovered"] == 0
    with ReceiptStore(world.receipts) as store:
        assert list(store.unclaimed()) == []  # (done with: never tried again)
    escrow = ledger.get_escrow(ledger.get_connection(cid).escrow)
    assert escrow.settled
    # what the receipts covered, to the MIST (never: the figures of a server that
    # claimed only at the ends it saw -- 550 signed, 0 paid, all 1,000 refunded)
    assert (escrow.claimed, refunded, escrow.refunded) == (kept, DEPOSIT - kept, DEPOSIT - kept)
    server_after, client_after = _balances(world, client)
    assert server_after - server_before == kept
    assert client_before - client_after == kept
    assert world.conserved()


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_a_server_back_before_the_timeout_claims_what_its_store_holds_at_its_start(
    world: World, api: str
) -> None:
    client = ident(0x5B)
    fund(world, client, amount=10_000)
    server_before, _ = _balances(world, client)
    # no claims while live: all 550 MIST wait in the store
    with paid_server(world, api=api, claims=NEVER) as (proc, _):
        sock, cid = _used(world, client)
        proc.kill()
        proc.wait(10)
    _client_leaves(sock)
    ledger = world.ledger
    tc = ledger.get_connection(cid)
    assert tc.half_closed_at_ms is not None and not tc.settled
    # a second before the client may settle alone
    ledger.advance_clock(HALF_CLOSE_TIMEOUT_MS - 1_000)
    with pytest.raises(ConnectionStateError) as refused:
        collect_refund(ledger, client, cid)
    assert refused.value.name == "ETimeoutNotReached"
    with paid_server(world, api=api, claims=NEVER) as (_, info):
        assert info["recovered"] == 1  # (at its start, before it serves)
    escrow = ledger.get_escrow(tc.escrow)
    assert escrow.settled and (escrow.claimed, escrow.refunded) == (SIGNED, DEPOSIT - SIGNED)
    assert ledger.balance(SERVER.sui_address) - server_before == SIGNED
    assert world.conserved()
