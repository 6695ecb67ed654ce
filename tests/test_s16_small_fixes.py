"""Two small faults: ``seal(sender_host=...)`` without ``sender`` sealed an anonymous (N)
message and dropped the host without a word; and LocalLedger's clock in wall mode read
earlier than a time it had already served when the wall clock stepped back before any
transaction saved that time (a clock that must never go backwards: escrow timeouts
compare its times)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp.chain.local as local
from dtp.chain.local import LocalLedger
from dtp.errors import InvalidArgument
from dtp.keys import HostIdentity
from dtp.messaging.sealed import open_sealed, seal

ALICE = HostIdentity.from_private_bytes(bytes([0x41]) * 32, bytes([0x41]) * 32)
BOB = HostIdentity.from_private_bytes(bytes([0x42]) * 32, bytes([0x42]) * 32)
HOST = "0x" + "ab" * 32
HOUR_MS = 3_600_000

# -- seal: sender_host needs sender -------------------------------------------------------------


def test_seal_refuses_a_sender_host_without_a_sender() -> None:
    # an N message has no field for the host: it was sealed and the host silently lost
    with pytest.raises(InvalidArgument, match="sender_host needs sender") as caught:
        seal(BOB.noise_public, b"hi", sender_host=HOST)
    assert isinstance(caught.value, ValueError)


def test_seal_still_carries_the_sender_host_with_a_sender_and_none_without() -> None:
    proven = open_sealed(BOB, seal(BOB.noise_public, b"hi", sender=ALICE, sender_host=HOST))
    assert proven.sender_host == HOST and proven.sender_address == ALICE.sui_address
    anonymous = open_sealed(BOB, seal(BOB.noise_public, b"hi"))
    assert anonymous.anonymous and anonymous.sender_host is None


# -- LocalLedger: the wall-mode clock never goes back -------------------------------------------


@pytest.fixture
def path(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "ledger.sqlite"


def _step_wall_clock_back(monkeypatch: pytest.MonkeyPatch, ms: int) -> None:
    """The machine's clock cannot be stepped in a test: the ledger's one reader of it is."""
    real = local._wall_ms
    monkeypatch.setattr(local, "_wall_ms", lambda: real() - ms)


def test_clock_reads_do_not_go_back_when_the_wall_clock_steps_back(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with LocalLedger(path) as ledger:
        assert not ledger.clock_frozen()
        first = ledger.clock_ms()  # served, not saved: no transaction has run yet
        _step_wall_clock_back(monkeypatch, HOUR_MS)
        second = ledger.clock_ms()
        assert second >= first  # read an hour earlier before the fix
        assert ledger.clock_ms() >= second


def test_a_transaction_after_the_wall_clock_stepped_back_saves_no_earlier_time(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with LocalLedger(path) as ledger:
        served = ledger.clock_ms()
        _step_wall_clock_back(monkeypatch, HOUR_MS)
        ledger.create_host(ALICE, b"\x09" * 32)
        events, _ = ledger.events()
        (created,) = [e for e in events if e.name == "HostCreated"]
        assert created.timestamp_ms >= served  # dated an hour back before the fix
        # saved with the transaction: another handle (another process) reads no earlier
        with LocalLedger(path) as other:
            assert other.clock_ms() >= created.timestamp_ms


def test_a_clock_set_back_on_purpose_is_not_held_by_earlier_reads(path: Path) -> None:
    with LocalLedger(path) as ledger:
        assert ledger.clock_ms() > 10 * HOUR_MS  # wall time: decades since the epoch
        ledger.set_clock(1_000, allow_backwards=True)
        ledger.unfreeze_clock()
        assert ledger.clock_ms() < HOUR_MS  # goes on from 1 s, not from the reads before
