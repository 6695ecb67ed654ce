"""dtp.graph under failure: writes reach disk while the graph is idle (a crash loses at
most the flush interval), subscribers that raise, and change streams closed while a
reader waits."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from dtp.graph import Change, Graph, GraphServer, connect
from dtp.keys import HostIdentity

ROOT = Path(__file__).resolve().parent.parent


def _flushers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "dtp-graph-flusher"]


def _log_rows(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        try:
            return int(db.execute("SELECT COUNT(*) FROM log").fetchone()[0])
        except sqlite3.OperationalError:  # the writer has not created the table yet
            return 0


# -- writes reach disk while the graph is idle ---------------------------------------------------


def test_idle_writes_reach_disk_before_a_crash(tmp_path: Path) -> None:
    """Five puts, then nothing: within the flush interval they are in SQLite, with the
    clock, so a process killed without close() loses none of them."""
    path = tmp_path / "g.db"
    child = textwrap.dedent(
        f"""
        import sys, time
        from dtp.graph import Graph
        g = Graph({str(path)!r})
        for i in range(5):
            g.put("note/%d" % i, {{"text": "hello %d" % i}})
        print(repr(g.clock.last), flush=True)
        time.sleep(120)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        last = float(proc.stdout.readline())
        deadline = time.monotonic() + 20
        while _log_rows(path) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    g = Graph(path)
    try:
        assert g.souls() == [f"note/{i}" for i in range(5)]
        assert g.get_field("note/3", "text") == "hello 3"
        assert g.storage is not None and g.storage.clock_last() == last
    finally:
        g.close()


def test_idle_flush_thread_starts_with_the_first_write_and_ends_with_close(
    tmp_path: Path,
) -> None:
    before = len(_flushers())
    g = Graph(tmp_path / "g.db", flush_interval=0.05)
    assert len(_flushers()) == before  # nothing buffered yet: no thread
    g.set("a", "b", 1)
    storage = g.storage
    assert storage is not None
    deadline = time.monotonic() + 10
    while storage.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    assert storage.pending == 0 and storage.log_rows == 1
    g.set("a", "b", 2)  # the thread serves every later idle period too
    deadline = time.monotonic() + 10
    while storage.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    assert storage.pending == 0 and storage.log_rows == 2
    assert len(_flushers()) == before + 1
    g.close()
    assert len(_flushers()) == before


def test_an_unclosed_graph_does_not_leak_its_flush_thread(tmp_path: Path) -> None:
    before = len(_flushers())
    g = Graph(tmp_path / "g.db", flush_interval=3600)
    g.set("a", "b", 1)
    assert len(_flushers()) == before + 1
    storage = g.storage
    assert storage is not None
    del g
    gc.collect()
    deadline = time.monotonic() + 10
    while len(_flushers()) > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(_flushers()) == before
    storage.close()


# -- subscribers that raise -----------------------------------------------------------------------


def test_a_raising_subscriber_breaks_neither_put_nor_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    g = Graph()
    seen: list[object] = []

    def broken(change: Change) -> None:
        raise ZeroDivisionError("subscriber bug")

    g.subscribe("a", broken)
    g.subscribe("a", lambda change: seen.append(change.value))
    with caplog.at_level(logging.ERROR, logger="dtp.graph.store"):
        g.put("a", {"f": 1})  # the value is committed: put returns normally
        g.put("a", {"f": 2})
    assert seen == [1, 2]
    assert g.get_field("a", "f") == 2
    errors = [r for r in caplog.records if r.exc_info and r.exc_info[0] is ZeroDivisionError]
    assert len(errors) == 2


def test_a_raising_subscriber_does_not_end_a_sync_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    src = Graph()
    for i in range(10):
        src.put(f"n{i}", {"v": i})
    dst = Graph()
    seen: list[object] = []

    def broken(change: Change) -> None:
        raise ZeroDivisionError("subscriber bug")

    dst.subscribe("n3", broken)
    dst.subscribe("n3", lambda change: seen.append(change.value))
    with (
        caplog.at_level(logging.ERROR, logger="dtp.graph.store"),
        GraphServer(src, ("127.0.0.1", 0), HostIdentity.generate()) as server,
    ):
        session = connect(dst, server.address, server_key=server.noise_public_key, timeout=10)
    assert session.synced
    assert dst.snapshot() == src.snapshot()
    assert seen == [3]
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)


# -- change streams -------------------------------------------------------------------------------


def test_closing_a_change_stream_ends_a_waiting_reader() -> None:
    async def main() -> list[object]:
        g = Graph()
        stream = g.changes("a")
        got: list[object] = []

        async def consume() -> str:
            async for change in stream:
                got.append(change.value)
            return "ended"

        task = asyncio.create_task(consume())
        g.set("a", "f", 1)
        while not got:
            await asyncio.sleep(0.01)
        stream.close()  # the reader is waiting for the next change
        assert await asyncio.wait_for(task, 5) == "ended"
        return got

    assert asyncio.run(main()) == [1]


def test_closing_a_change_stream_from_another_thread_ends_the_reader() -> None:
    async def main() -> None:
        g = Graph()
        stream = g.changes("a")
        task = asyncio.create_task(anext(stream, "ended"))
        await asyncio.sleep(0.05)
        closer = threading.Thread(target=stream.close)
        closer.start()
        assert await asyncio.wait_for(task, 5) == "ended"
        closer.join()

    asyncio.run(main())


def test_change_stream_drains_what_came_before_close_and_drops_the_oldest() -> None:
    async def main() -> tuple[list[object], int]:
        g = Graph()
        stream = g.changes("a", maxsize=2)
        for i in range(5):
            g.set("a", "f", i)
        await asyncio.sleep(0.05)  # the changes are handed over through the loop
        stream.close()
        g.set("a", "f", 99)  # after close: not delivered
        return [c.value async for c in stream], stream.dropped

    assert asyncio.run(main()) == ([3, 4], 3)


@pytest.mark.parametrize("maxsize", [0, -1, 1.5, True])
def test_change_stream_maxsize_must_be_at_least_one(maxsize: object) -> None:
    async def main() -> None:
        g = Graph()
        with pytest.raises(ValueError, match="maxsize"):
            g.changes("a", maxsize=maxsize)  # type: ignore[arg-type]
        assert not g._subs  # nothing left subscribed

    asyncio.run(main())


def test_a_change_stream_whose_loop_is_gone_stops_listening(
    caplog: pytest.LogCaptureFixture,
) -> None:
    g = Graph()

    async def open_stream() -> None:
        g.changes("a")  # never closed, its loop ends with asyncio.run

    asyncio.run(open_stream())
    with caplog.at_level(logging.ERROR, logger="dtp.graph.store"):
        g.set("a", "f", 1)
        g.set("a", "f", 2)
    assert not caplog.records
    assert not g._subs
