"""The forwarders' own settlements (dtp/daemon/_refunds.py): the book of the connections
they opened, and the looks that half-close those no link uses, settle those whose
half-close timeout has passed, and forget those the provider settled.

A connection whose provider never settles it (the provider down, killed, or never
reached) is half-closed by the forwarder, which settles it once the ten-minute timeout
has passed: its deposit comes back without a ``dtp refund`` by hand (docs/daemon.md).

A LocalLedger file whose clock the test drives (frozen, moved by ``advance_clock``):
the ten minutes pass in no time."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dtp.daemon._refunds import Refunds
from dtp.daemon._state import CONNECTIONS_FILE
from dtp.errors import ObjectNotFound
from dtp.ledger._objects import HALF_CLOSE_TIMEOUT_MS, ConnectionState, Sla
from dtp.ledger.local import LocalLedger
from dtp.payments._refund_book import OpenedBook
from tests.support.paid_inprocess import ident
from tests.support.settlements import is_settled, settlement

SERVER, CLIENT = ident(0x54), ident(0x55)
SLA = Sla(10, 5, 1000)
DEPOSIT = 50_000
FUNDS = 10_000_000
START_MS = 1_700_000_000_000


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LocalLedger]:
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    ledger.set_clock(START_MS, allow_backwards=True)  # frozen: the test moves it
    ledger.faucet(CLIENT.sui_address, FUNDS)
    try:
        yield ledger
    finally:
        ledger.close()


@pytest.fixture
def host(ledger: LocalLedger) -> str:
    host_id = ledger.create_host(SERVER, SERVER.noise_public, ["tcp://127.0.0.1:9"])
    ledger.add_service(SERVER, host_id, 80, "raw", SLA)
    return host_id


def open_one(ledger: LocalLedger, host: str) -> tuple[str, str]:
    """A connection of CLIENT's on the ledger, as a forward's open makes it: (its
    spending cap, its ID)."""
    cap = ledger.create_spending_cap(CLIENT, DEPOSIT)
    opened = ledger.open_connection(CLIENT, host, 80, cap, DEPOSIT)
    return cap, opened.connection_id


def look(refunds: Refunds) -> float:
    return asyncio.run(refunds.look())


# -- the looks, on the ledger ---------------------------------------------------------------


def test_a_connection_nobody_settled_is_refunded_once_its_timeout_passed(
    tmp_path: Path, ledger: LocalLedger, host: str
) -> None:
    """The provider never served it (down): its link ended, the forwarder's look
    half-closes it, waits out the ten minutes (the next look is due at their end, not
    before), then settles it: the whole deposit back, and it leaves the book."""
    refunds = Refunds(ledger, CLIENT, tmp_path, interval=30.0)
    try:
        attempt = refunds.attempt("svc")
        cap, cid = open_one(ledger, host)
        attempt(cap, cid)
        assert look(refunds) == 30.0  # in use: left alone
        assert ledger.get_connection(cid).state == ConnectionState.OPEN
        attempt.release()
        assert look(refunds) == 30.0  # half-closed now; the timeout is ten minutes away
        assert ledger.get_connection(cid).state == ConnectionState.HALF_CLOSED
        ledger.advance_clock(HALF_CLOSE_TIMEOUT_MS - 2_000)
        assert look(refunds) == 2.0  # the deadline comes before the interval
        assert not is_settled(ledger, cid)
        assert ledger.balance(CLIENT.sui_address) == FUNDS - DEPOSIT
        ledger.advance_clock(2_000)
        look(refunds)
        # settled and deleted in one transaction (docs/escrow.md §7.1)
        done = settlement(ledger, cid)
        assert done is not None and done.deleted and done.refunded == DEPOSIT
        assert ledger.balance(CLIENT.sui_address) == FUNDS
        assert (refunds.settled, refunds.refunded) == (1, DEPOSIT)
        assert refunds.book.entries() == []
    finally:
        refunds.close()


def test_one_the_provider_settled_is_deleted_and_forgotten(
    tmp_path: Path, ledger: LocalLedger, host: str
) -> None:
    refunds = Refunds(ledger, CLIENT, tmp_path)
    try:
        attempt = refunds.attempt("svc")
        cap, cid = open_one(ledger, host)
        attempt(cap, cid)
        ledger.settle(SERVER, cid)  # the provider closes and settles as the link ends
        escrow = ledger.get_connection(cid).escrow
        held = ledger.balance(CLIENT.sui_address)
        attempt.release()
        look(refunds)
        assert refunds.book.entries() == []
        # nothing to refund, but its objects' storage is the client's: deleted
        for gone in (cid, escrow):
            with pytest.raises(ObjectNotFound):
                ledger.get_object(gone)
        assert ledger.balance(CLIENT.sui_address) == held
        assert refunds.settled == 0
    finally:
        refunds.close()


def test_an_open_recorded_before_it_landed_is_found_by_its_cap(
    tmp_path: Path, ledger: LocalLedger, host: str
) -> None:
    """The daemon stopped while an open was landing (on Sui the ID comes only with the
    open's effects): the book holds its spending cap alone. The next run finds the
    connection among the client's by that cap, and refunds it; a cap whose open never
    landed is forgotten."""
    book = OpenedBook(tmp_path / CONNECTIONS_FILE)
    cap, cid = open_one(ledger, host)
    book.record(cap, None, "svc")
    lost_cap = ledger.create_spending_cap(CLIENT, DEPOSIT)  # its open never went
    book.record(lost_cap, None, "svc")
    book.close()
    refunds = Refunds(ledger, CLIENT, tmp_path)  # the next start
    try:
        look(refunds)
        assert [(e.cap_id, e.connection_id) for e in refunds.book.entries()] == [(cap, cid)]
        assert ledger.get_connection(cid).state == ConnectionState.HALF_CLOSED
        ledger.advance_clock(HALF_CLOSE_TIMEOUT_MS)
        look(refunds)
        assert is_settled(ledger, cid)
        assert refunds.book.entries() == []
        assert ledger.balance(CLIENT.sui_address) == FUNDS
    finally:
        refunds.close()


def test_a_restart_settles_what_the_previous_run_left(
    tmp_path: Path, ledger: LocalLedger, host: str
) -> None:
    """A run opens two connections and stops (one half-closed by its link's end, one
    still Open: the run was killed with it in use); the state directory is all that is
    left. Ten minutes after their half-closes the next run settles both at its first
    looks, with no command."""
    first = Refunds(ledger, CLIENT, tmp_path)
    ended, killed = first.attempt("svc"), first.attempt("svc")
    cap1, cid1 = open_one(ledger, host)
    ended(cap1, cid1)
    ended.served()
    cap2, cid2 = open_one(ledger, host)
    killed(cap2, cid2)
    killed.served()  # (both links' connects succeeded: never to be connected on again)
    ledger.close_connection(CLIENT, cid1)  # its watcher's half-close
    ended.release()
    first.close()  # (killed: nothing more of it)

    second = Refunds(ledger, CLIENT, tmp_path)
    try:
        look(second)  # the start's look: the Open one is half-closed now
        assert ledger.get_connection(cid2).state == ConnectionState.HALF_CLOSED
        ledger.advance_clock(HALF_CLOSE_TIMEOUT_MS)
        assert not is_settled(ledger, cid2)
        look(second)
        assert is_settled(ledger, cid1)
        assert is_settled(ledger, cid2)
        assert (second.settled, second.refunded) == (2, 2 * DEPOSIT)
        assert ledger.balance(CLIENT.sui_address) == FUNDS
        assert second.book.entries() == []
    finally:
        second.close()


def test_an_open_given_up_that_lands_later_is_not_left_in_use(
    tmp_path: Path, ledger: LocalLedger, host: str
) -> None:
    """The forward gave up an open (its open_timeout) and released it; the open landed
    afterwards, in the background, and recorded its ID: the book's looks take it, as
    no link ever will."""
    refunds = Refunds(ledger, CLIENT, tmp_path)
    try:
        attempt = refunds.attempt("svc")
        cap = ledger.create_spending_cap(CLIENT, DEPOSIT)
        attempt(cap, None)
        attempt.release()  # given up
        cid = ledger.open_connection(CLIENT, host, 80, cap, DEPOSIT).connection_id
        attempt(cap, cid)  # landed late
        look(refunds)
        assert ledger.get_connection(cid).state == ConnectionState.HALF_CLOSED
    finally:
        refunds.close()


def test_the_task_looks_again_when_a_link_ends(
    tmp_path: Path, ledger: LocalLedger, host: str
) -> None:
    """Between its looks (an interval of an hour here) the task is woken by a link's
    end, and half-closes that connection at once."""
    refunds = Refunds(ledger, CLIENT, tmp_path, interval=3600.0)
    attempt = refunds.attempt("svc")
    cap, cid = open_one(ledger, host)
    attempt(cap, cid)

    async def run() -> None:
        task = asyncio.ensure_future(refunds.run())
        try:
            await asyncio.sleep(0.2)
            assert ledger.get_connection(cid).state == ConnectionState.OPEN
            await asyncio.to_thread(attempt.release)  # from a thread, as a watcher's may
            for _ in range(100):
                if ledger.get_connection(cid).state != ConnectionState.OPEN:
                    break
                await asyncio.sleep(0.05)
            assert ledger.get_connection(cid).state == ConnectionState.HALF_CLOSED
        finally:
            task.cancel()

    try:
        asyncio.run(run())
    finally:
        refunds.close()


def test_a_look_cancelled_as_it_settles_still_says_so(
    tmp_path: Path,
    ledger: LocalLedger,
    host: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The daemon stops while a look's settlement is under way in its worker thread:
    the stop waits for that call, and the refund it made is logged and counted, not
    lost with the cancelled task."""
    refunds = Refunds(ledger, CLIENT, tmp_path)
    try:
        attempt = refunds.attempt("svc")
        cap, cid = open_one(ledger, host)
        attempt(cap, cid)
        ledger.close_connection(CLIENT, cid)
        attempt.release()
        ledger.advance_clock(HALF_CLOSE_TIMEOUT_MS)
        entered, go = threading.Event(), threading.Event()
        settle = ledger.settle

        def slow_settle(*args: Any, **kwargs: Any) -> Any:
            entered.set()
            go.wait(10)
            return settle(*args, **kwargs)

        monkeypatch.setattr(ledger, "settle", slow_settle)

        async def stop_mid_look() -> None:
            task = asyncio.ensure_future(refunds.look())
            assert await asyncio.to_thread(entered.wait, 10)
            task.cancel()
            await asyncio.sleep(0.05)
            go.set()
            with pytest.raises(asyncio.CancelledError):
                await task

        with caplog.at_level(logging.INFO, logger="dtp.daemon._refunds"):
            asyncio.run(stop_mid_look())
        assert is_settled(ledger, cid)
        assert (refunds.settled, refunds.refunded) == (1, DEPOSIT)
        assert any("deposit refunded" in r.getMessage() for r in caplog.records)
    finally:
        refunds.close()
