"""``makefile()`` and ``close()`` as on sockets: a file that is still open keeps its
stream open and usable after ``close()``, which takes effect when the last such file
is closed (or garbage-collected). ``http.client`` relies on it: after a response with
``Connection: close`` it closes the socket and reads the body through the file."""

from __future__ import annotations

import gc
import http.client
import threading
from collections.abc import Iterator

import pytest

import dtp.socket
from dtp.keys import HostIdentity
from tests.polling import wait_for

SERVER_ID = HostIdentity.generate()


@pytest.fixture
def server() -> Iterator[dtp.socket.DTPServer]:
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID) as srv:
        yield srv


def _connect(server: dtp.socket.DTPServer) -> dtp.socket.DTPSocket:
    return dtp.socket.create_connection(
        server.address, timeout=10, server_key=server.noise_public_key
    )


def _ends(sock: dtp.socket.DTPSocket) -> bool:
    """Whether ``sock``'s peer has ended the stream (recv gives b"")."""
    return sock.recv(100) == b""


def test_http_client_reads_a_connection_close_body_after_closing_the_socket(
    server: dtp.socket.DTPServer,
) -> None:
    body = bytes(range(256)) * (16 << 10)  # 4 MiB: far beyond the file's buffer

    def serve() -> None:
        sock, _ = server.accept(timeout=10)
        with sock:
            f = sock.makefile("rb")
            while f.readline() not in (b"\r\n", b""):
                pass
            f.close()
            head = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
            sock.sendall(head % len(body) + body)

    thread = threading.Thread(target=serve)
    thread.start()

    class DTPHTTPConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = _connect(server)  # type: ignore[assignment]

    conn = DTPHTTPConnection("example", timeout=10)
    conn.request("GET", "/")
    response = conn.getresponse()  # closes the socket: Connection: close
    assert conn.sock is None
    assert response.read() == body
    response.close()
    thread.join(10)


def test_close_waits_for_the_open_file_and_takes_effect_with_it(
    server: dtp.socket.DTPServer,
) -> None:
    client = _connect(server)
    peer, _ = server.accept(timeout=10)
    with peer:
        peer.settimeout(10)
        f = client.makefile("rwb")
        client.close()  # the file is open: the stream stays usable through it
        f.write(b"ping\n")
        f.flush()
        assert peer.recv(100) == b"ping\n"
        peer.sendall(b"pong\n")
        assert f.readline() == b"pong\n"
        peer.settimeout(0.2)
        with pytest.raises(TimeoutError):
            peer.recv(100)  # not ended yet
        peer.settimeout(10)
        f.close()  # the last file: now the connection closes
        assert _ends(peer)
    assert wait_for(lambda: client._closed)


def test_a_garbage_collected_file_completes_the_close(server: dtp.socket.DTPServer) -> None:
    client = _connect(server)
    peer, _ = server.accept(timeout=10)
    with peer:
        peer.settimeout(10)
        reader, writer = client.makefile("rb"), client.makefile("wb")
        client.close()
        reader.close()
        assert not client._closed  # one file is left
        del writer
        gc.collect()
        assert _ends(peer)
    assert wait_for(lambda: client._closed)


def test_an_extra_stream_closes_with_its_last_file(server: dtp.socket.DTPServer) -> None:
    with _connect(server) as client:
        peer, _ = server.accept(timeout=10)
        with peer:
            stream = client.open_stream()
            stream.sendall(b"x")
            other = peer.accept_stream()
            other.settimeout(10)
            assert other.recv(1) == b"x"
            f = stream.makefile("wb")
            stream.close()
            f.write(b"through the file")
            f.close()
            got = b""
            while chunk := other.recv(100):
                got += chunk
            assert got == b"through the file"
            other.close()


def test_abort_does_not_wait_for_files(server: dtp.socket.DTPServer) -> None:
    client = _connect(server)
    peer, _ = server.accept(timeout=10)
    with peer:
        peer.settimeout(10)
        f = client.makefile("rb")
        client.abort()
        assert client._closed
        with pytest.raises(dtp.errors.ConnectionClosed):
            peer.recv(100)
        f.close()
