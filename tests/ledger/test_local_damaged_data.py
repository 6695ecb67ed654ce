"""LocalLedger: rows of a real SQLite ledger file rewritten behind its back into
shapes the ledger never writes (a field missing, a list for an object, text for a number)
must fail as ``DamagedData`` naming the file and the object, never as a bare KeyError,
TypeError or AttributeError; and handles reaching one file through different spellings of
its path share its background checkpoints."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import dtp.ledger.local._checkpoints as checkpoints
import dtp.ledger.local._store as local_module
from dtp.errors import ChainError, InvalidArgument, ObjectNotFound
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger, rules
from tests.ledger.files import SlowCheckpoints, damage

SLA = Sla(10, 5, 1000)
BOUND = 30.0  # how long a test waits for anything


def ident(seed: int) -> HostIdentity:
    """A fixed identity."""
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


SERVER, CLIENT = ident(0x81), ident(0x82)


@dataclass(frozen=True)
class World:
    """A closed ledger file with a host, a client's cap and an open connection."""

    path: Path
    host: str
    cap: str
    connection: str
    escrow: str


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    path = tmp_path / "ledger.sqlite"
    ledger = LocalLedger(path)
    try:
        host = ledger.create_host(SERVER, b"\x01" * 32, ["tcp://127.0.0.1:7000"])
        ledger.add_service(SERVER, host, 7, "raw", SLA)
        ledger.faucet(CLIENT.sui_address, 100_000)
        cap = ledger.create_spending_cap(CLIENT, 10**6)
        opened = ledger.open_connection(CLIENT, host, 7, cap, 1000)
    finally:
        ledger.close()
    yield World(path, host, cap, opened.connection_id, opened.escrow_id)


def rewrite(path: Path, object_id: str, change: Callable[[Any], Any]) -> None:
    """Store ``change(data)`` as the JSON of ``object_id``."""
    db = sqlite3.connect(path)
    try:
        (text,) = db.execute("SELECT data FROM objects WHERE id = ?", (object_id,)).fetchone()
        db.execute(
            "UPDATE objects SET data = ? WHERE id = ?",
            (json.dumps(change(json.loads(text))), object_id),
        )
        db.commit()
    finally:
        db.close()


def without(key: str) -> Callable[[Any], Any]:
    def change(data: Any) -> Any:
        del data[key]
        return data

    return change


def text_for_number(data: Any) -> Any:
    """A number the typed view converts (a price of the SLA, the firewall mode) as text."""
    if "firewall" in data:
        data["firewall"]["mode"] = "open"
    else:
        data["sla"]["price_per_kib"] = "ten"
    return data


# what each read reads, and which of its objects is damaged
READS: dict[str, tuple[Callable[[LocalLedger, World], object], Callable[[World], str]]] = {
    "get_connection": (lambda led, w: led.get_connection(w.connection), lambda w: w.connection),
    "get_escrow": (lambda led, w: led.get_escrow(w.escrow), lambda w: w.escrow),
    "get_host": (lambda led, w: led.get_host(w.host), lambda w: w.host),
    "get_object": (lambda led, w: led.get_object(w.escrow), lambda w: w.escrow),
    "get_objects": (lambda led, w: led.get_objects([w.host, w.escrow]), lambda w: w.escrow),
    "connection_view": (
        lambda led, w: led.connection_view(w.connection, w.host, with_cap=True),
        lambda w: w.connection,
    ),
    "connection_view_escrow": (
        lambda led, w: led.connection_view(w.connection, w.host, with_cap=True),
        lambda w: w.escrow,
    ),
    "connection_view_host": (
        lambda led, w: led.connection_view(w.connection, w.host),
        lambda w: w.host,
    ),
}

SHAPES: dict[str, Callable[[Any], Any]] = {
    "empty": lambda data: {},
    "missing_sla_or_services": lambda data: without("sla" if "sla" in data else "services")(data),
    "list": lambda data: [1, 2],
    "null": lambda data: None,
    "text": lambda data: "an object",
    "text_for_number": text_for_number,
}


def assert_damaged(
    caught: pytest.ExceptionInfo[BaseException], world: World, object_id: str
) -> None:
    error = caught.value
    assert isinstance(error, rules.DamagedData), f"{type(error).__name__}: {error}"
    assert isinstance(error, ChainError) and error.name == "LedgerUnavailable"
    assert str(world.path) in str(error), f"the file is not named: {error}"
    assert object_id in str(error), f"the object is not named: {error}"


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("read", sorted(READS))
def test_a_stored_object_of_the_wrong_shape_is_damaged_data_naming_file_and_object(
    world: World, read: str, shape: str
) -> None:
    call, target = READS[read]
    object_id = target(world)
    rewrite(world.path, object_id, SHAPES[shape])
    ledger = LocalLedger(world.path)
    try:
        with pytest.raises(ChainError) as caught:
            call(ledger, world)
        assert_damaged(caught, world, object_id)
        # the handle goes on serving what is not damaged
        assert ledger.get_cap(world.cap).max_per_epoch == 10**6
    finally:
        ledger.close()


@pytest.mark.parametrize("read", sorted(READS))
def test_a_version_that_is_not_a_number_is_damaged_data(world: World, read: str) -> None:
    call, target = READS[read]
    object_id = target(world)
    damage(world.path, "UPDATE objects SET version = 'seven' WHERE id = ?", object_id)
    ledger = LocalLedger(world.path)
    try:
        with pytest.raises(ChainError) as caught:
            call(ledger, world)
        assert_damaged(caught, world, object_id)
        for more in (ledger.object_version, ledger.object_ref):
            with pytest.raises(ChainError) as caught:
                more(object_id)
            assert_damaged(caught, world, object_id)
        with pytest.raises(ChainError) as caught:
            ledger.objects()
        assert_damaged(caught, world, object_id)
    finally:
        ledger.close()


@pytest.mark.parametrize("data", ["{broken", '{"$b": "not hex"}'])
@pytest.mark.parametrize("read", ["get_objects", "connection_view", "connection_view_escrow"])
def test_data_that_does_not_parse_names_the_file_in_every_read(
    world: World, read: str, data: str
) -> None:
    """get_objects and connection_view decode outside the read's retry loop, which is
    what names the file: their errors said only "stored data does not parse"."""
    call, target = READS[read]
    object_id = target(world)
    damage(world.path, "UPDATE objects SET data = ? WHERE id = ?", data, object_id)
    ledger = LocalLedger(world.path)
    try:
        with pytest.raises(ChainError) as caught:
            call(ledger, world)
        assert isinstance(caught.value, rules.DamagedData)
        assert str(world.path) in str(caught.value)
        assert "does not parse" in str(caught.value)
    finally:
        ledger.close()


TRANSACTIONS: dict[str, tuple[Callable[[LocalLedger, World], object], Callable[[World], str]]] = {
    "open_connection": (
        lambda led, w: led.open_connection(CLIENT, w.host, 7, w.cap, 1000),
        lambda w: w.host,
    ),
    "top_up": (lambda led, w: led.top_up(CLIENT, w.escrow, 10), lambda w: w.escrow),
    "close_connection": (
        lambda led, w: led.close_connection(CLIENT, w.connection),
        lambda w: w.connection,
    ),
}


@pytest.mark.parametrize("shape", ["empty", "list", "text"])
@pytest.mark.parametrize("call", sorted(TRANSACTIONS))
def test_a_transaction_over_an_object_of_the_wrong_shape_is_damaged_data_and_changes_nothing(
    world: World, call: str, shape: str
) -> None:
    run, target = TRANSACTIONS[call]
    object_id = target(world)
    rewrite(world.path, object_id, SHAPES[shape])
    ledger = LocalLedger(world.path)
    try:
        before = ledger.dump()
        with pytest.raises(ChainError) as caught:
            run(ledger, world)
        assert_damaged(caught, world, object_id)
        assert ledger.dump() == before
    finally:
        ledger.close()


def test_a_transaction_over_a_balance_field_of_text_is_damaged_data(world: World) -> None:
    def funds_as_text(data: Any) -> Any:
        data["funds"] = "1000"
        return data

    rewrite(world.path, world.escrow, funds_as_text)
    ledger = LocalLedger(world.path)
    try:
        for call in (lambda: ledger.top_up(CLIENT, world.escrow, 10), ledger.audit):
            with pytest.raises(ChainError) as caught:
                call()
            assert_damaged(caught, world, world.escrow)
        assert ledger.balance(CLIENT.sui_address) == 99_000
    finally:
        ledger.close()


def test_connection_view_of_a_connection_that_sqlite_cannot_parse_is_damaged_data(
    world: World,
) -> None:
    """connection_view's statement reads the connection's JSON in SQLite (json_extract),
    whose "malformed JSON" was a plain LedgerUnavailable, not DamagedData."""
    damage(world.path, "UPDATE objects SET data = '{broken' WHERE id = ?", world.connection)
    ledger = LocalLedger(world.path)
    try:
        with pytest.raises(ChainError) as caught:
            ledger.connection_view(world.connection, world.host, with_cap=True)
        assert isinstance(caught.value, rules.DamagedData), repr(caught.value)
        assert str(world.path) in str(caught.value)
    finally:
        ledger.close()


@pytest.mark.parametrize(
    ("column", "value"), [("fields", "[1, 2]"), ("fields", '"text"'), ("timestamp_ms", "noon")]
)
def test_an_event_of_the_wrong_shape_is_damaged_data(world: World, column: str, value: str) -> None:
    damage(world.path, f"UPDATE events SET {column} = ?", value)
    ledger = LocalLedger(world.path)
    try:
        with pytest.raises(ChainError) as caught:
            ledger.events(None)
        assert isinstance(caught.value, rules.DamagedData), repr(caught.value)
        assert str(world.path) in str(caught.value)
    finally:
        ledger.close()


def test_payment_model_objects_of_the_wrong_shape_are_damaged_data(world: World) -> None:
    ledger = LocalLedger(world.path)
    try:
        offer = ledger.create_subscription_offer(SERVER, world.host, 7, 100)
        deposit = ledger.response_escrow_deposit(CLIENT, SERVER.sui_address, b"r" * 32, 50, 2**62)
    finally:
        ledger.close()
    for object_id in (offer, deposit):
        rewrite(world.path, object_id, lambda data: {})
    ledger = LocalLedger(world.path)
    try:
        for object_id, read in (
            (offer, ledger.get_subscription_offer),
            (deposit, ledger.get_response_escrow),
        ):
            with pytest.raises(ChainError) as caught:
                read(object_id)
            assert_damaged(caught, world, object_id)
        # an object of another kind is still not found by the typed reads (not damage)
        with pytest.raises(ObjectNotFound):
            ledger.get_object(deposit)
    finally:
        ledger.close()


def test_a_path_holding_a_nul_character_is_invalid_argument(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        LocalLedger(str(tmp_path / "a\0b.sqlite"))


# -- one file through different spellings of its path ----------------------------------------------


def test_handles_on_one_file_by_different_paths_share_its_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint registry was keyed by the path as given: "x/../l.db" and "l.db" ran
    checkpoints of one file side by side, and close() of one handle did not wait for the
    checkpoint the other had started."""
    (tmp_path / "x").mkdir()
    plain = tmp_path / "l.db"
    roundabout = tmp_path / "x" / ".." / "l.db"
    finish = threading.Event()
    # a copy that takes long, holding its connection as the real one does
    slow = SlowCheckpoints(monkeypatch, lambda: finish.wait(600))
    started, running = slow.started, slow.running
    monkeypatch.setattr(local_module, "_CLOSE_WAITS_FOR_CHECKPOINT_S", 600.0)
    first = LocalLedger(roundabout)
    second = LocalLedger(plain)
    try:
        for _ in range(checkpoints._CHECKPOINT_EVERY):
            first.faucet(CLIENT.sui_address, 1)
        assert running.wait(BOUND)
        # the second handle's commits ask for a checkpoint of the same file: one runs
        for _ in range(checkpoints._CHECKPOINT_EVERY):
            second.faucet(SERVER.sui_address, 1)
        with checkpoints._CHECKPOINTER._lock:
            assert checkpoints._CHECKPOINTER._running == {os.path.realpath(plain)}
        assert len(started) == 1
        # close() of the second handle waits for the checkpoint the first one started
        closer = threading.Thread(target=second.close)
        closer.start()
        closer.join(1.0)
        assert closer.is_alive(), "close() did not wait for the file's checkpoint"
        finish.set()
        closer.join(BOUND)
        assert not closer.is_alive()
        # the first handle is not broken by the second one's close
        for _ in range(checkpoints._CHECKPOINT_EVERY):
            first.faucet(CLIENT.sui_address, 1)
        assert first.balance(CLIENT.sui_address) == 2 * checkpoints._CHECKPOINT_EVERY
        assert first.balance(SERVER.sui_address) == checkpoints._CHECKPOINT_EVERY
        with pytest.raises(ChainError):
            second.balance(CLIENT.sui_address)
    finally:
        finish.set()
        first.close()
        second.close()
    deadline = time.monotonic() + BOUND
    while checkpoints._CHECKPOINTER._running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not os.path.exists(f"{plain}-wal"), "the last close left the WAL behind"
    reopened = LocalLedger(plain)
    try:
        assert reopened.balance(CLIENT.sui_address) == 2 * checkpoints._CHECKPOINT_EVERY
    finally:
        reopened.close()
