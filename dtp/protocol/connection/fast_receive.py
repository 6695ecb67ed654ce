"""Records opened without a copy (:class:`_FastReceive`, a mixin of
:class:`~dtp.protocol.connection.core.Connection`): whole records opened straight from
the carrier's buffer, in-order stream bytes handed to the handler at once, and the lane
(:class:`dtp.native.core.Lane`) that opens an established stream's run of records in one
C call, into the application's buffer or into one buffer for one handler call."""

from __future__ import annotations

from dtp.native.types import FULL, REC_DATA, STOP, TakeResult
from dtp.protocol.connection.base import Stream, _ConnectionState
from dtp.protocol.connection.config import MAX_RECORD_PLAINTEXT
from dtp.protocol.events import StreamDataReceived
from dtp.protocol.state import ConnState, RecvState

_LANE_BUFFER_KEEP = 1 << 20  # largest lane buffer kept between reads
_SPARES_KEPT = 4  # most lane buffers kept between reads (one per thread feeding at once)
# The buffers the lane opens records into for the handler, kept between reads for
# every connection of the process rather than one per connection (an idle connection
# holds none: 16 KiB or more each, a server keeps thousands). A read takes one and
# gives it back (list.pop and append: atomic, so threads and a handler that feeds
# another connection each get a buffer of their own).
_spare_buffers: list[memoryview] = []


def lane_buffer(size: int) -> memoryview:
    """A buffer the lane opens the records of a read of ``size`` bytes into for the
    handler (at most the read plus the record it completes); give it back with
    :func:`give_back` once the handler returned."""
    size += MAX_RECORD_PLAINTEXT
    try:
        buf = _spare_buffers.pop()
    except IndexError:
        return memoryview(bytearray(size))
    return buf if len(buf) >= size else memoryview(bytearray(size))


def give_back(buf: memoryview) -> None:
    """Keep ``buf`` for the next :func:`lane_buffer` (unless enough are kept)."""
    if len(buf) <= _LANE_BUFFER_KEEP and len(_spare_buffers) < _SPARES_KEPT:
        _spare_buffers.append(buf)


class _FastReceive(_ConnectionState):
    """The receive side of a connection's fast paths (a mixin): the same state changes
    as the general path, with fewer calls and copies; any record it cannot take goes to
    the general path, in order."""

    def take_fast(
        self,
        data: bytes | bytearray | memoryview,
        stream_id: int,
        dst: bytearray | memoryview,
        now: float,
    ) -> tuple[int, bool]:
        """Feed bytes from the carrier, as :meth:`receive_data`, with ``stream_id``'s
        next bytes going straight into ``dst`` instead of to the handler, for as long as
        they come in order (up to a record of that stream the general path had to take,
        or until ``dst`` is full). Those count as read by the application (their
        flow-control credit is returned). Every other record takes the general path,
        in order.

        Returns how many bytes were written to ``dst``, and whether the connection now
        needs the adapter's usual attention (events, output, timers); when it does
        not, all ``data`` held was that stream's bytes."""
        if self.lent_lane is not None:
            self._take_back()
        stream = self._streams.get(stream_id)
        if (
            stream is None
            or stream.recv_state is not RecvState.OPEN
            or stream.recv_highest != stream.delivered
            or self._state is not ConnState.ESTABLISHED
            or self._acks is not None
            or not len(dst)
        ):
            self.receive_data(data, now)
            return 0, True
        self._last_received = now
        self.bytes_received += len(data)
        if self._inbuf:
            return self._lane_feed(memoryview(data), stream, memoryview(dst), now, False)
        lane = self._lane or self._get_lane()
        result = lane.take(
            data,
            stream_id,
            stream.delivered,
            stream.recv_limit,
            self._conn_received,
            self._conn_recv_limit,
            dst,
        )
        if result.consumed != len(data) or result.spill:
            # something else came along: the general machinery goes on from here
            taken, attention, _ = self._take_run(
                memoryview(data), stream, memoryview(dst), now, False, result
            )
            return taken, attention
        # the usual read: whole records of this stream, all of them in dst, read
        n = result.taken
        stream.delivered = stream.recv_highest = stream.delivered + n
        stream.consumed += n
        self._conn_received += n
        self._conn_consumed += n
        self.records_received += result.records
        self._lane_sid = stream_id
        if (
            self._conn_recv_limit - self._conn_consumed < self._conn_credit_at
            or stream.recv_limit - stream.consumed < self._stream_credit_at
        ):
            self._return_credit(stream)
        keepalive = self._keepalive
        return n, bool(
            self._events
            or self._pending_max_data
            or self._pending_stream_credit
            or (keepalive and now >= self._last_sent + keepalive)
        )

    def _lane_feed(
        self, view: memoryview, stream: Stream, dst: memoryview, now: float, deliver: bool
    ) -> tuple[int, bool]:
        """Bytes from the carrier (bookkeeping done) through the lane for ``stream``:
        first the record a previous read ended inside, if any, then the rest. With
        ``deliver`` the bytes go to the handler (``dst`` is scratch space); without,
        they stay in ``dst`` for the caller. Returns (bytes taken, attention)."""
        if self._inbuf:
            # the last read ended inside a record: complete it, so the lane sees it whole
            inbuf = self._inbuf
            have = len(inbuf)
            if have < 12:
                inbuf += view[: 12 - have]
                view = view[12 - have :]
                if len(inbuf) < 12:
                    return 0, False
            body = inbuf[2] | inbuf[3] << 8
            if inbuf[0] != REC_DATA or inbuf[1] or not 16 <= body <= MAX_RECORD_PLAINTEXT + 16:
                self._receive(view, now)  # the general path judges (and reports) it
                return 0, True
            need = 12 + body - len(inbuf)
            if len(view) < need:
                inbuf += view
                return 0, False
            first = bytes(inbuf) + view[:need]
            inbuf.clear()
            taken, attention, general = self._take_run(first, stream, dst, now, deliver)
            rest = view[need:]
            if general or not rest:
                self._receive(rest, now)  # after what the general path took
                return taken, attention
            more, attention2, _ = self._take_run(
                rest, stream, dst if deliver else dst[taken:], now, deliver
            )
            return taken + more, attention or attention2
        taken, attention, _ = self._take_run(view, stream, dst, now, deliver)
        return taken, attention

    def _take_run(
        self,
        view: bytes | memoryview,
        stream: Stream,
        dst: bytearray | memoryview,
        now: float,
        deliver: bool = False,
        result: TakeResult | None = None,
    ) -> tuple[int, bool, bool]:
        """:meth:`_lane_feed` over whole records and perhaps a partial one at the end:
        returns the bytes taken, attention, and whether the general path took over for
        good (then later bytes must go that way too). ``result``: the lane's take of
        ``view`` into ``dst`` already made, to go on from."""
        lane = self._lane or self._get_lane()
        stream_id = stream.stream_id
        taken = 0
        attention = general = False
        out = dst if type(dst) is memoryview else memoryview(dst)
        handler = self.stream_data_handler
        while view:
            if result is None:
                result = lane.take(
                    view,
                    stream_id,
                    stream.delivered,
                    stream.recv_limit,
                    self._conn_received,
                    self._conn_recv_limit,
                    out[taken:] if taken and not deliver else out,
                )
            if result.records:
                n = result.taken
                spill = result.spill
                got = n + len(spill)
                stream.delivered = stream.recv_highest = stream.delivered + got
                self._conn_received += got
                self.records_received += result.records
                taken += n
                if deliver and n and handler is not None:
                    handler(stream_id, out[:n], False)
                if spill:
                    if handler is not None:
                        handler(stream_id, spill, False)
                    else:
                        self._deliver(StreamDataReceived(stream_id, bytes(spill), False))
            view = view[result.consumed :]
            status, result = result.status, None
            if not view:
                break
            attention = True
            if status != STOP:
                # a partial record (kept for the next read), or dst is full: the rest
                # waits in the general path's buffers, after what dst holds
                self._receive(view, now)
                general = True
                break
            # one record for the general path (a control frame, another stream, a FIN,
            # something bad); past it the lane goes on if it delivered nothing of ours
            before = stream.delivered
            size = 12 + (view[2] | view[3] << 8) if len(view) >= 12 else len(view)
            self._lane_sid = None
            self._receive(view[:size], now)
            view = view[size:]
            if deliver and self._lane_sid not in (None, stream_id):
                # the general path delivered to another stream: follow it
                other = self._streams.get(self._lane_sid)
                if other is not None and other.recv_highest == other.delivered:
                    stream, stream_id, before = other, other.stream_id, other.delivered
            if (
                self._state is not ConnState.ESTABLISHED
                or stream.delivered != before
                or stream.recv_state is not RecvState.OPEN
                or self._inbuf
            ):
                self._receive(view, now)
                general = True
                break
        self._lane_sid = stream_id
        if taken and not deliver:
            self.acknowledge_read(stream_id, taken)
        if not attention:
            keepalive = self._keepalive
            attention = bool(
                self._events
                or self._pending_max_data
                or self._pending_stream_credit
                or (keepalive and now >= self._last_sent + keepalive)
            )
        return taken, attention, general

    def _complete_partial(
        self, data: bytes | bytearray | memoryview, now: float
    ) -> bytes | bytearray | memoryview:
        """Move into the input buffer only the bytes that complete the partial record
        held there, and process it; returns the rest of ``data``. (Same as feeding the
        data in two pieces, which any split must handle alike.)"""
        view = memoryview(data)
        inbuf = self._inbuf
        while inbuf and view and self._state is not ConnState.CLOSED:
            have = len(inbuf)
            if have < 12:
                need = 12 - have  # the header first: its checks come as soon as it is whole
            else:
                need = 12 + (inbuf[2] | inbuf[3] << 8) - have
                if need <= 0:
                    break  # a whole record the general path left for later
            inbuf += view[:need]
            view = view[need:]
            self._process_input(now)
            inbuf = self._inbuf  # _terminate rebinds it
        return view

    def _process_direct(
        self, data: bytes | bytearray | memoryview, now: float
    ) -> bytes | bytearray | memoryview:
        """Open the DATA records at the start of ``data`` without copying it; returns
        what is left for :meth:`_process_input` (a partial record, or a record that
        needs its attention: an error or a handshake record)."""
        view = memoryview(data)
        pos = 0
        size = len(view)
        while pos < size:
            result = self._recv_aead.open_frames(view[pos:] if pos else view)
            if not self._handle_records(result.records, now):
                return b""
            pos += result.consumed
            if result.status != FULL or result.error is not None:
                break
        return view[pos:] if pos else data

    def _fast_stream_frame(self, stream_id: int, offset: int, data: bytes | memoryview) -> bool:
        """In-order data on an open stream of an established connection over a reliable
        carrier, within flow control, with a handler to take it: deliver it and return
        True. Anything else returns False for the general path to judge."""
        handler = self.stream_data_handler
        stream = self._streams.get(stream_id)
        if (
            handler is None
            or stream is None
            or stream.recv_state is not RecvState.OPEN
            or offset != stream.delivered
            or self._acks is not None
            or self._state is not ConnState.ESTABLISHED
        ):
            return False
        end = offset + len(data)
        if end > stream.recv_limit:
            return False
        grown = end - stream.recv_highest
        if grown > 0:
            if self._conn_received + grown > self._conn_recv_limit:
                return False
            self._conn_received += grown
            stream.recv_highest = end
        if data:
            stream.delivered = end
            self._lane_sid = stream_id
            handler(stream_id, data, False)
        return True
