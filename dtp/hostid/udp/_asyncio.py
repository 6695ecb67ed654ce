"""UDP through DTP on asyncio: :func:`relay_udp_async` and :class:`AsyncUdpForwarder`,
the asyncio twins of :func:`dtp.hostid.udp._blocking.relay_udp` and
:class:`dtp.hostid.udp._blocking.UdpForwarder`, with the same wire (DATAGRAM frames;
usage reports and receipts on stream 0) and the same per-datagram billing (docs/udp.md).
The services daemon uses them for UDP services.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from dtp.errors import DTPError, TunnelError
from dtp.hostid.udp._engine import (
    CLOSE_WAIT,
    CONTROL_READ,
    BadControlFrame,
    ControlDecoder,
    FlowAccount,
    RelayEngine,
    UdpBilling,
)
from dtp.hostid.udp._flow_table import FlowTable
from dtp.hostid.udp._sockets import (
    abort_control,
    backend_socket,
    bind_udp,
    check_backend,
    deliver,
    drain,
    drain_by_source,
    pass_replies,
    pass_ungated,
    wall_ms,
)
from dtp.hostid.udp._stats import UdpStats
from dtp.payments._ratelimit import ClientBuckets
from dtp.payments.receipts import Meter
from dtp.transport.asyncio._streams import DTPStreamReader, DTPStreamWriter

__all__ = ["AsyncUdpForwarder", "relay_udp_async"]

logger = logging.getLogger(__name__)

_BATCH = 256


async def _read_control(reader: DTPStreamReader, decoder: ControlDecoder) -> bytes | None:
    """The next control frame's body (:class:`ControlDecoder`), or None at the end of
    the stream (or its error). Raises :class:`dtp.hostid.udp._engine.BadControlFrame`
    for a length out of bounds."""
    while (body := decoder.next_frame()) is None:
        try:
            data = await reader.read(CONTROL_READ)
        except DTPError:
            return None
        if not data:
            return None
        decoder.receive(data)
    return body


async def _open_backend(backend: tuple[str, int]) -> socket.socket:
    """:func:`dtp.hostid.udp._sockets.backend_socket`, its name looked up off the event loop
    (a blocking lookup would hold up every flow and tunnel of the daemon for as long
    as DNS takes). Raises :class:`~dtp.errors.TunnelError` as it does."""
    check_backend(backend)
    # the family the blocking version used (a name resolves to IPv4 there), so that a
    # backend "localhost:53" listening on 127.0.0.1 only is still reached
    family = socket.AF_INET6 if ":" in backend[0] else socket.AF_INET
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            backend[0], backend[1], family=family, type=socket.SOCK_DGRAM
        )
    except (OSError, ValueError) as exc:  # (ValueError: UnicodeError of a bad name)
        raise TunnelError(f"UDP backend {backend} cannot be used: {exc}") from exc
    if not infos:
        raise TunnelError(f"UDP backend {backend} cannot be used: no address")
    found, _, _, _, address = infos[0]
    return backend_socket(backend, blocking=False, resolved=(found, address))


async def relay_udp_async(
    reader: DTPStreamReader,
    writer: DTPStreamWriter,
    backend: tuple[str, int],
    *,
    billing: UdpBilling | None = None,
    stats: UdpStats | None = None,
    idle_timeout: float = 60.0,
    report_every: int = 32,
    limits: ClientBuckets | None = None,
    finish: asyncio.Event | None = None,
) -> UdpStats:
    """Relay one DTP connection's datagrams to ``backend`` and back, as
    :func:`dtp.hostid.udp._blocking.relay_udp` does (the connection closed at the end,
    or a client sending on would never be told); a host name is looked up without
    blocking the loop. ``finish`` (the daemon's drain):
    :meth:`~dtp.hostid.udp._engine.RelayEngine.finish`; the caller bounds that wait by
    closing the connection."""
    stats = stats if stats is not None else UdpStats()
    loop = asyncio.get_running_loop()
    limit = writer.max_datagram_size
    try:
        # the engine checks its settings before the backend socket is made: a bad
        # argument leaves nothing open but for the connection, closed below
        engine = RelayEngine(
            billing, idle_timeout=idle_timeout, report_every=report_every, limits=limits
        )
        udp = await _open_backend(backend)
    except BaseException:  # (TunnelError, or cancelled while looking the name up)
        writer.close()
        raise
    last = [loop.time()]  # (after the lookup: it may have taken a while)
    unpaid = False  # the control stream failed: what arrives is dropped (drop_unpaid)

    def relay_replies() -> None:
        # every reply waiting, sealed and written to DTP together
        try:
            if engine.gated:
                went, frame = pass_replies(drain(udp), limit, writer.send_datagrams, stats, engine)
            else:  # (pass_replies' own first step, a call less per run)
                went = pass_ungated(drain(udp), limit, writer.send_datagrams, stats, False)
                frame = None
        except DTPError:
            return
        if not went:
            return
        last[0] = loop.time()
        if frame is not None:  # (replies alone may make a report due)
            send_control(frame)

    loop.add_reader(udp.fileno(), relay_replies)

    stop = loop.create_future()  # done when the control stream ended: the relay ends

    def end_control() -> None:
        engine.control_ended = True
        if not stop.done():
            stop.set_result(None)

    def send_control(frame: bytes | None) -> None:
        if frame is None or stop.done():
            return
        try:
            writer.write(frame)
        except DTPError as exc:
            # the client reset the control stream: the relay ends, not raised (in the
            # datagram sink an error aborts the carrier without a CLOSE:
            # test_a_relay_whose_client_resets_the_control_stream_ends_cleanly)
            logger.info("UDP relay ended: %s", exc)
            end_control()
            nonlocal unpaid
            unpaid = True  # (the rest of a run being relayed, too)
            writer.set_datagram_sink(drop_unpaid)  # (until the loop below ends)

    def drop_unpaid(data: bytes) -> None:
        stats.add(dropped_unpaid=1)  # no usage can be reported for it

    def drop_finishing(data: bytes) -> None:
        stats.add(dropped_finishing=1)  # after the final report: nobody would pay

    def drop_finishing_replies() -> None:
        # read and counted as dropped, as the client's datagrams are (docs/udp.md)
        stats.add(dropped_finishing=len(drain(udp)))

    async def read_control() -> None:
        decoder = ControlDecoder()
        try:
            while (body := await _read_control(reader, decoder)) is not None:
                send_control(engine.control_frame(body))
        except BadControlFrame as exc:
            abort_control(writer, exc)
        except DTPError:
            pass  # (the connection ended, or the client reset the stream)
        finally:
            # no receipt can come any more: the relay ends (docs/udp.md)
            end_control()

    gated = engine.gated

    def relay_datagram(data: bytes) -> None:
        # (gated) each datagram is a batch of one for the engine
        if unpaid:
            drop_unpaid(data)
            return
        nbytes = len(data)
        admission = engine.admit([data], time.monotonic())
        if not admission.forward:
            stats.add(dropped_rate_limited=admission.rate_limited, dropped_unpaid=admission.unpaid)
            return
        try:
            udp.send(data)
        except OSError:
            # a full socket buffer or an ICMP error drops the datagram, as UDP does;
            # the client pays only for what reached the backend
            stats.add(dropped_send_failed=1)
            engine.delivered(1, nbytes, 0, 0)
            return
        # one thread (the event loop) writes these counters: no lock per datagram
        stats.datagrams_in += 1
        stats.bytes_in += nbytes
        if (frame := engine.delivered(1, nbytes, 1, nbytes)) is not None:
            send_control(frame)

    def relay_run(run: list[bytes]) -> None:
        # pushed by the connection with each run of datagrams that arrived together: no
        # task wake-up per datagram. Ungated, it drops and bills nothing: the run goes to
        # the backend in one call (sendmmsg), no engine call per datagram at all
        last[0] = loop.time()
        if gated:
            for data in run:
                relay_datagram(data)
            return
        # (a full socket buffer or an ICMP error drops a datagram, as UDP does)
        deliver(udp, run, stats, shared=False)

    control_task = loop.create_task(read_control()) if billing is not None else None
    writer.set_datagram_run_sink(relay_run)
    asked = loop.create_task(finish.wait()) if finish is not None else None
    try:
        ended = writer.connection_closed()
        while not ended.done() and not writer.connection_ended:
            now = loop.time()
            if asked is not None and asked.done() and not engine.finishing:
                writer.set_datagram_sink(drop_finishing)
                loop.add_reader(udp.fileno(), drop_finishing_replies)  # (in place of relay_replies)
                send_control(engine.finish(now, reliable=writer.reliable_carrier))
            if engine.done(now, last[0]):
                break
            # wake for the connection's end, a pause in traffic or the finish, not per
            # datagram
            # (FIRST_COMPLETED: the first of them to end wakes the loop)
            waits = [ended, stop, *([asked] if asked is not None and not engine.finishing else [])]
            await asyncio.wait(waits, timeout=engine.wait, return_when=asyncio.FIRST_COMPLETED)
            send_control(engine.paused(loop.time(), last[0]))
    finally:
        if asked is not None:
            asked.cancel()
        writer.set_datagram_sink(None)
        loop.remove_reader(udp.fileno())
        if engine.finishing:
            drop_finishing_replies()  # (those come since the last read)
        udp.close()
        try:
            if control_task is not None:
                try:
                    if not engine.settled:
                        # the stream may still hold the final receipt: read it to the
                        # end first (asyncio.wait raises our own cancellation)
                        await asyncio.wait([control_task], timeout=2.0)
                finally:
                    control_task.cancel()
                await asyncio.wait([control_task])
                if not control_task.cancelled() and (exc := control_task.exception()):
                    # (a bug: the readers catch what the stream and the peer raise)
                    logger.error("UDP relay: its control reader failed", exc_info=exc)
        finally:
            # the relay has ended: left open, the connection would take the client's
            # datagrams for good, its forwarder never told to reconnect
            writer.close()
    return stats


class _Flow(FlowAccount):
    """One source address's DTP connection (asyncio)."""

    def __init__(self, source: tuple[str, int]) -> None:
        super().__init__()
        self.source = source
        self.reader: DTPStreamReader | None = None
        self.writer: DTPStreamWriter | None = None
        #: The writer's max_datagram_size, once asked (its config's: fixed for the
        #: connection's life); 0 until then
        self.limit = 0
        self.pending: list[bytes] = []  # datagrams that arrived while connecting
        self.last = time.monotonic()
        self.final = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []


class AsyncUdpForwarder(FlowTable):
    """A local UDP endpoint whose flows go through DTP (see
    :class:`dtp.hostid.udp._blocking.UdpForwarder`). Create with :meth:`start`.

    ``connect()`` is a coroutine function returning a new ``(reader, writer)`` to the
    relaying service (e.g. :func:`dtp.aio.open_connection` with a ``dtp://`` address);
    ``meter_for(writer)`` the connection's Meter (None: unmetered); ``max_pending`` and
    ``retry_after`` as the blocking forwarder's.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[tuple[DTPStreamReader, DTPStreamWriter]]],
        *,
        meter_for: Callable[[DTPStreamWriter], Meter | None] | None = None,
        idle_timeout: float = 30.0,
        max_sessions: int = 256,
        final_timeout: float = 2.0,
        max_pending: int = 256,
        retry_after: float = 1.0,
    ) -> None:
        super().__init__(
            idle_timeout=idle_timeout,
            max_sessions=max_sessions,
            final_timeout=final_timeout,
            max_pending=max_pending,
            retry_after=retry_after,
        )
        self._connect = connect
        self._meter_for = meter_for
        self.stats = UdpStats()
        self._flows: dict[tuple[str, int], _Flow] = {}
        self._sock: socket.socket | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._ending: set[asyncio.Task[None]] = set()  # idle flows the sweeper ends
        # every flow's tasks (connect, replies, control) until they are done: close()
        # waits for those it cancels to unwind, a connect closing what it made among
        # them (test_close_waits_for_a_connect_it_cancels_to_unwind)
        self._flow_tasks: set[asyncio.Task[None]] = set()
        self._closing: asyncio.Future[None] | None = None  # done when a close() ends
        self._closer: asyncio.Task[Any] | None = None  # the task of the close() at work
        self.address: tuple[str, int] = ("", 0)

    @classmethod
    async def start(
        cls,
        listen: tuple[str, int],
        connect: Callable[[], Awaitable[tuple[DTPStreamReader, DTPStreamWriter]]],
        **kw: Any,
    ) -> AsyncUdpForwarder:
        """Bind ``listen`` and start forwarding."""
        loop = asyncio.get_running_loop()
        forwarder = cls(connect, **kw)
        sock = bind_udp(listen, blocking=False)
        forwarder._sock = sock
        forwarder.address = sock.getsockname()[:2]
        loop.add_reader(sock.fileno(), forwarder._read_local)
        forwarder._sweeper = loop.create_task(forwarder._sweep())
        return forwarder

    @property
    def sessions(self) -> int:
        """Open flows."""
        return len(self._flows)

    # -- datagrams from local clients ---------------------------------------------------

    def _read_local(self) -> None:
        """Every datagram waiting, grouped by source: one seal and write per flow."""
        assert self._sock is not None
        flows = self._flows
        for source, batch in drain_by_source(self._sock, _BATCH).items():
            flow = flows.get(source)
            if flow is not None and flow.writer is not None:
                # (_forward's usual case, inline: a flow whose connection is made)
                flow.last = time.monotonic()
                self._send(flow, batch)
            else:
                self._forward(source, batch)

    def _forward(self, source: tuple[str, int], batch: list[bytes]) -> None:
        """Send a batch from ``source`` on its flow, or hold it for the flow's connect
        (starting the connect if none is in progress)."""
        flow = self._flows.get(source)
        if flow is None:
            if not self.may_open(source, len(self._flows), time.monotonic()):
                self.stats.add(dropped_no_session=len(batch))
                return
            flow = _Flow(source)
            self._flows[source] = flow
            self._start_flow_task(flow, self._open(flow))
        flow.last = time.monotonic()
        if flow.writer is None:
            self._hold_pending(flow, batch)
            return
        self._send(flow, batch)

    def _hold_pending(self, flow: _Flow, batch: list[bytes]) -> None:
        """Keep a batch for a flow still connecting, up to ``max_pending``."""
        room = self.room(len(flow.pending), len(batch))
        flow.pending.extend(batch[:room])
        if len(batch) > room:
            self.stats.add(dropped_no_session=len(batch) - room)

    async def _open(self, flow: _Flow) -> None:
        """Connect a new source (in a task of its own), then send what it queued."""
        writer: DTPStreamWriter | None = None
        try:
            reader, writer = await self._connect()
            meter = self._meter_for(writer) if self._meter_for is not None else None
        except Exception as exc:
            # whatever the exception, the flow must go: left "connecting", its source
            # would be blackholed for good
            if isinstance(exc, (DTPError, OSError)):
                logger.warning("UDP flow from %s: cannot reach the service: %s", flow.source, exc)
            else:
                logger.exception("UDP flow from %s: connect() or meter_for() failed", flow.source)
            self.connect_failed(flow.source, time.monotonic())
            flow.closed = True
            if self._flows.get(flow.source) is flow:
                del self._flows[flow.source]
            self._drop_pending(flow)
            if writer is not None:
                with contextlib.suppress(DTPError, OSError, TimeoutError):
                    writer.close()
                    await asyncio.wait_for(writer.wait_closed(), 5)
            return
        if flow.closed:
            # ended while connecting but the connect's result came in anyway
            with contextlib.suppress(DTPError, OSError, TimeoutError):
                writer.close()
                await asyncio.wait_for(writer.wait_closed(), 5)
            return
        flow.reader, flow.writer = reader, writer
        flow.meter = meter
        self.stats.add(sessions_opened=1)
        self._start_flow_task(flow, self._replies(flow))
        if flow.meter is not None:
            self._start_flow_task(flow, self._control(flow))
        pending, flow.pending = flow.pending, []
        self._send(flow, pending)

    def _start_flow_task(self, flow: _Flow, work: Coroutine[Any, Any, None]) -> None:
        """Run one of ``flow``'s tasks, which its end cancels and close() waits for."""
        task = asyncio.get_running_loop().create_task(work)
        flow.tasks.append(task)
        self._flow_tasks.add(task)
        task.add_done_callback(self._flow_tasks.discard)

    def _send(self, flow: _Flow, batch: list[bytes]) -> None:
        writer = flow.writer
        assert writer is not None
        limit = flow.limit or writer.max_datagram_size  # (asked once: four calls deep)
        flow.limit = limit
        out, oversized, unpaid = flow.admit(batch, limit)
        try:
            sent = writer.send_datagrams(out) if out else 0
        except DTPError as exc:
            logger.info("UDP flow from %s ended: %s", flow.source, exc)
            self.stats.add(**flow.count_send(out, None, oversized, unpaid))
            self._end_later(flow)
            return
        if sent == len(batch):
            # the usual run, all of it gone: the fields added in place (one thread, the
            # event loop, writes them), no counts' dict and no lock
            stats = self.stats
            stats.datagrams_out += sent
            stats.bytes_out += sum(map(len, out))
            return
        self.stats.add(**flow.count_send(out, sent, oversized, unpaid))

    async def _replies(self, flow: _Flow) -> None:
        """Replies are pushed by the connection straight to the flow's source; this
        task only waits for the connection to end."""
        writer = flow.writer
        assert writer is not None
        stats = self.stats

        def on_replies(run: list[bytes]) -> None:
            # each run that arrived together goes to the source in one call (sendmmsg)
            flow.last = time.monotonic()
            flow.received_bytes += sum(map(len, run))
            if self._sock is None:
                stats.add(dropped_send_failed=len(run))
                return
            # (a full buffer, or the local client's address is gone: dropped; one
            # thread, the event loop, writes the counters: no lock)
            deliver(self._sock, run, stats, flow.source, shared=False)

        writer.set_datagram_run_sink(on_replies)
        try:
            # shielded: this task is cancelled when the flow ends, which must not cancel
            # the connection's own closed future (its wait_closed() would raise
            # CancelledError)
            await writer.connection_closed()
        finally:
            writer.set_datagram_sink(None)
        if not flow.closed:
            await self._end(flow)

    async def _control(self, flow: _Flow) -> None:
        """Usage reports in, receipts out, until the control stream ends; then the
        flow's end waits for no final report."""
        assert flow.reader is not None
        try:
            await self._answer_reports(flow)
        except DTPError as exc:
            if not isinstance(exc, BadControlFrame):
                # (signing failed otherwise than for the deposit: no receipt can go)
                logger.info("UDP flow from %s: control stream ended: %s", flow.source, exc)
            elif flow.writer is not None:
                # the flow ends with its connection (_replies): serving on, the relay
                # billed reports nobody signed until its credit ran out
                abort_control(flow.writer, exc)
        flow.final.set()

    async def _answer_reports(self, flow: _Flow) -> None:
        """(:meth:`_control`'s loop) Raises :class:`~dtp.hostid.udp._engine.BadControlFrame`
        for a frame the relay never sends."""
        assert flow.reader is not None
        decoder = ControlDecoder()
        while (body := await _read_control(flow.reader, decoder)) is not None:
            answer = flow.answer(body, flow.source, wall_ms())
            if answer.receipt is not None and flow.writer is not None:
                try:
                    flow.writer.write(answer.receipt)
                except DTPError as exc:
                    # the relay reset the stream: no receipt can go, and the loop
                    # ends so that the flow's end waits for no final report
                    # (tests/udp/test_stalled_flows.py)
                    logger.info("UDP flow from %s: control stream ended: %s", flow.source, exc)
                    break
                self.stats.add(**flow.signed(answer.paid_before))
            if answer.final:
                flow.final.set()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_every)
            now = time.monotonic()
            self.sweep(now)
            idle = [
                flow
                for flow in self._flows.values()
                if flow.writer is not None and self.idle(flow.last, now)
            ]
            # each in a task of its own, so no other flow nor the next sweep waits for
            # its final report (test_async_idle_flows_of_a_quiet_relay_end_together)
            for flow in idle:
                self._end_later(flow)

    def _end_later(self, flow: _Flow) -> None:
        """End ``flow`` in a task of its own, which close() waits for (held here: the
        loop holds its tasks only weakly)."""
        task = asyncio.get_running_loop().create_task(self._end(flow))
        self._ending.add(task)
        task.add_done_callback(self._forget_ending)

    def _forget_ending(self, task: asyncio.Task[None]) -> None:
        """``task`` has ended its flow: :meth:`close` no longer waits for it (a failure
        is logged)."""
        self._ending.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error(
                "UDP forwarder on %s: ending an idle flow failed", self.address, exc_info=exc
            )

    async def _end(self, flow: _Flow) -> None:
        if flow.closed:
            return
        flow.closed = True
        if self._flows.get(flow.source) is flow:
            del self._flows[flow.source]
        self._drop_pending(flow)  # still connecting: what waited goes with it
        writer = flow.writer
        try:
            if writer is not None:
                if (final := flow.final_request()) is not None:
                    with contextlib.suppress(DTPError, OSError):
                        writer.write(final)
                        await asyncio.wait_for(flow.final.wait(), self.final_timeout)
                with contextlib.suppress(DTPError, OSError):
                    writer.close()
                    await asyncio.wait_for(writer.wait_closed(), 5)
        finally:
            # also when cancelled midway (a close() or the sweeper cancelled while the
            # final receipt was awaited): the flow is gone from the table already, so
            # its connection must close now or it would stay open for good
            if writer is not None:
                writer.close()  # (a no-op once closing)
                self.stats.add(sessions_closed=1)
            current = asyncio.current_task()
            for task in flow.tasks:
                # (nor a close()'s, from connect(): it ends the flows in gather()'s
                # tasks, and cancelling it would cut the others' ends and connects short)
                if task is not current and task is not self._closer:
                    task.cancel()

    def _drop_pending(self, flow: _Flow) -> None:
        self.stats.add(dropped_no_session=len(flow.pending))
        flow.pending = []

    async def close(self) -> None:
        """Stop forwarding; each flow settles its final receipt and closes. Cancelled,
        the local socket is closed all the same; a close() while another is at work
        waits for it, so when any returns the flows are settled and the port closed."""
        while self._closing is not None and not self._closing.done():
            # (shielded: our cancellation must not cancel the other close's wait)
            await asyncio.shield(self._closing)
        closing = self._closing = asyncio.get_running_loop().create_future()
        try:
            await self._close()
        finally:
            closing.set_result(None)

    async def _close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            # (asyncio.wait: this task's own cancellation is not swallowed with the
            # sweeper's)
            await asyncio.wait([self._sweeper])
        sock, self._sock = self._sock, None
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
        # (a close() from connect() runs in a flow's task, which no flow's end cancels)
        current = self._closer = asyncio.current_task()
        try:
            # together, as the sweeper ends idle flows: each waits up to final_timeout
            # for its relay's final report, so a close() takes final_timeout in all,
            # not per flow (test_close_ends_the_flows_together)
            await asyncio.gather(*(self._end(flow) for flow in list(self._flows.values())))
            if self._ending:
                # idle flows still settling: close() returns after their ends, which
                # are bounded (final_timeout, then the connection's close)
                await asyncio.wait(list(self._ending))
            # the flows' tasks still at work: those of ended flows, cancelled and
            # unwinding (a connect closing what it made), or a failed connect's closing
            # its connection, or a flow ending on its own (its connection ended)
            left = [task for task in self._flow_tasks if task is not current]
            for task in left:
                if not task.cancelling():  # (a second cancel would cut its unwinding)
                    task.cancel()
            if left:
                # (bounded as the blocking close's wait for connects: a connect that
                # ignores its cancellation does not hold the close for good)
                await asyncio.wait(left, timeout=CLOSE_WAIT)
        finally:
            self._closer = None
            # nothing uses it once taken (replies find no socket and are dropped), and
            # a close() cancelled midway closes it too
            # (test_a_cancelled_close_still_closes_the_local_socket)
            if sock is not None:
                sock.close()
