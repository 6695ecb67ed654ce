"""Graph files of format 1 are migrated when opened (docs/graph.md, "Format versions").

Format 1 held values in Python's canonical JSON and broke ties bytewise; format 2 holds
them in Gun's text and breaks ties in UTF-16 order. ``tests/golden/graph_format1.sql``
is a file written by format 1 itself (its script is in the dump): ties a peer sent
(``"\\uffff"`` then ``"😀"``, ``0.5`` then ``1e-06``), numbers Gun writes otherwise, an
array, an int no binary64 holds and a signed user space."""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path
from typing import Any

import pytest

from dtp.graph import Graph, GraphStorageError, SyncSession, namespace
from dtp.graph._persist import FORMAT, GraphStorage
from dtp.graph.values import gun_value, is_gun_value
from dtp.identity.keys import HostIdentity
from dtp.native.core import encode_ham_batch
from dtp.native.types import HamUpdate
from tests.support.paths import GOLDEN

HAMS = ["c", "python"]
OWNER = HostIdentity.from_private_bytes(bytes(range(32)), bytes(range(32, 64)))
PROFILE = f"~{OWNER.sui_address}/profile".encode()


def _golden(path: Path) -> Path:
    with sqlite3.connect(path) as db:
        db.executescript((GOLDEN / "graph_format1.sql").read_text())
    db.close()
    return path


def _format1(path: Path, rows: list[list[HamUpdate]], replica: bytes = b"r" * 16) -> Path:
    """A format 1 file whose log holds ``rows`` (each a batch of version 1)."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
        db.execute("CREATE TABLE log (seq INTEGER PRIMARY KEY AUTOINCREMENT, batch BLOB NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('replica_id', ?)", (replica,))
        db.execute("INSERT INTO meta VALUES ('clock', ?)", (struct.pack("<d", 10.0),))
        for row in rows:
            db.execute("INSERT INTO log (batch) VALUES (?)", (b"\x01" + encode_ham_batch(row)[1:],))
    db.close()
    return path


def _meta(path: Path, key: str) -> Any:
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    db.close()
    return None if row is None else row[0]


def _log_versions(path: Path) -> set[int]:
    with sqlite3.connect(path) as db:
        versions = {batch[0] for (batch,) in db.execute("SELECT batch FROM log")}
    db.close()
    return versions


def _sync(a: Graph, b: Graph) -> None:
    sa, sb = SyncSession(a, live=False), SyncSession(b, live=False)
    sa.start()
    sb.start()
    for _ in range(100):
        da, db = sa.data_to_send(), sb.data_to_send()
        if not da and not db:
            break
        sb.receive_data(da)
        sa.receive_data(db)
    assert sa.synced and sb.synced
    sa.close()
    sb.close()


@pytest.mark.parametrize("ham", HAMS)
def test_the_golden_format_1_file_is_migrated(tmp_path: Path, ham: str) -> None:
    path = _golden(tmp_path / "g.db")
    replica, clock = _meta(path, "replica_id"), _meta(path, "clock")
    g = Graph(path, ham=ham)
    stored = g.snapshot()

    def value(soul: bytes, field: bytes) -> bytes:
        return bytes(stored[soul, field][1])

    # ties decided anew: both updates were logged, and the UTF-16 order picks the other
    assert value(b"t", b"s") == '"\uffff"'.encode()
    assert value(b"t", b"n") == b"0.5"
    # numbers respelled in Gun's text: 1 and 1.0 are one value now
    assert value(b"t", b"k") == b"1"
    assert value(b"t", b"big") == b"10000000000000000"
    assert value(b"t", b"neg") == b"0"
    assert g.get("user/1") == {"name": "alice", "age": 30, "ratio": 0.25, "friend": {"#": "user/2"}}
    # what Gun cannot hold is kept as it was, and reads as before
    assert g.get_field("t", "arr") == [1, 2.0, {"a": 2, "b": 1}]
    assert g.get_field("t", "bigint") == 2**60 + 1
    assert not is_gun_value(value(b"t", b"arr")) and not is_gun_value(value(b"t", b"bigint"))
    assert gun_value(value(b"t", b"big")) == 1e16
    # the owner's signed fields keep their bytes, so their signatures still hold
    for field in (b"name", b"score", b"tiny"):
        state, stored_value = stored[PROFILE, field]
        assert namespace.check(HamUpdate(PROFILE, field, state, stored_value)) is None
    assert g.get(PROFILE.decode()) == {"name": "owner", "score": 2.0, "tiny": 1e-07}
    assert namespace.open_envelope(value(PROFILE, b"score")) == b"2.0"  # (format 1's text)
    report = g.migration
    assert report is not None
    assert (report.updates, report.respelled, report.signed_kept, report.not_gun_kept) == (
        17,
        4,  # 1e-06, 1.0, 1e+16, 0.0
        2,  # 2.0, 1e-07
        2,  # the array, the int
    )
    g.close()
    # written back: format 2, version 2 batches, same replica and clock
    assert _meta(path, "format") == str(FORMAT).encode()
    assert _log_versions(path) == {2}
    assert (_meta(path, "replica_id"), _meta(path, "clock")) == (replica, clock)
    with Graph(path, ham=ham) as again:
        assert again.migration is None
        assert again.snapshot() == stored
        fresh = Graph(ham=ham)  # a peer of format 2 takes it all, signatures included
        _sync(again, fresh)
        assert fresh.snapshot() == stored
        assert fresh.stats["refused"] == 0
        fresh.close()


@pytest.mark.parametrize("ham", HAMS)
def test_migrated_replicas_converge_on_the_new_winner(tmp_path: Path, ham: str) -> None:
    """Replica A logged both values of a tie; B's log was compacted and holds only the
    one format 1 kept (bytewise greater). Migrated, A holds the value the UTF-16 order
    prefers and B the only one it has; once they sync, both hold A's."""
    smile = HamUpdate(b"n", b"f", 5.0, '"\U0001f600"'.encode())
    top = HamUpdate(b"n", b"f", 5.0, '"\uffff"'.encode())
    a = Graph(_format1(tmp_path / "a.db", [[top], [smile]]), ham=ham)
    b = Graph(_format1(tmp_path / "b.db", [[smile]], replica=b"s" * 16), ham=ham)
    assert a.get_field("n", "f") == "\uffff"
    assert b.get_field("n", "f") == "\U0001f600"
    _sync(a, b)
    assert a.get_field("n", "f") == b.get_field("n", "f") == "\uffff"
    assert a.root_summary() == b.root_summary()
    a.close()
    b.close()


def test_a_migration_that_cannot_be_written_leaves_format_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log is rewritten in one transaction: if it fails, the file is left of format
    1, whole, the open fails, and the next open migrates it."""
    path = _format1(tmp_path / "g.db", [[HamUpdate(b"n", b"f", 1.0, b"1.0")]])

    def fail(self: GraphStorage, *args: object, **kwargs: object) -> None:
        raise GraphStorageError("disk full")

    with monkeypatch.context() as m:
        m.setattr(GraphStorage, "compact", fail)
        with pytest.raises(GraphStorageError, match="disk full"):
            Graph(path)
    assert _meta(path, "format") is None and _log_versions(path) == {1}
    with Graph(path) as g:
        assert g.snapshot()[b"n", b"f"] == (1.0, b"1")
    assert _meta(path, "format") == b"2"


def test_an_old_file_with_nothing_logged_is_migrated(tmp_path: Path) -> None:
    path = _format1(tmp_path / "g.db", [])
    with Graph(path) as g:
        assert g.migration is not None and g.migration.updates == 0
        g.put("n", {"f": 1.5})
    assert _meta(path, "format") == b"2"
    with Graph(path) as g:
        assert g.migration is None and g.get("n") == {"f": 1.5}


def test_a_new_file_is_of_format_2(tmp_path: Path) -> None:
    with Graph(tmp_path / "g.db") as g:
        assert g.migration is None
        g.put("n", {"f": 1.0})
    assert _meta(tmp_path / "g.db", "format") == b"2"
    assert _log_versions(tmp_path / "g.db") == {2}


@pytest.mark.parametrize(("stored", "match"), [(b"3", "later version"), (b"x", "corrupt")])
def test_a_file_of_a_later_or_unknown_format_is_refused(
    tmp_path: Path, stored: bytes, match: str
) -> None:
    path = tmp_path / "g.db"
    Graph(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'format'", (stored,))
    db.close()
    with pytest.raises(GraphStorageError, match=match):
        Graph(path)


def test_a_format_2_log_holding_a_version_1_batch_is_corrupt(tmp_path: Path) -> None:
    """Version 1 batches are refused by the merge: one in a file of format 2 is damage,
    reported as such, never merged under the other rules."""
    path = tmp_path / "g.db"
    Graph(path).close()
    with sqlite3.connect(path) as db:
        row = b"\x01" + encode_ham_batch([HamUpdate(b"n", b"f", 1.0, b"1")])[1:]
        db.execute("INSERT INTO log (batch) VALUES (?)", (row,))
    db.close()
    with pytest.raises(GraphStorageError, match="corrupt"):
        Graph(path)
