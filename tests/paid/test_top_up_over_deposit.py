"""A top-up while connected, at its edges (blocking and asyncio servers).

1. A receipt the client signed above the deposit the server read at admission (it had
   topped the escrow up) waits in the gate's ``over_deposit`` until the server reads the
   escrow again -- which it did only while paused. On a connection that ended without a
   pause, that receipt was never judged: the settlement claimed an older one, and the
   server lost what the client had signed for beyond it. The server now reads the
   escrow once more before the settlement when such a receipt waits.
2. ``ClientPayment.topped_up`` raised the meter's limit by the whole top-up, though that
   limit was the least of the deposit and what the spending cap lets the server claim:
   on a cap below the deposit, the client then signed receipts the server could never
   claim (refused for the cap), and the server was left with an older receipt, short of
   what the cap allowed. The limit now stays within the cap.

Real LocalLedger file, real DTP connections on 127.0.0.1, servers in this process.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from dtp.errors import (
    ConnectionClosed,
    DTPError,
    InvalidArgument,
    LocalProtocolError,
    SpendingCapExceeded,
)
from dtp.ledger.local import LocalLedger
from dtp.payments._settlement import ClientPayment
from tests.support import paid_top_ups
from tests.support.paid_top_ups import (
    CLIENT,
    DEAR_DEPOSIT,
    DEAR_SLA,
    CountingLedger,
    conserved,
    paid_connect,
    paid_open,
    quiet_handlers,
)
from tests.support.polling import wait_for
from tests.support.settlements import is_settled, settled_escrow

# the paid server fixtures: a funded LocalLedger file, the dearer service's Host, its
# paid server of each kind
ledger = paid_top_ups.ledger
host_id = paid_top_ups.host_id
serve = paid_top_ups.serve

# dear bytes: the deposit covers about 5 KiB, so a few KiB in flight go past it
SLA = DEAR_SLA
DEPOSIT = DEAR_DEPOSIT
TOP_UP = 40_000
SENT = 20 << 10  # the client's bytes after its top-up: about 20,000 MIST


def send_topped_up_then_end(
    ledger: LocalLedger,
    host_id: str,
    cap: str,
    release: threading.Event,
    top_up: int = TOP_UP,
    refused: int | None = None,
    sent: int = SENT,
) -> tuple[str, int]:
    """Top up by ``top_up`` (after a top-up of ``refused``, past the cap, is refused and
    moves nothing), send ``sent`` bytes (signed for beyond the old deposit, within the
    new one: a write the deposit cannot pay ends the connection at once), let the
    handler end and wait for the server's end: (connection ID, the client's last
    receipt amount)."""
    with paid_connect(ledger, host_id, cap) as sock:
        cid = sock.connection_id
        payment = sock._engine.hook
        assert cid is not None and payment is not None
        sock.sendall(b"go")
        if refused is not None:
            with pytest.raises(SpendingCapExceeded):
                sock.top_up(refused)
            assert settled_escrow(ledger, cid).deposited == DEPOSIT
        sock.top_up(top_up)
        sock.sendall(b"x" * sent)
        assert wait_for(lambda: (payment.meter.latest or _NONE).total_amount > DEPOSIT, 30)
        release.set()
        with pytest.raises(DTPError):  # (or the end of the stream)
            while sock.recv(1 << 16):
                pass
            raise DTPError("ended")
        latest = payment.meter.latest
        assert latest is not None
        signed = latest.total_amount
    return cid, signed


class _None:
    total_amount = 0


_NONE = _None()


def test_a_receipt_above_the_old_deposit_is_claimed_when_the_connection_ends(
    ledger: LocalLedger, host_id: str, serve: Callable[..., tuple[CountingLedger, Any]]
) -> None:
    """The client tops up and signs for about 20,000 MIST against the 5,000 the server
    read at admission; the server never paused, and the connection ends: its settlement
    claims the newest receipt (the escrow pays it), not one below 5,000."""
    release = threading.Event()
    serve(*quiet_handlers(release))
    cap = ledger.create_spending_cap(CLIENT, 1_000_000)
    cid, signed = send_topped_up_then_end(ledger, host_id, cap, release)
    assert wait_for(lambda: is_settled(ledger, cid), 30)
    escrow = settled_escrow(ledger, cid)
    assert escrow.deposited == DEPOSIT + TOP_UP
    assert signed > DEPOSIT
    assert escrow.claimed == signed
    assert escrow.refunded == DEPOSIT + TOP_UP - signed
    assert conserved(ledger)


def test_a_top_up_does_not_lift_the_client_past_its_cap(
    ledger: LocalLedger, host_id: str, serve: Callable[..., tuple[CountingLedger, Any]]
) -> None:
    """A cap of 8,000 MIST, a deposit of 5,000 (reserved on it at the open): a top-up of
    40,000 is refused by the ledger and moves nothing (SpendingCapExceeded: the cap
    reserves each top-up, docs/escrow.md §4); one of the 3,000 the cap has room for
    goes, the client signs for what it sends within the new deposit (6 KiB: 6,000 MIST
    and more), and the server claims that."""
    release = threading.Event()
    serve(*quiet_handlers(release))
    cap_max = 8000
    cap = ledger.create_spending_cap(CLIENT, cap_max)
    cid, signed = send_topped_up_then_end(
        ledger, host_id, cap, release, top_up=cap_max - DEPOSIT, refused=TOP_UP, sent=6 << 10
    )
    assert DEPOSIT < signed <= cap_max
    assert wait_for(lambda: is_settled(ledger, cid), 30)
    escrow = settled_escrow(ledger, cid)
    assert escrow.claimed == signed
    assert conserved(ledger)


def test_a_top_up_above_u64_moves_nothing(
    ledger: LocalLedger, host_id: str, serve: Callable[..., tuple[CountingLedger, Any]]
) -> None:
    """An amount past u64 is InvalidArgument (the ledger's) and changes neither the
    escrow nor what the client signs up to."""
    serve()
    cap = ledger.create_spending_cap(CLIENT, 1_000_000)
    with paid_connect(ledger, host_id, cap) as sock:
        cid = sock.connection_id
        payment = sock._engine.hook
        assert cid is not None and payment is not None
        limit = payment.meter.meter.deposit
        with pytest.raises(InvalidArgument):
            sock.top_up(1 << 64)
        assert settled_escrow(ledger, cid).deposited == DEPOSIT
        assert payment.meter.meter.deposit == limit


def test_top_up_on_an_ended_connection_is_refused_before_the_ledger(
    ledger: LocalLedger, host_id: str, serve: Callable[..., tuple[CountingLedger, Any]]
) -> None:
    """Once the server ended the connection, ``top_up`` raises the connection's end
    (ConnectionClosed, a DTPError) and sends no transaction: what it added would only come
    back in the refund, or the ledger would refuse it (the escrow settled). On a closed
    socket it is LocalProtocolError."""
    release = threading.Event()
    release.set()  # the handlers end the connection once the client said "go"
    serve(*quiet_handlers(release))
    cap = ledger.create_spending_cap(CLIENT, 1_000_000)
    with paid_connect(ledger, host_id, cap) as sock:
        cid = sock.connection_id
        assert cid is not None
        escrow_id = ledger.get_connection(cid).escrow
        sock.sendall(b"go")
        engine = sock._engine
        assert wait_for(lambda: engine.session.terminated is not None, 30)
        with pytest.raises(ConnectionClosed):
            sock.top_up(TOP_UP)
        assert ledger.get_escrow(escrow_id).deposited == DEPOSIT
    with pytest.raises(LocalProtocolError):
        sock.top_up(TOP_UP)
    assert ledger.get_escrow(escrow_id).deposited == DEPOSIT
    assert conserved(ledger)


def test_an_asyncio_top_up_on_an_ended_connection_is_refused_before_the_ledger(
    ledger: LocalLedger, host_id: str, serve: Callable[..., tuple[CountingLedger, Any]]
) -> None:
    """``DTPStreamWriter.top_up`` the same: the connection's end, no transaction."""
    release = threading.Event()
    release.set()
    serve(*quiet_handlers(release))
    cap = ledger.create_spending_cap(CLIENT, 1_000_000)

    async def main() -> str:
        _reader, writer = await paid_open(ledger, host_id, cap)
        try:
            cid = writer.connection_id
            assert cid is not None
            writer.write(b"go")
            async with asyncio.timeout(30):
                while writer._proto.session.terminated is None:
                    await asyncio.sleep(0.02)
            with pytest.raises(ConnectionClosed):
                await writer.top_up(TOP_UP)
            return cid
        finally:
            writer.close()
            await writer.wait_closed()

    cid = asyncio.run(main())
    assert settled_escrow(ledger, cid).deposited == DEPOSIT
    assert conserved(ledger)


def test_an_asyncio_top_up_cancelled_while_its_transaction_runs_still_signs(
    ledger: LocalLedger,
    host_id: str,
    serve: Callable[..., tuple[CountingLedger, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The caller of ``await writer.top_up()`` is cancelled while the ledger transaction
    runs (in a thread, which goes on): once it lands, the client's meter rises to the new
    deposit all the same (never signing on to the old deposit with the new one on the
    ledger)."""
    release = threading.Event()
    serve(*quiet_handlers(release))
    cap = ledger.create_spending_cap(CLIENT, 1_000_000)
    in_ledger = threading.Event()
    go_on = threading.Event()
    real = ClientPayment.top_up_on_ledger

    def slow(self: ClientPayment, amount: int) -> None:
        in_ledger.set()
        go_on.wait(60)  # a slow ledger
        real(self, amount)

    monkeypatch.setattr(ClientPayment, "top_up_on_ledger", slow)

    async def main() -> tuple[int, str]:
        _reader, writer = await paid_open(ledger, host_id, cap)
        try:
            cid = writer.connection_id
            payment = writer._proto.hook
            assert cid is not None and payment is not None
            writer.write(b"go")
            task = asyncio.create_task(writer.top_up(TOP_UP))
            assert await asyncio.to_thread(in_ledger.wait, 30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            go_on.set()
            async with asyncio.timeout(30):
                while payment.meter.meter.deposit < DEPOSIT + TOP_UP:
                    await asyncio.sleep(0.02)
            return payment.meter.meter.deposit, cid
        finally:
            release.set()
            go_on.set()
            writer.close()
            await writer.wait_closed()

    limit, cid = asyncio.run(main())
    assert limit == DEPOSIT + TOP_UP
    assert wait_for(lambda: is_settled(ledger, cid), 30)
    assert settled_escrow(ledger, cid).deposited == DEPOSIT + TOP_UP
    assert conserved(ledger)


def _escrow_deposit(ledger: LocalLedger, cid: str) -> int:
    return settled_escrow(ledger, cid).deposited


def test_a_top_up_on_the_default_cap_is_refused_and_moves_nothing(
    ledger: LocalLedger, host_id: str, serve: object
) -> None:
    """No cap_id: the cap is the deposit, so no top-up can be served."""
    release = threading.Event()
    serve(*quiet_handlers(release))  # type: ignore[operator]
    balance = ledger.balance(CLIENT.sui_address)
    with paid_connect(ledger, host_id) as sock:
        cid = sock.connection_id
        assert cid is not None
        spent = balance - ledger.balance(CLIENT.sui_address)  # the deposit (and gas: none)
        sock.sendall(b"go")
        with pytest.raises(SpendingCapExceeded, match="cap_id="):
            sock.top_up(1_000_000)
        assert _escrow_deposit(ledger, cid) == DEPOSIT
        assert balance - ledger.balance(CLIENT.sui_address) == spent
        sock.sendall(b"still usable")
        release.set()
    assert conserved(ledger)


def test_an_asyncio_top_up_past_the_cap_is_refused_and_one_within_it_goes(
    ledger: LocalLedger, host_id: str, serve: object
) -> None:
    release = threading.Event()
    serve(*quiet_handlers(release))  # type: ignore[operator]
    cap = ledger.create_spending_cap(CLIENT, DEPOSIT + 1000)

    async def main() -> None:
        _reader, writer = await paid_open(ledger, host_id, cap)
        try:
            cid = writer.connection_id
            assert cid is not None
            writer.write(b"go")
            await writer.drain()
            with pytest.raises(SpendingCapExceeded, match="1001 more asked"):
                await writer.top_up(1001)
            assert _escrow_deposit(ledger, cid) == DEPOSIT
            await writer.top_up(1000)
            assert _escrow_deposit(ledger, cid) == DEPOSIT + 1000
            with pytest.raises(SpendingCapExceeded, match="1 more asked"):
                await writer.top_up(1)
        finally:
            release.set()
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())
    assert conserved(ledger)


def test_concurrent_top_ups_share_the_caps_room(
    ledger: LocalLedger, host_id: str, serve: object
) -> None:
    """Two threads topping up at once: the ledger reserves each on the cap in turn, so
    at most one of two that each fit alone goes through."""
    release = threading.Event()
    serve(*quiet_handlers(release))  # type: ignore[operator]
    cap = ledger.create_spending_cap(CLIENT, DEPOSIT + 1500)
    results: list[BaseException | None] = []
    with paid_connect(ledger, host_id, cap) as sock:
        cid = sock.connection_id
        assert cid is not None
        sock.sendall(b"go")
        start = threading.Barrier(2)

        def top_up() -> None:
            start.wait(30)
            try:
                sock.top_up(1000)
                results.append(None)
            except SpendingCapExceeded as exc:
                results.append(exc)

        threads = [threading.Thread(target=top_up) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        release.set()
        assert sorted(r is None for r in results) == [False, True]
        assert _escrow_deposit(ledger, cid) == DEPOSIT + 1000
    assert conserved(ledger)
