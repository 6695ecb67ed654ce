"""The sans-I/O sync session, :class:`SyncSession` (the protocol: :mod:`dtp.graph.sync`):
made, started and closed, fed the peer's bytes and read for its own, and its timer; its
input and its pushes are its parts (:mod:`~dtp.graph.sync._receiving`,
:mod:`~dtp.graph.sync._pushes`)."""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Iterator

from dtp.errors import ErrorCode
from dtp.graph._arguments import check_int
from dtp.graph._store import Graph
from dtp.graph.rules import Refusal
from dtp.graph.sync._messages import (
    _LEN,
    _PUSH_LOW,
    _WANT_LEAVES,
    HELLO,
    MAX_BACKLOG,
    MAX_MESSAGE,
    VERSION,
    WANT,
    Summary,
    _fail,
)
from dtp.graph.sync._pushes import SessionPushes
from dtp.graph.sync._receiving import SessionInput


class SyncSession(SessionInput, SessionPushes):
    """One side of a graph sync session over one byte stream (sans-I/O).

    Call :meth:`start` once, feed the peer's bytes to :meth:`receive_data`, send what
    :meth:`data_to_send` returns. ``on_output`` (optional) is called -- possibly from
    another thread, when a local change is queued for the peer -- whenever new output
    is ready. ``live=False`` stops forwarding local changes after the initial exchange
    (a one-shot catch-up).

    ``max_backlog``: bytes of live changes queued for the peer before the session gives
    up on it (``lagging``). What :meth:`data_to_send` handed out no longer counts (the
    session cannot tell when the caller's send of it is done), so a session holds up to
    about twice that: a queue full behind a writer blocked sending the last one.
    """

    def __init__(
        self,
        graph: Graph,
        *,
        max_message: int = MAX_MESSAGE,
        live: bool = True,
        max_backlog: int = MAX_BACKLOG,
    ) -> None:
        check_int("max_message", max_message, 1)
        check_int("max_backlog", max_backlog, 0)
        if not isinstance(live, bool):
            raise TypeError(f"live must be a bool, not {type(live).__name__}")
        self.graph = graph
        self.max_message = max_message
        self.max_backlog = max_backlog
        self.lagging = False  # live changes overflowed max_backlog: the session is over
        self._queued = 0
        self.live = live
        self.on_output: Callable[[], None] | None = None
        self._out: deque[bytes] = deque()
        self._out_lock = threading.Lock()
        self._in = bytearray()
        self._started = False
        self._closed = False
        self.failed: BaseException | None = None  # the error that ended the session
        self._my_root: tuple[int, int] = (0, 0)
        self.peer_root: tuple[int, int] | None = None
        self.peer_replica: bytes | None = None
        self._sent: dict[tuple[int, int], Summary] = {}  # my child summaries, awaiting theirs
        # The comparison's pushes are made as the peer reads (data_to_send), not queued
        # whole: a fresh peer's HELLO would otherwise queue a copy of the table, twice
        # its size, at once. ``_lock`` guards them and the END decision: the reader
        # thread adds pushes, the writer thread makes them. (Lock order: this lock,
        # then the graph's; nothing under the graph's lock takes this one.)
        self._lock = threading.RLock()
        self._pushes: deque[tuple[int, int]] = deque()  # summary nodes (level, prefix)
        self._node_push: Iterator[bytes] | None = None  # the nodes' batches under way
        self._export: Iterator[bytes] | None = None  # the whole-table push under way
        self._push_everything = False  # the whole table is (being) pushed: nodes are not
        # Leaves the peer asked for again (WANT), in order; at most _LEAVES of them.
        self._peer_wants: dict[int, None] = {}
        self._want_push: Iterator[bytes] | None = None  # the wanted leaves' batches under way
        # Updates of the peer's that we dropped (the deferred queue was full): leaf ->
        # the smallest such state. Once the clock passes it the update would be merged,
        # not deferred: the leaf is then asked for again (WANT). At most _LEAVES entries,
        # whatever the peer sends.
        self._wanted: dict[int, float] = {}
        self._want_at = math.inf  # the smallest state in _wanted
        self.end_sent = False
        self.end_received = False
        self.peer_reports = False  # the peer reads REFUSED (an empty WANT said so)
        self.peer_report_final = False  # its final REFUSED came
        self.peer_refusals: deque[Refusal] = deque(maxlen=1024)
        self._held_back: list[Refusal] = []
        self._held_back_bytes = 0
        self._reports_sent = 0
        self.stats: dict[str, int] = {
            "bytes_sent": 0,
            "bytes_received": 0,
            "messages_sent": 0,
            "messages_received": 0,
            "batches_sent": 0,
            "batches_received": 0,
            "summaries_sent": 0,
            "wants_sent": 0,
            "wants_received": 0,
            "refused": 0,
            "refused_by_peer": 0,
        }

    def start(self) -> None:
        """Queue HELLO and begin forwarding local changes."""
        if self._started:
            return
        self._started = True

        def hello(root: tuple[int, int]) -> None:
            digest, count = root
            self._send([HELLO, VERSION, self.graph.replica_id, count, digest])
            # "I read REFUSED": an empty WANT, which asks nothing of a peer that does not
            # (sent before any DATA, so the peer knows it before it merges ours)
            self._send([WANT, []])

        # (HELLO queued as the listener is registered, under the graph's lock: no
        # change's DATA can go out before it)
        self._my_root = self.graph.listen(self._on_change, self, then=hello)

    @property
    def synced(self) -> bool:
        """Both ENDs are through: each side has what the other had at the start -- and,
        with a peer that reports what it refuses, its final REFUSED is in too: it has
        merged (or refused, and said so) everything we sent up to our END."""
        return self.end_sent and self.peer_done

    @property
    def peer_done(self) -> bool:
        """The peer owes nothing more of the initial exchange: its END is in, and its
        final REFUSED when it sends one."""
        return self.end_received and (self.peer_report_final or not self.peer_reports)

    def data_to_send(self) -> bytes:
        """Everything queued for the peer (empties the queue).

        Pushes (the comparison's, and the leaves the peer asked for again) are made
        here, a batch at a time while little is queued: what the session holds stays
        about one batch however large the table, and it grows only as the caller sends
        (flow control)."""
        if (
            self._queued < _PUSH_LOW
            and (
                self._pushes
                or self._node_push is not None
                or self._export is not None
                or self._peer_wants
                or self._want_push is not None
            )
            and not self._closed
        ):
            self._push_step()
        with self._out_lock:
            if not self._out:
                return b""
            data = b"".join(self._out)
            self._out.clear()
            self._queued = 0
        return data

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the peer, in any split; handles every complete message.

        An error ends the session: it stops forwarding changes, and later calls raise
        GraphSyncError without looking at their bytes (what follows a protocol error is
        not to be merged)."""
        if self.failed is not None:
            raise _fail(f"the session ended with an earlier error: {self.failed}")
        if self._closed:
            return
        if not self._started:
            self.start()
        buf = self._in
        buf += data
        self.stats["bytes_received"] += len(data)
        pos = 0
        try:
            while len(buf) - pos >= 4:
                (size,) = _LEN.unpack_from(buf, pos)
                if size > self.max_message:
                    raise _fail(
                        f"message of {size} bytes exceeds the {self.max_message} cap",
                        ErrorCode.HAM_SIZE,
                    )
                if len(buf) - pos - 4 < size:
                    break
                body = bytes(buf[pos + 4 : pos + 4 + size])
                pos += 4 + size
                self._handle(body)
            if self._wanted:
                self.handle_timer()
        except BaseException as exc:
            self.failed = exc
            self.close()
            raise
        finally:
            del buf[:pos]

    def handle_timer(self, machine_state: float | None = None) -> int:
        """Ask the peer again (WANT) for the leaves of its updates that we dropped and
        whose state the clock has now reached (``machine_state``: the graph's clock by
        default); returns how many leaves were asked for. The runners call it every
        tick, and :meth:`receive_data` while any are waiting.

        An update ahead of the clock that finds the deferred queue full is dropped (a
        hostile peer may keep it full): once the clock reaches its state it is merged
        without being deferred, so the peer's fields of that leaf are asked for again
        then -- not before, or they would be dropped again."""
        if not self._wanted or self._closed:
            return 0
        now = self.graph.clock.machine_state() if machine_state is None else machine_state
        if now < self._want_at:
            return 0
        with self._lock:
            due = sorted(leaf for leaf, state in self._wanted.items() if state <= now)
            for leaf in due:
                del self._wanted[leaf]
            self._want_at = min(self._wanted.values(), default=math.inf)
        for i in range(0, len(due), _WANT_LEAVES):
            self.stats["wants_sent"] += 1
            self._send([WANT, due[i : i + _WANT_LEAVES]])
        return len(due)

    def close(self) -> None:
        """Stop forwarding changes (idempotent)."""
        if not self._closed:
            # (what was still to push is not pushed any more: _push_step drops it. Not
            # under self._lock: a lagging session closes from _on_change, under the
            # graph's lock, while the writer may hold self._lock waiting for the graph's)
            self._closed = True
            self.graph.remove_listener(self)

    def _on_change(self, changed: bytes, origin: object) -> None:
        if self._closed or (not self.live and self.end_sent):
            return
        # (what is queued already: counted with the change, one put larger than the
        # backlog -- the application's own -- ended every live session, those keeping
        # up too; the queue stays bounded by the backlog plus one change)
        if self._queued > self.max_backlog:
            # the peer is not keeping up: stop queueing (memory stays bounded) and let
            # the runner end the session; a later sync catches up from the summaries
            self.lagging = True
            self.close()
            if self.on_output is not None:
                self.on_output()
            return
        self._send_batch(changed)
