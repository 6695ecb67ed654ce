"""The query tables and indexes in SQLite (dtp.graph._query_index; docs/graph.md,
"Indexes"): kept right under local puts, peers' batches, ties and deferred updates,
written with the log in one transaction, rebuilt when a file's tables are missing or
out of step with its log, and never made for a graph that is not queried."""

from __future__ import annotations

import contextlib
import sqlite3
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from dtp.errors import LocalProtocolError
from dtp.graph import Graph, GraphStorageError, QueryError, link, link_soul
from dtp.graph._query import comparable
from dtp.graph.values import encode_value
from dtp.native.core import encode_ham_batch
from dtp.native.types import HamUpdate
from tests.support.paths import ROOT

HAMS = ["c", "python"]


def _batch(*updates: tuple[str, str, float, Any]) -> bytes:
    return encode_ham_batch(
        [HamUpdate(s.encode(), f.encode(), state, encode_value(v)) for s, f, state, v in updates]
    )


def _tables(db: sqlite3.Connection) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    links = set(db.execute("SELECT soul, field, target FROM query_link"))
    values = set(db.execute("SELECT field, soul, kind, value FROM query_value"))
    return links, values


def _expected(g: Graph) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    """What the tables must hold, from get(): every link, every indexed field."""
    indexed = set(g.indexes())
    links, values = set(), set()
    for soul in g.souls():
        for field, value in (g.get(soul) or {}).items():
            target = link_soul(value)
            if target is not None:
                links.add((soul.encode(), field.encode(), target.encode()))
            found = comparable(value)
            if field in indexed and found is not None:
                values.add((field.encode(), soul.encode(), found[0], found[1]))
    return links, values


def _check(g: Graph) -> None:
    g.query("any").souls()  # (the tables catch up before a query reads them)
    index = g._query.index
    assert index is not None
    assert _tables(index.db) == _expected(g)


@pytest.mark.parametrize("ham", HAMS)
def test_the_tables_follow_local_puts(ham: str) -> None:
    g = Graph(None, ham=ham)
    g.create_index("t")
    g.put("a", {"t": 1, "to": link("b"), "set": {"m": link("c")}})
    _check(g)
    g.put("a", {"t": "one", "to": None})  # a value of another kind; a link gone
    _check(g)
    g.put("a/set", {"m": 5, "n": link("a")})
    _check(g)
    assert g.find("t", "==", "one").souls() == ["a"]
    assert g.find("t", "==", 1).souls() == []
    assert g.query("a").out("set").each().souls() == ["a"]


@pytest.mark.parametrize("ham", HAMS)
@pytest.mark.parametrize("order", ["first", "second"])
def test_the_tables_hold_the_winner_of_a_tie_whatever_the_order(ham: str, order: str) -> None:
    # equal states: the greater Gun text in UTF-16 order wins ("\U0001f600" < "\uffff")
    g = Graph(None, ham=ham)
    g.create_index("s")
    one, two = _batch(("n", "s", 5.0, "\uffff")), _batch(("n", "s", 5.0, "\U0001f600"))
    for batch in (one, two) if order == "first" else (two, one):
        g.merge(batch)
        _check(g)
    assert g.get_field("n", "s") == "\uffff"
    assert g.find("s", "==", "\uffff").souls() == ["n"]
    assert g.find("s", "==", "\U0001f600").souls() == []
    # a link and a string at one state: '{"#":"x"}' wins over '"x"' ('{' > '"')
    g.merge(_batch(("n", "l", 7.0, "x")))
    g.merge(_batch(("n", "l", 7.0, link("x"))))
    g.merge(_batch(("n", "l", 7.0, "x")))
    _check(g)
    assert g.query("n").out("l").souls() == ["x"]


@pytest.mark.parametrize("ham", HAMS)
def test_deferred_updates_reach_the_tables_when_they_are_applied(ham: str) -> None:
    clock = [1_000_000.0]
    g = Graph(None, ham=ham, now_ms=lambda: clock[0], max_drift_ms=10)
    g.create_index("t")
    g.put("a", {"t": 1})
    report = g.merge(_batch(("a", "t", 1_000_500.0, 2), ("a", "next", 1_000_500.0, link("b"))))
    assert report.deferred == 2
    _check(g)
    assert g.find("t", "==", 1).souls() == ["a"]
    assert g.query("a").out("next").souls() == []
    clock[0] += 1000
    assert g.advance() == 2
    _check(g)
    assert g.find("t", "==", 2).souls() == ["a"]
    assert g.query("a").out("next").souls() == ["b"]


@pytest.mark.parametrize("ham", HAMS)
def test_a_merge_of_a_large_share_of_the_table_rebuilds_once(ham: str, tmp_path: Path) -> None:
    g = Graph(tmp_path / "g.db", ham=ham)
    g.create_index("t")
    g.put("x", {"t": 0})
    index = g._query.index
    assert index is not None and index.rebuilds == 1
    many = [(f"n/{i}", "t", 1.0, i) for i in range(3000)]
    g.merge(_batch(*many, *((f"n/{i}", "up", 1.0, link("x")) for i in range(3000))))
    assert index.stale
    assert g.find("t", ">=", 2998).souls() == ["n/2998", "n/2999"]
    assert index.rebuilds == 2 and not index.stale
    assert len(g.find("t", ">=", 0).out("up").souls()) == 1
    _check(g)
    # a small batch after it is written row by row
    g.merge(_batch(("n/5", "t", 2.0, -1)))
    assert g.find("t", "<", 0).souls() == ["n/5"] and index.rebuilds == 2
    g.close()


def test_a_file_keeps_its_indexes_and_opens_without_rebuilding(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    with Graph(path) as g:
        g.create_index("t")
        g.create_index("u")
        g.put("a", {"t": 1, "u": "x", "b": link("b")})
        assert g.drop_index("u")
    with Graph(path) as g:
        index = g._query.index
        assert index is not None and index.rebuilds == 0
        assert g.indexes() == ["t"]
        assert g.find("t", "==", 1).souls() == ["a"]
        assert g.query("a").out("b").souls() == ["b"]
        _check(g)


def test_a_graph_never_queried_has_no_query_tables(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    with Graph(path) as g:
        g.put("a", {"b": link("b")})
        assert g.indexes() == []
        assert len(g.query("a").out("b").explain()) == 2  # (tells, builds nothing)
        with pytest.raises(QueryError, match="create_index"):
            g.find("t", "==", 1)
    with contextlib.closing(sqlite3.connect(path)) as db:
        names = {n for (n,) in db.execute("SELECT name FROM sqlite_master")}
        assert not names & {"query_link", "query_value"}
        assert db.execute("SELECT 1 FROM meta WHERE key LIKE 'query%'").fetchone() is None


def _reopened(path: Path) -> Graph:
    g = Graph(path)
    index = g._query.index
    assert index is not None
    return g


@pytest.mark.parametrize(
    "damage",
    [
        "DROP TABLE query_value",
        "DROP TABLE query_link",
        "DROP INDEX query_value_order",
        "UPDATE meta SET value = CAST('0' AS BLOB) WHERE key = 'query_seq'",
        "DELETE FROM meta WHERE key = 'query_seq'",
        # a version of dtp without queries appended to the log (its tables left behind)
        "INSERT INTO log (batch) VALUES (:batch)",
    ],
)
def test_tables_missing_or_out_of_step_with_the_log_are_rebuilt_at_open(
    tmp_path: Path, damage: str
) -> None:
    path = tmp_path / "g.db"
    with Graph(path) as g:
        g.create_index("t")
        g.put("a", {"t": 1, "b": link("b")})
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute(damage, {"batch": _batch(("c", "t", 9.0, 3), ("c", "d", 9.0, link("d")))})
    with _reopened(path) as g:
        assert g._query.index is not None and g._query.index.rebuilds == 1
        _check(g)
        assert g.find("t", ">", 0).souls() == (["a", "c"] if "log" in damage else ["a"])
    with _reopened(path) as g:  # (and in step again)
        assert g._query.index is not None and g._query.index.rebuilds == 0


def test_unreadable_indexed_fields_in_meta_are_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    with Graph(path) as g:
        g.create_index("t")
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("UPDATE meta SET value = CAST('[1]' AS BLOB) WHERE key = 'query_fields'")
    with pytest.raises(GraphStorageError, match="indexed fields"):
        Graph(path)


def test_a_flush_that_the_buffer_sets_off_writes_the_tables_with_the_log(tmp_path: Path) -> None:
    """Each put fills the buffer (a flush inside the write): the file's committed query
    tables hold every batch its log holds, as a process that dies now would leave them."""
    path = tmp_path / "g.db"
    g = Graph(path, flush_interval=3600)
    g.create_index("t")
    assert g.storage is not None
    g.storage._flush_rows = 1
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
        for i in range(3):
            g.put(f"n/{i}", {"t": i, "to": link("x")})
            links, values = _tables(other)
            assert (f"n/{i}".encode(), b"to", b"x") in links
            assert (b"t", f"n/{i}".encode(), 2, float(i)) in values
            seq = other.execute("SELECT value FROM meta WHERE key = 'query_seq'").fetchone()[0]
            assert seq == str(other.execute("SELECT MAX(seq) FROM log").fetchone()[0]).encode()
    g.close()


def test_a_compaction_writes_the_tables_with_the_export(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    g = Graph(path, flush_interval=3600)
    g.create_index("t")
    g.put("a", {"t": 1})
    assert g.storage is not None and g.storage.pending == 1
    g.storage.compact(g._table.export(), g.clock.last)  # (the buffered put goes with it)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
        assert _tables(other)[1] == {(b"t", b"a", 2, 1.0)}
    g.close()
    with _reopened(path) as again:
        assert again._query.index is not None and again._query.index.rebuilds == 0
        assert again.find("t", "==", 1).souls() == ["a"]


_CRASH = """
import os, sys
from dtp.graph import Graph, link
g = Graph(sys.argv[1], flush_interval=3600)
g.create_index("t")
for i in range(50):
    g.put(f"n/{i}", {"t": i, "next": link(f"n/{i + 1}")})
    if i == 29:
        g.flush()
g.storage._flush_rows = 1
g.put("late", {"t": 99})  # (a flush from inside the write)
os._exit(0)  # a crash: the 20 puts after the flush were never written
"""


def test_after_a_crash_the_file_queries_what_its_log_holds(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    subprocess.run([sys.executable, "-c", textwrap.dedent(_CRASH), str(path)], cwd=ROOT, check=True)
    with _reopened(path) as g:
        assert g._query.index is not None and g._query.index.rebuilds == 0
        _check(g)
        assert g.find("t", ">=", 0).count() == len(g.souls())
        assert g.query("n/0").out(*["next"] * 60).souls() == []
        assert g.find("t", "==", 99).souls() == ["late"]


def test_a_query_while_the_file_cannot_be_written_gets_the_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    g = Graph(path, flush_interval=3600)
    g.create_index("t")
    assert g.storage is not None
    g.storage._db.execute("PRAGMA busy_timeout = 20")
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # holds the write lock
        g.put("a", {"t": 1})  # (in the table; its write to the file waits)
        with pytest.raises(GraphStorageError, match="locked") as caught:
            g.find("t", "==", 1).souls()
        assert isinstance(caught.value, LocalProtocolError)
        other.execute("ROLLBACK")
    assert g.find("t", "==", 1).souls() == ["a"]
    g.close()


def test_a_format_1_file_with_indexes_is_migrated_and_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
        db.execute("CREATE TABLE log (seq INTEGER PRIMARY KEY AUTOINCREMENT, batch BLOB NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('replica_id', ?)", (b"r" * 16,))
        db.execute("INSERT INTO meta VALUES ('clock', ?)", (struct.pack("<d", 10.0),))
        db.execute("INSERT INTO meta VALUES ('query_fields', CAST('[\"t\"]' AS BLOB))")
        old = encode_ham_batch([HamUpdate(b"a", b"t", 1.0, b"1.0")])
        db.execute("INSERT INTO log (batch) VALUES (?)", (b"\x01" + old[1:],))
    with _reopened(path) as g:
        assert g.migration is not None and g.indexes() == ["t"]
        assert g._query.index is not None and g._query.index.rebuilds == 1
        assert g.find("t", "==", 1).souls() == ["a"]
