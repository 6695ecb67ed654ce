"""LoopSignals.stop with a recorder of its own, and StopSignals.restore, when signals
land during them.

- Two kinds of signal caught while the stop cleans up are both raised again for the
  caller's handlers, in the order they came (only the latest was: a SIGTERM followed
  by a SIGHUP reached the caller as the SIGHUP alone).
- A handler that raises while restore() puts them back (a SIGINT landing right after
  Python's own handler is back) no longer leaves the signals after it with the
  recorder, which only records, for the rest of the process.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from dtp.daemon.cli import CAUGHT_SIGNALS, StopSignals
from dtp.daemon.loop_signals import LoopSignals


@pytest.fixture
def callers_handlers() -> Iterator[list[int]]:
    """The caller's handlers: SIGTERM and SIGHUP noted in the list, SIGINT Python's
    default (whatever this process was started with: a background job ignores it)."""
    seen: list[int] = []

    def note(signum: int, _frame: object) -> None:
        seen.append(signum)

    before = {sig: signal.getsignal(sig) for sig in CAUGHT_SIGNALS}
    signal.signal(signal.SIGTERM, note)
    signal.signal(signal.SIGHUP, note)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield seen
    finally:
        for sig, handler in before.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def _stop_with(*signums: int) -> None:
    """LoopSignals with a recorder of its own, started and stopped, ``signums`` landing
    during the stop's cleanup (while its recorder still catches them)."""
    loop = asyncio.new_event_loop()
    try:
        watch = LoopSignals(loop, {}, None)
        watch.start()
        real_remove = loop.remove_reader

        def remove_reader(fd: int) -> bool:
            for signum in signums:
                os.kill(os.getpid(), signum)
            return real_remove(fd)

        loop.remove_reader = remove_reader  # type: ignore[method-assign]
        watch.stop()
    finally:
        loop.close()


def test_every_kind_caught_during_the_stop_reaches_the_caller_in_order(
    callers_handlers: list[int],
) -> None:
    # (the second SIGTERM: a kind is raised again once, at its first coming)
    _stop_with(signal.SIGTERM, signal.SIGHUP, signal.SIGTERM)
    assert callers_handlers == [signal.SIGTERM, signal.SIGHUP]


def test_a_sigint_during_the_stop_is_raised_after_the_others(
    callers_handlers: list[int],
) -> None:
    """Its KeyboardInterrupt waits until the kinds after it were raised too."""
    with pytest.raises(KeyboardInterrupt):
        _stop_with(signal.SIGINT, signal.SIGHUP)
    assert callers_handlers == [signal.SIGHUP]


def test_restore_puts_every_handler_back_when_one_raises(
    callers_handlers: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = StopSignals()
    recorder.install()
    real_signal = signal.signal

    def put_back(sig: int, handler: Any) -> Any:
        previous = real_signal(sig, handler)
        if sig == signal.SIGINT and handler is signal.default_int_handler:
            os.kill(os.getpid(), signal.SIGINT)  # lands right after it is back
        return previous

    monkeypatch.setattr(signal, "signal", put_back)
    with pytest.raises(KeyboardInterrupt):
        recorder.restore()
    monkeypatch.undo()
    # SIGHUP, after SIGINT in the order, is the caller's again, not the recorder's
    assert signal.getsignal(signal.SIGHUP) is not recorder._record
    assert signal.getsignal(signal.SIGTERM) is not recorder._record
    os.kill(os.getpid(), signal.SIGHUP)
    assert callers_handlers == [signal.SIGHUP]
    recorder.restore()  # (nothing left to put back: a second does nothing)


def test_since_reports_each_kind_once_in_order() -> None:
    recorder = StopSignals()
    for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGHUP):
        recorder._record(signum, None)
    mark = recorder.caught
    assert recorder.since(0) == [signal.SIGHUP, signal.SIGTERM]
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGINT):
        recorder._record(signum, None)
    assert recorder.since(mark) == [signal.SIGINT, signal.SIGHUP]
    # a storm of one kind keeps only the latest arrivals, not every one
    for _ in range(1000):
        recorder._record(signal.SIGHUP, None)
    assert len(recorder._arrivals) <= 16
    assert recorder.since(recorder.caught) == []
