"""The fast paths of a connection (:class:`_FastPaths`, a mixin of
:class:`~dtp.protocol.connection._core.Connection`): the same records and state changes
as the general path, with fewer calls and copies.

- Sending: stream data sealed straight from the caller's buffer, by the general path's
  AEAD when nothing else must go first, or by the lane (:class:`dtp.native.core.Lane`:
  one C call from the application's buffer to the carrier).
- Receiving: whole records opened straight from the carrier's buffer, in-order stream
  bytes handed on at once, the lane opening a run of an established stream's records in
  one C call; any record these cannot take goes to the general path, in order.
- Lending: a stream's hot state moved into the lane's flow (``dtp_flow``), so that a
  send or receive on it is one C call; every other entry point takes it back first
  (``_take_back``), so the connection never acts on stale fields.

A mixin, not an object of its own, since per record each moves the counts of both the
stream table and the record layer and the connection's own, reading each into a local
once; they call nothing of the streams API (tests/protocol/test_connection_parts.py)."""

from __future__ import annotations

from typing import Any

from dtp.native import core as _core
from dtp.native.types import (
    FRAME_MAX_DATA,
    FRAME_MAX_STREAM_DATA,
    FULL,
    REC_DATA,
    STOP,
    OpenFramesResult,
    TakeResult,
)
from dtp.protocol._events import StreamDataReceived
from dtp.protocol._state import (
    CONN_CLOSED,
    CONN_ESTABLISHED,
    RECV_OPEN,
    SEND_OPEN,
    ConnState,
    RecvState,
    SendState,
)
from dtp.protocol.connection._base import Stream, _ConnectionState
from dtp.protocol.connection._config import (
    MAX_RECORD_PLAINTEXT,
    MAX_STREAM_FRAME_OVERHEAD,
    VARINT_MAX,
)

_LANE_BUFFER_KEEP = 1 << 20  # largest lane buffer kept between reads
_SPARES_KEPT = 4  # most lane buffers kept between reads (one per thread feeding at once)


# The buffers the lane opens records into for the handler, shared by every connection of
# the process (an idle connection holds none: 16 KiB or more each). A read takes one and
# gives it back (list.pop and append: atomic, so each thread, and a handler that feeds
# another connection, gets a buffer of its own).
_spare_buffers: list[memoryview] = []

# The frame types of a credit record sealed in a loan (lent_credit), one byte each as
# varints (docs/protocol.md 3.1)
_MAX_DATA = bytes((FRAME_MAX_DATA,))
_MAX_STREAM_DATA = bytes((FRAME_MAX_STREAM_DATA,))


def _varint(value: int) -> bytes:
    """The minimal QUIC varint of ``value`` (0 to VARINT_MAX), as the frame encoder
    writes it (dtp_core/util.c)."""
    if value < 0x40:
        return bytes((value,))
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x40000000:
        return (value | 0x80000000).to_bytes(4, "big")
    return (value | 0xC000000000000000).to_bytes(8, "big")


class _FastPaths(_ConnectionState):
    """The fast paths of a connection (a mixin): sealing at once (:meth:`seal_fast`),
    taking a stream's bytes straight into the application's buffer (:meth:`take_fast`),
    opening records without a copy, and lending a stream to the lane (:meth:`lend`,
    :meth:`take_back`)."""

    # ----------------------------------------------------------------------------------
    # sending

    def _can_seal_now(self) -> bool:
        # (RecordLayer.waiting, inline: this runs on every send; test_waiting_checks.py)
        rl = self.records
        return (
            not self._lossy
            and (
                self._state is CONN_ESTABLISHED
                or (self.is_client and self._state is ConnState.AUTHENTICATING)
            )
            and not (
                rl.ctrl
                or rl.pending_max_data
                or rl.pending_stream_credit
                or rl.pending_max_streams
                or rl.ping_pending
                or rl.close_frame is not None
            )
        )

    def _seal_stream_now(
        self, stream: Stream, data: bytes | bytearray | memoryview, end_stream: bool
    ) -> bytes | bytearray | memoryview:
        """Seal as much of ``data`` as flow control allows; returns the rest. A FIN
        goes out with the last byte when everything fits; otherwise it stays for the
        caller to queue."""
        size = len(data)
        table = self.streams
        credit = min(
            stream.send_credit - stream.next_offset, table.conn_send_credit - table.conn_sent
        )
        n = size if size <= credit else max(credit, 0)
        if n != size and n and n == table.conn_send_credit - table.conn_sent:
            # the connection's credit ran out on this stream: the others go first in
            # the next packing (RecordLayer._pack_streams)
            self.records.pack_after = stream.stream_id
        fin = end_stream and n == size
        if not n and not fin:
            return data
        offset = stream.next_offset
        view = data if n == size else memoryview(data)[:n]
        if (
            fin
            # the FIN ends the peer's stream (its receiving half ended, the application
            # took it): the MAX_STREAMS that returns its place goes in the same record,
            # where the frame and the credit fit one (a reply on a stream of its own, a
            # JSON-RPC call's, is one record, not two)
            and n <= self.config.max_record_plaintext - MAX_STREAM_FRAME_OVERHEAD - 16
            # (the end of our sending on the peer's stream frees its place: its
            # receiving half ended, the application took it)
            and (stream.stream_id % 2 == 0) != table.is_client
            and (stream.recv_state is RecvState.DONE or stream.recv_state is RecvState.RESET)
            and (table.untaken is None or stream.stream_id not in table.untaken)
        ):
            self._seal_last(stream, offset, view, n)
            return b""
        rl = self.records
        sealed, records = rl.send_aead.seal_stream(
            rl.send_counter, stream.stream_id, offset, view, fin
        )
        rl.send_counter += records
        rl.records_sent += records
        rl.out.append(sealed)
        stream.announce = False
        stream.next_offset = stream.base_offset = offset + n
        table.conn_sent += n
        if fin:
            stream.send_state = SendState.FIN_SENT
            stream.fin_acked = True
            self.records.forget_if_done(stream)
            return b""
        return b"" if n == size else memoryview(data)[n:]

    def _seal_last(self, stream: Stream, offset: int, view: Any, n: int) -> None:
        """Seal ``view`` (``n`` bytes) as the FIN of ``stream`` at ``offset`` with the
        MAX_STREAMS its end frees, in one record (when, :meth:`_seal_stream_now` says)."""
        table = self.streams
        stream.announce = False
        stream.next_offset = stream.base_offset = offset + n
        table.conn_sent += n
        stream.send_state = SendState.FIN_SENT
        stream.fin_acked = True
        rl = self.records
        sid = stream.stream_id
        if sid and not stream.send_buf and not stream.retransmit.ranges and sid in table.by_id:
            # (RecordLayer.forget_if_done's outcome, known here: its FIN went with every
            # byte, its receiving half ended, the application took it -- its place is free --
            # and it is not the client's first stream, which is remembered as it goes)
            del table.by_id[sid]
            table.peer_done += 1
            # (its MAX_STREAMS goes in this record: none was waiting, _can_seal_now;
            # max_streams_limit inline)
            limit = min(table.local_max + table.peer_done, VARINT_MAX)
        else:
            rl.forget_if_done(stream)  # (raises the MAX_STREAMS count: its credit is due)
            limit = 0  # (no credit: seal_last's 0)
            if rl.pending_max_streams:
                rl.pending_max_streams = False
                limit = min(table.local_max + table.peer_done, VARINT_MAX)
        # (the frames the record layer's _emit_stream_chunk and build make, built and
        # sealed in one call: RecordLayer.seal's outcome on a reliable carrier, the only
        # one _can_seal_now lets here, which tracks no record)
        rl.out.append(rl.send_aead.seal_last(rl.send_counter, sid, offset, view, limit))
        rl.send_counter += 1
        rl.records_sent += 1

    def timer_steady(self) -> bool:
        """Whether :meth:`get_timer` takes its steady branch: established over a
        reliable carrier, no handshake message to send again, nothing lent. Its deadline
        there is the idle timeout and the keepalive, from the last record received and
        sent, which only move later: a driver that armed its timer for a deadline asked
        while this held, and finds it still holds after a read that left nothing to send
        (:meth:`has_output`), has its timer in time."""
        return self.steady_timer() is not None

    def steady_timer(self) -> float | None:
        """:meth:`get_timer`'s deadline when :meth:`timer_steady` holds, else None (ask
        get_timer then): both answers of a driver's flush in one call; get_timer's
        steady branch."""
        if (
            self._state is CONN_ESTABLISHED
            and not self._lossy
            and self._hs_resend_at is None
            and self.lent_lane is None
        ):
            idle = self._last_received + self.config.idle_timeout
            if self._keepalive:
                keepalive = self._last_sent + self._keepalive
                return keepalive if keepalive < idle else idle
            return idle
        return None

    def _get_lane(self) -> Any:
        if self._lane is None:
            self._lane = _core.Lane(self.records.send_aead, self._recv_aead)
        return self._lane

    def _nothing_goes_first(self) -> bool:
        """Whether the lane may move stream bytes now: an established connection over a
        reliable carrier with no records or control frames waiting to go first."""
        # (RecordLayer.waiting, inline: this runs on every lane call; close_frame is
        # implied by the state, as it comes with CLOSED; test_waiting_checks.py)
        rl = self.records
        return not (
            self._state is not CONN_ESTABLISHED
            or self._lossy  # a lossy carrier: records are tracked for resending
            or rl.out
            or rl.ctrl
            or rl.pending_max_data
            or rl.pending_stream_credit
            or rl.pending_max_streams
            or rl.ping_pending
        )

    def seal_fast(
        self, stream_id: int, data: bytes | bytearray | memoryview, now: float, head: bytes = b""
    ) -> tuple[memoryview, int] | None:
        """Seal the start of ``data`` on ``stream_id`` now, as much as flow control
        allows, when nothing else must go first; returns (records, bytes of ``data``
        taken) or None to use :meth:`send_stream_data`. The records are a view into the
        lane's buffer, valid until the next call: the caller writes them to the carrier
        (or copies them) at once, before anything :meth:`data_to_send` returns.
        ``head`` (bytes, at most ``MAX_SEAL_HEAD``): stream bytes before ``data`` (a
        message's length prefix), sealed with it as the two joined -- only all of both
        at once (None otherwise: the caller joins them)."""
        if self.lent_lane is not None:
            self._take_back()
        stream = self._streams.get(stream_id)
        rl = self.records
        if (
            stream is None
            or stream.send_buf
            or stream.send_state is not SEND_OPEN
            # (_nothing_goes_first, inline: a call fewer a write; test_waiting_checks.py)
            or self._state is not CONN_ESTABLISHED
            or self._lossy
            or rl.out
            or rl.ctrl
            or rl.pending_max_data
            or rl.pending_stream_credit
            or rl.pending_max_streams
            or rl.ping_pending
        ):
            return None
        offset = stream.next_offset
        table = self.streams
        credit = min(stream.send_credit - offset, table.conn_send_credit - table.conn_sent)
        if credit <= 0 or not data:
            return None
        lane = self._lane or self._get_lane()
        if head:
            n = len(data)
            total = n + len(head)
            if total > credit or total > lane.max_seal:
                return None
            sealed, records = lane.seal(rl.send_counter, stream_id, offset, data, head)
        else:
            n = total = min(len(data), credit, lane.max_seal)
            if n == table.conn_send_credit - table.conn_sent and n != len(data):
                rl.pack_after = stream_id  # (as in _seal_stream_now)
            sealed, records = lane.seal(
                rl.send_counter, stream_id, offset, data if n == len(data) else data[:n]
            )
        rl.send_counter += records
        rl.records_sent += records
        self.bytes_sent += len(sealed)
        self._last_sent = now
        stream.announce = False
        stream.next_offset = stream.base_offset = offset + total
        table.conn_sent += total
        return sealed, n

    def sealed_kept(self) -> None:
        """The carrier kept the view :meth:`seal_fast` returned instead of copying what it
        could not send yet: the lane seals into a new buffer from now on."""
        if self._lane is not None:
            self._lane.release_output()

    # ----------------------------------------------------------------------------------
    # receiving (any record these cannot take goes to the general path, in order)

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
            or stream.recv_state is not RECV_OPEN
            or stream.recv_highest != stream.delivered
            or self._state is not CONN_ESTABLISHED
            or self._lossy
            or not len(dst)
        ):
            self.receive_data(data, now)
            return 0, True
        self._last_received = now
        self.bytes_received += len(data)
        if self._inbuf:
            return self._lane_feed(memoryview(data), stream, memoryview(dst), now, False)
        lane = self._lane or self._get_lane()
        table = self.streams
        result = lane.take(
            data,
            stream_id,
            stream.delivered,
            stream.recv_limit,
            table.conn_received,
            table.conn_recv_limit,
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
        table.conn_received += n
        table.conn_consumed += n
        self.records_received += result.records
        self._lane_sid = stream_id
        if (
            table.conn_recv_limit - table.conn_consumed < table.conn_credit_at
            or stream.recv_limit - stream.consumed < table.stream_credit_at
        ):
            self.records.return_credit(stream)
        keepalive = self._keepalive
        rl = self.records
        return n, bool(
            self._events
            or rl.pending_max_data
            or rl.pending_stream_credit
            or (keepalive and now >= self._last_sent + keepalive)
        )

    def _feed_stream(
        self,
        data: bytes | bytearray | memoryview,
        stream: Stream,
        now: float,
        size: int | None = None,
    ) -> None:
        """:meth:`receive_data`'s lane: ``stream``'s run of records opened into one
        buffer for one handler call. The buffer (at most the read plus the record it
        completes) comes from :data:`_spare_buffers` and goes back there. ``size``: as
        receive_data's (the read is ``data[:size]``, ``data`` long-lived)."""
        n = len(data) if size is None else size
        need = n + MAX_RECORD_PLAINTEXT
        try:
            buf = _spare_buffers.pop()
        except IndexError:
            buf = memoryview(bytearray(need))
        else:
            if len(buf) < need:
                buf = memoryview(bytearray(need))
        # (a view as it is, the adapters' usual read: memoryview() of one is another)
        view = data if type(data) is memoryview else memoryview(data)
        try:
            if self._inbuf:
                self._lane_feed(view if size is None else view[:size], stream, buf, now, True)
            else:
                # (_take_run's usual read written out: one take of whole records of this
                # stream, all of the read, one handler call; anything else goes on there)
                lane = self._lane or self._get_lane()
                table = self.streams
                stream_id = stream.stream_id
                result = lane.take(
                    # (with size, the caller's own buffer: the lane keeps its pointer by
                    # identity, and a view made here for one read would match no other)
                    view if size is None else data,
                    stream_id,
                    stream.delivered,
                    stream.recv_limit,
                    table.conn_received,
                    table.conn_recv_limit,
                    buf,
                    # (a spare buffer: kept, but never one too large to be a spare)
                    len(buf) <= _LANE_BUFFER_KEEP,
                    size,
                )
                if result.consumed != n or result.spill:
                    if size is not None:
                        view = view[:size]
                    self._take_run(view, stream, buf, now, True, result)
                else:
                    n = result.taken
                    stream.delivered = stream.recv_highest = stream.delivered + n
                    table.conn_received += n
                    self.records_received += result.records
                    handler = self.stream_data_handler
                    if n and handler is not None:
                        handler(stream_id, buf[:n], False)
                    self._lane_sid = stream_id
        finally:
            if len(buf) <= _LANE_BUFFER_KEEP and len(_spare_buffers) < _SPARES_KEPT:
                _spare_buffers.append(buf)

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
                # the general path judges (and reports) it at once, fed with what follows:
                # given nothing, it waited for a byte more when the header ended the read
                head = bytes(inbuf) + view
                inbuf.clear()
                self._receive(head, now)
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
        table = self.streams
        while view:
            if result is None:
                result = lane.take(
                    view,
                    stream_id,
                    stream.delivered,
                    stream.recv_limit,
                    table.conn_received,
                    table.conn_recv_limit,
                    out[taken:] if taken and not deliver else out,
                    # (delivering, dst is _feed_stream's spare buffer: kept, as there)
                    deliver and len(out) <= _LANE_BUFFER_KEEP,
                )
            if result.records:
                n = result.taken
                spill = result.spill
                got = n + len(spill)
                stream.delivered = stream.recv_highest = stream.delivered + got
                table.conn_received += got
                self.records_received += result.records
                taken += n
                if deliver and n and handler is not None:
                    handler(stream_id, out[:n], False)
                if spill:
                    if handler is not None:
                        handler(stream_id, spill, False)
                    else:
                        self._deliver(StreamDataReceived(stream_id, bytes(spill), False))
            consumed = result.consumed
            status, result = result.status, None
            if consumed == len(view):
                break  # (all of it taken: no view of nothing made)
            view = view[consumed:]
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
                self._state is not CONN_ESTABLISHED
                or stream.delivered != before
                or stream.recv_state is not RECV_OPEN
                or self._inbuf
            ):
                self._receive(view, now)
                general = True
                break
        self._lane_sid = stream_id
        if taken and not deliver and self._state is not CONN_CLOSED:
            # what dst holds counts as read (as acknowledge_read would count it)
            table.conn_consumed += taken
            read = self._streams.get(stream_id)
            if read is not None:
                read.consumed += taken
            self.records.return_credit(read)
        if not attention:
            keepalive = self._keepalive
            rl = self.records
            attention = bool(
                self._events
                or rl.pending_max_data
                or rl.pending_stream_credit
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
        while inbuf and view and self._state is not CONN_CLOSED:
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
        self,
        data: bytes | bytearray | memoryview,
        now: float,
        opened: OpenFramesResult | None = None,
    ) -> bytes | bytearray | memoryview:
        """Open the DATA records at the start of ``data`` without copying it; returns
        what is left for :meth:`_process_input` (a partial record, or a record that
        needs its attention: an error or a handshake record). ``opened``: the first
        ``open_frames`` of ``data``, made already."""
        view = memoryview(data)
        pos = 0
        size = len(view)
        result = opened
        while pos < size:
            if result is None:
                result = self._recv_aead.open_frames(
                    view[pos:] if pos else view, datagram_runs=True
                )
            if not self._handle_records(result.records, now):
                return b""
            pos += result.consumed
            if result.status != FULL or result.error is not None:
                break
            result = None
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
            or stream.recv_state is not RECV_OPEN
            or offset != stream.delivered
            or self._lossy
            or self._state is not CONN_ESTABLISHED
        ):
            return False
        end = offset + len(data)
        if end > stream.recv_limit:
            return False
        grown = end - stream.recv_highest
        if grown > 0:
            table = self.streams
            if table.conn_received + grown > table.conn_recv_limit:
                return False
            table.conn_received += grown
            stream.recv_highest = end
        if data:
            stream.delivered = end
            self._lane_sid = stream_id
            handler(stream_id, data, False)
        return True

    # ----------------------------------------------------------------------------------
    # lending a stream to the lane

    def lend(self, stream_id: int, now: float, recv: bool = True) -> Any:
        """Lend ``stream_id`` to the lane, when the connection has nothing else to do
        first: returns the lane (its ``flow`` filled; ``flow_seal`` / ``flow_take``
        then move the stream's bytes) or None. The loan lasts until any other method
        of the connection is called, or :meth:`take_back`. ``recv=False`` lends the
        stream for sending only (:attr:`lent_can_recv` is then False).

        While lent, :attr:`lent_timer` is a time no later than the next timer (the
        adapter wakes by then and calls :meth:`get_timer`)."""
        if self.lent_lane is not None:
            if self.lent_stream_id == stream_id:
                return self.lent_lane
            self._take_back()
        stream = self._streams.get(stream_id)
        if stream is None or not self._nothing_goes_first() or self._events:
            return None
        can_send = stream.send_state is SendState.OPEN and not stream.send_buf
        can_recv = (
            recv and stream.recv_state is RecvState.OPEN and stream.recv_highest == stream.delivered
        )
        inbuf = self._inbuf
        if inbuf:
            # the start of a record the carrier has not brought whole yet: the lane
            # keeps it for its next read (anything more waits for the general path)
            have = len(inbuf)
            if (
                not can_recv
                or have > MAX_RECORD_PLAINTEXT + 28
                or (have >= 12 and have >= 12 + (inbuf[2] | inbuf[3] << 8))
            ):
                return None
        if not (can_send or can_recv):
            return None
        timer = self.get_timer()
        lane = self._lane or self._get_lane()
        if inbuf:
            lane.rview[: len(inbuf)] = inbuf
            lane.pending = len(inbuf)
            inbuf.clear()
        f = lane.flow
        f.stream_id = stream_id
        f.can_send = can_send
        f.can_recv = can_recv
        # the peer's credit may be taken in the lane while nothing waits for it: data
        # queued on any stream goes out only once the general path sees that credit
        take_credit = can_send and can_recv
        if take_credit:
            # (send_buffered() of all streams, inline: the fast paths call nothing of
            # the streams API)
            for other in self._streams.values():
                if other.base_offset + len(other.send_buf) != other.next_offset:
                    take_credit = False
                    break
        # (its credit raises no SendWindowOpened: safe, take_lent_credit runs with no waiters)
        f.take_credit = take_credit
        table = self.streams
        f.send_counter = self.records.send_counter
        f.send_offset = stream.next_offset
        f.send_limit = max(stream.send_credit, stream.next_offset)
        f.conn_sent = table.conn_sent
        f.conn_send_limit = max(table.conn_send_credit, table.conn_sent)
        f.records_sent = f.wire_sent = f.records_received = f.wire_received = 0
        f.last_sent = self._last_sent
        f.last_received = self._last_received
        rx = f.rx
        rx.stream_id = stream_id
        rx.offset = stream.delivered
        rx.stream_limit = stream.recv_limit
        rx.conn_received = table.conn_received
        rx.conn_limit = table.conn_recv_limit
        # credit is due (see RecordLayer.return_credit) once what is read leaves less
        # than the *_credit_at of a window; reads here are taken as read at once
        f.credit_offset = stream.delivered + max(
            0, stream.recv_limit - stream.consumed - table.stream_credit_at
        )
        f.credit_conn = table.conn_received + max(
            0, table.conn_recv_limit - table.conn_consumed - table.conn_credit_at
        )
        self.lent_lane = lane
        self.lent_stream_id = stream_id
        self.lent_timer = timer
        self.lent_can_recv = can_recv
        self._lent = stream
        return lane

    def lent_credit(self, now: float) -> bytes | None:
        """The lane took the lent stream's bytes up to where credit is due (its status
        DUE): seal the record :meth:`take_back` and the general path would send for it
        (MAX_DATA, then the stream's MAX_STREAM_DATA, as RecordLayer.return_credit
        raises them) and go on lending, the flow's limits raised. Returns the record,
        for the adapter to write at once, before anything else; None when no credit is
        due after all (the caller takes the stream back). Nothing else can be waiting:
        the loan began with nothing to go first, and anything queued since ended it."""
        stream = self._lent
        if stream is None:
            return None
        f = self.lent_lane.flow
        rx = f.rx
        table = self.streams
        config = self.config
        # what the lane took counts as read at once (lend), as _take_back counts it
        got = rx.offset - stream.delivered
        consumed = stream.consumed + got
        conn_consumed = table.conn_consumed + got
        plain = b""
        conn_limit = table.conn_recv_limit
        if conn_limit - conn_consumed < table.conn_credit_at:
            limit = min(conn_consumed + config.connection_window, VARINT_MAX)
            if limit > conn_limit:
                conn_limit = limit
                plain = _MAX_DATA + _varint(limit)
        stream_limit = stream.recv_limit
        if stream_limit - consumed < table.stream_credit_at and stream.recv_state is RecvState.OPEN:
            limit = min(consumed + config.stream_window, VARINT_MAX)
            if limit > stream_limit:
                stream_limit = limit
                plain += _MAX_STREAM_DATA + _varint(stream.stream_id) + _varint(limit)
        if not plain:
            return None
        sealed: bytes = self.records.send_aead.seal_one(f.send_counter, plain)
        # counted in the flow, as the lane counts its own records (_take_back)
        f.send_counter += 1
        f.records_sent += 1
        f.wire_sent += len(sealed)
        f.last_sent = now
        stream.recv_limit = rx.stream_limit = stream_limit
        table.conn_recv_limit = rx.conn_limit = conn_limit
        # (lend's thresholds, from where the loan stands now)
        f.credit_offset = rx.offset + max(0, stream_limit - consumed - table.stream_credit_at)
        f.credit_conn = rx.conn_received + max(0, conn_limit - conn_consumed - table.conn_credit_at)
        return sealed

    def take_back(
        self,
        now: float,
        spill: bytes | memoryview = b"",
        rest: bytes | bytearray | memoryview = b"",
    ) -> None:
        """End the loan of :meth:`lend` after a lane call that did not go cleanly:
        ``spill`` is the data of a record ``flow_take`` could not fit (the stream's next
        bytes, still to be read), ``rest`` what the adapter read from the carrier past
        the records taken (the general path has it next, also when the loan had
        already ended)."""
        stream = self._lent
        if stream is not None:
            self._take_back(len(spill))
            if spill:
                handler = self.stream_data_handler
                if handler is not None:
                    handler(stream.stream_id, spill, False)
                else:
                    self._deliver(StreamDataReceived(stream.stream_id, bytes(spill), False))
        if rest:
            self.receive_data(rest, now)  # also when the loan had ended already

    def _take_back(self, unread: int = 0) -> None:
        """The lent stream's state back from the lane's flow (``unread``: bytes taken
        there that the application has not read)."""
        lane = self.lent_lane
        f = lane.flow
        stream = self._lent
        assert stream is not None
        self.lent_lane = self.lent_stream_id = self.lent_timer = self._lent = None
        self.lent_can_recv = False
        # a lane call made with a stale view of the loan (an adapter that waited
        # without the lock meanwhile) now moves nothing
        f.can_send = f.can_recv = 0
        pending = lane.pending
        if pending:
            # the start of a record the lane kept: the general path completes it
            self._inbuf += lane.rview[:pending]
            lane.pending = 0
        records = self.records
        records.send_counter = f.send_counter
        if f.send_offset != stream.next_offset:
            stream.announce = False
            stream.next_offset = stream.base_offset = f.send_offset
            self.streams.conn_sent = f.conn_sent
            if f.conn_sent >= f.conn_send_limit:
                records.pack_after = stream.stream_id  # (as in _seal_stream_now)
        if f.records_sent:  # (the stream's records, and the credit's: lent_credit)
            records.records_sent += f.records_sent
            self.bytes_sent += f.wire_sent
            self._last_sent = f.last_sent
        table = self.streams
        if f.send_limit > stream.send_credit or f.conn_send_limit > table.conn_send_credit:
            # the peer's credit records, taken in the lane (as _handle_frame takes them)
            stream.send_credit = max(stream.send_credit, f.send_limit)
            table.conn_send_credit = max(table.conn_send_credit, f.conn_send_limit)
            records.streams_dirty = True
        if f.records_received:
            self.records_received += f.records_received
            self.bytes_received += f.wire_received
            self._last_received = f.last_received
        rx = f.rx
        got = rx.offset - stream.delivered
        if got:
            stream.delivered = stream.recv_highest = rx.offset
            table.conn_received = rx.conn_received
            read = got - unread
            stream.consumed += read
            table.conn_consumed += read
            self._lane_sid = stream.stream_id
            records.return_credit(stream)
