"""The stand-in node's state: a LocalLedger file (the dtp objects' data, balances, events,
clock and epoch, changed only by LocalLedger's own rule code) and beside it a SQLite file
of what a Sui node shows on top: every object's version, digest, owner and storage rebate,
the ``Coin<SUI>`` objects that make up each address's balance, the ``Table`` entries as
dynamic-field objects, executed transactions, checkpoints and the event index.

Only the node's execution writes either file (one thread at a time, under ``lock``); the
LocalLedger transaction commits first, then the node's record of it.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from dtp.ledger._objects import normalize_id
from dtp.ledger._versions import PACKAGE_VERSION
from dtp.ledger.local import LocalLedger
from dtp.ledger.local._calls_versions import admin_cap_digest
from dtp.ledger.local._tx import base58
from dtp.testing.sui_node._objects import (
    CLOCK_ID,
    CLOCK_TYPE,
    COIN_TYPE,
    clock_contents,
    coin_contents,
    full_address,
    move_type,
    object_digest,
)

__all__ = ["DAY_MS", "NodeState", "ObjectRow", "Position"]

DAY_MS: Final = 24 * 3600 * 1000

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS objects (
    id TEXT PRIMARY KEY, type TEXT NOT NULL, owner_kind TEXT NOT NULL, owner TEXT NOT NULL,
    initial_shared_version INTEGER, version INTEGER NOT NULL, digest TEXT NOT NULL,
    storage_rebate INTEGER NOT NULL, previous_tx TEXT NOT NULL, balance INTEGER,
    contents BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS objects_owner ON objects (owner_kind, owner, id);
CREATE TABLE IF NOT EXISTS transactions (
    digest TEXT PRIMARY KEY, checkpoint INTEGER NOT NULL, sender TEXT NOT NULL,
    executed BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY, digest TEXT NOT NULL, timestamp_ms INTEGER NOT NULL,
    epoch INTEGER NOT NULL, transactions INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    checkpoint INTEGER NOT NULL, tx_index INTEGER NOT NULL, event_index INTEGER NOT NULL,
    tx_digest TEXT NOT NULL, sender TEXT NOT NULL, type TEXT NOT NULL, module TEXT NOT NULL,
    contents BLOB NOT NULL, PRIMARY KEY (checkpoint, tx_index, event_index));
CREATE TABLE IF NOT EXISTS gas (address TEXT PRIMARY KEY, paid INTEGER NOT NULL);
"""


def _object_row(row: Any) -> ObjectRow:
    """An ``objects`` row (its columns in the table's order) as an :class:`ObjectRow`."""
    ident, type_, owner_kind, owner, shared_since, version, digest, rebate, tx, balance = row[:10]
    return ObjectRow(
        ident,
        type_,
        owner_kind,
        owner,
        shared_since,
        version,
        digest,
        rebate,
        tx,
        balance,
        bytes(row[10]),
    )


@dataclass(frozen=True)
class ObjectRow:
    """One live object as the node shows it."""

    id: str
    type: str
    #: ``"address"``, ``"shared"``, ``"object"`` (a dynamic field: owned by its table) or
    #: ``"immutable"``.
    owner_kind: str
    #: The owning address or table UID (empty for shared and immutable objects).
    owner: str
    initial_shared_version: int | None
    version: int
    digest: str
    storage_rebate: int
    previous_tx: str
    #: MIST of a ``Coin<SUI>`` (None for other objects).
    balance: int | None
    contents: bytes

    @classmethod
    def make(
        cls,
        object_id: str,
        type_: str,
        owner_kind: str,
        owner: str,
        isv: int | None,
        version: int,
        contents: bytes,
        storage_rebate: int,
        previous_tx: str,
        balance: int | None = None,
    ) -> ObjectRow:
        """A row with its digest computed from the rest."""
        owner_text = f"shared:{isv}" if owner_kind == "shared" else f"{owner_kind}:{owner}"
        digest = object_digest(type_, owner_text, version, contents)
        return cls(
            object_id,
            type_,
            owner_kind,
            owner,
            isv,
            version,
            digest,
            storage_rebate,
            previous_tx,
            balance,
            contents,
        )


#: A ledger position of an event: (checkpoint, transaction index, event index).
Position = tuple[int, int, int]


class NodeState:
    """See the module docs. ``directory`` None keeps both files in memory."""

    def __init__(
        self,
        directory: str | Path | None,
        *,
        package: str,
        clock_ms: int | None = None,
        epoch_ms: int = DAY_MS,
        gas_price: int = 1000,
        package_version: int = PACKAGE_VERSION,
    ) -> None:
        self.lock = threading.RLock()
        self.package = full_address(normalize_id(package, "package ID"))
        self.epoch_ms = epoch_ms
        self.gas_price = gas_price
        fresh = True
        if directory is None:
            ledger_path, node_path = ":memory:", ":memory:"
        else:
            Path(directory).mkdir(parents=True, exist_ok=True)
            ledger_path = str(Path(directory) / "ledger.sqlite")
            node_path = str(Path(directory) / "node.sqlite")
            fresh = not Path(node_path).exists()
        self.db = sqlite3.connect(node_path, isolation_level=None, check_same_thread=False)
        self.db.executescript(_SCHEMA)
        if not fresh:
            stored = self.meta("package")
            if stored != self.package:
                raise ValueError(
                    f"The state in {directory} belongs to package {stored}, not {self.package}."
                )
            clock_ms = None  # the clock is part of the state kept
        # (the package version whose code the node runs: a state kept across a restart
        # with a higher one stands for the package upgraded; docs/escrow.md "Versions")
        self.ledger = LocalLedger(ledger_path, clock_ms=clock_ms, package_version=package_version)
        if fresh:
            now = self.ledger.clock_ms()
            with self.write():
                self.set_meta("package", self.package)
                self.set_meta("epoch_start_ms", now)
                self.set_meta("faucet_coins", 0)
                self._checkpoint_row(0, now, 0)
        self.check()

    def close(self) -> None:
        with self.lock:
            self.ledger.close()
            self.db.close()

    # -- SQLite --------------------------------------------------------------------------

    class _Write:
        def __init__(self, state: NodeState) -> None:
            self.state = state

        def __enter__(self) -> None:
            self.state.lock.acquire()
            self.state.db.execute("BEGIN IMMEDIATE")

        def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
            try:
                self.state.db.execute("COMMIT" if kind is None else "ROLLBACK")
            finally:
                self.state.lock.release()

    def write(self) -> NodeState._Write:
        """``with state.write():`` one node transaction under the lock."""
        return NodeState._Write(self)

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """The rows of a query, under the lock (tests read while the server writes)."""
        with self.lock:
            return self.db.execute(sql, args).fetchall()

    def _read_one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        """The first row of a query (None if there is none), under the lock."""
        rows = self._read(sql, args)
        return rows[0] if rows else None

    def meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: object) -> None:
        self.db.execute(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, str(value)),
        )

    def check(self) -> None:
        """The two files agree: every address's LocalLedger balance is the sum of its
        coins, and every transaction LocalLedger applied was recorded by the node (a
        node stopped between the two commits leaves them apart: start afresh then)."""
        with self.lock:
            dump = self.ledger.dump()
            coins: dict[str, int] = {}
            for owner, balance in self.db.execute(
                "SELECT owner, balance FROM objects WHERE type = ?", (COIN_TYPE,)
            ):
                coins[owner] = coins.get(owner, 0) + int(balance)
            balances = {address: int(amount) for address, amount in dump["balances"]}
            balances = {a: v for a, v in balances.items() if v}
            if balances != {a: v for a, v in coins.items() if v}:
                raise RuntimeError(
                    "The stand-in's coins do not add up to its ledger's balances "
                    f"(coins {coins}, balances {balances})."
                )
            recorded = {row[0] for row in self.db.execute("SELECT digest FROM transactions")}
            applied = {row[2] for row in dump["transactions"]}
            if not applied <= recorded:
                raise RuntimeError(
                    f"The stand-in's ledger applied transactions its node never recorded: "
                    f"{sorted(applied - recorded)[:3]}."
                )

    # -- objects ---------------------------------------------------------------------------

    def object(self, object_id: str) -> ObjectRow | None:
        """The live object ``object_id`` (the Clock reads the clock now)."""
        object_id = full_address(object_id)
        if object_id == CLOCK_ID:
            return self.clock_object()
        rows = self._read(
            "SELECT id, type, owner_kind, owner, initial_shared_version, version, digest, "
            "storage_rebate, previous_tx, balance, contents FROM objects WHERE id = ?",
            (object_id,),
        )
        return _object_row(rows[0]) if rows else None

    def objects(self, ids: Sequence[str]) -> dict[str, ObjectRow]:
        """The live objects among ``ids``."""
        out = {}
        for object_id in ids:
            row = self.object(object_id)
            if row is not None:
                out[row.id] = row
        return out

    def clock_object(self) -> ObjectRow:
        """The shared Clock (``0x6``, shared since genesis at version 1): its timestamp is
        the stand-in's clock, its version moves with each checkpoint."""
        version = 1 + self.latest_checkpoint()
        contents = clock_contents(self.ledger.clock_ms())
        return ObjectRow.make(CLOCK_ID, CLOCK_TYPE, "shared", "", 1, version, contents, 0, "")

    def owned(self, owner: str, type_: str | None, after: str, limit: int) -> list[ObjectRow]:
        """Objects owned by address ``owner`` (of type ``type_``), by ID after ``after``."""
        query = (
            "SELECT id, type, owner_kind, owner, initial_shared_version, version, digest, "
            "storage_rebate, previous_tx, balance, contents FROM objects "
            "WHERE owner_kind = 'address' AND owner = ? AND id > ?"
        )
        args: list[Any] = [owner, after]
        if type_ is not None:
            query += " AND type = ?"
            args.append(type_)
        rows = self._read(query + " ORDER BY id LIMIT ?", (*args, limit))
        return [_object_row(row) for row in rows]

    def fields(self, parent: str, after: str, limit: int) -> list[ObjectRow]:
        """The dynamic fields owned by ``parent`` (a table's UID), by ID after ``after``."""
        rows = self._read(
            "SELECT id, type, owner_kind, owner, initial_shared_version, version, digest, "
            "storage_rebate, previous_tx, balance, contents FROM objects "
            "WHERE owner_kind = 'object' AND owner = ? AND id > ? ORDER BY id LIMIT ?",
            (parent, after, limit),
        )
        return [_object_row(row) for row in rows]

    def put(self, row: ObjectRow) -> None:
        """Write ``row`` (in a :meth:`write` transaction)."""
        self.db.execute(
            "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.id,
                row.type,
                row.owner_kind,
                row.owner,
                row.initial_shared_version,
                row.version,
                row.digest,
                row.storage_rebate,
                row.previous_tx,
                row.balance,
                row.contents,
            ),
        )

    def delete(self, object_id: str) -> None:
        self.db.execute("DELETE FROM objects WHERE id = ?", (object_id,))

    def coin_balance(self, owner: str) -> int:
        """MIST in the ``Coin<SUI>`` objects of ``owner``."""
        row = self._read_one(
            "SELECT COALESCE(SUM(balance), 0) FROM objects WHERE owner_kind = 'address' "
            "AND owner = ? AND type = ?",
            (owner, COIN_TYPE),
        )
        return int(row[0])

    # -- money -----------------------------------------------------------------------------

    def faucet(self, address: str, amount: int) -> str:
        """Mint ``amount`` MIST to ``address`` as a fresh ``Coin<SUI>``; returns its ID."""
        address = full_address(normalize_id(address, "address"))
        with self.lock:
            count = int(self.meta("faucet_coins") or 0)
            seed = self.package.encode() + count.to_bytes(8, "little")
            coin_id = "0x" + hashlib.blake2b(b"faucet" + seed, digest_size=32).hexdigest()
            digest = base58(hashlib.blake2b(b"faucet-tx" + seed, digest_size=32).digest())
            self.ledger.faucet(address, amount)
            with self.write():
                self.set_meta("faucet_coins", count + 1)
                self.put(
                    ObjectRow.make(
                        coin_id,
                        COIN_TYPE,
                        "address",
                        address,
                        None,
                        1,
                        coin_contents(coin_id, amount),
                        0,
                        digest,
                        amount,
                    )
                )
            return coin_id

    def publish_admin_cap(self, publisher: str) -> str:
        """The package's ``AdminCap`` for ``publisher``, as ``version::init`` makes it when
        the package is published (once: the one made before, if any); returns its ID."""
        publisher = full_address(normalize_id(publisher, "address"))
        with self.lock:
            found = self.ledger.admin_cap()
            if found is not None:
                return found
            cap_id = self.ledger.create_admin_cap(publisher)
            digest = base58(admin_cap_digest(self.ledger.package_id))
            with self.write():
                self.record_transaction(digest, self.latest_checkpoint(), publisher, b"")
                self.put(
                    ObjectRow.make(
                        cap_id,
                        move_type(self.package, "dtp::version::AdminCap"),
                        "address",
                        publisher,
                        None,
                        1,
                        bytes.fromhex(cap_id[2:]),
                        0,
                        digest,
                        None,
                    )
                )
            return cap_id

    def add_gas_paid(self, address: str, amount: int) -> None:
        self.db.execute(
            "INSERT INTO gas VALUES (?, ?) ON CONFLICT(address) DO UPDATE SET paid = paid + ?",
            (address, amount, amount),
        )

    def gas_paid(self, address: str | None = None) -> int:
        """Net gas (computation + storage - rebates) paid by ``address``, or by everyone."""
        if address is None:
            row = self._read_one("SELECT COALESCE(SUM(paid), 0) FROM gas")
        else:
            address = full_address(normalize_id(address, "address"))
            row = self._read_one(
                "SELECT COALESCE(SUM(paid), 0) FROM gas WHERE address = ?", (address,)
            )
        return int(row[0])

    def audit(self) -> dict[str, int]:
        """LocalLedger's audit plus ``gas``: minted == balances + escrows + broadcasts + gas."""
        with self.lock:
            out = self.ledger.audit()
            out["gas"] = self.gas_paid()
            return out

    # -- clock and epochs -----------------------------------------------------------------

    def clock_ms(self) -> int:
        return self.ledger.clock_ms()

    def epoch(self) -> int:
        """The current epoch, started anew every ``epoch_ms`` of the clock."""
        with self.lock:
            now = self.ledger.clock_ms()
            start = int(self.meta("epoch_start_ms") or 0)
            if now >= start + self.epoch_ms:
                steps = (now - start) // self.epoch_ms
                for _ in range(steps):
                    self.ledger.advance_epoch()
                with self.write():
                    self.set_meta("epoch_start_ms", start + steps * self.epoch_ms)
            return self.ledger.epoch()

    def epoch_start_ms(self) -> int:
        self.epoch()
        return int(self.meta("epoch_start_ms") or 0)

    def advance_epoch(self) -> int:
        """End the current epoch now; returns the new one."""
        with self.lock:
            self.epoch()
            epoch = self.ledger.advance_epoch()
            with self.write():
                self.set_meta("epoch_start_ms", self.ledger.clock_ms())
            return epoch

    # -- checkpoints, transactions, events ---------------------------------------------------

    def latest_checkpoint(self) -> int:
        row = self._read_one("SELECT MAX(seq) FROM checkpoints")
        return int(row[0] or 0)

    def _checkpoint_row(self, seq: int, timestamp_ms: int, transactions: int) -> str:
        digest = base58(
            hashlib.blake2b(
                b"checkpoint" + seq.to_bytes(8, "little") + timestamp_ms.to_bytes(8, "little"),
                digest_size=32,
            ).digest()
        )
        epoch = self.ledger.epoch()
        self.db.execute(
            "INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?)",
            (seq, digest, timestamp_ms, epoch, transactions),
        )
        return digest

    def new_checkpoint(self, timestamp_ms: int) -> int:
        """Seal a checkpoint holding one transaction (in a :meth:`write`); its number."""
        seq = self.latest_checkpoint() + 1
        self._checkpoint_row(seq, timestamp_ms, 1)
        return seq

    def checkpoint(self, seq: int | None) -> tuple[int, str, int, int] | None:
        """``(seq, digest, timestamp_ms, epoch)`` of checkpoint ``seq`` (None: the latest)."""
        if seq is None:
            seq = self.latest_checkpoint()
        row = self._read_one(
            "SELECT seq, digest, timestamp_ms, epoch FROM checkpoints WHERE seq = ?", (seq,)
        )
        return None if row is None else (int(row[0]), str(row[1]), int(row[2]), int(row[3]))

    def record_transaction(
        self, digest: str, checkpoint: int, sender: str, executed: bytes
    ) -> None:
        self.db.execute(
            "INSERT INTO transactions VALUES (?, ?, ?, ?)", (digest, checkpoint, sender, executed)
        )

    def transaction(self, digest: str) -> tuple[int, bytes] | None:
        """``(checkpoint, ExecutedTransaction bytes)`` of an executed transaction."""
        row = self._read_one(
            "SELECT checkpoint, executed FROM transactions WHERE digest = ?", (digest,)
        )
        return None if row is None else (int(row[0]), bytes(row[1]))

    def record_event(
        self,
        position: Position,
        tx_digest: str,
        sender: str,
        type_: str,
        module: str,
        contents: bytes,
    ) -> None:
        self.db.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (*position, tx_digest, sender, type_, module, contents),
        )

    def events(
        self, after: Position | None, before: Position | None, descending: bool
    ) -> Iterator[tuple[Position, str, str, str, str, bytes]]:
        """Events strictly between ``after`` and ``before`` (ledger order, or reversed):
        ``(position, tx digest, sender, type, module, contents)``."""
        low = after if after is not None else (-1, 0, 0)
        high = before if before is not None else (2**62, 0, 0)
        order = "DESC" if descending else "ASC"
        rows = self._read(
            "SELECT checkpoint, tx_index, event_index, tx_digest, sender, type, module, contents "
            "FROM events WHERE (checkpoint, tx_index, event_index) > (?, ?, ?) "
            "AND (checkpoint, tx_index, event_index) < (?, ?, ?) "
            f"ORDER BY checkpoint {order}, tx_index {order}, event_index {order}",
            (*low, *high),
        )
        for row in rows:
            yield (
                (int(row[0]), int(row[1]), int(row[2])),
                row[3],
                row[4],
                row[5],
                row[6],
                bytes(row[7]),
            )
