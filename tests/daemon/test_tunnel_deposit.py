"""The services daemon: a forwarder's deposit running out mid-tunnel cuts that tunnel
alone. Raised inside the DTP connection's input, the error closed the whole connection
(logged as an error with a traceback), resetting the other tunnels on it too."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from tests.daemon.daemon_configs import write_provider
from tests.daemon.tcp_backends import Backend, serves_health_checks
from tests.support.daemon_procs import daemon, forward_address, running, write_forwarder


def test_used_up_deposit_cuts_only_its_own_tunnel(tmp_path: Path) -> None:
    go_on = threading.Event()

    def handler(sock: socket.socket) -> None:
        if serves_health_checks(sock):
            return
        sock.settimeout(10)
        first = sock.recv(16)
        if first.startswith(b"big"):
            sock.sendall(b"x" * (3 << 20))  # far more than the deposit pays for
        else:
            sock.sendall(b"small-reply")
            go_on.wait(20)  # (the deposit is used up to the byte: nothing more is sent)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(16)

    backend = Backend(handler)
    try:
        config = write_provider(
            tmp_path,
            backend.port,
            "drain_timeout = 2",
            "health_interval = 30\nprice_per_kib = 10\nmin_deposit = 10000",
        )
        d = daemon(config)
        with running(d):
            f = daemon(write_forwarder(tmp_path, d.info["host_id"], 7000, "deposit = 10000\n"))
            with running(f):
                address = forward_address(f)
                with socket.create_connection(address, timeout=10) as small:
                    small.sendall(b"hello")
                    assert small.recv(11) == b"small-reply"
                    with socket.create_connection(address, timeout=10) as big:
                        big.sendall(b"big")
                        received = 0
                        try:
                            while chunk := big.recv(1 << 16):
                                received += len(chunk)
                        except ConnectionResetError:
                            pass
                        assert received < 3 << 20  # cut: the deposit ran out
                    go_on.set()
                    # the other tunnel went on to its clean end: not reset with the cut one
                    assert small.recv(16) == b""
                assert f.stop() == 0
            assert "raised: closing the connection" not in f.log()
            # the cut says how much was held and what to change
            assert (
                "the deposit of this DTP connection (10,000 MIST) is used up: a larger "
                "`deposit` in the [[forward]] pays for larger transfers"
            ) in f.log()
            assert d.stop() == 0
    finally:
        go_on.set()
        backend.close()
