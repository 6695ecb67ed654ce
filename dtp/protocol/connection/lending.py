"""A stream lent to the lane (:class:`_Lending`, a mixin of
:class:`~dtp.protocol.connection.core.Connection`): the stream's hot state moves into the
lane's flow (``dtp_flow``), so that an adapter's send or receive on it is one C call with
no bookkeeping here. Every other entry point takes it back first (``_take_back``), so the
connection never acts on stale fields; the adapter only ever sees the lane."""

from __future__ import annotations

from typing import Any

from dtp.protocol.connection.base import _ConnectionState
from dtp.protocol.connection.config import MAX_RECORD_PLAINTEXT
from dtp.protocol.events import StreamDataReceived
from dtp.protocol.state import RecvState, SendState


class _Lending(_ConnectionState):
    """Lending a stream to the lane and taking it back (a mixin)."""

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
        f.send_counter = self._send_counter
        f.send_offset = stream.next_offset
        f.send_limit = max(stream.send_credit, stream.next_offset)
        f.conn_sent = self._conn_sent
        f.conn_send_limit = max(self._conn_send_credit, self._conn_sent)
        f.records_sent = f.wire_sent = f.records_received = f.wire_received = 0
        f.last_sent = self._last_sent
        f.last_received = self._last_received
        rx = f.rx
        rx.stream_id = stream_id
        rx.offset = stream.delivered
        rx.stream_limit = stream.recv_limit
        rx.conn_received = self._conn_received
        rx.conn_limit = self._conn_recv_limit
        # credit is due (see _return_credit) once what is read leaves less than the
        # *_credit_at of a window; reads here are taken as read at once
        f.credit_offset = stream.delivered + max(
            0, stream.recv_limit - stream.consumed - self._stream_credit_at
        )
        f.credit_conn = self._conn_received + max(
            0, self._conn_recv_limit - self._conn_consumed - self._conn_credit_at
        )
        self.lent_lane = lane
        self.lent_stream_id = stream_id
        self.lent_timer = timer
        self.lent_can_recv = can_recv
        self._lent = stream
        return lane

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
        self._send_counter = f.send_counter
        if f.send_offset != stream.next_offset:
            stream.announce = False
            stream.next_offset = stream.base_offset = f.send_offset
            self._conn_sent = f.conn_sent
            self.records_sent += f.records_sent
            self.bytes_sent += f.wire_sent
            self._last_sent = f.last_sent
        rx = f.rx
        got = rx.offset - stream.delivered
        if got:
            stream.delivered = stream.recv_highest = rx.offset
            self._conn_received = rx.conn_received
            read = got - unread
            stream.consumed += read
            self._conn_consumed += read
            self.records_received += f.records_received
            self.bytes_received += f.wire_received
            self._last_received = f.last_received
            self._lane_sid = stream.stream_id
            self._return_credit(stream)
