"""A paid connection on asyncio: :class:`PaidReader` and :class:`PaidWriter`, the
pair a :func:`dtp.hostid.paid._aio.serve` callback gets, and the connection state its
streams share (the twin of :mod:`dtp.hostid.paid._blocking`; docs/escrow.md §6.1)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from dtp.errors import ChainError, ConnectionClosed, DTPError, LocalProtocolError, PaymentRequired
from dtp.hostid.paid._engine import (
    Close,
    PaidConnectionState,
    PauseAction,
    ReceiptStep,
    RefillStep,
)
from dtp.hostid.paid._policy import (
    CREDIT_MAX,
    SEND_SLICE,
    ServicePolicy,
    datagram_sizes,
    not_forwarded,
)
from dtp.ledger.receipt import Receipt
from dtp.payments._gate import RECEIPT_REQUEST, GateState, GateVerdict, ReceiptGate
from dtp.payments._ratelimit import ClientBuckets, datagram_charge
from dtp.payments._receipt_writer import ReceiptWriter
from dtp.transport.blocking._checks import readable

if TYPE_CHECKING:
    from dtp.ledger.interface import Ledger
    from dtp.transport.asyncio._protocol import Protocol as _Protocol
    from dtp.transport.asyncio._streams import DTPStreamReader, DTPStreamWriter


logger = logging.getLogger(__name__)

#: How many put-back datagrams a connection remembers as charged already
_CHARGED_KEPT = 64


PaidCallback = Callable[["PaidReader", "PaidWriter"], "Awaitable[None] | None"]


class PaidConnection(PaidConnectionState):
    """The server's state of one paid connection (shared by its streams)."""

    def __init__(
        self,
        proto: _Protocol,
        gate: ReceiptGate,
        buckets: ClientBuckets,
        policy: ServicePolicy,
        writer: ReceiptWriter,
        ledger: Ledger | None = None,
    ) -> None:
        cid = proto.conn.peer_connection_id
        # (the escrow is read again in a thread; the send credit is what a held write
        # takes from: wait_send, reserve, sent; reads ask the gate at each call, one event
        # loop needing no cache)
        named = ("" if cid is None else "0x" + cid.hex(), proto.conn.peer_address or "")
        super().__init__(gate, buckets, policy, writer, ledger, *named)
        self.proto = proto
        self.conn = proto.conn
        #: PaidWriter tasks letting out what was written beyond the gate's credit
        self.releasing: set[asyncio.Task[None]] = set()
        #: The first stream's close (PaidWriter.close): the end phase waits for it
        self.closing: asyncio.Task[None] | None = None
        #: Datagrams a cancelled recv_datagram() put back, charged already: known by
        #: identity; bounded, for one the full queue dropped is never read again.
        self.charged_datagrams: deque[bytes] = deque(maxlen=_CHARGED_KEPT)
        #: Streams a cancelled accept_stream() put back, charged to the request rate
        #: already (any writer of the connection may accept one next)
        self.charged_streams: set[int] = set()
        #: The escrow read a datagram send dropped for want of credit started (a top-up
        #: may be what covers them: :meth:`datagrams_now`)
        self._deposit_task: asyncio.Task[None] | None = None
        #: The end phase waited for that read: no datagram send starts another
        self._deposit_reads_over = False

    # -- the connection's I/O driver -------------------------------------------------

    def attach(self) -> None:
        """Take the connection's RECEIPT frames from now on (:meth:`on_receipt`), those
        that came before first."""
        session = self.proto.session
        session.on_receipt = self.on_receipt
        while session.receipts:
            self.on_receipt(session.receipts.popleft())

    def ended(self) -> bool:
        """Whether the connection has ended (its session)."""
        return self.proto.session.terminated is not None

    def wake(self) -> None:
        """Wake the tasks waiting on the connection (each looks again)."""
        self.proto.wake()

    def abort(self, close: Close) -> None:
        """End the connection as the engine decided (``close``: code and reason)."""
        self.conn.close(close.code, close.reason)
        self.proto.flush()
        self.proto.close_carrier()

    def on_receipt(self, data: bytes) -> None:
        """A RECEIPT frame: checked here, stored by the writer thread (never on the event
        loop), counted once stored."""
        step, receipt = self.core.receipt_frame(data, closed=self.conn.closed)
        # (refused: no credit is cached here, the next look asks the gate)
        if step is ReceiptStep.STORE and receipt is not None:
            self.receipt_writer.submit(receipt, self._stored)

    @property
    def final(self) -> Receipt | None:
        """The receipt that came with the end of the connection, claimed by the
        settlement instead of written first (as dtp.hostid.paid's)."""
        return self.core.final

    # (asyncio only: the receipt writer's thread hands the count to the loop)
    def _stored(self, receipt: Receipt) -> None:
        """In the writer thread: hand the stored receipt to the event loop."""
        with contextlib.suppress(RuntimeError):  # the loop is gone: nothing to resume
            self.proto.loop.call_soon_threadsafe(self._kept, receipt)

    def _kept(self, receipt: Receipt) -> None:
        self.core.kept(receipt)
        self.credit_grew()
        self.wake()  # a paused reader or drain() looks again

    def credit_grew(self) -> None:
        """Payment came: a pause of datagram sends may end
        (:meth:`~dtp.hostid.paid._engine.PaidConnectionEngine.datagrams_covered_again`)."""
        conn = self.conn
        self.core.datagrams_covered_again(conn.usage, conn.send_buffered() + self.credit.sending)

    def verdict(self) -> GateVerdict:
        return self.core.verdict(self.conn.usage, time.monotonic())

    def unpaid_end(self) -> bool:
        """Whether the connection ended while the gate does not serve its usage: what
        is still buffered is unpaid, and no read serves it (:meth:`wait_paid` returns
        at such an end, paused)."""
        return self.ended() and not self.gate.serving(*self.conn.usage)

    async def wait_paid(self) -> None:
        """As :meth:`dtp.hostid.paid._blocking.PaidConnection.wait_paid` (the engine's
        :meth:`~dtp.hostid.paid._engine.PausedCall.step` at each look)."""
        if self.gate.serving(*self.conn.usage):
            return
        await self.read_deposit()
        verdict = self.verdict()
        pause = self.core.pause(time.monotonic())
        session = self.proto.session
        while (step := pause.step(verdict, time.monotonic())).action is PauseAction.WAIT:
            if session.terminated is not None:
                return
            if step.ask:
                self.ask_for_receipt()
            # (asyncio.timeout, not wait_for: Python 3.11's wait_for can return the
            # wait's result in place of a cancel that comes with it, and lose the cancel)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(step.wait):
                    await self.proto.wait_for(
                        lambda: (
                            self.verdict().state is not GateState.PAUSE
                            or session.terminated is not None
                        )
                    )
            await self.read_deposit()
            verdict = self.verdict()
        if step.close is not None:
            self.abort(step.close)
            raise PaymentRequired(step.close.reason, step.close.code)

    # (asyncio only: the blocking driver sends the request under its engine lock, inline)
    def ask_for_receipt(self) -> None:
        """Send the client RECEIPT_REQUEST (an ended connection sends nothing)."""
        with contextlib.suppress(DTPError):
            self.conn.send_receipt(RECEIPT_REQUEST)
        self.proto.flush()

    async def wait_send(self, first: bool = False) -> None:
        """Wait until a held write may go (then :meth:`reserve`): paid for, or the queue
        read; at once after the end. ``first``: on the first stream (its request counted
        ahead)."""
        conn = self.conn
        while True:
            await self.wait_paid()
            if self._refill(first):
                return
            # the queued bytes hold the credit: they go as the client reads (its window
            # opening notifies the protocol), or a receipt comes (_kept notifies); the
            # end of the connection gives room too (_refill)

            def moved(queued: int = conn.send_buffered()) -> bool:
                return conn.send_buffered() < queued or self._refill(first)

            await self.proto.wait_for(moved)

    async def read_deposit(self, *, ending: bool = False) -> None:
        """As :meth:`dtp.hostid.paid._blocking.PaidConnection.read_deposit` (in a thread)."""
        if self.ledger is None:
            return
        escrow_id = self.core.escrow_to_read(self.conn.usage, time.monotonic(), ending=ending)
        if escrow_id is not None:
            await self._read_escrow(escrow_id)

    async def _read_escrow(self, escrow_id: str) -> None:
        """Read the escrow ``escrow_id`` (in a thread; its read begun by the engine's
        :meth:`~dtp.hostid.paid._engine.PaidConnectionEngine.escrow_to_read`) and go on
        with the deposit it holds."""
        assert self.ledger is not None
        try:
            escrow = await asyncio.to_thread(self.ledger.get_escrow, escrow_id)
        except ChainError as exc:
            self.core.deposit_read_failed(exc)
            return
        pending = self.core.deposit_read(escrow.deposited)
        self.credit_grew()  # (a top-up)
        if pending is not None:
            self.on_receipt(pending.encode())  # the usual path now

    # (asyncio only: only a datagram send that never waits starts a read in the background)
    async def deposit_reads_ended(self) -> None:
        """The end phase: wait for an escrow read a datagram send started and let none
        start, or a receipt it finds would come after the settlement, unclaimed."""
        self._deposit_reads_over = True
        task = self._deposit_task
        if task is None:
            return
        with contextlib.suppress(Exception):  # (logged by _log_failure)
            await _shielded(task)

    def _refill(self, first: bool = False) -> bool:
        """Set the send credit
        (:meth:`~dtp.hostid.paid._engine.PaidConnectionEngine.refill_send`): False when
        the queued bytes hold all of it (one loop: no write is under way)."""
        conn = self.conn
        ended = self.proto.session.terminated is not None  # (ended(), inline)
        step = self.core.refill_send(
            self.credit,
            conn.usage,
            conn.send_buffered(),
            0,
            ended=ended,
            pending=conn.requests_pending if first else 0,
        )
        return step is RefillStep.GO

    def reserve(self, nbytes: int) -> int:
        """How much of a held write of ``nbytes`` may go now (after :meth:`wait_send`),
        taken from the send credit until :meth:`sent`."""
        return self.credit.reserve(nbytes)

    # (asyncio only: a datagram send never waits (the blocking one does: reserve_datagrams))
    def datagrams_now(self, sizes: list[int]) -> int:
        """How many of ``sizes`` a send sends now, the rest dropped and counted
        (:meth:`~dtp.hostid.paid._engine.PaidConnectionEngine.datagrams_now`); drops for
        want of payment are a pause, which asks, reads the escrow and may close."""
        conn = self.conn
        core = self.core
        now = time.monotonic() if self.buckets.bytes.rate else None
        take, unpaid = core.datagrams_now(conn.usage, conn.send_buffered(), sizes, now)
        if take < len(sizes):
            conn.datagrams_send_dropped += len(sizes) - take
        if not unpaid:
            return take
        if now is None:
            now = time.monotonic()
        step = core.datagrams_dropped(conn.usage, now, sizes[take])
        if step.close is not None:
            self.abort(step.close)
            raise PaymentRequired(step.close.reason, step.close.code)
        if step.ask:
            self.ask_for_receipt()
        task = self._deposit_task
        reading = task is not None and not task.done()
        if not reading and not self._deposit_reads_over and self.ledger is not None:
            escrow_id = core.escrow_to_read(conn.usage, now)
            if escrow_id is not None:
                self._deposit_task = asyncio.ensure_future(self._read_escrow(escrow_id))
                self._deposit_task.add_done_callback(_log_failure)
        return take

    # (asyncio only: what datagrams_now would send, asked without sending)
    def datagram_room(self, sizes: list[int]) -> int:
        """How many datagrams of ``sizes`` (the first ones) may go now, each whole, on
        the gate's credit for writes; 0 when the gate does not serve."""
        conn = self.conn
        return self.core.datagram_room(conn.usage, conn.send_buffered(), sizes)

    def sent(self, reserved: int) -> None:
        """A write :meth:`reserve` made room for went: its bytes are in the usage."""
        self.credit.sent(reserved)

    def room(self, nbytes: int) -> int:
        """How much of a read of ``nbytes`` may go now (after :meth:`wait_paid`), at
        least 1 byte; 0 at an unpaid end (:meth:`unpaid_end`)."""
        if self.unpaid_end():
            return 0
        return self.core.read_room(self.conn.usage, nbytes)[0]

    async def request_final_receipt(self) -> None:
        """As :meth:`dtp.hostid.paid._blocking.PaidConnection.request_final_receipt`."""
        core = self.core

        def done() -> bool:
            return core.final_receipt_over(self.conn.usage, ended=self.ended())

        deadline = core.final_receipt_deadline(time.monotonic())
        while wait := core.final_receipt_step(
            self.conn.usage, time.monotonic(), deadline, ended=self.ended()
        ):
            self.ask_for_receipt()
            with contextlib.suppress(TimeoutError):  # (asyncio.timeout: see wait_paid)
                async with asyncio.timeout(wait):
                    await self.proto.wait_for(done)

    async def throttle(self, nbytes: int = 0, requests: int = 0) -> None:
        """Charge the client's rate limits and wait as long as they say."""
        if not self.buckets.bytes.rate and not self.buckets.requests.rate:
            return
        core = self.core
        await self._hold(core.charge(nbytes, requests, time.monotonic()), core.debt)

    # (asyncio only: a write never waits (the blocking one does: wait_send, pace, reserve))
    def write_now(self, nbytes: int, first: bool = False) -> int:
        """How much of a write goes at once, the rest held
        (:meth:`~dtp.hostid.paid._engine.PaidConnectionEngine.write_now`)."""
        conn = self.conn
        core = self.core
        now = time.monotonic() if self.buckets.bytes.rate else None
        pending = conn.requests_pending if first else 0
        return core.write_now(conn.usage, conn.send_buffered(), nbytes, now, pending)

    # (asyncio only: what went without a wait is charged after it (blocking: limit, first))
    def charge_sent(self, nbytes: int) -> bool:
        """Charge what went to the bytes/s limit without waiting (:meth:`wait_limits`
        waits for the debt); whether a limit took it."""
        return self.core.charge_sent(nbytes, time.monotonic())

    # (asyncio only: the debt charge_sent left is waited for at drain())
    async def wait_limits(self) -> None:
        """Wait while the client's rate limits are in debt (what :meth:`charge_sent` counted;
        a :meth:`throttle` of nothing does not wait for it)."""
        if not self.buckets.bytes.rate and not self.buckets.requests.rate:
            return
        await self._hold(self.core.debt(time.monotonic()), self.core.debt)

    async def pace(self, nbytes: int) -> int:
        """As :meth:`dtp.hostid.paid._blocking.PaidConnection.pace`: how much of a read or write of
        ``nbytes`` goes now, once the bytes/s limit's bucket holds it (waits until then,
        and while the requests/s limit is in debt)."""
        core = self.core
        if not self.buckets.bytes.rate and not core.credit_rate:
            return nbytes
        rate = core.credit_pace()
        if rate is not None:
            self.conn.pace_credit(rate)
        if not self.buckets.bytes.rate:
            return nbytes
        size = core.pace_take(nbytes)

        def wait(now: float) -> float:
            return core.pace_wait(size, now)

        await self._hold(wait(time.monotonic()), wait)
        return size

    async def _hold(self, delay: float, again: Callable[[float], float]) -> None:
        """Wait ``delay`` seconds, and then as long as ``again(now)`` says."""
        # as the blocking driver's _hold: cut short by the end, looked at again each
        # refresh interval (tests/paid/test_rate_limit_wait_ends.py)
        session = self.proto.session
        while delay > 0:
            with contextlib.suppress(TimeoutError):  # (asyncio.timeout: see wait_paid)
                async with asyncio.timeout(self.core.hold_wait(delay)):
                    await self.proto.wait_for(lambda: session.terminated is not None)
            if session.terminated is not None:
                return
            delay = again(time.monotonic())

    # (asyncio only: a read or an accept cancelled after its charge puts back what it took)
    def charged_already(self, datagram: bytes) -> bool:
        """Whether ``datagram``, just read, is one a cancelled read put back, charged
        already (forgotten now)."""
        kept = self.charged_datagrams
        for i, item in enumerate(kept):
            if item is datagram:
                del kept[i]
                return True
        return False

    def received(self, data: bytes, charged: bool) -> bool:
        """Whether ``data`` goes to the application now
        (:meth:`~dtp.hostid.paid._engine.PaidConnectionEngine.datagrams_received`), else
        it is read again once paid for (``charged``: already). At an unpaid end it is
        dropped, so the next read reports the end."""
        queue = self.proto.session.datagrams
        if self.core.datagrams_received(self.conn.usage, (data,), queue):
            return True
        if self.unpaid_end():
            queue.clear()
        else:
            self.put_back_datagram(data, charged=charged)
        return False

    def put_back_datagram(self, data: bytes, *, charged: bool = True) -> None:
        """``data``, taken by a read cancelled or refused, is the next to read (not
        charged again); a waiting task is woken, which dtp.aio would not do."""
        self.proto.session.datagrams.appendleft(data)
        if charged and len(data) > 1:
            # (known by identity, and CPython shares its empty and one-byte bytes
            # objects: those are charged again, three bytes at most)
            self.charged_datagrams.append(data)
        self.wake()

    def put_back_stream(self, stream_id: int) -> None:
        """Stream ``stream_id``, taken by an accept cancelled, goes back for the next
        (charged already), as :meth:`put_back_datagram`."""
        self.proto.session.incoming_streams.appendleft(stream_id)
        self.charged_streams.add(stream_id)
        self.wake()

    def deny(self) -> None:
        """As :meth:`dtp.hostid.paid._blocking.PaidConnection.deny`."""
        self.abort(self.core.denied())

    def closed_on_ledger(self) -> None:
        """As :meth:`dtp.hostid.paid._blocking.PaidConnection.closed_on_ledger`."""
        self.abort(self.core.closed_on_ledger())

    @property
    def subscription(self) -> str | None:
        """As :attr:`dtp.hostid.paid._blocking.PaidConnection.subscription`."""
        return self.gate.subscription

    def subscription_ended(self, why: str) -> None:
        """As :meth:`dtp.hostid.paid._blocking.PaidConnection.subscription_ended`."""
        self.abort(self.core.subscription_ended(why))


def protocol_of(writer: DTPStreamWriter) -> _Protocol:
    """The connection's I/O driver behind ``writer`` (the gate waits on it, and it
    holds the connection's state): the one place the paid layer takes it from a
    writer."""
    return writer.layer.driver


def _first_stream(writer: DTPStreamWriter) -> bool:
    """Whether ``writer`` is its connection's first stream (whose close ends it)."""
    return bool(getattr(writer, "_primary", False))


async def _shielded(task: asyncio.Task[None]) -> None:
    """Wait for ``task`` without cancelling it; its cancellation by another returns, so
    a drain() nobody cancelled does not raise CancelledError
    (tests/paid/test_aio_writer_abort.py)."""
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if not task.cancelled() or (current is not None and current.cancelling()):
            raise  # this task was cancelled


def _log_failure(task: asyncio.Task[None]) -> None:
    """A background escrow read ended: what it raised is logged (nobody awaits it)."""
    if not task.cancelled() and task.exception() is not None:
        logger.error("reading an escrow again failed", exc_info=task.exception())


class PaidReader:
    """A paid stream's reader: :class:`dtp.aio.DTPStreamReader` whose reads wait for
    payment and the rate limits first. A read takes at most what the gate still allows
    per look (read() to EOF and readexactly() look again for each chunk), so that the
    flow-control credit its reading gives back cannot carry a client that pays nothing
    past the allowance. Push delivery (``set_sink``) is refused: it would pass the gate.
    """

    def __init__(self, reader: DTPStreamReader, paid: PaidConnection) -> None:
        self._reader = reader
        self._paid = paid
        #: Bytes at the front of the stream charged to the rate limits already: what a
        #: read cancelled after it had taken them put back
        self._charged = 0

    async def _chunk(self, n: int) -> bytes:
        """One gated read of up to ``n`` bytes (b"" at EOF)."""
        paid = self._paid
        await paid.wait_paid()
        room = paid.room(n)
        if not room:
            return self._unpaid_end()
        data = await self._reader.read(await paid.pace(room))
        return await self._throttled(data)

    def _unpaid_end(self) -> bytes:
        """What a read returns at an unpaid end: the failure raised, else b"". What is
        buffered was never paid for and is not served (tests/paid/test_unpaid_end.py)."""
        failure = self._reader.exception()
        if failure is not None:
            raise failure
        return b""

    async def _throttled(self, data: bytes) -> bytes:
        """``data`` once the rate limits let it go (it was just read). A read cancelled
        while it waits here consumes nothing, as asyncio's: ``data`` goes back in front
        of the stream (dropped, it would be lost), charged already, so not charged again."""
        again = min(self._charged, len(data))
        self._charged -= again
        try:
            await self._paid.throttle(len(data) - again)
        except asyncio.CancelledError:
            self._put_back(data)
            raise
        return data

    async def read(self, n: int = -1) -> bytes:
        # (a size that is not an integer: TypeError at once, as dtp.aio's read)
        n = operator.index(n)
        if n == 0:
            return b""
        if n > 0:
            return await self._chunk(n)
        return (await self._gather(None))[0]

    async def readexactly(self, n: int) -> bytes:
        n = operator.index(n)  # (as in read)
        if n <= 0:
            return await self._reader.readexactly(n)  # its ValueError, or b""
        data, need = await self._gather(n)
        if need:
            raise asyncio.IncompleteReadError(data, n)
        return data

    async def _gather(self, need: int | None) -> tuple[bytes, int]:
        """Gated chunks until ``need`` bytes came (None: EOF): (them, how many are
        missing). A read cancelled or failed consumes nothing, as asyncio's
        (tests/paid/test_aio_stream_wrappers.py)."""
        chunks: list[bytes] = []
        left = 0 if need is None else need
        reader = self._reader
        try:
            while chunk := await self._chunk(CREDIT_MAX if need is None else left):
                chunks.append(chunk)
                if need is not None:
                    left -= len(chunk)
                    if not left:
                        break
                elif reader.at_eof():
                    # the end came with the last bytes (a call's request, with its FIN):
                    # a look at the gate for the b"" that follows would move nothing
                    break
        except BaseException:
            self._put_back(b"".join(chunks))
            raise
        return b"".join(chunks), left

    def _put_back(self, data: bytes) -> None:
        """``data``, taken and charged by a read that did not complete, goes back in
        front of the stream (its flow-control credit went back already: not again)."""
        self._reader._unread(data)
        self._charged += len(data)

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        # one look for at most 64 KiB (the reader's limit), as one recv()
        await self._paid.wait_paid()
        if self._paid.unpaid_end():
            self._unpaid_end()
            raise asyncio.IncompleteReadError(b"", None)  # (as at the stream's end)
        return await self._throttled(await self._reader.readuntil(separator))

    async def readline(self) -> bytes:
        await self._paid.wait_paid()
        if self._paid.unpaid_end():
            return self._unpaid_end()
        return await self._throttled(await self._reader.readline())

    def __aiter__(self) -> PaidReader:
        return self

    async def __anext__(self) -> bytes:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line

    def __getattr__(self, name: str) -> Any:
        if name in _READER_FORWARDED:
            return getattr(self._reader, name)
        raise not_forwarded(self, name)


class PaidWriter:
    """A paid stream's writer: writes go out only as far as the receipt gate allows.

    :meth:`write` never waits (asyncio's contract): it lets out what the gate's credit
    covers and holds the rest, which a task lets out as payment comes, pausing while the
    gate does -- as a transport holds what the socket does not take yet. :meth:`drain`
    waits for what is held (that is where a paused connection waits for payment), then
    for the rate limits; it raises :class:`~dtp.errors.PaymentRequired` when the gate
    closed the connection meanwhile. What is held when the callback returns is let out
    before the connection ends (for up to the pause timeout, when unpaid).
    """

    def __init__(self, writer: DTPStreamWriter, paid: PaidConnection) -> None:
        self._writer = writer
        self._paid = paid
        # the connection's first stream: its first bytes may make its request
        self._first = writer.stream_id == 0
        # written, not let out yet: _held[_held_from:] (a bytearray, not a queue of the
        # caller's buffers, which it may reuse once write() returned)
        self._held = bytearray()
        self._held_from = 0
        self._releasing: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None
        self._eof_after = False  # write_eof() / close() came while bytes were held
        self._close_after = False
        #: The first stream's close() (which ends the connection): the final receipt is
        #: asked for first
        self._closing: asyncio.Task[None] | None = None
        #: Bytes or datagrams sent since the last drain(), charged to the rate limits
        #: already: drain() (and the close) wait for their debt
        self._limits_charged = False

    @property
    def gate(self) -> ReceiptGate:
        return self._paid.gate

    def write(self, data: bytes | bytearray | memoryview) -> None:
        # the wrapped writer's error for a view it does not take (a strided one:
        # BufferError) in any state, as it raises it; a view of rows by its bytes
        view = readable(data)
        if self._closing is not None:
            # (the wrapped writer is closed only once the final receipt came)
            raise LocalProtocolError("write on a closed or half-closed DTP stream")
        if self._releasing is not None:
            if self._failed is not None:
                raise self._failed
            if self._eof_after or self._close_after:
                raise LocalProtocolError("write on a closed or half-closed DTP stream")
            self._writer.write(b"")  # its checks (a reset stream, a closed connection)
            self._held += view  # behind what is held: in order
            return
        size = len(view)
        paid = self._paid
        # what goes now is charged to the rate limits at once, not at drain(): a callback
        # may never drain (tests/paid/test_rate_limit_asyncio_callback.py)
        room = paid.write_now(size, self._first)
        if room == size:
            self._writer.write(data)
            self._charged(size)
            return
        if room:
            self._writer.write(view[:room])
            self._charged(room)
        else:
            self._writer.write(b"")  # its checks, before anything is held
        self._held += view[room:]
        task = asyncio.ensure_future(self._release())
        self._releasing = task
        self._paid.releasing.add(task)
        task.add_done_callback(self._paid.releasing.discard)

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def _charged(self, nbytes: int) -> None:
        """``nbytes`` went out now: charged to the bytes/s limit, whose debt the next
        write, drain() and the close wait for."""
        if self._paid.charge_sent(nbytes):
            self._limits_charged = True

    async def _release(self) -> None:
        """Let out what is held, as far as the gate allows at each look."""
        paid = self._paid
        writer = self._writer
        try:
            while self._held_from < len(self._held):
                start = self._held_from
                # in slices the rate limit acts between, each after the debt is paid
                # (tests/paid/test_rate_limit_asyncio_callback.py)
                paced = await paid.pace(min(len(self._held) - start, SEND_SLICE))
                await paid.wait_send(self._first)
                n = paid.reserve(paced)
                # the writer seals or copies what it is given before it returns, and the
                # views are let go of before the next write() may grow _held
                try:
                    with memoryview(self._held) as held, held[start : start + n] as piece:
                        writer.write(piece)
                finally:
                    paid.sent(n)
                self._held_from = start + n
                await paid.throttle(n)
                await writer.drain()
            if self._eof_after and not self._close_after:
                writer.write_eof()
        except (DTPError, OSError) as exc:
            self._failed = exc
        finally:
            self._held = bytearray()
            self._held_from = 0
            self._releasing = None
            if self._close_after:
                writer.close()

    async def _wait_released(self) -> None:
        """Wait until what is held was let out (or the letting out failed or was given
        up: the writer's next call then says how)."""
        releasing = self._releasing
        if releasing is None:
            return
        # shielded: a cancelled drain() leaves what was written on its way; one that
        # abort() cancelled is reported by the wrapped writer
        await _shielded(releasing)

    async def drain(self) -> None:
        """As :meth:`dtp.aio.DTPStreamWriter.drain`: what is held first, then the
        wrapped writer's queue, the rate limits and payment. After this writer's
        close() it raises at once, as the wrapped one's does (the first stream's
        close() closes the wrapped writer only once the final receipt came, and one
        with bytes held only once they went out: meanwhile this raises all the same)."""
        if self._closing is not None or self._close_after:
            if self._failed is not None:
                raise self._failed
            raise self._paid.proto.session.error or ConnectionClosed("the stream was closed here")
        await self._wait_released()
        if self._failed is not None:
            raise self._failed
        await self._writer.drain()
        if self._limits_charged:
            # stream bytes and datagrams were charged as they went, without a wait: it
            # is here (the flag cleared once waited out: a drain() cancelled in the wait,
            # by asyncio.timeout say, leaves the debt to the next drain() and the close)
            await self._paid.wait_limits()
            self._limits_charged = False
        await self._paid.wait_paid()

    def write_eof(self, data: bytes | bytearray | memoryview = b"") -> None:
        """As :meth:`dtp.aio.DTPStreamWriter.write_eof`: with ``data``, those last bytes
        and the end in one record where the rate limits let them go at once (else they
        are held, as :meth:`write` holds them, and the end follows them)."""
        view = readable(data)  # (as write)
        if view:
            if self._closing is not None:
                raise LocalProtocolError("write on a closed or half-closed DTP stream")
            if self._releasing is None and self._paid.write_now(len(view), self._first) == len(
                view
            ):
                self._writer.write_eof(view)
                self._charged(len(view))
                return
            self.write(view)
        if self._releasing is not None:
            self._eof_after = True
        else:
            self._writer.write_eof()

    def close(self) -> None:
        """Close this stream; on the first stream, end the connection once what is held
        went out and the final receipt was asked for (docs/escrow.md 6.1), as
        :meth:`dtp.hostid.paid._blocking.PaidSocket.close`."""
        if self._closing is not None:
            return
        if _first_stream(self._writer) and not self._writer.is_closing():
            task = asyncio.ensure_future(self._close_paid())
            self._closing = task
            self._paid.closing = task
        elif self._releasing is not None:
            self._close_after = True
        else:
            self._writer.close()

    async def _close_paid(self) -> None:
        """The first stream's close: what is held goes out, the final receipt is asked
        for, then the connection closes."""
        paid = self._paid
        await self._wait_released()
        if self._limits_charged:
            # what went uncharged by a wait is waited for before the end (the client's
            # limit holds for a callback that wrote and closed without draining)
            await paid.wait_limits()
            self._limits_charged = False
        if paid.proto.session.terminated is None:
            await paid.request_final_receipt()
        # (not when cancelled: that is the loop ending, and the end phase aborts the
        # connection -- a graceful close started now could not finish)
        self._writer.close()

    def is_closing(self) -> bool:
        return self._closing is not None or self._close_after or self._writer.is_closing()

    def get_write_buffer_size(self) -> int:
        return self._writer.get_write_buffer_size() + len(self._held) - self._held_from

    async def wait_closed(self) -> None:
        closing = self._closing
        if closing is not None:
            with contextlib.suppress(DTPError):  # (the wrapped writer's wait reports it)
                await asyncio.shield(closing)
        await self._wait_released()
        proto = self._paid.proto
        if _first_stream(self._writer) and proto.hold_carrier:
            # the carrier ends with the settlement, after this callback: wait for the
            # end of the session (and our close's part), or close() + wait_closed() would hang
            session = proto.session
            await proto.wait_for(lambda: session.terminated is not None)
            task = getattr(self._writer, "_close_task", None)
            if task is not None:
                with contextlib.suppress(DTPError):
                    await asyncio.shield(task)
            return
        await self._writer.wait_closed()

    def abort(self, reason: str = "aborted") -> None:
        if self._releasing is not None:
            self._releasing.cancel()
        self._writer.abort(reason)

    def reset(self, code: int = 0) -> None:
        """:meth:`dtp.aio.DTPStreamWriter.reset`, what is held dropped with what is unsent,
        as :meth:`dtp.hostid.paid._blocking.PaidSocket.reset`."""
        if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code < 1 << 62:
            raise ValueError(f"a reset code is an int from 0 to 2**62 - 1, not {code!r}")
        # the release task's end must not close the stream before the reset does
        self._close_after = self._eof_after = False
        self._held = bytearray()
        self._held_from = 0
        if self._releasing is not None:
            self._releasing.cancel()
        self._writer.reset(code)

    def send_datagram(self, data: bytes | bytearray | memoryview) -> None:
        """Send a datagram when the gate's credit covers all of it. It never waits: one
        that would wait for payment is dropped and counted (the client asked for a
        receipt; after the pause timeout, :class:`~dtp.errors.PaymentRequired`), and so
        is one sent while the bytes/s limit is in debt, so that a sender that never
        drains keeps to the limit; what goes is charged at once, the next :meth:`drain`
        waiting for the debt. Once the connection ended it raises how, as the wrapped
        writer does."""
        self.send_datagrams((data,))

    def send_datagrams(self, datagrams: Iterable[bytes | bytearray | memoryview]) -> int:
        """:meth:`send_datagram` for many: the first ones the credit covers go (all or
        none on a TypeError or LocalProtocolError), the rest are dropped and counted
        (all of them while the bytes/s limit is in debt). Returns how many went."""
        session = self._paid.proto.session
        if session.terminated is not None:
            # as the wrapped writer: a sender of datagrams alone learns that the client
            # left (a silent drop would run its loop, and hold the settlement, for good)
            raise session.error or ConnectionClosed("the connection is closed")
        items = list(datagrams)
        sizes = datagram_sizes(items, self._writer.max_datagram_size)
        paid = self._paid
        take = paid.datagrams_now(sizes)  # (after pause_timeout: PaymentRequired)
        if not take:
            return 0
        sent = self._writer.send_datagrams(items[:take])
        # charged now, not at drain(): a sender that never drains keeps to its bytes/s
        # limit too
        if sent and paid.charge_sent(sum(map(datagram_charge, sizes[:sent]))):
            self._limits_charged = True
        return sent

    async def recv_datagram(self) -> bytes:
        """The connection's next datagram, once paid up (it is in the usage since it
        arrived: one that took it past what the gate serves waits for payment,
        :meth:`PaidConnection.received`), within the rate limits."""
        paid = self._paid
        while True:
            await paid.wait_paid()
            data = await self._writer.recv_datagram()
            charged = paid.charged_already(data)
            # (judged as taken, not at the look before: one that came meanwhile may
            # be past what the gate serves)
            if paid.received(data, charged):
                break
        charge = 0 if charged else datagram_charge(len(data))
        await self._throttled(charge, 0, lambda: paid.put_back_datagram(data))
        return data

    async def accept_stream(self) -> tuple[PaidReader, PaidWriter]:
        """Wait for the client to open a stream (one request)."""
        paid = self._paid
        await paid.wait_paid()
        reader, writer = await self._writer.accept_stream()
        stream_id = reader.stream_id
        charged = stream_id in paid.charged_streams
        paid.charged_streams.discard(stream_id)
        await self._throttled(0, 0 if charged else 1, lambda: paid.put_back_stream(stream_id))
        return PaidReader(reader, paid), PaidWriter(writer, paid)

    async def serve_streams(
        self, handler: Callable[[PaidReader, PaidWriter], Awaitable[object]]
    ) -> None:
        """As :meth:`dtp.aio.DTPStreamWriter.serve_streams`, each stream a paid pair that
        waits for payment and the request rate limit first, as an accepted one does; a
        handler's writer is closed when it returns, after what it holds went out."""
        paid = self._paid

        async def serve(reader: DTPStreamReader, writer: DTPStreamWriter) -> None:
            try:
                await paid.wait_paid()
            except PaymentRequired:
                return
            await paid.throttle(0, 1)
            paid_writer = PaidWriter(writer, paid)
            await handler(PaidReader(reader, paid), paid_writer)
            if not paid_writer.is_closing():
                paid_writer.close()
            await paid_writer._wait_released()

        await self._writer.serve_streams(serve)

    async def _throttled(self, nbytes: int, requests: int, put_back: Callable[[], None]) -> None:
        """Charge what was just taken to the rate limits and wait as they say; cancelled
        meanwhile, ``put_back`` returns it to be taken next, charged already
        (tests/transport/test_aio_put_backs.py)."""
        try:
            await self._paid.throttle(nbytes, requests)
        except asyncio.CancelledError:
            put_back()
            raise

    async def open_stream(self) -> tuple[PaidReader, PaidWriter]:
        reader, writer = await self._writer.open_stream()
        return PaidReader(reader, self._paid), PaidWriter(writer, self._paid)

    def __repr__(self) -> str:
        return f"<PaidWriter of {self._writer!r}>"

    def __getattr__(self, name: str) -> Any:
        if name in _WRITER_FORWARDED:
            return getattr(self._writer, name)
        raise not_forwarded(self, name)


#: What the paid reader and writer take from the wrapped ones as they are: none of it
#: moves stream bytes or datagrams (anything else, a method added later say, is refused
#: rather than forwarded past the gate)
_READER_FORWARDED = frozenset({"stream_id", "at_eof", "exception"})
_WRITER_FORWARDED = frozenset(
    {
        "stream_id",
        "peer_address",
        "peer_connection_id",
        "peer_port",
        "transport",
        "get_extra_info",
        "can_write_eof",
        "start_tls",  # (it only raises: TLS cannot be layered on a DTP stream)
        "datagrams_send_dropped",
        "datagrams_dropped",
        "max_datagram_size",
        "connection_id",
        "escrow_id",
    }
)
