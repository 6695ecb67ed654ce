"""A client lowers its spending cap while a paid connection is open (docs/escrow.md §4):
the lowering binds the connections opened after it, never the receipts it signed on one
already open. Before, the server's claim at settlement was refused by the lowered cap
and, the half-close timeout later, the client settled and took its whole deposit back:
4 MiB served, nothing paid. Real LocalLedger file, real DTP connections on 127.0.0.1,
the server in this process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp.aio
import dtp.socket
from dtp.chain.local import LocalLedger
from dtp.chain.objects import Sla
from dtp.errors import DTPError, PaymentRequired
from dtp.escrow import fee
from dtp.metering import MeteringConfig
from dtp.paid import PaidSocket, ServicePolicy
from dtp.paid_aio import PaidAioServer, PaidReader, PaidWriter
from tests.paid_twins import funded_ledger, ident, loop_in_thread, stop
from tests.polling import wait_for

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
PORT = 7014
# no cap refresh by the server during the test: the claims alone are under test
POLICY = ServicePolicy(pause_timeout=0.5, refresh_interval=3600)
DEPOSIT = 200_000
SERVED = 4 << 20

SERVER, CLIENT = ident(0x71), ident(0x72)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LocalLedger]:
    with funded_ledger(tmp_path, CLIENT) as ledger:
        yield ledger


def _serve_until_eof(sock: PaidSocket) -> None:
    """After the client's b"go", send ``SERVED`` bytes, then wait for its close (or for
    the server to cut the connection off: a client that stopped paying)."""
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


def _cap_of(ledger: LocalLedger, connection_id: str) -> str:
    return ledger.get_escrow(ledger.get_connection(connection_id).escrow).spending_cap


def test_a_cap_lowered_before_close_does_not_void_the_receipts(
    ledger: LocalLedger, tmp_path: Path
) -> None:
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "caps", SLA)
    with dtp.socket.serve(
        host_id,
        PORT,
        _serve_until_eof,
        ledger=ledger,
        identity=SERVER,
        receipts=tmp_path / "receipts.db",
        policy=POLICY,
    ):
        with dtp.socket.create_connection(
            f"dtp://{host_id}:{PORT}",
            timeout=20,
            ledger=ledger,
            identity=CLIENT,
            deposit=DEPOSIT,
            metering=MeteringConfig(every_bytes=64 << 10),
        ) as sock:
            cid = sock.connection_id
            assert cid is not None
            sock.sendall(b"go")
            got = 0
            while got < SERVED:
                got += len(sock.recv(1 << 16))
            # the client takes its cap to 0 just before it closes
            ledger.set_max_per_epoch(CLIENT, _cap_of(ledger, cid), 0)
        # (before: the claim was refused, the connection left half-closed by the server)
        assert wait_for(lambda: ledger.get_connection(cid).settled, timeout=5)
    escrow = ledger.get_escrow(ledger.get_connection(cid).escrow)
    assert escrow.cap_max_per_epoch == DEPOSIT  # the cap create_connection made
    assert escrow.claimed == fee(SLA, SERVED + 2, 1)  # the final receipt: all of it
    assert escrow.refunded == DEPOSIT - escrow.claimed
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


def test_a_cap_lowered_before_a_new_open_limits_that_connection(
    ledger: LocalLedger, tmp_path: Path
) -> None:
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "caps", SLA)
    cap = ledger.create_spending_cap(CLIENT, 1_000_000)
    lowered = 60_000
    with dtp.socket.serve(
        host_id,
        PORT,
        _serve_until_eof,
        ledger=ledger,
        identity=SERVER,
        receipts=tmp_path / "receipts.db",
        policy=POLICY,
    ):
        # a first connection, paid in full though the cap is lowered before its close
        with dtp.socket.create_connection(
            f"dtp://{host_id}:{PORT}",
            timeout=20,
            ledger=ledger,
            identity=CLIENT,
            deposit=DEPOSIT,
            cap_id=cap,
            metering=MeteringConfig(every_bytes=64 << 10),
        ) as sock:
            first = sock.connection_id
            assert first is not None
            sock.sendall(b"go")
            got = 0
            while got < SERVED:
                got += len(sock.recv(1 << 16))
            ledger.set_max_per_epoch(CLIENT, cap, lowered)
        assert wait_for(lambda: ledger.get_connection(first).settled, timeout=5)
        paid_first = ledger.get_escrow(ledger.get_connection(first).escrow).claimed
        assert paid_first == fee(SLA, SERVED + 2, 1)

        # the next one is opened under the lowered cap, of which the first one's claim
        # used most: it is served what the rest pays for (and the allowance on credit)
        error: DTPError | None = None
        with dtp.socket.create_connection(
            f"dtp://{host_id}:{PORT}",
            timeout=20,
            ledger=ledger,
            identity=CLIENT,
            deposit=DEPOSIT,
            cap_id=cap,
            metering=MeteringConfig(every_bytes=64 << 10),
        ) as sock:
            second = sock.connection_id
            assert second is not None
            sock.sendall(b"go")
            got = 0
            try:
                while got < SERVED:
                    data = sock.recv(1 << 16)
                    if not data:
                        break
                    got += len(data)
            except DTPError as exc:
                error = exc
        assert isinstance(error, PaymentRequired)
        assert wait_for(lambda: ledger.get_connection(second).settled, timeout=5)
    escrow = ledger.get_escrow(ledger.get_connection(second).escrow)
    assert escrow.cap_max_per_epoch == lowered
    assert 0 < escrow.claimed <= lowered - paid_first
    assert escrow.refunded == DEPOSIT - escrow.claimed
    assert fee(SLA, got + 2, 1) <= escrow.claimed + SLA.min_deposit
    assert ledger.get_cap(cap).spent == paid_first + escrow.claimed <= lowered
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


def test_two_open_connections_on_one_cap_are_both_paid_after_a_lowering(
    ledger: LocalLedger, tmp_path: Path
) -> None:
    # one cap shared by two connections open at once: the server counted receipts on
    # both within the cap (docs/escrow.md §6.1); a lowering to 0 before the client
    # closes them voids neither
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "caps", SLA)
    cap = ledger.create_spending_cap(CLIENT, 100_000)
    with (
        dtp.socket.serve(
            host_id,
            PORT,
            _serve_until_eof,
            ledger=ledger,
            identity=SERVER,
            receipts=tmp_path / "receipts.db",
            policy=POLICY,
        ),
        contextlib.ExitStack() as stack,
    ):
        socks = [
            stack.enter_context(
                dtp.socket.create_connection(
                    f"dtp://{host_id}:{PORT}",
                    timeout=20,
                    ledger=ledger,
                    identity=CLIENT,
                    deposit=DEPOSIT,
                    cap_id=cap,
                    metering=MeteringConfig(every_bytes=64 << 10),
                )
            )
            for _ in range(2)
        ]
        cids = [sock.connection_id for sock in socks]
        for sock in socks:
            sock.sendall(b"go")
        for sock in socks:
            got = 0
            while got < SERVED:
                got += len(sock.recv(1 << 16))
        ledger.set_max_per_epoch(CLIENT, cap, 0)
        stack.close()
        assert wait_for(lambda: all(ledger.get_connection(c).settled for c in cids), timeout=5)
    claimed = [ledger.get_escrow(ledger.get_connection(c).escrow).claimed for c in cids]
    assert claimed == [fee(SLA, SERVED + 2, 1)] * 2
    assert ledger.get_cap(cap).spent == sum(claimed)
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


def test_the_asyncio_server_is_paid_too_after_a_lowering_before_close(
    ledger: LocalLedger, tmp_path: Path
) -> None:
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "caps", SLA)
    server_ledger = LocalLedger(tmp_path / "ledger.db")  # the server's own, used in threads
    with loop_in_thread() as loop:
        server: PaidAioServer = asyncio.run_coroutine_threadsafe(
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
            with dtp.socket.create_connection(
                f"dtp://{host_id}:{PORT}",
                timeout=20,
                ledger=ledger,
                identity=CLIENT,
                deposit=DEPOSIT,
                metering=MeteringConfig(every_bytes=64 << 10),
            ) as sock:
                cid = sock.connection_id
                assert cid is not None
                sock.sendall(b"go")
                got = 0
                while got < SERVED:
                    got += len(sock.recv(1 << 16))
                ledger.set_max_per_epoch(CLIENT, _cap_of(ledger, cid), 0)
            assert wait_for(lambda: ledger.get_connection(cid).settled, timeout=5)
        finally:
            asyncio.run_coroutine_threadsafe(stop(server), loop).result(10)
            server_ledger.close()
    escrow = ledger.get_escrow(ledger.get_connection(cid).escrow)
    assert escrow.claimed == fee(SLA, SERVED + 2, 1)
    assert escrow.refunded == DEPOSIT - escrow.claimed
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
