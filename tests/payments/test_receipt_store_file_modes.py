"""How a paid server keeps and settles receipts (dtp.payments.receipt_store).

- A new store file, its ``-wal`` and ``-shm`` files and its lock files were made with
  the umask's mode (0o644): every local user could read every client's receipts, and --
  flock needs no write access -- hold a lock file: ``<store>-lock`` exclusively (no
  server started on the store), or a dead run's shared (it looked live for good, and
  its receipts were never claimed). They are 0o600; a ``-lock`` file made before is made
  private as a server attaches. A store file that exists keeps its mode.
- The unclaimed rows of no run with a lock file (a store from before run IDs, rows kept
  with no server attached or by a server that could make no lock file) were claimed only
  by a start alone on the store: one whose claim failed there (the ledger unavailable
  for a moment) was not tried again by the live server's recovery rounds, only at the
  next start alone, while its client's half-close timeout ran. The start alone now
  gives them to a dead run of their own, which the live rounds retry.

Real SQLite files, a real LocalLedger (its settlements failing for a while)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtp.payments._serving import recover_store
from dtp.payments._settlement import ClaimBackoff
from dtp.payments.receipt_store import ReceiptStore
from dtp.payments.receipts import Receipt
from tests.support.paid_stores import STORE_SERVER as SERVER
from tests.support.paid_stores import StoreWorld as World
from tests.support.paid_stores import store_world
from tests.support.paid_twins import OutageLedger
from tests.support.receipt_stores import receipt


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with store_world(tmp_path) as made:
        yield made


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, whatever the test run's is."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_a_new_store_its_journal_and_its_lock_files_are_private(
    tmp_path: Path, umask_022: None
) -> None:
    path = tmp_path / "receipts.db"
    with ReceiptStore(path) as store:
        store.attach_server()
        assert store.keep(receipt(1, 500))
        modes = {p.name: _mode(p) for p in tmp_path.iterdir()}
        store.detach_server()
    # (the run's lock file too, while it was there: its name ends with the run's ID)
    assert {"receipts.db", "receipts.db-wal", "receipts.db-shm", "receipts.db-lock"} <= set(modes)
    assert any(name.startswith("receipts.db-lock-") for name in modes)
    assert {name: mode for name, mode in modes.items() if mode & 0o077} == {}


def test_a_lock_file_made_before_is_made_private_and_a_store_keeps_its_mode(
    tmp_path: Path, umask_022: None
) -> None:
    path = tmp_path / "receipts.db"
    ReceiptStore(path).close()
    path.chmod(0o640)  # (its owner's choice: kept)
    lock = tmp_path / "receipts.db-lock"
    lock.touch(0o644)
    lock.chmod(0o644)
    with ReceiptStore(path) as store:
        store.attach_server()
        assert _mode(lock) == 0o600
        store.detach_server()
    assert _mode(path) == 0o640


def claimed(place: World, receipt: Receipt) -> int:
    """MIST claimed so far from the escrow of ``receipt``'s connection."""
    tc = place.ledger.get_connection(receipt.connection_id)
    return place.ledger.get_escrow(tc.escrow).claimed


def test_a_receipt_of_no_run_that_failed_at_the_start_is_retried_by_the_live_rounds(
    world: World,
) -> None:
    left = world.receipt()
    with ReceiptStore(world.store_path) as before:
        assert before.keep(left)  # (no server attached: the row is owned by no run)
    ledger = OutageLedger(world.ledger)
    with ReceiptStore(world.store_path) as store:
        alone = store.attach_server()
        assert alone
        ledger.down.set()  # the ledger away as the server starts
        assert recover_store(ledger, SERVER, store, alone) == []  # type: ignore[arg-type]
        assert ledger.refused > 0
        ledger.down.clear()
        # the live server's next recovery round (PaidServer's Recovery thread)
        backoff = ClaimBackoff(4)
        settled = recover_store(ledger, SERVER, store, False, backoff=backoff)  # type: ignore[arg-type]
        assert [cid for cid, _ in settled] == [left.connection_id]
        store.detach_server()
        assert list(store.unclaimed()) == []
    assert claimed(world, left) == left.total_amount
    # (claimed: nothing of the run it was given to is left, its lock file neither)
    names = [p.name for p in world.store_path.parent.iterdir()]
    assert [n for n in names if n.startswith("receipts.db-lock-")] == []


def test_a_live_servers_rows_are_not_given_to_a_dead_run(
    world: World,
) -> None:
    """A guard: a server alone gives only rows of no run to a dead one, never those of
    another server that is live (attached later, on another handle)."""
    mine = world.receipt()
    with ReceiptStore(world.store_path) as first, ReceiptStore(world.store_path) as second:
        alone = first.attach_server()
        assert alone
        assert not second.attach_server()
        assert second.keep(mine)  # a live connection of the second server
        with first.orphaned(alone) as receipts:
            assert receipts == []
        with first.orphaned() as receipts:
            assert receipts == []
        second.detach_server()
        first.detach_server()
    assert claimed(world, mine) == 0
