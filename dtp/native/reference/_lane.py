"""The established-stream fast path: the twin of ``dtp_rx_take`` and
``dtp_rx_take_counts`` (aead.c) and of :class:`dtp.native.core.NativeLane`.

A connection over a reliable carrier spends most of its life moving one stream's bytes
in order. The lane seals them (``dtp_stream_seal``) and, on the way in, takes the run of
records that each hold exactly one nonempty STREAM frame of the stream being read, at
its next offset and within both flow-control limits, copying their data straight into
the reader's buffer. Anything else -- another stream, a control frame, a FIN, a
malformed, replayed or forged record, a record past a limit -- stops the run untouched
(its plaintext wiped, the replay window not advanced) for the connection's general path
to open and judge.
"""

from __future__ import annotations

import os
import select
import time
from typing import Any

from cryptography.exceptions import InvalidTag

from dtp.errors import ErrorCode, LocalProtocolError
from dtp.native.reference._aead import (
    COUNTER_RESERVED,
    Aead,
    next_data_record,
    nonce,
)
from dtp.native.reference._limits import (
    AEAD_TAG_LEN,
    LANE_OWN_CAP,
    MAX_RECORD,
    RECORD_HEADER_LEN,
    lane_max_seal,
)
from dtp.native.reference._varint import varint_decode
from dtp.native.types import (
    DUE,
    EOF,
    FRAME_MAX_DATA,
    FRAME_MAX_STREAM_DATA,
    FRAME_STREAM,
    FULL,
    NEED_MORE,
    OK,
    STOP,
    WAIT,
    WAKE,
    MadeOnUse,
    TakeResult,
)

OWN_CAP = LANE_OWN_CAP
CREDIT_RECORD_MAX = 64  # the plaintext of a record _credit_record may take


def _stream_data(
    plain: bytes, stream_id: int, offset: int, stream_limit: int, received: int, limit: int
) -> int | None:
    """Where the data starts when ``plain`` is exactly one nonempty STREAM frame of
    ``stream_id`` at ``offset`` within both limits; None otherwise."""
    if len(plain) < 4 or plain[0] != FRAME_STREAM:
        return None
    pos = 1
    values = []
    for _ in range(3):
        got = varint_decode(plain, pos)
        if got is None:
            return None
        value, pos = got
        values.append(value)
    sid, off, n = values
    if sid != stream_id or off != offset or n == 0 or n != len(plain) - pos:
        return None
    if offset > stream_limit or n > stream_limit - offset:
        return None
    if received > limit or n > limit - received:
        return None
    return pos


class Rx:
    """The receive side of a lent stream (``dtp_rx``)."""

    __slots__ = (
        "conn_limit",
        "conn_received",
        "consumed",
        "offset",
        "records",
        "spill_len",
        "spill_off",
        "stream_id",
        "stream_limit",
        "taken",
    )

    def __init__(self) -> None:
        self.stream_id = self.offset = self.stream_limit = 0
        self.conn_received = self.conn_limit = 0
        self.consumed = self.records = self.taken = self.spill_off = self.spill_len = 0


class Flow:
    """A lent stream's state (``dtp_flow``): the same fields, the same meaning."""

    __slots__ = (
        "can_recv",
        "can_send",
        "conn_send_limit",
        "conn_sent",
        "credit_conn",
        "credit_offset",
        "last_received",
        "last_sent",
        "records_received",
        "records_sent",
        "rx",
        "send_counter",
        "send_limit",
        "send_offset",
        "stream_id",
        "take_credit",
        "taken",
        "wire_received",
        "wire_sent",
        "written",
    )

    def __init__(self) -> None:
        self.stream_id = self.can_send = self.can_recv = 0
        self.send_counter = self.send_offset = self.send_limit = 0
        self.conn_sent = self.conn_send_limit = self.records_sent = self.wire_sent = 0
        self.rx = Rx()
        self.credit_offset = self.credit_conn = 0
        self.records_received = self.wire_received = 0
        self.last_sent = self.last_received = 0.0
        self.taken = self.written = self.take_credit = 0


class Io:
    """The carrier I/O's state (``dtp_lane``): the bytes kept pending, and what the last
    recv / send did."""

    __slots__ = ("end", "err", "got", "pending", "sent", "status")

    def __init__(self) -> None:
        self.pending = self.end = self.got = self.sent = self.err = 0
        self.status = OK


class Lane:
    """The fast path of an established stream (pure Python); same methods and results
    as :class:`dtp.native.core.NativeLane`."""

    def __init__(
        self, send: Aead, recv: Aead, seal_cap: int = 1 << 18, recv_cap: int = 1 << 18
    ) -> None:
        self.max_seal = lane_max_seal(seal_cap, recv_cap)
        self._recv_cap = recv_cap  # (rview and own: made on first use, _ready_io)
        self.own_cap = OWN_CAP
        self._send = send
        self._recv = recv
        self.flow = Flow()
        self.io = Io()
        self._spill: bytes = b""

    #: Where the adapter reads the carrier for :meth:`flow_take`.
    rview = MadeOnUse()
    #: A buffer of the lane's own for :meth:`recv` to read into.
    own = MadeOnUse()

    def _ready_io(self) -> None:
        """Make ``rview`` and ``own`` (as the C core's lane does: an idle connection of
        the asyncio adapter should not hold 320 KiB of zeroed buffers)."""
        if "rview" not in self.__dict__:
            self.rview = memoryview(bytearray(self._recv_cap))
            self.own = memoryview(bytearray(OWN_CAP))

    def seal(
        self,
        counter: int,
        stream_id: int,
        offset: int,
        data: bytes | bytearray | memoryview,
        head: bytes | bytearray | memoryview = b"",
    ) -> tuple[memoryview, int]:
        """As :meth:`dtp.native.core.NativeLane.seal`."""
        if memoryview(data).nbytes + len(head) > self.max_seal:
            raise LocalProtocolError("more data than one seal takes", ErrorCode.ARG)
        sealed, n = self._send.seal_stream(counter, stream_id, offset, data, head=head)
        return memoryview(sealed), n

    def release_output(self) -> None:
        """As :meth:`dtp.native.core.NativeLane.release_output`; each seal here returns bytes
        of its own already."""

    def take(
        self,
        buf: bytes | bytearray | memoryview,
        stream_id: int,
        offset: int,
        stream_limit: int,
        conn_received: int,
        conn_limit: int,
        dst: bytearray | memoryview,
        keep: bool = False,
        size: int | None = None,
    ) -> TakeResult:
        """As :meth:`dtp.native.core.NativeLane.take` (which decrypts in place in ``dst``
        past ``taken``; this twin leaves it as it was, and keeps nothing: ``keep``, and
        ``size``'s keeping ``buf``, are the native lane's)."""
        view = memoryview(buf).cast("B")
        if size is not None:
            if not 0 <= size <= len(view):
                view.release()  # (no export of the caller's buffer outlives the call)
                raise LocalProtocolError("size past the buffer's end", ErrorCode.ARG)
            view = view[:size]
        out = memoryview(dst).cast("B")
        if out.readonly:
            out.release()
            view.release()
            raise LocalProtocolError("the destination is read-only", ErrorCode.ARG)
        window = self._recv._window
        cipher = self._recv._cipher
        pos = taken = records = 0
        status = OK
        spill = b""
        while pos < len(view):
            if taken == len(out):
                status = FULL
                break
            header = next_data_record(view, pos)
            if isinstance(header, int):
                status = NEED_MORE if header == NEED_MORE else STOP
                break
            end = pos + RECORD_HEADER_LEN + header.body_len
            counter = header.counter
            if counter == COUNTER_RESERVED or not window.check(counter):
                status = STOP
                break
            try:
                plain = cipher.decrypt(
                    nonce(counter),
                    bytes(view[pos + RECORD_HEADER_LEN : end]),
                    bytes(view[pos : pos + RECORD_HEADER_LEN]),
                )
            except InvalidTag:
                status = STOP
                break
            start = _stream_data(plain, stream_id, offset, stream_limit, conn_received, conn_limit)
            if start is None:
                status = STOP
                break
            window.mark(counter)
            n = len(plain) - start
            copy = min(n, len(out) - taken)
            out[taken : taken + copy] = plain[start : start + copy]
            taken += copy
            offset += n
            conn_received += n
            records += 1
            pos = end
            if copy < n:
                spill = plain[start + copy :]
                status = FULL
                break
        return TakeResult(status, pos, records, taken, spill)

    def flow_seal(self, data: bytes | bytearray | memoryview, now: float) -> memoryview:
        """As :meth:`dtp.native.core.NativeLane.flow_seal`."""
        f = self.flow
        f.taken = f.written = 0
        # its bytes (a buffer of wider items has fewer items), released on every path
        with memoryview(data) as base, base.cast("B") as view:
            if not f.can_send or not len(view):
                return memoryview(b"")
            n = min(
                len(view),
                f.send_limit - f.send_offset,
                f.conn_send_limit - f.conn_sent,
                self.max_seal,
            )
            if n <= 0:
                return memoryview(b"")
            # (a copy: a slice of the view would outlive it in an error's traceback)
            chunk = view[:n].tobytes()
        sealed, records = self.seal(f.send_counter, f.stream_id, f.send_offset, chunk)
        f.send_counter += records
        f.send_offset += n
        f.conn_sent += n
        f.records_sent += records
        f.wire_sent += len(sealed)
        f.last_sent = now
        f.taken = n
        f.written = len(sealed)
        return sealed

    def flow_take(self, n: int, dst: bytearray | memoryview, now: float) -> int:
        """As :meth:`dtp.native.core.NativeLane.flow_take`."""
        if not 0 <= n <= len(self.rview):
            raise LocalProtocolError("more than the receive buffer holds", ErrorCode.ARG)
        if memoryview(dst).readonly:
            raise LocalProtocolError("the destination is read-only", ErrorCode.ARG)
        buf = self.rview[:n]
        f = self.flow
        rx = f.rx
        f.taken = 0
        if not f.can_recv:
            rx.consumed = rx.records = rx.taken = rx.spill_off = rx.spill_len = 0
            return STOP
        if rx.stream_id != f.stream_id:
            raise LocalProtocolError("flow and receive side name other streams", ErrorCode.ARG)
        out = memoryview(dst).cast("B")
        pos = taken = records = 0
        while True:
            result = self.take(
                buf[pos:],
                f.stream_id,
                rx.offset,
                rx.stream_limit,
                rx.conn_received,
                rx.conn_limit,
                out[taken:],
            )
            got = result.taken + len(result.spill)
            rx.offset += got
            rx.conn_received += got
            pos += result.consumed
            taken += result.taken
            records += result.records
            if result.status != STOP or not f.take_credit:
                break
            used = self._credit_record(buf[pos:])
            if not used:
                break
            pos += used
            records += 1
        rx.consumed = pos
        rx.records = records
        rx.taken = taken
        rx.spill_off = 0
        rx.spill_len = len(result.spill)
        self._spill = bytes(result.spill)
        f.taken = taken
        if records:
            f.records_received += records
            f.wire_received += pos
            f.last_received = now
        status = result.status
        if status == OK and (rx.offset > f.credit_offset or rx.conn_received > f.credit_conn):
            status = DUE
        return status

    def _credit_record(self, view: memoryview) -> int:
        """The record at the start of ``view``, when it is a small DATA record whose
        plaintext is only credit for the lent stream's sending (MAX_DATA, and
        MAX_STREAM_DATA of its stream): authenticated (the replay window advances), its
        limits raise the flow's send limits, and its length on the wire is returned. 0,
        taking nothing, for any other record: the general path opens and judges it."""
        header = next_data_record(view, 0)
        if isinstance(header, int):
            return 0
        plen = header.body_len - AEAD_TAG_LEN
        counter = header.counter
        window = self._recv._window
        if not 0 < plen <= CREDIT_RECORD_MAX or counter == COUNTER_RESERVED:
            return 0
        if not window.check(counter):
            return 0
        end = RECORD_HEADER_LEN + header.body_len
        try:
            plain = self._recv._cipher.decrypt(
                nonce(counter), bytes(view[RECORD_HEADER_LEN:end]), bytes(view[:RECORD_HEADER_LEN])
            )
        except InvalidTag:
            return 0
        f = self.flow
        stream_limit, conn_limit = f.send_limit, f.conn_send_limit
        pos = 0
        while pos < plen:
            ftype = plain[pos]
            got = varint_decode(plain, pos + 1)
            if got is None or ftype not in (FRAME_MAX_DATA, FRAME_MAX_STREAM_DATA):
                return 0
            a, pos = got
            if ftype == FRAME_MAX_DATA:
                conn_limit = max(conn_limit, a)
                continue
            got = varint_decode(plain, pos) if a == f.stream_id else None
            if got is None:
                return 0
            b, pos = got
            stream_limit = max(stream_limit, b)
        window.mark(counter)
        f.send_limit = stream_limit
        f.conn_send_limit = conn_limit
        return end

    def flow_spill(self) -> memoryview:
        """As :meth:`dtp.native.core.NativeLane.flow_spill`."""
        return memoryview(self._spill)

    @property
    def pending(self) -> int:
        """As :attr:`dtp.native.core.NativeLane.pending`."""
        return self.io.pending

    @pending.setter
    def pending(self, n: int) -> None:
        if not 0 <= n <= MAX_RECORD or n > len(self.rview):
            raise LocalProtocolError("not the start of one record", ErrorCode.ARG)
        self.io.pending = n

    @property
    def status(self) -> int:
        """The status of the last :meth:`recv` or :meth:`wait_read`."""
        return self.io.status

    def wait_read(
        self,
        lock: Any,
        fd: int,
        wake_fd: int,
        timeout_ms: int,
        dst: bytearray | memoryview | int,
        stream_id: int,
    ) -> int:
        """As :meth:`dtp.native.core.NativeLane.wait_read`."""
        if not isinstance(dst, int) and memoryview(dst).readonly:
            raise LocalProtocolError("the destination is read-only", ErrorCode.ARG)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if wake_fd >= 0:
            poller.register(wake_fd, select.POLLIN)
        lock.release()
        try:
            ready = poller.poll(None if timeout_ms < 0 else timeout_ms)
        finally:
            lock.acquire()
        if not ready:
            self.io.status = WAIT
            return 0
        if any(got == wake_fd for got, _ in ready) or (
            self.flow.stream_id != stream_id or not self.flow.can_recv
        ):
            self.io.status = WAKE
            return 0
        return self.recv(fd, dst)

    def recv(self, fd: int, dst: bytearray | memoryview | int) -> int:
        """As :meth:`dtp.native.core.NativeLane.recv`."""
        if isinstance(dst, int):
            if not 0 <= dst <= OWN_CAP:
                raise LocalProtocolError("more than the lane's own buffer", ErrorCode.ARG)
            dst = self.own[:dst]
        if memoryview(dst).readonly:
            raise LocalProtocolError("the destination is read-only", ErrorCode.ARG)
        io = self.io
        pending = io.pending
        io.got = io.err = 0
        io.end = pending
        try:
            data = os.read(fd, len(self.rview) - pending)
        except (BlockingIOError, InterruptedError):
            io.status = WAIT
            return 0
        except OSError as exc:
            io.err = exc.errno or 0
            raise
        if not data:
            io.status = EOF
            return 0
        self.rview[pending : pending + len(data)] = data
        io.got = len(data)
        return self.feed(len(data), dst)

    def feed(self, n: int, dst: bytearray | memoryview) -> int:
        """As :meth:`dtp.native.core.NativeLane.feed`."""
        io = self.io
        if not 0 <= n <= len(self.rview) - io.pending:
            raise LocalProtocolError("more than the receive buffer holds", ErrorCode.ARG)
        end = io.pending + n
        io.end = end
        status = self.flow_take(end, dst, time.monotonic())
        f = self.flow
        rx = f.rx
        if status in (OK, NEED_MORE, DUE):
            left = end - rx.consumed
            self.rview[:left] = self.rview[rx.consumed : end]
            io.pending = left
            if status != DUE and not (
                rx.offset > f.credit_offset or rx.conn_received > f.credit_conn
            ):
                io.status = status
                return rx.taken
            io.status = DUE  # the bytes are taken, but the connection owes credit
            return 0
        io.pending = 0
        io.status = status
        return 0

    def exchange(
        self,
        lock: Any,
        fd: int,
        wake_fd: int,
        data: bytes,
        queue: list[memoryview],
        release: Any,
        timeout_ms: int,
        size: int,
        stream_id: int,
    ) -> int:
        """As :meth:`dtp.native.core.NativeLane.exchange`."""
        queued = len(queue)
        try:
            if not 0 <= size <= OWN_CAP:
                raise LocalProtocolError("more than the lane's own buffer", ErrorCode.ARG)
            left = self.send(fd, data, queue)
        finally:
            if release is not None:
                release.release()
        if left or len(queue) != queued:
            return -1 - left
        return self.wait_read(lock, fd, wake_fd, timeout_ms, size, stream_id)

    def send(
        self, fd: int, data: bytes | bytearray | memoryview, queue: list[memoryview] | None = None
    ) -> int:
        """As :meth:`dtp.native.core.NativeLane.send`."""
        io = self.io
        io.sent = io.err = 0
        # flow_seal copies what it seals: no view of the caller's buffer stays alive
        # (an error's traceback would keep it, and the buffer could not be resized)
        size = memoryview(data).nbytes
        sealed = self.flow_seal(data, time.monotonic())
        if not sealed:
            return size
        sent = 0
        while sent < len(sealed):
            try:
                sent += os.write(fd, sealed[sent:])
            except InterruptedError:
                continue
            except BlockingIOError:
                break
            except OSError as exc:
                io.sent = sent
                io.err = exc.errno or 0
                raise
        io.sent = sent
        if queue is not None and sent < len(sealed):
            queue.append(memoryview(bytes(sealed[sent:])))
        return size - self.flow.taken
