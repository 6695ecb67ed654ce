"""Second review of the interrupted ``dtp demo`` (s36).

- interrupted before its first step printed "Interrupted in step 0/10 ()";
- to a pipe or a file (``dtp demo 2>&1 | tee log``) stdout is block-buffered: the
  interrupted step's last lines came out after the "Interrupted" message (at exit), not
  before it;
- the message went out unguarded: a stderr whose reader had gone turned the interrupt
  into a BrokenPipeError (exit 141, not 130).
"""

from __future__ import annotations

import io
import sys

import pytest

import dtp.demo as demo


class _Stop(KeyboardInterrupt):
    """Ctrl-C, raised where the test chooses."""


class _Stream(io.TextIOBase):
    """A text stream writing into ``log``: at once, or (``buffered``) only on flush, as
    Python's stdout does to a pipe or a file."""

    def __init__(self, log: list[str], buffered: bool) -> None:
        self._log = log
        self._buffered = buffered
        self._pending: list[str] = []

    def write(self, text: str) -> int:
        (self._pending if self._buffered else self._log).append(text)
        return len(text)

    def flush(self) -> None:
        self._log.extend(self._pending)
        self._pending.clear()


class _GoneStream(io.TextIOBase):
    """A stream whose reader went away."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_interrupted_before_the_first_step_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(tour: demo.Tour, quick: bool) -> None:
        raise _Stop  # (before its tour.step: nothing numbered yet)

    monkeypatch.setattr(demo, "demo_daemon", interrupted)
    with pytest.raises(_Stop):
        demo.run_demo(quick=True)
    err = capsys.readouterr().err
    assert "Interrupted before the first step" in err
    assert "step 0/" not in err and "()" not in err


def test_the_steps_lines_come_before_the_interrupted_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log: list[str] = []
    monkeypatch.setattr(sys, "stdout", _Stream(log, buffered=True))
    monkeypatch.setattr(sys, "stderr", _Stream(log, buffered=False))

    def interrupted(tour: demo.Tour, quick: bool) -> None:
        tour.step("the first step")
        tour.say("a line said just before Ctrl-C")
        raise _Stop

    monkeypatch.setattr(demo, "demo_daemon", interrupted)
    with pytest.raises(_Stop):
        demo.run_demo(quick=True)
    sys.stdout.flush()  # (what the interpreter's exit does)
    text = "".join(log)
    said = text.find("a line said just before Ctrl-C")
    told = text.find("Interrupted in step 1/10 (the first step)")
    assert said != -1 and told != -1, text
    assert said < told, text


def test_a_gone_stderr_does_not_replace_the_interrupt(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    monkeypatch.setattr(sys, "stdout", _Stream(log, buffered=False))
    monkeypatch.setattr(sys, "stderr", _GoneStream())

    def interrupted(tour: demo.Tour, quick: bool) -> None:
        tour.step("the first step")
        raise _Stop

    monkeypatch.setattr(demo, "demo_daemon", interrupted)
    # (a BrokenPipeError here: `dtp` exits 141, as for `dtp status | head -1`, not 130)
    with pytest.raises(_Stop):
        demo.run_demo(quick=True)
