"""The ledger carrier's reassembly of fragmented records holds no more than a record's
worth per fragment id: a hostile peer posting full-size pieces under a fragment id with
255 of them cannot make the carrier keep 255 x 16 KiB per id (64 ids: 267 MB), for a
DTP record that can be at most 16 KiB (the bridge's carriers are given that bound;
others keep taking any record 255 fragments carry). A LocalLedger in memory.

The ledger carrier when two carriers write to one pipe, and when its reader is slow.

- Fragment ids: the reader joins pieces by (pipe, id). A pipe has two writers when a
  carrier adopts its side's pipe (``pipe_id=``) while the old one still posts, or
  resumes from a snapshot (``state=``) that is older than what the old one sent. Ids
  start at random (a resumed carrier: a random jump past its snapshot's), and the
  reader drops, never joins, pieces of an id that carries two records: no garbled
  record, none lost to a clash.
- Backpressure: the bridge stops reading beyond 4 MiB it holds for its adapter, and
  ``receive(max_bytes=...)`` stops at the room left, so a backlog never comes in whole
  as soon as the adapter takes a byte.

Real LocalLedger files (tmp_path) and real DTP connections over the carrier.

The ledger carrier: fragment ids at the wrap, small pages, and
the bridge's last reads.

* Fragment ids wrap at 2**32, a resumed carrier's jump included: records framed
  across the wrap arrive whole and in order (no fault found; kept as a guard).
* A room smaller than one record still delivers it, whole, once (no fault found).
* After our side ended, a bridge whose peer retains its records reads the peer's last
  ones to confirm them, in portions no larger than the bridge's buffer (never a backlog
  into memory whole), one after the other without waiting, so it still reads to the
  end before its deadline.

Everything real: a LocalLedger on a SQLite file, real carriers and bridges."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from functools import partial
from typing import Any

import pytest

from dtp.errors import ChainError
from dtp.hostid.ledger_carrier import _bridge as ledger_bridge
from dtp.hostid.ledger_carrier._bridge import (
    _MAX_UNSENT,
    LedgerBridge,
    LedgerCarrierOptions,
    LedgerListener,
    _valid_record,
    connect_ledger_carrier,
    ledger_config,
)
from dtp.hostid.ledger_carrier._carrier import (
    KIND_FRAGMENT,
    KIND_RECORD,
    MAX_DTP_RECORD,
    MAX_PIPE_DATA,
    MIN_PAGE,
    CarrierState,
    LedgerCarrier,
    LedgerLink,
    frame_record,
)
from dtp.ledger.interface import Ledger
from dtp.protocol._events import DatagramReceived, PeerAuthenticated
from dtp.protocol.connection import Connection, ConnectionConfig
from tests.hostid.ledger_carrier_pairs import World
from tests.hostid.outages import (
    OutageWorld,
    bridge_with_outage,
    data_record,
)
from tests.hostid.outages import world as world  # the fixture
from tests.support.ledger_carrier_world import CLIENT, PORT, SERVER
from tests.support.pairs import CLIENT_ID, Side
from tests.support.polling import wait_for

_HEADER = struct.Struct("<BIBB")


def test_fragments_beyond_a_records_size_are_dropped() -> None:
    world = World()
    cc, sc = world.carriers(max_record=MAX_DTP_RECORD)  # as the bridge's carriers
    piece = b"p" * (MAX_PIPE_DATA - _HEADER.size)
    for index in range(4):  # 64 KiB under one id that claims 255 pieces
        payload = _HEADER.pack(KIND_FRAGMENT, 7, index, 255) + piece
        world.ledger.pipe_send(CLIENT_ID, cc.pipe_id, 0, payload)
    assert sc.receive() == []
    assert sc.malformed == 2  # (pieces 0-1 over the size, then 2-3 again)
    held = sum(len(p) for _, parts in sc._partial.values() for p in parts.values())
    assert held <= MAX_DTP_RECORD
    # a record in fragments still comes whole
    record = bytes(range(256)) * 64  # 16 KiB
    for payload in frame_record(record, 8, 1000):
        world.ledger.pipe_send(CLIENT_ID, cc.pipe_id, 0, payload)
    assert sc.receive() == [record]


SMALL_PAYLOAD = 2000  # a 16 KiB record goes in 9 fragments


def _connections(now: float = 0.0) -> tuple[Connection, Connection]:
    """A client and a server connection of CLIENT and SERVER, as the ledger carrier runs
    them (``ledger_config``: lossy carrier, records that fit one payload)."""
    client = Connection(
        ledger_config(
            ConnectionConfig(identity=CLIENT, is_client=True, server_static=SERVER.noise_public)
        ),
        ephemeral_key=os.urandom(32),
        now=now,
    )
    server = Connection(
        ledger_config(ConnectionConfig(identity=SERVER, is_client=False)),
        ephemeral_key=os.urandom(32),
        now=now,
    )
    return client, server


def _carrier(ledger: Any, world: OutageWorld, who: str, **kw: Any) -> LedgerCarrier:
    me, peer = (CLIENT, SERVER) if who == "client" else (SERVER, CLIENT)
    return LedgerCarrier(
        ledger, me, world.connection_id, peer_address=peer.sui_address, clock=lambda: 0.0, **kw
    )


def stepper(c: Side, s: Side) -> Callable[[], None]:
    def step() -> None:
        c.drain()
        s.drain()
        if s.of(PeerAuthenticated) and not s.conn.established and not s.conn.closed:
            s.conn.accept()

    return step


def _record_calls(carrier: LedgerCarrier, name: str, seen: list[bytes]) -> None:
    """Keep every record that passes ``carrier.<name>`` (send: in, receive: out)."""
    method = getattr(carrier, name)

    def call(*args: Any, **kw: Any) -> Any:
        if name == "send":
            seen.extend(bytes(r) for r in args[0])
            return method(*args, **kw)
        records = method(*args, **kw)
        seen.extend(records)
        return records

    setattr(carrier, name, call)


class _TakingTurns:
    """A ledger on which the ``pipe_send`` calls of the threads :meth:`run` starts take
    turns, one payload each, as two writers posting at once interleave on a real
    ledger. Calls from other threads pass straight through."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._cond = threading.Condition()
        self._who: dict[int, int] = {}
        self._turn = 0
        self._done: set[int] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    def pipe_send(self, *args: Any, **kw: Any) -> int:
        me = self._who.get(threading.get_ident())
        if me is None:
            return int(self._ledger.pipe_send(*args, **kw))
        with self._cond:
            assert self._cond.wait_for(lambda: self._turn == me or 1 - me in self._done, 30)
            try:
                return int(self._ledger.pipe_send(*args, **kw))
            finally:
                self._turn = 1 - me
                self._cond.notify_all()

    def run(self, first: Callable[[], None], second: Callable[[], None]) -> None:
        errors: list[BaseException] = []

        def job(i: int, fn: Callable[[], None]) -> None:
            self._who[threading.get_ident()] = i
            try:
                fn()
            except BaseException as exc:  # re-raised in the test's thread
                errors.append(exc)
            finally:
                with self._cond:
                    self._done.add(i)
                    self._cond.notify_all()

        threads = [
            threading.Thread(target=job, args=(i, fn)) for i, fn in enumerate((first, second))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        if errors:
            raise errors[0]


# -- fault 1: two writers on one pipe ----------------------------------------------------


def test_two_carriers_posting_on_one_pipe_at_once_never_garble_a_record(world: OutageWorld) -> None:
    """The client's carrier is made again for its connection, adopting its pipe, while
    the old one still posts the connection's last records: both post at once, payload
    by payload. Every record handed to the server's connection is one the client's
    produced (never pieces of two records joined into one), none is lost to a clash,
    and the streams arrive exact."""
    turns = _TakingTurns(world.ledger)
    old = _carrier(turns, world, "client", max_payload=SMALL_PAYLOAD)
    sc = _carrier(world.ledger, world, "server", max_payload=SMALL_PAYLOAD)
    client, server = _connections()
    c, s = Side(client), Side(server)
    link = LedgerLink(client, server, old, sc)
    step = stepper(c, s)
    assert link.run(lambda: client.established and server.established, on_round=step)

    produced: list[bytes] = []
    handed: list[bytes] = []
    _record_calls(old, "send", produced)
    _record_calls(sc, "receive", handed)
    # a reconnect: a new carrier for the connection on the same pipe
    new = LedgerCarrier(
        turns,  # type: ignore[arg-type]
        CLIENT,
        world.connection_id,
        peer_address=SERVER.sui_address,
        pipe_id=old.pipe_id,
        max_payload=SMALL_PAYLOAD,
        clock=lambda: 0.0,
    )
    _record_calls(new, "send", produced)
    payloads = {}
    for i in range(6):
        sid = client.open_stream()
        payloads[sid] = os.urandom(16_000 + i)
        client.send_stream_data(sid, payloads[sid], end_stream=True)
    records = client.datagrams_to_send(link.now)
    assert len(records) >= 6 and max(map(len, records)) > 8 * SMALL_PAYLOAD
    # the old carrier posts every other record, the new one the rest, at once
    turns.run(lambda: old.send(records[0::2]), lambda: new.send(records[1::2]))
    link.ca = new  # the new carrier goes on alone
    assert link.run(lambda: set(payloads) <= s.eof, on_round=step, max_time=600)

    for sid, data in payloads.items():
        assert bytes(s.data[sid]) == data
    garbled = [r for r in handed if r not in set(produced)]
    assert not garbled, f"{len(garbled)} records the client never sent"
    assert sc.fragment_clashes == 0 and sc.malformed == 0
    # each record the two posted at once came through whole, the first time
    assert set(records) <= set(handed)


def test_a_carrier_resumed_from_an_old_snapshot_does_not_reuse_its_fragment_ids(
    world: OutageWorld,
) -> None:
    """A carrier snapshotted, went on posting (a record cut off after its first
    piece: the process died), and was resumed from the snapshot. Resumed at the
    snapshot's ``next_fragment_id``, its first fragmented record would take the id of
    that cut-off record, so it starts a random jump past the snapshot's id; the
    snapshot still records the id, and round-trips as plain data."""
    ledger = world.ledger
    reader = _carrier(ledger, world, "server")
    old = _carrier(ledger, world, "client", max_payload=SMALL_PAYLOAD)
    first = os.urandom(5000)
    old.send([first])
    assert reader.receive() == [first]
    saved = CarrierState(**asdict(old.state()))  # (plain data: stored, loaded)
    assert saved.next_fragment_id == (old._next_fragment_id) & 0xFFFFFFFF

    # after the snapshot: a 3-piece record of which only the first piece was posted
    cut_id = old._next_fragment_id
    cut = frame_record(os.urandom(5000), cut_id, SMALL_PAYLOAD)
    assert len(cut) == 3
    ledger.pipe_send(CLIENT, old.pipe_id, 0, cut[0])
    assert reader.receive() == []

    resumed = _carrier(ledger, world, "client", state=saved, max_payload=SMALL_PAYLOAD)
    second = os.urandom(3000)  # 2 pieces: the cut-off record's id claimed 3
    resumed.send([second])
    assert reader.receive() == [second]
    assert reader.malformed == 0 and reader.fragment_clashes == 0
    jump = (resumed._next_fragment_id - 1 - saved.next_fragment_id) & 0xFFFFFFFF
    assert 1 << 20 <= jump < 1 << 31
    again = _carrier(ledger, world, "client", state=saved, max_payload=SMALL_PAYLOAD)
    assert again._next_fragment_id != resumed._next_fragment_id - 1  # (2**-31 to fail)
    # and state() goes on from where the resumed carrier is
    assert resumed.state().next_fragment_id == (resumed._next_fragment_id) & 0xFFFFFFFF


def test_new_carriers_on_one_pipe_start_their_fragment_ids_apart(world: OutageWorld) -> None:
    ledger = world.ledger
    first = _carrier(ledger, world, "client")
    ids = {first._next_fragment_id}
    for _ in range(4):
        adopted = _carrier(ledger, world, "client", pipe_id=first.pipe_id)
        ids.add(adopted._next_fragment_id)
    assert len(ids) == 5  # (random 32-bit starts: about 1e-8 to fail)
    assert all(0 <= i < 1 << 32 for i in ids)


def _frag(fid: int, index: int, count: int, body: bytes) -> bytes:
    return bytes([KIND_FRAGMENT]) + fid.to_bytes(4, "little") + bytes([index, count]) + body


def test_pieces_of_two_records_under_one_id_are_dropped_never_joined(world: OutageWorld) -> None:
    """A peer whose two writers still count from 0 (an older version): pieces of two
    records under one id, interleaved. They were joined into one record made of both;
    now the clash is seen (a piece for an index held with other bytes) and every piece
    of that id is dropped and counted, while other ids still come whole."""
    ledger = world.ledger
    reader = _carrier(ledger, world, "server")
    writer = _carrier(ledger, world, "client")
    x = frame_record(b"X" * 5000, 0, SMALL_PAYLOAD)
    y = frame_record(b"Y" * 5000, 0, SMALL_PAYLOAD)
    for a, b in zip(x, y, strict=True):
        ledger.pipe_send(CLIENT, writer.pipe_id, 0, a)
        ledger.pipe_send(CLIENT, writer.pipe_id, 1, b)
    assert reader.receive() == []
    assert reader.fragment_clashes == 6  # all 6 pieces, none joined
    assert not reader._partial
    # out of step: X's first two pieces, then Y's
    for payload in (*frame_record(b"x" * 5000, 1, SMALL_PAYLOAD)[:2], *y[:1]):
        ledger.pipe_send(CLIENT, writer.pipe_id, 0, payload)
    y1 = frame_record(b"y" * 5000, 1, SMALL_PAYLOAD)
    for payload in (y1[0], y1[1], y1[2]):
        ledger.pipe_send(CLIENT, writer.pipe_id, 0, payload)
    assert reader.receive() == []  # (y1[0] clashed with x's piece 0)
    ok = os.urandom(5000)
    writer.send([ok])  # its own, random id
    assert reader.receive() == [ok]
    # a piece sent twice (same bytes) is no clash
    dup = frame_record(b"d" * 3000, 9, SMALL_PAYLOAD)
    for payload in (dup[0], dup[0], dup[1]):
        ledger.pipe_send(CLIENT, writer.pipe_id, 2, payload)
    assert reader.receive() == [b"d" * 3000]


# -- fault 2: a slow reader --------------------------------------------------------------


def test_receive_reads_no_more_than_its_room(world: OutageWorld) -> None:
    """``max_bytes``: the records come in portions of about that size, each exactly
    once and in order, the rest waiting on the ledger; a snapshot taken between two
    portions resumes at the right place."""
    ledger = world.ledger
    writer = _carrier(ledger, world, "client")
    reader = _carrier(ledger, world, "server", sync_every=1000)
    records = [data_record(bytes([i]) * 16_000) for i in range(100)]
    writer.send(records)
    room = 256 * 1024
    got: list[bytes] = []
    portions = 0
    while len(got) < 50:
        portion = reader.receive(max_bytes=room)
        assert portion and sum(map(len, portion)) <= room + MIN_PAGE * MAX_PIPE_DATA
        got += portion
        portions += 1
    assert portions >= 50 * 16_000 // (room + MIN_PAGE * MAX_PIPE_DATA)
    resumed = _carrier(ledger, world, "server", state=reader.state())
    rest = resumed.receive(max_bytes=room)
    while len(got) + len(rest) < len(records):
        more = resumed.receive(max_bytes=room)
        assert more
        rest += more
    assert got + rest == records
    assert resumed.receive() == [] and resumed.duplicates == 0
    for bad, error in ((0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match="max_bytes"):
            reader.receive(max_bytes=bad)  # type: ignore[arg-type]


def test_a_small_room_still_reads_pages_of_several_events(world: OutageWorld) -> None:
    """With little room left, a page is still MIN_PAGE events: events that yield no
    record (the peer's other connections, SYNCs) are not read one call each."""
    ledger = world.ledger
    writer = _carrier(ledger, world, "client")
    reader = _carrier(ledger, world, "server")
    counting = _Counting(ledger)
    reader.ledger = counting  # type: ignore[assignment]
    writer.send([b"r%d" % i for i in range(40)])
    assert len(reader.receive(max_bytes=1)) >= 1
    assert counting.reads == 1


class _Counting:
    """A ledger counting its ``events`` reads; read number ``fail`` fails as a node
    that does not answer."""

    def __init__(self, ledger: Ledger, fail: int = 0) -> None:
        self._ledger = ledger
        self.reads = 0
        self.fail = fail

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    def events(self, *args: Any, **kw: Any) -> Any:
        self.reads += 1
        if self.reads == self.fail:
            raise ChainError("the node does not answer", name="LedgerUnavailable")
        return self._ledger.events(*args, **kw)


class _Meter:
    """Counts the valid record bytes a bridge's carrier hands back to it (what it puts
    in its buffer for the adapter) and its receive calls."""

    def __init__(self, carrier: LedgerCarrier) -> None:
        self.bytes = 0
        self.calls = 0
        receive = carrier.receive

        def metered(*args: Any, **kw: Any) -> list[bytes]:
            records = receive(*args, **kw)
            self.bytes += sum(len(r) for r in records if _valid_record(r))
            self.calls += 1
            return records

        carrier.receive = metered  # type: ignore[method-assign]


@contextmanager
def _ledger_connection(world: OutageWorld) -> Iterator[tuple[LedgerBridge, LedgerBridge, _Meter]]:
    """The client's and the server's bridges for ``world``'s connection (the server's
    from a listener, metered)."""
    options = LedgerCarrierOptions()
    accepted: list[LedgerBridge] = []
    meters: list[_Meter] = []

    def on_accept(bridge: LedgerBridge) -> None:
        meters.append(_Meter(bridge.carrier))
        accepted.append(bridge)

    listener = LedgerListener(world.ledger, SERVER, world.host_id, PORT, on_accept, options=options)
    bridges: list[LedgerBridge] = []
    try:
        bridges.append(
            connect_ledger_carrier(
                world.ledger, CLIENT, world.connection_id, SERVER.sui_address, options
            )
        )
        assert wait_for(lambda: accepted, 30)
        bridges += accepted
        yield bridges[0], accepted[0], meters[0]
    finally:
        listener.close()
        for bridge in bridges:
            bridge.socket.close()
        for bridge in bridges:
            bridge.join(30)
            assert not bridge.running


def _more_calls(meter: _Meter, calls: int) -> bool:
    return meter.calls > calls


class _Adapter:
    """Drives a sans-I/O connection over a bridge's adapter end by hand: the test's
    thread is the I/O adapter, and reads only when told to (a slow consumer)."""

    def __init__(self, conn: Connection, sock: socket.socket) -> None:
        self.conn = conn
        self.side = Side(conn)
        self.sock = sock
        self.sock.setblocking(False)
        self.consumed = 0

    def write(self) -> None:
        data = self.conn.data_to_send(time.monotonic())
        if data:
            self.sock.setblocking(True)
            try:
                self.sock.sendall(data)
            finally:
                self.sock.setblocking(False)

    def read(self, most: int = 1 << 20) -> int:
        try:
            data = self.sock.recv(most)
        except BlockingIOError:
            return 0
        self.consumed += len(data)
        if data:
            self.conn.receive_data(data, time.monotonic())
        return len(data)

    def turn(self, *, read: bool = True) -> None:
        now = time.monotonic()
        timer = self.conn.get_timer()
        if timer is not None and timer <= now:
            self.conn.handle_timer(now)
        if read:
            self.read()
        self.write()
        self.side.drain()


def test_a_slow_adapter_keeps_the_bridge_s_buffer_bounded(world: OutageWorld) -> None:
    """A real connection over the ledger carrier whose server side reads slowly: the
    client sends 12 MiB of datagrams (not flow-controlled) and the server's adapter
    takes them 256 KiB at a time. The bridge stops reading the ledger at 4 MiB held;
    but each time the adapter took a little, its next receive() read the whole backlog
    left on the ledger (about 8 MiB more held at once). Now what the bridge holds
    stays within 4 MiB and a page of payloads (plus the socket pair's buffers), and
    every datagram still arrives."""
    high_water = ledger_bridge._OUT_HIGH_WATER
    client_conn, server_conn = _connections(time.monotonic())
    with _ledger_connection(world) as (cb, sb, meter):
        client, server = _Adapter(client_conn, cb.socket), _Adapter(server_conn, sb.socket)
        deadline = time.monotonic() + 60
        while not (client_conn.established and server_conn.established):
            assert time.monotonic() < deadline, "no handshake"
            for side in (client, server):
                side.turn()
            if server.side.of(PeerAuthenticated) and not server_conn.established:
                server_conn.accept()
            time.sleep(0.002)
        # the kernel's share: what the pair's buffers hold between the two ends
        kernel = sb._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) + sb.socket.getsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF
        )
        bound = high_water + MIN_PAGE * MAX_PIPE_DATA + kernel + 64 * 1024
        base = meter.bytes - server.consumed  # (the handshake's, not read yet)

        def held() -> int:
            return meter.bytes - server.consumed - base

        size = client_conn.max_datagram_size
        sent = [i.to_bytes(4, "big") * (size // 4) for i in range(3 * high_water // size)]
        for datagram in sent:
            client_conn.send_datagram(datagram)
        client.write()  # (blocks while the client's bridge posts)
        assert wait_for(lambda: cb.records_posted >= len(sent), 120)
        # the server's bridge reads up to its high-water mark, then stops
        assert wait_for(lambda: held() >= high_water, 60)
        time.sleep(0.2)
        most = held()
        assert most <= bound
        while len(server.side.of(DatagramReceived)) < len(sent):
            assert time.monotonic() < deadline + 120, "datagrams missing"
            calls = meter.calls
            if not server.read(256 * 1024):
                time.sleep(0.005)
                continue
            server.side.drain()
            # the bridge takes in what fits in the room the read made
            wait_for(partial(_more_calls, meter, calls), 2, 0.001)
            most = max(most, held())
            assert most <= bound, f"the bridge holds {most} bytes (bound {bound})"
        got = [e.data for e in server.side.of(DatagramReceived) if isinstance(e, DatagramReceived)]
        assert sorted(got) == sorted(sent)
        assert sb.records_malformed == 0 and not server_conn.closed
        assert sb.error is None and cb.error is None


def test_a_bridge_whose_adapter_keeps_up_reads_at_full_pages(world: OutageWorld) -> None:
    """The bound costs nothing when the adapter keeps up: a connection's records go
    through as before (an echo-like exchange of streams over the bridges)."""
    client_conn, server_conn = _connections(time.monotonic())
    with _ledger_connection(world) as (cb, sb, _meter):
        client, server = _Adapter(client_conn, cb.socket), _Adapter(server_conn, sb.socket)
        sid = None
        payload = os.urandom(600_000)
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline, "the stream did not arrive"
            for side in (client, server):
                side.turn()
            if server.side.of(PeerAuthenticated) and not server_conn.established:
                server_conn.accept()
            if sid is None and client_conn.established:
                sid = client_conn.open_stream()
                client_conn.send_stream_data(sid, payload, end_stream=True)
            if sid is not None and sid in server.side.eof:
                break
            time.sleep(0.001)
        assert bytes(server.side.data[sid]) == payload
        assert sb.error is None and cb.error is None


def test_an_outage_during_a_bounded_read_loses_nothing(world: OutageWorld) -> None:
    """Records read before a failed page are handed back first, and count against
    the room (max_bytes) of that next call."""
    ledger = world.ledger
    writer = _carrier(ledger, world, "client")
    reader = _carrier(ledger, world, "server", page_size=MIN_PAGE)
    records = [data_record(bytes([i]) * 1000) for i in range(3 * MIN_PAGE)]
    assert reader.receive() == []  # (the client's events so far: its pipe, ...)
    writer.send(records)
    failing = _Counting(ledger, fail=2)
    reader.ledger = failing  # type: ignore[assignment]
    with pytest.raises(ChainError):
        reader.receive(max_bytes=1 << 20)
    first = reader.receive(max_bytes=1)  # the undelivered page, nothing more read
    assert first == records[:MIN_PAGE]
    rest = reader.receive(max_bytes=1 << 20)
    assert first + rest == records


def test_a_bridge_posts_every_record_of_a_large_read(world: OutageWorld) -> None:
    """The adapter wrote 24 records at once, the ledger answering: the bridge kept
    only the newest 8 of what it read (the cut meant for records the ledger did not
    take in an outage), so a 256 KiB window's worth lost half its records, which the
    connection had to retransmit (datagrams were lost). All are posted now."""
    bridge, _flaky = bridge_with_outage(world, outage_timeout=120.0)
    pipe = bridge.carrier.pipe_id
    try:
        records = [data_record(bytes([i]) * 20) for i in range(3 * _MAX_UNSENT)]
        bridge.socket.sendall(b"".join(records))
        expected = [bytes([KIND_RECORD]) + r for r in records]
        assert wait_for(lambda: world.payloads(pipe) == expected, 60), world.payloads(pipe)
        assert bridge.records_posted == len(records)
    finally:
        bridge.stop(60)
        bridge.socket.close()


def test_fragment_ids_wrap_at_two_to_the_32(world: OutageWorld) -> None:
    ledger = world.ledger
    reader = _carrier(ledger, world, "server")
    writer = _carrier(ledger, world, "client", max_payload=SMALL_PAYLOAD)
    writer._next_fragment_id = 0xFFFFFFFF
    records = [os.urandom(5000), os.urandom(7000), os.urandom(3000)]
    writer.send(records)
    assert writer._next_fragment_id == 2  # 0xFFFFFFFF, 0, 1 used
    assert reader.receive() == records
    assert reader.malformed == reader.fragment_clashes == reader.fragments_dropped == 0


def test_a_carrier_resumed_near_the_wrap_goes_round_it(world: OutageWorld) -> None:
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


def test_a_room_smaller_than_one_record_delivers_it_whole_once(world: OutageWorld) -> None:
    """max_bytes=1 and records of 9 pieces each (more than a MIN_PAGE page): each call
    returns at least one whole record, none twice, in order."""
    ledger = world.ledger
    reader = _carrier(ledger, world, "server")
    writer = _carrier(ledger, world, "client", max_payload=SMALL_PAYLOAD)
    records = [data_record(bytes([i]) * 16_000) for i in range(5)]
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


def test_lingering_for_retained_records_reads_a_backlog_in_portions(world: OutageWorld) -> None:
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
    peer.send([data_record(b"hello")])
    assert ours.receive() == [data_record(b"hello")]
    assert ours.peer_retains
    high_water = ledger_bridge._OUT_HIGH_WATER
    count = high_water // 16_000 + 80  # about 5.3 MiB: more than the buffer takes
    peer.send([data_record(bytes([i % 256]) * 16_000) for i in range(count)])
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
