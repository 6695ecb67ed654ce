"""UDP through DTP: a local UDP flow's datagrams carried as DTP DATAGRAM frames.

Two halves, both blocking (threads), on :mod:`dtp.socket` connections:

- :func:`relay_udp` — the exposing side. For one accepted DTP connection it forwards each
  DTP datagram to a UDP backend from a UDP socket of its own (so the backend's replies
  come back to it), and each reply back as a DTP datagram, until the connection ends or
  sits idle.
- :class:`UdpForwarder` — the client side. A local UDP socket; each distinct source
  address gets a DTP connection of its own from a ``connect`` function (direct, or by
  host ID), NAT-style, closed after ``idle_timeout``; replies go back to that source.

UDP semantics are kept: nothing is retransmitted and nothing queues without bound;
every drop is counted in :class:`UdpStats`. Metering per datagram and the control
stream (``U``, ``R``, ``F``, ``Z`` frames on stream 0) are docs/udp.md "Paying per
datagram": the client pays exactly for what the relay forwarded, and a frame either
side never sends ends the connection, for such a peer can no longer be paid or billed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from dtp.errors import DTPError, DTPTimeoutError
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
    UnreadDrops,
    abort_control,
    backend_socket,
    bind_udp,
    deliver,
    drain,
    drain_by_source,
    pass_replies,
    pass_ungated,
    wall_ms,
)
from dtp.hostid.udp._stats import UdpStats
from dtp.payments.receipts import Meter
from dtp.transport.carriers._tcp import wait_ready

if TYPE_CHECKING:
    from dtp.payments._ratelimit import ClientBuckets
    from dtp.transport.blocking._socket import DTPSocket


logger = logging.getLogger(__name__)


def _control_frames(sock: DTPSocket) -> Iterator[bytes]:
    """The control stream's frames until its end (:class:`ControlDecoder`). Raises
    :class:`BadControlFrame` for a length out of bounds."""
    decoder = ControlDecoder()
    while True:
        while (body := decoder.next_frame()) is not None:
            yield body
        try:
            data = sock.recv(CONTROL_READ)
        except DTPTimeoutError:
            if sock.connection_ended:
                raise
            # the socket's timeout (a client's is its connect timeout): a pause on the
            # control stream, not its end; receipts go on after it
            # (tests/udp/test_stalled_flows.py, a pause longer than the socket timeout)
            continue
        if not data:
            return
        decoder.receive(data)


def _under(lock: threading.RLock, count: Callable[[], None]) -> None:
    """``count`` under the blocking relay's engine lock (its billing's ``run_kept``)."""
    with lock:
        count()


def _send_each(udp: socket.socket, datagrams: list[bytes]) -> tuple[int, int]:
    """A billed batch to the backend a send each (as the asyncio relay sends a gated
    one): a datagram the kernel refuses -- ECONNREFUSED, an earlier datagram's ICMP
    error, which each send may meet and a run's sends after its first do not -- is then
    not billed. How many went, and their bytes."""
    sent = nbytes = 0
    for data in datagrams:
        try:
            udp.send(data)
        except OSError:
            # (the kernel discards a datagram whose send reported the error)
            continue
        sent += 1
        nbytes += len(data)
    return sent, nbytes


def relay_udp(
    sock: DTPSocket,
    backend: tuple[str, int],
    *,
    billing: UdpBilling | None = None,
    stats: UdpStats | None = None,
    idle_timeout: float = 60.0,
    report_every: int = 32,
    limits: ClientBuckets | None = None,
    finish: threading.Event | None = None,
) -> UdpStats:
    """Relay one DTP connection's datagrams to ``backend`` and its replies back, until
    the connection ends or sits idle ``idle_timeout`` seconds: a
    :meth:`dtp.socket.DTPServer.serve_forever` handler (``functools.partial``). With
    ``billing``, usage is reported, receipts read and unpaid datagrams dropped. With
    ``limits`` (the client's buckets), datagrams over the rate are dropped before they
    are billed (``dropped_rate_limited``: a datagram cannot wait). One the backend
    refuses is dropped unbilled (``dropped_send_failed``). Returns the counters
    (``stats`` if given). :class:`~dtp.errors.TunnelError` when ``backend`` cannot be a
    UDP destination (``sock`` closed too). :meth:`UdpBilling.kept` may come from any
    thread: it runs under this relay's engine lock.

    ``finish`` (a drain): once set, :meth:`~dtp.hostid.udp._engine.RelayEngine.finish`,
    as :func:`dtp.hostid.udp._asyncio.relay_udp_async` does."""
    stats = stats if stats is not None else UdpStats()
    try:
        # the engine checks its settings before the backend socket is made: a bad
        # argument leaves nothing open
        engine = RelayEngine(
            billing, idle_timeout=idle_timeout, report_every=report_every, limits=limits
        )
        udp = backend_socket(backend)
    except BaseException:  # (TunnelError, InvalidArgument, or no (host, port) at all)
        with contextlib.suppress(DTPError, OSError):
            sock.close()
        raise
    done = threading.Event()
    last = [time.monotonic()]
    # the engine's one lock, held for engine calls only, never for I/O
    # (tests/udp/test_relay_engine_lock.py); reentrant: on_receipt may call kept()
    lock = threading.RLock()
    if billing is not None:
        billing.run_kept = functools.partial(_under, lock)
    # the control stream's writes (frames the engine returned), apart from the engine lock
    control_lock = threading.Lock()
    # held while replies pass and while the drain starts: no reply goes after the
    # final report, which would leave it short of what was served (taken before
    # `lock`, never while holding it)
    passing = threading.Lock()

    limit = sock.max_datagram_size
    unread = UnreadDrops(sock, stats)
    gated = engine.gated

    def relay_replies() -> None:
        """The backend's replies to the client, until the relay ends (a thread)."""
        with contextlib.suppress(OSError, DTPError):
            while not done.is_set():
                ready, _ = wait_ready([udp], [], 0.2)
                if not ready:
                    continue
                with passing:
                    if engine.finishing:
                        stats.add(dropped_finishing=len(drain(udp)))
                        continue
                    if gated:
                        went, frame = pass_replies(
                            drain(udp), limit, sock.send_datagrams, stats, engine, lock
                        )
                    else:
                        went = pass_ungated(drain(udp), limit, sock.send_datagrams, stats, True)
                        frame = None
                    if not went:
                        continue
                last[0] = time.monotonic()
                if frame is not None:  # (replies alone may make a report due)
                    send_control(frame)

    def send_control(frame: bytes | None) -> None:
        """Write a control frame the engine returned (None: nothing to write)."""
        if frame is not None:
            with control_lock:
                sock.sendall(frame)

    def read_control() -> None:
        """The forwarder's control frames in, the engine's answers out, until the
        stream ends (a thread); then no receipt can come and the relay ends
        (docs/udp.md)."""
        try:
            for body in _control_frames(sock):
                with lock:
                    frame = engine.control_frame(body)
                send_control(frame)
        except BadControlFrame as exc:
            abort_control(sock, exc)
        except (DTPError, OSError):
            pass
        finally:
            with lock:
                engine.control_ended = True

    def relay_datagram(batch: list[bytes]) -> None:
        """The client's datagrams to the backend, one read's batch: an engine call before
        and after it under the engine lock, never around the sends."""
        last[0] = time.monotonic()
        if not gated:
            # nothing billed or limited (the engine would let every datagram go and
            # return no report): the batch in one call (sendmmsg), as the asyncio relay
            # sends an ungated run, waiting for room as a blocking send does
            deliver(udp, batch, stats)
            return
        with lock:
            admission = engine.admit(batch, last[0])
        sent, nbytes = _send_each(udp, admission.forward)
        with lock:
            frame = engine.delivered(len(admission.forward), admission.nbytes, sent, nbytes)
        stats.add(
            datagrams_in=sent,
            bytes_in=nbytes,
            dropped_unpaid=admission.unpaid,
            dropped_rate_limited=admission.rate_limited,
            dropped_send_failed=len(admission.forward) - sent,
        )
        send_control(frame)

    threads = [threading.Thread(target=relay_replies, name="dtp-udp-replies", daemon=True)]
    if billing is not None:
        threads.append(threading.Thread(target=read_control, name="dtp-udp-control", daemon=True))
    for thread in threads:
        thread.start()
    try:
        while True:
            now = time.monotonic()
            if finish is not None and not engine.finishing and finish.is_set():
                reliable = sock.reliable_carrier
                with passing, lock:
                    frame = engine.finish(now, reliable=reliable)
                send_control(frame)
            with lock:
                over = engine.done(now, last[0])
            if over:
                break  # (idle, drained, or no receipts any more: docs/udp.md)
            try:
                batch = sock.recv_datagrams(256, engine.wait)
            except TimeoutError:
                if sock.connection_ended:
                    break  # (its idle timeout)
                if billing is not None:
                    with lock:
                        frame = engine.paused(time.monotonic(), last[0])
                    send_control(frame)
                continue
            except DTPError:
                break  # the connection ended
            unread.count()
            if engine.finishing:
                # after the final report: nobody would pay for these
                stats.add(dropped_finishing=len(batch))
                continue
            relay_datagram(batch)
    except (DTPError, OSError) as exc:
        logger.info("UDP relay ended: %s", exc)
    finally:
        done.set()
        with lock:
            settled = engine.settled
        if not settled:
            # the control stream may still hold the final receipt: let it be read to
            # its end (the peer's close) before closing our side
            for thread in threads:
                thread.join(2)
        with contextlib.suppress(DTPError, OSError):
            sock.close()
        # a control thread still reading (the peer has not closed) ends with the close,
        # and the relay returns after it (test_a_relay_that_idles_out_leaves_no_control_thread)
        for thread in threads:
            thread.join(2)
        unread.count()  # (after the control thread's last read of the carrier)
        if engine.finishing:
            # the replies that came since the last read count as dropped, as the
            # client's datagrams do (docs/udp.md)
            with contextlib.suppress(OSError):
                stats.add(dropped_finishing=len(drain(udp)))
        udp.close()
    return stats


# -- the client side -----------------------------------------------------------------------


class _Flow(FlowAccount):
    """One source address's DTP connection, and what it owes."""

    def __init__(
        self, source: tuple[str, int], sock: DTPSocket, meter: Meter | None, stats: UdpStats
    ) -> None:
        super().__init__(meter)
        self.source = source
        self.sock = sock
        #: The connection's max_datagram_size (its config's: fixed for its life), asked
        #: once here rather than four calls deep at every send
        self.limit = sock.max_datagram_size
        # counted as replies are read, and once more after the flow's end has waited
        # for the relay's final report: nothing reads replies then
        self.unread = UnreadDrops(sock, stats)
        self.last = time.monotonic()
        self.lock = threading.Lock()  # counters, meter
        # the control stream's writes, apart: a send held up by a relay that stopped
        # reading stream 0 would otherwise hold `lock` too, and with it every datagram of
        # the forwarder (its loop waits for the lock of each flow) and close()
        self.wlock = threading.Lock()
        self.final = threading.Event()


class _Connecting:
    """A source whose DTP connection is being made; its datagrams wait here."""

    def __init__(self, source: tuple[str, int]) -> None:
        self.source = source
        self.pending: list[bytes] = []
        self.thread: threading.Thread | None = None


class UdpForwarder(FlowTable):
    """A local UDP endpoint whose flows go through DTP to a remote UDP service.

    ``connect()`` returns a new DTP connection to the relaying service (e.g. a
    ``functools.partial`` of :func:`dtp.socket.create_connection` with a ``dtp://``
    address). ``meter_for(sock)`` returns the :class:`~dtp.payments.receipts.Meter` of a new
    connection (None: unmetered), which signs the relay's usage reports and a final one
    when a flow ends (within ``final_timeout``); what the deposit cannot cover is dropped
    (``dropped_unpaid``). Runs in threads from construction until :meth:`close`.

    A new source's connection is made in a thread of its own, so an unreachable service
    holds up only that source: up to ``max_pending`` of its datagrams wait, more are
    dropped (``dropped_no_session``); after a failed connect the source waits
    ``retry_after`` seconds before it tries again, its datagrams dropped and counted.
    """

    def __init__(
        self,
        listen: tuple[str, int],
        connect: Callable[[], DTPSocket],
        *,
        meter_for: Callable[[DTPSocket], Meter | None] | None = None,
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
        self._udp = bind_udp(listen, blocking=True)
        self.address: tuple[str, int] = self._udp.getsockname()[:2]
        self._flows: dict[tuple[str, int], _Flow] = {}
        self._connecting: dict[tuple[str, int], _Connecting] = {}
        self._ending: set[threading.Thread] = set()  # idle sessions being ended
        # the reply and control threads of each flow, while they run: close() waits for
        # them (they end once its connection is closed: test_close_leaves_no_session_thread)
        self._flow_tasks: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        # set when a close() has finished: a close() called while another is at work
        # waits for it, as AsyncUdpForwarder.close() does, so that when any returns the
        # port is closed and the flows settled (test_a_second_close_waits_for_the_first)
        self._close_done = threading.Event()
        self._thread = threading.Thread(
            target=self._read_local, name="dtp-udp-forwarder", daemon=True
        )
        self._thread.start()

    @property
    def sessions(self) -> int:
        """Open sessions (source addresses with a DTP connection)."""
        with self._lock:
            return len(self._flows)

    def _read_local(self) -> None:
        """Every datagram waiting, grouped by source: one seal and write per flow (this
        thread, until :meth:`close`); and the sweep for idle flows every
        :attr:`sweep_every` seconds."""
        next_sweep = time.monotonic() + self.sweep_every
        while not self._closed.is_set():
            try:
                ready, _ = wait_ready([self._udp], [], 0.2)
                if ready:
                    for source, batch in drain_by_source(self._udp).items():
                        self._forward(source, batch)
            except OSError:
                if self._closed.is_set():
                    return
            except Exception:
                # this thread reads for every flow: it must outlive any one flow's bug
                logger.exception("UDP forwarder on %s: unexpected error", self.address)
            if time.monotonic() >= next_sweep:
                self._sweep()
                next_sweep = time.monotonic() + self.sweep_every

    def _forward(self, source: tuple[str, int], batch: list[bytes]) -> None:
        """Send a batch from ``source`` on its flow, or hold it for the flow's connect."""
        with self._lock:
            flow = self._flows.get(source)
            if flow is None:
                self._hold_pending(source, batch)
                return
        self._send(flow, batch)

    def _hold_pending(self, source: tuple[str, int], batch: list[bytes]) -> None:
        """Keep a batch from a source without a flow until its connection is made,
        starting the connect if none is in progress (called holding ``_lock``)."""
        connecting = self._connecting.get(source)
        if connecting is None:
            flows = len(self._flows) + len(self._connecting)
            if self._closed.is_set() or not self.may_open(source, flows, time.monotonic()):
                self.stats.add(dropped_no_session=len(batch))
                return
            connecting = _Connecting(source)
            self._connecting[source] = connecting
            connecting.thread = threading.Thread(
                target=self._open, args=(connecting,), name="dtp-udp-connect", daemon=True
            )
            connecting.thread.start()
        room = self.room(len(connecting.pending), len(batch))
        connecting.pending.extend(batch[:room])
        if len(batch) > room:
            self.stats.add(dropped_no_session=len(batch) - room)

    def _open(self, connecting: _Connecting) -> None:
        """Connect a new source (in a thread of its own), then send what it queued."""
        source = connecting.source
        sock: DTPSocket | None = None
        try:
            sock = self._connect()
            meter = self._meter_for(sock) if self._meter_for is not None else None
        except Exception as exc:
            if isinstance(exc, (DTPError, OSError)):
                logger.warning("UDP flow from %s: cannot reach the service: %s", source, exc)
            else:
                logger.exception("UDP flow from %s: connect() or meter_for() failed", source)
            if sock is not None:
                with contextlib.suppress(DTPError, OSError):
                    sock.close()
            with self._lock:
                del self._connecting[source]
                self.connect_failed(source, time.monotonic())
                dropped = len(connecting.pending)
            self.stats.add(dropped_no_session=dropped)
            return
        flow = _Flow(source, sock, meter, self.stats)
        # held until the queued datagrams are sent: later ones from this source wait
        # for them in _send, so the flow keeps its order
        with flow.lock:
            with self._lock:
                del self._connecting[source]
                closed = self._closed.is_set()
                if not closed:
                    self._flows[source] = flow
                pending, connecting.pending = connecting.pending, []
            if closed:
                # close() has taken its list of sessions: this one is ours to close
                with contextlib.suppress(DTPError, OSError):
                    sock.close()
                self.stats.add(dropped_no_session=len(pending))
                return
            self.stats.add(sessions_opened=1)
            self._start_flow_task(functools.partial(self._replies, flow), "dtp-udp-session")
            if meter is not None:
                self._start_flow_task(functools.partial(self._control, flow), "dtp-udp-control")
            sent = self._send_locked(flow, pending)
        if not sent:
            self._end(flow)

    def _start_flow_task(self, target: Callable[[], None], name: str) -> None:
        """Run ``target`` of a flow in a thread :meth:`close` waits for."""

        def run() -> None:
            try:
                target()
            finally:
                with self._lock:
                    self._flow_tasks.discard(threading.current_thread())

        thread = threading.Thread(target=run, name=name, daemon=True)
        with self._lock:
            self._flow_tasks.add(thread)
        try:
            thread.start()
        except BaseException:
            # (never started: close() must not join it, which raises RuntimeError)
            with self._lock:
                self._flow_tasks.discard(thread)
            raise

    def _send(self, flow: _Flow, batch: list[bytes]) -> None:
        with flow.lock:
            sent = self._send_locked(flow, batch)
        if not sent:
            self._end(flow)

    def _send_locked(self, flow: _Flow, batch: list[bytes]) -> bool:
        """Send a batch on a flow (holding ``flow.lock``); False when its
        connection has ended."""
        if flow.closed:
            # ending: its final report was asked for, and what went after it would
            # never be paid for
            self.stats.add(dropped_no_session=len(batch))
            return False
        flow.last = time.monotonic()
        out, oversized, unpaid = flow.admit(batch, flow.limit)
        try:
            sent = flow.sock.send_datagrams(out) if out else 0
        except DTPError as exc:
            logger.info("UDP flow from %s ended: %s", flow.source, exc)
            self.stats.add(**flow.count_send(out, None, oversized, unpaid))
            return False
        self.stats.add(**flow.count_send(out, sent, oversized, unpaid))
        return True

    def _replies(self, flow: _Flow) -> None:
        sock = flow.sock
        unread = flow.unread
        while not flow.closed:
            try:
                batch = sock.recv_datagrams(256, 0.5)
            except TimeoutError:
                if sock.connection_ended:
                    break  # (its idle timeout)
                continue
            except DTPError:
                break
            unread.count()
            flow.last = time.monotonic()
            with flow.lock:
                flow.received_bytes += sum(map(len, batch))
            # the run in one call (sendmmsg), waiting for room as a blocking send does
            deliver(self._udp, batch, self.stats, flow.source)
        unread.count()
        self._end(flow)

    def _control(self, flow: _Flow) -> None:
        """Usage reports in, receipts out, until the control stream ends; then the
        flow's end waits for no final report."""
        try:
            self._answer_reports(flow)
        except BadControlFrame as exc:
            # the flow is aborted (its reply reader ends it): serving on, the relay
            # billed reports nobody signed until its credit ran out
            abort_control(flow.sock, exc)
        except (DTPError, OSError):
            pass
        flow.final.set()

    def _answer_reports(self, flow: _Flow) -> None:
        """(:meth:`_control`'s loop) Raises :class:`~dtp.hostid.udp._engine.BadControlFrame`
        for a frame the relay never sends."""
        for body in _control_frames(flow.sock):
            now_ms = wall_ms()
            with flow.lock:
                answer = flow.answer(body, flow.source, now_ms)
            if answer.receipt is not None:
                # (this thread alone signs: its receipts go out in nonce order)
                with flow.wlock:
                    flow.sock.sendall(answer.receipt)
                with flow.lock:
                    counts = flow.signed(answer.paid_before)
                self.stats.add(**counts)
            if answer.final:
                flow.final.set()

    def _sweep(self) -> None:
        now = time.monotonic()
        with self._lock:
            idle = [s for s in self._flows.values() if self.idle(s.last, now)]
            self.sweep(now)
        for flow in idle:
            # ending waits for the relay's final report (up to final_timeout) and for
            # the close: not in this thread, which forwards every other flow meanwhile
            self._end_later(flow)

    def _end_later(self, flow: _Flow) -> None:
        """End ``flow`` in a thread of its own, which :meth:`close` waits for."""

        def end() -> None:
            try:
                self._end(flow)
            finally:
                self._forget_ending(threading.current_thread())

        thread = threading.Thread(target=end, name="dtp-udp-end", daemon=True)
        with self._lock:
            self._ending.add(thread)
        thread.start()

    def _forget_ending(self, thread: threading.Thread) -> None:
        """``thread`` has ended its flow: :meth:`close` no longer waits for it."""
        with self._lock:
            self._ending.discard(thread)

    def _end(self, flow: _Flow) -> None:
        self._end_all([flow])

    def _end_all(self, flows: list[_Flow]) -> None:
        """End these sessions together: all wait for their final reports at once, up to
        ``final_timeout`` in all, not per flow (tests/udp/test_relay_and_forwarder_ends.py)."""
        with self._lock:
            mine = [s for s in flows if self._flows.get(s.source) is s]
            for flow in mine:
                del self._flows[flow.source]
        asked: list[_Flow] = []
        for flow in mine:
            with flow.lock:  # (a batch being sent goes out before the final report)
                final = flow.final_request()
            if final is not None:
                # the relay's final count, signed, before the connection goes
                with contextlib.suppress(DTPError, OSError):
                    with flow.wlock:
                        flow.sock.sendall(final)
                    asked.append(flow)
        deadline = time.monotonic() + self.final_timeout
        for flow in asked:
            # at most what a thread can wait for: final_timeout may be infinite
            # (check_seconds) and Event.wait raises OverflowError past TIMEOUT_MAX
            # (test_a_blocking_forwarder_with_an_endless_final_timeout_closes)
            left = min(max(0.0, deadline - time.monotonic()), threading.TIMEOUT_MAX)
            if not flow.final.wait(left):
                logger.info("UDP flow from %s: no final report from the relay", flow.source)
        for flow in mine:
            with contextlib.suppress(DTPError, OSError):
                flow.sock.close()
            flow.unread.count()  # (the replies dropped while the final report was awaited)
            self.stats.add(sessions_closed=1)

    def close(self) -> None:
        """Stop forwarding; each flow settles its final receipt and closes. Connects
        in progress are waited for (up to 10 s) and their connections closed; so are the
        idle sessions still ending, and the threads of every flow. A close() called while
        another is at work waits for it."""
        if self._closed.is_set():
            if not self._own_thread():
                self._close_done.wait()
            return
        self._closed.set()
        try:
            self._close()
        finally:
            self._close_done.set()

    def _own_thread(self) -> bool:
        """Whether this is one of the forwarder's threads (a close() from one, e.g. in
        ``connect()``, must not wait for the close() that waits for it)."""
        current = threading.current_thread()
        with self._lock:
            connects = {c.thread for c in self._connecting.values()}
            return current is self._thread or current in (
                self._flow_tasks | self._ending | connects
            )

    def _close(self) -> None:
        # none of the joins below is of this thread: a close() from connect() (or from
        # any thread of ours) would raise RuntimeError on joining itself, past the
        # sessions and the local port, which would be left open
        current = threading.current_thread()
        if self._thread is not current:
            self._thread.join(5)
        with self._lock:
            # no flow is added after this: a connect that returns sees _closed
            flows = list(self._flows.values())
            connects = [
                c.thread
                for c in self._connecting.values()
                if c.thread is not None and c.thread is not current
            ]
            # the reader has stopped: no flow starts ending after this
            ending = list(self._ending - {current})
        deadline = time.monotonic() + CLOSE_WAIT
        for thread in connects:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._end_all(flows)
        for thread in ending:
            thread.join()  # (bounded: final_timeout and the connection's close)
        self._udp.close()
        with self._lock:
            workers = list(self._flow_tasks - {current})
        # (each ends once its connection is closed: a read fails at once)
        deadline = time.monotonic() + CLOSE_WAIT
        for thread in workers:
            thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> UdpForwarder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
