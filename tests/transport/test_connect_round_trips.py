"""What one connect costs on the wire. In IK the client's identity proof rides in
message 1 and the server answers only with its verdict: message 2 and the ACCEPT leave
in one flight, and the client's first stream (opened as the handshake completes, by
Session.on_handshake) is open on both sides without a flight of its own."""

from __future__ import annotations

import threading

import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig
from dtp.transport._session import Session

SERVER = HostIdentity.generate()
CLIENT = HostIdentity.generate()


def test_one_round_trip_to_the_verdict_and_no_flight_for_the_first_stream() -> None:
    client = Session(
        ConnectionConfig(identity=CLIENT, is_client=True, server_static=SERVER.noise_public),
        now=0.0,
    )
    server = Session(ConnectionConfig(identity=SERVER, is_client=False), now=0.0)
    opened: list[int] = []
    client.on_handshake = lambda: opened.append(client.conn.open_stream())
    server.conn.receive_data(client.conn.data_to_send(0.0), 0.0)
    server.process_events()
    assert server.authenticated_address == CLIENT.sui_address  # from message 1 alone
    assert server.conn.data_to_send(0.0) == b""  # no reply before the verdict
    server.conn.accept()
    server.process_events()
    assert list(server.incoming_streams) == [0]  # the client's first stream
    # a server may speak first: its bytes leave in the flight that brings the verdict
    server.conn.send_stream_data(0, b"server speaks first")
    client.conn.receive_data(server.conn.data_to_send(0.0), 0.0)
    assert opened == []  # called from process_events, not from inside the connection
    client.process_events()
    assert opened == [0]
    assert client.accepted and client.conn.established  # one round trip
    client.process_events()
    assert opened == [0]  # once per handshake
    assert client.conn.data_to_send(0.0) == b""  # the opening needs no flight
    assert client.take(0, 100) == b"server speaks first"
    assert client.conn.open_stream() == 2  # stream 0 is handed out once


def test_connect_then_echo_on_the_first_stream() -> None:
    def handler(sock: dtp.socket.DTPSocket) -> None:
        sock.sendall(sock.recv(100))

    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER) as server:
        threading.Thread(target=server.serve_forever, args=(handler,), daemon=True).start()
        for i in range(3):
            with dtp.socket.create_connection(
                server.address, timeout=10, server_key=server.noise_public_key, identity=CLIENT
            ) as sock:
                assert sock.stream_id == 0
                assert sock._engine.conn.established
                sock.sendall(b"after connect %d" % i)
                assert sock.recv(100) == b"after connect %d" % i
