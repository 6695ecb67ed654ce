"""The graph clock's reservation is synced to the disk: the log's commits are not
(synchronous=NORMAL survives a process crash, not a power loss), and a reservation
lost to a power cut let the restarted replica issue states below ones its peers held,
its new writes losing to older values. One sync per 250 ms of states."""

from __future__ import annotations

from pathlib import Path

from dtp.graph import Graph


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
