"""LocalLedger's SQLite core (:class:`LocalStore`): opening the file, sharing it across
handles and forks, and closing it; the store is made of its parts: ``transactions``
(SQLite transactions, retried under the write lock), ``clock`` (clock and epoch),
``faucet`` (test money and its audit), ``execution`` (executing a transaction),
``call_arguments`` (the calls' shared argument checks) and ``stored`` (decoding stored
objects)."""

from __future__ import annotations

import itertools
import os
import sqlite3
import threading
import weakref
from pathlib import Path
from typing import Any, Final, cast

from dtp.errors import ChainError, InvalidArgument, InvalidObjectId
from dtp.ledger.interface import TypedReads
from dtp.ledger.local.call_arguments import U64_MAX as U64_MAX
from dtp.ledger.local.call_arguments import CallArguments
from dtp.ledger.local.call_arguments import u64 as u64
from dtp.ledger.local.checkpoints import _CHECKPOINTER, _WAL_AUTOCHECKPOINT_PAGES
from dtp.ledger.local.clock import CLOCK_MAX_MS as CLOCK_MAX_MS
from dtp.ledger.local.clock import _clock
from dtp.ledger.local.execution import TxExecution
from dtp.ledger.local.execution import TxResult as TxResult
from dtp.ledger.local.faucet import Faucet
from dtp.ledger.local.stored import SEQ_MAX as SEQ_MAX
from dtp.ledger.local.stored import SHAPE_ERRORS as SHAPE_ERRORS
from dtp.ledger.local.stored import SqlStore as SqlStore
from dtp.ledger.local.stored import build as build
from dtp.ledger.local.stored import decoded as decoded
from dtp.ledger.local.stored import not_found as not_found
from dtp.ledger.local.stored import stored_version as stored_version
from dtp.ledger.local.transactions import _META_DEFAULTS, _unavailable
from dtp.ledger.objects import normalize_id
from dtp.ledger.spec import default_local_path

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS objects (
    id TEXT PRIMARY KEY, type TEXT NOT NULL, owner TEXT NOT NULL,
    version INTEGER NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS balances (address TEXT PRIMARY KEY, amount TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY, type TEXT NOT NULL, sender TEXT NOT NULL,
    tx_digest TEXT NOT NULL, timestamp_ms INTEGER NOT NULL, fields TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS transactions (
    sender TEXT NOT NULL, nonce TEXT NOT NULL, digest TEXT NOT NULL,
    PRIMARY KEY (sender, nonce));
"""

#: The schema's version, in the file's user_version (0: a ledger from before it was kept).
_SCHEMA_VERSION: Final = 1
#: The tables of a ledger file.
_TABLES: Final = frozenset({"meta", "objects", "balances", "events", "transactions"})

#: How long close() waits for a background checkpoint of its file to end.
_CLOSE_WAITS_FOR_CHECKPOINT_S: Final = 5.0


def default_ledger_path() -> Path:
    """The file the ledger spec ``local`` names (:func:`dtp.ledger.spec.default_local_path`):
    the one ``$DTP_LEDGER`` names when it names a file, else
    ``$XDG_DATA_HOME/dtp/localnet.sqlite`` (``~/.local/share`` when XDG_DATA_HOME is
    unset or relative)."""
    return default_local_path()


def _nonces() -> itertools.count[int]:
    # from a random start: two instances signing for one sender (threads, processes
    # sharing the file, a parent and its forked child) never reuse a nonce
    return itertools.count(int.from_bytes(os.urandom(8)) >> 1)


class _ClosedConnection:
    """Held by a closed LocalLedger in place of its SQLite connection: any use raises a
    typed error naming the ledger (not sqlite3.ProgrammingError); closing again is fine."""

    def __init__(self, path: str) -> None:
        self._path = path

    def __getattr__(self, name: str) -> Any:
        raise _unavailable(f"The ledger {self._path} is closed: open a new LocalLedger.")

    def close(self) -> None:
        pass


class _ReopenInChild:
    """Held by a file LocalLedger in the child of fork() in place of the connection it
    inherited, which must not be used there (its locks and WAL index state belong to the
    parent): the first use opens the child's own connection to the same file."""

    def __init__(self, ledger: LocalStore) -> None:
        self._ledger = ledger

    def __getattr__(self, name: str) -> Any:
        ledger = self._ledger
        with ledger._lock:
            if ledger._db is cast(sqlite3.Connection, self):
                ledger._db = ledger._connect()
        return getattr(ledger._db, name)

    def close(self) -> None:
        pass  # nothing of the child's own is open yet


# Connections inherited across fork(), kept referenced in the child so that they are
# never closed there: closing one would have SQLite release POSIX locks and maybe
# checkpoint on the parent's behalf.
_INHERITED: list[sqlite3.Connection] = []
# Every live LocalLedger, for the fork handler below.
_LEDGERS: weakref.WeakSet[LocalStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    _CHECKPOINTER.forked()
    for ledger in list(_LEDGERS):
        ledger._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


class LocalStore(TxExecution, Faucet, CallArguments, TypedReads):
    """LocalLedger's SQLite core: the file and its connections, the clock's stored state,
    and executing a transaction as one SQLite transaction (the calls are in
    :class:`~dtp.ledger.local.ledger.LocalLedger` and its mixins)."""

    def __init__(self, path: str | os.PathLike[str] = ":memory:", *, clock_ms: int | None = None):
        if not isinstance(path, str | os.PathLike):
            # str(None) would be a file named "None" in the working directory
            raise TypeError(f"The ledger path must be str or os.PathLike, got {path!r}.")
        self.path = os.fspath(path)
        if not isinstance(self.path, str):
            raise TypeError(f"The ledger path must be text, got {self.path!r}.")
        if not self.path:
            # SQLite would open a private temporary file: a ledger nobody can share
            raise InvalidArgument("The ledger path is empty.")
        if "\0" in self.path:
            # no file can be named so: SQLite and mkdir raise a bare ValueError
            raise InvalidArgument(f"The ledger path {self.path!r} holds a NUL character.")
        if clock_ms is not None:
            _clock(clock_ms, "clock_ms")
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._commits = 0
        self._nonce_counter = _nonces()
        #: (clock_offset, ms): the latest wall-mode time this handle read (see _now)
        self._clock_served: tuple[str, int] = ("", 0)
        # the file's checkpoints are keyed by its real path, resolved once (not per
        # commit): two handles on one file share them whatever path each was given
        self._real_path = self.path if self.path == ":memory:" else os.path.realpath(self.path)
        self._db = self._connect()
        if self.path != ":memory:":
            # again now that the file and its directories exist (a symlink among them)
            self._real_path = os.path.realpath(self.path)
        _LEDGERS.add(self)
        if clock_ms is not None:
            self.set_clock(clock_ms, allow_backwards=True)

    def _forked(self) -> None:
        """In the child of fork() (see the class docs): the threads that may have held
        the locks are gone, and the parent goes on drawing the same nonces."""
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._nonce_counter = _nonces()
        if self.path != ":memory:" and isinstance(self._db, sqlite3.Connection):
            _INHERITED.append(self._db)
            self._db = cast(sqlite3.Connection, _ReopenInChild(self))

    def _connect(self) -> sqlite3.Connection:
        """:meth:`_open`, with failures as a typed error naming the file."""
        previous = getattr(self, "_db", None)
        try:
            return self._open()
        except (sqlite3.Error, OSError, ChainError) as error:
            if previous is not None:
                self._db = previous  # a child's reopening: the next use tries again
            exc = error.__cause__ if isinstance(error.__cause__, sqlite3.Error) else error
            if isinstance(exc, ChainError):
                raise  # typed and worded already (not a ledger, a newer schema)
            # a typed one-line error naming the file, not SQLite's bare "file is not a
            # database" (callers such as the CLI report ChainError as it is)
            reason = str(exc)
            if isinstance(exc, OSError) and exc.strerror:
                reason = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
            elif os.path.isdir(self.path):
                reason = "it is a directory"  # SQLite only says "unable to open database file"
            raise _unavailable(f"cannot open the ledger {self.path}: {reason}") from None

    def _open(self) -> sqlite3.Connection:
        """Connect to ``self.path`` and set the file up (WAL, schema)."""
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # no SQLite busy handler: _retry waits for other writers, with finer steps
        self._db = sqlite3.connect(
            self.path, timeout=0, isolation_level=None, check_same_thread=False
        )
        try:
            with self._lock:
                self._db.execute("PRAGMA busy_timeout = 0")
                if self.path != ":memory:":
                    # before anything is written: not even WAL mode for a foreign file
                    self._retry(self._check_schema)
                    self._retry(lambda: self._db.execute("PRAGMA journal_mode = WAL").fetchone())
                    self._db.execute("PRAGMA synchronous = NORMAL")
                    # checkpoints run in the background (see _Checkpointer); this is only
                    # the bound on the WAL should they not keep up
                    self._db.execute(f"PRAGMA wal_autocheckpoint = {_WAL_AUTOCHECKPOINT_PAGES}")
                self._write(self._init_schema)
        except BaseException:
            self._db.close()
            raise
        return self._db

    def _check_schema(self) -> None:
        """Refuse (LedgerUnavailable) a SQLite file that is not a ledger (its tables
        would have been added to someone else's database) or that a newer version of
        this module wrote (its rows could mean something else); an empty file is fine."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master")}
        if version > _SCHEMA_VERSION:
            raise _unavailable(
                f"cannot open the ledger {self.path}: it was written by a newer version "
                f"(schema {version}; this one knows up to {_SCHEMA_VERSION})"
            )
        # a ledger (one from before the schema version was kept too) holds all of these
        if tables and not tables >= _TABLES:
            raise _unavailable(
                f"cannot open the ledger {self.path}: it is a SQLite database but not a "
                f"ledger (tables: {', '.join(sorted(tables)) or 'none'})"
            )

    def _init_schema(self) -> None:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                self._db.execute(statement)
        if self._db.execute("PRAGMA user_version").fetchone()[0] != _SCHEMA_VERSION:
            self._db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        for key, value in _META_DEFAULTS.items():
            self._db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, value))
        # The file's own package ID, drawn once, when the file is made (or first opened by
        # a release that names one): a ledger file stands for one chain with the dtp
        # package published on it, and every receipt names that package, so that one
        # signed on another ledger file is refused here (docs/escrow.md §6).
        self._db.execute(
            "INSERT OR IGNORE INTO meta VALUES ('package', ?)", ("0x" + os.urandom(32).hex(),)
        )
        stored = self._db.execute("SELECT value FROM meta WHERE key = 'package'").fetchone()[0]
        try:
            self._package_id = normalize_id(str(stored), "package ID")
        except InvalidObjectId:
            raise _unavailable(
                f"cannot open the ledger {self.path}: its package ID {stored!r} is damaged"
            ) from None

    @property
    def package_id(self) -> str:
        """This ledger file's package ID, drawn at random when the file was made: it
        stands for the original ID of the dtp package published on its chain, and
        receipts name it (docs/escrow.md §6)."""
        return self._package_id

    def close(self) -> None:
        """Close the database handle (again: nothing happens).

        A background checkpoint of the file still running is waited for first (up to
        :data:`_CLOSE_WAITS_FOR_CHECKPOINT_S`): its connection would keep this close from
        being the file's last, which is the one that empties the WAL into the database
        and removes it, and its copying would go on writing the file after close returned.
        """
        with self._lock:
            # under the handle's lock: a transaction of another thread that was running
            # when close() was called commits first, and its commit may be the one that
            # starts a checkpoint, which must be waited for too
            if self.path != ":memory:" and not isinstance(self._db, _ClosedConnection):
                _CHECKPOINTER.wait(self._real_path, _CLOSE_WAITS_FOR_CHECKPOINT_S)
            self._db.close()
            self._db = cast(sqlite3.Connection, _ClosedConnection(self.path))
