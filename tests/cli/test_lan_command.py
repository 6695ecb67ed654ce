"""``dtp lan`` lists what a browser finds on the LAN in its ``--timeout`` (here mDNS on
127.0.0.1 only): an announced server with its endpoint, key and record, as text and as
JSON lines, filtered by service."""

from __future__ import annotations

import json
import secrets

import pytest

import dtp.socket
from dtp.cli import main
from dtp.discovery import lan
from dtp.identity.keys import HostIdentity


def test_dtp_lan_lists_an_announced_server(capsys: pytest.CaptureFixture[str]) -> None:
    service = f"svc-{secrets.token_hex(4)}"  # (other test runs may announce on loopback)
    identity = HostIdentity.generate()
    with (
        dtp.socket.create_server(("127.0.0.1", 0), identity=identity) as server,
        lan.announce(server, service=service, port=7, interfaces=["127.0.0.1"]) as announced,
    ):
        # (3 s, the default: a responder answers a record at most once a second, RFC 6762
        # §6, and another browser may have just asked)
        args = ["lan", "--interface", "127.0.0.1", "--timeout", "3", "--service", service]
        assert main([*args, "--json"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 1
        seen = json.loads(lines[0])
        assert seen["name"] == announced.name
        assert seen["endpoints"] == [f"127.0.0.1:{server.address[1]}"]
        assert seen["key"] == identity.noise_public.hex()
        assert (seen["service"], seen["port"], seen["graph"]) == (service, 7, None)

        assert main(args) == 0
        out = capsys.readouterr().out
        assert f"127.0.0.1:{server.address[1]}" in out and f"service {service}:7" in out
        assert out.rstrip().endswith("1 found")

        other = ["lan", "--interface", "127.0.0.1", "--timeout", "0.5", "--service", "x" + service]
        assert main(other) == 0
        assert capsys.readouterr().out.strip() == "0 found"


def test_dtp_lan_refuses_what_it_cannot_do(capsys: pytest.CaptureFixture[str]) -> None:
    # both the command line's: exit status 2, one line on stderr (docs/cli.md)
    assert main(["lan", "--timeout", "0"]) == 2
    assert capsys.readouterr().err == (
        "dtp lan: --timeout must be above 0 and at most 600 seconds\n"
    )
    assert main(["lan", "--interface", "eth0", "--timeout", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "not an IP address" in err and len(err.splitlines()) == 1
