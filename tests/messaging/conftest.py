"""Fixtures of the messaging tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import dtp.socket
from dtp.chain.local import LocalLedger
from dtp.keys import HostIdentity
from tests.messaging.broadcast_world import PRICE, SLOT_MS, World
from tests.messaging.mesh import Mesh
from tests.messaging.rpc_world import Served, make_rpc


@pytest.fixture
def served() -> Iterator[Served]:
    """A blocking RPC server (``make_rpc``) on a DTP server; closed after the test."""
    s = Served(make_rpc())
    yield s
    s.close()


@pytest.fixture
def mesh() -> Iterator[Mesh]:
    """Five pub/sub nodes linked in a ring with two chords; closed after the test."""
    # a ring plus chords: every message reaches most nodes over two or more paths
    m = Mesh(5, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0), (0, 2), (1, 3)])
    yield m
    m.close()


@pytest.fixture
def world() -> Iterator[World]:
    """A broadcast (``PRICE`` a slot of ``SLOT_MS``) on an in-memory LocalLedger."""
    ledger = LocalLedger(":memory:", clock_ms=0)
    caster = HostIdentity.generate()
    fans = [HostIdentity.generate() for _ in range(2)]
    for fan in fans:
        ledger.faucet(fan.sui_address, 10_000)
    b_id = ledger.create_broadcast(caster, "radio", PRICE, SLOT_MS)
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=caster)
    w = World(ledger, caster, fans, b_id, server, [])
    yield w
    for sock in w.socks:
        sock.abort("test over")
    server.close()
