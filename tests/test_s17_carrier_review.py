"""The ledger carrier (session 17 review): fragment ids at the wrap, small pages, and
the bridge's last reads.

* Fragment ids wrap at 2**32, a resumed carrier's jump included: records framed
  across the wrap arrive whole and in order (no fault found; kept as a guard).
* A room smaller than one record still delivers it, whole, once (no fault found).
* After our side ended, a bridge whose peer retains its records reads the peer's last
  ones to confirm them: it read them with ``receive(0.0)``, every page the ledger had
  in one call, so a backlog went into memory whole (each record kept until the call
  returned). Now it reads in portions no larger than the bridge's buffer, one after
  the other without waiting, so it still reads to the end before its deadline.

Everything real: a LocalLedger on a SQLite file, real carriers and bridges.
"""

from __future__ import annotations

import os
import time
from typing import Any

from dtp.carriers import ledger_bridge
from dtp.carriers.ledger import MAX_PIPE_DATA, MIN_PAGE, CarrierState, LedgerCarrier
from dtp.carriers.ledger_bridge import LedgerBridge, LedgerCarrierOptions
from tests.test_ledger_carrier_sockets import CLIENT, PORT, SERVER
from tests.test_s15_ledger_carrier import _record, _World
from tests.test_s15_ledger_carrier import world as world  # the fixture
from tests.test_s16_ledger_carrier import SMALL_PAYLOAD, _carrier


def test_fragment_ids_wrap_at_two_to_the_32(world: _World) -> None:
    ledger = world.ledger
    reader = _carrier(ledger, world, "server")
    writer = _carrier(ledger, world, "client", max_payload=SMALL_PAYLOAD)
    writer._next_fragment_id = 0xFFFFFFFF
    records = [os.urandom(5000), os.urandom(7000), os.urandom(3000)]
    writer.send(records)
    assert writer._next_fragment_id == 2  # 0xFFFFFFFF, 0, 1 used
    assert reader.receive() == records
    assert reader.malformed == reader.fragment_clashes == reader.fragments_dropped == 0


def test_a_carrier_resumed_near_the_wrap_goes_round_it(world: _World) -> None:
    ledger = world.ledger
    reader = _carrier(ledger, world, "server")
    old = _carrier(ledger, world, "client", max_payload=SMALL_PAYLOAD)
    old.send([b"first"])
    assert reader.receive() == [b"first"]
    saved = old.state()
    near = CarrierState(**{**saved.__dict__, "next_fragment_id": 0xFFFFFFFF})
    resumed = _carrier(ledger, world, "client", state=near, max_payload=SMALL_PAYLOAD)
    start = resumed._next_fragment_id
    assert 0 <= start < 1 << 32
    jump = (start - 0xFFFFFFFF) & 0xFFFFFFFF
    assert 1 << 20 <= jump < 1 << 31
    big = os.urandom(6000)
    resumed.send([big])
    assert reader.receive() == [big]
    assert resumed.state().next_fragment_id == (start + 1) & 0xFFFFFFFF


def test_a_room_smaller_than_one_record_delivers_it_whole_once(world: _World) -> None:
    """max_bytes=1 and records of 9 pieces each (more than a MIN_PAGE page): each call
    returns at least one whole record, none twice, in order."""
    ledger = world.ledger
    reader = _carrier(ledger, world, "server")
    writer = _carrier(ledger, world, "client", max_payload=SMALL_PAYLOAD)
    records = [_record(bytes([i]) * 16_000) for i in range(5)]
    writer.send(records)
    got: list[bytes] = []
    for _ in range(len(records)):
        portion = reader.receive(max_bytes=1)
        assert portion
        got += portion
        if len(got) == len(records):
            break
    assert got == records
    assert reader.receive(max_bytes=1) == [] and reader.duplicates == 0


def test_lingering_for_retained_records_reads_a_backlog_in_portions(world: _World) -> None:
    """The peer retains its records and posted a backlog larger than the bridge's
    buffer after our side ended: the linger reads it all (every record is offered for
    confirmation) in portions of at most the buffer (before: one call took it all)."""
    ledger = world.ledger
    ledger.faucet(SERVER.sui_address, 1_000_000)
    terms = ledger.create_retention_terms(SERVER, world.host_id, PORT, 60_000, 0)
    peer = LedgerCarrier(
        ledger,
        SERVER,
        world.connection_id,
        peer_address=CLIENT.sui_address,
        retention_terms=terms,
    )
    ours = LedgerCarrier(ledger, CLIENT, world.connection_id, peer_address=SERVER.sui_address)
    peer.send([_record(b"hello")])
    assert ours.receive() == [_record(b"hello")]
    assert ours.peer_retains
    high_water = ledger_bridge._OUT_HIGH_WATER
    count = high_water // 16_000 + 80  # about 5.3 MiB: more than the buffer takes
    peer.send([_record(bytes([i % 256]) * 16_000) for i in range(count)])
    peer.close()  # its pipe gone: the linger ends once it has read that

    largest = 0
    receive = ours.receive

    def measured(*args: Any, **kw: Any) -> list[bytes]:
        nonlocal largest
        records = receive(*args, **kw)
        largest = max(largest, sum(map(len, records)))
        return records

    ours.receive = measured  # type: ignore[method-assign]
    # a deadline far off: the linger ends when it has read the peer's PipeDestroyed,
    # which comes after the whole backlog
    bridge = LedgerBridge(
        ours, name="linger", options=LedgerCarrierOptions(peer_close_grace=300, poll_max=0.5)
    )
    try:
        started = time.monotonic()
        ours.close()
        bridge._linger_for_retained()
        bridge._finish_retention()
        assert time.monotonic() - started < 120
        assert bridge.records_confirmed == count + 1
        assert 0 < largest <= high_water + MIN_PAGE * MAX_PIPE_DATA, largest
    finally:
        bridge.socket.close()
        bridge._sock.close()
