"""LocalLedger sharing its file with another writer: waiting for the lock in short steps
(no SQLite busy-handler sleeps of many milliseconds), reads that never wait, giving up
after the busy timeout with nothing changed; and the calls that read the connection
only for the IDs the caller did not pass."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp.ledger.local._store as transactions
from dtp.errors import ObjectNotFound
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import ConnectionState, Sla
from dtp.ledger.local import LocalLedger
from dtp.payments.receipts import Receipt

SLA = Sla(10, 5, 1000)
SERVER = HostIdentity.from_private_bytes(bytes([0x61]) * 32, bytes([0x61]) * 32)
CLIENT = HostIdentity.from_private_bytes(bytes([0x62]) * 32, bytes([0x62]) * 32)


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "shared.sqlite")


@pytest.fixture
def ledger(path: str) -> Iterator[LocalLedger]:
    led = LocalLedger(path)
    yield led
    led.close()


def conserved(ledger: LocalLedger) -> bool:
    a = ledger.audit()
    return a["minted"] == a["balances"] + a["escrows"] + a["broadcasts"]


def hold_write_lock(
    path: str, seconds: float, released: list[float], stop: threading.Event | None = None
) -> threading.Thread:
    """Another connection takes the write lock at once and keeps it for ``seconds``, or
    until ``stop`` is set."""
    held = threading.Event()

    def run() -> None:
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        held.set()
        (stop or threading.Event()).wait(seconds)
        other.execute("COMMIT")
        released.append(time.monotonic())
        other.close()

    thread = threading.Thread(target=run)
    thread.start()
    assert held.wait(10)
    return thread


def test_a_writer_waits_for_the_lock_and_goes_on_right_after_release(
    ledger: LocalLedger, path: str
) -> None:
    late: list[float] = []
    for hold in (0.35, 0.42, 0.49):
        released: list[float] = []
        holder = hold_write_lock(path, hold, released)
        start = time.monotonic()
        ledger.faucet(CLIENT.sui_address, 1000)
        done = time.monotonic()
        holder.join(10)
        assert done - start >= hold - 0.05  # it did wait for the other writer
        late.append(done - released[0])
    # SQLite's own busy handler sleeps in 100 ms steps by then: up to 100 ms late
    assert max(late) < 0.05, late
    assert ledger.balance(CLIENT.sui_address) == 3000
    assert conserved(ledger)


def test_reads_do_not_wait_for_a_writer(ledger: LocalLedger, path: str) -> None:
    host = ledger.create_host(SERVER, b"\x01" * 32)
    released: list[float] = []
    # the writer holds the lock for up to 10 minutes: a read that waited for it would
    # take that long, while the bound below only proves the reads are not held up
    stop = threading.Event()
    holder = hold_write_lock(path, 600, released, stop)
    start = time.monotonic()
    try:
        assert ledger.get_host(host).authority == SERVER.sui_address
        assert ledger.balance(CLIENT.sui_address) == 0
        assert ledger.epoch() == 0
        assert time.monotonic() - start < 30 and not released
    finally:
        stop.set()
        holder.join(10)


def test_a_writer_gives_up_after_the_busy_timeout_with_nothing_changed(
    ledger: LocalLedger, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger.faucet(CLIENT.sui_address, 10)
    before = ledger.dump()
    monkeypatch.setattr(transactions, "_BUSY_TIMEOUT_S", 0.2)
    released: list[float] = []
    # held for up to 10 minutes: a writer that did not give up would wait that long
    stop = threading.Event()
    holder = hold_write_lock(path, 600, released, stop)
    start = time.monotonic()
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            ledger.faucet(CLIENT.sui_address, 5)
        assert 0.15 < time.monotonic() - start < 30 and not released
    finally:
        stop.set()
        holder.join(10)
    assert ledger.dump() == before
    assert conserved(ledger)


def test_close_and_settle_with_and_without_the_ids(ledger: LocalLedger) -> None:
    host = ledger.create_host(SERVER, b"\x01" * 32)
    ledger.add_service(SERVER, host, 7, "raw", SLA)
    ledger.faucet(CLIENT.sui_address, 100_000)
    cap = ledger.create_spending_cap(CLIENT, 1_000_000)
    missing = "0x" + "ab" * 32
    with pytest.raises(ObjectNotFound):
        ledger.close_connection(CLIENT, missing)
    for ids in ({}, {"escrow_id": missing}, {"cap_id": missing}):
        with pytest.raises(ObjectNotFound):
            ledger.settle(SERVER, missing, **ids)
    first = ledger.open_connection(CLIENT, host, 7, cap, 1000)
    ledger.close_connection(CLIENT, first.connection_id)
    ledger.close_connection(SERVER, first.connection_id)
    assert ledger.get_connection(first.connection_id).state == ConnectionState.CLOSED
    assert ledger.settle(SERVER, first.connection_id, escrow_id=first.escrow_id).refunded == 1000
    # settling with a receipt: every ID given, or none (read from the connection)
    for given in (True, False):
        opened = ledger.open_connection(CLIENT, host, 7, cap, 1000)
        ledger.close_connection(CLIENT, opened.connection_id)
        receipt = Receipt(ledger.receipt_scope(opened.connection_id), 2048, 1, 25, 1).sign(CLIENT)
        ids = {"escrow_id": opened.escrow_id, "cap_id": cap} if given else {}
        settled = ledger.settle_with_receipt(SERVER, opened.connection_id, receipt, **ids)
        assert (settled.paid, settled.claimed, settled.refunded) == (25, 25, 975)
        assert ledger.get_connection(opened.connection_id).settled
    assert ledger.balance(SERVER.sui_address) == 50
    assert ledger.balance(CLIENT.sui_address) == 100_000 - 50
    assert conserved(ledger)


def test_objects_a_transaction_reads_but_does_not_change_keep_their_version(
    ledger: LocalLedger,
) -> None:
    host = ledger.create_host(SERVER, b"\x01" * 32)
    ledger.add_service(SERVER, host, 7, "raw", SLA)
    ledger.faucet(CLIENT.sui_address, 100_000)
    cap = ledger.create_spending_cap(CLIENT, 1_000_000)
    opened = ledger.open_connection(CLIENT, host, 7, cap, 1000)
    ids = (opened.connection_id, opened.escrow_id, host, cap)

    def versions() -> dict[str, int]:
        return {i: ledger.object_ref(i).version for i in ids}

    before = versions()
    ledger.create_pipe(CLIENT, opened.connection_id, 1)  # reads the connection only
    assert versions() == before
    ledger.top_up(CLIENT, opened.escrow_id, 500)  # changes the escrow and the cap only
    after = versions()
    changed = (opened.escrow_id, cap)
    assert all(after[i] == before[i] + 1 for i in changed)
    assert {i: v for i, v in after.items() if i not in changed} == {
        i: v for i, v in before.items() if i not in changed
    }
    # an open reads the Host and writes only what it creates and the cap
    host_version = ledger.object_ref(host).version
    ledger.open_connection(CLIENT, host, 7, cap, 1000)
    assert ledger.object_ref(host).version == host_version
    assert ledger.get_escrow(opened.escrow_id).balance == 1500
    assert conserved(ledger)


def test_a_transaction_whose_reads_went_stale_runs_again(
    ledger: LocalLedger, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction reads and runs its rule before it takes the write lock: when
    another writer commits in between, its first write fails and the whole transaction
    runs again on what the ledger holds then (no lost update)."""
    from dtp.ledger.local import rules

    host = ledger.create_host(SERVER, b"\x01" * 32)
    ledger.add_service(SERVER, host, 7, "raw", SLA)
    ledger.faucet(CLIENT.sui_address, 5000)
    cap = ledger.create_spending_cap(CLIENT, 10**6)
    other = LocalLedger(path)
    schema, real = rules.FUNCTIONS[("transport_control", "open")]
    runs: list[int] = []

    def interleaved(x: rules.Exec, *args: object) -> object:
        runs.append(x.store.balance(CLIENT.sui_address))
        if len(runs) == 1:  # another process pays the client after our reads
            other.faucet(CLIENT.sui_address, 7)
        return real(x, *args)

    monkeypatch.setitem(rules.FUNCTIONS, ("transport_control", "open"), (schema, interleaved))
    ledger.open_connection(CLIENT, host, 7, cap, 2000)
    other.close()
    assert runs == [5000, 5007]  # run again, and the second time it saw the payment
    assert ledger.balance(CLIENT.sui_address) == 5000 + 7 - 2000
    assert conserved(ledger)


def test_a_writer_reads_while_another_holds_the_lock(ledger: LocalLedger, path: str) -> None:
    """Only its writes wait for the other writer: a transaction whose rule refuses it
    never waits at all."""
    from dtp.errors import InsufficientFunds

    host = ledger.create_host(SERVER, b"\x01" * 32)
    ledger.add_service(SERVER, host, 7, "raw", SLA)
    cap = ledger.create_spending_cap(CLIENT, 10**6)
    released: list[float] = []
    # held for up to 10 minutes: a transaction that waited for it would take that long
    stop = threading.Event()
    holder = hold_write_lock(path, 600, released, stop)
    start = time.monotonic()
    try:
        with pytest.raises(InsufficientFunds):  # the client holds nothing
            ledger.open_connection(CLIENT, host, 7, cap, 2000)
        assert time.monotonic() - start < 30 and not released
    finally:
        stop.set()
        holder.join(10)
    assert conserved(ledger)
