"""Fixtures of the services daemon tests: ``setup``, a provider's and a client's daemons
on one ledger (tests/daemon/tunnel_setup.py), and ``host``, a ServiceHost with nothing
running."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtp.daemon._services import ServiceHost
from dtp.daemon._state import StatusBook
from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger
from dtp.testing.sui_node import SuiNodeStandIn
from tests.daemon.tunnel_setup import Setup


@pytest.fixture
def setup(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Setup]:
    """A scenario on a LocalLedger file, or with the parameter ``"sui"`` on the Sui
    node stand-in (in this process; the daemons reach it on 127.0.0.1)."""
    with contextlib.ExitStack() as stack:
        node = None
        if getattr(request, "param", "local") == "sui":
            node = stack.enter_context(SuiNodeStandIn())
        s = Setup(tmp_path, node=node)
        try:
            yield s
        finally:
            for proc in reversed(s.procs):
                proc.kill()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[ServiceHost]:
    """A ServiceHost on a LocalLedger file, with nothing running (its rules alone)."""
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    try:
        yield ServiceHost(ledger, HostIdentity.generate(), StatusBook(tmp_path / "state"))
    finally:
        ledger.close()
