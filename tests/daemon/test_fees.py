"""The daemon's receipt keeping (dtp.daemon._fees.ServerFees): receipts are checked at
once, stored by a writer thread (the event loop never waits for the fsync), and count
only once stored; a settle claims the newest one on the ledger.

The daemon settles, at its next start, a connection whose claim reached the ledger
but whose "claimed" mark did not reach the receipt store.

A claim on the ledger whose mark is lost (a SIGKILL right after the claim leaves it so)
is found by the next start, which settles the connection rather than claim the receipt
again (refused: the escrow has that nonce) and leave it Open, the client's deposit held
until its own timeout. Here the claim is made on the ledger directly, as the killed run
left it.

The daemon's ServerFees.close() leaves the receipt store open under a writer still
writing, as a paid server's release does: a receipt still on its way to a slow disk is
written, not dropped with a store closed after the writer's wait whatever the writer
said."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

import dtp.daemon._fees as fees_mod
import dtp.daemon._udp_flows as udp_flows_mod
from dtp.daemon._fees import ServerFees, Settled
from dtp.daemon._runner import Daemon
from dtp.errors import DTPError, InvalidReceipt
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import HALF_CLOSE_TIMEOUT_MS, ConnectionState, Sla
from dtp.ledger.local import LocalLedger
from dtp.payments._receipt_writer import ReceiptWriter
from dtp.payments._refunder import collect_refund
from dtp.payments.receipt_store import ReceiptStore
from dtp.payments.receipts import ConnectionTerms, Receipt, ReceiptScope, fee
from tests.daemon.inproc import RETRY_BOUND, FileLedgerClient, run_with_file_client, until
from tests.support.paid_stores import StallingStore
from tests.support.paid_twins import ident
from tests.support.polling import wait_for
from tests.support.settlements import is_settled

SLA = Sla(price_per_kib=10, price_per_request=0, min_deposit=1000)
DEPOSIT = 1_000_000


def _receipt(client: HostIdentity, scope: ReceiptScope, total_bytes: int, nonce: int) -> Receipt:
    return Receipt(scope, total_bytes, 0, fee(SLA, total_bytes, 0), nonce).sign(client)


def _setup(tmp_path: Path) -> tuple[LocalLedger, HostIdentity, HostIdentity, str, str]:
    ledger = LocalLedger(str(tmp_path / "ledger.db"))
    server, client = HostIdentity.generate(), HostIdentity.generate()
    host_id = ledger.create_host(server, server.noise_public)
    ledger.add_service(server, host_id, 80, "raw", SLA)
    ledger.faucet(client.sui_address, 10 * DEPOSIT)
    cap = ledger.create_spending_cap(client, 10 * DEPOSIT)
    opened = ledger.open_connection(client, host_id, 80, cap, DEPOSIT)
    return ledger, server, client, host_id, opened.connection_id


def test_receipts_are_checked_at_once_and_count_once_stored(tmp_path: Path) -> None:
    ledger, server, client, host_id, cid = _setup(tmp_path)
    fees = ServerFees(ledger, server, host_id, tmp_path / "receipts.db")
    terms = ConnectionTerms.from_ledger(ledger, cid)
    before = ledger.balance(server.sui_address)

    async def run() -> list[Receipt]:
        kept: list[Receipt] = []
        for n in range(1, 6):
            fees.accept(
                terms,
                _receipt(client, ledger.receipt_scope(cid), n * 4096, n).encode(),
                kept.append,
            )
        # the newest checked receipt is known before any is on disk: a replay of an
        # older nonce is refused at once
        with pytest.raises(InvalidReceipt):
            fees.accept(
                terms, _receipt(client, ledger.receipt_scope(cid), 4096, 2).encode(), kept.append
            )
        assert fees.held(cid) is not None and fees.held(cid).nonce == 5  # type: ignore[union-attr]
        settled = await fees.settle(cid, terms.escrow_id)
        assert settled.claimed == fee(SLA, 5 * 4096, 0)
        return kept

    kept = asyncio.run(run())
    # callbacks ran on the loop, in order, ending with the newest (older ones may have
    # been replaced while a write was under way)
    assert kept and kept[-1].nonce == 5
    assert [r.nonce for r in kept] == sorted(r.nonce for r in kept)
    fees.close()
    store = ReceiptStore(tmp_path / "receipts.db")
    stored = store.latest(cid)
    assert stored is not None and stored.receipt.nonce == 5 and stored.unclaimed == 0
    store.close()
    assert ledger.balance(server.sui_address) - before == fee(SLA, 5 * 4096, 0)
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


def test_a_forged_receipt_is_refused_and_never_stored(tmp_path: Path) -> None:
    ledger, server, _client, host_id, cid = _setup(tmp_path)
    fees = ServerFees(ledger, server, host_id, tmp_path / "receipts.db")
    terms = ConnectionTerms.from_ledger(ledger, cid)
    forger = HostIdentity.generate()

    async def run() -> None:
        with pytest.raises(InvalidReceipt):
            fees.accept(
                terms, _receipt(forger, ledger.receipt_scope(cid), 4096, 1).encode(), lambda r: None
            )
        await asyncio.to_thread(fees.writer.flush)

    asyncio.run(run())
    assert fees.held(cid) is None
    fees.close()
    store = ReceiptStore(tmp_path / "receipts.db")
    assert store.latest(cid) is None
    store.close()


def test_a_later_receipt_for_less_is_refused_and_the_larger_one_kept(tmp_path: Path) -> None:
    """A receipt's nonce goes up and its amount may not go down: a later, smaller one
    would become the one held and claimed, not the one the client was served on."""
    ledger, server, client, host_id, cid = _setup(tmp_path)
    fees = ServerFees(ledger, server, host_id, tmp_path / "receipts.db")
    terms = ConnectionTerms.from_ledger(ledger, cid)

    async def run() -> int:
        fees.accept(
            terms,
            _receipt(client, ledger.receipt_scope(cid), 50 * 4096, 1).encode(),
            lambda r: None,
        )
        with pytest.raises(InvalidReceipt):
            fees.accept(
                terms, _receipt(client, ledger.receipt_scope(cid), 4096, 2).encode(), lambda r: None
            )
        held = fees.held(cid)
        assert held is not None and held.nonce == 1
        settled = await fees.settle(cid, terms.escrow_id)
        return settled.claimed

    assert asyncio.run(run()) == fee(SLA, 50 * 4096, 0)
    fees.close()


def test_a_udp_flows_receipt_pays_only_once_it_is_on_disk(tmp_path: Path) -> None:
    """The daemon's UDP billing queues receipts for the writer thread; counted as soon
    as they were checked, the relay served on credit a crash before the write could
    still lose (a receipt interval beyond the credit it means to risk). Here another
    process holds the receipt file locked: the receipt is checked but pays nothing
    until the write goes through."""
    ledger, server, client, host_id, cid = _setup(tmp_path)
    path = tmp_path / "receipts.db"
    fees = ServerFees(ledger, server, host_id, path)
    terms = ConnectionTerms.from_ledger(ledger, cid)
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")

    async def run() -> list[Receipt]:
        kept: list[Receipt] = []
        billing = fees.udp_billing(terms, 4, kept.append)
        for _ in range(4):
            assert billing.may_forward(1024)
            billing.forwarded(1024)
        assert not billing.may_forward(1024)  # the credit of 4 datagrams is used
        receipt = Receipt(terms.scope, 4096, 4, fee(SLA, 4096, 4), 1).sign(client)
        assert billing.receipt(receipt.encode())
        assert billing.checked == receipt
        await asyncio.sleep(0.3)
        assert billing.latest is None and not billing.paid_up and not kept
        assert not billing.may_forward(1024)
        # a replay of it is refused while it waits for the disk
        assert not billing.receipt(receipt.encode())
        locker.rollback()
        for _ in range(300):
            if billing.latest is not None:
                break
            await asyncio.sleep(0.05)
        assert billing.latest == receipt and billing.paid_up
        assert billing.may_forward(1024)
        return kept

    try:
        assert asyncio.run(run())[-1].nonce == 1
    finally:
        locker.close()
        fees.close()


SERVER, CLIENT = ident(0x11), ident(0x22)


def test_a_claim_whose_mark_was_lost_is_settled_at_the_next_start(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.db")
    try:
        host_id = ledger.create_host(SERVER, SERVER.noise_public)
        ledger.add_service(SERVER, host_id, 80, "raw", SLA)
        ledger.faucet(CLIENT.sui_address, 10 * DEPOSIT)
        cap = ledger.create_spending_cap(CLIENT, 10 * DEPOSIT)
        opened = ledger.open_connection(CLIENT, host_id, 80, cap, DEPOSIT)
        cid = opened.connection_id
        receipt = Receipt(ledger.receipt_scope(cid), 40960, 0, fee(SLA, 40960, 0), 1).sign(CLIENT)

        # the first run: the receipt stored, then claimed on the ledger -- and killed
        fees = ServerFees(ledger, SERVER, host_id, tmp_path / "receipts.db")
        terms = ConnectionTerms.from_ledger(ledger, cid)

        async def accept() -> None:
            fees.accept(terms, receipt.encode(), lambda _: None)
            await asyncio.to_thread(fees.writer.flush)

        asyncio.run(accept())
        fees.close()
        assert ledger.claim(SERVER, opened.escrow_id, receipt) == receipt.total_amount

        # the next start
        fees = ServerFees(ledger, SERVER, host_id, tmp_path / "receipts.db")
        try:
            done = asyncio.run(fees.claim_leftovers())
        finally:
            fees.close()
        assert [cid for cid, _ in done] == [cid]
        tc = ledger.get_connection(cid)
        assert tc.settled and tc.state == ConnectionState.CLOSED
        escrow = ledger.get_escrow(opened.escrow_id)
        assert escrow.claimed == receipt.total_amount
        assert escrow.refunded == DEPOSIT - receipt.total_amount
        with ReceiptStore(tmp_path / "receipts.db") as store:
            assert list(store.unclaimed()) == []  # the start after finds nothing to do
    finally:
        ledger.close()


def test_close_leaves_the_store_open_under_a_writer_still_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger, server, client, host_id, cid = _setup(tmp_path)
    fees = ServerFees(ledger, server, host_id, tmp_path / "unused.db")
    fees.writer.close()
    fees.store.close()
    store = StallingStore(tmp_path / "receipts.db")
    fees.store, fees.writer = store, ReceiptWriter(store)
    # the writer's wait, whatever the caller asks, is short here: the disk stalls longer
    real_close = ReceiptWriter.close
    monkeypatch.setattr(ReceiptWriter, "close", lambda self, timeout=30.0: real_close(self, 0.3))
    store.stall.set()
    receipt = _receipt(client, ledger.receipt_scope(cid), 4096, 1)
    fees.writer.submit(receipt, lambda r: None)
    assert store.stalled.wait(10)
    fees.close()
    assert not store.closed  # still in use by the writer
    store.resume.set()
    assert wait_for(lambda: fees.writer.stopped, 10)
    assert store.closed  # closed by the writer's last step, once nothing writes to it
    with ReceiptStore(tmp_path / "receipts.db") as again:
        stored = again.latest(cid)
    assert stored is not None and stored.receipt == receipt
    ledger.close()


def _udp_service(port: int, backend: int) -> str:
    return f"""
[[service]]
name = "svc{port}"
port = {port}
protocol = "udp"
backends = ["127.0.0.1:{backend}"]
price_per_kib = 10
min_deposit = 1000
"""


def test_a_udp_receipt_claimed_before_its_write_is_earned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A paid UDP flow's billing accepts one receipt; its write to the store is held past
    the settlement's wait for it, so the settlement claims it from the writer's queue,
    and then the write fails for good (dropped: its "kept" never runs). The TCP path
    counts such a claim as earned (fdd5672); the UDP path did not, and since the claim
    no longer raises fees_earned for a served connection, the fee was claimed but never
    earned. Earned once now (nothing more when a write lands is the TCP test's)."""
    monkeypatch.setattr(fees_mod, "SETTLE_FLUSH_WAIT", 0.05)
    hold, held, let_go = threading.Event(), threading.Event(), threading.Event()
    real_keep_many = ReceiptStore.keep_many

    def keep_many(self: ReceiptStore, *args: Any, **kwargs: Any) -> Any:
        if hold.is_set():
            held.set()
            let_go.wait(RETRY_BOUND)
            raise RuntimeError("the write fails for good (a test)")  # (dropped at once)
        return real_keep_many(self, *args, **kwargs)

    monkeypatch.setattr(ReceiptStore, "keep_many", keep_many)
    to_send: list[Receipt] = []

    async def relay(reader: Any, writer: Any, backend: Any, **kwargs: Any) -> None:
        """The relay's part: its billing accepts the client's receipt, then the flow
        lasts until the client closes."""
        billing = kwargs["billing"]
        assert billing is not None
        billing.on_receipt(to_send[0])  # (what the billing does with a checked one)
        with contextlib.suppress(DTPError):
            await writer.wait_closed()

    monkeypatch.setattr(udp_flows_mod, "relay_udp_async", relay)

    async def scenario(daemon: Daemon, client: FileLedgerClient, *_unused: Any) -> None:
        cid = await client.open_ledger(7000)
        receipt = client.receipt(cid)
        to_send.append(receipt)
        hold.set()
        _, writer = await client.connect(cid, 7000)
        await until(held.is_set, "the receipt's write under way")
        writer.close()
        row = daemon.book.service("svc7000")
        await until(lambda: row.fees_claimed, "claimed and counted")
        let_go.set()  # the write fails: the receipt is dropped, its "kept" never runs
        assert daemon.fees is not None
        await asyncio.to_thread(daemon.fees.writer.flush)
        await asyncio.sleep(0)  # (a callback, had one been posted before flush ended)
        assert is_settled(client.ledger, cid)
        assert row.fees_claimed == receipt.total_amount
        assert row.fees_earned == receipt.total_amount

    run_with_file_client(tmp_path, lambda backend: _udp_service(7000, backend), scenario)


def test_a_connection_its_client_settled_and_deleted_ends_with_its_receipt_written_off(
    tmp_path: Path,
) -> None:
    """The client settled alone once the half-close timeout passed and deleted the
    connection's objects (docs/escrow.md §7, "Deletion") before the daemon's end came:
    the end reads the settlement from its event, writes the receipt off and is done,
    rather than failing on the missing object and leaving the receipt to every later
    start."""
    ledger, server, client, host_id, cid = _setup(tmp_path)
    fees = ServerFees(ledger, server, host_id, tmp_path / "receipts.db")
    terms = ConnectionTerms.from_ledger(ledger, cid)
    balance = ledger.balance(server.sui_address)

    async def run() -> Settled:
        await fees.terms(cid, served=True)
        kept: list[Receipt] = []
        fees.accept(
            terms, _receipt(client, ledger.receipt_scope(cid), 8192, 1).encode(), kept.append
        )
        ledger.close_connection(client, cid)
        ledger.advance_clock(HALF_CLOSE_TIMEOUT_MS)
        collect_refund(ledger, client, cid)
        ledger.destroy_connection(client, cid)
        return await fees.settle(cid)

    settled = asyncio.run(run())
    fees.close()
    assert settled.done and (settled.claimed, settled.refunded) == (0, 0)
    assert settled.port == 80
    store = ReceiptStore(tmp_path / "receipts.db")
    assert list(store.unclaimed()) == []  # (written off: no later start tries it again)
    store.close()
    assert ledger.balance(server.sui_address) == balance
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
