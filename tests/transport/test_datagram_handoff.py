"""Datagrams of an established connection skip the event queue: the connection hands each
to the Session (Connection.datagram_handler), which passes them on in process_events
ahead of the events -- and only while no event waits, so the order of datagrams and
events holds (docs/benchmarks.md, `udp_tunnel_pps`)."""

from __future__ import annotations

from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig
from dtp.transport._session import Session

CLIENT = HostIdentity.generate()
SERVER = HostIdentity.generate()


def _established() -> tuple[Session, Session]:
    """A client and a server Session, handshaken in memory and accepted."""
    client = Session(
        ConnectionConfig(identity=CLIENT, is_client=True, server_static=SERVER.noise_public),
        now=0.0,
    )
    server = Session(ConnectionConfig(identity=SERVER, is_client=False), now=0.0)
    for _ in range(10):
        if client.conn.established and server.conn.established:
            break
        if data := client.conn.data_to_send(0.0):
            server.conn.receive_data(data, 0.0)
        server.process_events()
        if server.authenticated_address and not server.conn.established:
            server.conn.accept()
        if data := server.conn.data_to_send(0.0):
            client.conn.receive_data(data, 0.0)
        client.process_events()
    assert client.conn.established and server.conn.established
    server.process_events()
    return client, server


def test_datagrams_go_to_the_sink_without_events_and_are_metered() -> None:
    client, server = _established()
    got: list[bytes] = []
    server.datagram_sink = got.append
    sent = [bytes([i]) * (100 + i) for i in range(40)]
    assert client.conn.send_datagrams(sent) == len(sent)
    metered = server.conn.datagram_bytes
    server.conn.receive_data(client.conn.data_to_send(0.0), 0.0)
    assert server.conn.next_event() is None  # (none was queued for them)
    assert server.conn.datagram_bytes - metered == sum(map(len, sent))
    assert got == []  # handed on by process_events, not inside receive_data
    assert not server.process_events()  # (what a sink took no waiter looks for)
    assert got == sent


def test_a_datagram_behind_a_waiting_event_keeps_its_place() -> None:
    """A datagram, a stream's opening (an event), another datagram, in one read: the
    sink sees the first before the stream is known and the second after it."""
    client, server = _established()
    client.conn.open_stream()  # (the connection's own, which the server knows already)
    known = len(server.incoming_streams)
    seen: list[tuple[bytes, int]] = []
    server.datagram_sink = lambda data: seen.append((data, len(server.incoming_streams)))
    client.conn.send_datagrams([b"first"])
    wire = client.conn.data_to_send(0.0)
    stream = client.conn.open_stream()
    client.conn.send_stream_data(stream, b"hello")
    wire += client.conn.data_to_send(0.0)
    client.conn.send_datagrams([b"second"])
    wire += client.conn.data_to_send(0.0)
    server.conn.receive_data(wire, 0.0)
    server.process_events()
    assert seen == [(b"first", known), (b"second", known + 1)]
    assert list(server.incoming_streams)[-1] == stream


def test_without_a_sink_datagrams_queue_and_a_sink_set_midway_takes_the_rest() -> None:
    client, server = _established()
    client.conn.send_datagrams([b"a", b"b", b"c"])
    server.conn.receive_data(client.conn.data_to_send(0.0), 0.0)
    got: list[bytes] = []

    def first(data: bytes) -> None:
        # replaces itself, as a relay whose control stream failed does: the rest of
        # the datagrams handed on together go to the new sink
        got.append(b"first:" + data)
        server.datagram_sink = lambda data: got.append(b"then:" + data)

    server.datagram_sink = first
    server.process_events()
    assert got == [b"first:a", b"then:b", b"then:c"]
    server.datagram_sink = None
    client.conn.send_datagrams([b"d", b"e"])
    server.conn.receive_data(client.conn.data_to_send(0.0), 0.0)
    assert server.process_events()
    assert list(server.datagrams) == [b"d", b"e"]


def test_only_datagrams_left_queued_are_a_change_for_waiters() -> None:
    """process_events and take_changes report datagrams a sink took as no change (the
    drivers wake nobody and flush nothing for them), those queued for a reader as one
    that concerns every waiter, and a sink that raised as one (the connection ends)."""
    client, server = _established()
    server.track_changes()
    server.take_changes()
    got: list[bytes] = []
    server.datagram_run_sink = got.append
    client.conn.send_datagrams([b"a", b"b"])
    server.conn.receive_data(client.conn.data_to_send(0.0), 0.0)
    assert not server.process_events()
    assert got == [[b"a", b"b"]]
    assert server.take_changes() == set()  # (nothing touched, nothing broad)
    assert not server.conn.has_output()  # a driver's flush after this read is skipped

    server.datagram_run_sink = None
    client.conn.send_datagrams([b"c"])
    server.conn.receive_data(client.conn.data_to_send(0.0), 0.0)
    assert server.process_events()
    assert server.take_changes() is None  # a reader of datagrams may be waiting
    assert list(server.datagrams) == [b"c"]

    def sink(data: bytes) -> None:
        raise ValueError(data)

    server.datagram_sink = sink
    client.conn.send_datagrams([b"d"])
    server.conn.receive_data(client.conn.data_to_send(0.0), 0.0)
    assert server.process_events()  # the sink raised: the connection ends
    assert server.terminated is not None and server.conn.has_output()  # (its CLOSE)


def test_a_record_of_datagrams_goes_to_the_session_in_one_call() -> None:
    """A burst's records (DATAGRAM frames alone) reach the Session as one list each
    (Connection.datagram_run_handler), never as one RawFrame and handler call each."""
    client, server = _established()
    calls: list[list[bytes]] = []
    take = server.conn.datagram_run_handler
    assert take is not None

    def spy(run: list[bytes]) -> None:
        calls.append(list(run))
        take(run)

    server.conn.datagram_run_handler = spy
    got: list[list[bytes]] = []
    server.datagram_run_sink = got.append
    sent = [bytes([i]) * 512 for i in range(30)]
    assert client.conn.send_datagrams(sent) == len(sent)
    server.conn.receive_data(client.conn.data_to_send(0.0), 0.0)
    assert calls and len(calls) < len(sent)  # (several datagrams a record)
    assert [d for run in calls for d in run] == sent
    assert not server.process_events()
    assert [d for run in got for d in run] == sent


def test_datagram_records_without_a_session_still_become_events() -> None:
    """A bare Connection (no handler set) gets its DatagramReceived events, in order,
    from records the open handed over as payloads."""
    from dtp.protocol._events import DatagramReceived

    client, server = _established()
    server.conn.datagram_handler = None
    server.conn.datagram_run_handler = None
    sent = [b"x" * n for n in (0, 1, 700, 3)]
    client.conn.send_datagrams(sent)
    server.conn.receive_data(client.conn.data_to_send(0.0), 0.0)
    events = []
    while (event := server.conn.next_event()) is not None:
        events.append(event)
    assert [e.data for e in events if isinstance(e, DatagramReceived)] == sent


def test_a_lossy_carriers_datagram_records_are_acknowledged() -> None:
    """Over a lossy carrier a record of datagrams handed on in one call is still
    recorded for the ACK that the sender's loss recovery waits for."""
    client = Session(
        ConnectionConfig(
            identity=CLIENT,
            is_client=True,
            server_static=SERVER.noise_public,
            reliable_carrier=False,
        ),
        now=0.0,
    )
    server = Session(
        ConnectionConfig(identity=SERVER, is_client=False, reliable_carrier=False), now=0.0
    )
    for _ in range(10):
        if client.conn.established and server.conn.established:
            break
        for data in client.conn.datagrams_to_send(0.0):
            server.conn.receive_data(data, 0.0)
        server.process_events()
        if server.authenticated_address and not server.conn.established:
            server.conn.accept()
        for data in server.conn.datagrams_to_send(0.0):
            client.conn.receive_data(data, 0.0)
        client.process_events()
    assert client.conn.established and server.conn.established
    acks = server.conn.records.acks
    assert acks is not None
    got: list[bytes] = []
    server.datagram_sink = got.append
    runs: list[int] = []  # the counters of the records handed on as runs
    conn = server.conn
    take = conn._take_datagram_run

    def spy(counter: int, run: list[bytes], now: float) -> bool:
        taken = take(counter, run, now)
        if taken:
            runs.append(counter)
        return taken

    conn._take_datagram_run = spy  # type: ignore[method-assign]
    sent: list[bytes] = []
    for i in range(3):  # (the first records may carry an ACK beside the datagrams)
        batch = [bytes([i]) * 100, bytes([i]) * 200]
        sent += batch
        client.conn.send_datagrams(batch)
        for data in client.conn.datagrams_to_send(i + 1.0):
            conn.receive_data(data, i + 1.0)
        server.process_events()
    assert got == sent
    assert runs  # records of datagrams alone were handed on as runs ...
    assert all(counter in acks.received for counter in runs)  # ... and recorded
    assert acks.ack_deadline is not None  # (an ACK is due for them)
