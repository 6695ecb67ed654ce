"""The services daemon: reloads that trade ports and fail.

* A port trade whose bind fails is rolled back: the forwarders started on trial are
  closed again and the old ones serve. But the trial forwarders share the status row
  of their name with the old ones, and closing them left their settings and counters
  there: a TCP forward kept on its old listener showed the target of the reload that
  failed, and a trial UDP forwarder put its own (zero) byte and tunnel counts over the
  old TCP forwarder's, whose open tunnel then counted -1 active tunnels when it ended.

Each case runs a real ``dtp daemon`` process on a LocalLedger file, with real sockets.
"""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

from dtp.daemon._state import read_status
from tests.daemon.daemon_configs import FAKE_HOST, client_config, forward, forward_rows
from tests.daemon.daemon_configs import provider as provider_config
from tests.daemon.tcp_backends import echo_server
from tests.support.daemon_procs import Proc, daemon, wait_until
from tests.support.ports import free_port


def _two_ports(kind: int = socket.SOCK_STREAM) -> tuple[int, int]:
    x, y = free_port(kind), free_port(kind)
    while y == x:
        y = free_port(kind)
    return x, y


def test_failed_port_trade_keeps_the_old_target_in_the_status(tmp_path: Path) -> None:
    """a (target T1) on X and b on Y become a (target T2) on Y and b on Z, Z held by
    another program: the trade is rolled back and a serves on X with T1, which the
    status says (before: its row kept T2, from the trial forwarder)."""
    blocker = socket.create_server(("127.0.0.1", 0))
    t1, t2 = f"dtp://{FAKE_HOST}:7000", f"dtp://{FAKE_HOST}:7001"
    x, y = _two_ports()
    z = blocker.getsockname()[1]
    config = client_config(
        tmp_path, forward("a", f"127.0.0.1:{x}", t1) + forward("b", f"127.0.0.1:{y}", t1)
    )
    c = daemon(config)
    try:
        state = tmp_path / "client-state"
        wait_until(
            lambda: forward_rows(state).get("a", {}).get("target") == t1, what="a's row", timeout=30
        )
        config.write_text(
            client_config(
                tmp_path, forward("a", f"127.0.0.1:{y}", t2) + forward("b", f"127.0.0.1:{z}", t1)
            ).read_text()
        )
        c.send(signal.SIGHUP)
        wait_until(lambda: "reloaded" in c.log(), what="the reload", timeout=30)
        assert "forward keeps its old listener, the new one cannot be bound" in c.log()
        rows = wait_until(
            lambda: (s := read_status(state)) and "reloaded" in s and s["forwards"],
            what="the status after the reload",
            timeout=30,
        )
        assert rows["b"]["listen"] == f"127.0.0.1:{y}", rows
        assert rows["a"]["listen"] == f"127.0.0.1:{x}", rows
        assert rows["a"]["target"] == t1, rows
        assert c.stop() == 0
    finally:
        c.kill()
        blocker.close()


def test_failed_trade_to_udp_leaves_the_tcp_counters(tmp_path: Path) -> None:
    """TCP forward a on X, with an open tunnel, and UDP forward b on Y become UDP a on Y
    and b on Z, Z held: rolled back, a's row keeps its tunnel, bytes and target (before:
    the trial UDP forwarder, closed again, wrote its zeros there, and the tunnel's end
    then took active_tunnels to -1)."""
    listener, serving = echo_server()
    procs: list[Proc] = []
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", 0))
    try:
        p = daemon(provider_config(tmp_path, listener.getsockname()[1]))
        procs.append(p)
        target = f"dtp://{p.info['host_id']}:7000"
        x = free_port()
        y = free_port(socket.SOCK_DGRAM)
        z = blocker.getsockname()[1]
        udp = 'protocol = "udp"'
        config = client_config(
            tmp_path,
            forward("a", f"127.0.0.1:{x}", target) + forward("b", f"127.0.0.1:{y}", target, udp),
        )
        c = daemon(config)
        procs.append(c)
        state = tmp_path / "client-state"
        with socket.create_connection(("127.0.0.1", x), timeout=10) as kept:
            kept.sendall(b"hello")
            assert kept.recv(100) == b"hello"
            before = wait_until(
                lambda: (
                    (r := forward_rows(state))
                    and r["a"]["active_tunnels"] == 1
                    and r["a"]["bytes_out"] == 5
                    and r["a"]
                ),
                what="a's open tunnel in the status",
                timeout=30,
            )
            config.write_text(
                client_config(
                    tmp_path,
                    forward("a", f"127.0.0.1:{y}", target, udp)
                    + forward("b", f"127.0.0.1:{z}", target, udp),
                ).read_text()
            )
            c.send(signal.SIGHUP)
            wait_until(lambda: "reloaded" in c.log(), what="the reload", timeout=30)
            assert "forward keeps its old listener, the new one cannot be bound" in c.log()
            kept.sendall(b"still")
            assert kept.recv(100) == b"still"
            echoed = time.time()
            status = wait_until(
                lambda: (s := read_status(state)) and s["updated"] > echoed + 0.5 and s,
                what="a status saved after the echo",
                timeout=30,
            )
            rows = status["forwards"]
            assert rows["a"]["bytes_out"] == 10, rows
            assert rows["a"]["active_tunnels"] == 1, rows
            assert rows["a"]["target"] == before["target"] == target, rows
            assert rows["a"]["bytes_in"] == 10, rows
            assert rows["a"]["listen"] == f"127.0.0.1:{x}", rows
        wait_until(
            lambda: (
                forward_rows(state)["a"]["tunnels"] == 1
                and forward_rows(state)["a"]["active_tunnels"] == 0
            ),
            what="the tunnel's end in the status",
            timeout=30,
        )
        assert forward_rows(state)["b"]["listen"] == f"udp://127.0.0.1:{y}"
        assert c.stop() == 0
    finally:
        blocker.close()
        for proc in reversed(procs):
            proc.kill()
        listener.close()
        serving.join(5)
