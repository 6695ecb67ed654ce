"""Config edge cases of the services daemon met only once it runs: a forward looping
through this very daemon's service."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from dtp.keys import HostIdentity
from tests.daemon_procs import SUI, daemon, run_daemon, wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_forward_through_its_own_service_is_refused(tmp_path: Path) -> None:
    """A forward to a service of this daemon whose backend is the forward's own
    listener: each tunnel opened another through itself, without end (the old daemon
    went from 20 to thousands of descriptors within seconds of one connection). It is
    a config error at start (exit 2) and a refused reload."""
    HostIdentity.generate().save(tmp_path / "provider.key")
    port = free_port()
    config = tmp_path / "daemon.toml"
    head = f"""[daemon]
ledger = "ledger.sqlite"
identity = "provider.key"
state_dir = "state"
faucet = {SUI}

[[service]]
name = "web"
port = 80
backends = ["localhost:{port}"]
health_interval = 30
"""
    config.write_text(head)
    d = daemon(config)
    try:
        host_id = d.info["host_id"]
        config.write_text(
            head
            + f"""
[[forward]]
name = "loop"
listen = "127.0.0.1:{port}"
target = "dtp://{host_id}:80"
"""
        )
        d.send(signal.SIGHUP)
        wait_until(lambda: "reload refused" in d.log(), what="the reload refused")
        assert "forward[0].target" in d.log() and "a loop" in d.log()
        with socket.socket() as probe:  # no forward was started
            assert probe.connect_ex(("127.0.0.1", port)) != 0
        assert d.stop() == 0
    finally:
        d.kill()
    done = run_daemon(config)
    assert done.returncode == 2, done.stderr
    assert "forward[0].target" in done.stderr and "a loop" in done.stderr
    assert "Traceback" not in done.stderr
