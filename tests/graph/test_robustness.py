"""dtp.graph under failure: writes reach disk while the graph is idle (a crash loses at
most the flush interval), subscribers that raise, change streams closed while a reader
waits, and bad input to the Graph API (typed errors)."""

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
from collections.abc import Callable
from pathlib import Path

import pytest

from dtp.errors import LocalProtocolError, RemoteProtocolError
from dtp.graph import Change, Graph, GraphServer, connect
from dtp.graph._persist import GraphStorageError
from dtp.identity.keys import HostIdentity
from dtp.native.core import encode_ham_batch
from dtp.native.types import HamUpdate
from tests.support.leaks import open_fds
from tests.support.paths import ROOT


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


def test_a_clean_exit_without_close_keeps_the_last_writes(tmp_path: Path) -> None:
    """The interval has not passed when the interpreter exits: the writes still go to
    disk (the graph's finalizer runs at exit)."""
    path = tmp_path / "g.db"
    child = textwrap.dedent(
        f"""
        from dtp.graph import Graph
        g = Graph({str(path)!r}, flush_interval=3600)
        for i in range(5):
            g.put("note/%d" % i, {{"text": "hello %d" % i}})
        assert g.storage.pending == 5
        """
    )
    subprocess.run([sys.executable, "-c", child], cwd=ROOT, check=True, timeout=60)
    with Graph(path) as g:
        assert g.souls() == [f"note/{i}" for i in range(5)]


def _wait_for(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + 10
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_idle_flush_thread_starts_with_the_first_write_and_ends_with_close(
    tmp_path: Path,
) -> None:
    before = set(_flushers())
    # the interval is long enough that the first write right after opening is buffered
    # (an older buffer is flushed by the write itself)
    g = Graph(tmp_path / "g.db", flush_interval=0.5)
    assert set(_flushers()) == before  # nothing buffered yet: no thread
    g.set("a", "b", 1)
    storage = g.storage
    assert storage is not None
    (thread,) = set(_flushers()) - before
    assert _wait_for(lambda: storage.pending == 0)
    assert storage.log_rows == 1
    g.set("a", "b", 2)  # the same thread serves every later idle period too
    assert _wait_for(lambda: storage.pending == 0)
    assert storage.log_rows == 2
    assert set(_flushers()) - before == {thread}
    g.close()
    assert not thread.is_alive()


def test_an_unclosed_graph_that_is_collected_flushes_and_ends_its_thread(
    tmp_path: Path,
) -> None:
    before = set(_flushers())
    g = Graph(tmp_path / "g.db", flush_interval=3600)
    g.set("a", "b", 1)
    (thread,) = set(_flushers()) - before
    storage = g.storage
    assert storage is not None and storage.pending == 1
    del g
    gc.collect()
    assert _wait_for(lambda: not thread.is_alive())
    assert storage.pending == 0 and storage.log_rows == 1
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
    with caplog.at_level(logging.ERROR, logger="dtp.graph._store"):
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
        caplog.at_level(logging.ERROR, logger="dtp.graph._store"),
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
    with caplog.at_level(logging.ERROR, logger="dtp.graph._store"):
        g.set("a", "f", 1)
        g.set("a", "f", 2)
    assert not caplog.records
    assert not g._subs


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("soul", "fields"),
    [
        ("a", {"f": "\ud800"}),
        ("a", {"f": {"nested": "ok \udfff"}}),  # a value in a nested node
        ("a", {"f": {"#": "\udfff"}}),  # a link's soul
        ("a", {"f": {"k\ud800": 1}}),  # a field name of a nested node
        ("a", {"\ud800": 1}),
        ("\ud800", {"f": 1}),
        ("a", {"child": {"\ud800": 1}}),  # a field of a nested node
    ],
)
def test_lone_surrogates_are_refused_with_a_typed_error(
    soul: str, fields: dict[str, object]
) -> None:
    g = Graph()
    with pytest.raises(LocalProtocolError, match="Unicode"):
        g.put(soul, fields)
    assert len(g) == 0
    assert soul not in g


@pytest.mark.parametrize(
    "call",
    [
        lambda g: g.get(5),
        lambda g: g.get("\ud800"),
        lambda g: g.get_field("a", 5),
        lambda g: g.get_field(b"a", "f"),
        lambda g: g.state_of(None, "f"),
        lambda g: g.state_of("a", "\ud800"),
        lambda g: g.walk("a", 5),
        lambda g: g.subscribe(5, print),
        lambda g: g.subscribe("a", print, field=5),
        lambda g: g.subscribe("a", None),
        lambda g: g.merge("abc"),
        lambda g: g.merge(5),  # bytes(5) would be five zero bytes
    ],
)
def test_bad_arguments_give_typed_errors(call: object) -> None:
    g = Graph()
    g.put("a", {"f": 1})
    with pytest.raises(LocalProtocolError):
        call(g)  # type: ignore[operator]
    assert not g._subs


def test_merge_still_takes_any_bytes_like_batch() -> None:
    batch = encode_ham_batch([HamUpdate(b"a", b"f", 1.0, b"1")])
    for form in (batch, bytearray(batch), memoryview(batch)):
        g = Graph()
        assert g.merge(form).applied == 1


def test_a_path_that_is_not_a_graph_database_gives_a_typed_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("just some text, long enough to be read as a header " * 4)
    other = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(other)) as db:
        db.execute("CREATE TABLE log (id INTEGER PRIMARY KEY, line TEXT)")  # not our log
        db.commit()
    for path in (tmp_path, text, other, tmp_path / "no" / "such" / "dir.db"):
        with pytest.raises(LocalProtocolError, match="cannot open graph database") as error:
            Graph(path)
        # closed at once, not when the traceback (which holds the storage) goes away
        assert open_fds(path) == 0, error
    assert text.read_text().startswith("just some text")


def test_a_corrupt_log_gives_a_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    with Graph(path) as g:
        g.put("a", {"f": 1})
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("INSERT INTO log (batch) VALUES (?)", (b"\x01\x05\x00\x00\x00garbage",))
        db.commit()
    with pytest.raises(GraphStorageError) as error:
        Graph(path)
    assert open_fds(path) == 0, error  # the replay failed: the file is closed


def test_a_closed_graph_refuses_reads_and_subscriptions(tmp_path: Path) -> None:
    g = Graph(tmp_path / "g.db")
    g.put("a", {"f": 1, "link": {"x": 2}})
    sub = g.subscribe("a", print)
    g.close()
    calls = [
        lambda: g.get("a"),
        lambda: g.get_field("a", "f"),
        lambda: g.state_of("a", "f"),
        lambda: g.walk("a", "link"),
        lambda: g.souls(),
        lambda: g.subscribe("a", print),
        lambda: g.snapshot(),
        lambda: g.root_summary(),
        lambda: g.child_summaries(0, 0),
    ]
    for call in calls:
        with pytest.raises(LocalProtocolError, match="closed"):
            call()

    async def open_stream() -> None:
        g.changes("a")

    with pytest.raises(LocalProtocolError, match="closed"):
        asyncio.run(open_stream())
    sub.cancel()  # still fine: it only forgets the callback
    assert not sub.active
    g.close()  # idempotent


# -- hostile or vanishing sync peers -----------------------------------------------------------


def test_values_nested_too_deep_or_not_finite_are_refused_when_decoded() -> None:
    """A peer's value nested past the interpreter's recursion limit, or holding NaN or
    Infinity, is not a graph value: decoding refuses it with the typed error, get()
    leaves such a field out (as its docstring says of non-JSON fields), and get_field
    raises that error instead of a RecursionError from deep inside json."""
    from dtp.graph.values import decode_value

    deep = b"[" * 100_000 + b"]" * 100_000
    for bad in (deep, b"NaN", b"[Infinity]", b'{"a": -Infinity}'):
        with pytest.raises(RemoteProtocolError):
            decode_value(bad)
    g = Graph()
    g.put("doc", {"ok": 1})
    g.merge(encode_ham_batch([HamUpdate(b"doc", b"deep", 1.0, deep)]))
    assert g.get("doc") == {"ok": 1}
    with pytest.raises(RemoteProtocolError):
        g.get_field("doc", "deep")
    g.close()


def test_a_peer_that_stops_reading_and_then_breaks_the_protocol_ends_its_session() -> None:
    """The server pushes a large table to a peer that never reads; the peer then sends
    a malformed message. The session ends (counted as an error) at once: before, its
    thread waited for the blocked writer for as long as the peer kept the connection."""
    import struct

    import msgpack

    import dtp.socket
    from dtp.graph.sync import HELLO, VERSION

    def frame(message: object) -> bytes:
        body = msgpack.packb(message, use_bin_type=True)
        return struct.pack(">I", len(body)) + body

    g = Graph()
    value = b'"' + b"x" * 1000 + b'"'
    updates = [HamUpdate(f"n/{i}".encode(), b"f", 1.0, value) for i in range(30_000)]
    for k in range(0, len(updates), 5000):
        g.merge(encode_ham_batch(updates[k : k + 5000]))
    with GraphServer(g, ("127.0.0.1", 0), HostIdentity.generate()) as server:
        sock = dtp.socket.create_connection(server.address, 10, server_key=server.noise_public_key)
        try:
            sock.sendall(frame([HELLO, VERSION, b"r" * 16, 0, 0]))  # a fresh peer: the whole table
            time.sleep(1.0)  # not read: the server's writer is held by flow control
            sock.sendall(frame([77]))  # not a message
            assert _wait_for(lambda: server.errors == 1)
        finally:
            sock.close()
    g.close()


def test_closing_the_graph_ends_a_live_sync_with_a_quiet_peer() -> None:
    """A live connect() (until_synced=False) whose graph is closed while the peer is
    quiet ends with the graph's error: its reader does not wait for the peer to speak
    or close."""
    a, b = Graph(), Graph()
    a.put("x", {"y": 1})
    outcome: list[BaseException] = []
    with GraphServer(a, ("127.0.0.1", 0), HostIdentity.generate()) as server:

        def live() -> None:
            try:
                connect(b, server.address, server_key=server.noise_public_key, until_synced=False)
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=live, daemon=True)
        thread.start()
        assert _wait_for(lambda: b.get("x") == {"y": 1})
        b.close()
        thread.join(5)
        assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], LocalProtocolError)
    a.close()


def test_closing_the_graph_ends_a_live_asyncio_sync_with_a_quiet_peer() -> None:
    """The same for sync_stream: its write side fails when the graph is closed, and the
    read side, waiting for the quiet peer, now ends with that error."""
    import dtp.aio
    from dtp.graph import sync_stream

    async def main() -> None:
        a, b = Graph(), Graph()
        a.put("x", {"y": 1})
        identity = HostIdentity.generate()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            with contextlib.suppress(Exception):
                await sync_stream(a, reader, writer)
            writer.close()

        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        async with server:
            reader, writer = await dtp.aio.open_connection(
                "127.0.0.1", server.address[1], server_key=identity.noise_public
            )
            live = asyncio.ensure_future(sync_stream(b, reader, writer))
            for _ in range(500):
                if b.get("x") == {"y": 1}:
                    break
                await asyncio.sleep(0.01)
            b.close()
            with pytest.raises(LocalProtocolError, match="closed"):
                await asyncio.wait_for(live, 5)
            writer.close()
            await writer.wait_closed()
        a.close()

    asyncio.run(main())


@pytest.mark.parametrize("version", [True, 1.0])
def test_hello_takes_only_the_integer_version(version: object) -> None:
    import struct

    import msgpack

    from dtp.graph import GraphSyncError, SyncSession
    from dtp.graph.sync import HELLO

    body = msgpack.packb([HELLO, version, b"r" * 16, 0, 0], use_bin_type=True)
    session = SyncSession(Graph())
    with pytest.raises(GraphSyncError, match="HELLO is"):
        session.receive_data(struct.pack(">I", len(body)) + body)
    session.close()
