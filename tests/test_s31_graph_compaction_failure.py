"""A compaction that fails does not fail the flush, nor close().

A graph flushes its buffered changes to the log, then compacts the log when it has
grown (rewrites it as the table's export). On a nearly full disk the small append fits
and the compaction -- a transaction as large as the log -- does not. The old code raised
that compaction's GraphStorageError from flush() and close(), though every change was on
disk already; close() then left the graph open, for good while the disk stayed full,
and every later flush exported the whole table again. Here the file size limit
(RLIMIT_FSIZE, in a child process) is the full disk: real SQLite writes fail with
EFBIG."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.paths import ROOT

CHILD = textwrap.dedent(
    """
    import logging, resource, signal, sys
    sys.path.insert(0, sys.argv[2])
    from dtp.graph.persist import GraphStorage
    from dtp.graph.store import Graph

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
    graph.close()  # closes (the old code raised here too, and stayed open)
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
