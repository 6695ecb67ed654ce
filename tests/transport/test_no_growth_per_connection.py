"""Nothing grows with the number of connections: many connects in one process, and
the module-level state they touch stays bounded and their threads and descriptors
end."""

from __future__ import annotations

import os
import threading

import dtp.identity._noise
import dtp.socket
from dtp.errors import DTPError
from dtp.identity.keys import HostIdentity
from tests.support.polling import wait_for

SERVER_ID = HostIdentity.generate()
ROUNDS = 200


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _echo(sock: dtp.socket.DTPSocket) -> None:
    with sock:
        try:
            while data := sock.recv(65536):
                sock.sendall(data)
        except DTPError:
            pass  # the client went away: nothing to echo to


def test_anonymous_connects_leave_no_started_handshake_behind() -> None:
    """Each anonymous connect prepares the next one's Noise IK state under a fresh
    identity (dtp.identity._noise.prepare_handshake); once taken, its key leaves the
    module's dict: no entry per connection stays for ever."""
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID)
    serving = threading.Thread(target=server.serve_forever, args=(_echo,), daemon=True)
    serving.start()
    try:
        for _ in range(10):  # warm up: the timer thread and the first handshakes
            with dtp.socket.create_connection(
                server.address, timeout=30, server_key=SERVER_ID.noise_public
            ) as client:
                client.sendall(b"hi")
                assert client.recv(10) == b"hi"
        threads, fds = threading.active_count(), _open_fds()
        for _ in range(ROUNDS):
            with dtp.socket.create_connection(
                server.address, timeout=30, server_key=SERVER_ID.noise_public
            ) as client:
                client.sendall(b"hi")
                assert client.recv(10) == b"hi"
        # handshakes started ahead are kept for a few peers only (_MAX_STARTED), not one
        # per connection made
        assert len(dtp.identity._noise._STARTED) <= dtp.identity._noise._MAX_STARTED
        # the handler threads end once they read the clients' end
        assert wait_for(lambda: threading.active_count() <= threads + 2, timeout=30)
        assert wait_for(lambda: _open_fds() <= fds + 4, timeout=30)
    finally:
        server.close()
        serving.join(30)
