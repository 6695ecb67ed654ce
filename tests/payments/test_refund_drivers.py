"""The one refund engine under its two drivers: the SDK's thread
(dtp.payments._refunds.RefundCollector) and the services daemon's asyncio task
(dtp.daemon._refunds.Refunds), each over a book in a file, each test run under both.

A connection is recorded before its deposit moves (an open's ``on_open`` journal), left
alone while in use, half-closed once released, settled by its client once the
half-close timeout has passed, and forgotten when its server settled it; a run killed
with a connection in use leaves it to the next run on the same file; a refund smaller
than its gas is left on the ledger. On a LocalLedger file (its clock moved by the test)
and on the Sui node stand-in (gas charged). The looks are driven by the test, one at a
time, so each step is seen."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from dtp.daemon._refunds import Refunds
from dtp.daemon._state import CONNECTIONS_FILE
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import HALF_CLOSE_TIMEOUT_MS, ConnectionState
from dtp.ledger.interface import Ledger
from dtp.ledger.receipt import Receipt, ReceiptScope, fee
from dtp.payments._refund_book import Opened, OpenedBook
from dtp.payments._refunder import OpenAttempt
from dtp.payments._refunds import RefundCollector
from tests.support.polling import wait_for
from tests.support.refund_places import DEPOSIT, PORT, SLA, Place, refund_place


class Driver(Protocol):
    book: OpenedBook

    def attempt(self, label: str) -> OpenAttempt: ...

    def look(self) -> None: ...

    def close(self) -> None: ...


class ThreadDriver:
    """The SDK's collector, its looks run by the test (its thread, started as a
    connection is released, looks beside them: one look at a time)."""

    def __init__(self, ledger: Ledger, client: HostIdentity, path: Path) -> None:
        self.collector = RefundCollector(ledger, client, path)
        self.book = self.collector.book

    def attempt(self, label: str) -> OpenAttempt:
        return self.collector.attempt(label)

    def look(self) -> None:
        self.collector.run_due()

    def close(self) -> None:
        self.collector.close()


class TaskDriver:
    """The daemon's task, one look at a time."""

    def __init__(self, ledger: Ledger, client: HostIdentity, path: Path) -> None:
        self.refunds = Refunds(ledger, client, path.parent, interval=30.0)
        self.book = self.refunds.book

    def attempt(self, label: str) -> OpenAttempt:
        return self.refunds.attempt(label)

    def look(self) -> None:
        asyncio.run(self.refunds.look())

    def close(self) -> None:
        self.refunds.close()


DRIVERS = {"thread": ThreadDriver, "asyncio": TaskDriver}


@pytest.fixture(params=["thread", "asyncio"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["local", "sui"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Place]:
    with refund_place(request.param, tmp_path, frozen=True) as made:
        yield made


@pytest.fixture
def make(place: Place, kind: str, tmp_path: Path) -> Iterator[Callable[[], Driver]]:
    """A driver of ``kind`` over the book ``<tmp>/state/connections.sqlite`` (a second
    one made after the first closed is the next run); each closed at the end."""
    path = tmp_path / "state" / CONNECTIONS_FILE
    path.parent.mkdir()
    made: list[Driver] = []

    def driver() -> Driver:
        made.append(DRIVERS[kind](place.ledger, place.client, path))
        return made[-1]

    yield driver
    for each in made:
        each.close()


def ids(entries: list[Opened]) -> list[str | None]:
    return [e.connection_id for e in entries]


def test_a_released_connection_is_half_closed_then_settled_after_its_timeout(
    place: Place, make: Callable[[], Driver]
) -> None:
    driver = make()
    attempt = driver.attempt("app")
    cid = place.open(journal=attempt)
    assert [(e.cap_id is not None, e.connection_id, e.label) for e in driver.book.entries()] == [
        (True, cid, "app")
    ]
    driver.look()
    assert place.state(cid) == ConnectionState.OPEN  # in use: left alone
    attempt.release()
    driver.look()
    assert place.state(cid) == ConnectionState.HALF_CLOSED
    driver.look()
    assert not place.ledger.get_connection(cid).settled  # (the timeout runs)
    escrow = place.ledger.get_connection(cid).escrow
    place.advance(HALF_CLOSE_TIMEOUT_MS + 2_000)
    driver.look()
    # settled by its client, and deleted in the same transaction (docs/escrow.md §7.1)
    assert place.settled_refund(cid) == DEPOSIT
    assert place.gone(cid, escrow)
    assert driver.book.entries() == []


def test_one_its_server_settled_is_deleted_and_forgotten(
    place: Place, make: Callable[[], Driver]
) -> None:
    """Its server settled it: nothing to refund, but its objects' storage is the
    client's, which deletes them -- on Sui for a net gain (the rebate beats the gas)."""
    driver = make()
    attempt = driver.attempt("app")
    cid = place.open(journal=attempt)
    escrow = place.ledger.get_connection(cid).escrow
    scope = ReceiptScope(place.ledger.package_id, escrow, cid)
    receipt = Receipt(scope, 4096, 0, fee(SLA, 4096, 0), 1).sign(place.client)
    place.server_ledger.settle_with_receipt(place.server, cid, receipt)
    spent = place.ledger.gas_spent(place.client.sui_address).total
    held = place.ledger.balance(place.client.sui_address)
    attempt.release()
    driver.look()
    assert driver.book.entries() == []
    assert place.gone(cid, escrow)
    gas = place.ledger.gas_spent(place.client.sui_address).total - spent
    assert place.ledger.balance(place.client.sui_address) == held - gas
    if place.node is not None:
        assert gas < 0  # one transaction, paid for by the rebate with MIST to spare
    else:
        assert gas == 0


def test_a_run_killed_with_a_connection_in_use_leaves_it_to_the_next(
    place: Place, make: Callable[[], Driver]
) -> None:
    """The first run recorded two opens and stopped without a release: one whose ID
    came, one whose open never told it (its process stopped as it landed). The next run
    on the same file, with nothing in use, takes both: found by its cap, half-closed,
    settled after the timeout."""
    first = make()
    in_use = first.attempt("app")
    cid = place.open(journal=in_use)
    in_use.served()  # (a link's: not one a forward may connect on again)
    cap = place.ledger.create_spending_cap(place.client, DEPOSIT)
    first.attempt("app")(cap, None)
    landed = place.ledger.open_connection(place.client, place.host, PORT, cap, DEPOSIT)
    first.close()  # (killed: the book's file is all that is left)

    second = make()
    second.look()
    assert sorted(ids(second.book.entries())) == sorted([cid, landed.connection_id])
    assert place.state(cid) == ConnectionState.HALF_CLOSED
    assert place.state(landed.connection_id) == ConnectionState.HALF_CLOSED
    place.advance(HALF_CLOSE_TIMEOUT_MS + 2_000)
    second.look()
    assert place.settled_refund(cid) == DEPOSIT
    assert place.settled_refund(landed.connection_id) == DEPOSIT
    assert second.book.entries() == []


def test_an_open_that_never_landed_is_forgotten(place: Place, make: Callable[[], Driver]) -> None:
    first = make()
    cap = place.ledger.create_spending_cap(place.client, DEPOSIT)
    first.attempt("app")(cap, None)
    first.close()
    second = make()
    second.look()
    assert second.book.entries() == []


@pytest.mark.parametrize("place", ["sui"], indirect=True)
def test_a_refund_smaller_than_its_gas_is_left_on_the_ledger(
    place: Place, make: Callable[[], Driver], caplog: pytest.LogCaptureFixture
) -> None:
    """200 000 MIST against 3.5 M of gas for the half-close and the settlement: not
    worth a transaction; forgotten, with the command that takes it back anyway."""
    driver = make()
    attempt = driver.attempt("app")
    cid = place.open(200_000, attempt)
    spent = place.ledger.gas_spent(place.client.sui_address).total
    # (the collector's thread may look first, and log just after it forgot the entry)
    caplog.set_level(logging.INFO)
    attempt.release()
    driver.look()
    assert place.state(cid) == ConnectionState.OPEN
    assert place.ledger.gas_spent(place.client.sui_address).total == spent
    assert driver.book.entries() == []
    assert wait_for(lambda: any(f"dtp refund {cid}" in r.getMessage() for r in caplog.records), 10)
    if isinstance(driver, TaskDriver):  # (the daemon counts it: dtp_refunds_skipped_total)
        assert (driver.refunds.skipped, driver.refunds.settled) == (1, 0)
