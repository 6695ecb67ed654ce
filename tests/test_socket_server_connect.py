"""What one connect costs on the wire: the client opens its first stream as the
handshake completes (Session.on_handshake), so the opening leaves in the same flight
as the AUTH proof instead of a send of its own; the connection works the same."""

from __future__ import annotations

import threading

import dtp.socket
from dtp._session import Session
from dtp.connection import ConnectionConfig
from dtp.keys import HostIdentity

SERVER = HostIdentity.generate()
CLIENT = HostIdentity.generate()


def test_on_handshake_output_leaves_with_the_auth_proof() -> None:
    client = Session(
        ConnectionConfig(identity=CLIENT, is_client=True, server_static=SERVER.noise_public),
        now=0.0,
    )
    server = Session(ConnectionConfig(identity=SERVER, is_client=False), now=0.0)
    opened: list[int] = []
    client.on_handshake = lambda: opened.append(client.conn.open_stream())
    server.conn.receive_data(client.conn.data_to_send(0.0), 0.0)
    server.process_events()
    client.conn.receive_data(server.conn.data_to_send(0.0), 0.0)
    assert opened == []  # called from process_events, not from inside the connection
    client.process_events()
    assert opened == [0]
    client.process_events()
    assert opened == [0]  # once per handshake
    flight = client.conn.data_to_send(0.0)
    assert client.conn.data_to_send(0.0) == b""  # nothing left for a second send
    server.conn.receive_data(flight, 0.0)
    server.process_events()
    assert server.authenticated_address == CLIENT.sui_address
    assert not server.incoming_streams  # held until the accept hook says yes
    server.conn.accept()
    server.process_events()
    assert list(server.incoming_streams) == [0]  # its opening was in that flight


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
