"""A server that closes a connection for a reason delivers its CLOSE, whatever the client
is doing: the carrier is half-closed behind the CLOSE and drained (what the client
still sends is read and dropped) until the client closes its side or the linger ends,
instead of closed with the client's bytes unread, whose reset would overtake the CLOSE.
A client the host denies while it is busy in a ``sendall`` loop reads the firewall's
code, as one blocked in ``recv()`` does, not a bare ConnectionLost. Both paid servers,
on a LocalLedger file."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp.socket
from dtp.errors import ConnectionClosed, DTPError
from dtp.hostid.paid import PaidSocket, ServicePolicy
from dtp.hostid.paid._aio import PaidReader, PaidWriter
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.payments.metering import CLOSE_FIREWALL_DENIED
from tests.support.paid_twins import PaidWorld, hosted_ledgers, ident, loop_in_thread, stop
from tests.support.polling import wait_for

SERVER = ident(0xB1)
CLIENTS = [ident(0xC0 + i) for i in range(10)]
PORT = 9
SLA = Sla(price_per_kib=1, price_per_request=1, min_deposit=1000)
#: The Host re-read 5 times a second; a pause for payment long enough that a server
#: held up by one (see run_ten) shows in the clients' connect times
POLICY = ServicePolicy(refresh_interval=0.2, pause_timeout=30.0)
CONNECT_BOUND = 10.0  # seconds a connect may take, on a loaded machine
CHUNK = b"s" * (64 << 10)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[PaidWorld]:
    with hosted_ledgers(tmp_path, SERVER, CLIENTS[0], PORT, SLA) as (ledger, server_ledger, host):
        for client in CLIENTS[1:]:
            ledger.faucet(client.sui_address, 10_000_000)
        yield PaidWorld(ledger, server_ledger, host, tmp_path)


def sink(sock: PaidSocket) -> None:
    """Blocking handler: read and drop until the connection ends."""
    while sock.recv(1 << 16):
        pass


async def sink_aio(reader: PaidReader, writer: PaidWriter) -> None:
    while await reader.read(1 << 16):
        pass


def denied_mid_sendall(world: PaidWorld, client: HostIdentity) -> tuple[BaseException, float]:
    """``client`` sends in a loop; the host denies it once bytes flow: what its
    ``sendall`` (or the read after it) raised, and how long its connect took."""
    began = time.monotonic()
    with world.connect_as(client, PORT, 1_000_000) as sock:
        connected = time.monotonic() - began
        sent = 0
        denied = False
        try:
            while True:
                sock.sendall(CHUNK)
                sent += len(CHUNK)
                if not denied and sent >= 4 * len(CHUNK):
                    denied = True
                    threading.Thread(
                        target=world.ledger.deny, args=(SERVER, world.host_id, client.sui_address)
                    ).start()
        except DTPError as exc:
            return exc, connected
    raise AssertionError("unreachable")


def run_ten(world: PaidWorld) -> list[BaseException]:
    """Ten clients one after another from 127.0.0.1, each denied mid-stream: what each
    raised. Each connects at once: the connection denied before it must not hold the
    server up. (A denied connection paused for payment, bytes still buffered, had the
    asyncio server's handler read them a byte at a time without yielding: the loop, and
    the next connect, waited for the pause timeout -- some connects closed in their
    handshake then. tests/paid/test_unpaid_end.py)"""
    outcomes = []
    for client in CLIENTS:
        started = time.monotonic()
        outcome, connected = denied_mid_sendall(world, client)
        outcomes.append(outcome)
        assert connected < CONNECT_BOUND, f"a connect took {connected:.1f} s"
        assert time.monotonic() - started < 15
    return outcomes


def assert_all_denied(outcomes: list[BaseException]) -> None:
    codes = [
        getattr(exc, "code", None) if isinstance(exc, ConnectionClosed) else repr(exc)
        for exc in outcomes
    ]
    assert codes == [CLOSE_FIREWALL_DENIED] * len(CLIENTS), codes


@pytest.mark.timeout(120)
def test_a_sendall_loop_denied_mid_stream_reads_the_firewall_code(
    world: PaidWorld, api: str
) -> None:
    """Ten clients in a sendall loop, each denied mid-stream by a paid server of either
    API: each reads the firewall's CLOSE code, within 15 s; money is conserved."""
    if api == "blocking":
        with dtp.socket.serve(
            world.host_id, PORT, sink, ledger=world.server_ledger, identity=SERVER, policy=POLICY
        ) as server:
            outcomes = run_ten(world)
            assert wait_for(lambda: server.open_connections == 0, timeout=30)
    else:
        with loop_in_thread() as loop:
            aio_server = world.serve_aio(loop, PORT, sink_aio, SERVER, policy=POLICY)
            try:
                outcomes = run_ten(world)
            finally:
                asyncio.run_coroutine_threadsafe(stop(aio_server), loop).result(60)
    assert_all_denied(outcomes)
    audit = world.ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
