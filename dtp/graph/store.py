"""The graph: nodes ("souls") with fields, over the HAM table (docs/graph.md).

:class:`Graph` is the user-facing store. Each field is one entry of the HAM table
(``dtp.native.core.HamGraph``: C by default, the pure-Python twin with ``DTP_PUREPYTHON=1`` or
``ham="python"``), keyed by (soul, field) and holding (state, canonical value bytes).
Writes take their state from a :class:`~dtp.graph.clock.HybridClock`; updates from peers
go through the ownership check (:mod:`dtp.graph.namespace`) and then one C merge per
batch. Whatever a merge *changed* is, in this order: logged to SQLite
(:mod:`dtp.graph.persist`), folded into the sync summaries, forwarded to live sync
sessions and delivered to subscribers.

Per-field Python work is paid only for what needs it. The soul index and the sync
summaries (the *view*) are built lazily from the table's export and then kept up to
date; a merge that changes a large share of the table drops the view instead, to be
rebuilt on the next read (amortised O(1) per change). A bulk sync into a fresh replica
therefore costs one C merge and one SQLite row per batch.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import hashlib
import logging
import math
import numbers
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dtp.errors import DTPError, ErrorCode, LocalProtocolError, RemoteProtocolError
from dtp.graph import namespace
from dtp.graph._batch import Entry, batch_count, entries
from dtp.graph.clock import MAX_DRIFT_MS, HybridClock, wall_clock_ms
from dtp.graph.persist import GraphStorage, GraphStorageError, IdleFlusher
from dtp.graph.values import JSON, decode_value, encode_value, link_soul
from dtp.identity.keys import HostIdentity
from dtp.native import core as _core
from dtp.native import reference as _reference
from dtp.native.core import encode_ham_batch, zero_negative_states
from dtp.native.types import (
    HAM_APPLIED,
    HAM_DEFERRED,
    HAM_HISTORICAL,
    HAM_REJECTED,
    HAM_SAME,
    HamUpdate,
)

LEAF_BITS = 16
"""Souls are spread over 2**16 leaves by ``blake2b(soul, digest_size=2)``."""
FANOUT_BITS = 8
"""Each summary level splits a node into 256 children: root -> 256 -> 65536 leaves."""
LEAF_LEVEL = LEAF_BITS // FANOUT_BITS

_MAX_STATE = sys.float_info.max  # replaying our own log: nothing is ahead of this clock
_BATCH_UPDATES = 4096  # updates per batch built in Python (pushes of summary nodes)
_BATCH_BYTES = 1 << 20  # about the bytes of one such batch (as the export's)
_VIEW_DROP = 2048  # a changed batch larger than this and a quarter of the table drops the view
_DUE_TRACKED = 4096  # deferred states tracked one by one (the smallest ones)
_BLIND_RETRY_MIN = 1.0  # ms: shortest wait between blind advances (states not tracked)
_BLIND_RETRY_MAX = 1000.0  # ms: longest one (while they find nothing)
_CLOCK_RESERVE = 250.0  # ms of states persisted ahead of the clock (see Graph._reserve_clock)
_COMPACT_RETRY = 60.0  # s before a compaction that failed is tried again (its flush was done)
_NEGATIVE_ZERO = b"\x00\x00\x00\x00\x00\x00\x00\x80"  # -0.0 as f64le

logger = logging.getLogger(__name__)


def soul_leaf(soul: bytes) -> int:
    """The leaf (0..65535) a soul's fields are summarised under."""
    return int.from_bytes(hashlib.blake2b(soul, digest_size=2).digest(), "big")


def entry_hash(canonical: bytes) -> int:
    """The 64-bit hash of one update's canonical encoding (summary digests XOR these)."""
    return int.from_bytes(hashlib.blake2b(canonical, digest_size=8).digest(), "little")


def canonical_states(batch: bytes) -> bytes:
    """``batch`` with every state ``-0.0`` written as ``0.0`` (the input itself when it
    holds none; RemoteProtocolError if it must be decoded and is malformed).

    HAM compares states as numbers, so ``-0.0`` and ``0.0`` are one state: a field held
    at ``-0.0`` by one peer and at ``0.0`` by another with the same value merges as SAME
    both ways, and the two tables keep different bits -- and different summaries, so every
    sync would send it again. Updates are therefore brought to ``0.0`` before they reach
    the table (and before their signature is checked, so a signature over ``-0.0``
    fails on every peer alike). A batch in which the 8 bytes of ``-0.0`` appear nowhere
    holds no such state and passes without being decoded; in any other the C core
    rewrites those states in place (a peer that put the 8 bytes in a value made the
    whole batch be decoded and encoded again in Python, about a second of CPU per 8 MiB
    of small updates).
    """
    if _NEGATIVE_ZERO not in batch:
        return batch
    fixed, changed = zero_negative_states(batch)
    return fixed if changed else batch


def _check_number(
    name: str, value: object, *, integral: bool = False, upper: int | None = None
) -> None:
    """Constructor argument check: a (finite, >= 0) real number, not a bool."""
    kind = numbers.Integral if integral else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        what = "an int" if integral else "a number"
        raise TypeError(f"Graph({name}=...) must be {what}, not {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float range
        number = math.inf
    # (an int is compared exactly: 2**64 - 1 is a float's 2**64)
    exact = int(value) if isinstance(value, numbers.Integral) else number
    if not math.isfinite(number) or number < 0 or (upper is not None and exact >= upper):
        bound = "" if upper is None else " and < 2**64"
        raise ValueError(f"Graph({name}=...) must be finite, >= 0{bound}; got {repr(value)[:40]}")


def check_int(what: str, value: object, low: int) -> None:
    """An int argument (of a Graph method or of a sync session), at least ``low``:
    TypeError for a bool, a float or a str (``True`` would pass for 1, NaN for no cap
    at all), ValueError below ``low`` -- a local error, not one blamed on a peer later."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < low:
        raise ValueError(f"{what} must be an int >= {low}, not {value}")


def _check_node(what: str, node: object, top: int) -> tuple[int, int]:
    """A summary node ``(level, prefix)`` of level 0..``top`` and a prefix that level
    has (0..256**level - 1). Out of range, a level past the leaves failed deep inside
    with "negative shift count", and a prefix no node has was silently empty."""
    if not isinstance(node, tuple | list) or len(node) != 2:
        raise TypeError(f"{what}: a summary node is a (level, prefix) pair, not {node!r:.60}")
    level, prefix = node
    if type(level) is not int or type(prefix) is not int:
        raise TypeError(
            f"{what}: a summary node's level and prefix are ints, "
            f"not {type(level).__name__} and {type(prefix).__name__}"
        )
    if not 0 <= level <= top:
        raise ValueError(f"{what}: a summary node's level is 0..{top}, not {level}")
    if not 0 <= prefix < 1 << (FANOUT_BITS * level):
        raise ValueError(
            f"{what}: level {level} has prefixes 0..{(1 << (FANOUT_BITS * level)) - 1}, "
            f"not {prefix}"
        )
    return level, prefix


def _text(name: bytes) -> str | None:
    """A soul or field name from the table as text, or None when it is not UTF-8.

    Peers may write any bytes, but the API names souls and fields by str (UTF-8): a name
    that is not UTF-8 cannot be asked for, and read with ``errors="replace"`` it would
    pose as another (``b"x\\xff"`` as the field ``"x\\ufffd"``) -- so reads leave it out.
    """
    try:
        return name.decode()
    except UnicodeDecodeError:
        return None


def _check_names(soul: object, field: object) -> None:
    """A subscription's soul and optional field: what put() could write (an empty name
    would be a subscription no change can ever reach)."""
    if not _utf8(soul, "a soul"):
        raise LocalProtocolError("a soul is a non-empty string", ErrorCode.ARG)
    if field is not None and not _utf8(field, "a field name"):
        raise LocalProtocolError("field names are non-empty strings", ErrorCode.ARG)


def _check_listener(listener: object) -> None:
    """A listener that is not callable would fail only at the next merge, in the thread
    that made it (that of a sync session), rather than here where the mistake is."""
    if not callable(listener):
        raise LocalProtocolError(
            f"a listener must be callable, not {type(listener).__name__}", ErrorCode.ARG
        )


def _utf8(text: object, what: str) -> bytes:
    """A soul or field name as the UTF-8 bytes the table keys on; LocalProtocolError for
    anything else (a lone surrogate has no UTF-8 form)."""
    if not isinstance(text, str):
        raise LocalProtocolError(f"{what} must be a str, not {type(text).__name__}", ErrorCode.ARG)
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise LocalProtocolError(
            f"{what} is not valid Unicode (lone surrogate): {text[:64]!r}", ErrorCode.ARG
        ) from None


@dataclass(frozen=True)
class Change:
    """One field that changed, as subscribers see it."""

    soul: str
    """The node."""
    field: str
    """The field name."""
    value: JSON
    """Its new value (a link is ``{"#": soul}``)."""
    state: float
    """Its HAM state (ms since the epoch, from the writer's hybrid clock)."""


@dataclass(frozen=True)
class MergeReport:
    """What a merge of a peer's batch did, update by update."""

    applied: int = 0
    """Updates that changed the table."""
    historical: int = 0
    """Updates older than (or losing the tie against) what the table holds."""
    same: int = 0
    """Updates equal to what the table holds."""
    deferred: int = 0
    """Updates ahead of the machine clock, held until their time comes."""
    dropped: int = 0
    """Updates ahead of the clock that found the deferred queue full."""
    refused: int = 0
    """Updates refused by the ownership rule (unsigned, badly signed, bad soul)."""
    dropped_leaves: Mapping[int, float] = dataclasses.field(
        default_factory=dict, repr=False, compare=False
    )
    """The summary leaves (:func:`soul_leaf`) of the dropped updates, each with the
    smallest state dropped in it: a sync session asks its peer for those leaves again
    once the clock reaches that state (at most 65,536 entries, whatever the batch)."""


class Subscription:
    """A registered change callback; :meth:`cancel` removes it."""

    def __init__(
        self,
        graph: Graph,
        soul: str,
        field: str | None,
        callback: Callable[[Change], None],
    ) -> None:
        self.soul = soul
        self.field = field
        self.callback = callback
        self._graph = graph
        self.active = True
        # called when the graph closes (a ChangeStream ends its readers' iteration)
        self._on_graph_close: Callable[[], None] | None = None

    def cancel(self) -> None:
        """Stop receiving changes (idempotent)."""
        if self.active:
            self.active = False
            self._graph._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class ChangeStream:
    """An async iterator over the changes of a node or field (see :meth:`Graph.changes`).

    Changes are queued up to ``maxsize`` (at least 1); beyond that the oldest are
    dropped and :attr:`dropped` counts them (a slow reader never blocks writers). The
    iteration ends, once drained, at :meth:`close` or when the graph is closed.
    """

    def __init__(self, graph: Graph, soul: str, field: str | None, maxsize: int) -> None:
        if type(maxsize) is not int or maxsize < 1:
            raise ValueError(f"changes(maxsize=...) must be an int >= 1, not {maxsize!r}")
        # a bad soul or field is reported as such, not as "no running event loop"
        _check_names(soul, field)
        self._loop = asyncio.get_running_loop()
        self._queue: deque[Change] = deque()
        self._maxsize = maxsize
        self._waiters: list[asyncio.Future[None]] = []
        self._closed = False
        self.dropped = 0
        self._sub = graph.subscribe(soul, self._deliver, field=field)
        # no change comes after the graph's close(): the iteration ends then, once
        # drained, rather than waiting for ever
        self._sub._on_graph_close = self.close

    def _deliver(self, change: Change) -> None:
        try:
            self._loop.call_soon_threadsafe(self._put, change)
        except RuntimeError:  # the loop is closed: nobody can read this stream any more
            self._sub.cancel()

    def _put(self, change: Change) -> None:
        if len(self._queue) >= self._maxsize:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(change)
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def __aiter__(self) -> ChangeStream:
        return self

    async def __anext__(self) -> Change:
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                # a cancelled reader must not leave its future behind
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return self._queue.popleft()

    def close(self) -> None:
        """Stop listening; the iterator ends once the queue is drained (a reader
        waiting for the next change is woken). Callable from any thread."""
        self._sub.cancel()
        try:
            # from the loop, in turn: changes delivered before (their _put callbacks
            # already scheduled, from any thread) are still queued and read first; and
            # futures belong to their loop: the readers are woken from it
            self._loop.call_soon_threadsafe(self._finish)
        except RuntimeError:  # a closed loop has no readers left
            self._closed = True

    def _finish(self) -> None:
        self._closed = True
        self._wake()

    async def aclose(self) -> None:
        self.close()


class _View:
    """Soul index and summary digests, derived from the table.

    ``fields``: soul -> field -> entry hash; ``leaves``: leaf -> souls; ``digest`` /
    ``count``: per leaf, the XOR of entry hashes and the number of fields.
    """

    def __init__(self) -> None:
        self.fields: dict[bytes, dict[bytes, int]] = {}
        self.leaf: dict[bytes, int] = {}
        self.leaves: dict[int, set[bytes]] = {}
        self.digest: dict[int, int] = {}
        self.count: dict[int, int] = {}
        self.size = 0

    def add(self, items: list[Entry]) -> None:
        """Fold applied updates in (each replaces the field's previous entry)."""
        fields, leaf_of, leaves, digest, count = (
            self.fields,
            self.leaf,
            self.leaves,
            self.digest,
            self.count,
        )
        blake = hashlib.blake2b
        for soul, field, _state, _value, raw in items:
            node = fields.get(soul)
            if node is None:
                node = fields[soul] = {}
                leaf = leaf_of[soul] = int.from_bytes(blake(soul, digest_size=2).digest(), "big")
                leaves.setdefault(leaf, set()).add(soul)
            else:
                leaf = leaf_of[soul]
            h = int.from_bytes(blake(raw, digest_size=8).digest(), "little")
            old = node.get(field)
            if old is None:
                count[leaf] = count.get(leaf, 0) + 1
                digest[leaf] = digest.get(leaf, 0) ^ h
                self.size += 1
            else:
                digest[leaf] ^= old ^ h
            node[field] = h

    def children(self, level: int, prefix: int) -> dict[int, tuple[int, int]]:
        """Summaries of the children of node (level, prefix): child prefix ->
        (digest, count), non-empty children only."""
        child_level = level + 1
        shift = LEAF_BITS - FANOUT_BITS * child_level
        out: dict[int, tuple[int, int]] = {}
        if level == 0:
            for leaf, n in self.count.items():
                if n:
                    child = leaf >> shift
                    d, c = out.get(child, (0, 0))
                    out[child] = (d ^ self.digest[leaf], c + n)
            return out
        span = 1 << (LEAF_BITS - FANOUT_BITS * level)
        first = prefix * span
        for leaf in range(first, first + span):
            n = self.count.get(leaf, 0)
            if n:
                child = leaf >> shift
                d, c = out.get(child, (0, 0))
                out[child] = (d ^ self.digest[leaf], c + n)
        return out

    def root(self) -> tuple[int, int]:
        """(digest, count) of the whole table."""
        d = 0
        for value in self.digest.values():
            d ^= value
        return d, self.size

    def souls_under(self, level: int, prefix: int) -> Iterator[bytes]:
        """Souls in the leaves under node (level, prefix)."""
        span = 1 << (LEAF_BITS - FANOUT_BITS * level)
        first = prefix * span
        if span > len(self.leaves):
            for leaf, souls in self.leaves.items():
                if first <= leaf < first + span:
                    yield from souls
        else:
            for leaf in range(first, first + span):
                yield from self.leaves.get(leaf, ())


def _flush_unclosed(
    lock: threading.RLock, storage: GraphStorage, clock: HybridClock, flusher: IdleFlusher
) -> None:
    """A graph collected, or still open at interpreter exit, without close(): write what
    is buffered (the flush thread covers a crash, but a clean exit would otherwise lose
    the last interval) and stop its thread. Holds no reference to the graph itself."""
    flusher.close(join=False)  # it may be the thread dropping the graph's last reference
    # at exit a daemon thread may hold the lock for good: better lose the tail than hang
    if not lock.acquire(timeout=5):
        return
    try:
        storage.flush(clock.last)
    except Exception:
        logger.exception("graph: writing buffered changes of an unclosed graph failed")
    finally:
        storage.close()  # (and its file lock: the file may be opened again)
        lock.release()


ChangeListener = Callable[[bytes, object], None]
"""``listener(changed_batch, origin)``: a sync session forwarding changes to its peer."""


class Graph:
    """A replicated graph of nodes and fields, persisted in SQLite, synced over DTP.

    ``path``: the SQLite file (None keeps the graph in memory only). ``identity``: the
    host key used to sign writes to its own user space ``~<address>/...``.
    ``now_ms``: the wall clock (injectable for tests); ``max_drift_ms``: how far ahead of
    it a peer's state may be before the update is deferred (0 to 2**44 ms). ``ham``: ``"c"``,
    ``"python"`` (the twin) or None for the process-wide backend
    (``dtp.native.core.HamGraph``). ``max_deferred_bytes``: cap of the deferred queue.

    Thread-safe: sync sessions in other threads merge while the application reads.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        identity: HostIdentity | None = None,
        now_ms: Callable[[], float] = wall_clock_ms,
        max_drift_ms: float = 1000.0,
        ham: str | None = None,
        max_deferred_bytes: int = 16 << 20,
        flush_interval: float = 0.25,
    ) -> None:
        # every argument is checked before anything is opened: a bad one is a programming
        # error, reported by name (not from deep inside, nor with a database left open)
        if path is not None and not isinstance(path, str | os.PathLike):
            raise TypeError(
                f"Graph(path=...) must be a str, a path or None, not {type(path).__name__}"
            )
        if identity is not None and not isinstance(identity, HostIdentity):
            raise TypeError(
                f"Graph(identity=...) must be a HostIdentity or None, not {type(identity).__name__}"
            )
        if not callable(now_ms):
            raise TypeError(f"Graph(now_ms=...) must be callable, not {type(now_ms).__name__}")
        _check_number("max_drift_ms", max_drift_ms)
        if float(max_drift_ms) > MAX_DRIFT_MS:
            # (a drift near the largest float let a peer's state there be merged, and the
            # next write of that field had no finite state left)
            raise ValueError(
                f"Graph(max_drift_ms=...) must be at most 2**44 ms; got {repr(max_drift_ms)[:40]}"
            )
        _check_number("max_deferred_bytes", max_deferred_bytes, integral=True, upper=1 << 64)
        _check_number("flush_interval", flush_interval)
        if ham is not None and not isinstance(ham, str):
            raise TypeError(f"Graph(ham=...) must be 'c', 'python' or None, not {ham!r}")
        table_type: Any
        if ham is None:
            table_type = _core.HamGraph
        elif ham == "c":
            table_type = _core.NativeHamGraph
        elif ham == "python":
            table_type = _reference.HamGraph
        else:
            # (a bad argument, as the docs say: ValueError naming it, like the others)
            raise ValueError(f"Graph(ham=...) must be 'c', 'python' or None, not {ham!r:.40}")
        self._table = table_type(max_deferred_bytes=int(max_deferred_bytes))
        self.ham_backend = "python" if table_type is _reference.HamGraph else "c"
        self.identity = identity
        self._lock = threading.RLock()
        self._view: _View | None = _View()
        self._subs: dict[str, list[Subscription]] = {}
        self._listeners: list[tuple[ChangeListener, object]] = []
        self.stats: dict[str, Any] = {
            "merged_batches": 0,
            "applied": 0,
            "deferred": 0,
            "dropped": 0,
            "refused": 0,
            "refused_by_reason": {},
            "view_rebuilds": 0,
        }
        # When the deferred queue may hold something due, without asking the table: a
        # table.advance() walks the whole queue (and the C one allocates its size), so a
        # peer that filled it with far-future updates made every put() and merge() pay
        # for that walk -- 22 ms each at the default cap. ``_due``: states of the queue,
        # sorted (at most _DUE_TRACKED, the smallest of those seen; ``_due_untracked``
        # when the queue holds more); ``_due_retry``: no untracked one is due before
        # this machine state (their smallest when they were dropped from ``_due``, then
        # past each advance -- backing off while such asks find nothing).
        self._due: list[float] = []
        self._due_untracked = False
        self._due_retry = 0.0
        self._due_backoff = _BLIND_RETRY_MIN
        self._storage: GraphStorage | None = None
        self._flush_interval = float(flush_interval)
        self._flusher: IdleFlusher | None = None
        self._compact_after = 0.0  # (monotonic) no compaction before then: one failed
        self._unclosed: weakref.finalize[..., Graph] | None = None
        last = 0.0
        if path is not None:
            self._storage = GraphStorage(path, flush_interval=self._flush_interval)
            try:
                # (the reservation is above every state issued, flushed or not)
                last = max(self._storage.clock_last(), self._storage.clock_reserved())
                for batch in self._storage.load():
                    try:
                        # (a log written before states were canonicalised may hold -0.0)
                        self._table.merge(canonical_states(batch), _MAX_STATE)
                    except RemoteProtocolError as exc:
                        # our own log, damaged: the file's fault, not a peer's
                        raise GraphStorageError(
                            f"graph database {str(path)!r} is corrupt: a log entry is "
                            f"not a valid HAM batch ({exc})"
                        ) from exc
                self.replica_id = self._storage.replica_id()
            except BaseException:
                # no Graph to close() comes out of a failed constructor: close the file here
                self._storage.close()
                raise
            if len(self._table):
                self._view = None
        else:
            self.replica_id = os.urandom(16)
        self.clock = HybridClock(now_ms, max_drift_ms=float(max_drift_ms), last=last)
        self._clock_reserved = last
        self._closed = False

    # -- writing ------------------------------------------------------------------------------

    def put(self, soul: str, data: Mapping[str, Any]) -> float:
        """Write fields of node ``soul``; returns the state they were written with.

        Values are JSON values; ``{"#": other}`` is a link; any other mapping becomes
        the node ``<soul>/<field>``, written too, with a link to it in the field.
        Writes to a user-space soul ``~<address>/...`` are signed with :attr:`identity`,
        which must own it. Nested mappings that reach one node's field by two paths
        (``{"b": {"c": ...}}`` and ``{"b/c": ...}``) are refused whole, even with equal
        values (LocalProtocolError, ``ARG``).
        """
        writes: list[tuple[bytes, bytes, bytes]] = []
        self._flatten(soul, data, writes, 0)
        twice = _field_written_twice(writes)
        if twice is not None:
            # two paths to one node's field ({"b": {"c": {...}}} and {"b/c": {...}} both
            # write node <soul>/b/c): written at one state, the merge would keep one of
            # them by its bytes, not the caller's order; refuse the write whole
            raise LocalProtocolError(
                f"put() writes field {twice[1]!r} of node {twice[0]!r} twice "
                "(nested mappings naming the same child node)",
                ErrorCode.ARG,
            )
        changes: list[Change] = []
        try:
            with self._lock:
                self._check_open()
                self._advance_due(changes)
                after: float | None = None
                for s, f, _ in writes:
                    current = self._table.get(s, f)
                    if current is not None and (after is None or current[0] > after):
                        after = current[0]
                state = self.clock.next(after)
                if state > self._clock_reserved and self._storage is not None:
                    self._reserve_clock(self._storage, state)
                updates = []
                for s, f, value in writes:
                    if namespace.is_user_space(s):
                        if self.identity is None:
                            raise LocalProtocolError(
                                "writing to a user-space soul needs the owner's identity",
                                ErrorCode.ARG,
                            )
                        value = namespace.seal(self.identity, s, f, state, value)
                    updates.append(HamUpdate(s, f, state, value))
                result = self._table.merge(encode_ham_batch(updates), max(state, _MAX_STATE))
                self._changed(result.changed, None, changes)
        finally:
            # deferred updates applied on the way in are committed (forwarded, logged):
            # their subscribers must hear of them even when this write fails (a value
            # too large, no identity for a user-space soul)
            self._deliver(changes)
        return state

    def set(self, soul: str, field: str, value: Any) -> float:
        """Write one field (see :meth:`put`)."""
        return self.put(soul, {field: value})

    def _flatten(
        self, soul: str, data: Mapping[str, Any], out: list[tuple[bytes, bytes, bytes]], depth: int
    ) -> None:
        if not isinstance(soul, str) or not soul:
            raise LocalProtocolError("a soul is a non-empty string", ErrorCode.ARG)
        if depth > 32:
            raise LocalProtocolError("nodes nested more than 32 deep", ErrorCode.ARG)
        s = _utf8(soul, "a soul")
        if namespace.is_user_space(s) and namespace.owner_of(s) is None:
            raise LocalProtocolError(
                f"user-space souls read ~0x<64 hex>[/...]: {soul!r}", ErrorCode.ARG
            )
        if not isinstance(data, Mapping) or not data:
            raise LocalProtocolError("put() takes a non-empty mapping of fields", ErrorCode.ARG)
        for field, value in data.items():
            if not isinstance(field, str) or not field:
                raise LocalProtocolError("field names are non-empty strings", ErrorCode.ARG)
            if isinstance(value, Mapping) and link_soul(value) is None:
                child = f"{soul}/{field}"
                self._flatten(child, value, out, depth + 1)
                value = {"#": child}
            out.append((s, _utf8(field, "a field name"), encode_value(value)))

    # -- merging what peers send ---------------------------------------------------------------

    def merge(self, batch: bytes | bytearray | memoryview, *, origin: object = None) -> MergeReport:
        """Merge a peer's HAM batch (protocol.md 6.1) after the ownership check.

        Raises RemoteProtocolError (``HAM_*`` code) for a malformed batch, before any
        change. ``origin`` (a sync session) is not sent its own changes back.
        """
        if not isinstance(batch, bytes | bytearray | memoryview):
            # bytes(5) would be five zero bytes, bytes("x") a TypeError
            raise LocalProtocolError(
                f"merge() takes a HAM batch as bytes, not {type(batch).__name__}", ErrorCode.ARG
            )
        data = canonical_states(bytes(batch))
        filtered, refused = namespace.filter_batch(data, self._held)
        changes: list[Change] = []
        try:
            with self._lock:
                self._check_open()
                self._advance_due(changes)
                result = self._table.merge(filtered, self.clock.machine_state())
                statuses = result.statuses
                dropped_leaves: dict[int, float] = {}
                if HAM_DEFERRED in statuses or HAM_REJECTED in statuses:
                    # (the merge validated the batch: the lean reader may walk it)
                    walked = list(zip(entries(filtered), statuses, strict=True))
                    self._track_deferred([e[2] for e, st in walked if st == HAM_DEFERRED])
                    for e, st in walked:
                        if st == HAM_REJECTED:
                            leaf = soul_leaf(e[0])
                            if e[2] < dropped_leaves.get(leaf, math.inf):
                                dropped_leaves[leaf] = e[2]
                report = MergeReport(
                    applied=statuses.count(HAM_APPLIED),
                    historical=statuses.count(HAM_HISTORICAL),
                    same=statuses.count(HAM_SAME),
                    deferred=statuses.count(HAM_DEFERRED),
                    dropped=statuses.count(HAM_REJECTED),
                    refused=sum(refused.values()),
                    dropped_leaves=dropped_leaves,
                )
                st = self.stats
                st["merged_batches"] += 1
                st["deferred"] += report.deferred
                st["dropped"] += report.dropped
                if refused:
                    st["refused"] += report.refused
                    by_reason = st["refused_by_reason"]
                    for reason, n in refused.items():
                        by_reason[reason] = by_reason.get(reason, 0) + n
                self._changed(result.changed, origin, changes)
        finally:
            # deferred updates applied on the way in are committed (forwarded, logged):
            # their subscribers must hear of them even when the peer's batch is
            # malformed
            self._deliver(changes)
        return report

    def _held(self, updates: list[HamUpdate]) -> list[bool]:
        """For each update, whether the table holds exactly it (see
        :func:`namespace.filter_batch`)."""
        with self._lock:
            if self._closed:
                return [False] * len(updates)  # (the merge refuses a closed graph)
            get = self._table.get
            out = []
            for soul, field, state, value in updates:
                entry = get(soul, field)
                out.append(entry is not None and entry[0] == state and entry[1] == value)
            return out

    def advance(self) -> int:
        """Apply deferred updates whose time has come; returns how many were applied."""
        changes: list[Change] = []
        with self._lock:
            self._check_open()
            n = self._advance_due(changes)
        self._deliver(changes)
        return n

    @property
    def deferred_count(self) -> int:
        """Updates held because their state is ahead of the machine clock."""
        with self._lock:
            self._check_open()
            return int(self._table.deferred_count)

    def _track_deferred(self, states: list[float]) -> None:
        """Note the states of updates the table just deferred (lock held)."""
        due = self._due
        due.extend(states)
        due.sort()
        if len(due) > _DUE_TRACKED:
            # the largest: the queue holds them, untracked, none due before the smallest
            dropped = due[_DUE_TRACKED]
            del due[_DUE_TRACKED:]
            if not self._due_untracked or dropped < self._due_retry:
                self._due_retry = dropped
            self._due_untracked = True

    def _advance_due(self, changes: list[Change]) -> int:
        """Apply the deferred updates now due, asking the table only when one may be
        (lock held)."""
        if not self._table.deferred_count:
            self._due.clear()
            self._due_untracked = False
            return 0
        machine = self.clock.machine_state()
        due = self._due
        tracked_due = bool(due) and due[0] <= machine
        untracked_due = self._due_untracked and self._due_retry <= machine
        if not tracked_due and not untracked_due:
            return 0
        changed = self._table.advance(machine)
        del due[: bisect.bisect_right(due, machine)]  # applied (or beaten by newer values)
        n = batch_count(changed)
        if not self._table.deferred_count:
            due.clear()
            self._due_untracked = False
        elif self._due_untracked and self._due_retry <= machine:
            # the untracked ones left are all above ``machine``: ask again a little
            # later, backing off while asking for them alone finds nothing (a queue of
            # far-future junk)
            self._due_backoff = (
                min(self._due_backoff * 2, _BLIND_RETRY_MAX)
                if not tracked_due and not n
                else _BLIND_RETRY_MIN
            )
            self._due_retry = machine + self._due_backoff
        self._changed(changed, None, changes)
        return n

    def _changed(self, changed: bytes, origin: object, changes: list[Change]) -> None:
        """Everything that follows a merge that applied updates (lock held)."""
        n = batch_count(changed)
        if not n:
            return
        self.stats["applied"] += n
        storage = self._storage
        if storage is not None:
            try:
                if storage.append(changed):
                    self._flush_locked()
                else:
                    self._arm_flusher(storage)
            except GraphStorageError as exc:
                # the change is in the table already: the view, the sync sessions and
                # the subscribers must still hear of it (a raise here left the summaries
                # and get() without it). The batch stays buffered; the flush is retried.
                logger.warning("graph: %s; the changes stay buffered and are retried", exc)
                self._arm_flusher(storage)
        decoded: list[Entry] | None = None
        view = self._view
        if view is not None:
            if n > _VIEW_DROP and n * 4 > view.size:
                self._view = None
            else:
                decoded = entries(changed)
                view.add(decoded)
        for listener, owner in self._listeners:
            if owner is not origin:
                # the change is committed: a failing sync session must not make the
                # write raise, nor keep it from the other sessions and the subscribers
                try:
                    listener(changed, origin)
                except Exception:
                    logger.exception("graph: change listener %r raised", listener)
        if self._subs:
            if decoded is None:
                decoded = entries(changed)
            self._collect_changes(decoded, changes)

    def _collect_changes(self, decoded: list[Entry], changes: list[Change]) -> None:
        subs = self._subs
        for soul_b, field_b, state, value, _ in decoded:
            soul = _text(soul_b)
            if soul is None or soul not in subs:
                continue
            field = _text(field_b)
            if field is None:
                continue
            try:
                decoded_value = self._value_of(soul_b, value)
            except DTPError:
                continue
            changes.append(Change(soul, field, decoded_value, state))

    def _deliver(self, changes: list[Change]) -> None:
        if not changes:
            return
        with self._lock:
            targets = [(c, list(self._subs.get(c.soul, ()))) for c in changes]
        for change, subs in targets:
            for sub in subs:
                if sub.active and (sub.field is None or sub.field == change.field):
                    # the change is already committed: a failing callback must not make
                    # put()/merge() raise (nor end a sync session), nor starve the others
                    try:
                        sub.callback(change)
                    except Exception:
                        logger.exception(
                            "graph: subscriber %r of %r raised", sub.callback, change.soul
                        )

    # -- reading --------------------------------------------------------------------------------

    @staticmethod
    def _value_of(soul: bytes, stored: bytes) -> JSON:
        if namespace.is_user_space(soul):
            stored = namespace.open_envelope(stored)
        return decode_value(stored)

    def get(self, soul: str) -> dict[str, JSON] | None:
        """The node's fields as a dict (links as ``{"#": soul}``), or None if unknown.

        Fields whose stored bytes are not JSON, and fields whose name is not UTF-8
        (written by a misbehaving peer), are left out.
        """
        s = _utf8(soul, "a soul")
        with self._lock:
            self._check_open()
            fields = self._ensure_view().fields.get(s)
            if not fields:
                return None
            stored = [(f, self._table.get(s, f)) for f in fields]
        node: dict[str, JSON] = {}
        for f, entry in stored:
            name = _text(f)
            if entry is None or name is None:
                continue
            try:
                node[name] = self._value_of(s, entry[1])
            except DTPError:
                continue
        return node

    def get_field(self, soul: str, field: str, default: Any = None) -> JSON:
        """One field's value, or ``default`` when the field is unknown."""
        s = _utf8(soul, "a soul")
        f = _utf8(field, "a field name")
        with self._lock:
            self._check_open()
            entry = self._table.get(s, f)
        if entry is None:
            return default  # type: ignore[no-any-return]
        return self._value_of(s, entry[1])

    def state_of(self, soul: str, field: str) -> float | None:
        """The HAM state of a field, or None."""
        s, f = _utf8(soul, "a soul"), _utf8(field, "a field name")
        with self._lock:
            self._check_open()
            entry = self._table.get(s, f)
        return None if entry is None else entry[0]

    def walk(self, soul: str, *path: str) -> str:
        """Follow links from ``soul`` through the fields in ``path``; returns the soul
        reached. KeyError when a field is missing or not a link."""
        _utf8(soul, "a soul")  # (with no path, nothing else would look at it)
        current = soul
        for field in path:
            target = link_soul(self.get_field(current, field))
            if target is None:
                raise KeyError(f"{current}.{field} is not a link")
            current = target
        return current

    def souls(self) -> list[str]:
        """Every node with at least one field (but those whose soul, written by a
        misbehaving peer, is not UTF-8: no str names them)."""
        with self._lock:
            self._check_open()
            names = [_text(s) for s in self._ensure_view().fields]
        return sorted(name for name in names if name is not None)

    def __len__(self) -> int:
        """Number of fields in the table (all nodes)."""
        with self._lock:
            self._check_open()
            return len(self._table)

    def __contains__(self, soul: object) -> bool:
        """True when node ``soul`` has at least one field."""
        with self._lock:
            self._check_open()  # (before the type: a closed graph refuses every read)
            if not isinstance(soul, str):
                return False
            try:
                s = soul.encode()
            except UnicodeEncodeError:  # no soul can hold a lone surrogate
                return False
            return s in self._ensure_view().fields

    # -- subscriptions ----------------------------------------------------------------------------

    def subscribe(
        self, soul: str, callback: Callable[[Change], None], *, field: str | None = None
    ) -> Subscription:
        """Call ``callback(change)`` for every change of node ``soul`` (or of one field),
        local or from a peer. Callbacks run in the thread that made the change, after
        the graph's lock is released: changes committed at once in several threads may
        arrive out of order (compare ``change.state``; see docs/graph.md)."""
        _check_names(soul, field)
        if not callable(callback):
            raise LocalProtocolError("subscribe() needs a callable callback", ErrorCode.ARG)
        sub = Subscription(self, soul, field, callback)
        with self._lock:
            self._check_open()
            self._subs.setdefault(soul, []).append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._subs.get(sub.soul, [])
            if sub in subs:
                subs.remove(sub)
            if not subs:
                self._subs.pop(sub.soul, None)

    def changes(self, soul: str, *, field: str | None = None, maxsize: int = 1024) -> ChangeStream:
        """An async iterator of :class:`Change` for a node or a field (call it from a
        running event loop); ``close()`` it when done. It holds at most ``maxsize``
        changes (>= 1, else ValueError), dropping the oldest beyond that."""
        return ChangeStream(self, soul, field, maxsize)

    # -- what sync sessions use ---------------------------------------------------------

    def add_listener(self, listener: ChangeListener, owner: object) -> None:
        """Call ``listener(changed_batch, origin)`` after every merge that changes the
        table, except those whose origin is ``owner``."""
        _check_listener(listener)
        with self._lock:
            self._check_open()
            self._listeners.append((listener, owner))

    def listen(
        self,
        listener: ChangeListener,
        owner: object,
        then: Callable[[tuple[int, int]], None] | None = None,
    ) -> tuple[int, int]:
        """Register a listener (as :meth:`add_listener`) and return the root summary,
        atomically: every change after the summary reaches the listener. ``then(root)``
        runs inside that, before any change can reach the listener (a sync session
        queues its HELLO there: queued after, a change committed in between went out
        first, and the peer refused it as a message before HELLO)."""
        _check_listener(listener)
        with self._lock:
            self._check_open()
            root = self._ensure_view().root()
            self._listeners.append((listener, owner))
            if then is not None:
                then(root)
            return root

    def remove_listener(self, owner: object) -> None:
        """Remove the listeners registered for ``owner``."""
        with self._lock:
            self._listeners = [(fn, o) for fn, o in self._listeners if o is not owner]

    def _ensure_view(self) -> _View:
        view = self._view
        if view is None:
            view = _View()
            for batch in self._table.export():
                view.add(entries(batch))
            self._view = view
            self.stats["view_rebuilds"] += 1
        return view

    def root_summary(self) -> tuple[int, int]:
        """(digest, field count) of the whole table."""
        with self._lock:
            self._check_open()
            return self._ensure_view().root()

    def child_summaries(self, level: int, prefix: int) -> dict[int, tuple[int, int]]:
        """Non-empty children of summary node (level, prefix): prefix -> (digest, count).

        ``level`` is 0..LEAF_LEVEL - 1 (leaves have no children) and ``prefix`` one of
        that level's nodes (0 at the root); TypeError / ValueError otherwise."""
        _check_node("child_summaries()", (level, prefix), LEAF_LEVEL - 1)
        with self._lock:
            self._check_open()
            return self._ensure_view().children(level, prefix)

    def node_batches(self, nodes: list[tuple[int, int]]) -> Iterator[bytes]:
        """The table's updates under summary nodes ``(level, prefix)`` (level
        0..LEAF_LEVEL), as batches of at most 4096 updates and about 1 MiB (one update
        larger than that goes alone), made one at a time as they are asked for.

        The nodes are checked at the call (TypeError / ValueError), not at the first
        batch. Each batch reads its slice of the table under the lock, so that at most
        one is held and other writers wait for one batch, not for a whole push. Values
        may change between batches (each carries the value current when it is made); a
        field added after the walk passed its soul is not in them (a sync session
        forwards it live). LocalProtocolError once the graph is closed."""
        try:
            pairs = iter(nodes)
        except TypeError:  # (only this: one raised while iterating is the caller's own)
            raise TypeError(
                f"node_batches() takes (level, prefix) pairs, not {type(nodes).__name__}"
            ) from None
        checked = [_check_node("node_batches()", node, LEAF_LEVEL) for node in pairs]
        return self._node_batches(checked)

    def _node_batches(self, nodes: list[tuple[int, int]]) -> Iterator[bytes]:
        leaves = (
            leaf
            for level, prefix in nodes
            for leaf in range(
                prefix << (LEAF_BITS - FANOUT_BITS * level),
                (prefix + 1) << (LEAF_BITS - FANOUT_BITS * level),
            )
        )
        # Where the walk is: the current leaf's souls and the current soul's fields not
        # yet read. Only names are copied (references, at C speed); values are read a
        # batch at a time, and the copies make the walk immune to the view changing or
        # being rebuilt between batches.
        souls: list[bytes] = []
        next_soul = 0
        soul = b""
        fields: list[bytes] = []
        next_field = 0
        done = False
        while not done:
            updates: list[HamUpdate] = []
            size = 0
            with self._lock:
                self._check_open()
                view = self._ensure_view()
                get = self._table.get
                while len(updates) < _BATCH_UPDATES and size < _BATCH_BYTES:
                    if next_field < len(fields):
                        field = fields[next_field]
                        next_field += 1
                        entry = get(soul, field)
                        if entry is not None:
                            updates.append(HamUpdate(soul, field, entry[0], entry[1]))
                            # (the encoded size, but for a few bytes of lengths)
                            size += len(soul) + len(field) + len(entry[1]) + 16
                    elif next_soul < len(souls):
                        soul = souls[next_soul]
                        next_soul += 1
                        fields = list(view.fields.get(soul, ()))
                        next_field = 0
                    else:
                        leaf = next(leaves, None)
                        if leaf is None:
                            done = True
                            break
                        souls = list(view.leaves.get(leaf, ()))
                        next_soul = 0
            if updates:
                yield encode_ham_batch(updates)

    def export(self, max_batch_bytes: int = 1 << 20) -> Iterator[bytes]:
        """The whole table as canonical batches, straight from the HAM table, read at
        the first batch.

        ``max_batch_bytes``: an int >= 1 (a batch is never smaller than one maximal
        entry needs, nor larger than 64 MiB however large this is), checked at the call
        (TypeError / ValueError): 0, a negative size or ``True`` were taken as the
        smallest batches."""
        check_int("export(max_batch_bytes=...)", max_batch_bytes, 1)
        return self._export(max_batch_bytes)

    def _export(self, max_batch_bytes: int) -> Iterator[bytes]:
        with self._lock:
            self._check_open()
            batches = list(self._table.export(max_batch_bytes))
        yield from batches

    def export_stream(self, max_batch_bytes: int = 1 << 20) -> Iterator[bytes]:
        """The whole table as canonical batches, made one at a time as they are asked
        for (each under the lock), so that at most one is held; for the push of a sync
        session, which must not hold a copy of the table while its peer reads.

        ``max_batch_bytes`` as for :meth:`export` (checked at the call). Values may
        change between batches (each carries the value current when it is made). A
        field added between two of them makes the next one raise RuntimeError: adding
        may move the table's entries, so the rest of the walk would skip some.
        LocalProtocolError once the graph is closed."""
        check_int("export_stream(max_batch_bytes=...)", max_batch_bytes, 1)
        return self._export_stream(max_batch_bytes)

    def _export_stream(self, max_batch_bytes: int) -> Iterator[bytes]:
        with self._lock:
            self._check_open()
            batches = self._table.export(max_batch_bytes)
        while True:
            with self._lock:
                self._check_open()
                batch = next(batches, None)
            if batch is None:
                return
            yield batch

    # -- persistence ------------------------------------------------------------------------------

    def flush(self) -> None:
        """Write buffered changes to SQLite now (compacting the log when it has grown).

        GraphStorageError if the file cannot be written (the changes stay buffered). A
        compaction that fails is logged, not raised (the changes are written by then),
        and not tried again for a minute."""
        with self._lock:
            self._check_open()
            self._flush_locked()

    def _reserve_clock(self, storage: GraphStorage, state: float) -> None:
        """Persist, before ``state`` leaves put(), that states up to a little past it
        may be issued (lock held).

        The state goes out at once -- returned, forwarded to sync peers -- while its
        batch and the clock reach the file only with the next flush. After a crash in
        between, a clock restarted from the last flushed state, with the wall clock
        behind, would give the next write of that field a lower state than the lost one
        a peer still holds, so the peer's older value would come back and win over the
        new one everywhere. Reserving 250 ms ahead costs one small SQLite write per 250 ms of
        states, not one per write.
        """
        reserved = state + _CLOCK_RESERVE
        try:
            storage.reserve_clock(reserved)
        except GraphStorageError as exc:
            # the write still takes effect (as when a flush fails); not retried per put
            logger.warning("graph: %s; the clock is persisted with the next flush", exc)
        self._clock_reserved = reserved

    def _arm_flusher(self, storage: GraphStorage) -> None:
        """Make sure what is buffered reaches disk even if no later write comes (lock
        held). The thread starts with the first buffered write, so in-memory and
        read-only graphs have none."""
        flusher = self._flusher
        if flusher is None:
            flusher = self._flusher = IdleFlusher(
                weakref.WeakMethod(self._flush_idle), self._flush_interval
            )
            self._unclosed = weakref.finalize(
                self, _flush_unclosed, self._lock, storage, self.clock, flusher
            )
        flusher.arm()

    def _flush_idle(self) -> None:
        with self._lock:
            if not self._closed:
                self._flush_locked()

    def _flush_locked(self) -> None:
        storage = self._storage
        if storage is None:
            return
        storage.flush(self.clock.last)
        if storage.should_compact() and time.monotonic() >= self._compact_after:
            try:
                storage.compact(self._table.export(), self.clock.last)
            except GraphStorageError as exc:
                # the flush is done: every change is on disk, in the log. A compaction
                # only rewrites it smaller, and one that fails (a full disk: it writes
                # the whole table once more) rolls back whole. Raised, it would fail the
                # flush -- and close(), which would then leave the graph open, for good
                # while the disk stays full -- and each later flush export the table again
                self._compact_after = time.monotonic() + _COMPACT_RETRY
                logger.warning(
                    "graph: compacting the log failed (%s); the log is kept as it is, "
                    "and compacted again in %.0f s at the earliest",
                    exc,
                    _COMPACT_RETRY,
                )

    @property
    def storage(self) -> GraphStorage | None:
        """The SQLite store, or None for an in-memory graph."""
        return self._storage

    def _check_open(self) -> None:
        if self._closed:
            raise LocalProtocolError("the graph is closed", ErrorCode.ARG)

    def close(self) -> None:
        """Flush and close the SQLite file (idempotent). From then on writes, reads
        (``len()`` and ``in`` included), flush() and subscribe() raise
        LocalProtocolError (existing subscriptions can still cancel; :meth:`changes`
        iterators end once drained). If the final flush fails (GraphStorageError) the
        graph stays open, so that close() can be retried."""
        with self._lock:
            if self._closed:
                return
            self._flush_locked()
            if self._storage is not None:
                self._storage.close()
            self._closed = True
            flusher, self._flusher = self._flusher, None
            if self._unclosed is not None:
                self._unclosed.detach()
                self._unclosed = None
            ending = [sub for subs in self._subs.values() for sub in subs]
        if flusher is not None:
            # joined outside the lock: the thread may be waiting for it, and then finds
            # the graph closed
            flusher.close()
        for sub in ending:
            if sub._on_graph_close is not None:
                sub._on_graph_close()

    def __enter__(self) -> Graph:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def snapshot(self) -> dict[tuple[bytes, bytes], tuple[float, bytes]]:
        """Every field as (soul, field) -> (state, stored value) -- for tests and tools."""
        out: dict[tuple[bytes, bytes], tuple[float, bytes]] = {}
        for batch in self.export():
            for soul, field, state, value, _ in entries(batch):
                out[soul, field] = (state, value)
        return out

    async def watch_deferred(self, interval: float = 0.25) -> None:
        """Apply deferred updates as their time comes, until cancelled (asyncio).

        ``interval``: seconds between checks, a finite number > 0 (else TypeError /
        ValueError: NaN, 0 or less would spin the event loop)."""
        if isinstance(interval, bool) or not isinstance(interval, int | float):
            raise TypeError(
                "watch_deferred(interval=...) must be a number of seconds, "
                f"not {type(interval).__name__}"
            )
        if not 0 < interval < math.inf:
            raise ValueError(
                f"watch_deferred(interval=...) must be finite and > 0, not {interval!r}"
            )
        while True:
            await asyncio.sleep(interval)
            if self._table.deferred_count:
                self.advance()


__all__ = [
    "FANOUT_BITS",
    "LEAF_BITS",
    "LEAF_LEVEL",
    "Change",
    "ChangeListener",
    "ChangeStream",
    "Graph",
    "MergeReport",
    "Subscription",
    "entry_hash",
    "soul_leaf",
]


def _field_written_twice(writes: list[tuple[bytes, bytes, bytes]]) -> tuple[str, str] | None:
    """The first (soul, field) that ``writes`` names twice, decoded for a message."""
    seen: set[tuple[bytes, bytes]] = set()
    for s, f, _ in writes:
        if (s, f) in seen:
            return s.decode("utf-8", "replace"), f.decode("utf-8", "replace")
        seen.add((s, f))
    return None
