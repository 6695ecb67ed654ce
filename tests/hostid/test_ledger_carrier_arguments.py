"""The ledger carrier: argument types, SYNCs, timeouts, threads.

* ``send(b"...")`` (bytes in place of a list of records) posted one payload per byte,
  each a zero-filled "record" as long as the byte's value, and ``send([7])`` posted
  seven zero bytes: transactions paid for garbage, no error. A TypeError now, before
  anything is posted.
* ``max_record`` was never checked: a wrong type failed in ``receive()`` at the peer's
  first fragmented record (a TypeError from inside the event loop, the rest of that
  page skipped). Checked at construction now, as the other options.
* A SYNC was posted (a transaction of ours) for every peer pipe of the connection at
  the first report, even one of which nothing was ever seen: a peer creating idle pipes
  had us pay a ``pipe::send`` for each. A pipe with nothing seen gets none now.
* ``receive(timeout)`` returned ``[]`` as soon as the ledger had any event of the peer
  (its SYNC, its other connections' traffic), although a record came a moment later:
  it waits the timeout out for a record now.
* Two threads sending (or one sending while another's ``receive`` posts a SYNC) lost
  updates of the per-inner sent counts: the in-flight count fell below what the
  ledger holds.

Everything real: a LocalLedger on a SQLite file (tmp_path) and real carriers; the only
stand-ins are wrappers that signal or pause at a chosen call.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from dtp.hostid.ledger_carrier._carrier import LedgerCarrier
from dtp.ledger._objects import Event, EventFilter
from dtp.ledger.local import LocalLedger
from tests.hostid.retention_world import World
from tests.support.pairs import CLIENT_ID, SERVER_ID


def _carrier(ledger: Any, world: World, who: str, **kw: Any) -> LedgerCarrier:
    me, peer = (CLIENT_ID, SERVER_ID) if who == "client" else (SERVER_ID, CLIENT_ID)
    return LedgerCarrier(ledger, me, world.conn_id, peer_address=peer.sui_address, **kw)


# -- argument types -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [b"abc", bytearray(b"ab"), [7], [b"ok", 3]])
def test_send_refuses_what_is_no_list_of_byte_records(tmp_path: Path, bad: Any) -> None:
    world = World(tmp_path / "ledger.db")
    client = _carrier(world.ledger, world, "client")
    server = _carrier(world.ledger, world, "server")
    with pytest.raises(TypeError):
        client.send(bad)
    # nothing posted: no transaction paid for garbage
    assert client.payloads_sent == 0
    assert all(inner.next_seq == 0 for inner in world.ledger.get_pipe(client.pipe_id).inners)
    # bytes-like records in any sequence are still taken
    client.send((b"one", bytearray(b"two"), memoryview(b"three")))
    assert server.receive(0.0) == [b"one", b"two", b"three"]


@pytest.mark.parametrize(("bad", "error"), [("big", TypeError), (2.5, TypeError), (0, ValueError)])
def test_a_bad_max_record_is_refused_at_construction(
    tmp_path: Path, bad: object, error: type[Exception]
) -> None:
    world = World(tmp_path / "ledger.db")
    with pytest.raises(error, match="max_record"):
        _carrier(world.ledger, world, "server", max_record=bad)


# -- SYNCs ----------------------------------------------------------------------------------


def test_no_sync_is_posted_for_a_peer_pipe_with_nothing_seen(tmp_path: Path) -> None:
    world = World(tmp_path / "ledger.db")
    client = _carrier(world.ledger, world, "client", sync_every=1)
    server = _carrier(world.ledger, world, "server")
    for _ in range(3):  # the peer's idle pipes for this connection
        world.ledger.create_pipe(SERVER_ID, world.conn_id, 8)
    server.send([b"record"])
    assert client.receive(0.0) == [b"record"]
    assert len(client.peer_pipes) == 4
    # one SYNC, for the pipe the record came on; none (no transaction) for the others
    assert client.syncs_sent == 1
    syncs, _ = world.ledger.events(filter=EventFilter(sender=CLIENT_ID.sui_address))
    assert sum(1 for e in syncs if e.name == "PipeDataSent") == 1


# -- receive(timeout) -----------------------------------------------------------------------


class _SignallingLedger:
    """A ledger that sets ``waited`` after each ``wait_events`` call returns."""

    def __init__(self, ledger: LocalLedger) -> None:
        self._ledger = ledger
        self.waited = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    def wait_events(
        self,
        cursor: str | None,
        timeout: float,
        filter: EventFilter | None = None,
        limit: int = 1000,
    ) -> tuple[list[Event], str | None]:
        try:
            return self._ledger.wait_events(cursor, timeout, filter, limit)
        finally:
            self.waited.set()


def test_receive_waits_its_timeout_for_a_record_past_the_peers_sync(tmp_path: Path) -> None:
    world = World(tmp_path / "ledger.db")
    signalling = _SignallingLedger(world.ledger)
    client = _carrier(signalling, world, "client")
    server = _carrier(world.ledger, world, "server", sync_every=1)
    client.send([b"hello"])
    assert server.receive(0.0) == [b"hello"]  # and its SYNC is on the ledger now
    assert server.syncs_sent == 1

    def answer() -> None:
        # once the client's wait has returned the SYNC: the record comes a moment later
        if signalling.waited.wait(5.0):
            server.send([b"answer"])

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        assert client.receive(5.0) == [b"answer"]
    finally:
        signalling.waited.set()
        thread.join(5.0)
    # and with nothing more to come, the wait still ends at its timeout
    assert client.receive(0.2) == []


# -- threads --------------------------------------------------------------------------------


class _PausingLedger:
    """A ledger whose first ``pipe_send`` returns only once ``resume`` is set (or half a
    second passed: a sender serialised behind it cannot set it), ``in_call`` set once
    the ledger took it."""

    def __init__(self, ledger: LocalLedger) -> None:
        self._ledger = ledger
        self.in_call = threading.Event()
        self.resume = threading.Event()
        self._first = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    def pipe_send(self, signer: Any, pipe_id: str, inner: int, data: bytes) -> int:
        seq = self._ledger.pipe_send(signer, pipe_id, inner, data)
        if self._first:
            self._first = False
            self.in_call.set()
            self.resume.wait(0.5)
        return seq


def test_two_threads_sending_keep_the_sent_counts(tmp_path: Path) -> None:
    world = World(tmp_path / "ledger.db")
    pausing = _PausingLedger(world.ledger)
    client = _carrier(pausing, world, "client", inner_count=1)

    def second() -> None:
        pausing.in_call.wait(5.0)
        client.send([b"second"])
        pausing.resume.set()

    thread = threading.Thread(target=second)
    thread.start()
    client.send([b"first"])
    thread.join(5.0)
    assert world.ledger.get_pipe(client.pipe_id).inners[0].next_seq == 2
    # (the first send's seq + 1 was written over the second's: 1 in flight, not 2)
    assert client.in_flight() == [2]
