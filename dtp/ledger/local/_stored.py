"""Reading what the local ledger stores: :class:`SqlStore` (the rules' view of storage
inside the current SQLite transaction), and decoding stored objects, versions and balances
into typed values; a row that is not what the ledger writes raises
:class:`~dtp.ledger.local.rules.DamagedData` (a :class:`~dtp.errors.LedgerUnavailable`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, Final

from dtp.errors import ObjectNotFound
from dtp.ledger._objects import ChainObject, object_from_fields
from dtp.ledger.local import rules

#: The largest event position SQLite can hold (a signed 64-bit INTEGER).
SEQ_MAX: Final = 2**63 - 1

#: What reading stored data of the wrong shape raises: a field missing (KeyError), a list
#: for an object or text for a number (TypeError, AttributeError, ValueError), too
#: short a list (IndexError), a number too large (OverflowError).
SHAPE_ERRORS: Final = (
    KeyError,
    TypeError,
    AttributeError,
    ValueError,
    IndexError,
    OverflowError,
)
#: The structs object_from_fields builds (its ValueError for any other name means an
#: object of another kind, not damaged data).
_BUILT: Final = frozenset(
    {"Host", "SpendingCap", "TransportControl", "Escrow", "Pipe", "Broadcast"}
)


def _balance(address: str, amount: Any) -> int:
    """A stored balance, which the ledger writes as the decimal text of a u64 (an INTEGER
    read as well); :class:`rules.DamagedData` naming the address for anything else."""
    value = rules.parse_stored_int(amount)
    if value is None or not 0 <= value <= rules.U64_MAX:
        raise rules.DamagedData(f"the balance of {address}: a stored amount {amount!r:.30}")
    return value


def stored_version(object_id: str, version: Any) -> int:
    """A stored version, which the ledger writes as an INTEGER."""
    if type(version) is not int:
        raise rules.DamagedData(f"object {object_id}: a stored version {version!r:.30}")
    return version


def decoded(object_id: str, version: Any, text: Any) -> tuple[int, dict[str, Any]]:
    """The version and data of a stored object, :class:`rules.DamagedData` naming the
    object when either is not of the type the ledger writes (one type check each: this
    is on every read)."""
    try:
        data = rules.from_json(text)
    except rules.DamagedData as exc:
        raise rules.DamagedData(f"object {object_id}: {exc}") from None
    if type(data) is not dict or type(version) is not int:
        if type(data) is not dict:
            raise rules.wrong_shape(
                f"object {object_id}", TypeError(f"a JSON {type(data).__name__}, not an object")
            )
        stored_version(object_id, version)
    return version, data


def not_found(object_id: str, found: str | None, struct: str | None) -> ObjectNotFound:
    """The error for a read of ``object_id`` as a ``struct`` (None: any object) that
    found none (``found`` None) or a ``found`` instead."""
    if found is None:
        return ObjectNotFound(f"No {struct or 'object'} with ID {object_id} exists on this ledger.")
    return ObjectNotFound(f"Object {object_id} is a {found}, not a {struct}.")


def build(name: str, object_id: str, version: int, d: dict[str, Any]) -> ChainObject:
    try:
        table = d.get("stakes") if name == "Broadcast" else None
        return object_from_fields(name, object_id, version, d, table or {})
    except SHAPE_ERRORS as exc:
        if name not in _BUILT:
            raise ObjectNotFound(f"Object {object_id} has an unknown type {name}.") from None
        raise rules.wrong_shape(f"object {object_id}", exc) from exc


class SqlStore:
    """The rules' view of storage inside the current SQLite transaction."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        # balances read so far: a store lives for one transaction, whose writes all
        # come after its reads, so one read is not made again for its effects
        self._balances: dict[str, int] = {}

    def load(self, object_id: str) -> tuple[str, str, int, dict[str, Any]] | None:
        row = self.load_stored(object_id)
        return None if row is None else row[:4]

    def load_stored(self, object_id: str) -> tuple[str, str, int, dict[str, Any], str] | None:
        row = self.db.execute(
            "SELECT type, owner, version, data FROM objects WHERE id = ?", (object_id,)
        ).fetchone()
        if row is None:
            return None
        version, data = decoded(object_id, row[2], row[3])
        return row[0], row[1], version, data, row[3]

    def balance(self, address: str) -> int:
        known = self._balances.get(address)
        if known is not None:
            return known
        row = self.db.execute(
            "SELECT amount FROM balances WHERE address = ?", (address,)
        ).fetchone()
        amount = _balance(address, row[0]) if row else 0
        self._balances[address] = amount
        return amount

    def balances(self, addresses: Sequence[str]) -> dict[str, int]:
        """The balances of ``addresses`` that are not zero (one statement for those not
        read by :meth:`balance` already, none when all were)."""
        known = self._balances
        if known:
            held = {a: known[a] for a in addresses if known.get(a)}
            rest = [a for a in addresses if a not in known]
        else:  # (none read yet, as in a settlement: no comprehension needed)
            held, rest = {}, list(addresses)
        if rest:
            marks = ",".join("?" * len(rest))
            rows = self.db.execute(
                f"SELECT address, amount FROM balances WHERE address IN ({marks})", rest
            )
            for address, amount in rows:
                held[address] = _balance(address, amount)
        return held
