"""The daemon's event loop (``[daemon] event_loop``, :mod:`dtp.eventloop`): uvloop when
installed (``dtp-sui[fast]``), asyncio's when asked for; the ready line says which. A
provider on uvloop and a forwarder on asyncio carry a tunnel between them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dtp.daemon._config import parse_config
from dtp.errors import DaemonConfigError
from tests.daemon.tunnel_setup import Setup, echo_roundtrip, service
from tests.support.daemon_procs import SUI, write_forwarder

pytest.importorskip("uvloop", reason="the fast extra (uvloop) is a test dependency")


@pytest.mark.parametrize(
    ("provider", "forwarder"), [("uvloop", "asyncio"), ("asyncio", "uvloop"), ("uvloop", "uvloop")]
)
def test_daemons_on_either_loop_carry_a_tunnel(setup: Setup, provider: str, forwarder: str) -> None:
    b = setup.backend()
    d = setup.daemon(setup.write_daemon(service([b.info["port"]]), f'event_loop = "{provider}"'))
    assert d.info["event_loop"] == provider
    lines = f'ledger = "ledger.sqlite"\nfaucet = {10 * SUI}\nevent_loop = "{forwarder}"'
    f = setup.daemon(write_forwarder(setup.tmp, d.info["host_id"], 7000, ledger=lines))
    assert f.info["event_loop"] == forwarder
    host, port = f.info["forwards"]["svc"].rsplit(":", 1)
    for size in (0, 1, 1 << 20):
        data = os.urandom(size)
        assert echo_roundtrip((host, int(port)), data) == data
    assert f.stop() == 0 and d.stop() == 0


def test_auto_is_uvloop_when_installed(setup: Setup) -> None:
    b = setup.backend()
    d = setup.daemon(setup.write_daemon(service([b.info["port"]])))
    assert d.info["event_loop"] == "uvloop"
    assert d.stop() == 0


def test_an_unknown_loop_is_a_config_error(tmp_path: Path) -> None:
    text = '[daemon]\nledger = "l.sqlite"\nevent_loop = "trio"\n'
    with pytest.raises(DaemonConfigError, match=r"event_loop.*auto, asyncio, uvloop"):
        parse_config(text, tmp_path / "dtp.toml")
