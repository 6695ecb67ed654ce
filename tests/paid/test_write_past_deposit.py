"""A paid client's write its deposit cannot pay (docs/escrow.md §6.1).

The client knows its deposit: a write (stream bytes, datagrams, a stream opened) that
would take the connection's usage past what it pays ends the connection at once with
PaymentRequired -- the final receipt, then CLOSE_PAYMENT_REQUIRED -- rather than go out
and stall until the server's pause timeout (10 s by default) closes the connection,
the deposit spent all the same. While a top-up is under way the write is
not refused: it goes out and waits, as the server pauses, for the deposit to grow.

First the rule itself, sans I/O (:class:`dtp.payments._settlement.ClientPayment`), then
both clients against both paid servers on a real LocalLedger file
(tests/support/paid_top_ups.py: the dearer service, a deposit of about 5 KiB).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from dtp.errors import CLOSE_PAYMENT_REQUIRED, DTPError, InsufficientFunds, PaymentRequired
from dtp.hostid.paid import PaidSocket, ServicePolicy
from dtp.hostid.paid._aio import PaidReader, PaidWriter
from dtp.ledger._objects import OpenedConnection, Sla
from dtp.ledger.local import LocalLedger
from dtp.ledger.receipt import U64_MAX
from dtp.payments._settlement import ClientPayment
from dtp.payments.receipts import fee
from tests.support import paid_top_ups
from tests.support.paid_top_ups import (
    CLIENT,
    DEAR_DEPOSIT,
    DEAR_SLA,
    CountingLedger,
    conserved,
    paid_connect,
    paid_open,
)
from tests.support.polling import wait_for
from tests.support.settlements import is_settled, settled_escrow

ledger = paid_top_ups.ledger
host_id = paid_top_ups.host_id
serve = paid_top_ups.serve

CID = "0x" + "ab" * 32
SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=1000)
# a pause long enough that a test ending within it was not ended by it
PATIENT = ServicePolicy(pause_timeout=30.0, refresh_interval=3600)


# -- the rule, sans I/O ----------------------------------------------------------------------


class FakeConn:
    """A MeteredConnection whose usage the test sets."""

    def __init__(self) -> None:
        self.usage = (0, 0)
        self.requests_pending = 0  # (the first stream's request counted already)
        self.closed = False
        self.receipts: list[bytes] = []

    def send_receipt(self, receipt: bytes) -> None:
        self.receipts.append(receipt)


class TopUpLedger:
    """Only what a top-up calls: waits for ``release``, then fails when ``refuse``; and
    the package its receipts are bound to (docs/escrow.md §6)."""

    package_id = "0x" + "ab" * 32

    def __init__(self) -> None:
        self.release = threading.Event()
        self.refuse = False

    def top_up(self, signer: Any, escrow_id: str, amount: int) -> None:
        assert self.release.wait(10)
        if self.refuse:
            raise InsufficientFunds("the balance is short", name="EInsufficient", module="x")


def payment(
    deposit: int = 1000, usage: tuple[int, int] = (0, 1)
) -> tuple[ClientPayment, FakeConn, TopUpLedger]:
    conn, ledger = FakeConn(), TopUpLedger()
    conn.usage = usage
    opened = OpenedConnection(CID, "0x" + "cd" * 32, SLA, deposit)
    pay = ClientPayment(ledger, CLIENT, "0x" + "ef" * 32, CID, conn, opened=opened)  # type: ignore[arg-type]
    return pay, conn, ledger


def test_a_write_within_the_deposit_goes_and_one_past_it_is_refused() -> None:
    pay, conn, _ = payment(1000)
    # 1000 MIST at 10 per KiB: 102,400 bytes, the first request (5 MIST) aside
    most = (1000 - 5) * 1024 // 10
    assert pay.payable_bytes == most
    assert pay.refuse_write(most, 0) is None
    reason = pay.refuse_write(most + 1, 0)
    assert reason is not None
    assert CID in reason and "1000 MIST" in reason and f"{fee(SLA, most + 1, 1)} MIST" in reason
    # what was used counts: the usage (both directions) plus the write
    conn.usage = (most - 100, 1)
    assert pay.refuse_write(100, 0) is None
    assert pay.refuse_write(101, 0) is not None


def test_the_deposit_keeps_room_for_the_first_streams_request_until_it_comes() -> None:
    """A first stream that carries nothing yet makes no request (docs/escrow.md §6.1),
    but its first bytes will: the write checks count it ahead, so a write that would
    leave no room for it is refused (the receipts never need to pass the deposit)."""
    pay, conn, _ = payment(1000, usage=(0, 0))
    conn.requests_pending = 1
    pay.payable_bytes = pay._payable_bytes()
    most = (1000 - 5) * 1024 // 10  # (the request counted ahead)
    assert pay.payable_bytes == most
    assert pay.refuse_write(most, 0) is None
    assert pay.refuse_write(most + 1, 0) is not None
    conn.usage, conn.requests_pending = (most, 1), 0  # (its bytes made it one)
    assert pay._payable_bytes() == most
    assert pay.refuse_write(0, 0) is None and pay.refuse_write(1, 0) is not None


def test_a_stream_the_deposit_cannot_pay_for_is_refused() -> None:
    pay, conn, _ = payment(20)
    conn.usage = (0, 4)  # 20 MIST of requests: the deposit, all of it
    assert pay.refuse_write(0, 0) is None
    assert pay.refuse_write(0, 1) is not None
    assert pay.refuse_write(1, 0) is not None  # and not one more byte


def test_free_bytes_are_never_refused_but_requests_are() -> None:
    conn = FakeConn()
    opened = OpenedConnection(CID, "0x" + "cd" * 32, Sla(0, 5, 0), 10)
    pay = ClientPayment(TopUpLedger(), CLIENT, "0x" + "ef" * 32, CID, conn, opened=opened)  # type: ignore[arg-type]
    assert pay.payable_bytes == U64_MAX
    conn.usage = (1 << 40, 2)
    assert pay.refuse_write(1 << 30, 0) is None
    assert pay.refuse_write(0, 1) is not None


def test_nothing_is_refused_while_a_top_up_is_under_way() -> None:
    """From the top-up's start to its ``topped_up`` (the receipts up to the new
    deposit), a write past the old deposit waits as the server pauses; a top-up the
    ledger refuses ends that, and the old deposit rules again."""
    pay, conn, ledger = payment(1000)
    conn.usage = (200 << 10, 1)  # about 2000 MIST: past the deposit already
    assert pay.refuse_write(1, 0) is not None
    landed = threading.Thread(target=pay.top_up_on_ledger, args=(5000,))
    landed.start()
    assert wait_for(lambda: pay.payable_bytes == U64_MAX, 10)
    assert pay.refuse_write(1 << 20, 0) is None
    ledger.release.set()
    landed.join(10)
    assert pay.refuse_write(1 << 20, 0) is None  # landed, not yet signed for: still waits
    pay.topped_up(5000)
    assert pay.meter.meter.deposit == 6000
    assert pay.payable_bytes == (6000 - 5) * 1024 // 10
    assert pay.refuse_write(0, 0) is None
    assert pay.refuse_write(pay.payable_bytes - conn.usage[0] + 1, 0) is not None
    # a top-up the ledger refuses: the deposit it would have added never counts
    ledger.refuse = True
    with pytest.raises(InsufficientFunds):
        pay.top_up_on_ledger(1000)
    assert pay.payable_bytes == (6000 - 5) * 1024 // 10
    assert pay.refuse_write(pay.payable_bytes - conn.usage[0] + 1, 0) is not None


def test_a_closed_connection_is_not_refused_again() -> None:
    """Once closed, the connection's own error is what its calls raise."""
    pay, conn, _ = payment(10)
    conn.closed = True
    assert pay.refuse_write(1 << 30, 9) is None


# -- both clients, both servers ---------------------------------------------------------------


def sinks(got: list[int]) -> tuple[Callable[[PaidSocket], None], Any]:
    """Handlers that read everything until the connection ends (the bytes in ``got``)."""

    def blocking(sock: PaidSocket) -> None:
        got.append(0)
        try:
            while data := sock.recv(1 << 16):
                got[-1] += len(data)
        except DTPError:
            pass

    async def aio(reader: PaidReader, writer: PaidWriter) -> None:
        got.append(0)
        try:
            while data := await reader.read(1 << 16):
                got[-1] += len(data)
        except DTPError:
            pass

    return blocking, aio


def settled_claim(ledger: LocalLedger, cid: str) -> int:
    assert wait_for(lambda: is_settled(ledger, cid), 30)
    return settled_escrow(ledger, cid).claimed


def test_a_blocking_write_past_the_deposit_ends_the_connection_at_once(
    ledger: LocalLedger, host_id: str, serve: Callable[..., tuple[CountingLedger, Any]]
) -> None:
    """4 KiB go (of the ~5 KiB the deposit pays); the next 4 KiB raise PaymentRequired
    at once, nothing of them sent, and so does every later call; the server, not paused
    (its pause timeout is 30 s), reads the client's CLOSE and claims its final receipt."""
    got: list[int] = []
    serve(*sinks(got), policy=PATIENT)
    cap = ledger.create_spending_cap(CLIENT, 1_000_000)
    with paid_connect(ledger, host_id, cap) as sock:
        cid = sock.connection_id
        pay = sock.layer.hook
        assert cid is not None and isinstance(pay, ClientPayment)
        sock.sendall(b"x" * 4096)
        started = time.monotonic()
        with pytest.raises(PaymentRequired) as refused:
            sock.sendall(b"y" * 4096)
        assert time.monotonic() - started < 5.0
        with pytest.raises(PaymentRequired):
            sock.recv(1)
        with pytest.raises(PaymentRequired):
            sock.open_stream()
    assert refused.value.code == CLOSE_PAYMENT_REQUIRED
    assert "cannot pay for this write" in refused.value.reason
    final = pay.meter.latest
    assert final is not None and final.total_amount == fee(DEAR_SLA, 4096, 1) <= DEAR_DEPOSIT
    assert settled_claim(ledger, cid) == final.total_amount
    assert got == [4096]
    assert conserved(ledger)


def test_an_asyncio_write_past_the_deposit_ends_the_connection_at_once(
    ledger: LocalLedger, host_id: str, serve: Callable[..., tuple[CountingLedger, Any]]
) -> None:
    """The same through the asyncio client: ``write`` raises PaymentRequired, and so do
    ``drain`` and the reads after it."""
    got: list[int] = []
    serve(*sinks(got), policy=PATIENT)
    cap = ledger.create_spending_cap(CLIENT, 1_000_000)

    async def main() -> tuple[str, ClientPayment, PaymentRequired]:
        reader, writer = await paid_open(ledger, host_id, cap)
        try:
            assert writer.connection_id is not None
            pay = writer.layer.hook
            assert isinstance(pay, ClientPayment)
            writer.write(b"x" * 4096)
            await writer.drain()
            with pytest.raises(PaymentRequired) as refused:
                writer.write(b"y" * 4096)
            with pytest.raises(PaymentRequired):
                await writer.drain()
            with pytest.raises(PaymentRequired):
                await asyncio.wait_for(reader.read(1), 5)
            return writer.connection_id, pay, refused.value
        finally:
            writer.close()
            await writer.wait_closed()

    cid, pay, refused = asyncio.run(main())
    assert refused.code == CLOSE_PAYMENT_REQUIRED
    final = pay.meter.latest
    assert final is not None and final.total_amount == fee(DEAR_SLA, 4096, 1)
    assert settled_claim(ledger, cid) == final.total_amount
    assert got == [4096]
    assert conserved(ledger)


def test_a_write_past_the_deposit_waits_for_a_top_up_under_way(
    ledger: LocalLedger, host_id: str, serve: Callable[..., tuple[CountingLedger, Any]]
) -> None:
    """A top-up is on its way to the ledger (held there by the test) when the client
    writes 20 KiB, four times what the deposit pays: the write is not refused; it goes
    out as the server pauses for a receipt, and once the top-up lands the client signs
    for it and the server reads on -- all 20 KiB served and paid, beyond the old
    deposit."""
    got: list[int] = []
    serve(*sinks(got), policy=PATIENT)
    cap = ledger.create_spending_cap(CLIENT, 1_000_000)
    release = threading.Event()
    with paid_connect(ledger, host_id, cap) as sock:
        cid = sock.connection_id
        pay = sock.layer.hook
        assert cid is not None and isinstance(pay, ClientPayment)
        real = pay.ledger

        class Held:
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            def top_up(self, *args: Any, **kwargs: Any) -> None:
                assert release.wait(30)
                real.top_up(*args, **kwargs)

        pay.ledger = Held()  # type: ignore[assignment]
        topping = threading.Thread(target=sock.top_up, args=(40_000,))
        topping.start()
        assert wait_for(lambda: pay.payable_bytes == U64_MAX, 10)
        writing = threading.Thread(target=sock.sendall, args=(b"z" * (20 << 10),))
        writing.start()
        assert wait_for(lambda: sock.connection_stats["bytes_sent"] > 0, 10)
        time.sleep(0.3)
        assert sock._engine.session.terminated is None  # not refused: it waits
        release.set()
        topping.join(30)
        writing.join(30)
        assert not writing.is_alive()
        assert wait_for(lambda: got and got[-1] == 20 << 10, 30)
    claimed = settled_claim(ledger, cid)
    assert DEAR_DEPOSIT < fee(DEAR_SLA, 20 << 10, 1) == claimed
    assert conserved(ledger)


def test_a_write_past_the_deposit_on_the_lent_stream_is_refused(
    ledger: LocalLedger, host_id: str, serve: Callable[..., tuple[CountingLedger, Any]]
) -> None:
    """Once the stream carries data it is lent to the lane, and the check of each write
    reads the usage where the loan keeps it: small writes go until the next would take
    the usage past what the deposit pays, and that one is refused, nothing of it sent."""
    got: list[int] = []
    serve(*sinks(got), policy=PATIENT)
    cap = ledger.create_spending_cap(CLIENT, 1_000_000)
    piece = 256
    with paid_connect(ledger, host_id, cap) as sock:
        pay = sock.layer.hook
        assert isinstance(pay, ClientPayment)
        conn = sock._engine.conn
        sent, lent = 0, []
        with pytest.raises(PaymentRequired):
            for _ in range(DEAR_DEPOSIT):
                lent.append(conn.lent_stream_id == sock.stream_id)
                sock.sendall(b"z" * piece)
                sent += piece
        assert lent[-1] and sum(lent) > 1  # (the refused write's check was the lent one)
        assert sent <= pay.payable_bytes < sent + piece
    assert wait_for(lambda: got == [sent], 10), (got, sent)


def test_a_view_of_rows_on_the_lent_stream_is_checked_by_its_bytes(
    ledger: LocalLedger, host_id: str, serve: Callable[..., tuple[CountingLedger, Any]]
) -> None:
    """A view of bytes with two dimensions (16 rows of 512) is 16 items long but 8 KiB
    to send: the lent stream's check counts its bytes, so the write the deposit (about
    5 KiB) cannot pay is refused, nothing of it sent."""
    got: list[int] = []
    serve(*sinks(got), policy=PATIENT)
    cap = ledger.create_spending_cap(CLIENT, 1_000_000)
    rows = memoryview(bytes(8192)).cast("B", (16, 512))
    with paid_connect(ledger, host_id, cap) as sock:
        pay = sock.layer.hook
        assert isinstance(pay, ClientPayment)
        conn = sock._engine.conn
        sock.sendall(b"z" * 256)
        sock.sendall(b"z" * 256)  # (lent from the first: this one's check is the lent one)
        used = conn.used_bytes()
        assert used + len(rows) <= pay.payable_bytes < used + rows.nbytes
        lent = conn.lent_stream_id == sock.stream_id
        with pytest.raises(PaymentRequired):
            sock.sendall(rows)
        assert lent
        assert conn.used_bytes() == used  # nothing of the refused write went out
    assert wait_for(lambda: got == [512], 10), got
