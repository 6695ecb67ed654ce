"""The services daemon's tunnels at their edges: resets passed on as resets (not as the
clean end of a transfer), and tunnels whose client went away before the backend
answered. Real daemon and forwarder processes, real TCP backends in threads."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtp.daemon._state import read_status
from tests.daemon.daemon_configs import write_provider
from tests.daemon.tcp_backends import Backend, serves_health_checks
from tests.support.daemon_procs import (
    Proc,
    daemon,
    forward_address,
    wait_until,
    write_forwarder,
)


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[Proc]]:
    started: list[Proc] = []
    try:
        yield started
    finally:
        for proc in reversed(started):
            proc.kill()


def start_pair(
    tmp: Path, procs: list[Proc], backend: int, firewall: str = ""
) -> tuple[Proc, Proc, tuple[str, int]]:
    config = write_provider(tmp, backend, f"drain_timeout = 2\n{firewall}", "health_interval = 30")
    d = daemon(config)
    procs.append(d)
    f = daemon(write_forwarder(tmp, d.info["host_id"], 7000))
    procs.append(f)
    return d, f, forward_address(f)


def test_backend_reset_mid_response_resets_the_client(tmp_path: Path, procs: list[Proc]) -> None:
    """A backend that resets its connection halfway through a response: the local client
    reads a reset, not the clean end of a (truncated) response."""

    def handler(sock: socket.socket) -> None:
        if serves_health_checks(sock):
            return
        sock.recv(16)
        sock.sendall(b"x" * 50_000)
        sock.recv(16)  # the client says it has the bytes
        reset(sock)

    server = Backend(handler)
    try:
        _, _, address = start_pair(tmp_path, procs, server.port)
        with socket.create_connection(address, timeout=10) as client:
            client.sendall(b"GET")
            got = 0
            while got < 50_000:
                chunk = client.recv(65536)
                assert chunk, "the tunnel ended before the backend's bytes"
                got += len(chunk)
            client.sendall(b"ok")
            # a reset, not b"" (which would read as a clean end after 50,000 bytes)
            with pytest.raises(ConnectionResetError):
                while client.recv(65536):
                    pass
    finally:
        for proc in reversed(procs):
            proc.kill()
        server.close()


def test_client_reset_mid_upload_resets_the_backend(tmp_path: Path, procs: list[Proc]) -> None:
    """A local client that resets its connection halfway through an upload: the backend
    reads a reset, not the clean end of a (truncated) upload."""
    ended = threading.Event()
    outcome: list[object] = []

    def handler(sock: socket.socket) -> None:
        if serves_health_checks(sock):
            return
        got = 0
        try:
            while chunk := sock.recv(65536):
                got += len(chunk)
            outcome.append(f"clean end after {got} bytes")
        except ConnectionResetError as exc:
            outcome.append(exc)
        finally:
            ended.set()

    server = Backend(handler)
    try:
        _, _, address = start_pair(tmp_path, procs, server.port)
        client = socket.create_connection(address, timeout=10)
        client.sendall(b"y" * 20_000)
        wait_until(lambda: server.open == 1, what="the tunnel to the backend")
        reset(client)
        assert ended.wait(10)
        assert isinstance(outcome[0], ConnectionResetError), outcome
    finally:
        for proc in reversed(procs):
            proc.kill()
        server.close()


def test_tunnel_abandoned_before_the_backend_answered_closes_it(
    tmp_path: Path, procs: list[Proc]
) -> None:
    """Tunnels held back by the client's request rate when its forwarder dies: the
    backend connections the daemon makes for them afterwards are closed, whatever the
    status write raises."""

    def handler(sock: socket.socket) -> None:
        sock.settimeout(20)
        while sock.recv(65536):
            pass

    server = Backend(handler)
    try:
        d, f, address = start_pair(
            tmp_path, procs, server.port, firewall="[firewall]\nmax_requests_per_sec = 2\n"
        )
        clients = [socket.create_connection(address, timeout=10) for _ in range(3)]
        try:
            # the first tunnel at once, the next two 0.5 s and 1 s later
            wait_until(lambda: server.open >= 1, what="the first tunnel")
            f.kill()
            # (logged, not a task ending silently with the write's error)
            wait_until(
                lambda: d.log().count("tunnel abandoned") == 2,
                timeout=5,
                what="the two held tunnels abandoned",
            )
            wait_until(lambda: server.open == 0, timeout=5, what="backend connections closed")
        finally:
            for client in clients:
                client.close()
    finally:
        for proc in reversed(procs):
            proc.kill()
        server.close()


def test_forward_status_shows_a_closed_tunnel_closed(tmp_path: Path, procs: list[Proc]) -> None:
    """The forwarder's status file counts a tunnel that ended as ended, even when
    nothing else changed after it (the old one showed it active for good: the count
    went down without the status being marked for writing)."""

    def handler(sock: socket.socket) -> None:
        sock.settimeout(20)
        while data := sock.recv(65536):
            sock.sendall(data)

    server = Backend(handler)
    state = tmp_path / "forwarder-state"

    def active() -> int | None:
        status = read_status(state)
        return None if status is None else status["forwards"]["svc"]["active_tunnels"]

    try:
        _, _, address = start_pair(tmp_path, procs, server.port)
        with socket.create_connection(address, timeout=10) as client:
            client.sendall(b"ping")
            assert client.recv(100) == b"ping"
            wait_until(lambda: active() == 1, what="the open tunnel in the status")
        wait_until(lambda: active() == 0, timeout=3, what="the closed tunnel in the status")
    finally:
        for proc in reversed(procs):
            proc.kill()
        server.close()
