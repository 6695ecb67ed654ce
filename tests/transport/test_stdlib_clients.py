"""A DTP stream carries a stdlib protocol client unchanged: ``http.client`` over
:func:`dtp.socket.create_connection`, which takes what :func:`socket.create_connection`
takes for its timeout (including the module's default-timeout marker)."""

from __future__ import annotations

import http.client
import socket
import threading

import pytest

import dtp.socket
from dtp.identity.keys import HostIdentity

SERVER_ID = HostIdentity.generate()


def _serve_one(server: dtp.socket.DTPServer, body: bytes) -> threading.Thread:
    def run() -> None:
        sock, _ = server.accept(timeout=10)
        with sock:
            f = sock.makefile("rb")
            request = f.readline()
            while f.readline() not in (b"\r\n", b""):
                pass
            reply = b"%s|%s" % (request.split()[1], body)
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(reply), reply))
            f.close()
            sock.recv(1)  # until the client closes

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_http_client_runs_over_a_dtp_stream_with_its_default_timeout() -> None:
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID) as server:

        class DTPHTTPConnection(http.client.HTTPConnection):
            def connect(self) -> None:
                # self.timeout is socket._GLOBAL_DEFAULT_TIMEOUT unless given
                self.sock = dtp.socket.create_connection(  # type: ignore[assignment]
                    server.address, self.timeout, server_key=server.noise_public_key
                )

        thread = _serve_one(server, b"over dtp")
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(9.0)
        try:
            conn = DTPHTTPConnection("example")
            conn.request("GET", "/path")
            assert conn.sock.gettimeout() == 9.0  # the default, as a socket would have
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"/path|over dtp")
            conn.close()
        finally:
            socket.setdefaulttimeout(previous)
        thread.join(10)


def test_a_connect_without_a_timeout_takes_the_default_socket_timeout() -> None:
    """As socket.create_connection: a timeout left out is getdefaulttimeout() (None
    unless set), for the connect and for the stream after it; None given stays None."""
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID) as server:
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(7.5)
        try:
            with dtp.socket.create_connection(
                server.address, server_key=server.noise_public_key
            ) as sock:
                assert sock.gettimeout() == 7.5
            with dtp.socket.create_connection(
                server.address, None, server_key=server.noise_public_key
            ) as sock:
                assert sock.gettimeout() is None
        finally:
            socket.setdefaulttimeout(previous)
        with dtp.socket.create_connection(
            server.address, server_key=server.noise_public_key
        ) as sock:
            assert sock.gettimeout() == previous


@pytest.mark.parametrize("timeout", ["5", b"5", [5], object()])
def test_a_connect_timeout_that_is_not_a_number_is_a_type_error(timeout: object) -> None:
    with (
        dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID) as server,
        pytest.raises(TypeError, match="number of seconds"),
    ):
        dtp.socket.create_connection(
            server.address,
            timeout,  # type: ignore[arg-type]
            server_key=server.noise_public_key,
        )
