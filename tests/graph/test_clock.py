"""Graph clock across a crash: a write's state leaves the process (returned, sent to
sync peers) before its batch is flushed. A process SIGKILLed in between, restarted with
the wall clock behind, must still issue states above it -- else the next write of that
field loses to the lost one, which a peer still holds and sends back.

The graph clock's reservation is synced to the disk: the log's commits are not
(synchronous=NORMAL survives a process crash, not a power loss), and a reservation
lost to a power cut let the restarted replica issue states below ones its peers held,
its new writes losing to older values. One sync per 250 ms of states."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from dtp.graph import Graph
from dtp.native.core import encode_ham_batch
from dtp.native.types import HamUpdate
from tests.support.paths import ROOT


def test_states_issued_before_a_crash_stay_below_every_state_after_it(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    child = textwrap.dedent(
        f"""
        import time
        from dtp.graph import Graph
        g = Graph({str(path)!r}, flush_interval=3600)  # nothing is flushed before the kill
        state = g.put("note", {{"text": "before the crash"}})
        print(repr(state), flush=True)  # the state is out: a peer may hold it now
        time.sleep(120)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        lost_state = float(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    # restarted with the wall clock an hour behind
    graph = Graph(path, now_ms=lambda: lost_state - 3_600_000)
    try:
        assert graph.get("note") is None  # the write itself was not flushed: gone here
        state = graph.put("note", {"text": "after the restart"})
        assert state > lost_state
        # a peer that got the lost write sends it back: the newer write stays
        graph.merge(
            encode_ham_batch([HamUpdate(b"note", b"text", lost_state, b'"before the crash"')])
        )
        assert graph.get_field("note", "text") == "after the restart"
    finally:
        graph.close()


def test_the_reservation_is_one_write_per_250_ms_of_states(tmp_path: Path) -> None:
    now = [1_000_000.0]
    graph = Graph(tmp_path / "g.db", now_ms=lambda: now[0], flush_interval=3600)
    storage = graph.storage
    assert storage is not None
    writes: list[float] = []
    reserve = storage.reserve_clock
    storage.reserve_clock = lambda state: (writes.append(state), reserve(state))[1]  # type: ignore[method-assign]
    for i in range(1000):  # 1000 writes within 100 ms of wall clock
        now[0] += 0.1
        graph.put("n", {"i": i})
    assert len(writes) == 1
    now[0] += 300
    graph.put("n", {"i": -1})
    assert len(writes) == 2
    graph.close()
    reopened = Graph(tmp_path / "g.db", now_ms=lambda: 0.0)
    assert reopened.put("n", {"i": 0}) > writes[-1] - 250
    reopened.close()


def test_the_reservation_commits_with_a_full_sync_and_the_log_does_not(tmp_path: Path) -> None:
    now = [1_000_000.0]
    graph = Graph(tmp_path / "g.db", now_ms=lambda: now[0], flush_interval=3600)
    storage = graph.storage
    assert storage is not None
    db = storage._db
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    try:
        graph.put("n", {"i": 0})  # the first state: a reservation
        now[0] += 300  # past the reserved 250 ms: another one
        graph.put("n", {"i": 1})
        graph.flush()
    finally:
        db.set_trace_callback(None)
    reservations = [i for i, s in enumerate(statements) if "clock_reserved" in s and "INSERT" in s]
    assert len(reservations) == 2, statements
    for i in reservations:
        # FULL for the reservation's own commit (autocommit), NORMAL again right after
        assert statements[i - 1].replace(" ", "").upper() == "PRAGMASYNCHRONOUS=FULL"
        assert statements[i + 1].replace(" ", "").upper() == "PRAGMASYNCHRONOUS=NORMAL"
    # the log's flush commits under NORMAL (one sync per flush would cost every write)
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 1
    graph.close()
    reopened = Graph(tmp_path / "g.db", now_ms=lambda: 0.0)
    try:
        assert reopened.get_field("n", "i") == 1
    finally:
        reopened.close()
