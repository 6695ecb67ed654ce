"""LocalLedger's SQLite core, :class:`LocalStore`, one class read top to bottom: opening
the file, sharing it across handles and forks, and closing it; SQLite transactions,
retried while another writer holds the file, and the ledger's meta values; the clock and
epoch; building, signing and executing a transaction as one SQLite transaction; test
money (the faucet, transfers, the audit of all MIST); and the argument checks the calls
share. Stored rows are decoded by :mod:`dtp.ledger.local._stored`, the file is checkpointed
in the background by :mod:`dtp.ledger.local._checkpoints`, and the calls are
:class:`~dtp.ledger.local._ledger.LocalLedger`'s."""

from __future__ import annotations

import itertools
import os
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar, cast

from dtp.errors import (
    ChainError,
    DTPError,
    InsufficientFunds,
    InvalidArgument,
    InvalidObjectId,
    InvalidTransaction,
    LedgerUnavailable,
    WrongSigner,
)
from dtp.identity.keys import HostIdentity, InvalidSignature, verify_transaction
from dtp.ledger._move_call import U64_MAX, Id, MoveCall, u64
from dtp.ledger._objects import (
    Event,
    OpenedConnection,
    Settlement,
    Sla,
    as_bytes,
    check_signer,
    check_transfer_amount,
    is_whole,
    normalize_id,
)
from dtp.ledger._spec import default_local_path
from dtp.ledger._versions import PACKAGE_VERSION
from dtp.ledger.interface import TypedReads
from dtp.ledger.local import rules
from dtp.ledger.local._checkpoints import (
    _CHECKPOINT_EVERY,
    _CHECKPOINTER,
    _WAL_AUTOCHECKPOINT_PAGES,
)
from dtp.ledger.local._stored import SEQ_MAX, SHAPE_ERRORS, SqlStore, _balance
from dtp.ledger.local._tx import Address, Tx, TxValue, base58, decode_tx, encode_tx, tx_digest
from dtp.ledger.local.rules import _coordination as local_coordination
from dtp.ledger.local.rules import _deletion  # noqa: F401  (its rules register themselves)
from dtp.ledger.local.rules import _economics as local_economics
from dtp.ledger.local.rules import _versions as local_versions
from dtp.ledger.receipt import Receipt

#: How long a call waits for another writer (any process) to finish before failing.
_BUSY_TIMEOUT_S: Final = 30.0
# Waits between tries while another writer holds the file. SQLite's own busy handler
# sleeps 1, 2, 5, 10... ms, which is long next to the sub-millisecond transactions
# here: two processes taking turns (a client opening while its server settles) would
# wait a millisecond or more for a lock that is free after a fraction of that. So the
# tries come every _FIRST_BACKOFF_S for as long as one other transaction could hold the
# lock (_STEADY_BACKOFF_S), and only then further and further apart.
_FIRST_BACKOFF_S: Final = 0.0001
_STEADY_BACKOFF_S: Final = 0.002
_MAX_BACKOFF_S: Final = 0.005

# Upserts, not INSERT OR REPLACE: REPLACE deletes the row and inserts it again under a
# new rowid, dirtying the table's and the key index's pages; an in-place update dirties
# one page, so each transaction's commit writes fewer WAL frames.
_UPSERT_META: Final = (
    "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value"
)
_UPSERT_BALANCE: Final = (
    "INSERT INTO balances VALUES (?, ?) ON CONFLICT(address) DO UPDATE SET amount = excluded.amount"
)

#: The meta values (as _metas reads them) and a row (0, 0) if the transaction
#: (sender, nonce) executed already.
_META_AND_REPLAY: Final = (
    "SELECT key, value FROM meta "
    "UNION ALL SELECT 0, 0 FROM transactions WHERE sender = ? AND nonce = ?"
)

_META_DEFAULTS: Final = {
    "epoch": "0",
    "minted": "0",
    "clock_frozen": "0",
    "clock_ms": "0",
    "clock_offset": "0",
    "clock_floor": "0",
}

T = TypeVar("T")


def _unavailable(message: str) -> LedgerUnavailable:
    return LedgerUnavailable(message, module="ledger")


class _LedgerLocked(LedgerUnavailable, sqlite3.OperationalError):
    """Another writer held the file past the busy timeout: LedgerUnavailable like every
    failure of the file, and still the sqlite3.OperationalError ("database is locked")
    callers caught before it was typed."""


#: The latest time the clock can show: every event stores its time in a signed 64-bit
#: INTEGER column, so a clock past it (a u64 still, as Sui's is) would make every
#: transaction that emits an event fail in SQLite instead of running.
CLOCK_MAX_MS: Final = SEQ_MAX


def _wall_ms() -> int:
    """The wall clock in ms since the epoch: the one place the ledger reads it (a test
    steps it back here, as no test can step the machine's clock)."""
    return time.time_ns() // 1_000_000


def _clock(value: int, what: str) -> int:
    if not is_whole(value, 0, CLOCK_MAX_MS):
        raise InvalidArgument(
            f"{what} must be an integer from 0 to 2**63-1 ms (the ledger's latest time), "
            f"got {value!r}."
        )
    return value


# LocalLedger's own calls skip decoding the bytes they just encoded below this size (far
# below the decoder's limits: 64 arguments, 1 MiB a field)
_DIRECT_TX_MAX: Final = 4096
_DIRECT_ARGS_MAX: Final = 16
#: The exact types of the arguments that are not vectors (as _signed checks them).
_PLAIN_ARGS: Final = frozenset({Address, int, bytes})

# The payment models' rules (docs/escrow.md §13-16), the registry's (§21) and the
# deletions of what is over (§7, §12, §15) joined the call table as they loaded (rule);
# their objects join the types, and each versioned object's migration the call table.
rules.OBJECT_TYPES.update(local_economics.OBJECT_TYPES)
rules.OBJECT_TYPES.update(local_coordination.OBJECT_TYPES)
rules.FUNCTIONS.update(local_versions.FUNCTIONS)


def _tx_value(value: Any, depth: int) -> TxValue:
    """A :meth:`LocalLedger.build_tx` argument checked as the decoder reads it back: an
    Address of a whole ID (a short one would be encoded short and its bytes read as the
    next value's), a u64, bytes, or a vector (two levels at most)."""
    if isinstance(value, Address):
        return Address(normalize_id(value))
    if isinstance(value, int) and not isinstance(value, bool):
        return u64(value, "A transaction argument")
    if isinstance(value, bytes):
        return value
    if isinstance(value, list) and depth < 2:
        return [_tx_value(item, depth + 1) for item in value]
    raise InvalidArgument(
        f"A transaction argument must be an Address, a u64, bytes or a list of them (two "
        f"levels at most), got {value!r}."
    )


def _encodes_as_utf8(text: str) -> bool:
    """Whether ``text`` has a UTF-8 form (no lone surrogates)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _replayed(tx: Tx) -> InvalidTransaction:
    return InvalidTransaction(
        f"Sender {tx.sender} already executed a transaction with nonce {tx.nonce} "
        "(replayed transaction)."
    )


@dataclass(frozen=True)
class TxResult:
    """The effects of one executed transaction."""

    digest: str
    #: The Move function's return value (an ID, MIST amount, seq), or None.
    value: Any
    events: tuple[Event, ...]
    created: tuple[str, ...]
    #: The data of every object the transaction read or wrote, as it left them.
    objects: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: The epoch it ran in.
    epoch: int = 0


#: Escrow-like money holders of the payment models: Move type -> the balance field.
_ESCROW_LIKE: Final = {
    local_economics.OBJECT_TYPES["Subscription"]: "funds",
    local_economics.OBJECT_TYPES["SponsorLane"]: "funds",
    local_economics.OBJECT_TYPES["RetainedRecord"]: "deposit",
}

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
    """The file the ledger spec ``local`` names (:func:`dtp.ledger._spec.default_local_path`):
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


class LocalStore(TypedReads):
    """LocalLedger's SQLite core: the file and its connections, its transactions, the
    clock's stored state, executing a transaction as one SQLite transaction, and test
    money (the calls are in :class:`~dtp.ledger.local._ledger.LocalLedger` and its
    mixins)."""

    # -- the file: opened, shared across handles and forks, closed -------------------------

    def __init__(
        self,
        path: str | os.PathLike[str] = ":memory:",
        *,
        clock_ms: int | None = None,
        package_version: int = PACKAGE_VERSION,
    ):
        if not is_whole(package_version, 1, U64_MAX):
            raise InvalidArgument(
                f"package_version must be a package version from 1 to 2**64-1, got "
                f"{package_version!r:.40}."
            )
        #: The package version whose code this handle runs (docs/escrow.md "Versions"):
        #: two handles of one file with different ones stand for the package before and
        #: after an upgrade.
        self.package_version = package_version
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
        # threads waiting on _changed (_await_events), counted under _lock: a commit
        # with none wakes nobody (notify_all's four calls a commit, saved)
        self._change_waiters = 0
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
        self._change_waiters = 0
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

    # -- SQLite transactions, retried while another writer holds the file ------------------

    def _retry(self, fn: Callable[[], T]) -> T:
        """Run ``fn``, again while another connection holds the database (up to
        _BUSY_TIMEOUT_S); ``fn`` is a whole transaction, so a retry starts it afresh."""
        delay = _FIRST_BACKOFF_S
        deadline: float | None = None
        while True:
            try:
                return fn()
            except rules.DamagedData as exc:
                # typed already; worded here to name the file, as the other failures are
                if exc.ledger is not None:
                    raise
                raise self._damaged(exc) from exc
            except sqlite3.DatabaseError as exc:
                message = str(exc).lower()
                if "malformed json" in message:
                    # SQLite's json_extract (connection_view) met data that does not parse
                    damaged = rules.DamagedData(f"stored data does not parse ({exc})")
                    raise self._damaged(damaged) from exc
                if not isinstance(exc, sqlite3.OperationalError) or (
                    "locked" not in message and "busy" not in message
                ):
                    # the file itself failed (damaged, truncated, disk full, read-only):
                    # typed and naming it, as at open
                    raise _unavailable(f"the ledger {self.path} failed: {exc}") from exc
                now = time.monotonic()
                if deadline is None:
                    deadline = now + _BUSY_TIMEOUT_S
                elif now >= deadline:
                    raise _LedgerLocked(
                        f"the ledger {self.path} stayed locked by another writer for "
                        f"{_BUSY_TIMEOUT_S:g} s (database is locked)",
                        module="ledger",
                    ) from exc
                if getattr(exc, "sqlite_errorname", "") == "SQLITE_BUSY_SNAPSHOT":
                    continue  # another writer committed since our reads: again, at once
                time.sleep(delay * (0.5 + random.random()))
                if now > deadline - _BUSY_TIMEOUT_S + _STEADY_BACKOFF_S:
                    delay = min(delay * 2, _MAX_BACKOFF_S)

    def _damaged(self, exc: rules.DamagedData) -> rules.DamagedData:
        """``exc`` worded to name this ledger's file (still DamagedData, so callers can
        tell a damaged row from a file that cannot be opened or stays locked)."""
        named = rules.DamagedData(f"the ledger {self.path} failed: {exc}")
        named.ledger = self.path
        return named

    def _write(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction; roll back on any error."""
        return self._retry(lambda: self._transaction("BEGIN IMMEDIATE", fn))

    def _transaction(self, begin: str, fn: Callable[[], T]) -> T:
        """One attempt: ``fn`` between ``begin`` and COMMIT under the handle's lock,
        rolled back on any error (:meth:`_retry` decides whether to try again)."""
        with self._lock:
            self._db.execute(begin)
            try:
                result = fn()
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._committed()
            return result

    def _committed(self) -> None:
        """After a commit (lock held): wake waiters for events, and now and then ask for a
        checkpoint."""
        if self._change_waiters:
            self._changed.notify_all()
        self._commits += 1
        if self._commits % _CHECKPOINT_EVERY == 0 and self.path != ":memory:":
            _CHECKPOINTER.request(self._real_path)

    def _read(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in one read transaction (a consistent snapshot)."""

        def attempt() -> T:
            with self._lock:
                self._db.execute("BEGIN")
                try:
                    return fn()
                finally:
                    self._db.execute("COMMIT")

        return self._retry(attempt)

    def _read_one(self, fn: Callable[[], T]) -> T:
        """Run ``fn``, which reads with a single statement: that statement is a
        transaction of its own (autocommit), so no BEGIN and COMMIT around it."""
        # A first try in place, as _retry's own first would run it: a paid server reads
        # this way several times a connection (its admission's looks for the client's
        # open), and _retry costs two calls more. What that try raises that _retry would
        # handle (a busy file, a damaged one) sends the read through _retry from the
        # start -- its waits, tries and typed errors; a read, it may run again.
        try:
            with self._lock:
                return fn()
        except (rules.DamagedData, sqlite3.DatabaseError):
            pass

        def attempt() -> T:
            with self._lock:
                return fn()

        return self._retry(attempt)

    def _meta(self, key: str) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else _META_DEFAULTS[key]

    def _metas(self) -> dict[str, str]:
        """Every meta value (one statement; missing keys have their defaults)."""
        return {**_META_DEFAULTS, **dict(self._db.execute("SELECT key, value FROM meta"))}

    def _set_meta(self, key: str, value: int | str) -> None:
        self._db.execute(_UPSERT_META, (key, str(value)))

    # -- the clock and epoch, in the file's meta values (shared by every handle) -----------

    def _now(self, meta: dict[str, str] | None = None) -> int:
        """The clock, from ``meta`` (:meth:`_metas`) or read now (lock held).

        In wall mode it never reads below the floor (the time the last transaction
        saved) nor below the last time this handle served under the same offset: a read
        does not write, so without the latter a wall clock stepping back between two
        reads made the second earlier than the first. Another process's reads are not
        seen here; its transactions are, through the floor."""
        if meta is None:
            meta = self._metas()
        if meta["clock_frozen"] == "1":
            return rules.stored_int(meta["clock_ms"])
        offset = meta["clock_offset"]
        # (max and min written out: this runs on every transaction)
        now = _wall_ms() + rules.stored_int(offset)
        floor = rules.stored_int(meta["clock_floor"])
        if floor > now:
            now = floor
        served_offset, served = self._clock_served
        # a new offset is a clock set on purpose (unfreeze_clock, advance_clock), which
        # saved its own floor: what was served before it no longer holds the clock
        if served_offset == offset and served > now:
            now = served
        # a clock set or advanced close to the end runs into it in wall mode: it stops
        # there rather than pass what the event log can store
        if now > CLOCK_MAX_MS:
            now = CLOCK_MAX_MS
        self._clock_served = (offset, now)
        return now

    def clock_ms(self) -> int:
        """The ledger clock in ms (see :mod:`dtp.ledger.local` for wall and frozen modes)."""
        return self._read_one(self._now)

    def clock_frozen(self) -> bool:
        """Whether the clock is frozen."""
        return self._read_one(lambda: self._meta("clock_frozen") == "1")

    def set_clock(self, ms: int, *, allow_backwards: bool = False) -> None:
        """Freeze the clock at ``ms``. Going backwards raises InvalidArgument (a
        ValueError) unless ``allow_backwards`` (for setting up a fresh test ledger); so
        does a time past :data:`CLOCK_MAX_MS`."""
        _clock(ms, "the clock")

        def apply() -> None:
            if not allow_backwards and ms < self._now():
                raise InvalidArgument(f"The clock cannot go back from {self._now()} to {ms} ms.")
            self._set_meta("clock_frozen", 1)
            self._set_meta("clock_ms", ms)
            self._set_meta("clock_floor", ms)

        self._write(apply)

    def freeze_clock(self) -> int:
        """Freeze the clock at its current time; returns it."""

        def apply() -> int:
            now = self._now()
            self._set_meta("clock_frozen", 1)
            self._set_meta("clock_ms", now)
            return now

        return self._write(apply)

    def unfreeze_clock(self) -> None:
        """Let the clock follow wall time again, continuing from its current value."""

        def apply() -> None:
            now = self._now()
            self._set_meta("clock_offset", now - _wall_ms())
            self._set_meta("clock_floor", now)
            self._set_meta("clock_frozen", 0)

        self._write(apply)

    def advance_clock(self, ms: int) -> int:
        """Move the clock forward by ``ms`` (in either mode); returns the new time. A step
        past :data:`CLOCK_MAX_MS` raises InvalidArgument and moves nothing."""
        u64(ms, "the clock step")

        def apply() -> int:
            meta = self._metas()
            now = self._now(meta) + ms
            if now > CLOCK_MAX_MS:
                raise InvalidArgument(
                    f"The clock cannot advance {ms} ms from {now - ms}: that is past "
                    f"2**63-1 ms, the ledger's latest time."
                )
            if meta["clock_frozen"] == "1":
                self._set_meta("clock_ms", now)
            else:
                # from the clock as it reads, not by adding to the offset: when the wall
                # clock has stepped back, the floor holds the clock, and an offset moved
                # by ms alone would leave it under the floor (no step at all)
                self._set_meta("clock_offset", now - _wall_ms())
            self._set_meta("clock_floor", now)
            return now

        return self._write(apply)

    def epoch(self) -> int:
        """The current epoch."""
        return self._read_one(lambda: rules.stored_int(self._meta("epoch")))

    def advance_epoch(self) -> int:
        """Start the next epoch; returns it."""

        def apply() -> int:
            epoch = rules.stored_int(self._meta("epoch")) + 1
            self._set_meta("epoch", epoch)
            return epoch

        return self._write(apply)

    # -- transactions built, signed and executed (one SQLite transaction each) -------------

    def build_tx(self, sender: str, module: str, function: str, args: Sequence[TxValue]) -> bytes:
        """Transaction bytes for ``module::function(args)`` from ``sender`` with a fresh nonce."""
        for what, name in (("module", module), ("function", function)):
            if not isinstance(name, str):
                raise InvalidArgument(f"The {what} must be a str, got {name!r}.")
            if not name.isascii() and not _encodes_as_utf8(name):
                # a lone surrogate has no UTF-8 form: encode_tx would raise a bare
                # UnicodeEncodeError where every other bad argument is InvalidArgument
                raise InvalidArgument(f"The {what} name {name!r:.60} is not valid Unicode text.")
        if isinstance(args, str | bytes) or not isinstance(args, Sequence):
            raise InvalidArgument(f"args must be a sequence of values, got {args!r}.")
        nonce = next(self._nonce_counter) & U64_MAX
        values = tuple(_tx_value(arg, 0) for arg in args)
        tx = Tx(normalize_id(sender, "address"), nonce, module, function, values)
        return encode_tx(tx)

    def execute(self, tx_bytes: bytes, signature: bytes) -> TxResult:
        """Verify ``signature`` (a serialized Sui signature) over ``tx_bytes`` against the
        transaction's sender, then run it atomically. Raises :class:`WrongSigner` for a bad
        or foreign signature, :class:`InvalidTransaction` for malformed bytes or a reused
        nonce, and the rule's ChainError if the Move call aborts."""
        if not isinstance(tx_bytes, bytes | bytearray | memoryview):
            # bytes(5) would be five zero bytes, bytes(None) a TypeError
            raise InvalidTransaction(f"Transaction bytes must be bytes, got {tx_bytes!r:.60}.")
        if not isinstance(signature, bytes | bytearray | memoryview):
            raise WrongSigner(f"The transaction signature must be bytes, got {signature!r:.60}.")
        tx_bytes, signature = bytes(tx_bytes), bytes(signature)
        return self._execute(decode_tx(tx_bytes), tx_bytes, signature)

    def _execute(self, tx: Tx, tx_bytes: bytes, signature: bytes | None) -> TxResult:
        """:meth:`execute` of ``tx_bytes``, already decoded as ``tx``; a ``signature`` of
        None is :meth:`_signed`'s for a sender whose own key made the transaction here."""
        if signature is not None:
            try:
                signer = verify_transaction(tx_bytes, signature)
            except InvalidSignature as exc:
                raise WrongSigner(
                    f"The transaction signature is invalid ({exc}); sender {tx.sender}."
                ) from None
            if signer != tx.sender:
                raise WrongSigner(
                    f"The transaction is signed by {signer}, but its sender is {tx.sender}."
                )
        args = rules.check_args(tx.module, tx.function, tx.args)
        handler = rules.entry(tx.module, tx.function)
        digest = tx_digest(tx_bytes)
        return self._apply(tx, digest, handler, args)

    def _apply(
        self,
        tx: Tx,
        digest: bytes,
        handler: Callable[..., Any],
        args: list[Any],
        package: str | None = None,
    ) -> TxResult:
        """Run a verified transaction: its reads and its rule first, in a read transaction
        (another writer, say another process, is not kept waiting meanwhile), then its
        writes all together. The first write takes the write lock; when another writer
        holds it, or committed since this one's reads (SQLite's BUSY_SNAPSHOT), it fails
        as "locked" and :meth:`_retry` runs the whole transaction again, reads included:
        what it writes always follows from what the ledger holds when it commits."""
        return self._retry(
            lambda: self._transaction(
                "BEGIN", lambda: self._apply_in(tx, digest, handler, args, package)
            )
        )

    def _apply_in(
        self,
        tx: Tx,
        digest: bytes,
        handler: Callable[..., Any],
        args: list[Any],
        package: str | None,
    ) -> TxResult:
        db = self._db
        digest_text = base58(digest)
        # (sender, nonce) executes once: a replay fails here, before the rule runs; the
        # row itself is written with the effects (the primary key guards it too). Read
        # with the meta values, in one statement: a row of an executed transaction is
        # the key 0, which no meta row can have (a number stored in the TEXT key column
        # becomes text).
        meta = {**_META_DEFAULTS, **dict(db.execute(_META_AND_REPLAY, (tx.sender, str(tx.nonce))))}
        if 0 in meta:
            raise _replayed(tx)
        store = SqlStore(db)
        now = self._now(meta)
        epoch = rules.stored_int(meta["epoch"])
        x = rules.Exec(
            store, tx.sender, digest, now, epoch, package or self._package_id, self.package_version
        )
        try:
            value = handler(x, *args)
        except SHAPE_ERRORS as exc:
            # the arguments were checked (check_args) and the rules raise typed errors:
            # a bare one comes from stored data that is not what the ledger writes (a
            # field missing, text for a number)
            stored = [obj.id for obj in x.objects.values() if obj.before is not None]
            if isinstance(exc, DTPError) or not stored:
                raise
            what = f"object {stored[0]}" if len(stored) == 1 else f"objects {', '.join(stored)}"
            raise rules.wrong_shape(what, exc) from exc
        # The effects, computed from what was read ...
        created: list[str] = []
        deleted: list[tuple[str]] = []
        inserted: list[tuple[str, str, str, str]] = []
        updated: list[tuple[str, str]] = []
        for obj in x.objects.values():
            if obj.deleted:
                deleted.append((obj.id,))
                continue
            data = rules.to_json(obj.data)
            if obj.before is None:
                created.append(obj.id)
                inserted.append((obj.id, obj.type, obj.owner, data))
            elif data != obj.before:
                updated.append((data, obj.id))
        balances = []
        if x.credits:
            held = store.balances(list(x.credits))
            for address, delta in x.credits.items():
                new = held.get(address, 0) + delta
                assert new >= 0, "take_coin guards every withdrawal"
                balances.append((address, str(new)))
        event_values: list[Any] = []
        for type_, fields in x.events:
            event_values += (type_, tx.sender, digest_text, now, rules.to_json(fields))
        # ... then written, one statement for each kind of change
        try:
            db.execute(
                "INSERT INTO transactions VALUES (?, ?, ?)", (tx.sender, str(tx.nonce), digest_text)
            )
        except sqlite3.IntegrityError:
            raise _replayed(tx) from None
        if now != rules.stored_int(meta["clock_floor"]):
            self._set_meta("clock_floor", now)
        if deleted:
            db.executemany("DELETE FROM objects WHERE id = ?", deleted)
        if inserted:
            db.executemany("INSERT INTO objects VALUES (?, ?, ?, 1, ?)", inserted)
        if updated:
            db.executemany(
                "UPDATE objects SET data = ?, version = version + 1 WHERE id = ?", updated
            )
        if balances:
            db.executemany(_UPSERT_BALANCE, balances)
        events: list[Event] = []
        if x.events:
            # one INSERT of all rows: they get consecutive sequence numbers, the last one
            # reported as lastrowid
            rows = ",".join(["(?, ?, ?, ?, ?)"] * len(x.events))
            cursor = db.execute(
                "INSERT INTO events (type, sender, tx_digest, timestamp_ms, fields) VALUES " + rows,
                event_values,
            )
            first = int(cursor.lastrowid or 0) - len(x.events) + 1
            events = [
                Event(str(seq), type_, fields, tx.sender, digest_text, now)
                for seq, (type_, fields) in enumerate(x.events, first)
            ]
        touched = {obj.id: obj.data for obj in x.objects.values() if not obj.deleted}
        return TxResult(digest_text, value, tuple(events), tuple(created), touched, epoch)

    def apply_verified(
        self,
        sender: str,
        digest: bytes,
        run: Callable[[rules.Exec], Any],
        *,
        package: str | None = None,
    ) -> TxResult:
        """Run ``run(x)`` -- the rule calls of one transaction that the caller has already
        verified (signature, inputs, gas) -- atomically as ``sender``'s transaction
        ``digest`` (32 bytes), at the ledger's clock and epoch; ``run`` calls handlers of
        :data:`~dtp.ledger.local.rules.FUNCTIONS` on ``x`` and returns the call's value.

        For a node stand-in that checks Sui transactions as a node does and executes
        their Move calls with these rules (tests/sui_node). As :meth:`execute`: a
        ChainError from ``run`` changes nothing; a digest executes at most once
        (InvalidTransaction). ``package``: the package ID the rules run as (the one
        receipts name, docs/escrow.md §6) when not this file's own -- the node's."""
        if not isinstance(digest, bytes) or len(digest) != 32:
            raise InvalidTransaction(f"A transaction digest is 32 bytes, got {digest!r:.80}.")
        # the digest is the replay key (the transactions table's nonce column)
        tx = Tx(normalize_id(sender, "address"), int.from_bytes(digest, "big"), "", "", ())
        if package is not None:
            package = normalize_id(package, "package ID")
        return self._apply(tx, digest, run, [], package)

    def _call(self, signer: HostIdentity, module: str, function: str, *args: TxValue) -> TxResult:
        return self._execute(*self._signed(signer, module, function, *args))

    def _move(self, signer: HostIdentity, call: MoveCall) -> Any:
        """Run ``call`` on the rows; returns the value the Move function returns (an
        OpenedConnection for an open, a Settlement for a settlement; for a function
        that returns none, the event field ``call.result`` names)."""
        result = self._call(signer, call.module, call.function, *self._move_args(call))
        if call.result == "ConnectionOpened":
            return self._opened(result)
        if call.result == "ConnectionSettled":
            # (a Receipt by its exact type first: a settlement's is, and this is on its path)
            receipt = Receipt in map(type, call.args) or any(
                isinstance(a, Receipt) for a in call.args
            )
            return self._settlement(result, int(result.value) if receipt else 0)
        if result.value is None and call.result:
            # a function that returns nothing: its result is its event's, as on Sui
            event, name = call.result.split(".")
            (fields,) = [e.fields for e in result.events if e.name == event]
            return fields[name]
        return result.value

    def _move_args(self, call: MoveCall) -> list[TxValue]:
        """``call``'s arguments as the rules take them: IDs as addresses, an Sla and a
        Receipt as their fields (the values Sui's ``host::new_sla`` and claim take)."""
        args: list[TxValue] = []
        for a in call.args:
            # (the common argument by its exact type first: no isinstance call)
            if type(a) is Id or isinstance(a, Id):
                args.append(self._id(a.value))
            elif isinstance(a, Sla):
                args += (a.price_per_kib, a.price_per_request, a.min_deposit)
                args.append(a.half_close_timeout_ms)
            elif isinstance(a, Receipt):
                args += (a.total_bytes, a.total_requests, a.total_amount, a.nonce)
                args.append(as_bytes(a.signature, "signature"))
            else:
                args.append(a)
        return args

    def _signed(
        self, signer: HostIdentity, module: str, function: str, *args: TxValue
    ) -> tuple[Tx, bytes, bytes | None]:
        """The transaction, its bytes and ``signer``'s signature, ready for _execute (None
        for the signature of a plain :class:`HostIdentity`: see below)."""
        # The bytes are encoded from this Tx here: decoding them again would give it back
        # (everything else execute() does still runs).
        # Vectors and oversized transactions go through the decoder all the same: it alone
        # enforces the nesting and size limits.
        check_signer(signer)
        nonce = next(self._nonce_counter) & U64_MAX
        tx = Tx(normalize_id(signer.sui_address, "address"), nonce, module, function, args)
        tx_bytes = encode_tx(tx)
        direct = len(tx_bytes) <= _DIRECT_TX_MAX and len(args) <= _DIRECT_ARGS_MAX
        # (no vector when every argument is of a plain type: one call for them all)
        if direct and not _PLAIN_ARGS.issuperset(map(type, args)):
            for arg in args:  # (a loop, not any() over a generator: a call an argument)
                if isinstance(arg, list):
                    direct = False
                    break
        if not direct:
            tx = decode_tx(tx_bytes)
        if type(signer) is HostIdentity:
            # The sender's own key is in hand and the sender is its address: a signature
            # would be made only for _execute to find it made here (keys' memo of own
            # signatures) -- an Ed25519 signing and two hashes of the bytes, some 30 us
            # of every call, on the critical path of connecting by host ID (the open) and
            # of a paid server's close (the settlement). A subclass may sign otherwise
            # (another key, a changed bit): its signatures are made and checked.
            return tx, tx_bytes, None
        return tx, tx_bytes, signer.sign_transaction(tx_bytes)

    @staticmethod
    def _settlement(result: TxResult, paid: int) -> Settlement:
        return Settlement.from_event(_first_event(result, "ConnectionSettled"), paid)

    @staticmethod
    def _opened(result: TxResult) -> OpenedConnection:
        return OpenedConnection.from_event(_first_event(result, "ConnectionOpened").fields)

    # -- test money: the faucet, transfers, the audit of all MIST --------------------------

    def faucet(self, address: str, amount: int) -> int:
        """Mint ``amount`` test MIST to ``address``; returns its new balance. The total ever
        minted may not exceed 2**64-1 (so no u64 sum of MIST can overflow)."""
        address = normalize_id(address, "address")
        u64(amount, "the faucet amount")

        def apply() -> int:
            minted = rules.stored_int(self._meta("minted")) + amount
            if minted > U64_MAX:
                raise InvalidArgument(
                    f"The faucet cannot mint {amount} MIST: the total would pass 2**64-1."
                )
            self._set_meta("minted", minted)
            new = SqlStore(self._db).balance(address) + amount
            self._db.execute(_UPSERT_BALANCE, (address, str(new)))
            return new

        return self._write(apply)

    def transfer(self, signer: HostIdentity, recipient: str, amount: int) -> None:
        """Move ``amount`` MIST from the signer's balance to ``recipient``'s
        (:meth:`dtp.ledger.interface.Ledger.transfer`): what a Sui transfer of SUI does,
        without gas (LocalLedger charges none) and without an event (Sui's has none).
        The total minted stays as it was: the audit still balances."""
        check_signer(signer)
        sender = normalize_id(signer.sui_address, "address")
        to = normalize_id(recipient, "recipient address")
        check_transfer_amount(amount)

        def apply() -> None:
            store = SqlStore(self._db)
            held = store.balance(sender)
            if amount > held:
                # in Sui's words for a coin split beyond its balance (the rules' take_coin)
                raise InsufficientFunds(
                    f"Address {sender} has {held} MIST, {amount} are needed.",
                    name="InsufficientCoinBalance",
                    module="sui",
                )
            if to != sender:
                self._db.execute(_UPSERT_BALANCE, (sender, str(held - amount)))
                self._db.execute(_UPSERT_BALANCE, (to, str(store.balance(to) + amount)))

        self._write(apply)

    def minted(self) -> int:
        """Total MIST ever minted by the faucet."""
        return self._read_one(lambda: rules.stored_int(self._meta("minted")))

    def audit(self) -> dict[str, int]:
        """Where all MIST is: ``minted``, ``balances``, ``escrows`` (connection escrows,
        prepaid response fees, unearned subscription money, sponsor lanes and retained
        records' storage deposits), ``broadcasts`` (pools plus unclaimed earnings, and ticket
        money of events not yet on air). Conservation holds iff minted == the other three."""

        def read() -> dict[str, int]:
            rows = self._db.execute("SELECT address, amount FROM balances")
            balances = sum(_balance(address, amount) for address, amount in rows)
            escrows = broadcasts = 0
            for object_id, type_, data in self._db.execute("SELECT id, type, data FROM objects"):
                obj = rules.from_json(data)
                try:
                    if type_ == rules.OBJECT_TYPES["Escrow"]:
                        escrows += obj["funds"]
                    elif type_ == rules.OBJECT_TYPES["Broadcast"]:
                        broadcasts += obj["pool"] + obj["earned"]
                    elif type_ == rules.OBJECT_TYPES["ResponseEscrow"]:
                        escrows += obj["funds"]  # prepaid response fees count as escrow
                    elif type_ in _ESCROW_LIKE:
                        escrows += obj[_ESCROW_LIKE[type_]]
                    elif type_ == rules.OBJECT_TYPES["TicketSale"]:
                        broadcasts += obj["funds"]  # ticket money waits for an event to air
                except SHAPE_ERRORS as exc:
                    raise rules.wrong_shape(f"object {object_id}", exc) from exc
            return {
                "minted": rules.stored_int(self._meta("minted")),
                "balances": balances,
                "escrows": escrows,
                "broadcasts": broadcasts,
            }

        return self._read(read)

    def dump(self) -> dict[str, Any]:
        """Every row of every table (for tests comparing states)."""

        def read() -> dict[str, Any]:
            return {
                table: sorted(self._db.execute(f"SELECT * FROM {table}").fetchall())
                for table in ("meta", "objects", "balances", "events", "transactions")
            }

        return self._read(read)

    # -- the argument checks the calls share -----------------------------------------------

    @staticmethod
    def _id(value: str, what: str = "object ID") -> Address:
        return Address(normalize_id(value, what))


def _first_event(result: TxResult, name: str) -> Event:
    """The first of ``result``'s events named ``name`` (:attr:`Event.name`, the type's
    last part), read without the property: one settles or opens every paid connection."""
    suffix = "::" + name
    cut = -len(suffix)  # (a slice compared, not endswith: no call an event)
    for event in result.events:
        kind = event.type
        if kind[cut:] == suffix or kind == name:
            return event
    raise StopIteration  # (as next() over none did)
