"""What a graph remembers of the refusals it described to sync peers
(dtp.graph._reported): one entry a peer and field, holding the refused version's state;
a bounded number, the oldest forgotten first; kept in the graph's SQLite file across a
restart, and in memory when the file cannot be written."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dtp.graph import Graph
from dtp.graph._persist import GraphStorageError
from dtp.graph._reported import ReportedRefusals
from dtp.graph.rules import RULE, Refusal
from dtp.native.types import HamUpdate


def refusal(soul: bytes, state: float, field: bytes = b"f") -> Refusal:
    return Refusal.of(HamUpdate(soul, field, state, b'"x"'), RULE, "no", "r")


def test_a_version_is_described_once_per_peer() -> None:
    memory = ReportedRefusals(None)
    a, b = refusal(b"s/1", 1.0), refusal(b"s/2", 1.0)
    assert memory.select(b"p" * 16, [a, b], 10) == ([a, b], 0)
    assert memory.select(b"p" * 16, [a, b, a], 10) == ([], 3)
    assert memory.select(b"q" * 16, [a], 10) == ([a], 0)  # another peer
    newer = refusal(b"s/1", 2.0)  # the field written again: a new version, described
    assert memory.select(b"p" * 16, [newer], 10) == ([newer], 0)
    assert memory.select(b"p" * 16, [newer, b], 10) == ([], 2)
    # one version a field and peer is remembered, the last described
    assert memory.select(b"p" * 16, [a], 10) == ([a], 0)


def test_past_the_room_a_refusal_is_left_to_a_later_session() -> None:
    memory = ReportedRefusals(None)
    batch = [refusal(b"s/%d" % i, 1.0) for i in range(5)]
    assert memory.select(b"p" * 16, batch, 2) == (batch[:2], 0)
    assert memory.select(b"p" * 16, batch, 2) == (batch[2:4], 2)
    assert memory.select(b"p" * 16, batch, 2) == (batch[4:], 4)


def test_the_oldest_are_forgotten_past_the_limit(tmp_path: Path) -> None:
    with Graph(tmp_path / "g.db") as graph:
        memory = ReportedRefusals(graph.storage, limit=3)
        first = [refusal(b"s/%d" % i, 1.0) for i in range(3)]
        memory.select(b"p" * 16, first, 10)
        memory.select(b"p" * 16, [refusal(b"s/0", 2.0)], 10)  # s/0 renewed: s/1 is oldest
        memory.select(b"p" * 16, [refusal(b"s/9", 1.0)], 10)
        again = ReportedRefusals(graph.storage, limit=3)  # (read back from the file)
        assert again.select(b"p" * 16, first, 10) == ([first[0], first[1]], 1)
        rows = graph.storage.refusals_reported()
        assert len(rows) == 3 and rows[-1][1:] == (b"s/1", b"f", 1.0)


def test_what_was_told_survives_a_restart_and_is_ours(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    with Graph(path) as graph:
        ReportedRefusals(graph.storage).select(b"p" * 16, [refusal(b"s/1", 1.0)], 10)
    with Graph(path) as graph:  # (the table is the graph's: the file opens again)
        assert graph.storage is not None
        assert graph.storage.refusals_reported() == [(b"p" * 16, b"s/1", b"f", 1.0)]
        assert graph._reported.select(b"p" * 16, [refusal(b"s/1", 1.0)], 10) == ([], 1)
    with sqlite3.connect(path) as db:
        columns = [row[1:3] for row in db.execute("PRAGMA table_info(sync_refusal)")]
    assert columns == [("peer", "BLOB"), ("soul", "BLOB"), ("field", "BLOB"), ("state", "REAL")]


def test_a_table_of_that_name_laid_out_otherwise_is_not_ours(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE sync_refusal (peer TEXT)")
    with pytest.raises(GraphStorageError, match="laid out otherwise"):
        Graph(path)


def test_a_file_that_cannot_be_written_leaves_them_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Graph(tmp_path / "g.db") as graph:
        assert graph.storage is not None

        def full(*args: object) -> None:
            raise GraphStorageError("disk full")

        monkeypatch.setattr(graph.storage, "remember_refusals", full)
        memory = ReportedRefusals(graph.storage)
        a = refusal(b"s/1", 1.0)
        assert memory.select(b"p" * 16, [a], 10) == ([a], 0)
        assert memory.select(b"p" * 16, [a], 10) == ([], 1)
