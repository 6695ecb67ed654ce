"""A SIGTERM the kernel hands to a thread other than the main one, as the daemon's loop
closes, keeps exit status 0. The loop's handlers were asyncio's, and its close put each
signal's default action back; the main thread blocked the signals across that moment,
but the process's other threads (the timers', a receipt writer's, the ledger's
checkpointer: started from the main thread, so not blocking them) could take one then,
and SIGTERM's default action ended the process (-15). The daemon's signals now keep
Python handlers for the whole run: the loop only reads the wakeup fd.

LoopSignals.stop with a recorder of its own, and StopSignals.restore, when signals
land during them.

- Two kinds of signal caught while the stop cleans up are both raised again for the
  caller's handlers, in the order they came (only the latest was: a SIGTERM followed
  by a SIGHUP reached the caller as the SIGHUP alone).
- A handler that raises while restore() puts them back (a SIGINT landing right after
  Python's own handler is back) no longer leaves the signals after it with the
  recorder, which only records, for the rest of the process."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dtp.daemon._signals import CAUGHT_SIGNALS, LoopSignals, StopSignals
from tests.daemon.starting_daemons import stop_daemon_script

# a thread of the process's own that does not block the signals, and the SIGTERM sent
# to it (not to the process, whose pick of a thread is the kernel's) at the loop's close
SIGNAL_TO_A_THREAD_AS_THE_LOOP_CLOSES = """
import signal, sys, threading

idle = threading.Event()
helper = threading.Thread(target=idle.wait, name="plain", daemon=True)
helper.start()
real_set_wakeup_fd = signal.set_wakeup_fd


def set_wakeup_fd(fd, *args, **kwargs):
    old = real_set_wakeup_fd(fd, *args, **kwargs)
    if fd == -1:
        signal.pthread_kill(helper.ident, signal.SIGTERM)
    return old


signal.set_wakeup_fd = set_wakeup_fd
from dtp.cli import main

sys.exit(main(["daemon", "--config", sys.argv[1]]))
"""


def test_sigterm_to_another_thread_as_the_loop_closes_keeps_status_0(tmp_path: Path) -> None:
    stop_daemon_script(tmp_path, SIGNAL_TO_A_THREAD_AS_THE_LOOP_CLOSES)


def test_loop_signals_call_the_actions_and_never_leave_a_default_action() -> None:
    before = signal.getsignal(signal.SIGHUP)
    seen: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        got = asyncio.Event()

        def on_hup() -> None:
            seen.append("hup")
            got.set()

        watch = LoopSignals(loop, {signal.SIGHUP: on_hup}, None)
        watch.start()
        try:
            # a Python handler (the recorder), not the default action, and not asyncio's
            assert callable(signal.getsignal(signal.SIGHUP))
            os.kill(os.getpid(), signal.SIGHUP)
            await asyncio.wait_for(got.wait(), 10)
        finally:
            watch.stop()
        # stopped: recorded only (its own recorder's handlers put back at the stop)
        assert signal.getsignal(signal.SIGHUP) == before

    asyncio.run(main())
    assert seen == ["hup"]


def test_a_signal_as_its_own_recorder_is_installed_reaches_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Daemon.run without a recorder (programmatic use): LoopSignals installs its own,
    after the wakeup fd, so a signal its handler records is also on the fd (installed
    first, one landing in between was recorded where nothing reads it)."""
    real_install = StopSignals.install

    def install(self: StopSignals) -> None:
        real_install(self)
        os.kill(os.getpid(), signal.SIGHUP)  # the moment right after

    monkeypatch.setattr(StopSignals, "install", install)
    seen: list[str] = []

    async def main() -> None:
        got = asyncio.Event()

        def on_hup() -> None:
            seen.append("hup")
            got.set()

        watch = LoopSignals(asyncio.get_running_loop(), {signal.SIGHUP: on_hup}, None)
        watch.start()
        try:
            await asyncio.wait_for(got.wait(), 10)
        finally:
            watch.stop()

    asyncio.run(main())
    assert seen == ["hup"]


def test_a_start_off_the_main_thread_fails_and_leaves_nothing_open() -> None:
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    errors: list[BaseException] = []
    leaked: list[int] = []

    def body() -> None:
        async def main() -> None:
            for signals in (StopSignals(), None):
                watch = LoopSignals(asyncio.get_running_loop(), {}, signals)
                before = fds()
                try:
                    watch.start()
                except ValueError as exc:  # (set_wakeup_fd: main thread only)
                    errors.append(exc)
                leaked.append(fds() - before)

        asyncio.run(main())

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(10)
    assert len(errors) == 2
    assert leaked == [0, 0]
    # and the process's handlers are as they were
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers


def test_a_sigint_as_its_own_recorder_is_put_back_leaves_no_wakeup_fd() -> None:
    """Daemon.run without a recorder: its stop puts the caller's handlers back first,
    so a SIGINT from then on is the caller's (here Python's default: KeyboardInterrupt
    out of the stop). The wakeup fd must not stay with the interpreter all the same: the
    socket pair is closed, and a signal written to its number once reused lands in
    whatever file has it."""
    # (Python's default, whatever this process was started with: a shell's background
    # job ignores SIGINT)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    loop = asyncio.new_event_loop()
    try:
        watch = LoopSignals(loop, {}, None)
        watch.start()
        writer = watch._writer
        assert writer is not None
        real_remove = loop.remove_reader

        def remove_reader(fd: int) -> bool:
            os.kill(os.getpid(), signal.SIGINT)  # lands right after the put-back
            return real_remove(fd)

        loop.remove_reader = remove_reader  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            watch.stop()
        assert signal.set_wakeup_fd(-1) == -1
        assert writer.fileno() == -1  # closed
        watch.stop()  # (once is enough: a second does nothing)
    finally:
        loop.close()
        signal.signal(signal.SIGINT, previous)


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
