"""The asyncio paid server's datagram pause (dtp.paid_aio, s35's second reading):

- the escrow read a dropped datagram starts in a task was left running when the
  connection ended: the settlement went on meanwhile (and what the read found -- a
  receipt waiting above the old deposit -- came after it, unclaimed), and the server
  could report itself released with the read still using the ledger;
- the pause of datagram sends was over only when a datagram send went whole: payment
  that came otherwise (a receipt, the credit then spent on stream bytes) left it
  running, so a datagram dropped long after closed the connection at once, though the
  client had paid since (dtp.paid's look finds it served: a pause after is a new one);
- an empty ``send_datagrams([])`` ended the pause (it went "whole"): a handler sending
  batches, some empty, to a client that pays nothing never closed the connection.

Real connections on 127.0.0.1, a LocalLedger file in tmp_path, real handshakes by host
ID."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path
from typing import Any

from dtp.chain.objects import Sla
from dtp.errors import DTPError, PaymentRequired
from dtp.escrow import Receipt, fee
from dtp.paid import ServicePolicy
from dtp.paid_aio import PaidReader, PaidWriter
from tests.paid_review_harness import CLIENT, SLA, World
from tests.test_s35_paidaio_review import UNPAID, WAIT, run_go, until

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
    returns: the settlement comes after that read ended, not while it is under way.
    (Before: the read was left running -- the connection settled meanwhile, and what
    the read found came after the settlement.)"""
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
    a pause timeout later, not at once. (Before the s35 change: never; after it, at
    once -- the first pause's clock ran on through the payment.)"""
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
        signed = Receipt(paid.connection_id, used, requests, fee(SLA, used, requests), 1)
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
    PaymentRequired. (Before: the empty batch, "sent whole", ended the pause each time:
    never closed.)"""
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
