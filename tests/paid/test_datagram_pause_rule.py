"""What ends a pause of datagram sends, one rule on both paid drivers
(PaidConnectionEngine.datagrams_unpaid): payment that covers the datagram dropped, or a
datagram send that goes whole -- not a read or a stream write that finds the usage
served.

- A handler that sends a datagram no credit covers to a client that pays nothing, a
  stream byte between each try: the connection closes after the pause timeout. A look
  at the gate that finds the usage served -- each stream write is one -- does not end
  the pause.
- A client that pays after a datagram was dropped ends the pause at once, with no
  send: the next datagram dropped starts a new one.
- So does payment that comes while a blocking datagram send waits with no timeout:
  should stream bytes from another thread spend it before the send looks again, the
  send's pause is a new one, timed from the payment, not from the first drop.
- A payment that comes between a waiting send's step reading the pause's start and
  judging by it ends the pause only after that step (one lock): the step never judges
  by a start a payment ended.

Real connections on 127.0.0.1 (both drivers, the ``driver`` fixture, but for the
blocking send that waits), a LocalLedger file in tmp_path; the payment is a receipt
signed with the client's key handed to the server's receipt path, as the client's
RECEIPT frame would be."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dtp.errors import DTPError, DTPTimeoutError, PaymentRequired
from dtp.hostid.paid import PaidSocket, ServicePolicy
from dtp.hostid.paid._aio import PaidReader, PaidWriter
from dtp.ledger._objects import Sla
from dtp.payments.metering import MeteringConfig
from dtp.payments.receipts import Receipt, fee
from tests.paid.conftest import Driver
from tests.support.paid_inprocess import ident
from tests.support.paid_twins import funded_ledger
from tests.support.polling import wait_for

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
SERVER, CLIENT = ident(0xD1), ident(0xD2)
PORT = 7107
WAIT = 20.0  # bound on anything waited for
UNPAID = MeteringConfig(enabled=False)
PAUSE = 1.0
#: 100 MIST on credit: about 9.5 KiB, so a datagram of 15,000 bytes is never covered
TOO_BIG = 15_000
#: How long the handler goes on trying (bounds the wait for the close)
TRIES_FOR = 5.0


def _served(
    tmp_path: Path,
    driver: Driver,
    handlers: tuple[Any, Any],
    policy: ServicePolicy,
    done: Callable[[], bool],
) -> None:
    """Serve ``handlers`` (blocking, asyncio) under ``policy`` to a client that pays
    nothing, write the "go" they wait for, and wait until ``done()``."""
    with (
        funded_ledger(tmp_path, CLIENT) as ledger,
        driver.connected(
            ledger,
            handlers,
            host=SERVER,
            client=CLIENT,
            port=PORT,
            sla=SLA,
            deposit=100_000,
            metering=UNPAID,
            timeout=WAIT,
            policy=policy,
        ) as (_, sock),
    ):
        sock.sendall(b"go")
        assert wait_for(done, WAIT)


def test_stream_writes_do_not_end_a_datagram_pause(tmp_path: Path, driver: Driver) -> None:
    out: dict[str, Any] = {}

    def tries(sock: PaidSocket) -> None:
        sock.recv(2)
        sock.settimeout(0.05)  # (each datagram send that pauses times out)
        began = time.monotonic()
        try:
            while time.monotonic() - began < TRIES_FOR:
                with contextlib.suppress(DTPTimeoutError):
                    sock.send_datagram(bytes(TOO_BIG))
                sock.send(b"x")  # a look at the gate that finds the usage served
                time.sleep(0.01)
        except DTPError as exc:
            out["raised"] = exc
        out["after"] = time.monotonic() - began

    async def tries_aio(reader: PaidReader, writer: PaidWriter) -> None:
        await reader.readexactly(2)
        began = time.monotonic()
        try:
            while time.monotonic() - began < TRIES_FOR:
                writer.send_datagram(bytes(TOO_BIG))  # (dropped)
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.01)
        except DTPError as exc:
            out["raised"] = exc
        out["after"] = time.monotonic() - began

    policy = ServicePolicy(allowance=100, pause_timeout=PAUSE)
    _served(tmp_path, driver, (tries, tries_aio), policy, lambda: "after" in out)
    assert isinstance(out.get("raised"), PaymentRequired), out
    assert f"no credit covered a datagram of {TOO_BIG} bytes" in str(out["raised"])
    assert PAUSE - 0.1 <= out["after"] < TRIES_FOR - 1.0, out


SIZE = 1000


def _signed(paid: Any, usage: tuple[int, int]) -> bytes:
    """A RECEIPT frame's receipt of the client's for ``usage`` (nonce 1)."""
    used, requests = usage
    return (
        Receipt(paid.gate.scope, used, requests, fee(SLA, used, requests), 1).sign(CLIENT).encode()
    )


def _pay(paid: Any, usage: tuple[int, int]) -> None:
    """Hand the server a receipt of the client's for ``usage`` (nonce 1)."""
    paid.on_receipt(_signed(paid, usage))


def _dropped_until_paused(sock: PaidSocket, size: int) -> None:
    """Send datagrams of ``size`` bytes (each waiting 50 ms at most) until one finds no
    credit: the connection's datagram sends are paused then (the socket's timeout left
    at 50 ms)."""
    sock.settimeout(0.05)
    with contextlib.suppress(DTPTimeoutError):
        while True:
            sock.send_datagram(bytes(size))


def test_payment_covering_the_dropped_datagram_ends_the_pause_at_once(
    tmp_path: Path, driver: Driver
) -> None:
    out: dict[str, Any] = {}

    def pays(sock: PaidSocket) -> None:
        paid = sock._paid
        sock.recv(2)
        _dropped_until_paused(sock, SIZE)  # the credit spent: a pause begins
        out["paused"] = paid.core.unpaid_datagrams_since is not None
        with paid.engine.lock:  # (as the client's RECEIPT frame is read)
            _pay(paid, paid.engine.conn.usage)
        # no send meanwhile: the payment itself ends the pause
        out["ended"] = wait_for(lambda: paid.core.unpaid_datagrams_since is None, 5.0)

    async def pays_aio(reader: PaidReader, writer: PaidWriter) -> None:
        paid = reader._paid
        await reader.readexactly(2)
        while paid.datagram_room([SIZE]):
            writer.send_datagram(b"d" * SIZE)
            await asyncio.sleep(0)
        writer.send_datagram(b"d" * SIZE)  # dropped: a pause begins
        out["paused"] = paid.core.unpaid_datagrams_since is not None
        _pay(paid, paid.conn.usage)
        deadline = time.monotonic() + 5.0
        while paid.core.unpaid_datagrams_since is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        out["ended"] = paid.core.unpaid_datagrams_since is None

    policy = ServicePolicy(allowance=300, pause_timeout=30.0)
    _served(tmp_path, driver, (pays, pays_aio), policy, lambda: "ended" in out)
    assert out == {"paused": True, "ended": True}


#: A datagram the allowance covers once (about 9.5 KiB of credit), not twice
WAITING = 8000
#: Stream bytes that leave less credit than WAITING after a payment covering it
SPEND = 4000


def test_payment_ends_the_pause_of_a_blocking_datagram_send_that_waits(
    tmp_path: Path,
) -> None:
    """A blocking send_datagram that waits with no timeout, a receipt covering its
    datagram, then stream bytes from another thread that spend that credit before the
    send looks again: the send's pause is timed from the payment (the step after it
    finds the datagram uncovered starts a new one), so the connection closes
    pause_timeout after the payment, not pause_timeout after the first drop."""
    out: dict[str, Any] = {}

    def waits(sock: PaidSocket) -> None:
        paid = sock._paid
        sock.recv(2)
        _dropped_until_paused(sock, WAITING)  # the credit spent: a pause begins
        out["dropped_at"] = paid.core.unpaid_datagrams_since
        grown, spent = threading.Event(), threading.Event()
        grew = paid.credit_grew

        def grew_then_spent() -> None:
            # (the writer thread, once the receipt counts: the send that waits looks
            # again only after the stream bytes went)
            grew()
            if paid.core.receipts and not grown.is_set():
                grown.set()
                spent.wait(WAIT)

        paid.credit_grew = grew_then_spent  # type: ignore[method-assign]

        def pays() -> None:
            time.sleep(PAUSE * 0.6)
            with paid.engine.lock:  # (as the client's RECEIPT frame is read)
                out["paid_at"] = time.monotonic()
                _pay(paid, paid.engine.conn.usage)

        def spends() -> None:
            if grown.wait(WAIT):
                sock.sendall(bytes(SPEND))
            spent.set()

        threads = [threading.Thread(target=pays), threading.Thread(target=spends)]
        for thread in threads:
            thread.start()
        sock.settimeout(None)
        try:
            sock.send_datagram(bytes(WAITING))
            out["sent"] = True
        except DTPError as exc:
            out["raised"] = exc
        out["closed_at"] = time.monotonic()
        for thread in threads:
            thread.join(WAIT)
        out["done"] = True

    policy = ServicePolicy(allowance=100, pause_timeout=PAUSE)
    _served(tmp_path, Driver("blocking"), (waits, None), policy, lambda: "done" in out)
    assert isinstance(out.get("raised"), PaymentRequired), out
    assert out["dropped_at"] is not None, out
    after_payment = out["closed_at"] - out["paid_at"]
    assert PAUSE <= after_payment < PAUSE + 1.0, out
    assert out["closed_at"] - out["dropped_at"] >= PAUSE * 1.5, out


#: How long the step of a waiting send holds, between reading the pause's start and
#: judging by it, for a payment to end that pause meanwhile (it cannot: see below)
HOLD = 0.5


def test_a_payment_never_ends_a_pause_between_a_step_reading_its_start_and_using_it(
    tmp_path: Path,
) -> None:
    """A blocking datagram send waiting in a pause, its step stopped between reading
    the pause's start (datagrams_unpaid) and judging by it (datagram_verdict); the
    payment covering its datagram comes then, from the receipt writer's thread. The
    payment's end of the pause (credit_grew) waits for the engine lock the step holds,
    so the step judges by the start the engine still has -- never by one a payment
    ended. Ordered by events, not by sleeps: the step waits HOLD for a payment that
    cannot come through the lock, which bounds the test, not its outcome."""
    out: dict[str, Any] = {}

    def races(sock: PaidSocket) -> None:
        paid = sock._paid
        core = paid.core
        sock.recv(2)
        _dropped_until_paused(sock, SIZE)  # the credit spent: a pause begins
        out["paused"] = core.unpaid_datagrams_since is not None
        with paid.engine.lock:  # (as the client's RECEIPT frame is read)
            _, receipt = core.receipt_frame(_signed(paid, paid.engine.conn.usage), closed=False)
        assert receipt is not None
        stepping, payment_done = threading.Event(), threading.Event()
        judge = core.datagram_verdict

        def judged(verdict: Any, now: float, size: int, since: float) -> Any:
            if not stepping.is_set():
                stepping.set()
                payment_done.wait(HOLD)
                out["judged_by"] = since
                out["pause_began"] = core.unpaid_datagrams_since
                out["payment_waited"] = not payment_done.is_set()
            return judge(verdict, now, size, since)

        core.datagram_verdict = judged  # type: ignore[method-assign]

        def pays() -> None:
            if stepping.wait(WAIT):
                paid._kept(receipt)  # as the receipt writer's thread, once it is stored
            payment_done.set()

        payer = threading.Thread(target=pays)
        payer.start()
        sock.settimeout(WAIT)
        try:
            sock.send_datagram(b"d" * SIZE)  # waits, then goes on the payment
            out["sent"] = True
        except DTPError as exc:
            out["raised"] = exc
        payer.join(WAIT)
        out["ended"] = core.unpaid_datagrams_since is None
        out["done"] = True

    policy = ServicePolicy(allowance=300, pause_timeout=30.0)
    _served(tmp_path, Driver("blocking"), (races, None), policy, lambda: "done" in out)
    assert out.get("sent") is True, out
    assert out["paused"] and out["payment_waited"] and out["ended"], out
    assert out["judged_by"] is not None and out["judged_by"] == out["pause_began"], out
