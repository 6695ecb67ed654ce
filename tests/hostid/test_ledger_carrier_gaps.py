"""The ledger carrier: gaps, resuming, reclaiming, options.

* Gaps: when a lane's ``gap_timeout`` fires, every seq still missing below the largest
  one seen when the timer started is given up at once (not one gap per timeout), so
  under steady loss the seen-above sets stay bounded and the acknowledged prefix keeps
  up.
* Resuming (``state=``): a gap pending in the snapshot gets its timer, and the peer's
  retained records waiting to be confirmed are in the snapshot, so they are confirmed
  (the sender's deposits come back).
* ``reclaim_storage``: two reclaims overlapping a send keep the records sent meanwhile
  in ``retained``, and two deleting one record do not raise.
* ``LedgerCarrierOptions`` refuses counts that are no integers (1.5, True) when made,
  not once a connection is; a send on a closed carrier raises ConnectionClosed.

Everything real: a LocalLedger on a SQLite file (tmp_path), real carriers; the only
stand-ins are wrappers that drop chosen events or pause a chosen call.
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from dtp.errors import ConnectionClosed
from dtp.hostid.ledger_carrier._bridge import LedgerCarrierOptions
from dtp.hostid.ledger_carrier._carrier import CarrierState, LedgerCarrier, confirm_records
from dtp.ledger._objects import Event, EventFilter
from dtp.ledger.local import LocalLedger
from tests.hostid.retention_world import World
from tests.support.pairs import CLIENT_ID, SERVER_ID


class _Clock:
    """A virtual clock the carriers read."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Dropping:
    """A ledger whose ``PipeDataSent`` events of chosen (inner, seq) never arrive."""

    def __init__(self, ledger: LocalLedger, lost: set[tuple[int, int]]) -> None:
        self._ledger = ledger
        self.lost = lost

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    def events(
        self, cursor: str | None = None, filter: EventFilter | None = None, limit: int = 1000
    ) -> tuple[list[Event], str | None]:
        events, cursor = self._ledger.events(cursor, filter, limit)
        kept = [
            e
            for e in events
            if e.name != "PipeDataSent" or (int(e["inner"]), int(e["seq"])) not in self.lost
        ]
        return kept, cursor

    def wait_events(
        self,
        cursor: str | None,
        timeout: float,
        filter: EventFilter | None = None,
        limit: int = 1000,
    ) -> tuple[list[Event], str | None]:
        return self.events(cursor, filter, limit)


def _carrier(ledger: Any, world: World, who: str, **kw: Any) -> LedgerCarrier:
    me, peer = (CLIENT_ID, SERVER_ID) if who == "client" else (SERVER_ID, CLIENT_ID)
    return LedgerCarrier(ledger, me, world.conn_id, peer_address=peer.sui_address, **kw)


# -- gaps -----------------------------------------------------------------------------------


def test_every_gap_older_than_the_timeout_is_given_up_at_once(tmp_path: Path) -> None:
    world = World(tmp_path / "ledger.db")
    clock = _Clock()
    kw: dict[str, Any] = {
        "inner_count": 1,
        "clock": clock,
        "gap_timeout": 0.5,
        "sync_every": 1000,
        "sync_interval": 1000.0,
    }
    writer = _carrier(world.ledger, world, "client", **kw)
    lossy = _Dropping(world.ledger, {(0, seq) for seq in (0, 2, 4, 6, 8)})
    reader = _carrier(lossy, world, "server", **kw)
    writer.send([bytes([i]) * 20 for i in range(12)])
    assert len(reader.receive(now=0.0)) == 7
    lane = reader._lanes[writer.pipe_id][0]
    assert (lane.prefix, sorted(lane.above)) == (0, [1, 3, 5, 7, 9, 10, 11])
    reader.poll(0.6)
    # (one gap per timer: prefix 2, then 4 at 1.1, 6 at 1.6, ...)
    assert (lane.prefix, lane.above, lane.gap_since) == (12, set(), None)
    assert reader.gaps_given_up == 5


def test_steady_loss_keeps_the_seen_sets_bounded(tmp_path: Path) -> None:
    """5 % of 200 payloads a second lost, for 10 s of virtual time: the gaps go as fast
    as they come, so the receiver holds no more than about two timeouts' worth of seqs
    above its prefix (it held ever more: over 1000 here), and the sender's pipe is
    acknowledged up to about as far."""
    world = World(tmp_path / "ledger.db")
    clock = _Clock()
    rng = random.Random(30)
    kw: dict[str, Any] = {
        "inner_count": 1,
        "clock": clock,
        "gap_timeout": 0.5,
        "sync_every": 64,
        "sync_interval": 0.25,
    }
    writer = _carrier(world.ledger, world, "client", **kw)
    lossy = _Dropping(world.ledger, set())
    reader = _carrier(lossy, world, "server", **kw)
    lane_sizes: list[int] = []
    for step in range(1, 101):
        clock.now = step * 0.1
        seq = writer._sent[0]
        lossy.lost |= {(0, seq + i) for i in range(20) if rng.random() < 0.05}
        writer.send([b"x" * 32] * 20)
        reader.receive(now=clock.now)
        writer.receive(now=clock.now)  # the SYNCs: pipe::sync
        lane_sizes.append(len(reader._lanes[writer.pipe_id][0].above))
    assert len(lossy.lost) > 50
    # two timeouts' worth (200 seqs: the running timer's, and those it started with),
    # plus a step's
    assert max(lane_sizes) <= 250
    assert writer.in_flight()[0] <= 300
    assert reader.gaps_given_up >= len(lossy.lost) - 50


# -- resuming -------------------------------------------------------------------------------


def test_a_resumed_carrier_gives_up_the_gap_of_its_snapshot(tmp_path: Path) -> None:
    world = World(tmp_path / "ledger.db")
    clock = _Clock()
    kw: dict[str, Any] = {
        "inner_count": 1,
        "clock": clock,
        "gap_timeout": 0.5,
        "sync_every": 1,
        "sync_interval": 0.25,
    }
    writer = _carrier(world.ledger, world, "client", **kw)
    lossy = _Dropping(world.ledger, {(0, 0)})
    reader = _carrier(lossy, world, "server", **kw)
    writer.send([b"a" * 20, b"b" * 20, b"c" * 20])
    assert len(reader.receive(now=0.0)) == 2
    saved = CarrierState(**asdict(reader.state()))  # (plain data: stored, loaded)
    assert saved.lanes[writer.pipe_id] == [(0, [1, 2])]

    clock.now = 10.0
    resumed = _carrier(lossy, world, "server", state=saved, **kw)
    assert resumed.get_timer() == pytest.approx(10.5)  # (None: the gap was kept for good)
    resumed.receive(now=11.0)
    lane = resumed._lanes[writer.pipe_id][0]
    assert (lane.prefix, lane.above) == (3, set())
    assert resumed.gaps_given_up == 1
    writer.receive(now=11.0)  # the resumed carrier's SYNC
    assert writer.in_flight() == [0]


def test_a_resumed_carrier_confirms_what_its_snapshot_had_to_confirm(tmp_path: Path) -> None:
    """The peer retains its records: one whose payload was handed on (to confirm) and one
    whose data event never came (pending, given up ``gap_timeout`` after its
    RecordRetained). A carrier resumed from a snapshot taken then confirms both, as the
    old one would have; a snapshot from before these fields still loads."""
    world = World(tmp_path / "ledger.db")
    clock = _Clock()
    writer = _carrier(
        world.ledger, world, "client", clock=clock, inner_count=1, retention_terms=world.terms
    )
    lossy = _Dropping(world.ledger, {(0, 1)})  # the second record's data event
    reader = _carrier(lossy, world, "server", clock=clock, inner_count=1)
    writer.send([b"r" * 40, b"s" * 40])
    records = list(writer.retained)
    assert len(records) == 2
    assert reader.receive(now=0.0) == [b"r" * 40]
    saved = reader.state()
    assert saved.to_confirm == records[:1]
    assert list(saved.retained_pending) == records[1:]

    plain = CarrierState(**asdict(saved))  # (plain data: stored, loaded)
    resumed = _carrier(lossy, world, "server", state=plain, clock=clock, inner_count=1)
    assert resumed.peer_retains
    resumed.receive(now=5.0)  # past gap_timeout (2 s): the pending one is given up
    assert resumed.confirm_retained() == 2
    assert all(world.ledger.get_retained_record(r).consumed for r in records)

    older = {k: v for k, v in asdict(saved).items() if k not in ("retained_pending", "to_confirm")}
    again = _carrier(lossy, world, "server", state=CarrierState(**older), clock=clock)
    again.receive(now=5.0)
    assert again.take_confirmations() == []


# -- reclaiming -----------------------------------------------------------------------------


class _Pausing:
    """A ledger whose ``method`` stops, in the thread named ``paused``, at its first call
    until ``gate`` is set (``entered`` says it got there)."""

    def __init__(self, ledger: LocalLedger, method: str, paused: str) -> None:
        self._ledger = ledger
        self.method, self.paused = method, paused
        self.gate, self.entered = threading.Event(), threading.Event()

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._ledger, name)
        if name != self.method:
            return real

        def call(*args: Any) -> Any:
            if threading.current_thread().name == self.paused and not self.entered.is_set():
                self.entered.set()
                assert self.gate.wait(10)
            return real(*args)

        return call


def _reclaim_in_thread(carrier: LedgerCarrier, name: str) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(carrier.reclaim_storage())
        except Exception as exc:  # the reclaim's error is the result
            outcome.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread, outcome


def test_reclaims_overlapping_a_send_keep_the_records_sent_meanwhile(tmp_path: Path) -> None:
    world = World(tmp_path / "ledger.db")
    ledger = world.ledger
    pausing = _Pausing(ledger, "get_retained_record", "reclaim-a")
    writer = _carrier(pausing, world, "client", clock=_Clock(), retention_terms=world.terms)
    writer.send([b"old%d" % i * 8 for i in range(4)])
    old = list(writer.retained)
    confirm_records(ledger, SERVER_ID, old)
    ledger.set_clock(10**9)  # past the retention time

    first, outcome = _reclaim_in_thread(writer, "reclaim-a")
    assert pausing.entered.wait(10)  # it holds the 4 old records
    writer.send([b"new%d" % i * 8 for i in range(4)])  # the bridge goes on sending
    new = writer.retained[4:]
    assert writer.reclaim_storage() > 0  # another reclaim: the old ones go
    assert writer.retained == new
    pausing.gate.set()
    first.join(10)
    assert outcome == [0]
    assert writer.retained == new  # (was []: the new ones were never reclaimed)

    confirm_records(ledger, SERVER_ID, new)
    ledger.set_clock(2 * 10**9)  # (they were stored at 10**9)
    assert writer.reclaim_storage() > 0
    assert writer.retained == []


def test_two_reclaims_deleting_one_record_do_not_fail(tmp_path: Path) -> None:
    world = World(tmp_path / "ledger.db")
    ledger = world.ledger
    pausing = _Pausing(ledger, "delete_retained", "reclaim-a")
    writer = _carrier(pausing, world, "client", clock=_Clock(), retention_terms=world.terms)
    writer.send([b"rec%d" % i * 8 for i in range(3)])
    confirm_records(ledger, SERVER_ID, list(writer.retained))
    ledger.set_clock(10**9)

    first, outcome = _reclaim_in_thread(writer, "reclaim-a")
    assert pausing.entered.wait(10)  # about to delete the first record
    refunded = writer.reclaim_storage()  # deletes all three
    assert refunded > 0 and writer.retained == []
    pausing.gate.set()
    first.join(10)
    assert outcome == [0]  # (was ObjectNotFound: the record it was deleting was gone)
    assert writer.reclaimed == refunded


# -- options, closing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"sync_every": 1.5},
        {"sync_every": True},
        {"inner_count": 2.5},
        {"inner_count": True},
        {"max_payload": 1000.5},
    ],
)
def test_options_refuse_counts_that_are_not_integers(bad: dict[str, Any]) -> None:
    """Taken, these failed only when a carrier was made for a connection (a server: in
    its listener thread, logged for each one). A TypeError."""
    with pytest.raises(TypeError, match=next(iter(bad))):
        LedgerCarrierOptions(**bad)


def test_a_carrier_refuses_a_max_payload_that_is_no_integer(tmp_path: Path) -> None:
    world = World(tmp_path / "ledger.db")
    with pytest.raises(TypeError, match="max_payload"):
        _carrier(world.ledger, world, "client", max_payload=1000.5)


def test_a_send_on_a_closed_carrier_raises_connection_closed(tmp_path: Path) -> None:
    world = World(tmp_path / "ledger.db")
    writer = _carrier(world.ledger, world, "client", clock=_Clock())
    writer.close()
    with pytest.raises(ConnectionClosed) as caught:
        writer.send([b"late"])
    assert isinstance(caught.value, RuntimeError)  # (what it raised before)
