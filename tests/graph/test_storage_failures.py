"""dtp.graph's SQLite file under failure: one file holds one graph at a time (a second
open, from this process or another, is refused), a corrupt page found while the log is
replayed, a full disk and a file locked by another SQLite client give the graph's typed
error -- never sqlite3's own -- and a change whose write failed is still seen by get(),
the sync summaries and subscribers, and reaches the file once it can be written.

The graph's SQLite file (dtp.graph._persist).

What was wrong: a file whose log held a NULL (a copy cut short mid-page) or a TEXT value
(an edit with another tool), or whose meta held TEXT, made ``Graph(path)`` raise a bare
TypeError (``bytes(None)``, ``bytes(str)``) instead of GraphStorageError; and another
application's database with a table named ``log`` (or ``meta``) was switched to WAL and
given our tables before it was refused -- the file was changed, though the check was
there to refuse it before writing anything."""

from __future__ import annotations

import contextlib
import gc
import math
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtp.errors import LocalProtocolError
from dtp.graph import Change, Graph, GraphStorageError
from dtp.native.core import encode_ham_batch
from dtp.native.types import HamUpdate
from tests.support.leaks import open_fds
from tests.support.paths import ROOT


def _storage_error(exc: BaseException) -> bool:
    from dtp.graph import GraphStorageError

    return isinstance(exc, GraphStorageError) and isinstance(exc, LocalProtocolError)


def _assert_open_refused(path: Path, match: str) -> None:
    """Graph(path) raises the graph's typed storage error (its message matching
    ``match``) and leaves no descriptor open on the file."""
    with pytest.raises(LocalProtocolError, match=match) as caught:
        Graph(path)
    assert _storage_error(caught.value)
    assert open_fds(path) == 0, caught


# -- one graph per file ------------------------------------------------------------------


@contextlib.contextmanager
def _held_by_another_process(path: Path) -> Iterator[subprocess.Popen[str]]:
    """A child process with ``Graph(path)`` open until its stdin closes."""
    child = textwrap.dedent(
        f"""
        import sys
        from dtp.graph import Graph
        g = Graph({str(path)!r})
        g.put("from_child", {{"v": 1}})
        g.flush()
        print("open", flush=True)
        sys.stdin.read()
        g.close()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "open\n"
        yield proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


def test_a_file_open_in_another_process_is_refused(tmp_path: Path) -> None:
    """One file, one process: a second open is refused with the typed error (two tables
    over one log would lose one's writes at the other's compaction, and share one
    replica id), and works once the first process has closed the graph."""
    path = tmp_path / "g.db"
    with _held_by_another_process(path):
        _assert_open_refused(path, "already open")
    with Graph(path) as g:
        assert g.souls() == ["from_child"]


def test_a_file_open_in_another_graph_of_this_process_is_refused(tmp_path: Path) -> None:
    """Two graphs of one process on one file lose writes the same way (the compaction
    of one deletes the rows of the other)."""
    path = tmp_path / "g.db"
    a = Graph(path)
    a.put("from_a", {"v": 1})
    with pytest.raises(LocalProtocolError, match="already open") as caught:
        Graph(path)
    a.close()
    # the refused open closed its connection (SQLite defers closing its descriptor while
    # another connection of the process holds locks on the file: counted after a's)
    assert open_fds(path) == 0, caught
    with Graph(path) as b:
        b.put("from_b", {"v": 2})
        b.flush()
        assert b.storage is not None
        b.storage.compact(b.export(), b.clock.last)
    with Graph(path) as c:
        assert c.souls() == ["from_a", "from_b"]


# -- corrupt pages -------------------------------------------------------------------------


def test_a_corrupt_page_met_while_replaying_gives_the_typed_error(tmp_path: Path) -> None:
    """The checks made at open read the log's row headers only; a corrupt overflow page
    of a large batch, met by the replay, is the graph's typed error (not
    sqlite3.DatabaseError out of Graph()), and the file is closed."""
    path = tmp_path / "g.db"
    with Graph(path) as g:
        value = b'"' + b"x" * 200 + b'"'
        g.merge(
            encode_ham_batch([HamUpdate(f"n/{i}".encode(), b"v", 1.0, value) for i in range(2000)])
        )
    size = path.stat().st_size
    assert size > 200_000
    for offset in (size // 3, size // 2, 2 * size // 3):
        copy = tmp_path / f"c{offset}.db"
        shutil.copy(path, copy)
        with open(copy, "r+b") as f:
            f.seek(offset)
            f.write(b"\xff" * 4096)
        _assert_open_refused(copy, "malformed")


# -- writes that fail ------------------------------------------------------------------------


def test_a_full_disk_gives_the_typed_error_and_keeps_the_changes(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    g = Graph(path, flush_interval=3600)
    g.put("a", {"v": 1})
    g.flush()
    assert g.storage is not None
    db = g.storage._db
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full
    g.put("big", {"v": "x" * 100_000})
    with pytest.raises(LocalProtocolError, match="full") as caught:
        g.flush()
    assert _storage_error(caught.value)
    assert g.storage.pending == 1 and not db.in_transaction
    db.execute("PRAGMA max_page_count = 1000000")  # room again
    g.flush()
    g.close()
    with Graph(path) as again:
        assert again.get_field("big", "v") == "x" * 100_000


def test_a_write_that_cannot_reach_the_file_still_reaches_the_graph(tmp_path: Path) -> None:
    """Another SQLite client holds the file's write lock: the flush that a put makes due
    fails: put() returns, the view, the sync sessions and the subscribers see the change,
    and it reaches the file once the lock is released."""
    path = tmp_path / "g.db"
    g = Graph(path, flush_interval=3600)
    g.put("a", {"v": 1})
    g.flush()
    storage = g.storage
    assert storage is not None
    storage._db.execute("PRAGMA busy_timeout = 20")
    storage._flush_rows = 1  # every write makes a flush due
    seen: list[Change] = []
    g.subscribe("b", seen.append)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # holds the write lock
        g.put("b", {"v": 2})
        assert g.get("b") == {"v": 2}
        assert [c.value for c in seen] == [2]
        assert g.root_summary()[1] == 2
        assert storage.pending == 1
        with pytest.raises(LocalProtocolError, match="locked") as caught:
            g.flush()
        assert _storage_error(caught.value)
        other.execute("ROLLBACK")
    g.close()
    with Graph(path) as again:
        assert again.get("b") == {"v": 2}


def test_a_failed_compaction_keeps_what_was_buffered(tmp_path: Path) -> None:
    """compact() dropped the buffered batches before its transaction: when it failed,
    they were gone from the buffer, and a close() right after wrote nothing."""
    path = tmp_path / "g.db"
    g = Graph(path, flush_interval=3600)
    g.put("a", {"v": 1})
    storage = g.storage
    assert storage is not None and storage.pending == 1
    storage._db.execute("PRAGMA busy_timeout = 20")
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(LocalProtocolError, match="locked"):
            storage.compact([], g.clock.last)
        other.execute("ROLLBACK")
    assert storage.pending == 1
    g.close()
    with Graph(path) as again:
        assert again.get("a") == {"v": 1}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("clock", struct.pack("<d", math.inf)),
        ("clock", struct.pack("<d", math.nan)),
        ("clock", b"\x00" * 7),
        ("replica_id", b"short"),
    ],
)
def test_a_corrupt_meta_row_gives_the_typed_error(tmp_path: Path, key: str, value: bytes) -> None:
    """An infinite stored clock (every later state infinite, each put() failing with
    HAM_STATE) and a replica id of the wrong length (sent in HELLO, which every peer
    refuses) are a corrupt file, said at open."""
    path = tmp_path / "g.db"
    with Graph(path) as g:
        g.put("a", {"v": 1})
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        db.commit()
    _assert_open_refused(path, "corrupt")


@pytest.mark.parametrize("written", [False, True])
def test_a_graph_collected_without_close_releases_its_file(tmp_path: Path, written: bool) -> None:
    """A graph dropped without close() -- never written to (no flush thread, no
    finalizer), or written to (its finalizer flushes) -- must not keep its file locked:
    the process can open the file again."""
    path = tmp_path / "g.db"
    g = Graph(path, flush_interval=3600)
    if written:
        g.put("a", {"v": 1})
    del g
    gc.collect()
    with Graph(path) as again:
        assert again.souls() == (["a"] if written else [])
    assert open_fds(path) == 0


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[None]:
    """Make ``path`` a file SQLite can only read: mode 0444, and for root (whom modes do
    not stop) the immutable attribute; skips when neither takes."""
    os.chmod(path, 0o444)
    immutable = False
    try:
        if os.geteuid() == 0:
            done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
            if done.returncode != 0:
                pytest.skip("root, and chattr +i is not available here")
            immutable = True
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        os.chmod(path, 0o644)


def test_a_read_only_file_is_refused_at_open(tmp_path: Path) -> None:
    """A graph file SQLite can only read is refused at open, with the typed error, and
    leaves nothing open (not a failing first flush, then a failing close())."""
    path = tmp_path / "g.db"
    with Graph(path) as g:
        g.put("a", {"v": 1})
    with _read_only(path):
        _assert_open_refused(path, "readonly")
    with Graph(path) as g:
        assert g.get("a") == {"v": 1}


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
