"""Stream data sealed straight from the caller's buffer (:class:`_FastSend`, a mixin of
:class:`~dtp.protocol.connection.core.Connection`): by the general path's AEAD when
nothing else must go first, or by the lane (:class:`dtp.native.core.Lane`), an I/O
adapter's fast path for the established streams of a connection over a reliable
carrier -- the same records and state changes as the general path, in one C call, with
the bytes going straight from the application's buffer to the carrier."""

from __future__ import annotations

from typing import Any

from dtp.native import core as _core
from dtp.native.types import FRAME_MAX_STREAMS, FRAME_STREAM_FIN
from dtp.protocol.connection.base import Stream, _ConnectionState
from dtp.protocol.connection.config import MAX_STREAM_FRAME_OVERHEAD
from dtp.protocol.connection.records import _varint
from dtp.protocol.state import ConnState, SendState

_FIN = bytes([FRAME_STREAM_FIN])
_MAX_STREAMS = bytes([FRAME_MAX_STREAMS])


class _FastSend(_ConnectionState):
    """The send side of a connection's fast paths (a mixin): the same records and state
    changes as the general path, with fewer calls and copies."""

    def _can_seal_now(self) -> bool:
        return (
            self._acks is None
            and (
                self._state is ConnState.ESTABLISHED
                or (self.is_client and self._state is ConnState.AUTHENTICATING)
            )
            and not (
                self._ctrl
                or self._pending_max_data
                or self._pending_stream_credit
                or self._pending_max_streams
                or self._ping_pending
                or self._close_frame is not None
            )
        )

    def _seal_stream_now(
        self, stream: Stream, data: bytes | bytearray | memoryview, end_stream: bool
    ) -> bytes | bytearray | memoryview:
        """Seal as much of ``data`` as flow control allows; returns the rest. A FIN
        goes out with the last byte when everything fits; otherwise it stays for the
        caller to queue."""
        size = len(data)
        credit = min(
            stream.send_credit - stream.next_offset, self._conn_send_credit - self._conn_sent
        )
        n = size if size <= credit else max(credit, 0)
        fin = end_stream and n == size
        if not n and not fin:
            return data
        offset = stream.next_offset
        view = data if n == size else memoryview(data)[:n]
        if fin and self._frees_a_stream(stream, n):
            self._seal_last(stream, offset, view)
            return b""
        sealed, records = self._send_aead.seal_stream(
            self._send_counter, stream.stream_id, offset, view, fin
        )
        self._send_counter += records
        self.records_sent += records
        self._out.append(sealed)
        stream.announce = False
        stream.next_offset = stream.base_offset = offset + n
        self._conn_sent += n
        if fin:
            stream.send_state = SendState.FIN_SENT
            stream.fin_acked = True
            self._maybe_forget(stream)
            return b""
        return b"" if n == size else memoryview(data)[n:]

    def _frees_a_stream(self, stream: Stream, n: int) -> bool:
        """Whether the FIN about to be sealed on the peer's ``stream`` ends it (its
        receiving half ended, the application took it): then the MAX_STREAMS that
        returns its place goes in the same record (a reply to a request on a stream of
        its own -- a JSON-RPC call -- is one record, not two). Only where the stream
        frame and the credit fit one record."""
        return (
            n <= self.config.max_record_plaintext - MAX_STREAM_FRAME_OVERHEAD - 16
            and self.streams.frees_a_place(stream)
        )

    def _seal_last(self, stream: Stream, offset: int, view: Any) -> None:
        """Seal ``view`` as the FIN of ``stream`` at ``offset`` with the MAX_STREAMS
        its end frees, in one record (:meth:`_frees_a_stream`)."""
        n = len(view)
        stream.announce = False
        stream.next_offset = stream.base_offset = offset + n
        self._conn_sent += n
        stream.send_state = SendState.FIN_SENT
        stream.fin_acked = True
        self._maybe_forget(stream)  # (raises the MAX_STREAMS count: its credit is due)
        # (the frames' bytes as _emit_stream_chunk and _build_records make them)
        plaintext = b"".join(
            (
                _FIN,
                _varint(stream.stream_id),
                _varint(offset),
                _varint(n),
                view,
            )
        )
        if self._pending_max_streams:
            plaintext += _MAX_STREAMS + _varint(self.streams.max_streams_limit())
            self._pending_max_streams = False
        self._seal_plaintexts([plaintext], [[]], [True], 0.0)

    def _get_lane(self) -> Any:
        if self._lane is None:
            self._lane = _core.Lane(self._send_aead, self._recv_aead)
        return self._lane

    def _nothing_goes_first(self) -> bool:
        """Whether the lane may move stream bytes now: an established connection over a
        reliable carrier with no records or control frames waiting to go first."""
        return not (
            self._state is not ConnState.ESTABLISHED
            or self._acks is not None  # a lossy carrier: records are tracked for resending
            or self._out
            or self._ctrl
            or self._pending_max_data
            or self._pending_stream_credit
            or self._pending_max_streams
            or self._ping_pending
        )

    def seal_fast(
        self, stream_id: int, data: bytes | bytearray | memoryview, now: float
    ) -> tuple[memoryview, int] | None:
        """Seal the start of ``data`` on ``stream_id`` now, as much as flow control
        allows, when nothing else must go first; returns (records, bytes of ``data``
        taken) or None to use :meth:`send_stream_data`. The records are a view into the
        lane's buffer, valid until the next call: the caller writes them to the carrier
        (or copies them) at once, before anything :meth:`data_to_send` returns."""
        if self.lent_lane is not None:
            self._take_back()
        stream = self._streams.get(stream_id)
        if (
            stream is None
            or stream.send_buf
            or stream.send_state is not SendState.OPEN
            or not self._nothing_goes_first()
        ):
            return None
        offset = stream.next_offset
        credit = min(stream.send_credit - offset, self._conn_send_credit - self._conn_sent)
        if credit <= 0 or not data:
            return None
        lane = self._lane or self._get_lane()
        n = min(len(data), credit, lane.max_seal)
        sealed, records = lane.seal(
            self._send_counter, stream_id, offset, data if n == len(data) else data[:n]
        )
        self._send_counter += records
        self.records_sent += records
        self.bytes_sent += len(sealed)
        self._last_sent = now
        stream.announce = False
        stream.next_offset = stream.base_offset = offset + n
        self._conn_sent += n
        return sealed, n

    def sealed_kept(self) -> None:
        """The carrier kept the view :meth:`seal_fast` returned instead of copying what it
        could not send yet: the lane seals into a new buffer from now on."""
        if self._lane is not None:
            self._lane.release_output()
