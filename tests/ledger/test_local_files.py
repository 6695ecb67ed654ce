"""LocalLedger on files that are not (or no longer) a ledger it can use: another
program's SQLite database (left untouched, not given ledger tables or WAL mode), a ledger
from a newer schema, a file damaged under an open handle, and another writer holding the
lock past the busy timeout. Each is ChainError ``LedgerUnavailable``, never a bare
sqlite3 exception. Also reads given arguments of the wrong kind (InvalidArgument)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

import dtp.ledger.local._store as transactions
from dtp.errors import ChainError, InvalidArgument, InvalidTransaction, WrongSigner
from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger
from dtp.ledger.local._tx import Address, decode_tx

CLIENT = HostIdentity.from_private_bytes(bytes([0x63]) * 32, bytes([0x63]) * 32)


def tables_and_mode(path: Path) -> tuple[list[str], str, int]:
    db = sqlite3.connect(path)
    try:
        names = sorted(row[0] for row in db.execute("SELECT name FROM sqlite_master"))
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        return names, mode, version
    finally:
        db.close()


@pytest.mark.parametrize("table", ["receipts(x)", "objects(a, b)", "meta(key, value)"])
def test_another_programs_database_is_refused_and_left_as_it_was(
    tmp_path: Path, table: str
) -> None:
    path = tmp_path / "other.sqlite"
    db = sqlite3.connect(path)
    db.execute(f"CREATE TABLE {table}")
    db.commit()
    db.close()
    before = tables_and_mode(path)
    with pytest.raises(ChainError, match="not a ledger") as caught:
        LocalLedger(path)
    assert caught.value.name == "LedgerUnavailable"
    assert str(path) in str(caught.value)
    # no ledger tables added, not switched to WAL
    assert tables_and_mode(path) == before


def test_a_ledger_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "newer.sqlite"
    ledger = LocalLedger(path)
    ledger.faucet(CLIENT.sui_address, 10)
    ledger.close()
    names, _, version = tables_and_mode(path)
    assert version >= 1  # the schema version is recorded
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {version + 1}")
    db.commit()
    db.close()
    with pytest.raises(ChainError, match="newer") as caught:
        LocalLedger(path)
    assert caught.value.name == "LedgerUnavailable"
    assert tables_and_mode(path)[0] == names


def test_a_ledger_written_before_the_schema_version_opens(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    ledger = LocalLedger(path)
    ledger.faucet(CLIENT.sui_address, 10)
    ledger.close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 0")
    db.commit()
    db.close()
    ledger = LocalLedger(path)
    try:
        assert ledger.balance(CLIENT.sui_address) == 10
    finally:
        ledger.close()


def test_a_file_damaged_under_an_open_handle_fails_typed(tmp_path: Path) -> None:
    path = tmp_path / "damaged.sqlite"
    ledger = LocalLedger(path)
    for _ in range(200):
        ledger.faucet(CLIENT.sui_address, 1)
    ledger.close()
    ledger = LocalLedger(path)
    try:
        size = os.path.getsize(path)
        # every page past the first (the schema's), gone: with half of them gone, the
        # events read might find all it needed in the half left (it did in one CI run)
        with open(path, "r+b") as file:
            file.truncate(min(size // 2, 4096))
        with pytest.raises(ChainError) as caught:
            ledger.events(None, limit=1000)
        assert caught.value.name == "LedgerUnavailable"
        assert str(path) in str(caught.value)
    finally:
        ledger.close()


def test_a_writer_locked_out_past_the_busy_timeout_fails_typed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "locked.sqlite"
    ledger = LocalLedger(path)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        ledger.faucet(CLIENT.sui_address, 10)
        monkeypatch.setattr(transactions, "_BUSY_TIMEOUT_S", 0.1)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(ChainError, match="locked") as caught:
            ledger.faucet(CLIENT.sui_address, 5)
        assert caught.value.name == "LedgerUnavailable"
        # still what callers caught before it was typed
        assert isinstance(caught.value, sqlite3.OperationalError)
        other.execute("ROLLBACK")
        assert ledger.balance(CLIENT.sui_address) == 10
    finally:
        other.close()
        ledger.close()


@pytest.mark.parametrize("ids", [None, 5, "0x1", b"0x1"])
def test_get_objects_refuses_what_is_not_a_collection_of_ids(ids: object) -> None:
    ledger = LocalLedger(":memory:")
    try:
        with pytest.raises(InvalidArgument, match="sequence of IDs"):
            ledger.get_objects(ids)  # type: ignore[arg-type]
    finally:
        ledger.close()


@pytest.mark.parametrize("bad", ["host", 5, {"type": "x"}])
def test_events_refuse_a_filter_that_is_not_an_event_filter(bad: object) -> None:
    ledger = LocalLedger(":memory:")
    try:
        ledger.faucet(CLIENT.sui_address, 1)
        with pytest.raises(InvalidArgument, match="EventFilter"):
            ledger.events(None, bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="EventFilter"):
            ledger.wait_events(None, 0.0, bad)  # type: ignore[arg-type]
    finally:
        ledger.close()


@pytest.mark.parametrize(
    "args",
    [[2**64], [-1], [True], ["text"], [1.5], [None], [[2**64]], [[[[1]]]], 5, "ab"],
)
def test_build_tx_refuses_values_the_transaction_cannot_carry(args: object) -> None:
    ledger = LocalLedger(":memory:")
    try:
        with pytest.raises(InvalidArgument):
            ledger.build_tx(CLIENT.sui_address, "spending_cap", "create", args)  # type: ignore[arg-type]
    finally:
        ledger.close()


def test_build_tx_encodes_a_short_id_whole() -> None:
    # encoded short, its bytes were read back as part of the next argument
    ledger = LocalLedger(":memory:")
    try:
        raw = ledger.build_tx(CLIENT.sui_address, "host", "allow", [Address("0x1"), 7])
        assert decode_tx(raw).args == ("0x" + "00" * 31 + "01", 7)
        for name in (5, None, b"host"):
            with pytest.raises(InvalidArgument):
                ledger.build_tx(CLIENT.sui_address, name, "x", [])  # type: ignore[arg-type]
    finally:
        ledger.close()


@pytest.mark.parametrize(
    ("tx", "signature", "error"),
    [
        (None, b"", InvalidTransaction),
        ("text", b"", InvalidTransaction),
        (5, b"", InvalidTransaction),
        (b"x", None, WrongSigner),
        (b"x", "sig", WrongSigner),
    ],
)
def test_execute_refuses_arguments_that_are_not_bytes(
    tx: object, signature: object, error: type[Exception]
) -> None:
    ledger = LocalLedger(":memory:")
    try:
        if tx == b"x":
            tx = ledger.build_tx(CLIENT.sui_address, "spending_cap", "create", [7])
        with pytest.raises(error):
            ledger.execute(tx, signature)  # type: ignore[arg-type]
        assert ledger.events()[0] == []
    finally:
        ledger.close()
