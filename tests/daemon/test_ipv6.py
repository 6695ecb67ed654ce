"""IPv6 addresses in the services daemon: the endpoint it publishes and the addresses
it reports must carry the address in brackets, or no client can tell the port from it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from dtp.daemon._config import Backend, parse_config
from dtp.errors import DaemonConfigError
from dtp.identity.keys import HostIdentity
from tests.support.daemon_procs import SUI, Proc, daemon, write_forwarder


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_ipv6_addresses_are_written_in_brackets(tmp_path: Path) -> None:
    assert str(Backend("::1", 80)) == "[::1]:80"
    assert str(Backend("127.0.0.1", 80)) == "127.0.0.1:80"
    assert str(Backend("example.com", 80)) == "example.com:80"
    text = """[daemon]
ledger = "l.sqlite"
identity = "k.key"
public_endpoint = "%s"
[[service]]
name = "a"
port = 1
backends = ["127.0.0.1:9"]
"""
    published = {
        "::1:7700": "[::1]:7700",
        "[::1]:7700": "[::1]:7700",
        "10.0.0.1:7700": "10.0.0.1:7700",
        "tcp://example.com:7700": "tcp://example.com:7700",
    }
    for given, wanted in published.items():
        config = parse_config(text % given, tmp_path / "dtp.toml")
        assert config.daemon.public_endpoint == wanted


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback")
def test_daemon_and_forward_on_ipv6(tmp_path: Path) -> None:
    """A daemon listening on ::1 is reached through its published endpoint (the old one
    published "::1:<port>", which clients cannot parse: every tunnel waited 10 s on the
    ledger carrier, then failed), and the ready line gives the forward's address in a
    form a client can use."""
    HostIdentity.generate().save(tmp_path / "provider.key")
    HostIdentity.generate().save(tmp_path / "client.key")
    echo = socket.create_server(("::1", 0), family=socket.AF_INET6)
    procs: list[Proc] = []
    try:
        config = tmp_path / "daemon.toml"
        config.write_text(
            f"""[daemon]
ledger = "ledger.sqlite"
identity = "provider.key"
faucet = {SUI}
listen = "::1:0"

[[service]]
name = "svc"
port = 7000
backends = ["[::1]:{echo.getsockname()[1]}"]
health_interval = 30
"""
        )
        d = daemon(config)
        procs.append(d)
        assert d.info["endpoint"].startswith("[::1]:")
        forward = write_forwarder(tmp_path, d.info["host_id"], 7000)
        forward.write_text(forward.read_text().replace('"127.0.0.1:0"', '"[::1]:0"'))
        f = daemon(forward)
        procs.append(f)
        address = f.info["forwards"]["svc"]
        assert address.startswith("[::1]:")
        host, port = address.rsplit(":", 1)
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5) as client:
            client.sendall(b"over v6")
            # the daemon's health check comes first; the tunnel's connection next
            while True:
                backend, _ = echo.accept()
                with backend:
                    data = backend.recv(100)
                    if data:
                        backend.sendall(data)
                        break
            assert client.recv(100) == b"over v6"
    finally:
        for proc in reversed(procs):
            proc.kill()
        echo.close()


def test_ipv6_address_without_a_port_is_refused(tmp_path: Path) -> None:
    """An IPv6 address with the port left out ("::1") parsed as host ":" port 1 and was
    taken: every tunnel then failed. It is a config error naming the bracket form."""
    text = """[daemon]
ledger = "l.sqlite"
identity = "k.key"
[[service]]
name = "a"
port = 1
backends = ["%s"]
"""
    for bad in ("::1", "2001:db8::1", "fe80::1", "a:b:80"):
        with pytest.raises(DaemonConfigError, match=r"service\[0\]\.backends: .*\[::1\]:80"):
            parse_config(text % bad, tmp_path / "dtp.toml")
    for good, host in (("::1:80", "::1"), ("[::1]:80", "::1"), ("localhost:80", "localhost")):
        config = parse_config(text % good, tmp_path / "dtp.toml")
        assert config.services[0].backends == (Backend(host, 80),)
