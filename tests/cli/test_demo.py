"""The daemon step of ``dtp demo``: real daemon and forwarder processes, exact fees.

``dtp demo`` stopped part-way (SIGTERM from ``timeout`` or a supervisor, SIGINT sent to
the demo alone) leaves nothing behind: the daemons it started are stopped -- one still
starting too, which was not yet in the list the step stops -- and its temporary
directories (ledger, throwaway keys) are removed. ``dtp status`` prints ports as
ports, not as amounts (8,545).

An interrupted ``dtp demo``:

- interrupted before its first step, it says so ("Interrupted before the first step");
- to a pipe or a file (``dtp demo 2>&1 | tee log``), where stdout is block-buffered, the
  interrupted step's last lines come out before the "Interrupted" message, not at exit;
- the message is guarded: a stderr whose reader has gone does not turn the interrupt
  into a BrokenPipeError (exit 130, not 141);
- it says where it stopped and what is left.

``dtp demo`` and the daemon's byte tunnel:

- the paid-service step: an interrupt mid-transfer (Ctrl-C) ends at once: the provider's
  sink stops at the end of the stream (``recv`` gives b""), settles, and the server is
  closed on the way out;
- the same step shows the final receipt as claimed (its nonce, the bytes it pays for
  both ways, and the price, checked), not as the latest stored;
- the daemon step names both of the claim's prices: per KiB and per tunnel;
- a second interrupt while the daemon step stops its daemons (Ctrl-C twice, a
  supervisor's second SIGTERM) still stops every one, before the demo removes their
  directory;
- TcpLeg: a tunnel held for its count (the client's receipts lagging) that ends stops
  asking the count, and counts no denial for a tunnel already gone."""

from __future__ import annotations

import asyncio
import io
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import dtp.cli._demo as demo
from dtp.cli import _demo_daemon as demo_daemon
from dtp.cli import main
from dtp.cli._demo_daemon import run_daemon_step
from dtp.daemon._status import _table
from dtp.daemon._tunnel import TcpLeg
from dtp.ledger._objects import Sla
from dtp.payments.receipts import fee
from tests.support.interrupts import dtp_main, left_under, run_until


def test_demo_step_moves_data_and_settles_exact_fees() -> None:
    lines: list[str] = []
    result = run_daemon_step(quick=True, say=lines.append)
    assert result.intact and result.tunnels == 4
    assert result.bytes_each_way == 2 << 20
    # the SLA of the demo: 10 MIST/KiB both ways, 100 MIST per tunnel
    expected = fee(Sla(10, 100, 5_000_000), 2 * result.bytes_each_way, 4)
    assert result.fees_earned == result.fees_claimed == expected
    assert result.refunded == 50_000_000 - expected
    assert result.conserved
    assert result.service.startswith("dtp://0x") and result.service.endswith(":7000")
    assert any("forwarder listens" in line for line in lines)
    assert result.megabytes_per_second > 0
    # balances before and after: the provider gained exactly what the client paid
    p0, p1 = result.provider_balance
    c0, c1 = result.client_balance
    assert p1 - p0 == expected and c0 - c1 == expected
    # the client on the deny list got nothing through and paid nothing
    assert result.denied and result.denied_paid_nothing


@pytest.mark.parametrize(
    ("signum", "after"),
    [
        # the forwarder's daemon is starting: not yet in the list the step stops
        (signal.SIGTERM, "dtp daemon exposes"),
        (signal.SIGINT, "dtp daemon exposes"),
        (signal.SIGINT, "a forwarder listens"),
    ],
)
def test_an_interrupted_demo_leaves_no_daemon_and_no_files(
    tmp_path: Path, signum: int, after: str
) -> None:
    with run_until(dtp_main("demo", "--quick"), tmp_path, after, stderr=subprocess.DEVNULL) as proc:
        proc.send_signal(signum)
        proc.communicate(timeout=60)
        assert proc.returncode != 0  # interrupted, and says so
        assert left_under(tmp_path) == []
        assert list(tmp_path.iterdir()) == []


def test_status_prints_ports_plainly() -> None:
    rows = {"api": {"port": 8545, "bytes_in": 1234567}}
    lines = _table(rows, (("name", "name"), ("port", "port"), ("bytes in", "bytes_in")))
    assert "8545" in lines[-1] and "8,545" not in lines[-1]
    assert "1,234,567" in lines[-1]


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
    told = text.find("Interrupted in step 1/12 (the first step)")
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


def _number(text: str) -> int:
    return int(text.replace(",", ""))


def test_the_paid_step_shows_a_claim_that_adds_up() -> None:
    lines: list[str] = []
    tour = demo.Tour()
    tour.say = lines.append  # type: ignore[method-assign]
    tour.ok = lines.append  # type: ignore[method-assign]
    demo.demo_ledger(tour, {"bytes_used": 4 << 20})
    text = "\n".join(lines)
    claim = re.search(
        r"claimed the final receipt \(nonce (\d+)\): ([\d,]+) MIST for ([\d,]+) bytes both "
        r"ways at ([\d,]+) MIST/KiB; the client was refunded ([\d,]+) of its ([\d,]+)",
        text,
    )
    assert claim is not None, text
    claimed, used, price = (_number(claim[i]) for i in (2, 3, 4))
    refunded, deposit = _number(claim[5]), _number(claim[6])
    assert used == (4 << 20) + len(str(4 << 20))  # the data, and the server's reply
    assert claimed == fee(Sla(price, 0, 0), used, 0)
    assert claimed + refunded == deposit
    # what the balances show is what was claimed
    assert f"(+{claimed:,})" in text and f"(-{claimed:,})" in text


def test_an_interrupt_in_the_paid_step_ends_promptly() -> None:
    tour = demo.Tour()
    tour.say = lambda text: None  # type: ignore[method-assign]

    def ok(text: str) -> None:
        if text.startswith("connected to dtp://"):
            raise _Stop  # Ctrl-C inside the connection, before any data

    tour.ok = ok  # type: ignore[method-assign]
    start = time.monotonic()
    with pytest.raises(_Stop):
        demo.demo_ledger(tour, {"bytes_used": 4 << 20})
    # (the client's close waited PAID_CLOSE_WAIT, 3 s, for a server that never settled)
    assert time.monotonic() - start < 2.0


def test_an_interrupted_demo_says_where_and_what_is_left(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(tour: demo.Tour, quick: bool) -> None:
        tour.step("the first step")
        raise _Stop

    monkeypatch.setattr(demo, "demo_daemon", interrupted)
    with pytest.raises(_Stop):
        demo.run_demo(quick=True)
    err = capsys.readouterr().err
    assert "Interrupted in step 1/12 (the first step)" in err
    assert "nothing is left behind" in err


def test_a_second_interrupt_while_the_daemons_stop_leaves_none_running(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    started: list[subprocess.Popen[str]] = []
    real_start, real_stop = demo_daemon._start, demo_daemon._stop
    stops: list[int] = []

    def start(config: Path, procs: list[subprocess.Popen[str]]) -> dict[str, object]:
        try:
            return real_start(config, procs)
        finally:
            started[:] = procs

    def first_interrupt(path: Path) -> None:
        raise _Stop  # Ctrl-C once both daemons run

    def stop(proc: subprocess.Popen[str]) -> None:
        stops.append(proc.pid)
        if len(stops) == 1:
            raise _Stop  # Ctrl-C again while the first daemon drains
        real_stop(proc)

    monkeypatch.setattr(demo_daemon, "_start", start)
    monkeypatch.setattr(demo_daemon, "_stop", stop)
    monkeypatch.setattr(demo_daemon, "LocalLedger", first_interrupt)
    lines: list[str] = []
    try:
        with pytest.raises(_Stop):
            demo_daemon.run_daemon_step(quick=True, say=lines.append)
        assert len(started) == 2
        assert [proc.poll() for proc in started].count(None) == 0
        assert list(tmp_path.iterdir()) == []
    finally:
        for proc in started:  # (any left running must not outlive the test)
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    # the price named is the whole price the claim is made of
    exposes = next(line for line in lines if "dtp daemon exposes" in line)
    assert "10 MIST/KiB" in exposes and "100 MIST per tunnel" in exposes


def test_a_held_tunnel_that_ended_is_counted_no_more() -> None:
    async def run() -> list[int]:
        loop = asyncio.get_running_loop()
        counts: list[int] = []
        counted: asyncio.Future[None] = loop.create_future()

        def count(n: int) -> float | None:
            counts.append(n)
            if not counted.done():
                counted.set_result(None)
            return 0.005  # the receipts lag: hold the reading

        class Sink:
            def write(self, data: bytes) -> None:
                pass

            def write_eof(self) -> None:
                pass

            async def drain(self) -> None:
                pass

            def close(self) -> None:
                pass

            def get_write_buffer_size(self) -> int:
                return 0

        ours, theirs = socket.socketpair()
        try:
            leg = TcpLeg(count)
            await loop.connect_accepted_socket(lambda: leg, ours)
            leg.attach(Sink())
            theirs.sendall(b"request")
            await asyncio.wait_for(counted, 5)
            leg.close()  # the tunnel ends while its reading is held
            await asyncio.wait_for(leg.lost, 5)
            seen = len(counts)
            leg._unthrottle()  # the hold's timer, after the end
            return counts[seen:]
        finally:
            theirs.close()

    assert asyncio.run(run()) == []


def test_an_interrupt_while_a_demo_daemon_is_made_leaves_it_in_the_list_to_stop(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import dtp.cli._demo_daemon as step

    made: list[subprocess.Popen[str]] = []
    real_popen = subprocess.Popen

    def popen_interrupted(*_args: object, **kwargs: object) -> subprocess.Popen[str]:
        # a real child, and the interrupt in the middle of making it (after the fork)
        child = real_popen([sys.executable, "-c", "import time; time.sleep(60)"], **kwargs)  # type: ignore[call-overload]
        made.append(child)
        signal.raise_signal(signal.SIGINT)
        return child

    monkeypatch.setattr(step.subprocess, "Popen", popen_interrupted)
    procs: list[subprocess.Popen[str]] = []
    # (Python's own SIGINT handler, whatever this process was started with: a suite run
    # in the background by a shell, as CI's may be, inherits SIGINT ignored)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            step._start(tmp_path / "daemon.toml", procs)
        assert procs == made  # the caller's cleanup stops it
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)
        for child in made:
            step._stop(child)
    assert all(child.poll() is not None for child in made)


def test_the_demo_starts_its_daemons_without_the_callers_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, str] | None] = []

    class Started(Exception):
        pass

    def popen(*args: object, **kwargs: object) -> None:
        seen.append(kwargs.get("env"))  # type: ignore[arg-type]
        raise Started

    monkeypatch.setenv("DTP_PASSPHRASE", "")
    monkeypatch.setattr(demo_daemon.subprocess, "Popen", popen)
    with pytest.raises(Started):
        demo_daemon._start(tmp_path / "provider.toml", [])
    assert len(seen) == 1 and seen[0] is not None
    assert "DTP_PASSPHRASE" not in seen[0] and "PATH" in seen[0]


def test_a_screenshots_folder_that_cannot_be_made_is_refused_before_the_first_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # (a folder inside a file: no step runs, one line says why, as a usage error)
    assert main(["demo", "--quick", "--screenshots", str(blocker / "shots")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"dtp demo: --screenshots: cannot make {blocker / 'shots'}: Not a directory\n"
    )
