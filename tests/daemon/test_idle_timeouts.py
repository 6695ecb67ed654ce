"""The services daemon: its connections' idle timeout, port swaps in a reload, the ready line.

* The idle timeout of the daemon's DTP connections (its service listener's, and each
  forward's to its target) is set by ``[daemon] connection_idle_timeout`` and
  ``[[forward]] connection_idle_timeout`` (60 s by default), validated like the other
  time settings and taken by a reload.
* Two forwards swapping their listen ports in one reload both move: the old listeners
  of reused ports are released before the new ones bind.
* The ready line tells which forwards are UDP: ``forward_protocols``.

Each case runs real ``dtp daemon`` processes on a LocalLedger file, with real sockets.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from pathlib import Path

import pytest

from dtp.daemon._config import load_config
from dtp.daemon._state import read_status
from dtp.errors import DaemonConfigError
from tests.daemon.daemon_configs import FAKE_HOST, client_config, forward, forward_rows, provider
from tests.daemon.tcp_backends import echo_server
from tests.support.daemon_procs import Proc, daemon, wait_until
from tests.support.ports import free_port


def echoes(port: int, data: bytes) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        got = b""
        while len(got) < len(data):
            chunk = sock.recv(100)
            if not chunk:
                break
            got += chunk
        return got == data


# -- fault 1: the DTP connections' idle timeout ----------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1", '"60"', "nan", "inf", "true"])
@pytest.mark.parametrize("table", ["daemon", "forward"])
def test_connection_idle_timeout_must_be_a_positive_number(
    tmp_path: Path, table: str, value: str
) -> None:
    line = f"connection_idle_timeout = {value}\n"
    head = '[daemon]\nledger = "l.sqlite"\nidentity = "k.key"\n'
    fwd = forward("f", "127.0.0.1:0", f"dtp://{FAKE_HOST}:7000")
    path = tmp_path / "d.toml"
    path.write_text(head + line + fwd if table == "daemon" else head + fwd + line)
    with pytest.raises(DaemonConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "connection_idle_timeout" in message, message
    assert "positive number" in message, message


def test_connection_idle_timeout_defaults_and_values(tmp_path: Path) -> None:
    head = '[daemon]\nledger = "l.sqlite"\nidentity = "k.key"\n'
    path = tmp_path / "d.toml"
    path.write_text(head + forward("f", "127.0.0.1:0", f"dtp://{FAKE_HOST}:7000"))
    config = load_config(path)
    assert config.daemon.connection_idle_timeout == 60.0
    assert config.forwards[0].connection_idle_timeout == 60.0
    path.write_text(
        head
        + "connection_idle_timeout = 7\n"
        + forward("f", "127.0.0.1:0", f"dtp://{FAKE_HOST}:7000", "connection_idle_timeout = 2.5")
    )
    config = load_config(path)
    assert config.daemon.connection_idle_timeout == 7.0
    assert config.forwards[0].connection_idle_timeout == 2.5


def _closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the peer closed ``sock`` (EOF or reset), None if still open."""
    start = time.monotonic()
    sock.settimeout(0.5)
    while time.monotonic() - start < seconds:
        try:
            if sock.recv(100) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - start
    return None


def test_forward_idle_timeout_set_by_a_reload_gives_up_a_silent_target(tmp_path: Path) -> None:
    """A reload sets connection_idle_timeout = 1 on a forward; its next tunnel's DTP
    connection is given up within seconds once the provider falls silent (SIGSTOP), not
    after the fixed 60 s (before: the key was unknown and the reload refused)."""
    listener, serving = echo_server()
    procs: list[Proc] = []
    stopped: Proc | None = None
    try:
        p = daemon(provider(tmp_path, listener.getsockname()[1]))
        procs.append(p)
        target = f"dtp://{p.info['host_id']}:7000"
        port = free_port()
        config = client_config(tmp_path, forward("svc", f"127.0.0.1:{port}", target))
        c = daemon(config)
        procs.append(c)
        assert echoes(port, b"before")
        config.write_text(
            config.read_text().replace(
                f'target = "{target}"', f'target = "{target}"\nconnection_idle_timeout = 1'
            )
        )
        c.send(signal.SIGHUP)
        wait_until(lambda: "reloaded" in c.log(), what="the reload")
        assert "reload refused" not in c.log(), c.log()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"after")
            assert sock.recv(100) == b"after"
            p.send(signal.SIGSTOP)
            stopped = p
            took = _closed_within(sock, 30)
        assert took is not None, "the tunnel stayed open to a silent target"
        assert took < 20, took
    finally:
        if stopped is not None:
            stopped.send(signal.SIGCONT)
        for proc in reversed(procs):
            proc.kill()
        listener.close()
        serving.join(5)


def test_service_listener_idle_timeout_gives_up_a_silent_client(tmp_path: Path) -> None:
    """[daemon] connection_idle_timeout = 1: a client that falls silent (its forwarder
    SIGSTOPped) has its DTP connection, and so its backend connection, given up within
    seconds (before: the key was unknown, and the fixed 60 s applied)."""
    listener, serving = echo_server()
    backend = listener.getsockname()[1]
    procs: list[Proc] = []
    stopped: Proc | None = None
    try:
        p = daemon(provider(tmp_path, backend, "connection_idle_timeout = 1"))
        procs.append(p)
        port = free_port()
        c = daemon(
            client_config(
                tmp_path, forward("svc", f"127.0.0.1:{port}", f"dtp://{p.info['host_id']}:7000")
            )
        )
        procs.append(c)
        state = tmp_path / "provider-state"

        def active() -> int:
            row = (read_status(state) or {}).get("services", {}).get("echo", {})
            return int(row.get("active_tunnels", -1))

        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"hello")
            assert sock.recv(100) == b"hello"
            wait_until(lambda: active() == 1, what="the tunnel in the provider's status")
            c.send(signal.SIGSTOP)
            stopped = c
            start = time.monotonic()
            wait_until(lambda: active() == 0, timeout=30, what="the silent client given up")
            assert time.monotonic() - start < 20
    finally:
        if stopped is not None:
            stopped.send(signal.SIGCONT)
        for proc in reversed(procs):
            proc.kill()
        listener.close()
        serving.join(5)


# -- fault 2: two forwards swapping ports in one reload --------------------------------------


def test_reload_swaps_two_forwards_ports(tmp_path: Path) -> None:
    """a on X and b on Y become a on Y and b on X in one reload: both run on their new
    ports (before: each new listener found its port held by the other forward, and
    both kept their old ports, the error logged)."""
    listener, serving = echo_server()
    procs: list[Proc] = []
    try:
        p = daemon(provider(tmp_path, listener.getsockname()[1]))
        procs.append(p)
        target = f"dtp://{p.info['host_id']}:7000"
        x, y = free_port(), free_port()
        while y == x:
            y = free_port()
        config = client_config(
            tmp_path,
            forward("a", f"127.0.0.1:{x}", target) + forward("b", f"127.0.0.1:{y}", target),
        )
        c = daemon(config)
        procs.append(c)
        assert c.info["forwards"] == {"a": f"127.0.0.1:{x}", "b": f"127.0.0.1:{y}"}
        assert echoes(x, b"a-old") and echoes(y, b"b-old")
        state = tmp_path / "client-state"
        wait_until(
            lambda: {n: r["tunnels"] for n, r in forward_rows(state).items()} == {"a": 1, "b": 1},
            what="one tunnel each in the status",
        )
        # an open tunnel of a's old listener goes on across the swap
        with socket.create_connection(("127.0.0.1", x), timeout=10) as kept:
            kept.sendall(b"open")
            assert kept.recv(100) == b"open"
            config.write_text(
                client_config(
                    tmp_path,
                    forward("a", f"127.0.0.1:{y}", target) + forward("b", f"127.0.0.1:{x}", target),
                ).read_text()
            )
            c.send(signal.SIGHUP)
            wait_until(lambda: "reloaded" in c.log(), what="the reload")
            assert "cannot be bound" not in c.log(), c.log()
            kept.sendall(b"still")
            assert kept.recv(100) == b"still"
        rows = wait_until(
            lambda: (
                (r := forward_rows(state))
                and r["a"]["listen"] == f"127.0.0.1:{y}"
                and r["b"]["listen"] == f"127.0.0.1:{x}"
                and r
            ),
            what="the swapped listeners in the status",
        )
        tunnels = {n: rows[n]["tunnels"] for n in ("a", "b")}
        assert echoes(y, b"a-new")  # a, now on y
        wait_until(
            lambda: forward_rows(state)["a"]["tunnels"] == tunnels["a"] + 1,
            what="the tunnel on y counted for a",
        )
        assert forward_rows(state)["b"]["tunnels"] == tunnels["b"]
        assert echoes(x, b"b-new")  # b, now on x
        wait_until(
            lambda: forward_rows(state)["b"]["tunnels"] == tunnels["b"] + 1,
            what="the tunnel on x counted for b",
        )
        assert c.stop() == 0
    finally:
        for proc in reversed(procs):
            proc.kill()
        listener.close()
        serving.join(5)


def test_port_trade_whose_bind_fails_leaves_the_old_config_serving(tmp_path: Path) -> None:
    """a on X and b on Y become a on Y and b on Z, Z held by another program: b's old
    listener is released for a, a binds Y, b cannot bind Z; a's new listener is closed
    again and b starts again on Y, so both serve on their old ports, the error logged
    (not a stopped forward, nor a moved while b is gone)."""
    listener, serving = echo_server()
    procs: list[Proc] = []
    blocker = socket.create_server(("127.0.0.1", 0))
    try:
        p = daemon(provider(tmp_path, listener.getsockname()[1]))
        procs.append(p)
        target = f"dtp://{p.info['host_id']}:7000"
        x, y = free_port(), free_port()
        while y == x:
            y = free_port()
        z = blocker.getsockname()[1]
        config = client_config(
            tmp_path,
            forward("a", f"127.0.0.1:{x}", target) + forward("b", f"127.0.0.1:{y}", target),
        )
        c = daemon(config)
        procs.append(c)
        config.write_text(
            client_config(
                tmp_path,
                forward("a", f"127.0.0.1:{y}", target) + forward("b", f"127.0.0.1:{z}", target),
            ).read_text()
        )
        c.send(signal.SIGHUP)
        wait_until(lambda: "reloaded" in c.log(), what="the reload")
        log = c.log()
        assert "forward keeps its old listener, the new one cannot be bound" in log, log
        assert "forward stopped" not in log, log
        state = tmp_path / "client-state"
        wait_until(
            lambda: (
                (r := forward_rows(state))
                and (r["a"]["listen"], r["b"]["listen"]) == (f"127.0.0.1:{x}", f"127.0.0.1:{y}")
            ),
            what="the old listeners in the status",
        )
        assert echoes(x, b"a") and echoes(y, b"b")
        # (each forward's count reaches the status file when it is next written: b's may
        # come a write after a's)
        wait_until(
            lambda: (
                (r := forward_rows(state)) and r["a"]["tunnels"] == 1 and r["b"]["tunnels"] == 1
            ),
            what="both forwards' tunnels counted",
        )

        # the next SIGHUP tries again: with Z free, the trade goes through
        blocker.close()
        c.send(signal.SIGHUP)
        wait_until(lambda: c.log().count("reloaded") >= 2, what="the second reload")
        wait_until(
            lambda: (
                (r := forward_rows(state))
                and (r["a"]["listen"], r["b"]["listen"]) == (f"127.0.0.1:{y}", f"127.0.0.1:{z}")
            ),
            what="the new listeners in the status",
        )
        assert echoes(y, b"a2") and echoes(z, b"b2")
        assert c.stop() == 0
    finally:
        blocker.close()
        for proc in reversed(procs):
            proc.kill()
        listener.close()
        serving.join(5)


# -- fault 3: the ready line marks the UDP forwards ------------------------------------------


def test_ready_line_marks_udp_forwards(tmp_path: Path) -> None:
    tcp, udp = free_port(), free_port(socket.SOCK_DGRAM)
    target = f"dtp://{FAKE_HOST}:7000"
    c = daemon(
        client_config(
            tmp_path,
            forward("web", f"127.0.0.1:{tcp}", target)
            + forward("dns", f"127.0.0.1:{udp}", target, 'protocol = "udp"'),
        )
    )
    try:
        # "forwards" keeps its name -> "host:port" strings
        assert c.info["forwards"] == {"web": f"127.0.0.1:{tcp}", "dns": f"127.0.0.1:{udp}"}
        assert c.info["forward_protocols"] == {"web": "tcp", "dns": "udp"}
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", udp))
            pytest.fail("the UDP forward's port is not bound")
        # the status file's copy follows the reloads
        state = tmp_path / "client-state"
        assert (read_status(state) or {})["forward_protocols"] == {"web": "tcp", "dns": "udp"}
        config = tmp_path / "client.toml"
        config.write_text(
            client_config(tmp_path, forward("web", f"127.0.0.1:{tcp}", target)).read_text()
        )
        c.send(signal.SIGHUP)
        wait_until(
            lambda: (read_status(state) or {}).get("forward_protocols") == {"web": "tcp"},
            what="the reload in the status",
        )
        assert c.stop() == 0
    finally:
        c.kill()
