"""The embedded LocalLedger: several handles and processes on one file, close()
racing other threads and the background checkpoints, the wall clock across a reopen,
and a file whose rows were damaged. Everything runs on real SQLite files."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dtp.ledger.local._checkpoints as checkpoints
import dtp.ledger.local._store as clock
from dtp.errors import ChainError
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import EventFilter, Sla
from dtp.ledger.local import LocalLedger
from tests.ledger.files import SlowCheckpoints, damage

SLA = Sla(10, 5, 1000)
BOUND = 30.0  # how long a test waits for anything


def ident(seed: int) -> HostIdentity:
    """A fixed identity (the same in every process)."""
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


SERVER, CLIENT = ident(0x71), ident(0x72)


def conserved(ledger: LocalLedger) -> bool:
    """Whether every MIST minted is somewhere (balances, escrows, broadcasts)."""
    audit = ledger.audit()
    return audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


def with_host(path: Path | str) -> tuple[LocalLedger, str]:
    """A ledger file with SERVER's host and service 7."""
    ledger = LocalLedger(path)
    host = ledger.create_host(SERVER, b"\x01" * 32, ["tcp://127.0.0.1:7000"])
    ledger.add_service(SERVER, host, 7, "raw", SLA)
    return ledger, host


# -- several writers on one file ---------------------------------------------------------------

CYCLES = 60


def _cycles(path: str, seed: int, host: str, cycles: int) -> None:
    """Fund, open, close and settle ledger connections, ``cycles`` times (a process or a
    thread of its own)."""
    ledger = LocalLedger(path)
    me = ident(seed)
    try:
        cap = ledger.create_spending_cap(me, 10**9)
        for _ in range(cycles):
            ledger.faucet(me.sui_address, 1000)
            opened = ledger.open_connection(me, host, 7, cap, 1000)
            ledger.close_connection(me, opened.connection_id)
            ledger.close_connection(SERVER, opened.connection_id)
            ledger.settle(SERVER, opened.connection_id)
            # a shared balance both writers change: a lost update shows in its total
            ledger.faucet(SERVER.sui_address, 1)
    finally:
        ledger.close()


def test_two_handles_in_threads_and_two_processes_lose_no_update(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite")
    setup, host = with_host(path)
    try:
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_cycles, args=(path, s, host, CYCLES)) for s in (0x51, 0x52)]
        for proc in procs:
            proc.start()
        errors: list[BaseException] = []

        def run(seed: int) -> None:
            try:
                _cycles(path, seed, host, CYCLES)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(s,)) for s in (0x53, 0x54)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        for proc in procs:
            proc.join(300)
            assert proc.exitcode == 0
        assert errors == []
        seeds = (0x51, 0x52, 0x53, 0x54)
        for seed in seeds:
            assert setup.balance(ident(seed).sui_address) == 1000 * CYCLES
        assert setup.balance(SERVER.sui_address) == len(seeds) * CYCLES
        assert conserved(setup)
        assert setup.object_ref(host).version == 2  # connections never write the Host
        opened, _ = setup.events(filter=EventFilter(type="ConnectionOpened"), limit=10**6)
        assert len(opened) == len(seeds) * CYCLES
        # every transaction ran once: one row each, no (sender, nonce) twice
        rows = setup.dump()["transactions"]
        assert len({(sender, nonce) for sender, nonce, _ in rows}) == len(rows)
    finally:
        setup.close()


def _fork_child(ledger: LocalLedger, finish: threading.Event, done: Any) -> None:
    """In a forked child: go on using the handle inherited from the parent."""
    finish.set()  # (the child's copy: a checkpoint it starts itself need not wait)
    for _ in range(CYCLES):
        ledger.faucet(SERVER.sui_address, 1)
    done.put(ledger.balance(SERVER.sui_address))
    ledger.close()  # the child's own connection; the parent's, inherited, stays untouched


def test_a_fork_while_a_checkpoint_runs_leaves_both_processes_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "forked.sqlite"
    running = threading.Event()
    finish = threading.Event()
    real_run = checkpoints._Checkpointer._run

    def slow_run(self: checkpoints._Checkpointer, where: str) -> None:
        # a checkpoint holding its connection across the fork
        db = sqlite3.connect(where)
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            running.set()
            finish.wait(BOUND)
        finally:
            db.close()
        real_run(self, where)

    monkeypatch.setattr(checkpoints._Checkpointer, "_run", slow_run)
    ledger = LocalLedger(path)
    try:
        # up to the commit that asks for a checkpoint
        for _ in range(checkpoints._CHECKPOINT_EVERY):
            ledger.faucet(SERVER.sui_address, 1)
        assert running.wait(BOUND)
        start = ledger.balance(SERVER.sui_address)
        ctx = multiprocessing.get_context("fork")
        done: Any = ctx.Queue()
        child = ctx.Process(target=_fork_child, args=(ledger, finish, done))
        child.start()
        for _ in range(CYCLES):
            ledger.faucet(SERVER.sui_address, 1)
        finish.set()
        child.join(BOUND * 4)
        assert child.exitcode == 0
        assert done.get(timeout=BOUND) >= start + CYCLES
        # the parent goes on writing after its child closed its own handle
        ledger.faucet(SERVER.sui_address, 1)
        assert ledger.balance(SERVER.sui_address) == start + 2 * CYCLES + 1
        assert conserved(ledger)
    finally:
        finish.set()
        ledger.close()


# -- close() against other threads ---------------------------------------------------------------


def test_close_waits_for_the_checkpoint_that_a_transaction_running_meanwhile_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() looks for a running checkpoint under the handle's lock, so that a
    checkpoint a transaction of another thread starts meanwhile is waited for too: no
    WAL (commits in it) stays beside the file, and no copying goes on after close()."""
    path = tmp_path / "ledger.sqlite"
    looked = threading.Event()
    real_wait = checkpoints._CHECKPOINTER.wait

    def wait(where: str, timeout: float) -> bool:
        try:
            return real_wait(where, timeout)
        finally:
            looked.set()  # close() looked for a running checkpoint

    slow = SlowCheckpoints(monkeypatch, lambda: time.sleep(1.0))
    monkeypatch.setattr(checkpoints._CHECKPOINTER, "wait", wait)
    ledger = LocalLedger(path)
    # the next commit is the one that asks for a checkpoint
    while (ledger._commits + 1) % checkpoints._CHECKPOINT_EVERY:
        ledger.faucet(CLIENT.sui_address, 1)
    assert not slow.running.is_set()
    closer = threading.Thread(target=ledger.close)
    with ledger._lock:  # another thread in the handle, under way when close() is called
        closer.start()
        # close() is under way: it must look for a running checkpoint only once this
        # thread is out of the handle, not while it waits for the lock
        looked.wait(3.0)
        ledger.faucet(CLIENT.sui_address, 1)  # (reentrant: this thread holds the lock)
        assert slow.running.wait(BOUND)  # that commit started a checkpoint
    closer.join(BOUND)
    assert not closer.is_alive()
    assert not os.path.exists(f"{path}-wal"), "close() left the WAL behind"
    reopened = LocalLedger(path)
    try:
        # every faucet call, the last one included, is in the file
        assert reopened.balance(CLIENT.sui_address) == reopened.minted() > 0
        assert conserved(reopened)
    finally:
        reopened.close()


def test_close_from_two_threads_and_during_another_threads_transaction(tmp_path: Path) -> None:
    path = tmp_path / "closing.sqlite"
    ledger = LocalLedger(path)
    ledger.faucet(CLIENT.sui_address, 5)
    results: list[object] = []
    barrier = threading.Barrier(3)

    def close() -> None:
        barrier.wait(BOUND)
        ledger.close()
        results.append("closed")

    def write() -> None:
        barrier.wait(BOUND)
        try:
            for _ in range(200):
                ledger.faucet(CLIENT.sui_address, 1)
        except ChainError as exc:
            results.append(exc.name)

    threads = [threading.Thread(target=f) for f in (close, close, write)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(BOUND)
        assert not thread.is_alive()
    assert results.count("closed") == 2
    # the writer either finished first or was told the ledger is closed, typed
    assert set(results) <= {"closed", "LedgerUnavailable"}
    with pytest.raises(ChainError) as caught:
        ledger.balance(CLIENT.sui_address)
    assert caught.value.name == "LedgerUnavailable"
    assert not os.path.exists(f"{path}-wal")
    reopened = LocalLedger(path)
    try:
        assert conserved(reopened)
        assert reopened.balance(CLIENT.sui_address) == reopened.minted()
    finally:
        reopened.close()


# -- the wall clock across a reopen ---------------------------------------------------------------


def test_event_times_never_go_back_across_a_reopen_when_the_wall_clock_steps_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "clock.sqlite"
    ledger, host = with_host(path)
    ledger.faucet(CLIENT.sui_address, 10_000)
    cap = ledger.create_spending_cap(CLIENT, 10**6)
    first = ledger.open_connection(CLIENT, host, 7, cap, 1000)
    epoch = ledger.advance_epoch()
    ledger.close()
    # the wall clock steps back an hour between the two runs
    real = clock._wall_ms
    monkeypatch.setattr(clock, "_wall_ms", lambda: real() - 3_600_000)
    ledger = LocalLedger(path)
    try:
        assert ledger.epoch() == epoch
        second = ledger.open_connection(CLIENT, host, 7, cap, 1000)
        events, _ = ledger.events(filter=EventFilter(type="ConnectionOpened"))
        times = [event.timestamp_ms for event in events]
        assert len(times) == 2 and times[1] >= times[0]
        assert ledger.clock_ms() >= times[1]
        assert second.connection_id != first.connection_id
    finally:
        ledger.close()


# -- a damaged file ---------------------------------------------------------------------------


@pytest.fixture
def damaged_world(tmp_path: Path) -> Iterator[tuple[Path, str, str]]:
    """A closed ledger file with a host, a funded client with a cap, and events."""
    path = tmp_path / "damaged.sqlite"
    ledger, host = with_host(path)
    ledger.faucet(CLIENT.sui_address, 10_000)
    cap = ledger.create_spending_cap(CLIENT, 10**6)
    ledger.close()
    yield path, host, cap


CALLS: dict[str, Callable[[LocalLedger, str, str], object]] = {
    "get_host": lambda led, host, cap: led.get_host(host),
    "get_objects": lambda led, host, cap: led.get_objects([host, cap]),
    "open_connection": lambda led, host, cap: led.open_connection(CLIENT, host, 7, cap, 1000),
    "audit": lambda led, host, cap: led.audit(),
}


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("data", ["{broken", '{"$b": "not hex"}', "[1, 2"])
def test_object_data_that_does_not_parse_is_ledger_unavailable(
    damaged_world: tuple[Path, str, str], call: str, data: str
) -> None:
    path, host, cap = damaged_world
    damage(path, "UPDATE objects SET data = ? WHERE id = ?", data, host)
    ledger = LocalLedger(path)
    try:
        with pytest.raises(ChainError) as caught:
            CALLS[call](ledger, host, cap)
        assert caught.value.name == "LedgerUnavailable"
        assert "does not parse" in str(caught.value)
        # nothing was written by the failing call: the client's money is where it was
        assert ledger.balance(CLIENT.sui_address) == 10_000
    finally:
        ledger.close()


def test_event_fields_that_do_not_parse_are_ledger_unavailable(
    damaged_world: tuple[Path, str, str],
) -> None:
    path, _, _ = damaged_world
    damage(path, "UPDATE events SET fields = '[oops'")
    ledger = LocalLedger(path)
    try:
        with pytest.raises(ChainError) as caught:
            ledger.events(None)
        assert caught.value.name == "LedgerUnavailable"
        assert str(path) in str(caught.value)
    finally:
        ledger.close()


@pytest.mark.parametrize(
    "call",
    [
        lambda led: led.balance(CLIENT.sui_address),
        lambda led: led.faucet(CLIENT.sui_address, 1),
        lambda led: led.audit(),
    ],
    ids=["balance", "faucet", "audit"],
)
def test_a_balance_that_is_not_a_number_is_ledger_unavailable(
    damaged_world: tuple[Path, str, str], call: Callable[[LocalLedger], object]
) -> None:
    path, _, _ = damaged_world
    damage(path, "UPDATE balances SET amount = 'x' WHERE address = ?", CLIENT.sui_address)
    ledger = LocalLedger(path)
    try:
        with pytest.raises(ChainError) as caught:
            call(ledger)
        assert caught.value.name == "LedgerUnavailable"
        assert str(path) in str(caught.value)
    finally:
        ledger.close()


@pytest.mark.parametrize(
    ("key", "call"),
    [
        ("epoch", lambda led, host, cap: led.epoch()),
        ("epoch", lambda led, host, cap: led.open_connection(CLIENT, host, 7, cap, 1000)),
        ("clock_floor", lambda led, host, cap: led.clock_ms()),
        ("minted", lambda led, host, cap: led.faucet(CLIENT.sui_address, 1)),
    ],
    ids=["epoch", "open_connection", "clock_ms", "faucet"],
)
def test_a_ledger_setting_that_is_not_a_number_is_ledger_unavailable(
    damaged_world: tuple[Path, str, str], key: str, call: Callable[[LocalLedger, str, str], object]
) -> None:
    path, host, cap = damaged_world
    damage(path, "UPDATE meta SET value = 'x' WHERE key = ?", key)
    ledger = LocalLedger(path)
    try:
        with pytest.raises(ChainError) as caught:
            call(ledger, host, cap)
        assert caught.value.name == "LedgerUnavailable"
        assert str(path) in str(caught.value)
    finally:
        ledger.close()
