"""LocalLedger's combined and cheap reads, and its own calls' shorter path: each gives
what the plain reads and the decoded path give, and refuses what they refuse."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from dtp.errors import InvalidTransaction, ObjectNotFound
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Escrow, Host, Sla, SpendingCap, TransportControl
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from dtp.ledger.local._checkpoints import _CHECKPOINT_EVERY, _Checkpointer
from dtp.ledger.local._tx import base58

SLA = Sla(10, 5, 1000)


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


SERVER, CLIENT = ident(0x44), ident(0x45)


class World:
    def __init__(self, ledger: LocalLedger) -> None:
        self.ledger = ledger
        self.host = ledger.create_host(SERVER, b"\x01" * 32, ["tcp://127.0.0.1:7000"])
        ledger.add_service(SERVER, self.host, 7, "raw", SLA)
        ledger.faucet(CLIENT.sui_address, 100_000)
        self.cap = ledger.create_spending_cap(CLIENT, 50_000)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(LocalLedger(tmp_path / "ledger.db"))


def test_get_objects_is_get_object_each(world: World) -> None:
    ledger = world.ledger
    opened = ledger.open_connection(CLIENT, world.host, 7, world.cap, 2000)
    ids = [opened.escrow_id, world.host, opened.connection_id, world.cap, world.host]
    assert ledger.get_objects(ids) == [ledger.get_object(i) for i in ids]
    assert ledger.get_objects([]) == []
    with pytest.raises(ObjectNotFound):
        ledger.get_objects([world.host, "0x" + "ee" * 32])


@pytest.mark.parametrize("with_cap", [False, True])
def test_connection_view_is_the_plain_reads(world: World, with_cap: bool) -> None:
    ledger = world.ledger
    opened = ledger.open_connection(CLIENT, world.host, 7, world.cap, 2000)
    ledger.advance_epoch()
    view = ledger.connection_view(opened.connection_id, world.host, with_cap=with_cap)
    assert view is not None
    tc = ledger.get_connection(opened.connection_id)
    assert view.connection == tc
    assert view.escrow == ledger.get_escrow(tc.escrow)
    assert view.host == ledger.get_host(world.host)
    if with_cap:
        assert view.cap == ledger.get_cap(tc.spending_cap)
        assert view.epoch == ledger.epoch() == 1
    else:
        assert view.cap is None and view.epoch is None
    # the generic implementation (one read each) agrees
    generic = Ledger.connection_view(ledger, opened.connection_id, world.host, with_cap=with_cap)
    assert generic == view


def test_connection_view_refusals(world: World) -> None:
    ledger = world.ledger
    opened = ledger.open_connection(CLIENT, world.host, 7, world.cap, 2000)
    # no such connection, or not a connection: None (as get_connection's ObjectNotFound)
    assert ledger.connection_view("0x" + "ee" * 32, world.host) is None
    assert ledger.connection_view(opened.escrow_id, world.host) is None
    assert ledger.connection_view(world.host, world.host, with_cap=True) is None
    # the others must exist and be of their type
    with pytest.raises(ObjectNotFound):
        ledger.connection_view(opened.connection_id, "0x" + "ee" * 32)
    with pytest.raises(ObjectNotFound):
        ledger.connection_view(opened.connection_id, world.cap)
    view = ledger.connection_view(opened.connection_id, world.host, with_cap=True)
    assert view is not None
    assert isinstance(view.connection, TransportControl)
    assert isinstance(view.escrow, Escrow)
    assert isinstance(view.host, Host)
    assert isinstance(view.cap, SpendingCap)


def test_reads_share_an_unchanged_host_and_follow_each_change(world: World) -> None:
    ledger = world.ledger
    opened = ledger.open_connection(CLIENT, world.host, 7, world.cap, 2000)
    first = ledger.connection_view(opened.connection_id, world.host)
    again = ledger.connection_view(opened.connection_id, world.host)
    assert first is not None and again is not None
    assert again.host is first.host  # built once from the same row
    assert ledger.get_host(world.host) is first.host
    # a change made through another handle of the file is seen at the next read
    other = LocalLedger(ledger.path)
    try:
        other.add_service(SERVER, world.host, 8, "raw", SLA)
    finally:
        other.close()
    changed = ledger.connection_view(opened.connection_id, world.host)
    assert changed is not None
    assert changed.host is not first.host
    assert sorted(changed.host.services) == [7, 8]
    assert changed.host == ledger.get_host(world.host)
    assert changed.host.version == first.host.version + 1
    # shared between readers, its services cannot be changed by one of them
    with pytest.raises(TypeError):
        changed.host.services[9] = changed.host.services[7]  # type: ignore[index]
    assert sorted(ledger.get_host(world.host).services) == [7, 8]
    # read as a Host, the row is refused as before when it names another type
    with pytest.raises(ObjectNotFound, match="is a SpendingCap, not a Host"):
        ledger.get_host(world.cap)
    with pytest.raises(ObjectNotFound):
        ledger.get_host("0x" + "ee" * 32)


def test_object_version_follows_every_change(world: World) -> None:
    ledger = world.ledger
    opened = ledger.open_connection(CLIENT, world.host, 7, world.cap, 2000)
    cid = opened.connection_id
    assert ledger.object_version(cid) == ledger.get_connection(cid).version == 1
    ledger.close_connection(CLIENT, cid)
    assert ledger.object_version(cid) == ledger.get_connection(cid).version == 2
    with pytest.raises(ObjectNotFound):
        ledger.object_version("0x" + "ee" * 32)


def test_open_reserves_and_settlement_releases_on_the_cap(world: World) -> None:
    ledger = world.ledger
    first = ledger.open_connection(CLIENT, world.host, 7, world.cap, 2000)
    assert ledger.get_cap(world.cap).remaining(ledger.epoch()) == 50_000 - 2000
    # the server claims 1005: the cap does not move (the deposit was reserved)
    from dtp.payments.receipts import Receipt, fee

    receipt = Receipt(
        ledger.receipt_scope(first.connection_id), 100 * 1024, 1, fee(SLA, 100 * 1024, 1), 1
    )
    ledger.claim(SERVER, first.escrow_id, receipt.sign(CLIENT))
    assert ledger.get_cap(world.cap).remaining(ledger.epoch()) == 50_000 - 2000
    # settled: the 995 refunded are released, the 1005 claimed count in this epoch
    assert ledger.settle(SERVER, first.connection_id).refunded == 995
    assert ledger.get_cap(world.cap).remaining(ledger.epoch()) == 50_000 - 1005
    assert ledger.get_escrow(first.escrow_id).reserved == 0  # nothing left on the cap
    ledger.advance_epoch()  # a new epoch: the claimed count starts over
    ledger.open_connection(CLIENT, world.host, 7, world.cap, 2000)
    assert ledger.get_cap(world.cap).remaining(ledger.epoch()) == 50_000 - 2000


def test_own_calls_record_what_execute_records(world: World) -> None:
    """A call made through LocalLedger's methods (no decode of its own bytes) leaves the
    same rows as the same call executed from raw bytes."""
    ledger = world.ledger
    raw = ledger.build_tx(CLIENT.sui_address, "spending_cap", "create", [7])
    direct = ledger.execute(raw, CLIENT.sign_transaction(raw))
    via_call = ledger._call(CLIENT, "spending_cap", "create", 7)
    a, b = ledger.get_cap(str(direct.value)), ledger.get_cap(str(via_call.value))
    assert (a.owner, a.max_per_epoch, a.claimed, a.outstanding, a.epoch) == (
        b.owner,
        b.max_per_epoch,
        0,
        0,
        0,
    )
    assert [e.name for e in direct.events] == [e.name for e in via_call.events]
    assert direct.events[0].fields["max_per_epoch"] == via_call.events[0].fields["max_per_epoch"]
    digests = {row[2] for row in ledger.dump()["transactions"]}
    assert direct.digest in digests and via_call.digest in digests


def test_own_calls_still_meet_the_decoders_limits(world: World) -> None:
    """Calls the decoder would refuse (here: a field over 1 MiB) are refused all the
    same on LocalLedger's own path."""
    ledger = world.ledger
    opened = ledger.open_connection(CLIENT, world.host, 7, world.cap, 2000)
    with pytest.raises(InvalidTransaction):
        ledger._call(CLIENT, "mailbox", "send", ledger._id(world.host), b"x" * (2 << 20))
    assert ledger.get_connection(opened.connection_id).version == 1


def test_base58_matches_the_digit_by_digit_definition() -> None:
    alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

    def reference(data: bytes) -> str:
        n, out = int.from_bytes(data, "big"), ""
        while n:
            n, rem = divmod(n, 58)
            out = alphabet[rem] + out
        return "1" * (len(data) - len(data.lstrip(b"\0"))) + out

    samples = [b"", b"\0", b"\0\0\x01", bytes(32), b"\xff" * 32, b"\x01" + bytes(31)]
    samples += [os.urandom(n) for n in range(40) for _ in range(5)]
    samples += [b"\0" * k + os.urandom(32 - k) for k in range(5)]
    for data in samples:
        assert base58(data) == reference(data), data.hex()


def test_checkpoints_keep_up_off_the_transactions(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.db")
    for _ in range(3 * _CHECKPOINT_EVERY):
        ledger.faucet(CLIENT.sui_address, 1)
    deadline = time.monotonic() + 10
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        while True:  # a background checkpoint has copied frames into the database
            _busy, log, done = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if done > 0 or time.monotonic() > deadline:
                break
            time.sleep(0.01)
    assert done > 0 and log >= done
    assert ledger.balance(CLIENT.sui_address) == 3 * _CHECKPOINT_EVERY
    ledger.close()


def test_a_checkpoint_never_creates_a_missing_file(tmp_path: Path) -> None:
    checkpointer = _Checkpointer()
    path = str(tmp_path / "gone.db")
    checkpointer._run(path)
    assert not Path(path).exists()


def test_from_json_without_bytes_takes_the_plain_decoder() -> None:
    from dtp.ledger.local.rules import _common as rules

    samples = [
        {"a": 1, "b": [1, 2, {"c": "d"}]},
        {"k": b"xy", "l": [b"", {"q": b"z"}]},
        {"s": '"$b"', "t": b"\x00"},
        {"s": '"$b"'},
        [],
        {"nested": {"deeper": {"bytes": b"\xff" * 40}}},
    ]
    for value in samples:
        text = rules.to_json(value)
        assert rules.from_json(text) == value
        assert rules.from_json(text) == rules._DECODER.decode(text)
