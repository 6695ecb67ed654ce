"""LocalLedger.change_watch: a wait that a commit to the ledger file ends, whichever
handle or process commits (Linux's inotify on the file's WAL), so that a paid server
waiting for a client's open need not poll its change marker on a timer."""

from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger
from dtp.ledger.local._watch import _INOTIFY, WalWatch

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(_INOTIFY is None, reason="inotify is Linux's")


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LocalLedger]:
    ledger = LocalLedger(tmp_path / "ledger.db")
    try:
        yield ledger
    finally:
        ledger.close()


def _watch(ledger: LocalLedger) -> WalWatch:
    watch = ledger.change_watch()
    assert watch is not None
    watch.drain()  # (the ledger's own first writes)
    return watch


def test_a_quiet_ledger_waits_the_whole_time(ledger: LocalLedger) -> None:
    watch = _watch(ledger)
    started = time.monotonic()
    assert watch.wait(0.1) is False
    assert time.monotonic() - started >= 0.09


def test_a_commit_of_another_handle_ends_the_wait(ledger: LocalLedger, tmp_path: Path) -> None:
    watch = _watch(ledger)
    marker = ledger.change_marker()
    alice = HostIdentity.generate()

    def commit() -> None:
        time.sleep(0.05)
        writer = LocalLedger(tmp_path / "ledger.db")
        try:
            writer.faucet(alice.sui_address, 1)
        finally:
            writer.close()

    thread = threading.Thread(target=commit)
    thread.start()
    started = time.monotonic()
    try:
        assert watch.wait(30.0) is True
    finally:
        thread.join(30)
    assert time.monotonic() - started < 10
    # (a wake-up says the WAL was written: the marker says whether a commit shows)
    deadline = time.monotonic() + 10
    while ledger.change_marker() == marker and time.monotonic() < deadline:
        time.sleep(0.001)
    assert ledger.change_marker() != marker
    assert watch.wait(0.05) is False  # (the events were taken with the wake-up)


def test_a_commit_of_another_process_ends_the_wait(ledger: LocalLedger, tmp_path: Path) -> None:
    watch = _watch(ledger)
    alice = HostIdentity.generate()
    code = (
        "import sys, time; from dtp.ledger.local import LocalLedger; time.sleep(0.2); "
        "w = LocalLedger(sys.argv[1]); w.faucet(sys.argv[2], 1); w.close()"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "ledger.db"), alice.sui_address], env=env
    )
    try:
        assert watch.wait(60.0) is True
    finally:
        assert proc.wait(60) == 0
    assert ledger.balance(alice.sui_address) == 1


def test_a_write_before_the_wait_ends_it_at_once(ledger: LocalLedger) -> None:
    """A commit between the watch's taking (before the marker) and the wait is not lost."""
    watch = _watch(ledger)
    ledger.faucet(HostIdentity.generate().sui_address, 1)  # (this handle's own: a write too)
    started = time.monotonic()
    assert watch.wait(30.0) is True
    assert time.monotonic() - started < 10


def test_drain_forgets_the_writes_so_far(ledger: LocalLedger) -> None:
    watch = _watch(ledger)
    ledger.faucet(HostIdentity.generate().sui_address, 1)
    assert watch.drain() is True
    assert watch.drain() is False
    assert watch.wait(0.02) is False


def test_one_watch_a_handle_made_again_once_closed(ledger: LocalLedger) -> None:
    watch = _watch(ledger)
    assert ledger.change_watch() is watch
    watch.close()
    assert watch.live is False
    assert watch.wait(0.01) is False and watch.drain() is True  # (closed: no error)
    again = ledger.change_watch()
    assert again is not None and again is not watch and again.live


def test_closing_the_ledger_closes_its_watch(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.db")
    watch = ledger.change_watch()
    ledger.close()
    assert watch is not None and watch.live is False


def test_a_ledger_dropped_unclosed_closes_its_watch(tmp_path: Path) -> None:
    """Its inotify instance is the user's, not only the process's: not left behind."""
    ledger = LocalLedger(tmp_path / "ledger.db")
    watch = ledger.change_watch()
    assert watch is not None
    fd = watch._fd
    assert os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
    del ledger, watch
    gc.collect()
    target = None
    with contextlib.suppress(OSError):
        target = os.readlink(f"/proc/self/fd/{fd}")
    assert target != "anon_inode:inotify"


def test_a_ledger_in_memory_has_no_watch() -> None:
    ledger = LocalLedger()
    try:
        assert ledger.change_watch() is None
    finally:
        ledger.close()


def test_a_file_that_cannot_be_watched_gives_none(tmp_path: Path) -> None:
    assert WalWatch.of(str(tmp_path / "no-such-ledger.db-wal")) is None
