"""The daemon's signals: :class:`StopSignals`, which records them from the moment ``dtp
daemon`` starts, and :class:`LoopSignals`, which delivers them to its event loop.

This module stays light (the standard library only, asyncio for type checking alone):
``dtp daemon`` installs :class:`StopSignals` from here before it imports the rest of the
daemon.

:class:`LoopSignals` does without asyncio's signal handlers. ``loop.add_signal_handler``
puts each signal's default action back when the handler is removed, which the loop's
close does for all of them. From then until the process ends (or puts Python handlers
back) a SIGTERM ends the process on the spot, in whichever thread the kernel gives it
to: the main thread can block the signals across the close, but the process's other
threads (the timers', a receipt writer's, the ledger's checkpointer) do not, and a
supervisor repeating its SIGTERM turned exit status 0 into -15 after "stopped".

Here the signals' handlers are the Python ones of :class:`StopSignals` for the whole run
and after (they only record), and the loop learns of each signal from the wakeup fd
(:func:`signal.set_wakeup_fd`): the interpreter writes the signal's number there from
whatever thread took it, which wakes the loop, and a reader on the other end calls the
action for that number.
"""

from __future__ import annotations

import contextlib
import signal
import socket
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

__all__ = ["CAUGHT_SIGNALS", "STOP_SIGNALS", "LoopSignals", "StopSignals"]

#: The signals that stop the daemon (drain, then exit 0).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: What StopSignals catches: the stops, and SIGHUP (a reload).
CAUGHT_SIGNALS = (*STOP_SIGNALS, signal.SIGHUP)
# how many of the latest arrivals a StopSignals keeps for since()
_ARRIVALS_KEPT = 16


class StopSignals:
    """SIGTERM, SIGINT and SIGHUP caught before the event loop's handlers are in place.

    Python's default actions would otherwise apply while ``dtp daemon`` reads its
    config, opens the ledger and starts: SIGTERM and SIGHUP end the process on the spot
    and SIGINT raises KeyboardInterrupt wherever the main thread is (asyncio.run turns
    it into a cancel of the start at any await). Either way nothing was cleaned up: the
    status file never written, listeners and the receipt store closed by the exit
    alone, and exit status -15, -1 or 130 instead of 0. Here each signal is only
    recorded; ``dtp.daemon._runner.Daemon.run`` acts on it once its loop handles the
    signals.

    It lives here, not in the runner, so that ``dtp daemon`` can install it before it
    imports the runner: those imports (asyncio, the ledger, the crypto) take a few
    tenths of a second, during which a supervisor's SIGTERM killed the process (exit
    143) and a Ctrl-C printed a KeyboardInterrupt traceback.
    """

    def __init__(self) -> None:
        self.stop: int | None = None
        """The first SIGTERM or SIGINT received, if any."""
        self.reload = False
        """Whether a SIGHUP arrived (a reload is due once the daemon is ready)."""
        self.caught = 0
        """How many of the three signals arrived (any of them, each time)."""
        self.last: int | None = None
        """The latest of them."""
        # the latest arrivals, (count, signal), for since(): a few, whatever the storm
        self._arrivals: list[tuple[int, int]] = []
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Catch the three signals from now on (main thread only)."""
        for sig in CAUGHT_SIGNALS:
            previous = signal.signal(sig, self._record)
            self._previous.setdefault(sig, previous)

    def _record(self, signum: int, _frame: object) -> None:
        self.caught += 1
        self.last = signum
        self._arrivals.append((self.caught, signum))
        if len(self._arrivals) > _ARRIVALS_KEPT:
            del self._arrivals[0]
        if signum == signal.SIGHUP:
            self.reload = True
        elif self.stop is None:
            self.stop = signum

    def ignore(self) -> None:
        """Ignore the three signals from now on: for a process that only exits from here
        (a supervisor's repeated SIGTERM during the interpreter's shutdown took the
        default action and turned exit status 0 into death by that signal)."""
        for sig in CAUGHT_SIGNALS:
            previous = signal.signal(sig, signal.SIG_IGN)
            self._previous.setdefault(sig, previous)

    def since(self, mark: int) -> list[int]:
        """The signals that arrived after :attr:`caught` was ``mark``: each kind once,
        in the order they first came (of the latest arrivals only, which hold every
        kind that came unless a storm of one pushed another out)."""
        kinds: dict[int, None] = {}
        for count, signum in self._arrivals:
            if count > mark:
                kinds.setdefault(signum, None)
        return list(kinds)

    def restore(self) -> None:
        """Put back the handlers :meth:`install` replaced: all of them, even when one
        raises on the way (a SIGINT landing once Python's own handler is back raises
        KeyboardInterrupt out of the next :func:`signal.signal`, which left the signals
        after it with this recorder for good); the first such exception is raised
        once they are back."""
        error: BaseException | None = None
        try:
            for sig, previous in self._previous.items():
                try:
                    # None: a handler not set from Python (the default, to the interpreter)
                    signal.signal(sig, signal.SIG_DFL if previous is None else previous)
                except BaseException as exc:
                    if error is None:
                        error = exc
        finally:
            self._previous.clear()
        if error is not None:
            raise error


class LoopSignals:
    """Call ``actions[signum]`` in ``loop`` for each of those signals, from :meth:`start`
    until :meth:`stop` (main thread only, as any signal handler). ``signals``: the
    recorder already catching them (``dtp daemon`` installs it first thing); None: one
    is installed at :meth:`start` and the handlers it replaced are put back at
    :meth:`stop`. That one catches all three of
    :data:`CAUGHT_SIGNALS` whatever ``actions`` holds: one without an
    action is only recorded while it runs, and raised again for the caller's handler at
    :meth:`stop`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        actions: Mapping[int, Callable[[], None]],
        signals: StopSignals | None,
    ) -> None:
        self._loop = loop
        self._actions = dict(actions)
        self._signals = signals
        self._own = signals is None
        self._reader: socket.socket | None = None
        self._writer: socket.socket | None = None
        self._previous_fd = -1

    def start(self) -> None:
        """Raises what :func:`signal.set_wakeup_fd` and :func:`signal.signal` raise off
        the main thread (ValueError), having undone what it did."""
        reader, writer = socket.socketpair()
        try:
            reader.setblocking(False)
            writer.setblocking(False)
            # (no warning when it is full: a burst of signals only needs to wake the
            # loop once per kind, and the socket holds far more than a burst)
            previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        except BaseException:
            reader.close()
            writer.close()
            raise
        self._previous_fd = previous
        self._reader, self._writer = reader, writer
        try:
            self._loop.add_reader(reader.fileno(), self._dispatch)
            if self._own:
                # after the wakeup fd: a signal its handler records is on the fd too
                # (installed first, one landing in between was recorded where nothing
                # reads it)
                self._signals = StopSignals()
                self._signals.install()
        except BaseException:
            self.stop()
            raise

    def _dispatch(self) -> None:
        reader = self._reader
        if reader is None:
            return
        try:
            numbers = reader.recv(4096)
        except OSError:  # (nothing there after all, or closed by stop())
            return
        for signum in numbers:
            action = self._actions.get(signum)
            if action is not None:
                action()

    def stop(self) -> None:
        """Stop calling the actions. The signals stay caught (recorded only): their
        default actions never come back while the daemon shuts down. With a recorder of
        its own, the handlers it replaced are put back last, and each kind of signal it
        caught meanwhile (or at any time, for one without an action) is raised again for
        them, in the order they came: not lost,
        nor raised (a SIGINT's KeyboardInterrupt) in the middle of the cleanup, which
        left the wakeup fd with the interpreter, to be written to once its number was
        reused."""
        reader, writer = self._reader, self._writer
        if reader is None or writer is None:
            return
        self._reader = self._writer = None
        own = self._signals if self._own else None
        caught = None if own is None else own.caught
        self._loop.remove_reader(reader.fileno())  # (False when never added)
        # the fd set before ours back -- unless another replaced ours meanwhile: that
        # one stays
        current = signal.set_wakeup_fd(self._previous_fd)
        if current != writer.fileno():
            signal.set_wakeup_fd(current)
        # those that came while it ran but never reached their action (still on the
        # wakeup fd, the loop not back to read it): raised again too, as those caught
        # during the stop (raising only those would lose one with an action that came
        # just before)
        unseen: set[int] = set()
        if own is not None:
            with contextlib.suppress(OSError):  # (BlockingIOError: none left)
                while chunk := reader.recv(4096):
                    unseen.update(chunk)
        for sock in (reader, writer):
            with contextlib.suppress(OSError):
                sock.close()
        if own is not None:
            assert caught is not None
            try:
                own.restore()
            finally:
                # (even when the put-back raised: for the handlers back in place; what
                # one of them raises goes on once the others have been raised too). Those
                # without an action are theirs whenever they came: raising only those
                # caught during the stop would lose one that came while it ran (a SIGINT,
                # to a caller acting on SIGHUP only). (since(0): all it caught, a
                # recorder of its own, installed by start())
                late = own.since(caught)
                _raise_again(
                    [s for s in own.since(0) if s in late or s in unseen or s not in self._actions]
                )


def _raise_again(signums: list[int]) -> None:
    """Raise each of ``signums`` for the handlers in place, in order; what a handler
    raises (KeyboardInterrupt) waits until all have been raised, then the first such
    exception goes on."""
    error: BaseException | None = None
    for signum in signums:
        try:
            signal.raise_signal(signum)
        except BaseException as exc:
            if error is None:
                error = exc
    if error is not None:
        raise error
