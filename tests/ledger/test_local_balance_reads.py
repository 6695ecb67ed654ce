"""A LocalLedger transaction reads each balance once: what its rule read (a deposit
taken from the sender) is what its effects start from, with no second read."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.ledger.local._stored import SqlStore

HOST = HostIdentity.generate()
CLIENT = HostIdentity.generate()


def test_an_open_reads_the_senders_balance_once(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.db")
    try:
        ledger.faucet(CLIENT.sui_address, 10**6)
        host = ledger.create_host(HOST, HOST.noise_public)
        ledger.add_service(HOST, host, 80, "echo", Sla(1, 1, 1000))
        cap = ledger.create_spending_cap(CLIENT, 10**6)
        statements: list[str] = []
        ledger._db.set_trace_callback(statements.append)
        ledger.open_connection(CLIENT, host, 80, cap, 5000)
        ledger._db.set_trace_callback(None)
        reads = [s for s in statements if s.startswith("SELECT") and "FROM balances" in s]
        assert len(reads) == 1
        assert ledger.balance(CLIENT.sui_address) == 10**6 - 5000
        audit = ledger.audit()
        assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
    finally:
        ledger.close()


def test_balances_mixes_what_was_read_with_one_statement_for_the_rest() -> None:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE balances (address TEXT PRIMARY KEY, amount TEXT)")
    db.executemany("INSERT INTO balances VALUES (?, ?)", [("a", "5"), ("b", "7"), ("c", "9")])
    store = SqlStore(db)
    assert (store.balance("a"), store.balance("z")) == (5, 0)
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    # a read and a missing address come from what was read; b and c in one statement
    assert store.balances(["a", "z", "b", "c", "y"]) == {"a": 5, "b": 7, "c": 9}
    assert len(statements) == 1
    statements.clear()
    assert store.balances(["a", "z"]) == {"a": 5}  # all known: no statement
    assert statements == []
