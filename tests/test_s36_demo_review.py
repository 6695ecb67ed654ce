"""Review of ``dtp demo`` and the daemon's byte tunnel (s36).

- the paid-service step: an interrupt mid-transfer (Ctrl-C) took 3 s or more, as the
  provider's sink spun on the end of the stream (``recv`` gave b"" and it went on adding
  0), never settled, and the client's close waited its PAID_CLOSE_WAIT for it; the
  server was not closed on the way out.
- the same step printed "the provider kept the latest: nonce 3, 13,007,078 MIST" beside
  "the provider claimed 16,384,008": the final receipt is claimed, not stored. It now
  shows the claim's nonce, the bytes it pays for (both ways) and the price, checked.
- the daemon step named 10 MIST/KiB but the claim also had 100 MIST per tunnel.
- a second interrupt while the daemon step stopped its daemons (Ctrl-C twice, a
  supervisor's second SIGTERM) left the daemons not yet stopped running, after the
  demo had removed their directory (they recreated part of it).
- an interrupted demo said nothing: now it says where it stopped and what is left.
- TcpLeg: a tunnel held for its count (the client's receipts lagging) that ended went
  on asking the count every few ms, each time a status write, and counted a denial
  for a tunnel already gone.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import dtp.demo as demo
from dtp.chain.objects import Sla
from dtp.daemon import demo_step
from dtp.daemon.tunnel import TcpLeg
from dtp.escrow import fee


class _Stop(KeyboardInterrupt):
    """Ctrl-C, raised where the test chooses."""


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
    assert "Interrupted in step 1/10 (the first step)" in err
    assert "nothing is left behind" in err


def test_a_second_interrupt_while_the_daemons_stop_leaves_none_running(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    started: list[subprocess.Popen[str]] = []
    real_start, real_stop = demo_step._start, demo_step._stop
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

    monkeypatch.setattr(demo_step, "_start", start)
    monkeypatch.setattr(demo_step, "_stop", stop)
    monkeypatch.setattr(demo_step, "LocalLedger", first_interrupt)
    lines: list[str] = []
    try:
        with pytest.raises(_Stop):
            demo_step.run_daemon_step(quick=True, say=lines.append)
        assert len(started) == 2
        assert [proc.poll() for proc in started].count(None) == 0
        assert list(tmp_path.iterdir()) == []
    finally:
        for proc in started:  # (the old code left them: not past the test)
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
