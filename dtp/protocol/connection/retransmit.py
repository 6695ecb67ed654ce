"""What acknowledgements and losses do to what was sent, on lossy carriers
(:class:`_Retransmit`, a mixin of :class:`~dtp.protocol.connection.core.Connection`):
acknowledged stream bytes leave the streams' send buffers, and what a lost record
carried is queued to go again -- stream ranges not acknowledged since, control frames
as they were, flow-control credits as they are now (:mod:`dtp.protocol.recovery` tells
which records were acknowledged or lost)."""

from __future__ import annotations

from dtp.native.types import FRAME_CONTROL, FRAME_MAX_DATA, FRAME_MAX_STREAM_DATA
from dtp.protocol.connection.base import (
    Stream,
    _ConnectionState,
    _ResendCredit,
    _ResendFrame,
    _StreamChunk,
)
from dtp.protocol.recovery import SentRecord
from dtp.protocol.state import ControlKind, SendState


class _Retransmit(_ConnectionState):
    """Acknowledged and lost records applied to the streams and the frames queued
    (a mixin; lossy carriers only: a reliable carrier acknowledges nothing)."""

    def _on_acked(self, records: list[SentRecord]) -> None:
        for record in records:
            for item in record.items:
                if not isinstance(item, _StreamChunk):
                    continue
                stream = self._streams.get(item.stream_id)
                if stream is None:
                    continue
                if item.length:
                    stream.acked.add(item.offset, item.offset + item.length - 1)
                    self._advance_acked(stream)
                if item.fin:
                    stream.fin_acked = True
                    self._maybe_forget(stream)

    def _advance_acked(self, stream: Stream) -> None:
        ranges = stream.acked.ranges
        if ranges and ranges[0][0] <= stream.base_offset:
            new_base = min(ranges[0][1] + 1, stream.next_offset)
            if new_base > stream.base_offset:
                self._unacked -= new_base - stream.base_offset
                del stream.send_buf[: new_base - stream.base_offset]
                stream.base_offset = new_base

    def _requeue(self, lost: list[SentRecord]) -> None:
        for record in lost:
            for item in record.items:
                if isinstance(item, _StreamChunk):
                    self._requeue_chunk(item)
                elif isinstance(item, _ResendFrame):
                    frame = item.frame
                    if frame.type == FRAME_CONTROL and frame.a == ControlKind.AUTH:
                        # An XX server drops a record with frames before the AUTH: sent
                        # again behind frames queued since, it went with them each time.
                        self._ctrl.insert(0, frame)
                    else:
                        self._ctrl.append(frame)
                elif isinstance(item, _ResendCredit):
                    if item.frame_type == FRAME_MAX_DATA:
                        self._pending_max_data = True
                    elif item.frame_type == FRAME_MAX_STREAM_DATA:
                        self._pending_stream_credit.add(item.stream_id)
                    else:
                        self._pending_max_streams = True

    def _requeue_chunk(self, item: _StreamChunk) -> None:
        stream = self._streams.get(item.stream_id)
        if stream is None or stream.send_state is SendState.RESET:
            return
        self._streams_dirty = True
        if item.length:
            lo = max(item.offset, stream.base_offset)
            hi = item.offset + item.length - 1
            for alo, ahi in stream.acked.ranges:
                if alo <= lo and hi <= ahi:
                    lo = hi + 1
            if lo <= hi:
                stream.retransmit.add(lo, hi)
        if item.fin and not stream.fin_acked:
            stream.fin_pending_resend = True
        if not item.length and not item.fin:
            stream.announce = True  # the lost record only opened the stream
