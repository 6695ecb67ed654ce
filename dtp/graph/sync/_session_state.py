"""What one :class:`~dtp.graph.sync.SyncSession` knows of itself, declared once for every
part of it (its input and its pushes), and the members they all use: queueing a message
for the peer, waking the writer, pushing the whole table, and sending END."""

from __future__ import annotations

import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import msgpack

from dtp.graph._batch import batch_count, entries
from dtp.graph._store import Graph
from dtp.graph.rules import Refusal
from dtp.graph.sync._messages import _LEN, DATA, END, Summary
from dtp.native.reference._limits import HAM_BATCH_VERSION

_BATCH_HEADER = struct.Struct("<BI")  # a HAM batch's version and count (protocol.md 6.1)


class SessionState:
    """The state of one sync session, declared once for every part of
    :class:`~dtp.graph.sync.SyncSession` (which sets it all in its constructor)."""

    graph: Graph
    max_message: int
    """The cap of one message, both ways."""
    max_backlog: int
    """Bytes of live changes queued for the peer before the session gives up on it."""
    lagging: bool
    """Live changes overflowed max_backlog: the session is over."""
    _queued: int
    """Bytes in ``_out``."""
    live: bool
    """Forward local changes after the initial exchange (False: a one-shot catch-up)."""
    on_output: Callable[[], None] | None
    """Called whenever new output is ready (possibly from another thread)."""
    _out: deque[bytes]
    """Frames queued for the peer, under ``_out_lock``."""
    _out_lock: threading.Lock
    _in: bytearray
    """The peer's bytes not yet a whole message."""
    _started: bool
    _closed: bool
    failed: BaseException | None
    """The error that ended the session."""
    _my_root: tuple[int, int]
    """The root summary (digest, count) sent in our HELLO."""
    peer_root: tuple[int, int] | None
    """The root summary in the peer's HELLO; None until it came."""
    peer_replica: bytes | None
    """The replica ID in the peer's HELLO."""
    _sent: dict[tuple[int, int], Summary]
    """My child summaries, awaiting theirs."""
    _lock: threading.RLock
    """Guards the pushes below and the END decision: the reader thread adds pushes, the
    writer thread makes them. (Lock order: this lock, then the graph's; nothing under the
    graph's lock takes this one.)"""
    _pushes: deque[tuple[int, int]]
    """Summary nodes (level, prefix) to push, made as the peer reads (data_to_send)."""
    _node_push: Iterator[bytes] | None
    """The nodes' batches under way."""
    _export: Iterator[bytes] | None
    """The whole-table push under way."""
    _push_everything: bool
    """The whole table is (being) pushed: nodes are not."""
    _peer_wants: dict[int, None]
    """Leaves the peer asked for again (WANT), in order; at most _LEAVES of them."""
    _want_push: Iterator[bytes] | None
    """The wanted leaves' batches under way."""
    _wanted: dict[int, float]
    """Updates of the peer's that we dropped (the deferred queue was full): leaf -> the
    smallest such state, asked for again (WANT) once the clock passes it. At most _LEAVES
    entries, whatever the peer sends."""
    _want_at: float
    """The smallest state in ``_wanted`` (math.inf: none)."""
    end_sent: bool
    end_received: bool
    peer_reports: bool
    """The peer reads REFUSED (it said so with an empty WANT after its HELLO): it is
    told what of its updates was refused, and sends its final REFUSED after our END."""
    peer_report_final: bool
    """The peer's final REFUSED came: it has merged everything we sent up to our END."""
    peer_refusals: deque[Refusal]
    """What the peer refused of our updates, as it told us (the latest 1024)."""
    _held_back: list[Refusal]
    """Updates of the peer's that a rule refused before its END, tried again once the
    END is in (a vote that came before its proposal); at most ``_HELD_BACK`` bytes."""
    _held_back_bytes: int
    _reports_sent: int
    """Refusals described to the peer so far (at most MAX_REPORTS)."""
    stats: dict[str, int]
    """Bytes, messages, batches, summaries and WANTs sent and received."""

    def _send(self, message: list[Any]) -> None:
        body = msgpack.packb(message, use_bin_type=True)
        frame = _LEN.pack(len(body)) + body
        with self._out_lock:
            self._out.append(frame)
            self._queued += len(frame)
            self.stats["bytes_sent"] += len(frame)
            self.stats["messages_sent"] += 1
        if self.on_output is not None:
            self.on_output()

    def _send_batch(self, batch: bytes) -> None:
        if len(batch) + 64 > self.max_message and batch_count(batch) > 1:
            # a local put bigger than a message: split it (down to single updates: one
            # update larger than the cap of the session goes alone, for the peer's cap to
            # judge -- splitting on would recurse until RecursionError, raised out of the
            # put() that made the change)
            items = entries(batch)
            half = len(items) // 2
            for part in (items[:half], items[half:]):
                header = _BATCH_HEADER.pack(HAM_BATCH_VERSION, len(part))
                self._send_batch(header + b"".join(e[4] for e in part))
            return
        self.stats["batches_sent"] += 1
        self._send([DATA, batch])

    def _push_all(self) -> None:
        """Push the whole table (lock held): from the C export, a batch per step.

        Once: it holds every field present when the session began listening, and
        every change since is forwarded live -- any node push is covered too."""
        if not self._push_everything:
            self._push_everything = True
            self._pushes.clear()
            self._node_push = None
            self._export = self.graph.export_stream()
            self._output_ready()

    def _output_ready(self) -> None:
        """Pushes were queued: the writer makes them in data_to_send (wake it)."""
        if self.on_output is not None:
            self.on_output()

    def _maybe_end(self) -> None:
        """Send END once every SUM sent was answered and every push made (lock held)."""
        if (
            not self.end_sent
            and not self._sent
            and self.peer_root is not None
            and not self._pushes
            and self._node_push is None
            and self._export is None
        ):
            self.end_sent = True
            self._send([END])
