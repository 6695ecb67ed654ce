"""A connection a client names that does not exist costs the server a bounded number of
ledger reads.

Anyone who completes a handshake may name any connection ID, and the admission looks
for it again for two seconds (the client's open may still be landing). A read comes no
sooner than a quarter of the time looked so far (some 30 to 40 reads at most, not a
read every 5-20 ms: on a Sui ledger each is an RPC call), an open that lands in the
grace is still found soon after it lands, and the grace's last moment is always read.
The read-count tests hold the bound; the others hold what it must not cost (an open
landing under load found late, or one landing in the grace's last 0.2 s missed)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtp.hostid._admission import LedgerAdmission, PeerInfo, while_opening
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger

PORT = 443
GRACE = 1.0
MOST_READS = 45  # what LOOK_SPREAD allows in a grace of 1 to 2 s, with room


class Counted:
    """A read that finds nothing until :meth:`land` (or, with ``lands_after``, until
    that many seconds after it was made: a landing at a set moment that no thread's
    scheduling can delay), counting its calls."""

    def __init__(self, lands_after: float | None = None) -> None:
        self.reads = 0
        self.landed_at: float | None = None
        self.found_at: float | None = None
        self._lands_at = None if lands_after is None else time.monotonic() + lands_after

    def land(self) -> None:
        self.landed_at = time.monotonic()

    def __call__(self) -> str | None:
        self.reads += 1
        lands_at = self._lands_at
        if self.landed_at is None and lands_at is not None and time.monotonic() >= lands_at:
            self.landed_at = lands_at
        if self.landed_at is None:
            return None
        self.found_at = time.monotonic()
        return "found"


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LocalLedger]:
    ledger = LocalLedger(tmp_path / "ledger.db")
    try:
        yield ledger
    finally:
        ledger.close()


@contextlib.contextmanager
def _busy(ledger: LocalLedger, tmp_path: Path, every: float) -> Iterator[None]:
    """Another process's writes (another handle here) to the ledger file, one each
    ``every`` seconds, while the block runs: its change marker moves all the time."""
    stop = threading.Event()
    alice = HostIdentity.generate()
    ledger.faucet(alice.sui_address, 10**9)

    def busy() -> None:
        writer = LocalLedger(tmp_path / "ledger.db")
        try:
            while not stop.is_set():
                writer.create_spending_cap(alice, 1)
                time.sleep(every)
        finally:
            writer.close()

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)


def test_a_connection_never_found_is_read_a_bounded_number_of_times() -> None:
    read = Counted()
    started = time.monotonic()
    assert while_opening(read, GRACE) is None
    assert time.monotonic() - started >= GRACE * 0.99  # the whole grace still
    assert read.reads <= MOST_READS


def test_a_busy_ledger_does_not_multiply_the_reads(ledger: LocalLedger, tmp_path: Path) -> None:
    """Other clients' transactions move the change marker all the time: each move was a
    read of the connection (every 5 ms)."""
    read = Counted()
    with _busy(ledger, tmp_path, 0.002):
        assert while_opening(read, GRACE, ledger.change_marker) is None
    assert read.reads <= MOST_READS


def test_a_quiet_ledger_is_read_now_and_then_only(ledger: LocalLedger) -> None:
    read = Counted()
    assert while_opening(read, GRACE, ledger.change_marker) is None
    assert read.reads <= 12  # a safeguard read twice as far apart each time


def test_the_end_of_the_grace_is_read_whatever_the_marker_says() -> None:
    """A landing the marker misses (here it never moves) in the grace's last moments is
    found by the read made at its end."""
    read = Counted(lands_after=GRACE * 0.97)
    assert while_opening(read, GRACE, lambda: 0) == "found"


def test_an_open_landing_under_load_is_found_soon(ledger: LocalLedger, tmp_path: Path) -> None:
    """Other clients' writes move the marker every millisecond or so: an open landing
    80 ms in is found within a quarter of the time waited (the first bounded version
    spent its quick reads in the first milliseconds and found it 150 ms late)."""
    read = Counted()
    timer = threading.Timer(0.08, read.land)
    with _busy(ledger, tmp_path, 0.001):
        try:
            time.sleep(0.05)  # (the writer under way)
            started = time.monotonic()
            timer.start()
            assert while_opening(read, 60.0, ledger.change_marker) == "found"
        finally:
            timer.cancel()
    assert read.landed_at is not None and read.found_at is not None
    waited = read.landed_at - started
    assert read.found_at - read.landed_at <= waited / 4 + 0.03


@pytest.mark.parametrize("marker", [False, True])
def test_an_open_landing_late_in_the_grace_is_still_found(
    ledger: LocalLedger, marker: bool
) -> None:
    read = Counted(lands_after=GRACE * 0.8)
    found = while_opening(read, GRACE, ledger.change_marker if marker else None)
    assert found == "found"
    assert read.reads <= MOST_READS


def test_an_open_landing_soon_is_found_at_once(ledger: LocalLedger, tmp_path: Path) -> None:
    """The quick reads: an open landing a few milliseconds in (the usual case, the client
    naming its connection while the open lands) is read as soon as the marker moves."""
    read = Counted()
    alice = HostIdentity.generate()

    def land() -> None:
        writer = LocalLedger(tmp_path / "ledger.db")
        try:
            writer.faucet(alice.sui_address, 1)  # the marker moves
            read.land()
        finally:
            writer.close()

    timer = threading.Timer(0.01, land)
    timer.start()
    try:
        assert while_opening(read, 60.0, ledger.change_marker) == "found"
    finally:
        timer.join(30)
    assert read.landed_at is not None and read.found_at is not None
    assert read.found_at - read.landed_at < 1.0  # (0.25 s at most once it moved)


def test_the_admission_reads_an_unknown_connection_a_bounded_number_of_times(
    ledger: LocalLedger,
) -> None:
    server = HostIdentity.generate()
    host = ledger.create_host(server, server.noise_public)
    ledger.add_service(server, host, PORT, "echo", Sla(1, 1, 10))
    reads = [0]
    view = ledger.connection_view

    def counted(*args: object, **kwargs: object) -> object:
        reads[0] += 1
        return view(*args, **kwargs)  # type: ignore[arg-type]

    ledger.connection_view = counted  # type: ignore[method-assign]
    admission = LedgerAdmission(ledger, host, PORT)
    client = HostIdentity.generate()
    verdict = admission(PeerInfo(client.sui_address, "0x" + "ab" * 32, PORT))
    assert verdict is not None and "unknown connection" in verdict
    assert 1 < reads[0] <= MOST_READS
