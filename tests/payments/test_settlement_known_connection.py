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


def _settle_known(
    world: World, cid: str, store: ReceiptStore, known: tuple[Any, Any], final: Receipt | None
) -> Settlement | None:
    connection, escrow = known
    return claim_and_settle(
        world.ledger,
        world.server,
        cid,
        store,
        escrow=escrow,
        connection=connection,
        final=final,
    )


def _admitted(world: World, cid: str, escrow_id: str) -> tuple[Any, Any]:
    """The connection and escrow as the server's admission read them."""
    return world.ledger.get_connection(cid), world.ledger.get_escrow(escrow_id)


def test_a_connection_half_closed_since_it_was_known_is_settled_with_its_receipt(
    world: World, tmp_path: Path
) -> None:
    cid, escrow_id = world.open()
    known = _admitted(world, cid, escrow_id)
    receipt = world.receipt(cid, 20_480, 1)
    with ReceiptStore(tmp_path / "r.db") as store:
        assert store.keep(receipt)
        world.ledger.close_connection(world.client, cid)  # moved: HalfClosed by its client
        settled = _settle_known(world, cid, store, known, None)
        assert settled is not None
        assert (settled.paid, settled.claimed) == (receipt.total_amount, receipt.total_amount)
        assert settled.refunded == DEPOSIT - receipt.total_amount
        stored = store.latest(cid)
        assert stored is not None and stored.unclaimed == 0
    tc = world.ledger.get_connection(cid)
    assert tc.settled
    assert _escrow_totals(world, escrow_id) == (
        receipt.total_amount,
        DEPOSIT - receipt.total_amount,
    )


def test_a_connection_its_client_settled_since_it_was_known_is_written_off(
    world: World, tmp_path: Path
) -> None:
    cid, escrow_id = world.open()
    known = _admitted(world, cid, escrow_id)
    receipt = world.receipt(cid, 20_480, 1)
    with ReceiptStore(tmp_path / "r.db") as store:
        assert store.keep(receipt)
        # the server away past the timeout: its client takes the whole deposit back
        world.ledger.close_connection(world.client, cid)
        world.advance_clock(PAST_TIMEOUT)
        assert world.ledger.settle(world.client, cid).refunded == DEPOSIT
        gas_before = world.gas_paid(world.server.sui_address)
        assert _settle_known(world, cid, store, known, None) is None
        # written off: done with, not left unclaimed for every start to try again
        stored = store.latest(cid)
        assert stored is not None and stored.receipt == receipt and stored.unclaimed == 0
    # nothing claimed after the settlement, nothing refunded twice; on Sui the server read
    # first, and paid for no refused transaction
    assert _escrow_totals(world, escrow_id) == (0, DEPOSIT)
    assert world.gas_paid(world.server.sui_address) == gas_before


def test_a_connection_its_client_settled_and_deleted_since_it_was_known_is_written_off(
    world: World, tmp_path: Path
) -> None:
    cid, escrow_id = world.open()
    known = _admitted(world, cid, escrow_id)
    receipt = world.receipt(cid, 20_480, 1)
    final = world.receipt(cid, 40_960, 2)
    with ReceiptStore(tmp_path / "r.db") as store:
        assert store.keep(receipt)
        world.ledger.close_connection(world.client, cid)
        world.advance_clock(PAST_TIMEOUT)
        assert world.ledger.settle_and_destroy(world.client, cid).refunded == DEPOSIT
        assert _settle_known(world, cid, store, known, final) is None
        stored = store.latest(cid)
        assert stored is not None and stored.unclaimed == 0
    with pytest.raises(ObjectNotFound):
        world.ledger.get_connection(cid)


def test_a_stale_escrow_known_with_the_connection_claims_nothing_twice(
    world: World, tmp_path: Path
) -> None:
    cid, escrow_id = world.open()
    known = _admitted(world, cid, escrow_id)
    first = world.receipt(cid, 20_480, 1)
    with ReceiptStore(tmp_path / "r.db") as store:
        assert store.keep(first)
        # a live claim of the server's own since the admission read: the escrow moved
        assert world.ledger.claim(world.server, escrow_id, first) == first.total_amount
        world.ledger.close_connection(world.client, cid)  # and the connection
        settled = _settle_known(world, cid, store, known, None)
        assert settled is not None
        assert (settled.paid, settled.claimed) == (0, first.total_amount)
        assert settled.refunded == DEPOSIT - first.total_amount
        stored = store.latest(cid)
        assert stored is not None and stored.unclaimed == 0
    assert _escrow_totals(world, escrow_id) == (first.total_amount, DEPOSIT - first.total_amount)


def test_a_stale_escrow_known_with_the_connection_claims_the_final_receipts_rest(
    world: World, tmp_path: Path
) -> None:
    cid, escrow_id = world.open()
    known = _admitted(world, cid, escrow_id)
    first, final = world.receipt(cid, 20_480, 1), world.receipt(cid, 51_200, 2)
    with ReceiptStore(tmp_path / "r.db") as store:
        assert store.keep(first)
        assert world.ledger.claim(world.server, escrow_id, first) == first.total_amount
        settled = _settle_known(world, cid, store, known, final)  # still Open: closed too
        assert settled is not None
        assert settled.paid == final.total_amount - first.total_amount
        assert settled.claimed == final.total_amount
        assert settled.refunded == DEPOSIT - final.total_amount
    tc = world.ledger.get_connection(cid)
    assert tc.settled
    assert _escrow_totals(world, escrow_id) == (final.total_amount, DEPOSIT - final.total_amount)


class _CountingReads:
    """Counts the connection reads and version looks a LocalLedger serves."""

    def __init__(self, ledger: LocalLedger) -> None:
        self._ledger = ledger
        self.reads = 0

    def get_connection(self, cid: str) -> Any:
        self.reads += 1
        return self._ledger.get_connection(cid)

    def object_version(self, object_id: str) -> int:
        self.reads += 1
        return self._ledger.object_version(object_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)


@pytest.mark.parametrize("moved", [False, True], ids=["as-known", "half-closed-since"])
def test_a_known_connection_is_not_read_where_refusals_are_free(
    tmp_path: Path, moved: bool
) -> None:
    server, client = HostIdentity.generate(), HostIdentity.generate()
    ledger = _local(LocalLedger, server, client)
    try:
        world = _world(ledger, server, client, ledger.advance_clock, lambda _: 0)
        cid, escrow_id = world.open()
        connection, escrow = _admitted(world, cid, escrow_id)
        if moved:
            ledger.close_connection(client, cid)
        counting = _CountingReads(ledger)
        settled = claim_and_settle(
            counting,  # type: ignore[arg-type]
            server,
            cid,
            None,
            escrow=escrow,
            connection=connection,
        )
        assert counting.reads == 0  # neither the connection nor its version
        assert settled is not None and settled.refunded == DEPOSIT
        assert ledger.get_connection(cid).settled
    finally:
        ledger.close()


def test_a_known_connection_settled_since_is_read_once_after_the_refusal(tmp_path: Path) -> None:
    server, client = HostIdentity.generate(), HostIdentity.generate()
    ledger = _local(LocalLedger, server, client)
    try:
        world = _world(ledger, server, client, ledger.advance_clock, lambda _: 0)
        cid, escrow_id = world.open()
        connection, escrow = _admitted(world, cid, escrow_id)
        ledger.close_connection(client, cid)
        ledger.advance_clock(PAST_TIMEOUT)
        ledger.settle(client, cid)
        counting = _CountingReads(ledger)
        settled = claim_and_settle(
            counting,  # type: ignore[arg-type]
            server,
            cid,
            None,
            escrow=escrow,
            connection=connection,
        )
        assert settled is None and counting.reads == 1
        assert _escrow_totals(world, escrow_id) == (0, DEPOSIT)
    finally:
        ledger.close()


class _CountingStore:
    """A receipt store whose reads of a connection's latest receipt are counted."""

    def __init__(self, store: ReceiptStore) -> None:
        self._store = store
        self.latest_reads = 0

    def latest(self, connection_id: str) -> Any:
        self.latest_reads += 1
        return self._store.latest(connection_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_a_final_receipt_known_newest_is_claimed_without_reading_the_store(
    world: World, tmp_path: Path
) -> None:
    cid, escrow_id = world.open()
    known = _admitted(world, cid, escrow_id)
    kept, final = world.receipt(cid, 20_480, 1), world.receipt(cid, 40_960, 2)
    with ReceiptStore(tmp_path / "r.db") as store:
        assert store.keep(kept)  # (a receipt of the connection stored before its end)
        counting = _CountingStore(store)
        world.ledger.close_connection(world.client, cid)  # (moved since it was known)
        settled = claim_and_settle(
            world.ledger,
            world.server,
            cid,
            counting,  # type: ignore[arg-type]
            escrow=known[1],
            connection=known[0],
            final=final,
            final_is_newest=True,
        )
        assert counting.latest_reads == 0
        assert settled is not None and settled.claimed == final.total_amount
        assert settled.refunded == DEPOSIT - final.total_amount
        stored = store.latest(cid)  # the one kept, marked claimed by the settlement
        assert stored is not None and stored.receipt == kept and stored.unclaimed == 0
    assert _escrow_totals(world, escrow_id) == (final.total_amount, DEPOSIT - final.total_amount)


def test_a_final_receipt_not_known_newest_loses_to_the_stores_for_more(
    world: World, tmp_path: Path
) -> None:
    """What the store is read for where the final receipt's gate did not check every
    receipt stored (a connection billed per request: the RPC bill keeps its own)."""
    cid, escrow_id = world.open()
    known = _admitted(world, cid, escrow_id)
    kept, final = world.receipt(cid, 40_960, 1), world.receipt(cid, 1024, 9)
    with ReceiptStore(tmp_path / "r.db") as store:
        assert store.keep(kept)
        settled = _settle_known(world, cid, store, known, final)
        assert settled is not None and settled.claimed == kept.total_amount
    assert _escrow_totals(world, escrow_id) == (kept.total_amount, DEPOSIT - kept.total_amount)
