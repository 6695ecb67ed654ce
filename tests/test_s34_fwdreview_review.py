"""The forwarder's connections (session 34, second review of its spill-over, retirement
and open backoff), against a host in this process.

* A deposit too small to pay for one tunnel backed the next open off, but always by
  the first step (0.5 s): the successful open of the fresh connection just before had
  reset the backoff, so the doubling never happened and a forwarder with a bad deposit
  opened (and paid the ledger for) a connection every half second while clients came.
* Tunnels below the host's stream limit, one after another or several at once, stay on
  one connection (the spill-over's timeout of 0 fires only at the limit).

Real sockets on 127.0.0.1, a real DTP server published on a LocalLedger file; the host
speaks the tunnel protocol itself (status byte, echo).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from dtp.chain.objects import Sla
from dtp.daemon.forwarder import Forwarder
from tests.test_s34_forwarder_review import (
    BOUND,
    _client,
    _close,
    _echoes,
    _forwarder,
    _Host,
    _spills_over,
)


async def _tunnel_once(forwarder: Forwarder, data: bytes) -> None:
    """One local client: an echo, then a clean end of its tunnel."""
    reader, writer = await _client(forwarder)
    try:
        await _echoes(reader, writer, data)
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), BOUND) == b""
    finally:
        _close(writer)


def test_tunnels_below_the_stream_limit_share_one_connection_and_the_next_spills(
    tmp_path: Path,
) -> None:
    """The host allows 4 streams per connection (stream 0 and three tunnels). Twenty
    tunnels one after the other, then rounds of three at once, all take the first
    connection (open_stream() does not suspend with a slot free, so the timeout of 0
    around it never fires there); with three held open, a fourth client is served on a
    second connection. Before: it waited for a slot, for good behind the held ones."""

    async def run() -> None:
        host = _Host(max_streams=4)
        async with _forwarder(tmp_path, host) as (forwarder, _):
            for n in range(20):
                await _tunnel_once(forwarder, b"one %d" % n)
            for _ in range(5):
                await asyncio.gather(*(_tunnel_once(forwarder, b"%d" % i) for i in range(3)))
            assert forwarder.stats.connections == 1
            assert len(host.connections) == 1
            assert forwarder.stats.tunnels == 35
            await _spills_over(forwarder, host, held=3)

    asyncio.run(asyncio.wait_for(run(), 4 * BOUND))


def test_a_deposit_too_small_for_one_tunnel_backs_off_longer_each_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deposit (100 MIST) cannot pay for one tunnel (1000 MIST a request): each
    connection opened for a client is retired at once, and the next open waits for a
    backoff doubling after each such failure. Before: the fresh connection's successful
    open reset the backoff first, so it stayed at its first step -- a paid connection
    opened on the ledger every 0.5 s for as long as clients came (before the backoff,
    one per client)."""
    monkeypatch.setattr("dtp.daemon.forwarder.OPEN_BACKOFF_FIRST", 0.5, raising=False)
    sla = Sla(0, 1000, 100)

    async def refused(forwarder: Forwarder) -> None:
        reader, writer = await _client(forwarder)
        try:
            writer.write(b"hello")
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(), BOUND) == b""
        finally:
            _close(writer)

    async def run() -> None:
        host = _Host()
        async with _forwarder(tmp_path, host, sla, deposit=100) as (forwarder, _):
            await refused(forwarder)  # opens one, which cannot pay: backoff 0.5 s
            assert forwarder.stats.connections == 1
            await asyncio.sleep(0.6)
            await refused(forwarder)  # past the backoff: opens another; now 1 s
            assert forwarder.stats.connections == 2
            await asyncio.sleep(0.6)
            await refused(forwarder)  # within the doubled backoff: refused, no open
            assert forwarder.stats.connections == 2
            assert forwarder.stats.errors == 3

    asyncio.run(asyncio.wait_for(run(), 4 * BOUND))
