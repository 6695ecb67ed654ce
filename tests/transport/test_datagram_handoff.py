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
    assert server.process_events()
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
