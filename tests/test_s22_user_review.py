"""What a fresh user's walk through the API found (session 22), fixed here.

- ``top_up`` past what the connection's spending cap lets the server claim went to the
  escrow and bought nothing: the meter signs and the server serves up to the cap only,
  and a connection by host ID without ``cap_id=`` gets a cap of its deposit, so there
  *every* top-up was money locked until the refund, while the client was paused for
  payment as if it had not paid. Now SpendingCapExceeded, before any transaction, says
  how much room the cap has and to connect with ``cap_id=``.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

import dtp.aio
import dtp.socket
from dtp.chain.local import LocalLedger
from dtp.errors import SpendingCapExceeded
from tests.test_s16_paid_gate import CLIENT, METERING, PORT, conserved
from tests.test_s17_money_review import DEPOSIT, host_id, ledger, quiet_handlers, serve

__all__ = ["host_id", "ledger", "serve"]  # (fixtures, used by name)


def _escrow_deposit(ledger: LocalLedger, cid: str) -> int:
    return ledger.get_escrow(ledger.get_connection(cid).escrow).deposited


def test_a_top_up_on_the_default_cap_is_refused_before_the_ledger(
    ledger: LocalLedger, host_id: str, serve: object
) -> None:
    """No cap_id: the cap is the deposit, so no top-up can be served."""
    release = threading.Event()
    serve(*quiet_handlers(release))  # type: ignore[operator]
    balance = ledger.balance(CLIENT.sui_address)
    with dtp.socket.create_connection(
        f"dtp://{host_id}:{PORT}",
        timeout=20,
        ledger=ledger,
        identity=CLIENT,
        deposit=DEPOSIT,
        metering=METERING,
    ) as sock:
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
        _reader, writer = await dtp.aio.open_connection(
            f"dtp://{host_id}:{PORT}",
            timeout=20,
            ledger=ledger,
            identity=CLIENT,
            deposit=DEPOSIT,
            cap_id=cap,
            metering=METERING,
        )
        try:
            cid = writer.connection_id
            assert cid is not None
            writer.write(b"go")
            await writer.drain()
            with pytest.raises(SpendingCapExceeded, match="room for 1000 more"):
                await writer.top_up(1001)
            assert _escrow_deposit(ledger, cid) == DEPOSIT
            await writer.top_up(1000)
            assert _escrow_deposit(ledger, cid) == DEPOSIT + 1000
            with pytest.raises(SpendingCapExceeded, match="room for 0 more"):
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
    """Two threads topping up at once: the room is counted with the top-up under way in
    the other, so at most one of two that each fit alone goes through."""
    release = threading.Event()
    serve(*quiet_handlers(release))  # type: ignore[operator]
    cap = ledger.create_spending_cap(CLIENT, DEPOSIT + 1500)
    results: list[BaseException | None] = []
    with dtp.socket.create_connection(
        f"dtp://{host_id}:{PORT}",
        timeout=20,
        ledger=ledger,
        identity=CLIENT,
        deposit=DEPOSIT,
        cap_id=cap,
        metering=METERING,
    ) as sock:
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
