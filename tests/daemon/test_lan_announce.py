"""The services daemon announces its services on the LAN (``[daemon] lan_announce``,
docs/daemon.md): each service is found by an mDNS browser with its Host ID, name, DTP
port and the host's key, which the ledger confirms; a reload's new service appears and
its removed one goes; the daemon's stop withdraws the rest. mDNS runs on 127.0.0.1 only
(``lan_interfaces``): nothing leaves the machine."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from dtp.daemon._config import parse_config
from dtp.discovery import lan
from dtp.errors import DaemonConfigError
from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger
from tests.daemon.tcp_backends import echo_server
from tests.support.daemon_procs import SUI, daemon, wait_until
from tests.support.timing import bound

LOOPBACK = ["127.0.0.1"]
#: How long a browser may take to see a change: mDNS probes, announces and re-queries
#: on timers of a second or so, late on a loaded machine. Beside the rest of the suite
#: the bound is longer; a goodbye still tells from an expiry, DEFAULT_TTL (120 s) late.
SEEN = bound(15.0, 45.0)

HEAD = f"""[daemon]
ledger = "ledger.sqlite"
identity = "provider.key"
state_dir = "daemon-state"
faucet = {SUI}
drain_timeout = 1
lan_announce = true
lan_interfaces = ["127.0.0.1"]
"""

SERVICE = """
[[service]]
name = "{name}"
port = {port}
backends = ["127.0.0.1:{backend}"]
health_interval = 30
"""


def test_services_are_announced_reloaded_and_withdrawn(tmp_path: Path) -> None:
    identity = HostIdentity.generate()
    identity.save(tmp_path / "provider.key")
    listener, _serving = echo_server()
    backend = listener.getsockname()[1]
    web = SERVICE.format(name="web", port=80, backend=backend)
    ssh = SERVICE.format(name="ssh", port=22, backend=backend)
    config = tmp_path / "daemon.toml"
    config.write_text(HEAD + web)
    assert SEEN < lan.DEFAULT_TTL / 2  # (what the goodbye's wait tells apart)
    d = daemon(config)
    try:
        host_id = d.info["host_id"]
        assert len(d.info["lan"]) == 1
        with lan.browse(interfaces=LOOPBACK, host_id=host_id) as browser:
            peer = browser.wait_for(timeout=SEEN)
            assert (peer.record.service, peer.record.port) == ("web", 80)
            assert peer.key == identity.noise_public
            assert peer.endpoints[0][1] == int(d.info["endpoint"].rsplit(":", 1)[1])
            assert peer.name.startswith(d.info["lan"][0].split(".")[0])
            ledger = LocalLedger(tmp_path / "ledger.sqlite")
            try:
                assert peer.verify_host(ledger).id == host_id  # (the claim holds)
            finally:
                ledger.close()

            # a reload trades web for ssh: ssh comes, web goes
            config.write_text(HEAD + ssh)
            d.send(signal.SIGHUP)
            wait_until(
                lambda: sorted(p.record.service or "" for p in browser.peers()) == ["ssh"],
                timeout=SEEN,
                what="the LAN to show ssh only",
            )
            assert browser.peers()[0].record.port == 22

            # the stop withdraws it: its goodbye, not an expiry two minutes later
            assert d.stop() == 0
            wait_until(lambda: browser.peers() == [], timeout=SEEN, what="the goodbye")
    finally:
        d.kill()
        listener.close()


def test_the_lan_settings_are_checked(tmp_path: Path) -> None:
    def config(lines: str) -> str:
        head = '[daemon]\nledger = "l.sqlite"\nidentity = "id.key"\n'
        return head + lines + SERVICE.format(name="s", port=1, backend=2)

    parsed = parse_config(config(""), tmp_path / "dtp.toml")
    assert (parsed.daemon.lan_announce, parsed.daemon.lan_interfaces) == (False, ())
    parsed = parse_config(
        config('lan_announce = true\nlan_interfaces = ["127.0.0.1", "::1", "127.0.0.1"]\n'),
        tmp_path / "dtp.toml",
    )
    assert parsed.daemon.lan_announce
    assert parsed.daemon.lan_interfaces == ("127.0.0.1", "::1")
    for line, message in [
        ('lan_announce = "yes"', "lan_announce: expected true or false"),
        ('lan_interfaces = "127.0.0.1"', "lan_interfaces: expected a list of IP addresses"),
        ('lan_interfaces = ["eth0"]', "is not an IP address"),
        ("lan_interfaces = [1]", "is not an IP address"),
    ]:
        with pytest.raises(DaemonConfigError, match=message):
            parse_config(config(line + "\n"), tmp_path / "dtp.toml")
