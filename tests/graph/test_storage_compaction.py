"""The graph store's file, values and clock:

1. The log was compacted -- the whole table rewritten -- once it held 4096 rows more than
   four times the rows of the last compaction, a count that started again from 0 at each
   open; every ``changed`` batch was a row. A peer's stream of one-update DATA messages
   thus rewrote a 32 MiB table for every ~4-8 KiB it sent. A flush of many batches now
   packs them into few rows, and the log is measured in bytes (each row weighing 1 KiB
   more) against the table's size at the last compaction, which the file keeps. The -wal
   file, grown to the table's size by a compaction's transaction, is cut back
   (``journal_size_limit``).
2. A mapping that is not a dict (``MappingProxyType``, ``UserDict``, ``ChainMap``) was
   accepted by the value check, then ``json`` raised a bare TypeError from put(); it is
   now written as the object it stands for.
3. ``Graph(max_drift_ms=sys.float_info.max)`` let a peer's state at the largest float be
   merged; the next write of that field took the state ``inf``, which was persisted as
   the clock: no write could be made again, nor the file opened. The drift is capped at
   2**44 ms, and a state that would not be finite is refused without moving the clock.
4. The pure-Python table held its deferred queue as Python objects (a tuple, bytes
   objects and a set key per update): about 23 times ``max_deferred_bytes``, which
   counts canonical bytes, for a queue a peer filled with minimal updates. It now keeps
   the canonical encodings back to back with an index, and gives the C core's results.

A compaction that fails does not fail the flush, nor close().

A graph flushes its buffered changes to the log, then compacts the log when it has
grown (rewrites it as the table's export). On a nearly full disk the small append fits
and the compaction -- a transaction as large as the log -- does not: every change is on
disk already, so neither flush() nor close() raises that compaction's GraphStorageError,
close() closes the graph, and a later flush does not export the whole table again at
once (a warning says the compaction failed). Here the file size limit
(RLIMIT_FSIZE, in a child process) is the full disk: real SQLite writes fail with
EFBIG."""

from __future__ import annotations

import collections
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
import tracemalloc
import types
from collections.abc import Mapping
from pathlib import Path

import pytest

from dtp.errors import ErrorCode, LocalProtocolError
from dtp.graph import Graph
from dtp.graph._clock import HybridClock
from dtp.graph._persist import GraphStorage
from dtp.graph.values import GraphValueError, encode_value
from dtp.native import reference as _reference
from dtp.native.core import NativeHamGraph, encode_ham_batch
from dtp.native.types import HamUpdate
from tests.support.paths import ROOT

HAMS = ["c", "python"]
_BIG = b'"' + b"x" * 4000 + b'"'


def _storage(graph: Graph) -> GraphStorage:
    storage = graph.storage
    assert storage is not None
    return storage


def _tiny(k: int, soul: bytes = b"spam") -> bytes:
    """A peer's one-update batch (a DATA message of ~25 bytes)."""
    return encode_ham_batch([HamUpdate(soul, b"f", 2.0 + k, b"1")])


def _large_table(path: Path, ham: str, fields: int = 1000) -> int:
    """A file holding ``fields`` fields of 4 KiB, compacted; the table's export size."""
    with Graph(path, ham=ham) as g:
        g.merge(encode_ham_batch([HamUpdate(b"n%d" % i, b"f", 1.0, _BIG) for i in range(fields)]))
        g.flush()
        storage = _storage(g)
        storage.compact(g.export(), g.clock.last)
        return sum(len(batch) for batch in g.export())


# -- 1. compaction measured against the table ------------------------------------------------


@pytest.mark.parametrize("ham", HAMS)
def test_a_stream_of_tiny_peer_batches_does_not_rewrite_a_large_table(
    tmp_path: Path, ham: str
) -> None:
    """20,000 one-update batches into a 4 MiB table, after a reopen: the old rule
    compacted four times (16 MiB rewritten for 500 KiB merged)."""
    path = tmp_path / "g.db"
    table = _large_table(path, ham)
    with Graph(path, ham=ham, flush_interval=3600) as g:
        storage = _storage(g)
        before = storage.compactions
        merged = 0
        for k in range(20000):
            batch = _tiny(k)
            merged += len(batch)
            g.merge(batch)
        g.flush()
        rewritten = (storage.compactions - before) * table
        # a compaction is paid for by at least as many bytes of log
        assert rewritten <= 2 * merged + (1 << 20), (storage.compactions - before, merged)
        assert storage.log_rows < 100  # ~20 flushes of 1024 batches, a row or so each
        assert g.get_field("spam", "f") == 1
        assert g.state_of("spam", "f") == 2.0 + 19999


@pytest.mark.parametrize("ham", HAMS)
def test_packed_rows_replay_to_the_same_table(tmp_path: Path, ham: str) -> None:
    """A burst of small batches (fields written again and again, in and out of order)
    is stored in few rows, and reopening gives the very table that wrote them."""
    path = tmp_path / "g.db"
    g = Graph(path, ham=ham, flush_interval=3600)
    for k in range(3000):
        soul = b"s%d" % (k % 97)
        state = float((k * 7919) % 1000)  # revisits: HISTORICAL, SAME and APPLIED mixed
        value = b'"v%d"' % (k % 13)
        g.merge(encode_ham_batch([HamUpdate(soul, b"f%d" % (k % 3), state, value)]))
    g.put("local", {"a": 1, "b": 2.5})
    g.flush()
    storage = _storage(g)
    assert storage.log_rows <= 10
    expected = g.snapshot()
    g.close()
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT COUNT(*) FROM log").fetchone()[0]
    db.close()
    assert rows == storage.log_rows
    with Graph(path, ham=ham) as h:
        assert h.snapshot() == expected
        assert h.get("local") == {"a": 1, "b": 2.5}


def test_rows_of_sparse_writes_are_compacted_in_proportion(tmp_path: Path) -> None:
    """A row per write (writes flushed one at a time) is replayed by a merge call each
    at open: the log's rows stay in proportion to the table, not up to 4096 beyond it."""
    with Graph(tmp_path / "g.db", flush_interval=3600) as g:
        storage = _storage(g)
        for i in range(1000):
            g.set("hot", "counter", i)
            g.flush()
        assert storage.compactions >= 1
        assert storage.log_rows <= 200
    with Graph(tmp_path / "g.db") as h:
        assert h.get_field("hot", "counter") == 999


def test_the_table_size_measured_at_compaction_survives_a_reopen(tmp_path: Path) -> None:
    """After a reopen, a log barely past the table is not compacted again at once."""
    path = tmp_path / "g.db"
    _large_table(path, "c", fields=300)
    with Graph(path, flush_interval=3600) as g:
        storage = _storage(g)
        for k in range(5000):
            g.merge(_tiny(k, b"s%d" % (k % 50)))
        g.flush()
        assert storage.compactions == 0


def test_the_wal_file_is_cut_back_after_a_compaction(tmp_path: Path) -> None:
    """A compaction writes the table in one transaction, which the -wal file grows to;
    SQLite kept it at that size for good (2.4 times the table, beside the database)."""
    path = tmp_path / "g.db"
    wal = Path(str(path) + "-wal")
    with Graph(path, flush_interval=3600) as g:
        g.merge(encode_ham_batch([HamUpdate(b"n%d" % i, b"f", 1.0, _BIG) for i in range(4000)]))
        g.flush()
        storage = _storage(g)
        storage.compact(g.export(), g.clock.last)
        assert os.path.getsize(wal) > 12 << 20  # the table, 16 MiB, went through it
        for i in range(3):
            g.put("small", {"i": i})
            g.flush()
        assert os.path.getsize(wal) <= 9 << 20


# -- 2. mappings that are not dicts ----------------------------------------------------------


def _mappings() -> list[Mapping[str, object]]:
    return [
        types.MappingProxyType({"a": 1, "b": 2.5}),
        collections.UserDict({"a": 1, "b": 2.5}),
        collections.ChainMap({"a": 1}, {"b": 2.5}),
    ]


@pytest.mark.parametrize("mapping", _mappings(), ids=lambda m: type(m).__name__)
def test_any_mapping_in_a_put_is_a_node_of_its_own(mapping: Mapping[str, object]) -> None:
    """As a dict is: Gun holds no object in a field but a link, so a nested mapping is
    written as the node ``<soul>/<field>`` and linked (docs/graph.md, "Values")."""
    g = Graph()
    g.put("s", {"m": mapping, "deep": {"k": mapping}})
    assert g.get("s/m") == g.get("s/deep/k") == {"a": 1, "b": 2.5}
    assert g.get("s") == {"m": {"#": "s/m"}, "deep": {"#": "s/deep"}}
    with pytest.raises(GraphValueError, match="link"):
        encode_value(mapping)  # a value of its own, it is not one Gun holds


def test_a_link_given_as_another_mapping_is_a_link() -> None:
    g = Graph()
    g.put("b", {"name": "bob"})
    g.put("a", {"friend": types.MappingProxyType({"#": "b"})})
    assert g.get_field("a", "friend") == {"#": "b"}
    assert g.walk("a", "friend") == "b"
    assert "a/friend" not in g  # a link, not a nested node


# -- 3. the clock stays finite ---------------------------------------------------------------


def test_a_drift_beyond_2_44_ms_is_refused_up_front(tmp_path: Path) -> None:
    for drift in (sys.float_info.max, 2.0**44 + 1, 10**20):
        with pytest.raises(ValueError, match="max_drift_ms"):
            Graph(str(tmp_path / "g.db"), max_drift_ms=drift)
        with pytest.raises(ValueError, match="max_drift_ms"):
            HybridClock(max_drift_ms=float(drift))
    assert not (tmp_path / "g.db").exists()  # refused before the file was opened
    with Graph(str(tmp_path / "g.db"), max_drift_ms=2**44) as g:
        assert g.clock.max_drift_ms == 2.0**44


def test_no_state_past_the_largest_float_is_issued() -> None:
    clock = HybridClock(lambda: 5.0, last=7.0)
    with pytest.raises(LocalProtocolError) as info:
        clock.next(sys.float_info.max)
    assert info.value.code == ErrorCode.HAM_STATE
    assert clock.last == 7.0  # unchanged: other fields can still be written
    assert clock.next() == 7.0 + 1 / 256


@pytest.mark.parametrize("ham", HAMS)
def test_a_field_at_the_largest_float_leaves_the_graph_and_its_file_usable(
    tmp_path: Path, ham: str
) -> None:
    """A file holding a field at the largest float (merged by a graph of an earlier
    version with a huge drift): writing that field fails; nothing else does, and the
    file still opens."""
    path = tmp_path / "g.db"
    with Graph(path, ham=ham) as g:
        g.put("other", {"y": 0})
    top = encode_ham_batch([HamUpdate(b"a", b"x", sys.float_info.max, b"1")])
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO log (batch) VALUES (?)", (top,))
    db.close()
    g = Graph(path, ham=ham)
    assert g.state_of("a", "x") == sys.float_info.max
    with pytest.raises(LocalProtocolError) as info:
        g.put("a", {"x": 2})
    assert info.value.code == ErrorCode.HAM_STATE
    last = g.clock.last
    assert last < sys.float_info.max
    state = g.put("other", {"y": 1})  # an unrelated field
    assert state > last
    g.close()
    with Graph(path, ham=ham) as h:
        assert h.get_field("other", "y") == 1
        assert h.get_field("a", "x") == 1
        assert h.put("b", {"z": 1}) > state


# -- 4. the twin's deferred queue --------------------------------------------------------------


def test_the_twin_deferred_queue_holds_about_its_cap_and_behaves_as_c() -> None:
    """A peer fills the queue with minimal far-future updates (13 canonical bytes each);
    the twin's heap stays within a few times the cap, and every result -- statuses,
    what was queued, refused, advanced -- is the C core's."""
    cap = 256 << 10
    c = NativeHamGraph(max_deferred_bytes=cap)
    tracemalloc.start()
    try:
        twin = _reference.HamGraph(max_deferred_bytes=cap)
        base = tracemalloc.get_traced_memory()[0]
        k = 0
        while twin.deferred_bytes + 13 * 1000 < cap:
            updates = [
                HamUpdate(bytes([65 + j % 26]), bytes([65 + j // 26 % 26]), 1e12 + k + j, b"")
                for j in range(4000)
            ]
            k += 4000
            batch = encode_ham_batch(updates)
            assert twin.merge(batch, 0.0) == c.merge(batch, 0.0)
        del updates, batch  # (the queue alone)
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert twin.deferred_bytes == c.deferred_bytes > cap - 13 * 1000
    assert used < 8 * cap, used / cap  # was ~27 times
    # the queue full: repeats are held once, others refused; then part of it falls due
    rng = random.Random(30)
    for _ in range(20):
        updates = [
            HamUpdate(bytes([65 + rng.randrange(26)]), b"A", 1e12 + rng.randrange(k + 50), b"")
            for _ in range(200)
        ]
        batch = encode_ham_batch(updates)
        assert twin.merge(batch, 0.0) == c.merge(batch, 0.0)
    for machine in (1e12 + 5000.5, 1e12 + 5000.5, 1e12 + k / 2, 1e12 + k + 100):
        assert twin.advance(machine) == c.advance(machine)
        assert (twin.deferred_count, twin.deferred_bytes, len(twin)) == (
            c.deferred_count,
            c.deferred_bytes,
            len(c),
        )
        updates = [HamUpdate(b"z%d" % i, b"f", machine + 1 + i % 7, b"v") for i in range(300)]
        batch = encode_ham_batch(updates * 2)
        assert twin.merge(batch, machine) == c.merge(batch, machine)
    assert twin.deferred_count == c.deferred_count > 0
    for batch in c.export():
        for soul, field, state, value in _reference.decode_ham_batch(batch):
            assert twin.get(soul, field) == (state, value)


CHILD = textwrap.dedent(
    """
    import logging, resource, signal, sys
    sys.path.insert(0, sys.argv[2])
    from dtp.graph._persist import GraphStorage
    from dtp.graph._store import Graph

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write(), not a kill
    warnings = []

    class Keep(logging.Handler):
        def emit(self, record):
            warnings.append(record.getMessage())

    logging.getLogger("dtp.graph").addHandler(Keep())
    path = sys.argv[1]
    graph = Graph(path, flush_interval=3600)
    # the log grows without compacting: many versions of the same few fields
    real = GraphStorage.should_compact
    GraphStorage.should_compact = lambda self: False
    for i in range(3000):
        graph.put("soul/%d" % (i % 1000), {"n": i, "pad": "x" * 300})
        graph.flush()
    GraphStorage.should_compact = real
    assert graph.storage.should_compact()
    # the disk is nearly full: a few more pages fit, the table's worth (300 kB) that a
    # compaction writes does not (the write-ahead log emptied first: all writes go there)
    graph.storage._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (128 << 10, hard))
    graph.put("soul/last", {"n": -1})
    graph.flush()  # the append is written; the compaction fails and is logged
    assert graph.storage.compactions == 0
    assert any("compacting the log failed" in w for w in warnings), warnings
    graph.put("soul/after", {"n": -2})
    graph.flush()  # not tried again at once: nothing more is logged
    assert sum("compacting the log failed" in w for w in warnings) == 1, warnings
    graph.close()  # closes, without raising
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    again = Graph(path)
    assert again.get("soul/last") == {"n": -1}, again.get("soul/last")
    assert again.get("soul/after") == {"n": -2}
    assert again.get("soul/7")["n"] == 2007
    again.close()
    print("ok")
    """
)


def test_a_failing_compaction_leaves_flush_and_close_working(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "graph.db"), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"
