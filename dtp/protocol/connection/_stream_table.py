"""The streams of one connection as data: the state of one stream (:class:`Stream`),
and :class:`StreamTable`, the streams by ID with the counts of how many each side opened
and may open. The table is an object the connection holds (``Connection.streams``), not
a part of it: it calls nothing of the connection's, and what the connection has to do
after a change (report a stream opened, send MAX_STREAMS) it reads from the return
values. It imports no other part of the connection, so each part can name it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dtp.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from dtp.protocol._recovery import RangeSet
from dtp.protocol._state import RecvState, SendState
from dtp.protocol.connection._config import VARINT_MAX

NO_RANGES = RangeSet()
"""A stream's ``retransmit`` and ``acked`` until a lossy carrier's first use of them
(:func:`own_ranges`): on a reliable carrier they stay empty, and a connection that
holds a stream open holds no two sets and their lists for the garbage collector to
walk. Never changed: whoever adds to a stream's set makes it its own first."""


def own_ranges(ranges: RangeSet) -> RangeSet:
    """``ranges``, or a new set of its own in place of :data:`NO_RANGES`."""
    return RangeSet() if ranges is NO_RANGES else ranges


@dataclass(slots=True)
class Stream:
    """One stream's state: its sending half and its receiving half (slotted: an
    instance dict would be one more object a stream)."""

    stream_id: int
    # sending half: buf holds bytes from base_offset (unacked or unsent)
    send_state: SendState = SendState.OPEN
    send_buf: bytearray = field(default_factory=bytearray)
    base_offset: int = 0
    next_offset: int = 0  # first byte never sent
    send_credit: int = 0  # peer's MAX_STREAM_DATA
    retransmit: RangeSet = NO_RANGES  # offsets to send again (lossy carriers)
    acked: RangeSet = NO_RANGES  # (lossy carriers)
    fin_pending_resend: bool = False
    fin_acked: bool = False
    announce: bool = False  # opened by us: tell the peer even before any data
    # receiving half
    recv_state: RecvState = RecvState.OPEN
    delivered: int = 0  # bytes handed to the application (in events)
    consumed: int = 0  # bytes the application has read (acknowledge_read)
    recv_highest: int = 0  # highest offset + 1 seen (flow-control accounting)
    recv_limit: int = 0  # our advertised MAX_STREAM_DATA
    final_size: int | None = None
    reasm: Any = None  # C reassembly buffer, lossy carriers only

    @property
    def end_offset(self) -> int:
        return self.base_offset + len(self.send_buf)

    def unsent(self) -> int:
        return self.end_offset - self.next_offset


def send_done(stream: Stream) -> bool:
    """Whether ``stream``'s FIN and every byte before it were acknowledged (RFC 9000's
    "Data Recvd"; on a reliable carrier, handed to it). On a lossy carrier the FIN's
    record can be acknowledged before a resent chunk, hence the other checks."""
    return (
        stream.send_state is SendState.FIN_SENT
        and stream.fin_acked
        and not stream.send_buf  # (base_offset == end_offset, without the property's call)
        and not stream.retransmit.ranges  # (RangeSet's __bool__, without its call)
    )


class StreamTable:
    """The streams of one connection by ID and how many each side may open (MAX_STREAMS
    both ways), and the connection-level flow-control counts (``conn_*``) that the
    connection, its fast paths and the record layer move as bytes go and come. An object
    the connection holds (``Connection.streams``) that never calls back into it: what
    the connection must do after a change it learns from the return values."""

    __slots__ = (
        "by_id",
        "conn_consumed",
        "conn_credit_at",
        "conn_received",
        "conn_recv_limit",
        "conn_send_credit",
        "conn_sent",
        "defers_credit",
        "first_carried",
        "first_unclaimed",
        "is_client",
        "local_max",
        "next_id",
        "opened_by_us",
        "peer_done",
        "peer_max",
        "peer_opened",
        "send_window",
        "stream_credit_at",
        "stream_window",
        "untaken",
    )

    def __init__(
        self, *, is_client: bool, max_streams: int, stream_window: int, connection_window: int
    ) -> None:
        self.by_id: dict[int, Stream] = {}
        self.is_client = is_client
        self.stream_window = stream_window  # our MAX_STREAM_DATA for a new stream
        self.send_window = 0  # the peer's (its "msd" parameter, once it came)
        self.next_id = 0 if is_client else 1  # the ID of the next stream we open
        self.peer_max = 0  # how many streams we may open in total
        self.opened_by_us = 0
        self.local_max = max_streams  # how many peer-opened streams we allow at once
        self.peer_opened = 0
        self.peer_done = 0  # peer streams whose place went back to the peer
        # peer streams the application has not taken yet, once defers_credit (else
        # their place returns as they end; see Connection.defer_stream_credit): made
        # at the first such stream and let go when the last is taken, so that a
        # connection none waits on holds no set (None: none untaken)
        self.defers_credit = False
        self.untaken: set[int] | None = None
        # client, IK: stream 0 was opened by the acceptance; open() hands it out
        self.first_unclaimed = False
        # whether the client's first stream (0) has carried a request: data went on it,
        # either way (Connection.requests_made; set once seen, and as it is forgotten)
        self.first_carried = False
        # connection-level flow control (docs/protocol.md, section 9)
        self.conn_send_credit = 0  # the peer's MAX_DATA
        self.conn_sent = 0  # new bytes sent over all streams
        self.conn_recv_limit = connection_window  # our MAX_DATA
        self.conn_received = 0  # highest offsets received, summed
        self.conn_consumed = 0  # bytes the application read, summed
        # credit updates go out when less than this much of a window is left
        # (Connection.pace_credit changes them)
        self.conn_credit_at = connection_window * 3 // 4
        self.stream_credit_at = stream_window * 3 // 4

    def is_ours(self, stream_id: int) -> bool:
        # (a client opens the even stream IDs, a server the odd ones)
        return (stream_id % 2 == 0) == self.is_client

    def peer_next_id(self) -> int:
        first = 1 if self.is_client else 0
        return first + 2 * self.peer_opened

    def client_streams(self) -> int:
        """How many streams the client opened (its first one included, whether or not
        it carried a request: ``Connection.requests_made`` says what is metered)."""
        return self.opened_by_us if self.is_client else self.peer_opened

    def first_carries(self, stream: Stream) -> bool:
        """Whether the client's first stream, ``stream``, carries a request: data went on
        it, either way (the next byte to send, or the highest received, past 0: both
        sides see the same, but for what is in flight). Once seen, remembered
        (:attr:`first_carried`)."""
        carried = stream.next_offset > 0 or stream.recv_highest > 0
        if carried:
            self.first_carried = True
        return carried

    def ended(self, stream_id: int) -> bool:
        """Whether ``stream_id`` was opened (by either side) and is forgotten since."""
        if stream_id in self.by_id or stream_id < 0:
            return False
        if self.is_ours(stream_id):
            return stream_id < self.next_id
        return stream_id < self.peer_next_id()

    def check_not_unopened(self, stream_id: int) -> None:
        """A frame naming a stream of our own parity that we never opened: no honest
        peer can know of it (STREAM on one always failed; the other stream frames were
        dropped unnoticed)."""
        if self.is_ours(stream_id) and stream_id >= self.next_id:
            raise RemoteProtocolError(
                f"a frame on stream {stream_id}, which we never opened", ErrorCode.FRAME_VALUE
            )

    def can_open(self) -> bool:
        return self.first_unclaimed or self.opened_by_us < self.peer_max

    def open(self) -> int:
        """Open a stream of ours (announced to the peer even before any data); returns
        its ID. Past the peer's limit: LocalProtocolError."""
        if self.first_unclaimed:
            self.first_unclaimed = False
            return 0
        if self.opened_by_us >= self.peer_max:
            raise LocalProtocolError(f"peer allows {self.peer_max} streams; wait for one to finish")
        stream_id = self.next_id
        self.next_id += 2
        self.opened_by_us += 1
        self.create(stream_id).announce = True
        return stream_id

    def open_first(self) -> bool:
        """IK client, on acceptance: stream 0 opens without a frame of its own, for
        :meth:`open` to hand out; returns whether it did."""
        if self.next_id != 0 or self.peer_max <= 0:
            return False
        self.create(0)
        self.next_id = 2
        self.opened_by_us = 1
        self.first_unclaimed = True
        return True

    def open_peer_up_to(self, stream_id: int) -> range:
        """A peer stream ID implicitly opens every lower peer stream ID (as in QUIC):
        opens them, and returns their IDs (the caller reports each opened). Past our
        limit: RemoteProtocolError, with nothing opened."""
        first = 1 if self.is_client else 0
        new_total = (stream_id - first) // 2 + 1
        if new_total > self.local_max + self.peer_done:
            raise RemoteProtocolError("peer opened too many streams", ErrorCode.FRAME_VALUE)
        opened = range(first + 2 * self.peer_opened, stream_id + 1, 2)  # (from peer_next_id)
        untaken = self.untaken
        if untaken is None and self.defers_credit and opened:
            untaken = self.untaken = set()
        by_id = self.by_id
        for sid in opened:
            # (create, inline: a stream a call opens each comes here)
            if sid not in by_id:
                by_id[sid] = Stream(
                    sid, send_credit=self.send_window, recv_limit=self.stream_window
                )
            self.peer_opened += 1
            if untaken is not None:
                untaken.add(sid)
        return opened

    def get(self, stream_id: int) -> Stream:
        """The open stream ``stream_id`` (LocalProtocolError: no such stream)."""
        stream = self.by_id.get(stream_id)
        if stream is None:
            raise LocalProtocolError(f"no stream {stream_id}")
        return stream

    def create(self, stream_id: int) -> Stream:
        """The stream ``stream_id``, made with the windows' credit if it is new."""
        stream = self.by_id.get(stream_id)
        if stream is None:
            stream = Stream(stream_id, send_credit=self.send_window, recv_limit=self.stream_window)
            self.by_id[stream_id] = stream
        return stream

    def forget_if_done(self, stream: Stream) -> bool:
        """Forget ``stream`` once both its halves ended; returns whether a peer stream's
        place went back to the peer with it (a MAX_STREAMS is then due)."""
        state = stream.send_state
        # (send_done asked only of a stream whose FIN went: it is false of any other)
        done_sending = state is SendState.RESET or (
            state is SendState.FIN_SENT and send_done(stream)
        )
        recv_done = stream.recv_state in (RecvState.DONE, RecvState.RESET)
        if done_sending and recv_done and stream.stream_id in self.by_id:
            if stream.stream_id == 0:
                self.first_carries(stream)  # (remembered: forgotten, it is asked no more)
            del self.by_id[stream.stream_id]
            if not self.is_ours(stream.stream_id) and (
                self.untaken is None or stream.stream_id not in self.untaken
            ):
                self.peer_done += 1
                return True
        return False

    def max_streams_limit(self) -> int:
        """The total of peer streams we allow, as a MAX_STREAMS frame carries it."""
        return min(self.local_max + self.peer_done, VARINT_MAX)
