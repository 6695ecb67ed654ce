"""Two or more paid servers on one receipt store, one of them killed (dtp.payments.receipt_store's
server runs, dtp.payments._serving.recover_store, the servers' policy loops).

A server killed while another was live on the same store left its unclaimed receipts
for a start when none was: its restart was not alone, so it claimed nothing, and the
client's half-close timeout refunded the whole deposit -- a fee earned, lost to a crash.
Each server run now owns its rows and holds a lock file of its own: a restart, and
every live server from time to time, claims the rows of runs whose lock nobody holds
(dead), never those of live ones, and removes their lock files.

Real SQLite files, a real LocalLedger, real processes killed with SIGKILL, real paid
servers (blocking and asyncio).

The receipt store's private files and orphan adoption
(dtp.payments.receipt_store).

- A server starting alone on the store lists the rows of every run but the live ones
  it found beside the store, and now gives those of no run with a lock file to a dead
  run of its own. A server that attached after that look (its lock file made since)
  and kept a receipt before the list was read had its live connection's row listed
  (claimed at the start, settling the connection under it) and, since the adoption,
  given to a dead run: claimed by every live server's recovery round. Rows of a run
  whose lock file is there are a run's, never an orphan's.
- A run lock file this server cannot open (another user's, 0o600 since lock files are
  private) was taken for one removed meanwhile: its live run's rows were listed by a
  start alone, and given to a dead run. It is a run that cannot be told dead: left.
- A store named by a symlink to a file not made yet was made by SQLite, at the
  symlink's target, with the umask's mode (``_create_private`` made no file: the name
  exists as a symlink).

Real SQLite files; second servers on other handles (flock's locks are per open file:
another handle is another server, as in another process)."""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import dtp.aio
import dtp.hostid.paid
import dtp.payments._serving
import dtp.payments.receipt_store as receipt_store
import dtp.socket
from dtp.hostid.paid import ServicePolicy
from dtp.payments._serving import recover_store
from dtp.payments.receipt_store import ReceiptStore, StoredReceipt
from dtp.payments.receipt_store import _store as store_runs
from tests.support.paid_stores import STORE_PORT as PORT
from tests.support.paid_stores import STORE_SERVER as SERVER
from tests.support.paid_stores import StoreWorld as World
from tests.support.paid_stores import kill, server_run, store_world
from tests.support.paid_twins import loop_in_thread, stop, streams_forever
from tests.support.polling import wait_for
from tests.support.receipt_stores import receipt

# (a server run in another process: tests/support/paid_stores.py's server_run)


def run_lock_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f"{path.name}-lock-"))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with store_world(tmp_path) as made:
        yield made


def test_a_restart_beside_a_live_server_claims_what_the_killed_run_left(world: World) -> None:
    live, lost = world.receipt(), world.receipt()
    with server_run(world.store_path, live), server_run(world.store_path, lost) as killed:
        kill(killed)
        # the killed server restarts, with the other one still live
        with ReceiptStore(world.store_path) as store:
            alone = store.attach_server()
            assert not alone
            recovered = recover_store(world.ledger, SERVER, store, alone)
            # before: [] -- left for a start when no server is live, and refunded
            # to the client at its half-close timeout meanwhile
            assert [cid for cid, _ in recovered] == [lost.connection_id]
            assert world.claimed(lost) == lost.total_amount
            # the live server's connection is its own: untouched
            assert not world.settled(live)
            assert [s.receipt.connection_id for s in store.unclaimed()] == [live.connection_id]
            # the dead run's lock file is gone; the live run's and the restart's stay
            assert len(run_lock_files(world.store_path)) == 2
            store.detach_server()
        # (the restart left nothing to claim: its lock file went with its detach)
        assert len(run_lock_files(world.store_path)) == 1


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_a_live_server_claims_what_a_run_killed_beside_it_left(
    world: World, monkeypatch: pytest.MonkeyPatch, api: str
) -> None:
    # (raising=False: the test holds whether or not the module names this interval)
    monkeypatch.setattr(dtp.payments._serving, "RECOVERY_INTERVAL", 0.2, raising=False)
    policy = ServicePolicy(refresh_interval=0.05)
    options = {
        "ledger": world.ledger,
        "identity": SERVER,
        "receipts": world.store_path,
        "policy": policy,
    }
    live, lost = world.receipt(), world.receipt()
    with loop_in_thread() as loop:
        if api == "blocking":
            server: object = dtp.socket.serve(world.host_id, PORT, streams_forever, **options)
        else:
            started = dtp.aio.serve(world.host_id, PORT, streams_forever, **options)
            server = asyncio.run_coroutine_threadsafe(started, loop).result(30)
        try:
            with server_run(world.store_path, live), server_run(world.store_path, lost) as run:
                assert server.recovered == []  # type: ignore[attr-defined]
                kill(run)
                # before: claimed at a start when none was live, long after the client
                # had taken it all back
                assert wait_for(lambda: world.settled(lost), 60)
                assert world.claimed(lost) == lost.total_amount
                recovered = server.recovered  # type: ignore[attr-defined]
                assert wait_for(lambda: len(recovered) == 1, 10)
                assert recovered[0][0] == lost.connection_id
                # rounds later, the live run's connection is still its own
                rounds = 3 * dtp.payments._serving.RECOVERY_INTERVAL
                assert not wait_for(lambda: world.settled(live), rounds)
        finally:
            if isinstance(server, dtp.hostid.paid.PaidServer):
                server.close()
                assert server.wait_released(30)
            else:
                asyncio.run_coroutine_threadsafe(stop(server), loop).result(30)  # type: ignore[arg-type]


def test_a_store_from_before_run_ids_is_migrated_and_its_receipts_recovered(
    world: World,
) -> None:
    path = world.store_path
    left = world.receipt()
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE receipts (connection_id TEXT PRIMARY KEY, nonce TEXT NOT NULL, "
        "total_amount TEXT NOT NULL, encoded BLOB NOT NULL, "
        "claimed_amount TEXT NOT NULL DEFAULT '00000000000000000000', "
        "updated_ms INTEGER NOT NULL)"
    )
    old.execute(
        "INSERT INTO receipts (connection_id, nonce, total_amount, encoded, updated_ms) "
        "VALUES (?, ?, ?, ?, 1)",
        (left.connection_id, f"{left.nonce:020d}", f"{left.total_amount:020d}", left.encode()),
    )
    old.commit()
    old.close()
    with ReceiptStore(path) as store:
        # a server alone claims what a run before run IDs left, as before
        alone = store.attach_server()
        assert alone
        assert [cid for cid, _ in recover_store(world.ledger, SERVER, store, alone)] == [
            left.connection_id
        ]
        store.detach_server()
    check = sqlite3.connect(path)
    try:
        columns = [row[1] for row in check.execute("PRAGMA table_info(receipts)")]
    finally:
        check.close()
    assert columns[-1] == "run_id"
    assert run_lock_files(path) == []


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _late_server(
    monkeypatch: pytest.MonkeyPatch, first: ReceiptStore, second: ReceiptStore
) -> None:
    """``second`` attaches (not alone) and keeps a receipt of its live connection just
    after ``first`` looked for the runs beside the store."""
    look = first._lock_dead_runs

    def then_another_attaches() -> tuple[dict[str, tuple[int, Path]], list[str]]:
        found = look()
        if not second._servers:
            assert not second.attach_server()
            assert second.keep(receipt(1, 500))
        return found

    monkeypatch.setattr(first, "_lock_dead_runs", then_another_attaches)


def _start_alone_then_a_live_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[StoredReceipt], list[StoredReceipt]]:
    path = tmp_path / "receipts.db"
    with ReceiptStore(path) as first, ReceiptStore(path) as second:
        alone = first.attach_server()
        assert alone
        _late_server(monkeypatch, first, second)
        with first.orphaned(alone) as at_start:
            pass
        monkeypatch.undo()
        # a recovery round of the live server, 30 s later, the second still serving
        with first.orphaned() as in_a_round:
            pass
        second.detach_server()
        first.detach_server()
    return at_start, in_a_round


def test_a_server_attached_after_the_look_is_not_given_to_a_dead_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, in_a_round = _start_alone_then_a_live_round(tmp_path, monkeypatch)
    assert in_a_round == []


def test_a_server_attached_after_the_look_is_not_listed_at_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at_start, _ = _start_alone_then_a_live_round(tmp_path, monkeypatch)
    assert at_start == []


def test_rows_of_no_run_are_still_given_to_a_dead_run(tmp_path: Path) -> None:
    """A guard: what the adoption is for still happens, beside a live run's rows."""
    path = tmp_path / "receipts.db"
    with ReceiptStore(path) as before:
        assert before.keep(receipt(1, 500))  # (no server attached: a row of no run)
    with ReceiptStore(path) as first:
        alone = first.attach_server()
        with first.orphaned(alone) as at_start:
            assert [r.unclaimed for r in at_start] == [500]
        with first.orphaned() as in_a_round:
            assert [r.unclaimed for r in in_a_round] == [500]
        first.detach_server()


def _unopenable_run_locks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run lock files that this process may not open (another user's, 0o600): the
    tests run as root, whom file modes do not stop."""
    real_open = os.open

    def refusing(path: object, flags: int, *args: object, **kwargs: object) -> int:
        name = os.fspath(path)  # type: ignore[call-overload]
        if "-lock-" in str(name) and not flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", name)
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store_runs.os, "open", refusing)


def test_a_run_lock_file_that_cannot_be_opened_is_a_live_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "receipts.db"
    with ReceiptStore(path) as other:
        assert other.attach_server()
        assert other.keep(receipt(1, 500))  # its live connection's
        # the other user's server holds no "-lock" this one shares (it could not open
        # it either): this one starts alone
        assert other._server_fd is not None
        os.close(other._server_fd)
        other._server_fd = None
        _unopenable_run_locks(monkeypatch)
        with ReceiptStore(path) as mine:
            alone = mine.attach_server()
            assert alone
            with mine.orphaned(alone) as at_start:
                listed = at_start
            with mine.orphaned() as in_a_round:
                rounds = in_a_round
            mine.detach_server()
        monkeypatch.undo()
        other.detach_server()
    assert (listed, rounds) == ([], [])


def test_a_store_named_by_a_dangling_symlink_is_made_private(
    tmp_path: Path, umask_022: None
) -> None:
    target = tmp_path / "data" / "receipts.db"
    target.parent.mkdir()
    link = tmp_path / "receipts.db"
    link.symlink_to(target)
    with ReceiptStore(link) as store:
        assert store.keep(receipt(1, 500))
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert link.is_symlink()


@pytest.mark.parametrize(
    "name",
    [
        lambda tmp: str(tmp / "missing" / "receipts.db"),  # (no such directory)
        lambda tmp: str(tmp),  # (a directory)
    ],
)
def test_a_store_that_cannot_be_made_fails_as_before_and_leaves_nothing(
    tmp_path: Path, name: Callable[[Path], str]
) -> None:
    """A guard: no file is made where SQLite would have made none."""
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(receipt_store.ReceiptStoreError, match="unable to open"):
        ReceiptStore(name(tmp_path))
    assert sorted(tmp_path.rglob("*")) == before


def test_a_server_that_cannot_open_the_store_lock_is_not_alone_and_owns_its_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's ``-lock`` another user's (0o600): this server cannot tell whether
    that user's server is live. Taken for alone, it claimed that server's live rows at
    its start; and, starting no run, it kept its own rows as no run's, which the other
    user's next start alone took for orphans' (listed, and given to a dead run)."""
    path = tmp_path / "receipts.db"
    with ReceiptStore(path) as other:
        assert other.attach_server()
        other.detach_server()  # (its -lock file is there, and stays)
    real_open = os.open
    lock = str(path) + "-lock"

    def refusing(name: object, flags: int, *args: object, **kwargs: object) -> int:
        if os.fspath(name) == lock:  # type: ignore[call-overload]
            raise PermissionError(errno.EACCES, "Permission denied", lock)
        return real_open(name, flags, *args, **kwargs)  # type: ignore[arg-type]

    with ReceiptStore(path) as mine:
        monkeypatch.setattr(store_runs.os, "open", refusing)
        alone = mine.attach_server()
        monkeypatch.undo()
        assert mine.keep(receipt(1, 500))  # its live connection's
        with ReceiptStore(path) as restarted:  # the other user's server, restarting
            assert restarted.attach_server()
            with restarted.orphaned(True) as at_start:
                listed = at_start
            with restarted.orphaned() as in_a_round:
                rounds = in_a_round
            restarted.detach_server()
        mine.detach_server()
    assert (alone, listed, rounds) == (False, [], [])
