"""The sans-I/O sync session, :class:`SyncSession` (the protocol: :mod:`dtp.graph.sync`).

The class reads top to bottom in the order of the life of a session: made, started and
closed; fed the peer's bytes and read for its own, and its timer; local changes and
messages queued for the peer; the peer's messages checked and handled (HELLO and SUM
compared with our summaries, WANT queued for a push, END taken); the peer's DATA merged,
what a rule refused before its END held back to it, and every refusal reported to a peer
that reads REFUSED (docs/graph.md, "Sync protocol"); the peer's REFUSED read; and the
pushes, made a batch at a time as the peer reads, with the END they lead to.

Two threads use a session: the reader's (:meth:`SyncSession.receive_data`) and the
writer's (:meth:`SyncSession.data_to_send`); local changes come from whichever thread
writes to the graph."""

from __future__ import annotations

import logging
import math
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import msgpack

from dtp.errors import ErrorCode
from dtp.graph._arguments import check_int
from dtp.graph._batch import batch_count
from dtp.graph._batch import entries as batch_entries
from dtp.graph._merges import MergeReport
from dtp.graph._store import Graph
from dtp.graph._summaries import FANOUT_BITS, LEAF_LEVEL
from dtp.graph.rules import RULE, Refusal
from dtp.graph.sync._messages import (
    _LEAVES,
    _LEN,
    _PUSH_LOW,
    _SMALL_MESSAGE,
    _WANT_LEAVES,
    DATA,
    END,
    HELLO,
    MAX_BACKLOG,
    MAX_MESSAGE,
    MAX_REASON,
    MAX_REPORT_MESSAGE,
    MAX_REPORTS,
    REFUSED,
    REPORTS_PER_MESSAGE,
    SUM,
    VERSION,
    WANT,
    Summary,
    _data_batch,
    _differs,
    _fail,
    _is_count,
    _is_digest,
    _push_whole,
)
from dtp.native.core import encode_ham_batch
from dtp.native.reference._limits import HAM_BATCH_VERSION, HAM_MAX_KEY

logger = logging.getLogger("dtp.graph.sync")


def _check_graph(graph: object) -> None:
    """The graph a session syncs: a :class:`~dtp.graph.Graph` (TypeError naming it; the
    runners check it before any connection is made, so that a wrong argument is named
    where it was given rather than deep in the session)."""
    if not isinstance(graph, Graph):
        raise TypeError(f"graph must be a dtp.graph.Graph, not {type(graph).__name__}")


_BATCH_HEADER = struct.Struct("<BI")  # a HAM batch's version and count (protocol.md 6.1)
_HELD_BACK = 16 << 20
"""Bytes of a peer's updates a session holds back to try again at its END, at most."""
_RETRIES = 16
"""Rounds of trying the held-back updates again at the peer's END, at most (each must
let some in)."""


def _wire_reason(refusal: Refusal) -> str:
    return refusal.reason if refusal.rule is None else f"{RULE}:{refusal.rule}"


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

    What a caller reads: ``peer_root`` and ``peer_replica`` (the peer's HELLO),
    ``end_sent``, ``end_received``, :attr:`synced`, :attr:`peer_done`, ``lagging``,
    ``failed`` (the error that ended the session), ``peer_refusals`` (what the peer
    refused of our updates, as it told us: the latest 1024) and ``stats`` (bytes,
    messages, batches, summaries, WANTs and refusals, sent and received).
    """

    def __init__(
        self,
        graph: Graph,
        *,
        max_message: int = MAX_MESSAGE,
        live: bool = True,
        max_backlog: int = MAX_BACKLOG,
    ) -> None:
        _check_graph(graph)
        check_int("max_message", max_message, 1)
        check_int("max_backlog", max_backlog, 0)
        if not isinstance(live, bool):
            raise TypeError(f"live must be a bool, not {type(live).__name__}")
        self.graph = graph
        self.max_message = max_message  # the cap of one message, both ways
        self.max_backlog = max_backlog
        self.lagging = False  # live changes overflowed max_backlog: the session is over
        self._queued = 0  # bytes in _out
        self.live = live
        self.on_output: Callable[[], None] | None = None
        self._out: deque[bytes] = deque()  # frames queued for the peer, under _out_lock
        self._out_lock = threading.Lock()
        self._in = bytearray()  # the peer's bytes not yet a whole message
        self._started = False
        self._closed = False
        self.failed: BaseException | None = None  # the error that ended the session
        self._my_root: tuple[int, int] = (0, 0)  # the root summary (digest, count) of our HELLO
        self.peer_root: tuple[int, int] | None = None  # that of the peer's HELLO, once in
        self.peer_replica: bytes | None = None  # the replica ID of the peer's HELLO
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
        # The peer reads REFUSED (an empty WANT after its HELLO said so): it is told
        # what of its updates was refused, and sends its final REFUSED after our END.
        self.peer_reports = False
        self.peer_report_final = False  # its final REFUSED came: it merged all to our END
        self.peer_refusals: deque[Refusal] = deque(maxlen=1024)
        # Updates of the peer's that a rule refused before its END, tried again once the
        # END is in (a vote that came before its proposal); at most _HELD_BACK bytes.
        self._held_back: list[Refusal] = []
        self._held_back_bytes = 0
        self._reports_sent = 0  # refusals described to the peer so far (MAX_REPORTS)
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

    # -- started and closed; what a caller reads of the exchange ---------------------------

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

    def close(self) -> None:
        """Stop forwarding changes (idempotent)."""
        if not self._closed:
            # (what was still to push is not pushed any more: _push_step drops it. Not
            # under self._lock: a lagging session closes from _on_change, under the
            # graph's lock, while the writer may hold self._lock waiting for the graph's)
            self._closed = True
            self.graph.remove_listener(self)

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

    # -- fed the peer's bytes (the reader's thread) and read (the writer's); the timer -----

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

    # -- local changes forwarded, and messages queued for the peer -------------------------

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
            items = batch_entries(batch)
            half = len(items) // 2
            for part in (items[:half], items[half:]):
                header = _BATCH_HEADER.pack(HAM_BATCH_VERSION, len(part))
                self._send_batch(header + b"".join(e[4] for e in part))
            return
        self.stats["batches_sent"] += 1
        self._send([DATA, batch])

    def _output_ready(self) -> None:
        """Pushes were queued: the writer makes them in data_to_send (wake it)."""
        if self.on_output is not None:
            self.on_output()

    # -- the peer's messages, checked and handled (the reader's thread) --------------------

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
            report = self._merge_data(message[1])
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
            self._after_peer_end()
        elif kind == REFUSED:
            self._on_refused(message)
        else:
            raise _fail(f"unknown message type {kind}")

    def _on_hello(self, message: list[Any]) -> None:
        if self.peer_root is not None:
            raise _fail("HELLO twice")
        if (
            len(message) != 5
            or type(message[1]) is not int  # (True and 1.0 equal 1)
            or not isinstance(message[2], bytes)
            or len(message[2]) != 16
            or not _is_count(message[3])
            or not _is_digest(message[4])
        ):
            raise _fail(f"HELLO is [1, {VERSION}, replica id (16 bytes), count, digest]")
        if message[1] != VERSION:
            # (a peer of version 1 breaks ties between values bytewise: synced with it,
            # the two would keep different winners for ever)
            raise _fail(
                f"the peer speaks graph sync version {message[1]}, this one {VERSION} "
                "(values in Gun's text, ties in UTF-16 order): upgrade the older peer"
            )
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

    def _on_want(self, message: list[Any]) -> None:
        leaves = message[1] if len(message) == 2 else None
        if not isinstance(leaves, list) or len(leaves) > _LEAVES:
            raise _fail("WANT is [5, [leaf, ...]]")
        if not leaves:
            # (an empty WANT asks nothing: the peer says it reads REFUSED)
            self.peer_reports = True
            return
        for leaf in leaves:
            if type(leaf) is not int or not 0 <= leaf < _LEAVES:
                raise _fail("bad WANT leaf")
        self.stats["wants_received"] += 1
        with self._lock:
            # (a set: a peer asking again and again costs no more than all leaves once)
            self._peer_wants.update(dict.fromkeys(leaves))
        self._output_ready()

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

    # -- the peer's DATA merged; refusals held back to its END and reported to it ----------

    def _merge_data(self, batch: bytes) -> MergeReport:
        """Merge one DATA batch of the peer's, and report what was refused.

        Before the peer's END, what a rule refuses may only have come before what it
        depends on (a vote before its proposal: the comparison pushes in the order of
        the summary tree, not of the writes); it is held back, uncounted and
        unreported, and tried again once the END is in (:meth:`_after_peer_end`)."""
        holding = not self.end_received
        report = self.graph._merge(batch, self, atomic=False, final=not holding)
        if not report.refused:
            return report
        final: list[Refusal] = []
        overflow: list[Refusal] = []
        held = 0
        for r in report.refusals:
            if r.reason != RULE or not holding:
                final.append(r)
            elif r.update is not None and self._held_back_bytes < _HELD_BACK:
                self._held_back.append(r)
                self._held_back_bytes += len(r.update.soul) + len(r.update.field)
                self._held_back_bytes += len(r.update.value) + 16
                held += 1
            else:
                overflow.append(r)
        if overflow:
            self.graph._count_rule_refusals(overflow)
            final.extend(overflow)
        self._report(report.refused - held, final)
        return report

    def _after_peer_end(self) -> None:
        """The peer's END is in: try the held-back updates again (their dependencies
        have come by now, if the peer had them), count and report those still refused,
        and send a peer that reads REFUSED the final one."""
        held = self._held_back
        self._held_back = []
        self._held_back_bytes = 0
        rounds = 0
        while held and rounds < _RETRIES:
            rounds += 1
            batch = encode_ham_batch([r.update for r in held if r.update is not None])
            report = self.graph._merge(batch, self, atomic=False, final=False)
            still = [r for r in report.refusals if r.reason == RULE]
            progress = len(still) < len(held)
            held = still
            if not progress:
                break
        if held:
            self.graph._count_rule_refusals(held)
        self._report(len(held), held, final=True)

    def _report(self, count: int, refusals: list[Refusal], *, final: bool = False) -> None:
        """Tell a peer that reads REFUSED what was refused of its updates (``count``,
        ``refusals`` describing some of them); ``final`` once its END is handled."""
        if count:
            self.stats["refused"] += count
            logger.debug("graph sync: refused %d of the peer's updates", count)
        if not self.peer_reports or (not count and not final):
            return
        room = max(0, MAX_REPORTS - self._reports_sent)
        described, told = self._not_told(refusals, room)
        count -= told
        if not count and not final:
            return
        self._reports_sent += len(described)
        entries = [
            [
                r.update.soul,
                r.update.field,
                r.update.state,
                _wire_reason(r)[:MAX_REASON],
                r.message[:MAX_REPORT_MESSAGE],
            ]
            for r in described
            if r.update is not None
        ]
        step = REPORTS_PER_MESSAGE
        chunks = [entries[i : i + step] for i in range(0, len(entries), step)] or [[]]
        left = count
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            n = left if last else len(chunk)
            left -= n
            self._send([REFUSED, n, chunk, final and last])

    def _not_told(self, refusals: list[Refusal], room: int) -> tuple[list[Refusal], int]:
        """The refusals to describe to the peer (at most ``room``), and how many of
        ``refusals`` it was told before, in the current session or an earlier one: a version
        of a field is described to a peer once (:mod:`dtp.graph._reported`)."""
        graph, peer = self.graph, self.peer_replica
        with graph._lock:
            if graph._closed or peer is None:
                return refusals[:room], 0
            return graph._reported.select(peer, refusals, room)

    # -- the peer's REFUSED: what it refused of ours ---------------------------------------

    def _on_refused(self, message: list[Any]) -> None:
        """The peer's report of what it refused of ours."""
        if len(message) != 4:
            raise _fail("REFUSED is [6, count, [[soul, field, state, reason, text], ...], final]")
        count, entries, final = message[1], message[2], message[3]
        if (
            not _is_count(count)
            or not isinstance(entries, list)
            or len(entries) > REPORTS_PER_MESSAGE
            or count < len(entries)
            or type(final) is not bool
        ):
            raise _fail("bad REFUSED")
        if final and (self.peer_report_final or not self.end_sent):
            raise _fail("a final REFUSED before our END, or twice")
        parsed: list[Refusal] = []
        for entry in entries:
            if (
                not isinstance(entry, list)
                or len(entry) != 5
                or not isinstance(entry[0], bytes)
                or not 1 <= len(entry[0]) <= HAM_MAX_KEY
                or not isinstance(entry[1], bytes)
                or not 1 <= len(entry[1]) <= HAM_MAX_KEY
                or type(entry[2]) is not float
                or not isinstance(entry[3], str)
                or not 1 <= len(entry[3]) <= MAX_REASON
                or not isinstance(entry[4], str)
                or len(entry[4]) > MAX_REPORT_MESSAGE
            ):
                raise _fail("bad REFUSED entry")
            kind, _, rule = entry[3].partition(":")
            by_rule = kind == RULE and bool(rule)
            parsed.append(
                Refusal(
                    entry[0].decode("utf-8", "replace"),
                    entry[1].decode("utf-8", "replace"),
                    entry[2],
                    RULE if by_rule else entry[3],
                    entry[4],
                    rule if by_rule else None,
                )
            )
        self.peer_refusals.extend(parsed)
        if final:
            self.peer_report_final = True
        if count:
            self.stats["refused_by_peer"] += count
            graph = self.graph
            with graph._lock:
                graph.stats["refused_by_peers"] += count
            logger.warning(
                "graph sync: the peer refused %d of our updates%s",
                count,
                f" (first: {parsed[0]})" if parsed else "",
            )

    # -- the pushes, made as the peer reads (the writer's thread), and END -----------------

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
