"""A ledger that does not answer, or whose storage fails, raises one public class,
``dtp.errors.LedgerUnavailable``, whichever ledger it is.

User code tests the class, on either ledger (not only ``.name``). Every case here is a
real failure: a closed or foreign SQLite file, a row rewritten behind the ledger's back,
a writer holding the file's lock, a Sui endpoint on 127.0.0.1 that refuses connections
(one that never answers is tests/ledger/test_sui_node_faults.py's close test). ``.name``
and ``.module`` stay what they were.
"""

from __future__ import annotations

import pickle
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import dtp.ledger.local._store as transactions
from dtp import errors
from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger
from dtp.ledger.local import rules as local_rules
from dtp.ledger.sui import LedgerUnavailable as SuiLedgerUnavailable
from dtp.ledger.sui import SuiConfig, SuiLedger
from dtp.ledger.sui import _client as sui_client
from dtp.ledger.sui._client import SuiNode
from tests.ledger.files import damage
from tests.ledger.sui_tx_cases import PACKAGE
from tests.support.ports import free_port

CLIENT = HostIdentity.from_private_bytes(bytes([0x91]) * 32, bytes([0x92]) * 32)


def _local_unavailable(error: BaseException, path: Path | str) -> None:
    """``error`` is what LocalLedger raised for its file ``path`` failing."""
    assert isinstance(error, errors.LedgerUnavailable)
    assert isinstance(error, errors.ChainError)
    assert error.name == "LedgerUnavailable"  # code that tells it by name still works
    assert error.module == "ledger"
    assert str(path) in str(error)


@pytest.fixture
def ledger_file(tmp_path: Path) -> Iterator[Path]:
    """A ledger file holding a balance and a spending cap (so an event), closed again."""
    path = tmp_path / "ledger.sqlite"
    ledger = LocalLedger(path)
    try:
        ledger.faucet(CLIENT.sui_address, 10)
        ledger.create_spending_cap(CLIENT, 10**6)
    finally:
        ledger.close()
    yield path


# -- LocalLedger ---------------------------------------------------------------------------------


def test_a_closed_local_ledger_is_caught_as_ledger_unavailable(ledger_file: Path) -> None:
    ledger = LocalLedger(ledger_file)
    ledger.close()
    try:
        ledger.balance(CLIENT.sui_address)
    except errors.LedgerUnavailable as exc:
        _local_unavailable(exc, ledger_file)
        assert "closed" in str(exc)
    else:
        pytest.fail("a closed ledger answered")


@pytest.mark.parametrize("kind", ["not sqlite", "another database", "a directory"])
def test_a_file_that_is_not_a_ledger_is_caught_as_ledger_unavailable(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "not-a-ledger"
    if kind == "not sqlite":
        path.write_bytes(b"these are not the bytes of a SQLite database\n" * 200)
    elif kind == "another database":
        other = sqlite3.connect(path)
        other.execute("CREATE TABLE songs (title TEXT)")
        other.commit()
        other.close()
    else:
        path.mkdir()
    with pytest.raises(errors.LedgerUnavailable) as caught:
        LocalLedger(path)
    _local_unavailable(caught.value, path)


@pytest.mark.parametrize(
    ("statement", "call"),
    [
        (
            "UPDATE balances SET amount = 'x'",
            lambda led: led.balance(CLIENT.sui_address),
        ),
        ("UPDATE events SET fields = '[oops'", lambda led: led.events(None, limit=100)),
    ],
    ids=["balance", "events"],
)
def test_a_damaged_row_is_caught_as_ledger_unavailable(
    ledger_file: Path, statement: str, call: Callable[[LocalLedger], object]
) -> None:
    damage(ledger_file, statement)
    ledger = LocalLedger(ledger_file)
    try:
        with pytest.raises(errors.LedgerUnavailable) as caught:
            call(ledger)
        _local_unavailable(caught.value, ledger_file)
        # still the DamagedData it was, so callers can tell a damaged row apart
        assert isinstance(caught.value, local_rules.DamagedData)
        assert caught.value.ledger == str(ledger_file)
    finally:
        ledger.close()


def test_a_file_locked_past_the_busy_timeout_is_caught_as_ledger_unavailable(
    ledger_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = LocalLedger(ledger_file)
    other = sqlite3.connect(ledger_file, isolation_level=None)
    try:
        monkeypatch.setattr(transactions, "_BUSY_TIMEOUT_S", 0.2)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(errors.LedgerUnavailable, match="locked") as caught:
            ledger.faucet(CLIENT.sui_address, 5)
        _local_unavailable(caught.value, ledger_file)
        # and still what callers caught before it was typed
        assert isinstance(caught.value, sqlite3.OperationalError)
        other.execute("ROLLBACK")
        assert ledger.balance(CLIENT.sui_address) == 10
    finally:
        other.close()
        ledger.close()


# -- SuiLedger / SuiNode -------------------------------------------------------------------------


def test_a_sui_node_refusing_connections_is_caught_as_ledger_unavailable() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    ledger = SuiLedger(SuiConfig(endpoint, PACKAGE, timeout=30))
    node = SuiNode(endpoint, timeout=30)
    try:
        for call in (lambda: ledger.balance(CLIENT.sui_address), node.epoch_info):
            with pytest.raises(errors.LedgerUnavailable) as caught:
                call()
            assert caught.value.name == "LedgerUnavailable"
            assert caught.value.module == "sui"
            assert endpoint in str(caught.value)
            # the class of dtp.ledger.sui(_client) is still the one raised
            assert isinstance(caught.value, sui_client.LedgerUnavailable)
    finally:
        node.close()
        ledger.close()


# -- the classes ---------------------------------------------------------------------------------


def test_every_form_is_the_public_class_and_survives_pickling() -> None:
    """The Sui and the damaged-data forms are subclasses of the one public class; each
    keeps its class, message, name and module through pickle (as errors crossing a
    process boundary are)."""
    assert issubclass(SuiLedgerUnavailable, errors.LedgerUnavailable)
    assert sui_client.LedgerUnavailable is SuiLedgerUnavailable
    assert issubclass(local_rules.DamagedData, errors.LedgerUnavailable)
    for error in (
        errors.LedgerUnavailable("the ledger x.sqlite is closed"),
        SuiLedgerUnavailable("Sui node http://127.0.0.1:9 is unreachable"),
        local_rules.DamagedData("stored data does not parse"),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert (str(copy), copy.name, copy.module) == (str(error), error.name, error.module)
