"""A forward's backoff between tries of a new connection (dtp/daemon/_outage.py:
OpenBackoff, sans I/O: the clock is the test's), and the forwarder through an outage of
its target: the endpoint that does not answer is found by a probe, before anything is
spent on the ledger.

While the provider is down, a local client coming after the retry delay (8 s at most)
costs no spending cap and no ledger connection (about 11 M MIST of gas each on the Sui
stand-in, and a deposit locked until settled): the probe finds the endpoint refusing
first."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from pathlib import Path
from typing import Any

import pytest

import dtp.daemon._forwarder
from dtp.daemon._config import Backend, ForwardConfig
from dtp.daemon._forwarder import Forwarder
from dtp.daemon._outage import (
    OPEN_BACKOFF_FIRST,
    OPEN_BACKOFF_MAX,
    SPENT_BACKOFF_FIRST,
    SPENT_BACKOFF_MAX,
    BackingOff,
    OpenBackoff,
    TargetUnreachable,
    probe_target,
)
from dtp.daemon._refunds import Refunds
from dtp.daemon._state import StatusBook
from dtp.errors import ChainError, TunnelError
from dtp.hostid._address import HostAddress
from dtp.ledger._objects import EventFilter, Sla
from dtp.ledger.local import LocalLedger
from tests.support.paid_inprocess import ident

SERVER, CLIENT = ident(0x44), ident(0x45)

# -- the backoff, on the test's clock ----------------------------------------------------------


def test_failures_that_spent_nothing_double_up_to_the_cap() -> None:
    backoff = OpenBackoff()
    delays = [backoff.failed(100.0, ChainError("away")) for _ in range(8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    assert delays[0] == OPEN_BACKOFF_FIRST and max(delays) == OPEN_BACKOFF_MAX
    assert backoff.failures == 8


def test_clients_during_the_backoff_are_refused_at_once_with_its_failure() -> None:
    backoff = OpenBackoff()
    assert backoff.refusal(0.0) is None  # nothing failed: try
    cause = ChainError("the node is away")
    backoff.failed(10.0, cause)
    refused = backoff.refusal(10.2)
    assert isinstance(refused, BackingOff) and isinstance(refused, TunnelError)
    assert "the node is away" in str(refused) and "tried again in 0.3 s" in str(refused)
    assert refused.__cause__ is cause
    assert backoff.refusal(10.5) is None  # the backoff passed: one try may go


def test_a_failure_after_money_moved_backs_off_longer() -> None:
    """An open whose transactions went through, then failed (the target answered the
    probe and refused the DTP connection): each such try costs a deposit locked until
    the half-close timeout, so the next waits SPENT_BACKOFF_FIRST at least, doubling up
    to SPENT_BACKOFF_MAX."""
    backoff = OpenBackoff()
    assert backoff.failed(0.0, ChainError("x")) == OPEN_BACKOFF_FIRST
    delays = [backoff.failed(0.0, ChainError("x"), spent=True) for _ in range(6)]
    assert delays == [30.0, 60.0, 120.0, 240.0, 300.0, 300.0]
    assert delays[0] == SPENT_BACKOFF_FIRST and delays[-1] == SPENT_BACKOFF_MAX


def test_a_tunnel_resets_the_backoff_an_open_alone_does_not() -> None:
    """An open that succeeds clears the failure (the next open may go at once), but the
    delay is kept until a tunnel opened: a deposit too small for one tunnel must go on
    doubling (tests/daemon/test_forwarder.py)."""
    backoff = OpenBackoff()
    backoff.failed(0.0, ChainError("x"))
    backoff.failed(1.0, ChainError("x"))
    backoff.opened()
    assert backoff.refusal(1.1) is None
    assert backoff.failed(2.0, ChainError("x")) == 2.0  # still doubling
    backoff.tunnel_opened()
    assert backoff.failures == 0
    assert backoff.failed(3.0, ChainError("x")) == OPEN_BACKOFF_FIRST


def test_a_failure_that_says_what_the_last_said_is_a_repeat() -> None:
    """A held connection refused again, a deposit still on its way back: the forwarder
    logs such a failure once, as it begins."""
    backoff = OpenBackoff()
    refused = TunnelError("cannot connect to dtp://0x1:80: refused")
    assert not backoff.repeats(refused)  # (nothing failed yet)
    backoff.failed(0.0, refused, spent=True)
    assert backoff.repeats(TunnelError("cannot connect to dtp://0x1:80: refused"))
    assert not backoff.repeats(TunnelError("cannot connect to dtp://0x1:80: limit"))
    backoff.tunnel_opened()
    assert not backoff.repeats(refused)


def test_an_outage_begins_and_ends_once() -> None:
    """The first probe that finds the target silent begins the outage (logged once), the
    following ones do not; the first that reaches it ends it."""
    backoff = OpenBackoff()
    error = TargetUnreachable("down")
    assert backoff.unreachable(0.0, error) == (0.5, True)
    assert backoff.unreachable(0.5, error) == (1.0, False)
    assert backoff.unreachable(1.5, error) == (2.0, False)
    assert backoff.outage
    assert backoff.reached() is True
    assert backoff.reached() is False
    assert not backoff.outage


def test_an_hour_of_outage_is_a_few_hundred_probes_and_no_open() -> None:
    """Steady traffic (a client every 0.1 s) for an hour of outage on the test's clock:
    the probes that go are spaced by the capped backoff (at most one per 8 s: 450),
    every other client is refused at once; none of it spends anything."""
    backoff = OpenBackoff()
    probes = refused = 0
    for tick in range(36_000):
        now = tick / 10
        if backoff.refusal(now) is None:
            probes += 1
            backoff.unreachable(now, TargetUnreachable("down"))
        else:
            refused += 1
    assert probes <= 3600 / OPEN_BACKOFF_MAX + 5
    assert refused == 36_000 - probes


# -- the probe and the forwarder through an outage ----------------------------------------------


def _closed_port() -> int:
    """A local port nothing listens on (connects to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_probe_reads_the_host_and_tries_its_endpoints_in_turn(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.sqlite")

    async def run() -> None:
        listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        dead = _closed_port()
        try:
            host = ledger.create_host(
                SERVER, SERVER.noise_public, [f"tcp://127.0.0.1:{dead}", f"127.0.0.1:{port}"]
            )
            target = HostAddress.parse(f"dtp://{host}:80")
            assert await probe_target(ledger, target, 2.0) is True  # the second answers
            ledger.set_endpoints(SERVER, host, [f"tcp://127.0.0.1:{dead}".encode()])
            with pytest.raises(TargetUnreachable) as unreachable:
                await probe_target(ledger, target, 2.0)
            assert f"127.0.0.1:{dead}" in str(unreachable.value)
            assert "nothing was spent on the ledger" in str(unreachable.value)
            ledger.set_endpoints(SERVER, host, [])
            assert await probe_target(ledger, target, 2.0) is False  # the ledger carrier
        finally:
            listener.close()

    try:
        asyncio.run(run())
    finally:
        ledger.close()


def test_a_forwarder_spends_nothing_while_its_target_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The target's Host publishes an endpoint that refuses connections. Thirty local
    clients come over about 1.5 s: each is closed at once, the probes go one at a time
    and back off (0.5 s, then 1 s), and the ledger sees no spending cap, no
    connection, no transaction at all of the client; the book of connections stays
    empty."""
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    ledger.faucet(CLIENT.sui_address, 1 << 40)
    host = ledger.create_host(SERVER, SERVER.noise_public, [f"tcp://127.0.0.1:{_closed_port()}"])
    ledger.add_service(SERVER, host, 80, "raw", Sla(1, 1, 1000))
    probes: list[float] = []
    real = probe_target

    async def counted(*args: Any) -> bool:
        probes.append(asyncio.get_running_loop().time())
        return await real(*args)

    monkeypatch.setattr(dtp.daemon._forwarder, "probe_target", counted)
    config = ForwardConfig(
        "f", Backend("127.0.0.1", 0), HostAddress.parse(f"dtp://{host}:80"), deposit=5000
    )
    book = StatusBook(tmp_path / "state")
    refunds = Refunds(ledger, CLIENT, tmp_path)
    forwarder = Forwarder(config, ledger, CLIENT, book, refunds=refunds)

    async def client(address: tuple[str, int]) -> bytes:
        reader, writer = await asyncio.open_connection(*address)
        try:
            writer.write(b"hello")
            with contextlib.suppress(ConnectionResetError):
                return await asyncio.wait_for(reader.read(), 5)
            return b""
        finally:
            writer.close()

    async def run() -> None:
        address = await forwarder.start()
        try:
            loop = asyncio.get_running_loop()
            start = loop.time()
            for _ in range(30):
                assert await client(address) == b""
                await asyncio.sleep(0.05)
            assert loop.time() - start < 5.0
        finally:
            await forwarder.drain(1.0)

    try:
        asyncio.run(run())
        # one at a time, backing off: at 0, 0.5 and (when the clients last so long) 1.5 s
        assert 2 <= len(probes) <= 3, probes
        gaps = [b - a for a, b in itertools.pairwise(probes)]
        assert all(gap >= step for gap, step in zip(gaps, [0.5, 1.0], strict=False)), gaps
        assert book.forwards["f"].errors == 30 and book.forwards["f"].connections == 0
        events, _ = ledger.events(filter=EventFilter(sender=CLIENT.sui_address))
        assert events == []  # no cap, no open, no half-close
        assert ledger.balance(CLIENT.sui_address) == 1 << 40
        assert refunds.book.entries() == []
        assert not (tmp_path / "connections.sqlite").exists()
    finally:
        refunds.close()
        ledger.close()
