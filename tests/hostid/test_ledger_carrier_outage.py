"""When the ledger under a ledger-carrier connection fails (LedgerUnavailable), the
connection's error says so: the user got ConnectionLost("the peer vanished (carrier
closed)"), the bridge's error (LedgerBridge.error) lost. Both APIs, a LocalLedger file,
the client's ledger made to fail once connected; the server in this process.

The ledger carrier when the ledger answers some calls and not others, or none for a
while, around reads, acknowledgements and close: nothing read is lost, nothing posted
is left behind. A LocalLedger file; outages simulated by a wrapper whose chosen calls
fail as an unreachable node's do (ChainError ``LedgerUnavailable``).

A ledger carrier that creates its pipe does not read it back: the read failing (the
ledger unavailable for a moment) left the new pipe behind, and the listener's retry
created a second one -- an orphan the host paid to store, which the client also took
for a pipe of its peer."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import struct
import time
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import ChainError, ConnectionLost, DTPError
from dtp.hostid.ledger_carrier import _bridge as ledger_bridge
from dtp.hostid.ledger_carrier._bridge import (
    _MAX_UNSENT,
    LedgerBridge,
    LedgerCarrierOptions,
    LedgerListener,
    connect_ledger_carrier,
)
from dtp.hostid.ledger_carrier._carrier import KIND_RECORD, KIND_SYNC, LedgerCarrier
from dtp.ledger._objects import EventFilter
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from dtp.payments.receipts import object_id_bytes
from dtp.protocol.connection import ConnectionConfig
from dtp.transport._session import Session
from tests.hostid.outages import (
    AbortingEcho,
    Outage,
    OutageWorld,
    bridge_with_outage,
    data_record,
    says_why,
)
from tests.hostid.outages import world as world  # the fixture
from tests.support.ledger_carrier_world import (
    CLIENT,
    DEPOSIT,
    PORT,
    SERVER,
    SLA,
    Host,
    bridge_threads,
    host,
    server_in_thread,
)
from tests.support.polling import wait_for

__all__ = ["host"]  # (the fixture, imported)


class _Breakable:
    """A ledger whose calls fail as a node that does not answer does, once broken."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self.broken = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._ledger, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kw: Any) -> Any:
            if self.broken:
                raise ChainError("the node does not answer", name="LedgerUnavailable")
            return attr(*args, **kw)

        return call


def _options() -> tuple[LedgerCarrierOptions, list[_Breakable]]:
    made: list[_Breakable] = []

    def wrap(ledger: Ledger) -> Ledger:
        made.append(_Breakable(ledger))
        return made[-1]  # type: ignore[return-value]

    # (outage_timeout 0: the first failure ends the carrier; see
    # tests/hostid/test_ledger_carrier_outage_resume.py)
    return LedgerCarrierOptions(ledger_filter=wrap, peer_close_grace=0.2, outage_timeout=0), made


def test_blocking_a_failed_ledger_bridge_says_why(host: Host) -> None:
    options, made = _options()
    echo = AbortingEcho()
    with (
        server_in_thread(host, echo),
        dtp.socket.create_connection(
            host.address,
            ledger=host.ledger,
            identity=CLIENT,
            deposit=DEPOSIT,
            timeout=10,
            ledger_options=options,
        ) as sock,
    ):
        try:
            sock.sendall(b"hi")
            assert sock.recv(2) == b"hi"
            made[0].broken = True
            with pytest.raises(ConnectionLost) as lost:
                sock.recv(2)
        finally:
            echo.abort()
    says_why(lost.value)


def _client_bridges_gone() -> bool:
    return not [t for t in bridge_threads() if "client" in t.name]


def _aio_error_after_the_bridge_fails(host: Host, *, write_after: bool) -> BaseException:
    """An asyncio client on the ledger carrier echoes "hi" with an AbortingEcho server,
    then its bridge fails: the ConnectionLost its next read raises. ``write_after``:
    once the client's bridge threads are gone, it writes a byte first."""
    options, made = _options()
    echo = AbortingEcho()

    async def main() -> BaseException:
        reader, writer = await dtp.aio.open_connection(
            host.address,
            ledger=host.ledger,
            identity=CLIENT,
            deposit=DEPOSIT,
            timeout=10,
            ledger_options=options,
        )
        try:
            writer.write(b"hi")
            assert await asyncio.wait_for(reader.readexactly(2), 10) == b"hi"
            made[0].broken = True
            if write_after:
                # (a thread's wait: the loop must not look at the carrier meanwhile)
                assert wait_for(_client_bridges_gone, 10)
                writer.write(b"x")  # the transport sends at once
            with pytest.raises(ConnectionLost) as lost:
                await asyncio.wait_for(reader.read(2), 10)
            return lost.value
        finally:
            writer.close()
            with contextlib.suppress(DTPError):
                await asyncio.wait_for(writer.wait_closed(), 10)

    with server_in_thread(host, echo):
        try:
            return asyncio.run(main())
        finally:
            echo.abort()


def test_asyncio_a_write_after_the_bridge_failed_says_why(host: Host) -> None:
    """The write side: once the bridge ended, a write meets its closed end (EPIPE)
    before the read side sees the end."""
    says_why(_aio_error_after_the_bridge_fails(host, write_after=True))


def test_asyncio_a_failed_ledger_bridge_says_why(host: Host) -> None:
    says_why(_aio_error_after_the_bridge_fails(host, write_after=False))


@pytest.mark.parametrize("cause", [None, ConnectionLost("the ledger carrier failed: X")])
def test_session_carrier_lost_keeps_the_cause(cause: BaseException | None) -> None:
    """Session.carrier_lost: what the adapters call as their carrier ends, the error
    then raised having the carrier's own as ``__cause__``."""
    session = Session(ConnectionConfig(identity=CLIENT, is_client=True))
    session.carrier_lost(f"carrier error: {cause}" if cause else "the peer vanished", cause)
    session.process_events()
    assert isinstance(session.error, ConnectionLost)
    assert session.error.__cause__ is cause
    with pytest.raises(ConnectionLost) as raised:
        session.take(0, 1)
    assert raised.value.__cause__ is cause


def _pair(world: OutageWorld, **server: Any) -> tuple[LedgerCarrier, LedgerCarrier, Outage]:
    """The client's carrier, and the server's reading through an :class:`Outage`."""
    flaky = Outage(world.ledger)
    client = LedgerCarrier(
        world.ledger, CLIENT, world.connection_id, peer_address=SERVER.sui_address
    )
    host = LedgerCarrier(
        flaky,  # type: ignore[arg-type]
        SERVER,
        world.connection_id,
        peer_address=CLIENT.sui_address,
        **server,
    )
    return client, host, flaky


# -- reading: what was read is handed back, whatever the ledger refused after ------------


def test_records_read_before_a_refused_sync_are_handed_back(world: OutageWorld) -> None:
    """The receiver read the records, then posted its SYNC, which the ledger did not
    take (reads answered, writes not: a LocalLedger file locked by another writer): the
    records were dropped with the error, already marked seen, so never handed back."""
    client, host, flaky = _pair(world, sync_every=1)
    client.send([b"r1", b"r2", b"r3"])
    flaky.down = {"pipe_send"}
    assert host.receive(now=0.0) == [b"r1", b"r2", b"r3"]
    assert flaky.failed == 1 and host.syncs_sent == 0
    # the SYNC stays due: a call with nothing to hand back says why it is not posted
    with pytest.raises(ChainError, match="does not answer"):
        host.receive(now=1.0)
    flaky.down = set()
    assert host.receive(now=2.0) == []  # once only
    assert host.syncs_sent == 1
    sync = [p for p in world.payloads(host.pipe_id) if p[0] == KIND_SYNC]
    assert len(sync) == 1


def test_records_of_a_page_read_before_a_failed_read_are_handed_back(world: OutageWorld) -> None:
    """Events are read a page at a time: when the ledger failed the second page, the
    records of the first (marked seen) went with the error."""
    client, host, flaky = _pair(world, page_size=2)
    reads = 0
    events = flaky.__getattr__("events")

    def second_read_fails(*args: Any, **kw: Any) -> Any:
        nonlocal reads
        reads += 1
        if reads == 2:
            raise ChainError("the node does not answer", name="LedgerUnavailable")
        return events(*args, **kw)

    host.ledger.events = second_read_fails  # type: ignore[method-assign]
    client.send([b"r1", b"r2", b"r3"])
    # read from the client's PipeCreated on: [PipeCreated, r1] [r2, r3] (fails)
    created, _ = world.ledger.events(filter=EventFilter(type="PipeCreated"), limit=10)
    host.cursor = str(int(created[0].cursor) - 1)  # (LocalLedger: cursors are seqs)
    with pytest.raises(ChainError):
        host.receive(now=0.0)
    got = host.receive(now=0.0)
    assert sorted(got) == [b"r1", b"r2", b"r3"]
    assert host.duplicates == 0 and host.receive(now=0.0) == []


def test_a_refused_pipe_sync_loses_no_later_event(world: OutageWorld) -> None:
    """``pipe::sync`` ran while the batch of events was being read: when the ledger did
    not take it, the events after the SYNC in that batch were dropped for good (the
    cursor had passed them), the peer's records with them."""
    host = LedgerCarrier(world.ledger, SERVER, world.connection_id, peer_address=CLIENT.sui_address)
    flaky = Outage(world.ledger)
    client = LedgerCarrier(
        flaky,  # type: ignore[arg-type]
        CLIENT,
        world.connection_id,
        peer_address=SERVER.sui_address,
        sync_every=1000,
    )
    client.send([b"c1", b"c2"])
    assert client.receive(now=0.0) == []  # (learns the host's pipe)
    # the host acknowledges (a SYNC on its pipe), then answers: one batch for the client
    host.sync_every = 1
    assert host.receive(now=0.0) == [b"c1", b"c2"]
    assert host.syncs_sent == 1
    host.send([b"s1", b"s2"])
    flaky.down = {"pipe_sync"}
    assert client.receive(now=0.0) == [b"s1", b"s2"]
    assert flaky.failed >= 1 and client.pipe_syncs == 0
    flaky.down = set()
    assert client.receive(now=0.5) == []
    # and the acknowledgement reached our pipe after all
    assert client.pipe_syncs >= 1 and sum(client.in_flight()) == 0
    assert sum(i.acked for i in world.ledger.get_pipe(client.pipe_id).inners) == 2


# -- closing during an outage -----------------------------------------------------------


def test_a_close_the_ledger_did_not_answer_is_tried_again(world: OutageWorld) -> None:
    """``close()`` marked the carrier closed before ``pipe::destroy``: when the ledger
    did not answer, every later close() returned at once and the pipe stayed."""
    client, _host, flaky = _pair(world)
    flaky_client = LedgerCarrier(
        flaky,  # type: ignore[arg-type]
        CLIENT,
        world.connection_id,
        peer_address=SERVER.sui_address,
        pipe_id=client.pipe_id,
    )
    flaky.down = {"destroy_pipe"}
    with pytest.raises(ChainError):
        flaky_client.close()
    assert flaky_client.closed and not flaky_client.destroyed
    with pytest.raises(RuntimeError):
        flaky_client.send([b"late"])  # closed all the same
    assert not world.pipe_gone(client.pipe_id)
    flaky.down = set()
    flaky_client.close()
    assert flaky_client.destroyed and world.pipe_gone(client.pipe_id)
    flaky_client.close()  # idempotent


def test_a_bridge_closed_during_an_outage_posts_its_last_records_and_destroys_its_pipe(
    world: OutageWorld,
) -> None:
    """The adapter wrote its last records (its CLOSE) and closed its end while the
    ledger did not answer: the bridge dropped those records and gave up destroying its
    pipe at the first failure, so the peer never learnt the connection ended (it waited
    for its idle timeout) and the pipe stayed on the ledger. It rides the outage out
    (``outage_timeout``) for them now."""
    made: list[Outage] = []

    def wrap(ledger: Ledger) -> Ledger:
        made.append(Outage(ledger))
        return made[-1]  # type: ignore[return-value]

    options = LedgerCarrierOptions(ledger_filter=wrap, outage_timeout=120.0)
    bridge = connect_ledger_carrier(
        world.ledger, CLIENT, world.connection_id, SERVER.sui_address, options
    )
    flaky = made[0]
    pipe = bridge.carrier.pipe_id
    try:
        first, last = data_record(b"a" * 40), data_record(b"z" * 60)
        bridge.socket.sendall(first)
        assert wait_for(lambda: len(world.payloads(pipe)) == 1, 60)
        flaky.down = {"*"}
        bridge.socket.sendall(last)
        bridge.socket.close()
        assert wait_for(lambda: flaky.failed >= 3, 60)  # it keeps trying
        assert bridge.running and not world.pipe_gone(pipe)
        flaky.down = set()
        assert wait_for(lambda: world.pipe_gone(pipe), 60)
        bridge.join(60)
        assert not bridge.running and bridge.error is None
        posted = world.payloads(pipe)
        assert posted == [bytes([KIND_RECORD]) + first, bytes([KIND_RECORD]) + last]
    finally:
        flaky.down = set()
        bridge.stop(60)
        bridge.socket.close()


def test_a_bridge_closed_in_an_outage_past_its_timeout_ends(world: OutageWorld) -> None:
    """... but not forever: past ``outage_timeout`` it ends, the pipe left (a later
    close or the connection's settlement deals with it), with the ledger's error."""
    made: list[Outage] = []

    def wrap(ledger: Ledger) -> Ledger:
        made.append(Outage(ledger))
        return made[-1]  # type: ignore[return-value]

    options = LedgerCarrierOptions(ledger_filter=wrap, outage_timeout=0.3)
    bridge = connect_ledger_carrier(
        world.ledger, CLIENT, world.connection_id, SERVER.sui_address, options
    )
    flaky = made[0]
    try:
        flaky.down = {"*"}
        bridge.socket.sendall(data_record(b"z" * 60))
        bridge.socket.close()
        bridge.join(60)
        assert not bridge.running
        assert isinstance(bridge.error, ChainError) and bridge.error.name == "LedgerUnavailable"
        assert not world.pipe_gone(bridge.carrier.pipe_id)
    finally:
        flaky.down = set()
        bridge.stop(60)
        bridge.socket.close()


# -- an outage of transactions alone ----------------------------------------------------


def test_a_ledger_that_takes_no_transaction_is_not_ridden_out_forever(world: OutageWorld) -> None:
    """Reads answered, transactions not: each read that answered ended the outage, so
    ``outage_timeout`` never ran out (the connection went on, posting nothing, until its
    idle timeout). The outage now lasts until a post goes through."""
    bridge, flaky = bridge_with_outage(world, outage_timeout=0.5)
    try:
        flaky.down = {"pipe_send"}
        bridge.socket.sendall(data_record(b"x" * 32))
        bridge.join(60)
        assert not bridge.running
        assert isinstance(bridge.error, ChainError) and bridge.error.name == "LedgerUnavailable"
        assert bridge.outages == 1  # one outage, not one per failed post
    finally:
        flaky.down = set()
        bridge.stop(60)
        bridge.socket.close()


def test_a_record_the_ledger_did_not_take_is_posted_when_it_answers_again(
    world: OutageWorld,
) -> None:
    """What the ledger did not take is posted again at each turn, so an outage that ends
    just before ``outage_timeout`` keeps the connection (and a record the adapter will
    not write again, such as its CLOSE, is not lost)."""
    bridge, flaky = bridge_with_outage(world, outage_timeout=120.0)
    pipe = bridge.carrier.pipe_id
    try:
        flaky.down = {"pipe_send"}
        record = data_record(b"y" * 48)
        bridge.socket.sendall(record)
        assert wait_for(lambda: flaky.failed >= 3, 60)
        assert world.payloads(pipe) == []
        flaky.down = set()
        assert wait_for(lambda: world.payloads(pipe) == [bytes([KIND_RECORD]) + record], 60)
        assert bridge.running and bridge.error is None and bridge.outages == 1
        assert bridge.records_posted == 1
    finally:
        bridge.stop(60)
        bridge.socket.close()


# -- a bridge that cannot be made ------------------------------------------------------


def _no_descriptor_left(*args: Any, **kw: Any) -> Any:
    raise OSError(errno.EMFILE, "Too many open files")


def _pipes(world: OutageWorld, kind: str, owner: str) -> set[str]:
    events, _ = world.ledger.events(filter=EventFilter(type=kind), limit=1000)
    return {str(e["pipe"]) for e in events if kind == "PipeDestroyed" or e["owner"] == owner}


def test_a_listener_that_cannot_bridge_a_connection_destroys_the_pipe_it_made(
    world: OutageWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listener created the host's pipe, then could not make the bridge (no
    descriptor left for its socket pair): the pipe stayed on the ledger for good."""
    accepted: list[LedgerBridge] = []
    listener = LedgerListener(world.ledger, SERVER, world.host_id, PORT, accepted.append)
    try:
        monkeypatch.setattr(ledger_bridge.socket, "socketpair", _no_descriptor_left)
        client = LedgerCarrier(
            world.ledger, CLIENT, world.connection_id, peer_address=SERVER.sui_address
        )
        assert wait_for(lambda: _pipes(world, "PipeCreated", SERVER.sui_address), 60)
        hosts = _pipes(world, "PipeCreated", SERVER.sui_address)
        assert wait_for(lambda: hosts <= _pipes(world, "PipeDestroyed", ""), 60)
        assert accepted == [] and listener.accepted == 0
        client.close()
    finally:
        listener.close(60)


def test_a_client_bridge_that_cannot_be_made_destroys_its_pipe(
    world: OutageWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_bridge.socket, "socketpair", _no_descriptor_left)
    with pytest.raises(OSError, match="Too many open files"):
        connect_ledger_carrier(world.ledger, CLIENT, world.connection_id, SERVER.sui_address)
    ours = _pipes(world, "PipeCreated", CLIENT.sui_address)
    assert len(ours) == 1 and ours <= _pipes(world, "PipeDestroyed", "")


# -- nonsense arguments -----------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"page_size": 0},  # receive() never saw a short page: it spun forever
        {"page_size": -1},
        {"sync_every": 0},
        {"sync_interval": 0.0},
        {"gap_timeout": float("nan")},  # no gap was ever given up
        {"gap_timeout": -1.0},
    ],
)
def test_nonsense_carrier_arguments_are_refused(world: OutageWorld, bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        LedgerCarrier(
            world.ledger, SERVER, world.connection_id, peer_address=CLIENT.sui_address, **bad
        )
    # refused before any transaction: no pipe was created
    assert _pipes(world, "PipeCreated", SERVER.sui_address) == set()


def test_a_report_of_more_than_was_sent_acknowledges_nothing_sent_later(world: OutageWorld) -> None:
    """A SYNC from the peer claiming every seq: only what had been sent is acknowledged
    (``pipe::sync``), not what is posted after it."""
    client, host, _ = _pair(world)
    client.send([b"first"])
    assert host.receive(now=0.0) == [b"first"]
    forged = (
        bytes([KIND_SYNC])
        + object_id_bytes(client.pipe_id)
        + bytes([4])
        + struct.pack("<4Q", *[2**64 - 1] * 4)
    )
    world.ledger.pipe_send(SERVER, host.pipe_id, 0, forged)
    assert client.receive(now=0.0) == []
    assert client.pipe_syncs == 1 and sum(client.in_flight()) == 0
    client.send([b"a", b"b", b"c", b"d"])
    assert client.receive(now=1.0) == []
    assert sum(client.in_flight()) == 4
    assert sum(i.acked for i in world.ledger.get_pipe(client.pipe_id).inners) == 1


def test_a_long_outage_keeps_only_the_newest_records_to_post_again(world: OutageWorld) -> None:
    """What the adapter writes during an outage is not kept without bound: the newest
    records only (the connection retransmits the rest)."""
    bridge, flaky = bridge_with_outage(world, outage_timeout=120.0)
    pipe = bridge.carrier.pipe_id
    try:
        flaky.down = {"pipe_send"}
        records = [data_record(bytes([i]) * 20) for i in range(3 * _MAX_UNSENT)]
        bridge.socket.sendall(b"".join(records))
        assert wait_for(lambda: flaky.failed >= 3, 60)
        before = flaky.failed
        assert wait_for(lambda: flaky.failed > before, 60)  # (all read by now)
        flaky.down = set()
        expected = [bytes([KIND_RECORD]) + r for r in records[-_MAX_UNSENT:]]
        assert wait_for(lambda: world.payloads(pipe) == expected, 60)
        assert bridge.running and bridge.records_posted == _MAX_UNSENT
    finally:
        bridge.stop(60)
        bridge.socket.close()


def test_a_bridge_whose_peer_left_rides_out_an_outage_to_destroy_its_pipe(
    world: OutageWorld,
) -> None:
    """The peer destroyed its pipe; the adapter closed while the ledger did not answer:
    one failed ``pipe::destroy`` and our pipe stayed on the ledger."""
    bridge, flaky = bridge_with_outage(world, outage_timeout=120.0)
    pipe = bridge.carrier.pipe_id
    try:
        host = LedgerCarrier(
            world.ledger, SERVER, world.connection_id, peer_address=CLIENT.sui_address
        )
        host.close()
        bridge.socket.settimeout(60)
        assert bridge.socket.recv(10) == b""  # the carrier ended for the adapter
        flaky.down = {"*"}
        bridge.socket.close()
        assert wait_for(lambda: flaky.failed >= 3, 60)
        assert bridge.running and not world.pipe_gone(pipe)
        flaky.down = set()
        assert wait_for(lambda: world.pipe_gone(pipe), 60)
        bridge.join(60)
        assert not bridge.running and bridge.error is None
    finally:
        flaky.down = set()
        bridge.stop(60)
        bridge.socket.close()


class _Flaky:
    """The ledger, whose next ``get_pipe`` fails as an unavailable node's does."""

    def __init__(self, ledger: LocalLedger) -> None:
        self._ledger = ledger
        self.fails = 1

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._ledger, name)
        if name != "get_pipe":
            return attr

        def get_pipe(*args: Any, **kwargs: Any) -> Any:
            if self.fails:
                self.fails -= 1
                raise ChainError("node does not answer", name="LedgerUnavailable")
            return attr(*args, **kwargs)

        return get_pipe


def test_one_host_pipe_per_connection_when_a_read_fails(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.db")
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "echo", SLA)
    ledger.faucet(CLIENT.sui_address, 1_000_000)
    cap = ledger.create_spending_cap(CLIENT, DEPOSIT)
    cid = ledger.open_connection(CLIENT, host_id, PORT, cap, DEPOSIT).connection_id
    accepted: list[Any] = []
    listener = LedgerListener(
        ledger,
        SERVER,
        host_id,
        PORT,
        accepted.append,
        options=LedgerCarrierOptions(ledger_filter=_Flaky),
        poll=0.02,
    )
    try:
        ledger.create_pipe(CLIENT, cid, 4)  # the client reaches the host over the ledger
        deadline = time.monotonic() + 10
        while not accepted and time.monotonic() < deadline:
            time.sleep(0.02)
        assert accepted
        time.sleep(0.3)  # (a retry, had there been one, made its pipe by now)
        created, _ = ledger.events(filter=EventFilter(type="PipeCreated"), limit=100)
        host_pipes = [e["pipe"] for e in created if e["owner"] == SERVER.sui_address]
        assert len(host_pipes) == 1, host_pipes
    finally:
        for bridge in accepted:
            bridge.socket.close()
            bridge.join(5)
        listener.close()
    destroyed, _ = ledger.events(filter=EventFilter(type="PipeDestroyed"), limit=100)
    assert sum(1 for e in destroyed if e["pipe"] in host_pipes) == 1
    ledger.close()
