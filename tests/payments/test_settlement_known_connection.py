"""A paid server settles from the connection and escrow its admission read
(dtp.payments._settlement.claim_and_settle, docs/escrow.md §7), though its client may
have moved it since: half-closed it, settled it after the timeout, deleted it, or the
server's own live claim moved its escrow. Where the ledger's refusals cost nothing
(LocalLedger: ``free_refusals``) the connection is not read before the settlement, whose
own checks refuse what no longer fits, and it is read then; on Sui (an aborted
transaction pays gas) it is read first. Either way the money comes out the same: each
case is run on LocalLedger, on LocalLedger made to read first (the reference), and on
SuiLedger over the node stand-in, and compared -- nothing lost, nothing claimed twice,
the refund the rest, the receipt marked done in the store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dtp.errors import ObjectNotFound
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Settlement, Sla
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from dtp.payments._settlement import claim_and_settle
from dtp.payments.receipt_store import ReceiptStore
from dtp.payments.receipts import Receipt, fee

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=1000)
DEPOSIT = 100_000
#: The default half-close timeout, and a millisecond (docs/escrow.md §7.1)
PAST_TIMEOUT = 600_001
BACKENDS = ["local", "local-reading", "sui"]


@dataclass
class World:
    """One backend's ledger, a server with a paid service, and a funded client."""

    ledger: Ledger
    server: HostIdentity
    client: HostIdentity
    host: str
    cap: str
    advance_clock: Callable[[int], object]
    gas_paid: Callable[[str], int]

    def open(self) -> tuple[str, str]:
        opened = self.ledger.open_connection(self.client, self.host, 7, self.cap, DEPOSIT)
        return opened.connection_id, opened.escrow_id

    def receipt(self, cid: str, nbytes: int, nonce: int) -> Receipt:
        scope = self.ledger.receipt_scope(cid)
        return Receipt(scope, nbytes, 1, fee(SLA, nbytes, 1), nonce).sign(self.client)


class _Reading(LocalLedger):
    """LocalLedger as a ledger whose refusals cost gas: the connection is read first."""

    free_refusals = False


def _local(cls: type[LocalLedger], server: HostIdentity, client: HostIdentity) -> LocalLedger:
    ledger = cls(":memory:", clock_ms=1_000_000)
    ledger.faucet(server.sui_address, 10**9)
    ledger.faucet(client.sui_address, 10**9)
    return ledger


@pytest.fixture(params=BACKENDS)
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    server, client = HostIdentity.generate(), HostIdentity.generate()
    if request.param == "sui":
        from dtp.ledger.sui import SuiConfig, SuiLedger
        from dtp.testing.sui_node import SuiNodeStandIn

        with SuiNodeStandIn(clock_ms=1_000_000) as node:
            node.faucet(server.sui_address, 10**10)
            node.faucet(client.sui_address, 10**10)
            sui = SuiLedger(SuiConfig(node.url, node.package_id, timeout=30.0))
            try:
                yield _world(sui, server, client, node.advance_clock, node.gas_paid)
            finally:
                sui.close()
            node.state.check()
        return
    cls = LocalLedger if request.param == "local" else _Reading
    ledger = _local(cls, server, client)
    try:
        yield _world(ledger, server, client, ledger.advance_clock, lambda _: 0)
        audit = ledger.audit()
        assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
    finally:
        ledger.close()


def _world(
    ledger: Ledger,
    server: HostIdentity,
    client: HostIdentity,
    advance_clock: Callable[[int], object],
    gas_paid: Callable[[str], int],
) -> World:
    host = ledger.create_host(server, server.noise_public, [])
    ledger.add_service(server, host, 7, "svc", SLA)
    cap = ledger.create_spending_cap(client, 10**9)
    return World(ledger, server, client, host, cap, advance_clock, gas_paid)


def _escrow_totals(world: World, escrow_id: str) -> tuple[int, int]:
    escrow = world.ledger.get_escrow(escrow_id)
    return escrow.claimed, escrow.refunded


@dataclass
class _Kept:
    """A connection opened, as its admission read it (``known``), with a receipt of it
    kept in ``store``."""

    world: World
    cid: str
    escrow_id: str
    known: tuple[Any, Any]
    receipt: Receipt
    store: ReceiptStore

    def settle(self, final: Receipt | None = None) -> Settlement | None:
        """The server's settlement from what its admission read."""
        connection, escrow = self.known
        return claim_and_settle(
            self.world.ledger,
            self.world.server,
            self.cid,
            self.store,
            escrow=escrow,
            connection=connection,
            final=final,
        )

    def marked_done(self) -> Any:
        """The latest receipt stored, asserted done with (nothing left unclaimed)."""
        stored = self.store.latest(self.cid)
        assert stored is not None and stored.unclaimed == 0
        return stored


@contextmanager
def _kept(world: World, tmp_path: Path, nbytes: int = 20_480) -> Iterator[_Kept]:
    """A connection opened and known, its receipt for ``nbytes`` kept in a store."""
    cid, escrow_id = world.open()
    known = _admitted(world, cid, escrow_id)
    receipt = world.receipt(cid, nbytes, 1)
    with ReceiptStore(tmp_path / "r.db") as store:
        assert store.keep(receipt)
        yield _Kept(world, cid, escrow_id, known, receipt, store)


def _admitted(world: World, cid: str, escrow_id: str) -> tuple[Any, Any]:
    """The connection and escrow as the server's admission read them."""
    return world.ledger.get_connection(cid), world.ledger.get_escrow(escrow_id)


def test_a_connection_half_closed_since_it_was_known_is_settled_with_its_receipt(
    world: World, tmp_path: Path
) -> None:
    with _kept(world, tmp_path) as kept:
        receipt = kept.receipt
        world.ledger.close_connection(world.client, kept.cid)  # moved: HalfClosed by its client
        settled = kept.settle()
        assert settled is not None
        assert (settled.paid, settled.claimed) == (receipt.total_amount, receipt.total_amount)
        assert settled.refunded == DEPOSIT - receipt.total_amount
        kept.marked_done()
    tc = world.ledger.get_connection(kept.cid)
    assert tc.settled
    assert _escrow_totals(world, kept.escrow_id) == (
        receipt.total_amount,
        DEPOSIT - receipt.total_amount,
    )


def test_a_connection_its_client_settled_since_it_was_known_is_written_off(
    world: World, tmp_path: Path
) -> None:
    with _kept(world, tmp_path) as kept:
        # the server away past the timeout: its client takes the whole deposit back
        world.ledger.close_connection(world.client, kept.cid)
        world.advance_clock(PAST_TIMEOUT)
        assert world.ledger.settle(world.client, kept.cid).refunded == DEPOSIT
        gas_before = world.gas_paid(world.server.sui_address)
        assert kept.settle() is None
        # written off: done with, not left unclaimed for every start to try again
        assert kept.marked_done().receipt == kept.receipt
    # nothing claimed after the settlement, nothing refunded twice; on Sui the server read
    # first, and paid for no refused transaction
    assert _escrow_totals(world, kept.escrow_id) == (0, DEPOSIT)
    assert world.gas_paid(world.server.sui_address) == gas_before


def test_a_connection_its_client_settled_and_deleted_since_it_was_known_is_written_off(
    world: World, tmp_path: Path
) -> None:
    with _kept(world, tmp_path) as kept:
        final = world.receipt(kept.cid, 40_960, 2)
        world.ledger.close_connection(world.client, kept.cid)
        world.advance_clock(PAST_TIMEOUT)
        assert world.ledger.settle_and_destroy(world.client, kept.cid).refunded == DEPOSIT
        assert kept.settle(final) is None
        kept.marked_done()
    with pytest.raises(ObjectNotFound):
        world.ledger.get_connection(kept.cid)


def test_a_stale_escrow_known_with_the_connection_claims_nothing_twice(
    world: World, tmp_path: Path
) -> None:
    with _kept(world, tmp_path) as kept:
        first = kept.receipt
        # a live claim of the server's own since the admission read: the escrow moved
        assert world.ledger.claim(world.server, kept.escrow_id, first) == first.total_amount
        world.ledger.close_connection(world.client, kept.cid)  # and the connection
        settled = kept.settle()
        assert settled is not None
        assert (settled.paid, settled.claimed) == (0, first.total_amount)
        assert settled.refunded == DEPOSIT - first.total_amount
        kept.marked_done()
    assert _escrow_totals(world, kept.escrow_id) == (
        first.total_amount,
        DEPOSIT - first.total_amount,
    )


def test_a_stale_escrow_known_with_the_connection_claims_the_final_receipts_rest(
    world: World, tmp_path: Path
) -> None:
    with _kept(world, tmp_path) as kept:
        first, final = kept.receipt, world.receipt(kept.cid, 51_200, 2)
        assert world.ledger.claim(world.server, kept.escrow_id, first) == first.total_amount
        settled = kept.settle(final)  # still Open: closed too
        assert settled is not None
        assert settled.paid == final.total_amount - first.total_amount
        assert settled.claimed == final.total_amount
        assert settled.refunded == DEPOSIT - final.total_amount
    tc = world.ledger.get_connection(kept.cid)
    assert tc.settled
    assert _escrow_totals(world, kept.escrow_id) == (
        final.total_amount,
        DEPOSIT - final.total_amount,
    )


class _Counting:
    """``inner`` with the calls of its methods named in ``counted`` counted."""

    def __init__(self, inner: Any, *counted: str) -> None:
        self._inner = inner
        self._counted = counted
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in self._counted:
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return attr(*args, **kwargs)

        return counted


@contextmanager
def _local_known() -> Iterator[tuple[World, LocalLedger, str, str]]:
    """A LocalLedger world with a connection opened: the world, its ledger, the
    connection and its escrow."""
    server, client = HostIdentity.generate(), HostIdentity.generate()
    ledger = _local(LocalLedger, server, client)
    try:
        world = _world(ledger, server, client, ledger.advance_clock, lambda _: 0)
        yield (world, ledger, *world.open())
    finally:
        ledger.close()


def _settle_counting_reads(
    world: World, cid: str, known: tuple[Any, Any]
) -> tuple[Settlement | None, int]:
    """The settlement from what the admission read, and the connection reads and
    version looks it made of the ledger."""
    counting = _Counting(world.ledger, "get_connection", "object_version")
    connection, escrow = known
    settled = claim_and_settle(
        counting,  # type: ignore[arg-type]
        world.server,
        cid,
        None,
        escrow=escrow,
        connection=connection,
    )
    return settled, counting.calls


@pytest.mark.parametrize("moved", [False, True], ids=["as-known", "half-closed-since"])
def test_a_known_connection_is_not_read_where_refusals_are_free(moved: bool) -> None:
    with _local_known() as (world, ledger, cid, escrow_id):
        known = _admitted(world, cid, escrow_id)
        if moved:
            ledger.close_connection(world.client, cid)
        settled, reads = _settle_counting_reads(world, cid, known)
        assert reads == 0  # neither the connection nor its version
        assert settled is not None and settled.refunded == DEPOSIT
        assert ledger.get_connection(cid).settled


def test_a_known_connection_settled_since_is_read_once_after_the_refusal() -> None:
    with _local_known() as (world, ledger, cid, escrow_id):
        known = _admitted(world, cid, escrow_id)
        ledger.close_connection(world.client, cid)
        ledger.advance_clock(PAST_TIMEOUT)
        ledger.settle(world.client, cid)
        settled, reads = _settle_counting_reads(world, cid, known)
        assert settled is None and reads == 1
        assert _escrow_totals(world, escrow_id) == (0, DEPOSIT)


def test_a_final_receipt_known_newest_is_claimed_without_reading_the_store(
    world: World, tmp_path: Path
) -> None:
    # (a receipt of the connection stored before its end)
    with _kept(world, tmp_path) as kept:
        final = world.receipt(kept.cid, 40_960, 2)
        counting = _Counting(kept.store, "latest")  # (its reads of the latest receipt)
        world.ledger.close_connection(world.client, kept.cid)  # (moved since it was known)
        settled = claim_and_settle(
            world.ledger,
            world.server,
            kept.cid,
            counting,  # type: ignore[arg-type]
            escrow=kept.known[1],
            connection=kept.known[0],
            final=final,
            final_is_newest=True,
        )
        assert counting.calls == 0
        assert settled is not None and settled.claimed == final.total_amount
        assert settled.refunded == DEPOSIT - final.total_amount
        # the one kept, marked claimed by the settlement
        assert kept.marked_done().receipt == kept.receipt
    assert _escrow_totals(world, kept.escrow_id) == (
        final.total_amount,
        DEPOSIT - final.total_amount,
    )


def test_a_final_receipt_not_known_newest_loses_to_the_stores_for_more(
    world: World, tmp_path: Path
) -> None:
    """What the store is read for where the final receipt's gate did not check every
    receipt stored (a connection billed per request: the RPC bill keeps its own)."""
    with _kept(world, tmp_path, 40_960) as kept:
        final = world.receipt(kept.cid, 1024, 9)
        settled = kept.settle(final)
        assert settled is not None and settled.claimed == kept.receipt.total_amount
    assert _escrow_totals(world, kept.escrow_id) == (
        kept.receipt.total_amount,
        DEPOSIT - kept.receipt.total_amount,
    )
