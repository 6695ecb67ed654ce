"""A LocalLedger commit wakes the threads waiting for events on the handle
(wait_events), and only when there are any: each commit notified the handle's
condition, four Python calls a transaction with nobody to wake (a paid connection's
open and its settlement are one commit each)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger
from tests.support.counted_condition import CountedCondition

ALICE = HostIdentity.generate()


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LocalLedger]:
    ledger = LocalLedger(tmp_path / "ledger.db")
    try:
        yield ledger
    finally:
        ledger.close()


def _counted(ledger: LocalLedger) -> CountedCondition:
    counted = CountedCondition(ledger._changed)
    ledger._changed = counted  # type: ignore[assignment]
    return counted


def test_a_commit_with_nobody_waiting_notifies_nobody(ledger: LocalLedger) -> None:
    counted = _counted(ledger)
    ledger.faucet(ALICE.sui_address, 5)
    ledger.create_spending_cap(ALICE, 1)
    assert counted.notified == 0
    assert ledger._change_waiters == 0


def test_a_commit_wakes_a_thread_waiting_for_events(ledger: LocalLedger) -> None:
    ledger.faucet(ALICE.sui_address, 10)
    counted = _counted(ledger)
    _, cursor = ledger.events()
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(ledger.wait_events(cursor, 30.0)))
    waiter.start()
    deadline = time.monotonic() + 10
    while ledger._change_waiters == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert ledger._change_waiters == 1
    ledger.create_spending_cap(ALICE, 1)  # (an event: the waiter returns with it)
    waiter.join(30)
    assert not waiter.is_alive()
    assert counted.notified >= 1
    events, _ = got[0]  # type: ignore[misc]
    assert [e.name for e in events] == ["SpendingCapCreated"]
    assert ledger._change_waiters == 0
    # and with the waiter gone, the next commit notifies nobody
    before = counted.notified
    ledger.faucet(ALICE.sui_address, 5)
    assert counted.notified == before
