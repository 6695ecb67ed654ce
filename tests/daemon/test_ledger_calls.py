"""The daemon's ledger calls, timed and counted (dtp.daemon._ledger_calls): each kind by
its method, once however deep the ledger calls itself, its errors by name, the ledger's
health from whether it answers -- and a method patched on the class later is the one
called."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from dtp.daemon._ledger_calls import BUCKETS, LedgerCalls, watch_ledger
from dtp.errors import LedgerUnavailable, ObjectNotFound
from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger

MISSING = "0x" + "7" * 64


@pytest.fixture
def ledger(tmp_path: Path) -> LocalLedger:
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    yield ledger  # type: ignore[misc]
    ledger.close()


def test_calls_are_counted_by_method_once_and_errors_by_name(ledger: LocalLedger) -> None:
    calls = watch_ledger(ledger, LedgerCalls())
    who = HostIdentity.generate()
    ledger.faucet(who.sui_address, 1000)
    ledger.balance(who.sui_address)
    ledger.balance(who.sui_address)
    with pytest.raises(ObjectNotFound):
        ledger.get_host(MISSING)
    seen = calls.snapshot()
    assert seen["balance"].count == 2
    assert seen["get_host"].errors == {"ObjectNotFound": 1}
    assert sum(seen["balance"].buckets) == 2
    assert len(seen["balance"].buckets) == len(BUCKETS)
    # a refusal is the ledger answering: it stays up
    assert calls.up is True
    assert calls.health()["state"] == "ok"
    assert calls.health()["errors"] == 1


def test_a_call_made_inside_another_counts_as_the_outer_one(ledger: LocalLedger) -> None:
    class Nested(LocalLedger):
        def outer(self) -> int:
            return self.balance(MISSING) + self.balance(MISSING)

    nested = Nested(ledger.path)
    try:
        calls = watch_ledger(nested, LedgerCalls())
        nested.outer()
        assert {name: s.count for name, s in calls.snapshot().items()} == {"outer": 1}
        # (and per thread: another thread's call at the same moment is its own)
        done = threading.Event()
        threading.Thread(target=lambda: (nested.balance(MISSING), done.set())).start()
        assert done.wait(10)
        assert calls.snapshot()["balance"].count == 1
    finally:
        nested.close()


def test_an_unavailable_ledger_is_down_until_it_answers_again(
    ledger: LocalLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = watch_ledger(ledger, LedgerCalls())
    assert calls.up is None and calls.health()["state"] == "unknown"
    ledger.clock_ms()
    real = LocalLedger.clock_ms

    def away(self: LocalLedger) -> int:
        raise LedgerUnavailable("the node at http://x does not answer")

    # patched on the class after the watch: the patch is what runs (the tests' faults)
    monkeypatch.setattr(LocalLedger, "clock_ms", away)
    with pytest.raises(LedgerUnavailable):
        ledger.clock_ms()
    assert calls.up is False
    health = calls.health()
    assert health["state"] == "unavailable"
    assert "does not answer" in health["last_error"]
    assert calls.snapshot()["clock_ms"].errors == {"LedgerUnavailable": 1}
    monkeypatch.setattr(LocalLedger, "clock_ms", real)
    ledger.clock_ms()
    assert calls.up is True


def test_only_plain_methods_are_wrapped(ledger: LocalLedger) -> None:
    watch_ledger(ledger, LedgerCalls())
    wrapped = set(vars(ledger)) & {name for name in dir(LocalLedger) if not name.startswith("_")}
    assert "balance" in wrapped and "close" not in wrapped
    assert "wait_events_async" not in wrapped  # (a coroutine: left alone)
