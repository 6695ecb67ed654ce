"""The book of a client's connections until each is settled (dtp/payments/_refund_book.py):
an SQLite file that outlives its process, the entry of an open told first by its
spending cap and then by its ID, and the files of earlier versions taken up as they
are found -- the services daemon's first ``connections.sqlite`` and the SDK collector's
first JSON file."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from dtp.daemon._state import CONNECTIONS_FILE
from dtp.payments._refund_book import BOOK_VERSION, OpenedBook

CAP1, CAP2 = "0x" + "01" * 32, "0x" + "02" * 32
CID1, CID2 = "0x" + "a1" * 32, "0x" + "a2" * 32


def test_the_book_survives_its_file_being_closed_and_opened_again(tmp_path: Path) -> None:
    path = tmp_path / CONNECTIONS_FILE
    book = OpenedBook(path)
    assert book.entries() == [] and not path.exists()  # made by the first record
    book.record(CAP1, None, "f")
    book.record(CAP2, CID2, "f")
    book.record(CAP1, CID1, "f")  # the ID once the open landed
    book.record(CAP1, None, "f")  # (a late repeat keeps it)
    book.close()
    with OpenedBook(path) as again:
        assert [(e.cap_id, e.connection_id, e.label) for e in again.entries()] == [
            (CAP1, CID1, "f"),
            (CAP2, CID2, "f"),
        ]
        (first, _) = again.entries()
        again.forget(first)
        assert [e.connection_id for e in again.entries()] == [CID2]
        assert len(again) == 1


def test_a_connection_told_by_its_id_alone_then_by_its_cap_is_one_entry() -> None:
    with OpenedBook() as book:  # (in memory)
        book.record(None, CID1, due_ms=5)
        book.record(CAP1, None)
        merged = book.record(CAP1, CID1)  # the two are one connection
        assert (merged.cap_id, merged.connection_id, merged.due_ms) == (CAP1, CID1, 5)
        assert len(book) == 1
        assert book.find(CAP1) == book.find(CID1) == merged
        assert book.find(CAP2) is None
        with pytest.raises(ValueError, match="spending cap or its ID"):
            book.record(None, None)


def test_an_entry_that_learnt_its_id_since_it_was_read_is_not_forgotten() -> None:
    """A look found no connection for a cap while its open was still landing; the open
    then told its ID: the look's forget must not drop it."""
    with OpenedBook() as book:
        seen = book.record(CAP1, None)
        book.record(CAP1, CID1)
        book.forget(seen)
        assert [e.connection_id for e in book.entries()] == [CID1]


def test_the_time_a_connection_falls_due_is_kept() -> None:
    with OpenedBook() as book:
        entry = book.record(None, CID1)
        book.set_due(entry, 1234)
        assert book.entries()[0].due_ms == 1234
        book.set_due(entry, None)
        assert book.entries()[0].due_ms is None


def test_records_from_many_threads_all_land(tmp_path: Path) -> None:
    with OpenedBook(tmp_path / "book.sqlite") as book:
        caps = [f"0x{n:064x}" for n in range(1, 41)]
        threads = [threading.Thread(target=book.record, args=(cap, None)) for cap in caps]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(e.cap_id or "" for e in book.entries()) == caps


def test_an_unserved_connection_is_said_so_until_served(tmp_path: Path) -> None:
    """A forward's open is recorded unserved (it may be connected on again should its
    connect fail) until its connect succeeded; the mark outlives the process, and a
    repeat of the record leaves it as it is."""
    path = tmp_path / CONNECTIONS_FILE
    with OpenedBook(path) as book:
        book.record(CAP1, None, "f", unserved=True)
        book.record(CAP1, CID1, "f", unserved=True)  # the ID once the open landed
        book.record(CAP2, CID2, "f")
        assert [e.unserved for e in book.entries()] == [True, False]
    with OpenedBook(path) as book:
        assert [e.unserved for e in book.entries()] == [True, False]
        book.served(CID1)
        book.record(CAP1, CID1, "f", unserved=True)  # (a late repeat: no longer)
        assert [e.unserved for e in book.entries()] == [False, False]


def test_a_book_of_this_version_without_the_unserved_column_gets_it(tmp_path: Path) -> None:
    """A file its version's first daemons wrote: the column is added as it is opened,
    its entries not unserved; a daemon that knows no such column still writes it."""
    path = tmp_path / CONNECTIONS_FILE
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE opened (cap_id TEXT UNIQUE, connection_id TEXT UNIQUE, forward TEXT "
        "NOT NULL, recorded_at REAL NOT NULL, due_ms INTEGER, CHECK (cap_id IS NOT NULL "
        "OR connection_id IS NOT NULL))"
    )
    db.execute("INSERT INTO opened VALUES (?, ?, 'web', 1.0, 5)", (CAP1, CID1))
    db.execute(f"PRAGMA user_version = {BOOK_VERSION}")
    db.commit()
    db.close()
    with OpenedBook(path) as book:
        (entry,) = book.entries()
        assert (entry.connection_id, entry.due_ms, entry.unserved) == (CID1, 5, False)
        book.record(CAP2, CID2, "web", unserved=True)
    db = sqlite3.connect(path)
    try:
        db.execute(
            "INSERT INTO opened (cap_id, connection_id, forward, recorded_at, due_ms) "
            "VALUES (?, NULL, 'f', 3.0, NULL)",
            ("0x" + "03" * 32,),
        )
        db.commit()
        rows = db.execute("SELECT unserved FROM opened ORDER BY rowid").fetchall()
        assert rows == [(0,), (1,), (0,)]
    finally:
        db.close()


def _first_daemon_book(path: Path) -> None:
    """A ``connections.sqlite`` as the daemon's first book wrote it."""
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE IF NOT EXISTS opened (cap_id TEXT PRIMARY KEY, connection_id TEXT, "
        "forward TEXT NOT NULL, recorded_at REAL NOT NULL)"
    )
    db.execute("INSERT INTO opened VALUES (?, ?, 'web', 1.0)", (CAP1, CID1))
    db.execute("INSERT INTO opened VALUES (?, NULL, 'web', 2.0)", (CAP2,))
    db.commit()
    db.close()


def test_the_daemons_first_book_is_taken_up(tmp_path: Path) -> None:
    path = tmp_path / CONNECTIONS_FILE
    _first_daemon_book(path)
    with OpenedBook(path) as book:
        assert [(e.cap_id, e.connection_id, e.label) for e in book.entries()] == [
            (CAP1, CID1, "web"),
            (CAP2, None, "web"),
        ]
        book.record(CAP2, CID2, "web")
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (BOOK_VERSION,)
        # a daemon of the first book's version still reads and writes it
        db.execute(
            "INSERT INTO opened (cap_id, connection_id, forward, recorded_at) "
            "VALUES (?, NULL, 'f', 3.0) ON CONFLICT (cap_id) DO UPDATE SET "
            "connection_id = COALESCE(excluded.connection_id, opened.connection_id)",
            ("0x" + "03" * 32,),
        )
        rows = db.execute("SELECT cap_id, connection_id FROM opened ORDER BY recorded_at")
        assert [r[1] for r in rows] == [CID1, CID2, None]
    finally:
        db.close()


def test_a_book_of_a_newer_version_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / CONNECTIONS_FILE
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE opened (anything)")
    db.execute(f"PRAGMA user_version = {BOOK_VERSION + 1}")
    db.close()
    with pytest.raises(sqlite3.DatabaseError, match="newer version"):
        OpenedBook(path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (BOOK_VERSION + 1,)
    db.close()


def test_a_file_that_is_no_book_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "refunds"
    path.write_bytes(b"not a database, not JSON" * 100)
    with pytest.raises(sqlite3.DatabaseError):
        OpenedBook(path).record(None, CID1)
    assert path.read_bytes().startswith(b"not a database")  # (left as it was)


def test_the_sdk_collectors_first_json_file_becomes_a_book(tmp_path: Path) -> None:
    path = tmp_path / "refunds.json"
    path.write_text(json.dumps({CID1: 1234, CID2: None, "junk": 1, CID1.upper(): True}))
    with OpenedBook(path) as book:
        assert {e.connection_id: e.due_ms for e in book.entries()} == {CID1: 1234, CID2: None}
    assert path.read_bytes().startswith(b"SQLite format 3\x00")
