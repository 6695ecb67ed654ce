"""A review of the graph's SQLite file (dtp.graph.persist).

What was wrong: a file whose log held a NULL (a copy cut short mid-page) or a TEXT value
(an edit with another tool), or whose meta held TEXT, made ``Graph(path)`` raise a bare
TypeError (``bytes(None)``, ``bytes(str)``) instead of GraphStorageError; and another
application's database with a table named ``log`` (or ``meta``) was switched to WAL and
given our tables before it was refused -- the file was changed, though the check was
there to refuse it before writing anything."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dtp.graph import Graph, GraphStorageError


def _graph_file(tmp_path: Path, nodes: int = 3) -> Path:
    path = tmp_path / "g.db"
    graph = Graph(str(path))
    for i in range(nodes):
        graph.put(f"n{i}", {"x": i, "s": "héllo" * (i % 50), "f": i / 7})
    graph.close()
    return path


@pytest.mark.parametrize(
    ("key", "value"),
    [("compacted_bytes", "5"), ("replica_id", "0123456789abcdef"), ("clock", "abcdefgh")],
)
def test_a_text_meta_value_is_a_corrupt_file(tmp_path: Path, key: str, value: str) -> None:
    path = _graph_file(tmp_path)
    with sqlite3.connect(path) as db:
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
    db.close()
    with pytest.raises(GraphStorageError):
        Graph(str(path))


def test_a_text_log_entry_is_a_corrupt_file(tmp_path: Path) -> None:
    path = _graph_file(tmp_path)
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO log (batch) VALUES ('not a blob')")
    db.close()
    with pytest.raises(GraphStorageError, match="corrupt: a log entry is not a blob"):
        Graph(str(path))
    # the refused file is closed again: it opens once put right
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM log WHERE typeof(batch) = 'text'")
    db.close()
    with Graph(str(path)) as graph:
        assert graph.get("n2") == {"x": 2, "s": "héllo" * 2, "f": 2 / 7}


def test_a_file_cut_short_anywhere_is_refused_typed(tmp_path: Path) -> None:
    """Cuts every 211 bytes, mid-page mostly: a clean open or GraphStorageError, never
    another exception (some cuts left a log row reading NULL)."""
    data = _graph_file(tmp_path, nodes=400).read_bytes()
    untyped = []
    for cut in range(4096, len(data), 211):
        copy = tmp_path / f"cut{cut}" / "g.db"
        copy.parent.mkdir()
        copy.write_bytes(data[:cut])
        try:
            Graph(str(copy)).close()
        except GraphStorageError:
            pass
        except Exception as exc:  # what the test is for: nothing untyped
            untyped.append((cut, f"{type(exc).__name__}: {exc}"))
    assert not untyped, untyped[:3]


@pytest.mark.parametrize(
    "schema",
    [
        "CREATE TABLE log (id INTEGER PRIMARY KEY, msg TEXT)",
        "CREATE TABLE meta (key, value)",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ],
)
def test_another_applications_table_of_our_name_leaves_its_file_untouched(
    tmp_path: Path, schema: str
) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute(schema)
    db.close()
    before = path.read_bytes()
    with pytest.raises(GraphStorageError, match="laid out otherwise"):
        Graph(str(path))
    assert path.read_bytes() == before
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        tables = [n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    db.close()
    assert len(tables) == 1


def test_a_graph_file_still_opens_and_keeps_its_nodes(tmp_path: Path) -> None:
    path = _graph_file(tmp_path)
    with Graph(str(path)) as graph:
        assert graph.get("n1") == {"x": 1, "s": "héllo", "f": 1 / 7}
