"""A client's deposits taken back once their half-close timeout has passed, with no
command typed (dtp.payments._refunds.RefundCollector): on a LocalLedger file (clock moved
by hand) and on the Sui node stand-in (gas charged: a refund below its gas is left)."""

from __future__ import annotations

import json
import logging
import os
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp.payments._refunds as refunds
from dtp.errors import ChainError
from dtp.ledger._objects import HALF_CLOSE_TIMEOUT_MS, ConnectionState, EventFilter
from dtp.ledger.local import LocalLedger
from dtp.ledger.receipt import Receipt, fee
from dtp.payments._refund_book import OpenedBook
from dtp.payments._refunds import RefundCollector
from tests.support.polling import wait_for
from tests.support.refund_places import DEPOSIT, SLA, Place, refund_place


@pytest.fixture(params=["local", "sui"])
def place(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Place]:
    monkeypatch.setattr(refunds, "POLL", 0.05)
    monkeypatch.setattr(refunds, "RETRY", 0.05)
    with refund_place(request.param, tmp_path) as made:
        yield made


def test_a_half_closed_connection_is_settled_once_its_timeout_has_passed(place: Place) -> None:
    cid = place.open()
    place.ledger.close_connection(place.client, cid)
    got: list[tuple[str, int]] = []
    with RefundCollector(
        place.ledger, place.client, on_refund=lambda c, m: got.append((c, m))
    ) as rc:
        rc.add(cid)
        assert wait_for(lambda: rc.pending().get(cid) is not None, 5)  # (read: when)
        at = rc.pending()[cid]
        assert at == place.ledger.get_connection(cid).half_closed_at_ms + HALF_CLOSE_TIMEOUT_MS
        assert not wait_for(lambda: got, 0.3)  # not due: nothing sent
        place.advance(HALF_CLOSE_TIMEOUT_MS + 2_000)
        assert wait_for(lambda: got, 5)
    assert got == [(cid, DEPOSIT)]
    # settled, and deleted in the same transaction: its objects' storage is the client's
    assert place.settled_refund(cid) == DEPOSIT and len(rc) == 0
    assert place.gone(cid)


def test_an_open_connection_is_half_closed_first(place: Place) -> None:
    cid = place.open()
    with RefundCollector(place.ledger, place.client) as rc:
        rc.add(cid)
        assert wait_for(
            lambda: place.ledger.get_connection(cid).state == ConnectionState.HALF_CLOSED, 5
        )
        place.advance(HALF_CLOSE_TIMEOUT_MS + 2_000)
        assert wait_for(lambda: place.settled_refund(cid) is not None, 5)
    assert rc.refunded == [(cid, DEPOSIT)]
    assert place.gone(cid)


def test_a_connection_its_server_settled_is_reported_with_what_it_refunded(place: Place) -> None:
    cid = place.open()
    receipt = Receipt(place.ledger.receipt_scope(cid), 4096, 0, fee(SLA, 4096, 0), 1).sign(
        place.client
    )
    place.ledger.close_connection(place.client, cid)
    place.server_ledger.settle_with_receipt(place.server, cid, receipt)
    with RefundCollector(place.ledger, place.client) as rc:
        rc.add(cid)
        assert wait_for(lambda: rc.refunded, 5)
    assert rc.refunded == [(cid, DEPOSIT - receipt.total_amount)]


def _reimbursed(place: Place, cid: str) -> list[int]:
    """The amounts of the SponsorReimbursed events naming ``cid``."""
    events, _ = place.ledger.events(None, EventFilter(type="SponsorReimbursed", object_id=cid))
    return [int(e["amount"]) for e in events]


def test_a_sponsored_connection_its_server_settled_is_reimbursed_before_it_is_deleted(
    place: Place,
) -> None:
    # a plain destroy is refused (it would leave the pledge reserved for good): the
    # collector deletes it with reimburse_and_destroy, which pays the provider's share
    cid, lane = place.open_sponsored(share_bps=5_000, funds=DEPOSIT)
    assert place.ledger.get_connection(cid).sponsor == lane
    pledge = DEPOSIT // 2
    assert place.ledger.get_sponsor_lane(lane).reserved == pledge
    receipt = Receipt(place.ledger.receipt_scope(cid), 4096, 0, fee(SLA, 4096, 0), 1).sign(
        place.client
    )
    place.server_ledger.settle_with_receipt(place.server, cid, receipt)
    with RefundCollector(place.ledger, place.client) as rc:
        rc.add(cid)
        assert wait_for(lambda: rc.refunded, 5)
        assert wait_for(lambda: place.gone(cid), 5)
    share = receipt.total_amount // 2
    assert _reimbursed(place, cid) == [share]
    after = place.ledger.get_sponsor_lane(lane)
    assert (after.funds, after.reserved, after.pledges) == (DEPOSIT - share, 0, 0)


def test_a_sponsored_connection_its_client_settles_is_reimbursed_in_the_same_step(
    place: Place,
) -> None:
    cid, lane = place.open_sponsored(share_bps=10_000, funds=DEPOSIT)
    receipt = Receipt(place.ledger.receipt_scope(cid), 4096, 0, fee(SLA, 4096, 0), 1).sign(
        place.client
    )
    place.server_ledger.claim(place.server, place.ledger.get_connection(cid).escrow, receipt)
    place.ledger.close_connection(place.client, cid)
    with RefundCollector(place.ledger, place.client) as rc:
        rc.add(cid)
        assert wait_for(lambda: rc.pending().get(cid) is not None, 5)
        place.advance(HALF_CLOSE_TIMEOUT_MS + 2_000)
        assert wait_for(lambda: rc.refunded, 5)
    assert rc.refunded == [(cid, DEPOSIT - receipt.total_amount)]
    assert place.gone(cid)
    assert _reimbursed(place, cid) == [receipt.total_amount]
    after = place.ledger.get_sponsor_lane(lane)
    assert (after.funds, after.reserved, after.pledges) == (DEPOSIT - receipt.total_amount, 0, 0)


def test_a_settlement_whose_refund_cannot_be_read_is_not_logged_as_zero(
    place: Place, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # the connection is found settled, but the escrow's read fails: the log says the
    # refund is unknown rather than "0 MIST refunded"
    cid = place.open()
    place.ledger.close_connection(place.client, cid)
    place.server_ledger.settle(place.server, cid)

    def unreadable(escrow_id: str) -> object:
        raise ChainError("the node is away")

    monkeypatch.setattr(place.ledger, "get_escrow", unreadable)
    caplog.set_level(logging.INFO, logger="dtp.payments._refunds")
    with RefundCollector(place.ledger, place.client) as rc:
        rc.add(cid)
        assert wait_for(lambda: rc.refunded, 5)
    assert rc.refunded == [(cid, 0)]
    said = [r.getMessage() for r in caplog.records if cid in r.getMessage()]
    assert any("could not be read" in line for line in said), said
    assert not any("0 MIST refunded" in line for line in said), said


def _in_book(path: Path) -> dict[str | None, int | None]:
    with OpenedBook(path) as book:
        return {e.connection_id: e.due_ms for e in book.entries()}


def test_the_connections_waiting_survive_a_restart_in_their_file(
    place: Place, tmp_path: Path
) -> None:
    cid = place.open()
    place.ledger.close_connection(place.client, cid)
    path = tmp_path / "refunds.sqlite"
    with RefundCollector(place.ledger, place.client, path) as rc:
        rc.add(cid)
        assert wait_for(lambda: rc.pending().get(cid) is not None, 5)
    assert cid in _in_book(path)  # (closed: kept, not logged)
    place.advance(HALF_CLOSE_TIMEOUT_MS + 2_000)
    with RefundCollector(place.ledger, place.client, path) as again:
        assert cid in again
        again.start()
        assert wait_for(lambda: again.refunded, 5)
    assert _in_book(path) == {}


def test_a_file_of_the_first_collector_is_taken_up(place: Place, tmp_path: Path) -> None:
    """Its JSON (connection ID -> due time) becomes a book with the same connections."""
    cid = place.open()
    place.ledger.close_connection(place.client, cid)
    path = tmp_path / "refunds.json"
    path.write_text(json.dumps({cid: None, "not an ID": 5}))
    place.advance(HALF_CLOSE_TIMEOUT_MS + 2_000)
    with RefundCollector(place.ledger, place.client, path) as rc:
        assert rc.pending() == {cid: None}
        rc.start()
        assert wait_for(lambda: rc.refunded, 5)
    assert rc.refunded == [(cid, DEPOSIT)]
    assert _in_book(path) == {}


@pytest.mark.parametrize("place", ["sui"], indirect=True)
def test_a_deposit_smaller_than_the_gas_of_taking_it_back_is_left(
    place: Place, caplog: pytest.LogCaptureFixture
) -> None:
    """200 000 MIST left against 2.26 M of gas for the settlement: not worth a
    transaction (logged with the command that takes it back anyway)."""
    cid = place.open(200_000)
    place.ledger.close_connection(place.client, cid)
    spent = place.ledger.gas_spent(place.client.sui_address).total
    place.advance(HALF_CLOSE_TIMEOUT_MS + 2_000)
    with (
        caplog.at_level(logging.INFO, logger="dtp.payments._refunds"),
        RefundCollector(place.ledger, place.client) as rc,
    ):
        rc.add(cid)
        assert wait_for(lambda: len(rc) == 0, 5)
    assert not rc.refunded and not place.ledger.get_connection(cid).settled
    assert place.ledger.gas_spent(place.client.sui_address).total == spent
    assert any(f"dtp refund {cid}" in r.getMessage() for r in caplog.records)


def test_what_still_waits_at_close_is_logged_with_its_command(
    place: Place, caplog: pytest.LogCaptureFixture
) -> None:
    cid = place.open()
    place.ledger.close_connection(place.client, cid)
    with caplog.at_level(logging.WARNING, logger="dtp.payments._refunds"):
        rc = RefundCollector(place.ledger, place.client)
        rc.add(cid)
        rc.close()
    # a LocalLedger file is named (dtp refund alone reads the default file), and whose
    # identity signs
    path = getattr(place.ledger, "path", None)
    quoted = shlex.quote(f"local:{os.path.abspath(path)}") if isinstance(path, str) else ""
    ledger = f" --ledger {quoted}" if quoted else ""
    command = f"`dtp refund {cid} --wait{ledger}` with the client's identity file (--identity)"
    assert any(command in r.getMessage() for r in caplog.records), caplog.text
    assert ledger or not isinstance(place.ledger, LocalLedger)
    with pytest.raises(RuntimeError, match="closed"):
        rc.add(cid)


def test_the_process_collector_of_a_ledger_and_identity(place: Place) -> None:
    """One per ledger object and identity while it has work; its thread ends once
    nothing waits, and it is forgotten (no ledger held for the process)."""
    first = refunds.refunds_for(place.ledger, place.client)
    assert refunds.refunds_for(place.ledger, place.client) is first
    cid = place.open()
    place.ledger.close_connection(place.client, cid)
    first.add(cid)
    place.advance(HALF_CLOSE_TIMEOUT_MS + 2_000)
    assert wait_for(lambda: first.refunded, 5)
    assert wait_for(lambda: first not in refunds._running, 5)
    assert refunds.refunds_for(place.ledger, place.client) is not first
