"""Graph sync over a DTP stream (docs/graph.md, "Sync protocol").

:class:`SyncSession` is the sans-I/O protocol: bytes in (:meth:`~SyncSession.receive_data`),
bytes out (:meth:`~SyncSession.data_to_send`), no sockets, no clock. Both peers run the
same machine:

1. Each sends HELLO with the summary of its whole table (an XOR digest of every field's
   hash, and the field count).
2. Summaries form a tree: root -> 256 nodes -> 65536 leaves (souls are placed by
   ``blake2b(soul, 2 bytes)``). For a node whose digests differ, both sides take the
   same decision from the same two summaries: if it is a leaf, if either side has no
   field under it, or if both together have at most :data:`SMALL` fields, each side
   *pushes* its fields under it (DATA); otherwise each side sends the summaries of the
   node's children (SUM) and the comparison goes on one level down.
3. When a side has pushed everything its decisions call for, it sends END. The
   peer's END means everything the peer had at the start has arrived; it comes after
   the peer's answer to every SUM we sent (an END before one is a protocol error).
4. From the start on, every change to the local table (a local write, or a merge from
   a third peer) is forwarded as DATA -- the live phase needs no further message.
5. An update of the peer's dropped because the deferred queue was full is asked for
   again (WANT: the leaves to push again) once the clock reaches its state.

Pushes are made as the peer reads (:meth:`SyncSession.data_to_send`, a batch at a time,
each read from the table as it is made), so a session holds about one batch of its push
whatever the table's size.

Peers already in sync exchange two HELLOs and two ENDs. A fresh peer receives the table
straight from the HAM export (batches of about 1 MiB, one C call each side).

Framing: each message is a 4-byte big-endian length, then a msgpack array whose first
item is the message type. Every message is bounded (``max_message``); anything
malformed raises :class:`GraphSyncError` (a :class:`~dtp.errors.RemoteProtocolError`),
which ends that sync session only.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

import msgpack

from dtp.errors import ConnectionClosed, DTPError, ErrorCode, RemoteProtocolError
from dtp.graph._batch import batch_count, entries
from dtp.graph.arguments import check_int
from dtp.graph.store import Graph
from dtp.graph.summaries import FANOUT_BITS, LEAF_BITS, LEAF_LEVEL

VERSION = 1
HELLO, SUM, DATA, END, WANT = 1, 2, 3, 4, 5
SMALL = 64
"""Nodes holding at most this many fields (both sides together) are pushed whole."""
MAX_MESSAGE = 4 << 20
"""Default cap of one message (HAM export batches are about 1 MiB)."""
_LEN = struct.Struct(">I")
_U64 = 1 << 64
_PUSH_LOW = 1 << 20  # a push makes its next batch once less than this is queued
_WANT_LEAVES = 1024  # leaves listed in one WANT message (about 3 KiB)
_LEAVES = 1 << LEAF_BITS


class GraphSyncError(RemoteProtocolError):
    """The peer broke the sync protocol; the session is over."""

    code = ErrorCode.HAM_MALFORMED


class SyncBacklogExceeded(DTPError):
    """The peer reads too slowly: live changes for it passed the backlog limit of
    the session, so the session ended. Reconnecting catches up through the summaries."""


MAX_BACKLOG = 64 << 20  # bytes of live changes queued for one peer before giving up


def _fail(message: str, code: ErrorCode = ErrorCode.HAM_MALFORMED) -> GraphSyncError:
    return GraphSyncError(f"graph sync: {message}", code)


Summary = dict[int, tuple[int, int]]  # child prefix -> (digest, count)


def _check_timeout(name: str, value: object) -> None:
    """A deadline in seconds: a finite number > 0 (TypeError / ValueError naming it)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number of seconds > 0, not {value!r}")


def _check_tick(tick: object) -> None:
    """The runners' tick: a finite number of seconds > 0 (NaN, 0 or less would spin)."""
    _check_timeout("tick", tick)


def _differs(mine: tuple[int, int], theirs: tuple[int, int]) -> bool:
    return mine != theirs


def _push_whole(level: int, mine: tuple[int, int], theirs: tuple[int, int]) -> bool:
    """The shared decision (step 2): push the node's fields, or compare its children."""
    return level >= LEAF_LEVEL or not mine[1] or not theirs[1] or mine[1] + theirs[1] <= SMALL


class SyncSession:
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
        }

    # -- the caller's side --------------------------------------------------------------------

    def start(self) -> None:
        """Queue HELLO and begin forwarding local changes."""
        if self._started:
            return
        self._started = True

        def hello(root: tuple[int, int]) -> None:
            digest, count = root
            self._send([HELLO, VERSION, self.graph.replica_id, count, digest])

        # (HELLO queued as the listener is registered, under the graph's lock: no
        # change's DATA can go out before it)
        self._my_root = self.graph.listen(self._on_change, self, then=hello)

    @property
    def synced(self) -> bool:
        """Both ENDs are through: each side has what the other had at the start."""
        return self.end_sent and self.end_received

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

    # -- output -----------------------------------------------------------------------------------

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
                count = len(part).to_bytes(4, "little")
                self._send_batch(b"\x01" + count + b"".join(e[4] for e in part))
            return
        self.stats["batches_sent"] += 1
        self._send([DATA, batch])

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

    # -- input ------------------------------------------------------------------------------

    def _handle(self, body: bytes) -> None:
        batch = _data_batch(body)
        if batch is not None:
            message: Any = [DATA, batch]
        elif len(body) > _SMALL_MESSAGE:
            # only DATA is long (read above without msgpack's decoder); decoded, a long
            # message of anything else cost about 75 bytes of memory a byte (a run of
            # empty arrays: 300 MB for one 4 MiB message, before HELLO was looked at)
            raise _fail(f"a message of {len(body)} bytes that is not DATA")
        else:
            try:
                # unpackb bounds every length by len(body), itself capped as above
                message = msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=True)
            except Exception as exc:  # msgpack raises several unrelated types
                raise _fail(f"undecodable message ({type(exc).__name__})") from None
        if not isinstance(message, list) or not message or type(message[0]) is not int:
            raise _fail("a message is an array starting with its type")
        self.stats["messages_received"] += 1
        kind = message[0]
        if kind == HELLO:
            self._on_hello(message)
            return
        if self.peer_root is None:
            raise _fail("the first message must be HELLO")
        if kind == DATA:
            if len(message) != 2 or not isinstance(message[1], bytes):
                raise _fail("DATA is [3, batch]")
            self.stats["batches_received"] += 1
            report = self.graph.merge(message[1], origin=self)
            if report.dropped_leaves:
                self._note_dropped(report.dropped_leaves)
        elif kind == SUM:
            self._on_sum(message)
        elif kind == WANT:
            self._on_want(message)
        elif kind == END:
            if len(message) != 1 or self.end_received:
                raise _fail("END is [4], once")
            if self._sent:
                # The peer answers each of our SUMs before its END. Taken, this END
                # would end the runners' reading while our own END waits for those
                # answers: a one-shot catch-up would wait for good.
                level, prefix = next(iter(self._sent))
                raise _fail(f"END before the SUM for node ({level}, {prefix})")
            self.end_received = True
        else:
            raise _fail(f"unknown message type {kind}")

    def _note_dropped(self, dropped: Mapping[int, float]) -> None:
        """Remember to ask again for the leaves of updates the merge dropped."""
        with self._lock:
            wanted = self._wanted
            for leaf, state in dropped.items():
                old = wanted.get(leaf)
                if old is None or state < old:
                    wanted[leaf] = state
                if state < self._want_at:
                    self._want_at = state

    def _on_want(self, message: list[Any]) -> None:
        leaves = message[1] if len(message) == 2 else None
        if not isinstance(leaves, list) or len(leaves) > _LEAVES:
            raise _fail("WANT is [5, [leaf, ...]]")
        for leaf in leaves:
            if type(leaf) is not int or not 0 <= leaf < _LEAVES:
                raise _fail("bad WANT leaf")
        self.stats["wants_received"] += 1
        with self._lock:
            # (a set: a peer asking again and again costs no more than all leaves once)
            self._peer_wants.update(dict.fromkeys(leaves))
        self._output_ready()

    def _on_hello(self, message: list[Any]) -> None:
        if self.peer_root is not None:
            raise _fail("HELLO twice")
        if (
            len(message) != 5
            or type(message[1]) is not int  # (True and 1.0 equal 1)
            or message[1] != VERSION
            or not isinstance(message[2], bytes)
            or len(message[2]) != 16
            or not _is_count(message[3])
            or not _is_digest(message[4])
        ):
            raise _fail("HELLO is [1, 1, replica id (16 bytes), count, digest]")
        self.peer_replica = message[2]
        self.peer_root = (message[4], message[3])
        mine = self._my_root
        with self._lock:
            if _differs(mine, self.peer_root):
                if _push_whole(0, mine, self.peer_root):
                    if mine[1]:
                        self._push_all()
                else:
                    self._descend(0, 0)
            self._maybe_end()

    def _on_sum(self, message: list[Any]) -> None:
        if len(message) != 4 or not _is_count(message[1]) or not _is_count(message[2]):
            raise _fail("SUM is [2, level, prefix, [[child, digest, count], ...]]")
        with self._lock:
            self._on_sum_locked(message)

    def _on_sum_locked(self, message: list[Any]) -> None:
        level, prefix, items = message[1], message[2], message[3]
        mine = self._sent.pop((level, prefix), None)
        if mine is None:
            raise _fail(f"SUM for node ({level}, {prefix}) that was not compared")
        if not isinstance(items, list) or len(items) > 1 << FANOUT_BITS:
            raise _fail("SUM lists at most 256 children")
        first = prefix << FANOUT_BITS
        theirs: Summary = {}
        for item in items:
            if (
                not isinstance(item, list)
                or len(item) != 3
                or not _is_count(item[0])
                or not first <= item[0] < first + (1 << FANOUT_BITS)
                or not _is_digest(item[1])
                or not _is_count(item[2])
            ):
                raise _fail("bad SUM entry")
            if item[0] in theirs:
                # (the last one would win here; another reader might take the first)
                raise _fail(f"SUM lists child {item[0]} twice")
            theirs[item[0]] = (item[1], item[2])
        child_level = level + 1
        push: list[tuple[int, int]] = []
        pushed = 0
        for child in sorted(set(mine) | set(theirs)):
            a, b = mine.get(child, (0, 0)), theirs.get(child, (0, 0))
            if not _differs(a, b):
                continue
            if _push_whole(child_level, a, b):
                if a[1]:
                    push.append((child_level, child))
                    pushed += a[1]
            else:
                self._descend(child_level, child)
        if push:
            if pushed * 2 > len(self.graph):
                self._push_all()  # cheaper from the C export than field by field
            elif not self._push_everything:
                self._pushes.extend(push)
                self._output_ready()
        self._maybe_end()

    def _descend(self, level: int, prefix: int) -> None:
        children = self.graph.child_summaries(level, prefix)
        self._sent[(level, prefix)] = children
        self.stats["summaries_sent"] += 1
        self._send([SUM, level, prefix, [[c, d, n] for c, (d, n) in sorted(children.items())]])

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

    def _push_step(self) -> None:
        """Make the next batch of what is to be pushed (the writer's thread): one batch
        at most, read from the table now, so that what is queued stays about one batch
        however large the push."""
        with self._lock:
            if self._closed:
                self._pushes.clear()
                self._node_push = None
                self._export = None
                self._peer_wants.clear()
                self._want_push = None
                return
            if self._export is not None:
                try:
                    batch = next(self._export, None)
                except RuntimeError:
                    # the table gained a field since the last batch: the export's walk
                    # would skip entries. Go on by summary nodes, which new fields do
                    # not disturb (those were forwarded live): every level-1 node,
                    # again from the start -- at most one more pass over the table.
                    self._export = None
                    nodes = sorted(self.graph.child_summaries(0, 0))
                    self._pushes.extend((1, prefix) for prefix in nodes)
                    self._maybe_end()
                    return
                if batch is None:
                    self._export = None
                    self._maybe_end()
                elif batch_count(batch):
                    self._send_batch(batch)
                return
            if self._pushes or self._node_push is not None:
                if self._next_node_batch():
                    return
                self._maybe_end()
            if self._peer_wants or self._want_push is not None:
                self._next_want_batch()

    def _next_node_batch(self) -> bool:
        """Send the next batch of the summary nodes to push (lock held); False when
        none is left. The nodes queued when a walk starts are walked together (their
        batches are full however small each node), those queued meanwhile next."""
        while True:
            if self._node_push is None:
                if not self._pushes:
                    return False
                nodes = list(self._pushes)
                self._pushes.clear()
                self._node_push = self.graph.node_batches(nodes)
            batch = next(self._node_push, None)
            if batch is not None:
                self._send_batch(batch)
                return True
            self._node_push = None

    def _next_want_batch(self) -> None:
        """Send the next batch of the leaves the peer asked for again (lock held)."""
        while True:
            if self._want_push is None:
                if not self._peer_wants:
                    return
                leaves = [(LEAF_LEVEL, leaf) for leaf in self._peer_wants]
                self._peer_wants.clear()
                self._want_push = self.graph.node_batches(leaves)
            batch = next(self._want_push, None)
            if batch is not None:
                self._send_batch(batch)
                return
            self._want_push = None

    def _end_stalled(self) -> bool:
        """The peer's END is in and ours is not out, yet nothing of ours is left to
        make that would send it: only more from the peer could (a state the peer's END
        is refused in). The runners, which stop reading at the peer's END, check it
        rather than wait for our END without a deadline."""
        with self._lock:
            return (
                self.end_received
                and not self.end_sent
                and not self._closed
                and not self._pushes
                and self._node_push is None
                and self._export is None
            )

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


#: The longest message other than DATA a peer may send: a WANT of every leaf (at most 3
#: bytes each) or a SUM of every child of a node (about 20 bytes each), with room to spare.
_SMALL_MESSAGE: Final = 256 << 10
_BIN_HEADERS: Final = {0xC4: 1, 0xC5: 2, 0xC6: 4}  # msgpack bin 8/16/32: its length's size


def _data_batch(body: bytes) -> bytes | None:
    """The batch of a DATA message (``[3, batch]``, msgpack), read without msgpack's
    decoder; None when ``body`` is not exactly one (msgpack then judges it)."""
    if len(body) < 3 or body[0] != 0x92 or body[1] != DATA:
        return None
    size = _BIN_HEADERS.get(body[2])
    if size is None or len(body) < 3 + size:
        return None
    start = 3 + size
    if len(body) - start != int.from_bytes(body[3:start], "big"):
        return None
    return body[start:]


def _is_count(value: object) -> bool:
    return type(value) is int and 0 <= value < 1 << 32


def _is_digest(value: object) -> bool:
    return type(value) is int and 0 <= value < _U64


# -- blocking helper -----------------------------------------------------------------------------


def _left_cleanly(exc: ConnectionClosed) -> bool:
    """True when ``exc``, raised by a read of the session stream, is the peer's clean
    close of the connection (code 0) before it ended that stream: the runners take it
    for the end of the stream, as they take a read of b"".

    The peer's clean close cuts a stream other than the connection's first short
    (``Session.cut_short``, as QUIC does): its reads raise this where they read b"".
    For a sync session that is no failure: a peer that closes the connection between
    messages has ended the session as cleanly as one that ends the stream (a live
    session returned then, and a catch-up not done raises GraphSyncError). Nor does
    a message the close cut look whole, as a reply cut short would: its bytes wait in
    the session for a rest that never comes, as at a FIN after them. Reads raise
    ConnectionClosed with code 0 only then: any other end of the connection carries
    its own code (it propagates, as a reset and a close here do), and after our own
    clean close they read b""."""
    return not exc.code


def sync_blocking(
    graph: Graph,
    sock: Any,
    *,
    until_synced: bool = False,
    max_message: int = MAX_MESSAGE,
    tick: float = 0.25,
    hello_timeout: float | None = None,
) -> SyncSession:
    """Run a sync session over a blocking DTP stream (:class:`dtp.socket.DTPSocket`).

    With ``until_synced`` it returns once both sides have exchanged what the other
    lacked (one-shot catch-up, the stream stays open; GraphSyncError if the peer closes
    the stream before); otherwise it keeps forwarding changes both ways until the peer
    closes the stream. The peer's clean close of the whole connection ends the session
    as the end of its stream does, on any stream (on one other than the connection's
    first, whose reads then raise ConnectionClosed with code 0, too); a close with an
    error code, a reset of the stream and a close here raise as they do. A writer
    thread sends; the calling thread reads. Deferred updates are applied every
    ``tick`` seconds.
    The socket's timeout bounds each send, and each read until the peer's END (the
    initial exchange: DTPTimeoutError); a live session then waits through quiet periods
    of any length.
    ``hello_timeout``: seconds the peer has to send its HELLO, else the stream is
    aborted and GraphSyncError raised (None: no deadline).
    Raises GraphSyncError / RemoteProtocolError if the peer misbehaves.
    """
    _check_tick(tick)
    if hello_timeout is not None:
        _check_timeout("hello_timeout", hello_timeout)
    session = SyncSession(graph, max_message=max_message, live=not until_synced)
    wake = threading.Event()
    stop = threading.Event()
    ended_here = threading.Event()  # our END is queued (the reader may stop reading)
    cut_off = threading.Event()  # the writer ended at the connection's clean end
    failure: list[BaseException] = []

    aborting = threading.Event()

    def abort_lagging() -> None:
        with contextlib.suppress(Exception):
            sock.abort("graph sync backlog exceeded")

    def on_output() -> None:
        wake.set()
        if session.end_sent:
            ended_here.set()
        if session.lagging and not aborting.is_set():
            # the writer may be blocked in sendall for as long as the peer does not
            # read (the data of the first exchange is not bounded by the backlog): it
            # would never come back to see ``lagging``. Ending the stream frees it, and
            # the reader; SyncBacklogExceeded is raised below. From a thread of its
            # own: this runs under the graph's lock, and a paid connection's abort
            # closes it on the ledger.
            aborting.set()
            threading.Thread(target=abort_lagging, name="dtp-graph-sync-abort", daemon=True).start()

    session.on_output = on_output

    def writer() -> None:
        try:
            while True:
                data = session.data_to_send()
                if data:
                    sock.sendall(data)
                    continue
                if session.lagging:
                    sock.abort("graph sync backlog exceeded")  # unblocks the reader
                    raise SyncBacklogExceeded(
                        f"the peer fell more than {session.max_backlog} bytes behind"
                    )
                if stop.is_set():
                    return
                if not wake.wait(tick):
                    graph.advance()
                    session.handle_timer()
                wake.clear()
        except BaseException as exc:
            if isinstance(exc, ConnectionClosed) and not exc.code:
                # the connection ended cleanly (the peer left, as a server that closes
                # does, while we were sending): no failure of ours -- the reader reads
                # the end, and the session ends as the peer's leaving ends it. What was
                # being sent did not all go: a catch-up is not done, even with both
                # ENDs through (ours may be in it): GraphSyncError below
                cut_off.set()
                return
            failure.append(exc)
            # the reader may be blocked in recv for as long as the peer is quiet: end it
            with contextlib.suppress(Exception):
                sock.abort(f"graph sync failed: {exc}")

    def hello_overdue() -> None:
        # (a timer of its own, not the writer's loop: the writer may be blocked in
        # sendall to a silent peer that does not read either)
        if session.peer_root is None and not stop.is_set():
            failure.append(_fail(f"the peer sent no HELLO within {hello_timeout} s"))
            with contextlib.suppress(Exception):
                sock.abort("graph sync: no HELLO in time")

    hello_timer: threading.Timer | None = None
    if hello_timeout is not None:
        hello_timer = threading.Timer(hello_timeout, hello_overdue)
        hello_timer.name = "dtp-graph-sync-hello"
        hello_timer.daemon = True
    session.start()
    thread = threading.Thread(target=writer, name="dtp-graph-sync-writer", daemon=True)
    thread.start()
    if hello_timer is not None:
        hello_timer.start()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    ended: BaseException | None = None  # (None: the read loop ended as it should)
    try:
        while not (until_synced and session.synced):
            if failure:
                raise failure[0]
            if until_synced and session.end_received:
                # the peer is done; our END follows our pushes, which the writer makes
                # as the peer reads (each send bounded by the socket's timeout). A peer
                # that stays connected (a live server) sends nothing more: wait for the
                # writer, not in recv -- but never for an END that nothing will send.
                if not thread.is_alive():
                    break
                if session._end_stalled():
                    raise _fail("the peer's END came before the exchange it ends")
                ended_here.wait(tick)
                continue
            try:
                n = sock.recv_into(buf)
            except TimeoutError:
                if until_synced or not session.end_received:
                    raise  # the peer still owes us its part of the initial exchange
                # Live, with the peer's END in: it owes us nothing more, and a quiet
                # table is no fault (pub/sub and RPC wait through it too). Nothing was
                # read, the stream stays usable; the loop's top sees a writer failure.
                continue
            except ConnectionClosed as exc:
                if not _left_cleanly(exc):
                    raise
                n = 0  # the peer left: the end of the session, as the stream's end would be
            if not n:
                break
            session.receive_data(view[:n])
            if hello_timer is not None and session.peer_root is not None:
                hello_timer.cancel()  # (its thread ends now, not at the deadline)
                hello_timer = None
    except DTPError as exc:
        ended = exc
        if failure and not session.lagging:
            raise failure[0] from None  # the writer's failure ended the read
        if not session.lagging:  # the abort of a lagging session ends the read: reported below
            raise
    except BaseException as exc:
        ended = exc
        raise
    finally:
        if hello_timer is not None:
            hello_timer.cancel()
        view.release()
        session.close()
        stop.set()
        wake.set()
        if ended is not None:
            # the session failed: the writer may be blocked sending to a peer that does
            # not read, and would hold this thread for as long as the peer likes
            with contextlib.suppress(Exception):
                sock.abort(
                    "graph sync protocol error"
                    if isinstance(ended, RemoteProtocolError)
                    else "graph sync failed"
                )
        thread.join()
    if session.lagging:
        raise SyncBacklogExceeded(f"the peer fell more than {session.max_backlog} bytes behind")
    if failure and until_synced:
        # (also once both ENDs are through: ours was only queued, and a writer that
        # failed -- a peer that stopped reading, a timeout -- left what we pushed
        # undelivered; returning would report a catch-up that did not happen)
        raise failure[0]
    if until_synced and (cut_off.is_set() or not session.synced):
        # (a one-shot catch-up that returned here looked complete and was not)
        raise _fail("the peer closed the stream before the sync completed")
    return session


def connect(
    graph: Graph,
    address: tuple[str, int],
    *,
    server_key: bytes | None = None,
    until_synced: bool = True,
    timeout: float | None = None,
    **connect_args: Any,
) -> SyncSession:
    """Connect to a graph peer over DTP and sync (blocking); see :func:`sync_blocking`.

    ``timeout`` (seconds, None: none) bounds connecting and the handshake, then each
    wait of the initial exchange and each send (else DTPTimeoutError). It does not
    bound idleness: a live session (``until_synced=False``) lasts until the peer closes
    the stream, however long no change is made."""
    import dtp.socket

    with dtp.socket.create_connection(
        address, timeout, server_key=server_key, **connect_args
    ) as sock:
        return sync_blocking(graph, sock, until_synced=until_synced)


MAX_SESSIONS = 64
"""GraphServer's default cap of sessions running at once."""
HELLO_TIMEOUT = 10.0
"""GraphServer's default deadline for a peer's HELLO, in seconds (DTP's handshake_timeout)."""


class GraphServer:
    """Serve a graph over DTP: every connection runs a live sync session in a thread.

    ``server.address`` is where peers connect; ``server.noise_public_key`` is their
    ``server_key``. :attr:`sessions` counts finished sessions, :attr:`errors` those that
    ended with a protocol error (:meth:`counts` reads them all at one instant). At most
    ``max_sessions`` run at once (each holds a thread, buffers and up to its backlog of
    changes): a connection beyond them is closed at once with the reason ``"graph
    server busy: ..."`` (the peer's ``connect()`` raises
    :class:`~dtp.errors.ConnectionClosed` with it) and counted in :attr:`refused`.

    ``hello_timeout``: seconds a peer has, once connected, to send its HELLO; one that
    does not is cut off and counted in :attr:`errors`. Without it a peer that connects
    and stays silent would hold its session for good (DTP keepalives keep the
    connection from its idle timeout), and ``max_sessions`` such peers would lock
    everyone else out. None lifts the deadline. A peer that has sent HELLO may then
    stay quiet as long as it likes: a live subscriber does. Other keyword arguments go
    to :func:`dtp.socket.create_server`.

    :meth:`close` (and the end of a ``with`` block) stops accepting and ends the
    sessions running, waiting for them to be done with the graph.
    """

    def __init__(
        self,
        graph: Graph,
        address: tuple[str, int],
        identity: Any,
        *,
        max_sessions: int = MAX_SESSIONS,
        hello_timeout: float | None = HELLO_TIMEOUT,
        **kw: Any,
    ) -> None:
        import dtp.socket

        check_int("max_sessions", max_sessions, 1)
        if hello_timeout is not None:
            _check_timeout("hello_timeout", hello_timeout)
        self.graph = graph
        self.max_sessions = max_sessions
        self.hello_timeout = hello_timeout
        self.sessions = 0
        self.errors = 0
        self.refused = 0
        self.active = 0  # sessions running now
        # guards every counter above and the sessions' sockets: sessions end in threads
        # of their own (and close() waits on it for them)
        self._count_lock = threading.Condition(threading.Lock())
        self._running: dict[int, Any] = {}  # id(sock) -> the socket of a running session
        self._closing = False
        self._server = dtp.socket.create_server(address, identity=identity, **kw)
        self.address = self._server.address
        self.noise_public_key = self._server.noise_public_key
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(self._handle,), daemon=True
        )
        self._thread.start()

    def _handle(self, sock: Any) -> None:
        with self._count_lock:
            closing = self._closing
            busy = not closing and self.active >= self.max_sessions
            if busy:
                self.refused += 1
            elif not closing:
                self.active += 1
                self._running[id(sock)] = sock
        if closing:
            # (its handshake ended as close() began: it would have run on after it)
            sock.abort("graph server closed")
            return
        if busy:
            sock.abort(f"graph server busy: {self.max_sessions} sessions already running")
            return
        failed = False
        try:
            sync_blocking(self.graph, sock, hello_timeout=self.hello_timeout)
        except RemoteProtocolError:
            failed = True
            sock.abort("graph sync protocol error")
        except DTPError:
            pass
        finally:
            # (``errors += 1`` is a read and a write: two sessions failing at once
            # outside the lock could lose one)
            with self._count_lock:
                del self._running[id(sock)]
                self.active -= 1
                self.sessions += 1
                if failed:
                    self.errors += 1
                self._count_lock.notify_all()

    def counts(self) -> dict[str, int]:
        """``sessions``, ``errors``, ``refused`` and ``active``, read together (the end of
        each session updates its counters at once: ``errors <= sessions`` holds)."""
        with self._count_lock:
            return {
                "sessions": self.sessions,
                "errors": self.errors,
                "refused": self.refused,
                "active": self.active,
            }

    def close(self, timeout: float | None = 10.0) -> bool:
        """Stop accepting and end the sessions running: each one's connection is
        closed, which its peer sees as a server leaving (a live sync returns, a catch-up
        not yet done raises GraphSyncError), and this waits up to ``timeout`` seconds
        (None: as long as it takes) for their threads to be done with the graph. True
        when they all were, so that the graph may be closed; False when one is still
        finishing a write (its thread ends once the write does). Calling it again waits
        again."""
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 <= timeout < math.inf
        ):
            raise ValueError(f"timeout must be None or a finite number >= 0, not {timeout!r}")
        self._server.close()
        with self._count_lock:
            self._closing = True
            running = list(self._running.values())
        # each in a thread of its own: a close waits up to its linger (5 s) for what is
        # queued to a peer that does not read, and the sessions' ends must not queue up
        # behind one another. The thread of each session then raises SocketClosed in its read
        # or its send, which ends the session; its peer reads the end of the stream.
        for sock in running:
            threading.Thread(
                target=_close_quietly, args=(sock,), name="dtp-graph-close", daemon=True
            ).start()
        with self._count_lock:
            return self._count_lock.wait_for(lambda: not self._running, timeout)

    def __enter__(self) -> GraphServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_quietly(sock: Any) -> None:
    with contextlib.suppress(DTPError, OSError):
        sock.close()


# -- asyncio helper ------------------------------------------------------------------------------


async def sync_stream(
    graph: Graph,
    reader: Any,
    writer: Any,
    *,
    until_synced: bool = False,
    max_message: int = MAX_MESSAGE,
    tick: float = 0.25,
    hello_timeout: float | None = HELLO_TIMEOUT,
) -> SyncSession:
    """Run a sync session over an asyncio DTP stream (``dtp.aio`` reader/writer).

    As :func:`sync_blocking`: returns when synced (``until_synced``; GraphSyncError if
    the peer closes the stream before) or when the peer closes the stream -- or, on any
    stream, closes the connection cleanly (a stream other than the first is cut short
    then, its reads raising ConnectionClosed with code 0: the end of the session all
    the same; a close with an error code raises as before). The writer is left open for
    the caller to close, except when the peer broke the protocol (GraphSyncError): the
    stream is then aborted with the reason "graph sync protocol error", as
    :func:`sync_blocking` does.

    ``hello_timeout``: seconds the peer has to send its HELLO (:data:`HELLO_TIMEOUT` by
    default, as :class:`GraphServer`'s: an asyncio server runs this for each connection,
    and a peer that connects and stays silent would otherwise hold its session -- task,
    change listener, connection -- for good, DTP keepalives keeping it from the idle
    timeout); else the session ends, the stream is aborted and GraphSyncError raised.
    None lifts the deadline.
    """
    _check_tick(tick)
    if hello_timeout is not None:
        _check_timeout("hello_timeout", hello_timeout)
    loop = asyncio.get_running_loop()
    session = SyncSession(graph, max_message=max_message, live=not until_synced)
    wake = asyncio.Event()
    ended_here = asyncio.Event()  # our END is queued (the reader may stop reading)
    done = False

    def kick() -> None:
        wake.set()
        if session.end_sent:
            ended_here.set()
        if session.lagging and not writer.is_closing():
            # pump() may be waiting in drain() for as long as the peer does not read:
            # it would never come back to see ``lagging``. Ending the stream frees it
            # and the reader; SyncBacklogExceeded is raised below.
            writer.abort("graph sync backlog exceeded")

    def on_output() -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to wake
            loop.call_soon_threadsafe(kick)

    session.on_output = on_output

    async def pump() -> None:
        try:
            while True:
                wake.clear()
                data = session.data_to_send()
                if data:
                    writer.write(data)
                    await writer.drain()
                    continue
                if session.lagging:
                    writer.abort("graph sync backlog exceeded")  # ends the reader's wait
                    raise SyncBacklogExceeded(
                        f"the peer fell more than {session.max_backlog} bytes behind"
                    )
                if done:
                    return
                try:
                    await asyncio.wait_for(wake.wait(), tick)
                except TimeoutError:
                    graph.advance()
                    session.handle_timer()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            if isinstance(exc, ConnectionClosed) and not exc.code:
                # the connection ended cleanly (the peer left while we were sending --
                # drain() raises so when what we wrote was not all sent): no failure of
                # ours, as sync_blocking's writer takes it -- the reader reads the end,
                # and the session ends as the peer's leaving ends it. A catch-up is not
                # done then, even with both ENDs through (ours may be among what did
                # not go): GraphSyncError below, as sync_blocking raises. (It raised
                # this ConnectionClosed, whose code 0 says a clean end.)
                cut_off.append(exc)
                return
            # the reader may wait for as long as the peer is quiet (the graph closed,
            # say): end its wait
            with contextlib.suppress(Exception):
                writer.abort(f"graph sync failed: {exc}")
            raise

    overdue: list[GraphSyncError] = []  # the peer's HELLO came too late: the error
    cut_off: list[ConnectionClosed] = []  # pump() ended at the connection's clean end

    def hello_overdue() -> None:
        # (a timer, not a deadline on each read: pump() may be blocked in drain() to a
        # silent peer that does not read either.) It and the HELLO's handling both run
        # on the loop: a HELLO handled before this runs keeps its session; one handled
        # after cannot, the session being closed here -- it is not merged, nor does it
        # queue pushes for a stream that is gone.
        if session.peer_root is None and not overdue:
            overdue.append(_fail(f"the peer sent no HELLO within {hello_timeout} s"))
            session.close()  # the change listener goes now, not once this task runs
            with contextlib.suppress(Exception):
                writer.abort("graph sync: no HELLO in time")  # ends the read's wait

    session.start()
    out = asyncio.create_task(pump())
    hello_timer: asyncio.TimerHandle | None = None
    if hello_timeout is not None:
        hello_timer = loop.call_later(hello_timeout, hello_overdue)
    try:
        while not (until_synced and session.synced):
            if out.done():
                out.result()  # the write side failed: raise it
            if until_synced and session.end_received:
                # our END follows our pushes, which pump() makes as the peer reads; a
                # peer that stays connected sends nothing more: wait for pump(), a tick
                # at a time -- never for an END that nothing will send
                if out.done():
                    break  # pump() ended at the connection's clean end: no END will go
                if session._end_stalled():
                    raise _fail("the peer's END came before the exchange it ends")
                waiter = asyncio.ensure_future(ended_here.wait())
                try:
                    await asyncio.wait(
                        {out, waiter}, timeout=tick, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    waiter.cancel()
                continue
            try:
                data = await reader.read(1 << 20)
            except ConnectionClosed as exc:
                if not _left_cleanly(exc):
                    raise
                data = b""  # the peer left: the end of the session, as the stream's end would be
            if overdue:
                raise overdue[0]  # (what came at the deadline is not taken)
            if not data:
                break
            session.receive_data(data)
            if hello_timer is not None and session.peer_root is not None:
                hello_timer.cancel()
                hello_timer = None
    except DTPError as exc:
        if overdue:
            # the abort at the deadline ended the read (or pump()'s drain): say why
            raise overdue[0] from None
        if not session.lagging and out.done() and not out.cancelled():
            failed = out.exception()
            if failed is not None:
                raise failed from None  # the write side's failure ended the read
        if not session.lagging:  # the abort of a lagging session ends the read: reported below
            if isinstance(exc, RemoteProtocolError):
                # as sync_blocking does: the peer learns why, and pump() cannot stay
                # blocked sending to a peer that broke the protocol and does not read
                with contextlib.suppress(Exception):
                    writer.abort("graph sync protocol error")
            raise
    finally:
        if hello_timer is not None:
            hello_timer.cancel()  # (it would abort the caller's stream later)
        session.close()
        done = True
        wake.set()
        if until_synced and session.synced:
            await out
        else:
            out.cancel()
            # (asyncio.wait, not ``await out`` under a suppress: a cancellation of this
            # task arriving meanwhile must go on up, not be taken for out's)
            await asyncio.wait({out})
            if not out.cancelled():
                out.exception()  # (its failure is reported above, or moot: retrieved)
    if session.lagging:
        raise SyncBacklogExceeded(f"the peer fell more than {session.max_backlog} bytes behind")
    if until_synced and (cut_off or not session.synced):
        # (a one-shot catch-up that returned here looked complete and was not)
        raise _fail("the peer closed the stream before the sync completed")
    return session


__all__ = [
    "DATA",
    "END",
    "HELLO",
    "HELLO_TIMEOUT",
    "MAX_MESSAGE",
    "MAX_SESSIONS",
    "SMALL",
    "SUM",
    "VERSION",
    "WANT",
    "GraphServer",
    "GraphSyncError",
    "SyncSession",
    "connect",
    "sync_blocking",
    "sync_stream",
]
