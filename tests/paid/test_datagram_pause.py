"""The asyncio paid server (dtp.hostid.paid._aio) held to what the blocking one
(dtp.hostid.paid) does where a user sees it:

- a handler sending datagrams alone went past the client's bytes/s limit without bound
  (each was charged, but nothing it did ever waited for the debt): a send made while
  the limit is in debt now drops them, counted, as the writer drops what the carrier's
  backlog cannot take (``drain()`` is where a sender waits instead);
- a handler sending datagrams alone to a client that paid nothing had them dropped for
  the life of the connection, which never closed (the blocking send pauses, asks for a
  receipt and closes after the pause timeout); nor did it ask a client that pays on
  request for a receipt, so it never resumed;
- a cancel that came as a receipt resumed a paused read was lost (asyncio.wait_for on
  Python 3.11 returns the inner result then): the read went on waiting for bytes, and
  a task the loop's end cancelled could keep the loop from ending.

Real connections on 127.0.0.1, a LocalLedger file in tmp_path, real handshakes by host
ID.

The asyncio paid server's datagram pause (dtp.hostid.paid._aio):

- the escrow read a dropped datagram starts in a task was left running when the
  connection ended: the settlement went on meanwhile (and what the read found -- a
  receipt waiting above the old deposit -- came after it, unclaimed), and the server
  could report itself released with the read still using the ledger;
- the pause of datagram sends was over only when a datagram send went whole: payment
  that came otherwise (a receipt, the credit then spent on stream bytes) left it
  running, so a datagram dropped long after closed the connection at once, though the
  client had paid since (payment that covers the dropped datagram ends it now, on both
  drivers: tests/paid/test_datagram_pause_rule.py);
- an empty ``send_datagrams([])`` ended the pause (it went "whole"): a handler sending
  batches, some empty, to a client that pays nothing never closed the connection.

Real connections on 127.0.0.1, a LocalLedger file in tmp_path, real handshakes by host
ID."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from dtp.errors import DTPError, PaymentRequired
from dtp.hostid.paid import ServicePolicy
from dtp.hostid.paid._aio import PaidReader, PaidWriter
from dtp.ledger._objects import Sla
from dtp.payments.metering import CLOSE_PAYMENT_REQUIRED, MeteringConfig
from dtp.payments.receipts import Receipt, fee
from tests.paid.world import CLIENT, SERVER, SLA, World

WAIT = 20.0  # bound on anything waited for (the defects' waits are unbounded)
UNPAID = MeteringConfig(enabled=False)
#: A client that pays only when asked (no cadence of its own)
ON_REQUEST = MeteringConfig(every_bytes=0, every_ms=0)


async def until(check: Any, timeout: float = WAIT) -> None:
    """Until ``check()`` holds (server-side state with no event to wait on: looked at
    every few milliseconds), at most ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.005)


async def stop(server: Any, writer: Any) -> None:
    writer.abort()
    server.close()
    assert await server.wait_released(WAIT)


def run_go(
    w: World,
    callback: Any,
    policy: ServicePolicy,
    then: Callable[[Any], Awaitable[None]],
    **connect: Any,
) -> None:
    """Serve ``callback`` under ``policy``, connect (``connect``: World.connect's
    arguments), write the "go" the handlers wait for, then ``then(writer)``; the server
    and the world are closed after, whatever happened."""

    async def main() -> None:
        server = await w.serve(callback, policy)
        _, writer = await w.connect(**connect)
        try:
            writer.write(b"go")
            await writer.drain()
            await then(writer)
        finally:
            await stop(server, writer)

    try:
        asyncio.run(main())
    finally:
        w.close()


# -- 1. datagrams sent alone stay within the client's bytes/s limit --------------------


def test_datagrams_sent_alone_stay_within_the_bytes_limit(tmp_path: Path) -> None:
    """A handler sends a datagram every couple of milliseconds for a second and a half,
    never draining or reading, to a client limited to 20 kB/s: what goes stays within
    the rate (and its burst); the rest is dropped and counted."""
    rate, size, burst = 20_000, 1000, 5000  # burst: a quarter second's worth
    w = World(tmp_path)
    w.book.set_client_limits(SERVER, w.host_id, 0, rate, 0)
    out: dict[str, Any] = {}

    async def callback(reader: PaidReader, writer: PaidWriter) -> None:
        await reader.readexactly(2)
        calls = 0
        began = time.monotonic()
        while time.monotonic() - began < 1.5:
            writer.send_datagram(b"d" * size)
            calls += 1
            await asyncio.sleep(0.002)
        out["took"] = time.monotonic() - began
        out["sent"] = calls - writer.datagrams_send_dropped
        out["dropped"] = writer.datagrams_send_dropped

    async def then(writer: Any) -> None:
        await asyncio.wait_for(until(lambda: "sent" in out), WAIT)

    run_go(w, callback, ServicePolicy(allowance=1_000_000), then)
    charge = size + 3  # a datagram's payload and frame header (datagram_charge)
    sent_bytes = out["sent"] * charge
    # the burst, the rate since, and the one datagram that ran the bucket into debt
    assert sent_bytes <= burst + rate * out["took"] + charge, out
    assert sent_bytes >= rate * out["took"] / 2, out  # (not everything dropped)
    assert out["dropped"] > 0


# -- 2. datagrams sent alone to a client that does not pay: the pause ends ---------------


def test_datagrams_to_a_client_that_pays_nothing_close_after_the_pause(
    tmp_path: Path,
) -> None:
    """A handler sends datagrams alone to a client that pays nothing: past the
    allowance they are dropped, and once they have been for the pause timeout the
    connection closes with CLOSE_PAYMENT_REQUIRED, the send raising PaymentRequired, as
    the blocking send does."""
    w = World(tmp_path)
    out: dict[str, Any] = {}

    async def callback(reader: PaidReader, writer: PaidWriter) -> None:
        await reader.readexactly(2)
        began = time.monotonic()
        try:
            while time.monotonic() - began < 4.0:
                writer.send_datagram(b"d" * 1000)
                await asyncio.sleep(0.01)
        except DTPError as exc:
            out["raised"] = exc
        out["took"] = time.monotonic() - began

    async def then(writer: Any) -> None:
        with contextlib.suppress(DTPError, TimeoutError):
            while True:
                await asyncio.wait_for(writer.recv_datagram(), WAIT)
        out["client"] = writer._proto.session.terminated
        await asyncio.wait_for(until(lambda: "took" in out), WAIT)

    # 300 MIST on credit: some 30 datagrams, then the gate pauses
    run_go(w, callback, ServicePolicy(allowance=300, pause_timeout=0.5), then, metering=UNPAID)
    assert isinstance(out.get("raised"), PaymentRequired), out
    assert out["raised"].code == CLOSE_PAYMENT_REQUIRED
    # the datagram pause's own close, named as the blocking send's (PaidConnectionEngine)
    assert "no credit covered a datagram of 1000 bytes within 0.5 s" in str(out["raised"])
    assert out["took"] < 3.0
    ended = out["client"]
    assert ended is not None and ended.error_code == CLOSE_PAYMENT_REQUIRED


def test_datagrams_to_a_client_that_pays_on_request_go_on_after_the_pause(
    tmp_path: Path,
) -> None:
    """A client that pays only when asked: the handler's datagrams, dropped once the
    allowance is spent, ask it for a receipt, and go on once it came -- all of them
    reach the client, the connection never closed."""
    w = World(tmp_path)
    out: dict[str, Any] = {}
    count, size = 100, 1000  # 100 kB: a thousand MIST, the allowance is 300

    async def callback(reader: PaidReader, writer: PaidWriter) -> None:
        await reader.readexactly(2)
        went = 0
        began = time.monotonic()
        try:
            while went < count and time.monotonic() - began < 5.0:
                went += writer.send_datagrams([b"d" * size])
                await asyncio.sleep(0.005)
        except DTPError as exc:
            out["raised"] = exc
        out["went"] = went
        with contextlib.suppress(DTPError):
            await reader.read(1)  # until the client closes

    async def then(writer: Any) -> None:
        got = 0
        with contextlib.suppress(TimeoutError):
            while got < count * size:
                got += len(await asyncio.wait_for(writer.recv_datagram(), 6.0))
        out["got"] = got

    policy = ServicePolicy(allowance=300, pause_timeout=3.0)
    run_go(w, callback, policy, then, metering=ON_REQUEST)
    assert "raised" not in out, out
    assert out["went"] == count, out
    assert out["got"] == count * size, out


# -- 3. a cancel as a receipt resumes a paused read is not lost -------------------------


def test_a_cancel_as_a_receipt_resumes_a_paused_read_cancels_it(tmp_path: Path) -> None:
    """A read paused for payment is cancelled in the very loop turn in which a receipt
    resumes it (as asyncio.wait_for's timeout, or the loop's end, may): it ends
    cancelled, on Python 3.11 too, where asyncio.wait_for may return the result instead
    of the cancel (a read waiting on would hold the loop's end for good)."""
    w = World(tmp_path)
    out: dict[str, Any] = {}

    async def callback(reader: PaidReader, writer: PaidWriter) -> None:
        paid = reader._paid
        proto = paid.proto
        # (allowance 0: the client's request -- a byte on a stream of its own, so that
        # this read has nothing to return once resumed -- is unpaid: the read pauses,
        # once the request is in)
        await asyncio.wait_for(until(lambda: paid.conn.usage[1] > 0), WAIT)
        task = asyncio.ensure_future(reader.read(10))
        await asyncio.wait_for(until(lambda: paid.gate.pause_deadline_ms() is not None), WAIT)
        await asyncio.sleep(0)  # the read is in its wait for a receipt now
        used, requests = paid.conn.usage
        signed = Receipt(paid.gate.scope, used, requests, fee(SLA, used, requests), 1)
        receipt = paid.gate.check(signed.sign(CLIENT).encode())
        notify = proto._notify

        def notify_then_cancel() -> None:
            # the receipt wakes the read; the cancel comes in the same loop turn
            proto._notify = notify
            notify()
            proto.loop.call_soon(task.cancel)

        proto._notify = notify_then_cancel
        paid._kept(receipt)  # (as the receipt writer's thread hands it over, once stored)
        done, _ = await asyncio.wait({task}, timeout=3.0)
        out["cancelled"] = bool(done) and task.cancelled()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task

    async def main() -> None:
        server = await w.serve(callback, ServicePolicy(allowance=0, pause_timeout=30.0))
        _, writer = await w.connect(metering=UNPAID)
        _, other = await writer.open_stream()
        other.write(b"?")
        try:
            await asyncio.wait_for(until(lambda: "cancelled" in out), WAIT)
        finally:
            await stop(server, writer)

    try:
        asyncio.run(main())
    finally:
        w.close()
    assert out["cancelled"]


#: ledger calls that only read (any other is the settlement's, at the end)
_READS = frozenset({"get_host", "get_escrow", "get_connection", "get_cap", "epoch"})


class _SlowEscrowLedger:
    """The server's ledger, whose first escrow read once armed waits for ``release``;
    the calls made from then on are logged in order."""

    def __init__(self, ledger: Any) -> None:
        self._ledger = ledger
        self.armed = False
        self.started = threading.Event()
        self.release = threading.Event()
        self.log: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._ledger, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if not self.armed:
                return attr(*args, **kwargs)
            if name == "get_escrow" and not self.started.is_set():
                self.started.set()
                self.log.append("slow read")
                self.release.wait(WAIT)
                try:
                    return attr(*args, **kwargs)
                finally:
                    self.log.append("slow read done")
            self.log.append(name)
            return attr(*args, **kwargs)

        return call


def test_the_escrow_read_a_datagram_started_ends_before_the_settlement(
    tmp_path: Path,
) -> None:
    """A client's datagrams take its usage past the deposit, and the handler's datagram
    is dropped: the escrow is read again in a task (a slow ledger here). The handler
    returns: the settlement comes after that read ended, not while it is under way."""
    w = World(tmp_path, Sla(1000, 5, 5000))  # 5000 MIST of deposit: some 5 KiB
    # a cap above the deposit: a top-up could be served, so the deposit is what holds
    cap = w.book.create_spending_cap(CLIENT, 1_000_000)
    slow = _SlowEscrowLedger(w.server_book)
    w.server_book = slow  # type: ignore[assignment]
    out: dict[str, Any] = {}

    async def callback(reader: PaidReader, writer: PaidWriter) -> None:
        paid = reader._paid
        # the client's datagrams are in the usage as they come: past the deposit
        await until(lambda: paid.conn.usage[0] > 8000)
        slow.armed = True
        writer.send_datagram(b"d" * 100)  # dropped: the deposit holds the connection
        try:
            await until(slow.started.is_set, 3.0)
        except TimeoutError:
            out["no read"] = True
            slow.release.set()
            return
        # the read goes on a while after the handler returned
        asyncio.get_running_loop().call_later(1.0, slow.release.set)
        out["returned"] = True

    async def main() -> None:
        server = await w.serve(
            callback,
            ServicePolicy(allowance=1_000_000, final_receipt_timeout=0.1, refresh_interval=30),
        )
        _, writer = await w.connect(deposit=5000, metering=UNPAID, cap_id=cap)
        try:
            for _ in range(12):
                writer.send_datagram(b"c" * 1000)
                await asyncio.sleep(0.005)
            await until(lambda: "returned" in out or "no read" in out)
            with contextlib.suppress(DTPError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), WAIT)
            server.close()
            assert await server.wait_released(WAIT)
            out["log"] = list(slow.log)
        finally:
            slow.release.set()
            writer.abort()
            server.close()
            await server.wait_released(WAIT)

    try:
        asyncio.run(main())
    finally:
        w.close()
    assert "no read" not in out, "a dropped datagram read the escrow again"
    log = out["log"]
    assert "slow read done" in log, log
    writes = [i for i, name in enumerate(log) if name not in _READS and "slow" not in name]
    assert writes, log  # (the settlement's)
    assert log.index("slow read done") < writes[0], log


def test_a_datagram_pause_after_payment_came_is_a_new_one(tmp_path: Path) -> None:
    """Datagrams dropped at the end of the credit start a pause; the client pays (a
    receipt), and the handler spends the new credit on stream bytes for longer than the
    pause timeout. The next datagram dropped starts a new pause: the connection closes
    a pause timeout later, not at once (not on the first pause's clock, which
    stopped with the payment)."""
    w = World(tmp_path)
    out: dict[str, Any] = {}
    size, timeout = 1000, 0.6

    async def callback(reader: PaidReader, writer: PaidWriter) -> None:
        paid = reader._paid
        await reader.readexactly(2)
        while paid.datagram_room([size]):
            writer.send_datagram(b"d" * size)
            await asyncio.sleep(0)
        writer.send_datagram(b"d" * size)  # dropped: a pause begins
        used, requests = paid.conn.usage
        signed = Receipt(paid.gate.scope, used, requests, fee(SLA, used, requests), 1)
        paid.on_receipt(signed.sign(CLIENT).encode())  # (as it comes off the wire)
        await until(lambda: paid.gate.latest_nonce == 1)
        await asyncio.sleep(timeout + 0.3)  # (other work, paid for)
        # stream bytes take the whole credit (none held back): the next datagram drops
        total, requests = paid.conn.usage
        writer.write(b"s" * paid.gate.credit_bytes(total + paid.conn.send_buffered(), requests))
        began = time.monotonic()
        try:
            while time.monotonic() - began < 3.0:
                writer.send_datagram(b"d" * size)
                await asyncio.sleep(0.01)
        except DTPError as exc:
            out["raised"] = exc
        out["after"] = time.monotonic() - began

    async def then(writer: Any) -> None:
        await until(lambda: "after" in out)

    policy = ServicePolicy(allowance=300, pause_timeout=timeout)
    run_go(w, callback, policy, then, metering=UNPAID)
    assert isinstance(out.get("raised"), PaymentRequired), out
    assert timeout - 0.1 <= out["after"] < 2.5, out


def test_an_empty_batch_does_not_end_a_datagram_pause(tmp_path: Path) -> None:
    """A handler sends datagrams to a client that pays nothing, a batch of none between
    each: once dropped for the pause timeout, the connection closes with
    PaymentRequired (an empty batch, "sent whole", does not end the pause)."""
    w = World(tmp_path)
    out: dict[str, Any] = {}

    async def callback(reader: PaidReader, writer: PaidWriter) -> None:
        await reader.readexactly(2)
        began = time.monotonic()
        try:
            while time.monotonic() - began < 3.0:
                writer.send_datagram(b"d" * 1000)
                assert writer.send_datagrams([]) == 0
                await asyncio.sleep(0.01)
        except DTPError as exc:
            out["raised"] = exc
        out["took"] = time.monotonic() - began

    async def then(writer: Any) -> None:
        await until(lambda: "took" in out)

    run_go(w, callback, ServicePolicy(allowance=300, pause_timeout=0.5), then, metering=UNPAID)
    assert isinstance(out.get("raised"), PaymentRequired), out
    assert out["took"] < 2.5, out
