"""The SQLite tables a graph's queries read, kept up to date with its table, and a
query's evaluation over them, one statement per hop: docs/graph.md, "Indexes", says
the tables, when they are written (with the log's flush, in the same transaction),
rebuilt or marked stale.

``query_link`` holds every field whose value is a link, keyed by (soul, field), so that
a hop from a whole frontier is one join; ``query_value`` the values of the indexed
fields, keyed by (field, soul) for a filter and ordered by (field, kind, value) for a
range scan. Values are held as :func:`~dtp.graph._query.comparable` gives them, so that
SQLite's own comparison is Gun's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from dtp.errors import DTPError
from dtp.graph._batch import Entry, entries
from dtp.graph._persist import GraphStorage, GraphStorageError, table_layout
from dtp.graph._query import LINK, NUMBER, STRING, Each, Key, Out, Step, Where, comparable
from dtp.graph.values import JSON, link_soul

# (logs as dtp.graph._store, the module users know the graph by)
logger = logging.getLogger("dtp.graph._store")

TABLES = ("query_link", "query_value")
"""The tables of the query index in a graph's file."""
_SCHEMA = (
    "CREATE TABLE query_link (soul BLOB NOT NULL, field BLOB NOT NULL, "
    "target BLOB NOT NULL, PRIMARY KEY (soul, field)) WITHOUT ROWID",
    "CREATE TABLE query_value (field BLOB NOT NULL, soul BLOB NOT NULL, "
    "kind INTEGER NOT NULL, value, PRIMARY KEY (field, soul)) WITHOUT ROWID",
    "CREATE INDEX query_value_order ON query_value (field, kind, value)",
)
_LAYOUT = {
    "query_link": [("soul", "BLOB", 1, 1), ("field", "BLOB", 1, 2), ("target", "BLOB", 1, 0)],
    "query_value": [
        ("field", "BLOB", 1, 1),
        ("soul", "BLOB", 1, 2),
        ("kind", "INTEGER", 1, 0),
        ("value", "", 0, 0),
    ],
}
_META_FIELDS = "query_fields"
_META_SEQ = "query_seq"
_SET_SEQ = (
    "INSERT OR REPLACE INTO meta VALUES ('query_seq', "
    "CAST(CAST((SELECT COALESCE(MAX(seq), 0) FROM log) AS TEXT) AS BLOB))"
)
#: SQLite's page cache for a graph whose queries read its file (KiB): the default 2 MiB
#: made a hop over a million links read most pages from the OS again.
_CACHE_KIB = 32 << 10
#: A changed batch larger than this, and than a quarter of the table, marks the tables
#: stale (rebuilt at the next query) rather than being written row by row.
_STALE_FROM = 2048
#: The two frontier tables a query alternates between (temporary: per connection, in
#: memory).
_FRONTIERS = ("temp.query_frontier_a", "temp.query_frontier_b")
#: A link as Gun writes it, with a soul of printable ASCII and no escape: read without
#: decoding JSON (anything else that may be a link is decoded).
_PLAIN_LINK = re.compile(rb'\{"#":"([\x20\x21\x23-\x5b\x5d-\x7e]+)"\}')
#: A number's text that reads as the float of the same text (a fraction or an exponent,
#: or an integer of at most 15 digits: a longer one may be an int no binary64 holds),
#: and a string with no escape and no control character: read without decoding JSON.
_PLAIN_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]{0,14})(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_PLAIN_STRING = re.compile(rb'"[^"\\\x00-\x1f]*"')
_SQL_OPS = {"==": "IS", "!=": "IS NOT", "<": "<", "<=": "<=", ">": ">", ">=": ">="}

ValueOf = Callable[[bytes, bytes], JSON]
"""A stored value read as :meth:`Graph.get <dtp.graph._store.Graph.get>` reads it (the
envelope of a user-space field opened); raises DTPError for one it leaves out."""


def _utf8(name: bytes) -> bool:
    if name.isascii():
        return True
    try:
        name.decode()
    except UnicodeDecodeError:
        return False
    return True


class ReadSet:
    """The fields a query read, as a live query watches them: ``fields`` maps a field
    name to the souls whose field was read (None: every soul's, for a
    :meth:`~dtp.graph._store.Graph.find`); ``nodes`` holds the souls all of whose fields
    were read (by :meth:`~dtp.graph._query.Query.each`)."""

    def __init__(self) -> None:
        self.fields: dict[bytes, set[bytes] | None] = {}
        self.nodes: set[bytes] = set()

    def watch(self, souls: set[bytes] | None, field: bytes | None) -> None:
        if field is None:
            assert souls is not None
            self.nodes |= souls
        elif souls is None:
            self.fields[field] = None
        else:
            held = self.fields.setdefault(field, set())
            if held is not None:
                held |= souls

    def touched_by(self, changed: Iterable[Entry]) -> bool:
        """Whether a change of these fields may change the query's result."""
        fields, nodes = self.fields, self.nodes
        for soul, name, *_ in changed:
            if soul in nodes:
                return True
            if name in fields:
                souls = fields[name]
                if souls is None or soul in souls:
                    return True
        return False


@dataclass
class _Stage:
    """One statement of an evaluation: a hop (or none: the frontier itself), with the
    wheres SQLite answers from an index joined in, and the others run in Python."""

    hop: Out | Each | None = None
    indexed: list[Where] = field(default_factory=list)
    python: list[Where] = field(default_factory=list)

    def select(self, frontier: str) -> tuple[str, list[Any]]:
        params: list[Any] = []
        tables = [f"{frontier} AS c"]
        conditions = []
        target = "c.soul"
        if self.hop is not None:
            tables.append("query_link AS l")
            conditions.append("l.soul = c.soul")
            if isinstance(self.hop, Out):
                conditions.append("l.field = ?")
                params.append(self.hop.field.encode())
            target = "l.target"
        for i, where in enumerate(self.indexed):
            tables.append(f"query_value AS v{i}")
            conditions.append(
                f"v{i}.field = ? AND v{i}.soul = {target} AND v{i}.kind = ? "
                f"AND v{i}.value {_SQL_OPS[where.op]} ?"
            )
            params += [where.field.encode(), where.kind, where.key]
        # CROSS JOIN keeps SQLite's join order: the frontier outermost, each row of it
        # looked up in the tables' keys (never a scan of a whole table)
        sql = f"SELECT {target} FROM {' CROSS JOIN '.join(tables)}"
        if conditions:
            sql += " WHERE " + " AND ".join(conditions)
        return sql, params

    def reads(self) -> list[bytes | None]:
        """The fields of the frontier's nodes this stage reads (None: all of them); a
        stage of one step (a where after a hop reads the hop's targets, not these)."""
        assert self.hop is None or not (self.indexed or self.python)
        out: list[bytes | None] = []
        if isinstance(self.hop, Out):
            out.append(self.hop.field.encode())
        elif isinstance(self.hop, Each):
            out.append(None)
        out += [w.field.encode() for w in (*self.indexed, *self.python)]
        return out


def _plan(fields: set[bytes], steps: Sequence[Step], fuse: bool) -> list[_Stage]:
    """The statements that run ``steps``, given the indexed ``fields``: a hop and the
    wheres after it make one (``fuse``; else every step is its own, as a live query
    records what each read)."""
    stages: list[_Stage] = []
    for step in steps:
        if isinstance(step, Where):
            if not stages or not fuse:
                stages.append(_Stage())
            stage = stages[-1]
            (stage.indexed if step.field.encode() in fields else stage.python).append(step)
        else:
            stages.append(_Stage(hop=step))
    return stages


def explain(fields: set[bytes], start: tuple[str, ...] | Where, steps: Sequence[Step]) -> list[str]:
    """How a query runs, a line a statement (:meth:`Query.explain
    <dtp.graph._query.Query.explain>`), given the indexed ``fields``."""
    if isinstance(start, Where):
        lines = [f"find: SQL, index on {start.field!r} ({start})"]
    else:
        lines = [f"start: {len(set(start))} soul(s)"]
    for stage in _plan(fields, steps, fuse=True):
        if isinstance(stage.hop, Out):
            line = f"out {stage.hop.field!r}: SQL, one join of the frontier with query_link"
        elif isinstance(stage.hop, Each):
            line = "each: SQL, one join of the frontier with query_link"
        else:
            line = "filter the frontier: SQL" if stage.indexed else "filter the frontier"
        for where in stage.indexed:
            line += f"; {where}: index on {where.field!r}, in the same statement"
        for where in stage.python:
            line += f"; {where}: no index on {where.field!r}, in Python"
        lines.append(line)
    return lines


def _find_sql(where: Where) -> tuple[str, list[Any]]:
    return (
        "SELECT soul FROM query_value WHERE field = ? AND kind = ? "
        f"AND value {_SQL_OPS[where.op]} ?",
        [where.field.encode(), where.kind, where.key],
    )


class QueryIndex:
    """A graph's query tables (see the module docstring) on ``db``: the graph's file
    (``storage``) or an in-memory database (``storage`` None). Every method runs with
    the graph's lock held."""

    def __init__(
        self,
        db: sqlite3.Connection,
        storage: GraphStorage | None,
        value_of: ValueOf,
        fields: Iterable[str] = (),
    ) -> None:
        self.db = db
        self._storage = storage
        self._value_of = value_of
        self._fields: set[bytes] = {f.encode() for f in fields}
        self._pending: list[bytes] = []
        self._pending_count = 0
        self._written = (0, 0)  # batches and updates written by write(), not yet committed
        self.stale = False
        """The tables lag behind the table by more than ``_pending``: rebuild them."""
        self.rebuilds = 0
        db.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
        db.execute("PRAGMA temp_store=MEMORY")
        for name in _FRONTIERS:
            db.execute(f"CREATE TABLE IF NOT EXISTS {name} (soul BLOB PRIMARY KEY) WITHOUT ROWID")

    # -- opening, building ---------------------------------------------------------

    @classmethod
    def open(
        cls, storage: GraphStorage, table: Any, value_of: ValueOf, *, migrated: bool
    ) -> QueryIndex | None:
        """The query tables of a graph file just loaded into ``table``, rebuilt if they
        are missing or out of step with its log; None when the file has none."""
        raw = storage.get_meta(_META_FIELDS)
        if raw is None:
            return None
        try:
            names = json.loads(raw.decode())
            if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
                raise ValueError("not a list of field names")
        except ValueError as exc:
            raise GraphStorageError(
                f"graph database {str(storage.path)!r} is corrupt: its indexed fields "
                f"cannot be read ({exc})"
            ) from None
        index = cls(storage.connection, storage, value_of, names)
        why = "the file was migrated" if migrated else index._out_of_step()
        if why is not None:
            logger.info("graph: rebuilding the query tables of %s: %s", storage.path, why)
            index.rebuild(table)
        storage.tables = index
        return index

    @classmethod
    def create(
        cls,
        storage: GraphStorage | None,
        table: Any,
        value_of: ValueOf,
        fields: Iterable[str] = (),
    ) -> QueryIndex:
        """New query tables for a graph (its log flushed: it holds the whole table),
        indexing ``fields``."""
        if storage is None:
            db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            index = cls(db, None, value_of, fields)
        else:
            index = cls(storage.connection, storage, value_of, fields)
        index.rebuild(table)
        if storage is not None:
            storage.tables = index
        return index

    def _out_of_step(self) -> str | None:
        """Why the tables in the file do not reflect its log (None when they do)."""
        assert self._storage is not None
        db = self.db
        for name, layout in _LAYOUT.items():
            if table_layout(db, name) != layout:
                return f"table {name} is missing or laid out otherwise"
        if not db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'query_value_order'"
        ).fetchone():
            return "index query_value_order is missing"
        seq = self._storage.get_meta(_META_SEQ)
        (last,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM log").fetchone()
        if seq is None or seq != str(last).encode():
            return "they do not reflect the log's last rows"
        return None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        if self._storage is not None:
            with self._storage.transaction():
                yield
            return
        self.db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def rebuild(self, table: Any) -> None:
        """Drop and fill the tables from ``table`` (whose every change is in the log),
        in one transaction."""
        db = self.db
        with self._transaction():
            for name in TABLES:
                db.execute(f"DROP TABLE IF EXISTS {name}")
            for statement in _SCHEMA:
                db.execute(statement)
            for batch in table.export():
                self._insert(entries(batch), self._fields)
            self._write_meta()
        self._pending.clear()
        self._pending_count = 0
        self.stale = False
        self.rebuilds += 1

    def _write_meta(self) -> None:
        if self._storage is not None:
            names = sorted(f.decode() for f in self._fields)
            self.db.execute(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                (_META_FIELDS, json.dumps(names).encode()),
            )
            self.db.execute(_SET_SEQ)

    def _insert(self, fresh: Sequence[Entry], fields: set[bytes]) -> None:
        """Rows for fields the tables do not hold yet (a rebuild, a new index)."""
        links = []
        values = []
        for soul, name, _state, stored, _raw in fresh:
            if not (_utf8(soul) and _utf8(name)):
                continue
            target, found = self._read(soul, stored, name in fields)
            if target is not None:
                links.append((soul, name, target))
            if found is not None:
                values.append((name, soul, found[0], found[1]))
        if links:
            self.db.executemany("INSERT OR REPLACE INTO query_link VALUES (?, ?, ?)", links)
        if values:
            self.db.executemany("INSERT OR REPLACE INTO query_value VALUES (?, ?, ?, ?)", values)

    def _read(self, soul: bytes, stored: bytes, indexed: bool) -> tuple[bytes | None, Any]:
        """A stored value as the tables hold it: the soul it links to (or None), and
        when ``indexed`` its (kind, key) (or None: no row)."""
        if soul[:1] != b"~":
            # (fast paths for what Gun writes; they read as decode_value reads, which
            # test_query_random checks against get() on values of every kind)
            if b"#" not in stored:
                if not indexed:
                    return None, None  # (no link has no "#": most fields stop here)
                if _PLAIN_NUMBER.fullmatch(stored):
                    number = float(stored) + 0.0
                    if math.isfinite(number):
                        return None, (NUMBER, number)
                elif _PLAIN_STRING.fullmatch(stored):
                    with contextlib.suppress(UnicodeDecodeError):
                        return None, (STRING, stored[1:-1].decode().encode("utf-16-be"))
            else:
                plain = _PLAIN_LINK.fullmatch(stored)
                if plain is not None:
                    target = plain.group(1)
                    return target, ((LINK, target) if indexed else None)
        try:
            value = self._value_of(soul, stored)
        except DTPError:  # left out by get() too
            return None, None
        linked = link_soul(value)
        target = None if linked is None else linked.encode()
        return target, (comparable(value) if indexed else None)

    # -- keeping up with the table ----------------------------------------------------

    def changed(self, batch: bytes, count: int, table_size: int) -> None:
        """A batch the table just applied (``count`` updates): queued for the next
        write, or the tables marked stale when it is a large share of the table."""
        if self.stale:
            return
        if count > _STALE_FROM and (count + self._pending_count) * 4 > table_size:
            self.stale = True
            self._pending.clear()
            self._pending_count = 0
            return
        self._pending.append(batch)
        self._pending_count += count

    @property
    def pending(self) -> bool:
        """Changes are queued that the tables do not hold yet."""
        return bool(self._pending)

    def write(self, db: sqlite3.Connection) -> None:
        """Write the queued changes, inside the transaction that writes the log's rows
        (:class:`~dtp.graph._persist.GraphStorage` calls it); :meth:`committed` follows
        once that transaction is committed. Stale tables are left as they are, and so is
        ``query_seq``: a graph opened from this file rebuilds them."""
        if self.stale:
            return
        batches = len(self._pending)
        if batches:
            self._apply(self._pending)
        self._written = (batches, self._pending_count)
        if self._storage is not None:
            db.execute(_SET_SEQ)

    def committed(self) -> None:
        """The transaction of :meth:`write` is committed: its changes leave the queue."""
        batches, count = self._written
        del self._pending[:batches]
        self._pending_count -= count
        self._written = (0, 0)

    def _apply(self, batches: list[bytes]) -> None:
        latest: dict[tuple[bytes, bytes], bytes] = {}
        for batch in batches:
            for soul, name, _state, stored, _raw in entries(batch):
                latest[soul, name] = stored  # (a field changed twice: its last value)
        fields = self._fields
        link_rows = []
        unlinked = []
        value_rows = []
        unvalued = []
        for (soul, name), stored in latest.items():
            if not (_utf8(soul) and _utf8(name)):
                continue  # (never reachable, never asked for)
            indexed = name in fields
            target, found = self._read(soul, stored, indexed)
            if target is not None:
                link_rows.append((soul, name, target))
            else:
                unlinked.append((soul, name))
            if found is not None:
                value_rows.append((name, soul, found[0], found[1]))
            elif indexed:
                unvalued.append((name, soul))
        db = self.db
        if unlinked:
            db.executemany("DELETE FROM query_link WHERE soul = ? AND field = ?", unlinked)
        if link_rows:
            db.executemany("INSERT OR REPLACE INTO query_link VALUES (?, ?, ?)", link_rows)
        if unvalued:
            db.executemany("DELETE FROM query_value WHERE field = ? AND soul = ?", unvalued)
        if value_rows:
            db.executemany("INSERT OR REPLACE INTO query_value VALUES (?, ?, ?, ?)", value_rows)

    def catch_up(self, table: Any, flush: Callable[[], None] | None) -> None:
        """Bring the tables level with ``table`` before a query reads them: the graph's
        file is flushed (``flush``: its log and these tables are written together); an
        in-memory graph's queue is written here; stale tables are rebuilt."""
        if flush is not None:
            flush()
        elif self._pending and not self.stale:
            with self._transaction():
                self.write(self.db)
            self.committed()
        if self.stale:
            self.rebuild(table)

    # -- indexes --------------------------------------------------------------------

    @property
    def fields(self) -> list[str]:
        """The indexed fields, sorted."""
        return sorted(f.decode() for f in self._fields)

    def is_indexed(self, name: str) -> bool:
        return name.encode() in self._fields

    def add_field(self, name: str, table: Any) -> None:
        """Index ``name`` (the tables level with the table: see :meth:`catch_up`)."""
        key = name.encode()
        self._fields.add(key)
        try:
            with self._transaction():
                only = {key}
                for batch in table.export():
                    if key in batch:  # (a batch that names no such field has no row)
                        self._insert([e for e in entries(batch) if e[1] == key], only)
                self._write_meta()
        except BaseException:
            self._fields.discard(key)
            raise

    def drop_field(self, name: str) -> None:
        key = name.encode()
        self._fields.discard(key)
        try:
            with self._transaction():
                self.db.execute("DELETE FROM query_value WHERE field = ?", (key,))
                self._write_meta()
        except BaseException:
            self._fields.add(key)
            raise

    # -- evaluation -----------------------------------------------------------------

    def _plan(self, steps: Sequence[Step], fuse: bool) -> list[_Stage]:
        return _plan(self._fields, steps, fuse)

    def explain(self, start: tuple[str, ...] | Where, steps: Sequence[Step]) -> list[str]:
        return explain(self._fields, start, steps)

    def evaluate(
        self,
        start: tuple[str, ...] | Where,
        steps: Sequence[Step],
        table: Any,
        record: ReadSet | None = None,
    ) -> set[bytes]:
        """The souls the query reaches (its tables level with ``table``: see
        :meth:`catch_up`); ``record`` notes every field it read."""
        db = self.db
        current, following = _FRONTIERS
        db.execute(f"DELETE FROM {current}")
        if isinstance(start, Where):
            if record is not None:
                record.watch(None, start.field.encode())
            sql, params = _find_sql(start)
            db.execute(f"INSERT OR IGNORE INTO {current} {sql}", params)
        else:
            db.executemany(
                f"INSERT OR IGNORE INTO {current} VALUES (?)", [(s.encode(),) for s in start]
            )
        stages = self._plan(steps, fuse=record is None)
        if not stages:
            return {row[0] for row in db.execute(f"SELECT soul FROM {current}")}
        for i, stage in enumerate(stages):
            if record is not None:
                souls = {row[0] for row in db.execute(f"SELECT soul FROM {current}")}
                for name in stage.reads():
                    record.watch(souls, name)
            sql, params = stage.select(current)
            last = i == len(stages) - 1
            if not last and not stage.python:
                db.execute(f"DELETE FROM {following}")
                db.execute(f"INSERT OR IGNORE INTO {following} {sql}", params)
            else:
                found = {row[0] for row in db.execute(sql, params)}
                for where in stage.python:
                    found = {s for s in found if where.matches(self._field_key(table, s, where))}
                if last:
                    return found
                db.execute(f"DELETE FROM {following}")
                db.executemany(f"INSERT INTO {following} VALUES (?)", [(s,) for s in found])
            current, following = following, current
        raise AssertionError("unreachable: the last stage returns")

    def _field_key(self, table: Any, soul: bytes, where: Where) -> tuple[int, Key] | None:
        """A field of the table (not indexed) as a where compares it."""
        entry = table.get(soul, where.field.encode())
        if entry is None:
            return None
        found: tuple[int, Key] | None = self._read(soul, entry[1], True)[1]
        return found

    def close(self) -> None:
        """Close an in-memory graph's database (the file's is the storage's)."""
        if self._storage is None:
            with contextlib.suppress(sqlite3.Error):
                self.db.close()


__all__ = ["TABLES", "QueryIndex", "ReadSet", "explain"]
