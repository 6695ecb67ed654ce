"""A paid server's ends weighed against their gas (docs/escrow.md §7.1), on real
connections: a paid server (dtp.socket.serve, dtp.aio.serve) and metered clients
(dtp.socket.create_connection) on the Sui node stand-in, where a connection's end
costs its server 3.3 M MIST of gas, and on a LocalLedger file, which charges none.

- a cheap connection (its fee far below the gas of claiming it) is left to its client:
  the server sends no transaction, the client half-closes, and once the half-close
  timeout has passed its refund collector settles with no call made -- the whole
  deposit back, the unclaimed fee with it;
- a profitable one is claimed and settled as it ends, in one transaction;
- two whose fees each cover a place in a batch but not a transaction of their own are
  settled together, in one transaction;
- on a LocalLedger every end is settled at once, as before gas was weighed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.payments._refunds
import dtp.payments._serving
import dtp.socket
from dtp.hostid.paid import PaidSocket, ServicePolicy
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import HALF_CLOSE_TIMEOUT_MS, ConnectionState, Sla
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from dtp.ledger.sui import SuiConfig, SuiLedger
from dtp.payments._refunds import refunds_for
from dtp.payments.receipt_store import ReceiptStore
from dtp.testing.sui_node import SuiNodeStandIn
from tests.support.polling import wait_for
from tests.support.settlements import is_settled, settled_escrow, settlement

PORT = 8080
DEPOSIT = 20_000_000
GAS = 10**10
#: The docs' old example price: 10 MIST/KiB (a few KiB: a few dozen MIST)
CHEAP = Sla(price_per_kib=10, price_per_request=0, min_deposit=1_000_000)
#: A connection's one request pays 4 M MIST: more than its end's gas
PROFITABLE = Sla(price_per_kib=10, price_per_request=4_000_000, min_deposit=5_000_000)
#: 3 M a connection: below a settlement of its own (3.33 M), above a place in a batch
#: (2.3 M): two pay for one batch
BATCHED = Sla(price_per_kib=10, price_per_request=3_000_000, min_deposit=5_000_000)


def echo(sock: PaidSocket) -> None:
    while data := sock.recv(65536):
        sock.sendall(data)


@dataclass
class Provider:
    node: SuiNodeStandIn | None
    ledger: Ledger
    identity: HostIdentity
    host: str
    tmp: Path
    clients: list[Ledger] = field(default_factory=list)

    def fund(self, address: str) -> None:
        if self.node is not None:
            self.node.faucet(address, GAS)
        else:
            assert isinstance(self.ledger, LocalLedger)
            self.ledger.faucet(address, GAS)

    def client(self) -> tuple[HostIdentity, Ledger]:
        identity = HostIdentity.generate()
        self.fund(identity.sui_address)
        if self.node is None:
            ledger: Ledger = LocalLedger(self.tmp / "ledger.db")
        else:
            ledger = SuiLedger(SuiConfig(self.node.url, self.node.package_id, timeout=30.0))
        self.clients.append(ledger)
        return identity, ledger

    def service(self, port: int, sla: Sla) -> None:
        self.ledger.add_service(self.identity, self.host, port, "echo", sla)

    def ends_gas(self) -> int:
        """The gas the provider paid for connections' ends so far."""
        return self.ledger.gas_spent(self.identity.sui_address).by_kind.get("ends", 0)

    def advance_past_timeout(self) -> None:
        ms = HALF_CLOSE_TIMEOUT_MS + 2_000
        if self.node is not None:
            self.node.advance_clock(ms)
        else:
            assert isinstance(self.ledger, LocalLedger)
            self.ledger.advance_clock(ms)


@pytest.fixture(params=["sui", "local"])
def provider(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Provider]:
    # a refund collector looks at the clock every 0.1 s, recovery rounds (a batch's
    # turn) come every 0.1 s: the test's clock moves by hand
    monkeypatch.setattr(dtp.payments._refunds, "POLL", 0.1)
    monkeypatch.setattr(dtp.payments._serving, "RECOVERY_INTERVAL", 0.1)
    identity = HostIdentity.generate()
    with contextlib.ExitStack() as stack:
        node: SuiNodeStandIn | None = None
        if request.param == "sui":
            node = stack.enter_context(SuiNodeStandIn(clock_ms=1_000_000))
            node.faucet(identity.sui_address, GAS)
            ledger: Ledger = SuiLedger(SuiConfig(node.url, node.package_id, timeout=30.0))
        else:
            ledger = LocalLedger(tmp_path / "ledger.db")
            assert isinstance(ledger, LocalLedger)
            ledger.faucet(identity.sui_address, GAS)
        stack.callback(ledger.close)
        host = ledger.create_host(identity, identity.noise_public)
        made = Provider(node, ledger, identity, host, tmp_path)
        yield made
        for client in made.clients:
            _forget_refunds(client)
            client.close()
        if node is not None:
            node.state.check()


def _forget_refunds(ledger: Ledger) -> None:
    """Stop the refund collectors of ``ledger``, what they wait for dropped (the tests
    that leave a deposit behind look at it themselves; logged at exit, it is noise)."""
    for collector in list(dtp.payments._refunds._collectors.values()):
        if collector.ledger is ledger:
            collector.close(log_waiting=False)


def _serve(provider: Provider, port: int, **options: Any) -> dtp.socket.PaidServer:
    return dtp.socket.serve(
        provider.host,
        port,
        echo,
        ledger=provider.ledger,
        identity=provider.identity,
        receipts=provider.tmp / f"receipts-{port}.db",
        **options,
    )


def _connect_and_close(provider: Provider, port: int, size: int = 4096) -> tuple[str, Ledger]:
    """A metered client's connection: ``size`` bytes echoed, then closed. Its ID and
    the client's ledger."""
    identity, ledger = provider.client()
    with dtp.socket.create_connection(
        f"dtp://{provider.host}:{port}",
        ledger=ledger,
        identity=identity,
        deposit=DEPOSIT,
        timeout=20,
    ) as sock:
        sock.sendall(b"x" * size)
        got = 0
        while got < size:
            got += len(sock.recv(65536))
        cid = sock.connection_id
        assert cid is not None
    return cid, ledger


def test_a_cheap_connections_end_is_left_and_its_client_takes_the_deposit_back(
    provider: Provider,
) -> None:
    provider.service(PORT, CHEAP)
    server = _serve(provider, PORT)
    try:
        cid, client_ledger = _connect_and_close(provider, PORT)
        tc = provider.ledger.get_connection(cid)
        if provider.node is None:
            # no gas: settled as it ended, as ever
            assert wait_for(lambda: is_settled(provider.ledger, cid), 10)
            assert [c for c, _ in server.settlements] == [cid] and not server.left
            return
        assert wait_for(lambda: len(server.left) == 1, 10)
        left_cid, left = server.left[0]
        assert left_cid == cid and 0 < left.fee < left.gas
        assert provider.ends_gas() == 0  # not one transaction for it
        assert not server.settlements
        # the client half-closed it (its close waited for the server, which sent
        # nothing), and its refund collector waits for the timeout
        tc = provider.ledger.get_connection(cid)
        assert tc.state == ConnectionState.HALF_CLOSED and tc.half_closed_by == tc.client
        collector = refunds_for(client_ledger, _client_of(provider, tc.client))
        assert cid in collector
        time.sleep(0.5)  # (looked at the clock: not due yet)
        assert not is_settled(provider.ledger, cid)
        provider.advance_past_timeout()
        assert wait_for(lambda: is_settled(provider.ledger, cid), 10)
        escrow = settled_escrow(provider.ledger, cid)
        # the whole deposit back: the fee the server gave up with it
        assert escrow.claimed == 0 and escrow.refunded == DEPOSIT
        assert wait_for(lambda: cid not in collector, 5)  # (dropped just after)
        # the server's store holds the receipt written off: no recovery claims it
        assert server.store.latest(cid) is not None
        assert server.store.latest(cid).unclaimed == 0  # type: ignore[union-attr]
    finally:
        server.close()
        assert server.wait_released(10)
    assert provider.ends_gas() == 0


def _client_of(provider: Provider, address: str) -> HostIdentity:
    """The identity of the client at ``address`` (the collectors are per identity)."""
    for collector in dtp.payments._refunds._collectors.values():
        if collector.identity.sui_address == address:
            return collector.identity
    raise AssertionError(f"no refund collector for {address}")


def test_a_profitable_connection_is_claimed_as_it_ends(provider: Provider) -> None:
    provider.service(PORT, PROFITABLE)
    server = _serve(provider, PORT)
    try:
        cid, _ = _connect_and_close(provider, PORT)
        assert wait_for(lambda: is_settled(provider.ledger, cid), 10)
        ((settled_cid, settlement),) = server.settlements
        escrow = settled_escrow(provider.ledger, cid)
        assert settled_cid == cid and settlement.claimed == escrow.claimed >= 4_000_000
        assert escrow.refunded == DEPOSIT - escrow.claimed
        assert not server.left
        if provider.node is not None:
            # one transaction: its gas below what it claimed
            spent = provider.ledger.gas_spent(provider.identity.sui_address)
            assert spent.by_kind["ends"] == provider.ends_gas() < escrow.claimed
    finally:
        server.close()
        assert server.wait_released(10)


def test_two_ends_worth_a_batch_are_settled_in_one_transaction(provider: Provider) -> None:
    provider.service(PORT, BATCHED)
    server = _serve(provider, PORT, policy=ServicePolicy(batch_window=30.0))
    try:
        before = provider.ledger.gas_spent(provider.identity.sui_address)
        first, _ = _connect_and_close(provider, PORT)
        if provider.node is not None:
            # alone, it waits: its 3 M do not pay for a transaction (3.33 M)
            assert wait_for(lambda: len(server.deferred.batch) == 1, 10)
            time.sleep(0.3)  # (recovery rounds: it still waits)
            assert not is_settled(provider.ledger, first)
        second, _ = _connect_and_close(provider, PORT)
        assert wait_for(lambda: is_settled(provider.ledger, second), 10)
        assert is_settled(provider.ledger, first)
        # (the server records a settlement once its transaction returns, which the
        # ledger shows first)
        assert wait_for(lambda: {c for c, _ in server.settlements} == {first, second}, 10)
        for cid in (first, second):
            escrow = settled_escrow(provider.ledger, cid)
            assert escrow.claimed >= 3_000_000 and escrow.refunded == DEPOSIT - escrow.claimed
        if provider.node is not None:
            after = provider.ledger.gas_spent(provider.identity.sui_address)
            assert after.transactions == before.transactions + 1  # one for both
            assert after.total - before.total < 6_000_000  # (2 * 3 M claimed)
    finally:
        server.close()
        assert server.wait_released(10)


@pytest.mark.parametrize("provider", ["sui"], indirect=True)
def test_an_end_waiting_for_a_batch_is_left_when_the_server_stops(provider: Provider) -> None:
    """Alone in its batch when the server closes: its release leaves it to the client
    (no batch of one pays), rather than claim it at a loss."""
    provider.service(PORT, BATCHED)
    server = _serve(provider, PORT, policy=ServicePolicy(batch_window=30.0))
    cid, _ = _connect_and_close(provider, PORT)
    assert wait_for(lambda: len(server.deferred.batch) == 1, 10)
    server.close()
    assert server.wait_released(10)
    ((left_cid, left),) = server.left
    assert left_cid == cid and left.fee >= 3_000_000
    assert provider.ends_gas() == 0
    with ReceiptStore(provider.tmp / f"receipts-{PORT}.db") as store:
        stored = store.latest(cid)
        assert stored is not None and stored.unclaimed == 0  # written off: never claimed
    assert not is_settled(provider.ledger, cid)  # its client's to settle


def test_the_asyncio_server_leaves_a_cheap_end_too(provider: Provider) -> None:
    provider.service(PORT, CHEAP)

    async def scenario() -> str:
        server = await dtp.aio.serve(
            provider.host,
            PORT,
            _aio_echo,
            ledger=provider.ledger,
            identity=provider.identity,
            receipts=provider.tmp / "aio-receipts.db",
        )
        async with server:
            cid, _ = await asyncio.to_thread(_connect_and_close, provider, PORT)
            if provider.node is None:
                await _until(lambda: is_settled(provider.ledger, cid))
                return cid
            await _until(lambda: len(server.left) == 1)
            assert server.left[0][0] == cid and not server.settlements
        return cid

    cid = asyncio.run(scenario())
    if provider.node is not None:
        assert provider.ends_gas() == 0
        tc = provider.ledger.get_connection(cid)
        assert tc.state == ConnectionState.HALF_CLOSED and not tc.settled
        provider.advance_past_timeout()
        assert wait_for(lambda: is_settled(provider.ledger, cid), 10)
        done = settlement(provider.ledger, cid)
        assert done is not None and done.refunded == DEPOSIT


async def _aio_echo(reader: Any, writer: Any) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "never"
        await asyncio.sleep(0.02)
