"""A top-up while a paid connection is open (blocking and asyncio servers).

1. A client that tops its escrow up while a paid connection is open was held to the
   deposit the server read at admission: its first receipt above the old deposit was
   refused as "invalid" and the connection closed (PaymentRequired), though the escrow
   held more. The gate now keeps such a receipt aside, the server reads the escrow again
   (when the deposit holds the connection, at most once per DEPOSIT_READ_INTERVAL_MS)
   and serves on when it was topped up; a receipt still above the deposit read again is
   a violation, as before.
2. The client's top-up API (``DTPSocket.top_up``, asyncio's ``writer.top_up``).

Real LocalLedger file, real DTP connections on 127.0.0.1, servers in this process.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import (
    DTPError,
    InvalidArgument,
    InvalidReceipt,
    LocalProtocolError,
    PaymentRequired,
)
from dtp.hostid.paid import ServicePolicy
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.payments.metering import (
    DEPOSIT_LAG_MS,
    DEPOSIT_READ_INTERVAL_MS,
    ClientMeter,
    ReceiptGate,
)
from dtp.payments.receipts import Receipt, fee
from tests.support import paid_top_ups
from tests.support.paid_top_ups import (
    CLIENT,
    METERING,
    POLICY,
    PORT,
    SERVER,
    CountingLedger,
    conserved,
    paid_connect,
    paid_open,
)
from tests.support.polling import wait_for
from tests.support.scopes import scope_of
from tests.support.settlements import is_settled, settled_escrow

# the paid server fixtures: a funded LocalLedger file, its paid server of each kind
ledger = paid_top_ups.ledger
serve = paid_top_ups.serve

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
DEPOSIT = 20_000  # about 2 MiB of service
TOP_UP = 30_000
# paused for longer than the deposit lag: the violation, not the pause, ends it
PATIENT = ServicePolicy(pause_timeout=60.0, refresh_interval=3600)


@pytest.fixture
def host_id(ledger: LocalLedger) -> str:
    host = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host, PORT, "gate", SLA)
    return host


def read_until(sock: dtp.socket.DTPSocket, got: int, goal: int) -> tuple[int, DTPError | None]:
    """Read what the server streams until ``goal`` bytes in all: (bytes, error)."""
    try:
        while got < goal:
            data = sock.recv(1 << 16)
            if not data:
                break
            got += len(data)
    except DTPError as exc:
        return got, exc
    return got, None


# -- 1. a top-up while the connection is open ---------------------------------------------


@pytest.mark.parametrize("lagging_reads", [0, 2])
def test_a_top_up_while_open_is_served_on(
    ledger: LocalLedger,
    host_id: str,
    serve: Callable[..., tuple[CountingLedger, Any]],
    lagging_reads: int,
) -> None:
    """The client tops its escrow up half-way through its deposit and reads on to 3 MiB
    (about 31,000 MIST, well past the 20,000 deposited at the open): served to the end,
    and the settlement claims the receipts above the old deposit (none is refused as
    exceeding the deposit).

    With ``lagging_reads``, the server's reads of the escrow lag the top-up by two (a
    full node a few checkpoints behind): the receipt above the old deposit waits, the
    connection paused, until a read shows the top-up: a read that does not show it yet
    makes no violation of the honest client's receipt."""
    counting, _server = serve(policy=PATIENT)
    cap = ledger.create_spending_cap(CLIENT, 1_000_000)
    with paid_connect(ledger, host_id, cap, deposit=DEPOSIT) as sock:
        cid = sock.connection_id
        assert cid is not None
        sock.sendall(b"go")
        got, error = read_until(sock, 0, 1 << 20)
        assert error is None
        escrow_id = ledger.get_connection(cid).escrow
        counting.lag(escrow_id, lagging_reads)
        sock.top_up(TOP_UP)  # on the ledger, and the client signs up to it
        got, error = read_until(sock, got, 3 << 20)
    assert error is None, error
    assert got >= 3 << 20
    assert counting.lag_reads == 0  # the lagging reads were made
    assert wait_for(lambda: is_settled(ledger, cid), timeout=10)
    escrow = settled_escrow(ledger, cid)
    assert escrow.deposited == DEPOSIT + TOP_UP
    # paid for what was served, beyond the old deposit (within the allowance)
    assert DEPOSIT < escrow.claimed <= DEPOSIT + TOP_UP
    assert fee(SLA, got + 2, 1) - escrow.claimed <= SLA.min_deposit
    assert escrow.refunded == DEPOSIT + TOP_UP - escrow.claimed
    # read again when it mattered, not per receipt
    assert 1 <= counting.escrow_reads <= 5 + lagging_reads
    assert conserved(ledger)


def test_a_receipt_above_a_deposit_not_topped_up_still_closes_the_connection(
    ledger: LocalLedger, host_id: str, serve: Callable[..., tuple[CountingLedger, Any]]
) -> None:
    """A client whose meter signs beyond the deposit without a top-up on the ledger:
    the server reads the escrow, finds nothing more (for DEPOSIT_LAG_MS of reads: the
    ledger may lag a top-up), and closes the connection as it did before for a receipt
    beyond the deposit; it claims only what the deposit pays."""
    counting, _server = serve(policy=PATIENT)
    cap = ledger.create_spending_cap(CLIENT, 1_000_000)
    with paid_connect(ledger, host_id, cap, deposit=DEPOSIT) as sock:
        cid = sock.connection_id
        assert cid is not None
        sock.sendall(b"go")
        payment = sock._engine.hook
        assert payment is not None
        payment.meter.meter.top_up(TOP_UP)  # the meter only: a lie
        got, error = read_until(sock, 0, 3 << 20)
    assert isinstance(error, PaymentRequired), (got, error)
    assert "deposit" in str(error)
    assert got < 3 << 20
    assert wait_for(lambda: is_settled(ledger, cid), timeout=10)
    escrow = settled_escrow(ledger, cid)
    assert 0 < escrow.claimed <= DEPOSIT
    # one a second while the receipt waits above the deposit, and the lag's worth
    most = 5 + DEPOSIT_LAG_MS // DEPOSIT_READ_INTERVAL_MS + 1
    assert 1 <= counting.escrow_reads <= most, counting.escrow_reads
    assert conserved(ledger)


def test_a_deposit_run_out_is_read_again_at_most_once_an_interval(
    ledger: LocalLedger, host_id: str, serve: Callable[..., tuple[CountingLedger, Any]]
) -> None:
    """A client that runs its deposit out and never tops up: the server, paused, reads
    the escrow again at most once per DEPOSIT_READ_INTERVAL_MS (not on every receipt
    request) until the pause timeout closes the connection, which is then settled on
    the whole deposit."""
    counting, _server = serve()
    cap = ledger.create_spending_cap(CLIENT, 1_000_000)
    with paid_connect(ledger, host_id, cap, deposit=DEPOSIT) as sock:
        cid = sock.connection_id
        assert cid is not None
        sock.sendall(b"go")
        got, error = read_until(sock, 0, 3 << 20)
    assert isinstance(error, PaymentRequired), (got, error)
    assert wait_for(lambda: is_settled(ledger, cid), timeout=10)
    escrow = settled_escrow(ledger, cid)
    assert escrow.claimed == DEPOSIT
    reads = counting.escrow_reads
    # paused for pause_timeout (2 s), the receipt requests every 0.2 s (10 of them),
    # but the reads while paused one per second (3), besides admission's and the
    # settlement's (the asyncio server's: it reads the escrow for both)
    most = int(POLICY.pause_timeout * 1000 / DEPOSIT_READ_INTERVAL_MS) + 1 + 2
    assert 1 <= reads <= most, reads
    assert conserved(ledger)


def test_the_gate_keeps_a_receipt_above_the_deposit_for_the_escrow_read() -> None:
    """The gate's side (sans I/O): a receipt above the deposit is not counted and not a
    violation until the escrow is read; reads are wanted only when the deposit holds
    the connection, and not twice within the interval."""
    cid = "0x" + "ab" * 32

    def receipt(kib: int, nonce: int) -> bytes:
        return (
            Receipt(scope_of(cid), kib * 1024, 1, fee(SLA, kib * 1024, 1), nonce)
            .sign(CLIENT)
            .encode()
        )

    gate = ReceiptGate(
        scope=scope_of(cid), client_public_key=CLIENT.ed25519_public, sla=SLA, deposited=DEPOSIT
    )
    gate.escrow_id = "0x" + "cd" * 32
    assert not gate.wants_deposit(0, 1000 * 1024, 1)  # on credit, the deposit not reached
    gate.receive(receipt(1000, 1))
    # paused by the allowance (the receipts lag), not by the deposit: no read
    assert not gate.wants_deposit(0, 2100 * 1024, 1)
    gate.receive(receipt(1600, 2))
    assert gate.wants_deposit(0, 2100 * 1024, 1)  # the deposit holds the credit now
    with pytest.raises(InvalidReceipt) as above:
        gate.receive(receipt(2100, 3))
    assert above.value.name == "EReceiptExceedsDeposit"
    assert gate.violation is None and gate.latest_amount == fee(SLA, 1600 * 1024, 1)
    assert gate.over_deposit is not None and gate.over_deposit.nonce == 3
    gate.deposit_reading(0)
    assert not gate.wants_deposit(DEPOSIT_READ_INTERVAL_MS - 1, 2100 * 1024, 1)
    pending = gate.deposit_read(DEPOSIT + TOP_UP)  # topped up
    assert pending is not None and pending.nonce == 3
    assert gate.receive(pending.encode()).total_amount == fee(SLA, 2100 * 1024, 1)
    # above the deposit read again: it waits (the read may lag a top-up), read again
    # each interval, and is a violation once reads DEPOSIT_LAG_MS apart found it above
    with pytest.raises(InvalidReceipt):
        gate.receive(receipt(6000, 4))
    first = DEPOSIT_READ_INTERVAL_MS
    assert gate.wants_deposit(first, 6000 * 1024, 1)
    gate.deposit_reading(first)
    assert gate.deposit_read(DEPOSIT + TOP_UP) is None
    assert gate.violation is None and gate.over_deposit is not None
    assert not gate.wants_deposit(first + DEPOSIT_READ_INTERVAL_MS - 1, 6000 * 1024, 1)
    last = first + DEPOSIT_LAG_MS - 1
    assert gate.wants_deposit(last, 6000 * 1024, 1)
    gate.deposit_reading(last)
    assert gate.deposit_read(DEPOSIT + TOP_UP) is None
    assert gate.violation is None
    gate.deposit_reading(first + DEPOSIT_LAG_MS)
    assert gate.deposit_read(DEPOSIT + TOP_UP) is None
    assert gate.violation is not None
    assert not gate.wants_deposit(100 * DEPOSIT_READ_INTERVAL_MS, 6000 * 1024, 1)


# -- the client's top-up API ------------------------------------------------------------


def test_a_top_up_as_the_deposit_runs_out_serves_on(
    ledger: LocalLedger, host_id: str, serve: Callable[..., tuple[CountingLedger, Any]]
) -> None:
    """``DTPSocket.top_up`` from another thread once the client has signed for nearly the
    whole deposit (the server pauses there): the read goes on to 3 MiB."""
    serve()
    cap = ledger.create_spending_cap(CLIENT, 1_000_000)
    with paid_connect(ledger, host_id, cap, deposit=DEPOSIT) as sock:
        payment = sock._engine.hook
        assert payment is not None
        meter = payment.meter.meter

        def top_up_near_the_end() -> None:
            assert wait_for(lambda: meter.deposit - meter.total_amount < SLA.min_deposit, 30)
            sock.top_up(TOP_UP)

        helper = threading.Thread(target=top_up_near_the_end)
        sock.sendall(b"go")
        helper.start()
        got, error = read_until(sock, 0, 3 << 20)
        helper.join(30)
        cid = sock.connection_id
    assert error is None, error
    assert got >= 3 << 20
    assert cid is not None and wait_for(lambda: is_settled(ledger, cid), timeout=10)
    escrow = settled_escrow(ledger, cid)
    assert escrow.deposited == DEPOSIT + TOP_UP
    assert escrow.claimed > DEPOSIT
    assert conserved(ledger)


def test_an_asyncio_client_tops_up_too(
    ledger: LocalLedger, host_id: str, serve: Callable[..., tuple[CountingLedger, Any]]
) -> None:
    """``DTPStreamWriter.top_up``: the same through the asyncio client."""
    serve()
    cap = ledger.create_spending_cap(CLIENT, 1_000_000)

    async def main() -> tuple[int, str | None]:
        reader, writer = await paid_open(ledger, host_id, cap, deposit=DEPOSIT)
        try:
            writer.write(b"go")
            got = 0
            while got < 1 << 20:
                got += len(await reader.read(1 << 16))
            await writer.top_up(TOP_UP)
            while got < 3 << 20:
                data = await asyncio.wait_for(reader.read(1 << 16), 30)
                assert data, "the connection ended"
                got += len(data)
            return got, writer.connection_id
        finally:
            writer.close()
            await writer.wait_closed()

    got, cid = asyncio.run(main())
    assert got >= 3 << 20
    assert cid is not None and wait_for(lambda: is_settled(ledger, cid), timeout=10)
    escrow = settled_escrow(ledger, cid)
    assert escrow.deposited == DEPOSIT + TOP_UP and escrow.claimed > DEPOSIT
    assert conserved(ledger)


def test_top_up_refuses_a_bad_amount_and_an_unpaid_connection(
    ledger: LocalLedger, host_id: str, serve: Callable[..., tuple[CountingLedger, Any]]
) -> None:
    """A zero, negative or non-int amount is InvalidArgument and moves nothing; a
    connection that is not paid has nothing to top up (LocalProtocolError)."""
    serve()
    cap = ledger.create_spending_cap(CLIENT, 1_000_000)
    with paid_connect(ledger, host_id, cap, deposit=DEPOSIT) as sock:
        cid = sock.connection_id
        assert cid is not None
        escrow_id = ledger.get_connection(cid).escrow
        for bad in (0, -5, 1.5, True):
            with pytest.raises(InvalidArgument):
                sock.top_up(bad)  # type: ignore[arg-type]
        # a further stream is of the paid connection too: its top_up checks the amount
        stream = sock.open_stream()
        with pytest.raises(InvalidArgument):
            stream.top_up(0)
        stream.close()
        assert ledger.get_escrow(escrow_id).deposited == DEPOSIT
    plain = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER)
    serving = threading.Thread(target=plain.serve_forever, args=(lambda s: s.close(),))
    serving.start()
    try:
        with (
            dtp.socket.create_connection(
                plain.address, server_key=SERVER.noise_public, timeout=10
            ) as unpaid,
            pytest.raises(LocalProtocolError),
        ):
            unpaid.top_up(1000)
    finally:
        plain.close()
        serving.join(10)


def test_a_client_meter_exhausted_signs_what_it_owed_after_a_top_up() -> None:
    """Usage beyond the deposit is not signed for (the meter is exhausted); a top-up
    signs it now, as far as the new deposit covers, and the meter signs on."""
    meter = ClientMeter(CLIENT, scope_of("0x" + "c1" * 32), SLA, 1000, METERING)
    receipt = meter.update(1, 200 << 10, 0)  # 2000 MIST of usage against 1000
    assert meter.exhausted and receipt is not None and receipt.total_amount <= 1000
    assert meter.update(2, 300 << 10, 0) is None  # exhausted: nothing more signed
    paid = meter.top_up(TOP_UP, 3)
    assert not meter.exhausted
    assert paid is not None and paid.total_amount == fee(SLA, 300 << 10, 0)
    assert paid.nonce > receipt.nonce
    more = meter.update(4, 400 << 10, 0, force=True)
    assert more is not None and more.total_amount == fee(SLA, 400 << 10, 0)
    # a top-up too small for what is owed: signs what it covers, exhausted again
    short = ClientMeter(CLIENT, scope_of("0x" + "c2" * 32), SLA, 1000, METERING)
    short.update(1, 500 << 10, 0)
    topped = short.top_up(1000, 2)
    assert short.exhausted and topped is not None and topped.total_amount <= 2000
