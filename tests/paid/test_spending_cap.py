"""Paid connections on a spending cap that reserves their deposits (docs/escrow.md §4,
§6.1), end to end: a client that spends its cap elsewhere, or lowers it to nothing, while
a connection is served cannot make the server's claim fail; a top-up past the cap's room
is refused before anything moves; a settled connection's unspent deposit comes back to
the cap within the epoch. Real LocalLedger file, real DTP connections on 127.0.0.1, the
servers in this process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import DTPError, SpendingCapExceeded
from dtp.hostid.paid import PaidSocket, ServicePolicy, gate_for
from dtp.hostid.paid._aio import PaidAioServer, PaidReader, PaidWriter
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.payments.metering import MeteringConfig
from dtp.payments.receipts import Receipt, fee
from tests.support.paid_twins import funded_ledger, ident, loop_in_thread, stop
from tests.support.polling import wait_for
from tests.support.settlements import is_settled, settled_escrow

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
PORT = 7015
# no refresh by the server during the test: the claims alone are under test; and a pause
# a client slowed by a busy machine still pays within (no test here waits one out)
POLICY = ServicePolicy(pause_timeout=5.0, refresh_interval=3600)
DEPOSIT = 50_000
SERVED = 1 << 20
PAID = fee(SLA, SERVED + 2, 1)  # the b"go", the bytes served, the one stream

SERVER, CLIENT = ident(0x73), ident(0x74)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LocalLedger]:
    with funded_ledger(tmp_path, CLIENT) as ledger:
        yield ledger


@pytest.fixture
def host_id(ledger: LocalLedger) -> str:
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "caps", SLA)
    return host_id


def _serve_until_eof(sock: PaidSocket) -> None:
    """After the client's b"go", send ``SERVED`` bytes, then wait for its close."""
    assert sock.recv(2) == b"go"
    with contextlib.suppress(DTPError):
        sock.sendall(b"x" * SERVED)
        while sock.recv(1024):
            pass


async def _serve_until_eof_aio(reader: PaidReader, writer: PaidWriter) -> None:
    """:func:`_serve_until_eof` for the asyncio server."""
    assert await reader.readexactly(2) == b"go"
    with contextlib.suppress(DTPError):
        writer.write(b"x" * SERVED)
        await writer.drain()
        while await reader.read(1024):
            pass


@contextlib.contextmanager
def _served(ledger: LocalLedger, host_id: str, tmp_path: Path, server: str) -> Iterator[None]:
    """The paid server of ``host_id`` (``server``: "blocking" or "asyncio"), running."""
    if server == "blocking":
        with dtp.socket.serve(
            host_id,
            PORT,
            _serve_until_eof,
            ledger=ledger,
            identity=SERVER,
            receipts=tmp_path / "receipts.db",
            policy=POLICY,
        ):
            yield
        return
    server_ledger = LocalLedger(tmp_path / "ledger.db")  # the server's own, used in threads
    with loop_in_thread() as loop:
        aio_server: PaidAioServer = asyncio.run_coroutine_threadsafe(
            dtp.aio.serve(
                host_id,
                PORT,
                _serve_until_eof_aio,
                ledger=server_ledger,
                identity=SERVER,
                receipts=tmp_path / "receipts.db",
                policy=POLICY,
            ),
            loop,
        ).result(10)
        try:
            yield
        finally:
            asyncio.run_coroutine_threadsafe(stop(aio_server), loop).result(10)
            server_ledger.close()


def _connect(ledger: LocalLedger, host_id: str, cap: str | None = None) -> dtp.socket.DTPSocket:
    return dtp.socket.create_connection(
        f"dtp://{host_id}:{PORT}",
        timeout=20,
        ledger=ledger,
        identity=CLIENT,
        deposit=DEPOSIT,
        cap_id=cap,
        metering=MeteringConfig(every_bytes=64 << 10),
    )


def _take_service(sock: dtp.socket.DTPSocket) -> None:
    sock.sendall(b"go")
    got = 0
    while got < SERVED:
        got += len(sock.recv(1 << 16))


def _escrow_of(ledger: LocalLedger, cid: str) -> tuple[int, int, int]:
    e = settled_escrow(ledger, cid)
    return e.deposited, e.claimed, e.refunded


def _conserved(ledger: LocalLedger) -> bool:
    audit = ledger.audit()
    return bool(audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"])


@pytest.mark.parametrize("server", ["blocking", "asyncio"])
def test_a_cap_spent_elsewhere_and_lowered_cannot_void_the_receipts(
    ledger: LocalLedger, host_id: str, tmp_path: Path, server: str
) -> None:
    cap = ledger.create_spending_cap(CLIENT, 2 * DEPOSIT)
    with _served(ledger, host_id, tmp_path, server):
        with _connect(ledger, host_id, cap) as sock:
            cid = sock.connection_id
            assert cid is not None
            _take_service(sock)
            # meanwhile the client spends the rest of its cap on another connection
            # (opened on the ledger, never served), and lowers the cap to nothing
            ledger.open_connection(CLIENT, host_id, PORT, cap, DEPOSIT)
            assert ledger.get_cap(cap).remaining(ledger.epoch()) == 0
            ledger.set_max_per_epoch(CLIENT, cap, 0)
        # (before reservations: the claim was refused, and the client could take its
        # whole deposit back once the half-close timeout passed)
        assert wait_for(lambda: is_settled(ledger, cid), timeout=5)
    assert _escrow_of(ledger, cid) == (DEPOSIT, PAID, DEPOSIT - PAID)
    assert _conserved(ledger)


def test_two_connections_on_one_cap_are_both_paid_in_full(
    ledger: LocalLedger, host_id: str, tmp_path: Path
) -> None:
    cap = ledger.create_spending_cap(CLIENT, 2 * DEPOSIT)
    with _served(ledger, host_id, tmp_path, "blocking"), contextlib.ExitStack() as stack:
        socks = [stack.enter_context(_connect(ledger, host_id, cap)) for _ in range(2)]
        cids = [sock.connection_id for sock in socks]
        for sock in socks:
            _take_service(sock)
        ledger.set_max_per_epoch(CLIENT, cap, 0)
        stack.close()
        assert wait_for(lambda: all(is_settled(ledger, c) for c in cids), timeout=5)
    for cid in cids:
        assert cid is not None
        assert _escrow_of(ledger, cid) == (DEPOSIT, PAID, DEPOSIT - PAID)
    # both settled in the epoch of their opens: the refunds came back to the cap
    assert ledger.get_cap(cap).spent == 2 * PAID
    assert _conserved(ledger)


def test_a_top_up_past_the_cap_is_refused_and_moves_nothing(
    ledger: LocalLedger, host_id: str, tmp_path: Path
) -> None:
    with _served(ledger, host_id, tmp_path, "blocking"):
        # without cap_id= the connection gets a cap of its deposit, which the open used up
        with _connect(ledger, host_id) as sock:
            cid = sock.connection_id
            assert cid is not None
            balance = ledger.balance(CLIENT.sui_address)
            with pytest.raises(SpendingCapExceeded):
                sock.top_up(1000)
            assert ledger.balance(CLIENT.sui_address) == balance
            assert _escrow_of(ledger, cid)[0] == DEPOSIT
            _take_service(sock)  # and the connection is served on
        assert wait_for(lambda: is_settled(ledger, cid), timeout=5)
    assert _escrow_of(ledger, cid) == (DEPOSIT, PAID, DEPOSIT - PAID)


def test_a_settled_connection_releases_its_unspent_deposit(
    ledger: LocalLedger, host_id: str, tmp_path: Path
) -> None:
    # room for one deposit and what the first connection pays: a second connection
    # opens only once the first one's refund came back to the cap
    cap = ledger.create_spending_cap(CLIENT, DEPOSIT + PAID)
    with _served(ledger, host_id, tmp_path, "blocking"):
        with _connect(ledger, host_id, cap) as sock:
            first = sock.connection_id
            assert first is not None
            _take_service(sock)
        assert wait_for(lambda: is_settled(ledger, first), timeout=5)
        assert ledger.get_cap(cap).remaining(ledger.epoch()) == DEPOSIT
        with _connect(ledger, host_id, cap) as sock:
            second = sock.connection_id
            assert second is not None
            _take_service(sock)
        assert wait_for(lambda: is_settled(ledger, second), timeout=5)
    assert _escrow_of(ledger, second) == (DEPOSIT, PAID, DEPOSIT - PAID)
    assert ledger.get_cap(cap).spent == 2 * PAID
    assert _conserved(ledger)


COLLECTABLE_SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=1000)


COLLECTABLE_PORT = 7400


def test_a_receipt_stays_collectable_when_the_client_spends_its_cap_elsewhere(
    tmp_path: Path,
) -> None:
    """Two providers' connections on one cap: the other provider's claim cannot make the
    first one's receipt uncollectable -- each deposit was reserved on the cap at its
    open (docs/escrow.md §4), and a claim charges the cap nothing."""
    ledger = LocalLedger(tmp_path / "ledger.db")
    client = HostIdentity.generate()
    provider_a, provider_b = HostIdentity.generate(), HostIdentity.generate()
    try:
        ledger.faucet(client.sui_address, 1 << 40)
        cap = ledger.create_spending_cap(client, 20_000)
        opened = {}
        for provider in (provider_a, provider_b):
            host = ledger.create_host(provider, provider.noise_public)
            ledger.add_service(provider, host, COLLECTABLE_PORT, "svc", COLLECTABLE_SLA)
            opened[provider] = ledger.prepare_open_connection(
                client, host, COLLECTABLE_PORT, cap, 10_000
            ).execute()
        a, b = opened[provider_a], opened[provider_b]
        gate = gate_for(ledger, a.connection_id, ServicePolicy())
        usage = (600 * 1024, 1)
        amount = fee(COLLECTABLE_SLA, *usage)  # 6005 MIST
        receipt_a = Receipt(ledger.receipt_scope(a.connection_id), *usage, amount, 1).sign(client)
        gate.receive(receipt_a.encode())
        assert gate.payable() == amount

        # the other server claims as much on the same cap, and the client lowers it
        receipt_b = Receipt(ledger.receipt_scope(b.connection_id), *usage, amount, 1).sign(client)
        assert ledger.claim(provider_b, b.escrow_id, receipt_b) == amount
        ledger.set_max_per_epoch(client, cap, 0)

        # the receipt the gate holds is collectable in whole, as it counted it
        assert ledger.claim(provider_a, a.escrow_id, receipt_a) == amount
        assert gate.payable() == amount
        assert gate.owed(*usage) == 0 and gate.serving(*usage)
    finally:
        ledger.close()
