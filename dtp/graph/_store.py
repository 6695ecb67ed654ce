"""The graph: nodes ("souls") with fields, over the HAM table (docs/graph.md).

:class:`Graph` is the user-facing store. Each field is one entry of the HAM table
(``dtp.native.core.HamGraph``: C by default, the pure-Python twin with ``DTP_PUREPYTHON=1`` or
``ham="python"``), keyed by (soul, field) and holding (state, the value's Gun text in UTF-8).
Writes take their state from a :class:`~dtp.graph._clock.HybridClock`; updates from peers
go through the ownership check (:mod:`dtp.graph.namespace`) and then one C merge per
batch. Whatever a merge *changed* is, in this order: logged to SQLite
(:mod:`dtp.graph._persist`), folded into the sync summaries, forwarded to live sync
sessions and delivered to subscribers.

Per-field Python work is paid only for what needs it. The soul index and the sync
summaries (the *view*) are built lazily from the table's export and then kept up to
date; a merge that changes a large share of the table drops the view instead, to be
rebuilt on the next read (amortised O(1) per change). A bulk sync into a fresh replica
therefore costs one C merge and one SQLite row per batch.

The class reads top to bottom: made and closed, local writes, merging what peers send
and the deferred updates, what follows every change (:meth:`Graph._changed`), reads,
queries, subscriptions, the tiers' handles and what sync sessions read. What has state
of its own is an object the graph holds and calls: the SQLite write-back
(:class:`~dtp.graph._writeback.WriteBack`), the query tables and live queries
(:class:`~dtp.graph._queries.QueryEngine`), the summaries
(:class:`~dtp.graph._summaries.SummaryView`); the rules, the history and the tiers' node
handles read the graph through Protocols of their own modules.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import numbers
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from dtp.errors import DTPError, ErrorCode, LocalProtocolError, RemoteProtocolError
from dtp.graph import _private as private
from dtp.graph import namespace, sea
from dtp.graph._arguments import check_int, check_listener, check_names, name_text, utf8_name
from dtp.graph._batch import Entry, batch_count, entries
from dtp.graph._changes import Change, ChangeStream, Subscription
from dtp.graph._clock import MAX_DRIFT_MS, HybridClock, wall_clock_ms
from dtp.graph._formats import Migration, migrate_batch
from dtp.graph._history import History
from dtp.graph._merges import MergeReport, canonical_states
from dtp.graph._persist import GraphStorage, GraphStorageError
from dtp.graph._queries import QueryEngine
from dtp.graph._query import (
    LiveQuery,
    Query,
    QueryError,
    QueryUpdate,
    Where,
    check_field,
    check_soul,
    make_where,
)
from dtp.graph._query_index import QueryIndex, ReadSet, explain
from dtp.graph._reported import ReportedRefusals
from dtp.graph._summaries import (
    FANOUT_BITS,
    LEAF_BITS,
    LEAF_LEVEL,
    SummaryView,
    check_node,
    soul_leaf,
)
from dtp.graph._tiers import (
    PrivateNode,
    ProtectedNode,
    PublicNode,
    Sealer,
    Signer,
    private_node,
    protected_node,
    public_node,
    signed_value,
)
from dtp.graph._writeback import WriteBack
from dtp.graph.rules import EMPTY_BATCH, RULE, Refusal, RuleRefused, RuleSet
from dtp.graph.values import (
    JSON,
    GunValue,
    check_field_name,
    encode_value,
    link_soul,
)
from dtp.identity.keys import HostIdentity
from dtp.native import core as _core
from dtp.native import reference as _reference
from dtp.native.core import encode_ham_batch
from dtp.native.types import (
    HAM_APPLIED,
    HAM_DEFERRED,
    HAM_HISTORICAL,
    HAM_REJECTED,
    HAM_SAME,
    HamUpdate,
)

if TYPE_CHECKING:
    from dtp.graph.collab import CollabArray, CollabMap, CollabText

logger = logging.getLogger(__name__)

MAX_STATE = sys.float_info.max
"""The machine state to merge our own writes and log at: nothing is ahead of it."""

ChangeListener = Callable[[bytes, object], None]
"""``listener(changed_batch, origin)``: a sync session forwarding changes to its peer."""

_VIEW_DROP = 2048  # a changed batch larger than this and a quarter of the table drops the view
_DUE_TRACKED = 4096  # deferred states tracked one by one (the smallest ones)
_BLIND_RETRY_MIN = 1.0  # ms: shortest wait between blind advances (states not tracked)
_BLIND_RETRY_MAX = 1000.0  # ms: longest one (while they find nothing)
_BATCH_UPDATES = 4096  # updates per batch built in Python (pushes of summary nodes)
_BATCH_BYTES = 1 << 20  # about the bytes of one such batch (as the export's)
_MISSING: Any = object()  # walk(): a field the node does not hold

_Item = TypeVar("_Item")


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
        # every field's (state, stored value bytes), and the deferred queue
        self._table = table_type(max_deferred_bytes=int(max_deferred_bytes))
        self.ham_backend = "python" if table_type is _reference.HamGraph else "c"
        """``"c"`` or ``"python"``: which HAM table the graph runs on."""
        self.identity = identity
        """The host key that signs writes to its own user space ``~<address>/...``."""
        # guards the table and everything below: sync sessions merge in their threads
        self._lock = threading.RLock()
        # the soul index and summaries, None while a large merge left them to rebuild
        self._view: SummaryView | None = SummaryView()
        self._subs: dict[str, list[Subscription]] = {}  # subscriptions by soul
        # those of collected streams whose finalizer found the lock taken
        self._abandoned: deque[Subscription] = deque()
        # sync sessions' change listeners, each with its owner (not sent its own changes)
        self._listeners: list[tuple[ChangeListener, object]] = []
        # the query tables (made by the first query or index) and the live queries
        self._query = QueryEngine(self._lock)
        self.stats: dict[str, Any] = {
            "merged_batches": 0,
            "applied": 0,
            "deferred": 0,
            "dropped": 0,
            "refused": 0,
            "refused_by_reason": {},
            "refused_by_rule": {},
            "refused_by_peers": 0,
            "view_rebuilds": 0,
        }
        """Counters of merges and what they did, and of rebuilds of the summaries."""
        self.rules = RuleSet(self)
        """The graph's validation rules, run before every local write and every peer's
        update merges (docs/graph.md, "Rules")."""
        self.history = History(self)
        """The edit history of the nodes tracked: ``graph.history(soul)`` reads one
        (docs/graph.md, "History")."""
        # When the deferred queue may hold something due, without asking the table: a
        # table.advance() walks the whole queue (and the C one allocates its size), and a
        # peer that fills it with far-future updates must not make every put() and
        # merge() pay for that walk (about 22 ms each at the default cap). ``_due``:
        # states of the queue, sorted (at most _DUE_TRACKED, the smallest of those seen;
        # ``_due_untracked`` when the queue holds more); ``_due_retry``: no untracked
        # one is due before this machine state (their smallest when they were dropped
        # from ``_due``, then past each advance -- backing off while such asks find
        # nothing).
        self._due: list[float] = []
        self._due_untracked = False
        self._due_retry = 0.0
        self._due_backoff = _BLIND_RETRY_MIN
        storage: GraphStorage | None = None
        last = 0.0
        if path is not None:
            storage = GraphStorage(path, flush_interval=float(flush_interval))
            try:
                # (the reservation is above every state issued, flushed or not)
                last = max(storage.clock_last(), storage.clock_reserved())
                # a file of format 1 is migrated as it is read (dtp.graph._formats)
                migration = Migration() if storage.format == 1 else None
                for batch in storage.load():
                    try:
                        if migration is not None:
                            batch = migrate_batch(batch, migration)
                        # (a log written before states were canonicalised may hold -0.0)
                        self._table.merge(canonical_states(batch), MAX_STATE)
                    except RemoteProtocolError as exc:
                        # our own log, damaged: the file's fault, not a peer's
                        raise GraphStorageError(
                            f"graph database {str(path)!r} is corrupt: a log entry is "
                            f"not a valid HAM batch ({exc})"
                        ) from exc
                if migration is not None:
                    # written whole or not at all: a failure leaves the file of format 1
                    # (GraphStorageError out of the constructor), migrated again next time
                    storage.compact(self._table.export(), storage.clock_last(), migrated=True)
                    logger.info(
                        "graph: migrated %s from format 1: %d updates, %d values respelled "
                        "in Gun's text, %d signed ones and %d that Gun cannot hold kept "
                        "as they were; %d fields",
                        path,
                        migration.updates,
                        migration.respelled,
                        migration.signed_kept,
                        migration.not_gun_kept,
                        len(self._table),
                    )
                self.migration = migration
                """What opening the file migrated, when it was of format 1 (docs/graph.md,
                "Format versions"); None otherwise."""
                self.replica_id = storage.replica_id()
                """This replica's 16 random bytes (kept in the SQLite file), sent in a
                sync HELLO."""
                # query tables the file has, rebuilt when out of step with its log
                self._query.index = QueryIndex.open(
                    storage, self._table, self._value_of, migrated=migration is not None
                )
            except BaseException:
                # no Graph to close() comes out of a failed constructor: close the file here
                storage.close()
                raise
            if len(self._table):
                self._view = None
        else:
            self.replica_id = os.urandom(16)
            self.migration = None
        self.clock = HybridClock(now_ms, max_drift_ms=float(max_drift_ms), last=last)
        """Issues the states of local writes; says how far ahead a peer's state may be."""
        # the write-back to the SQLite file; None for an in-memory graph
        self._writeback = (
            None
            if storage is None
            else WriteBack(
                storage, self._lock, self.clock, self._table, float(flush_interval), last
            )
        )
        # what sync sessions have told each peer of its refused updates (in the file)
        self._reported = ReportedRefusals(storage)
        self._closed = False

    def flush(self) -> None:
        """Write buffered changes to SQLite now (compacting the log when it has grown).

        GraphStorageError if the file cannot be written (the changes stay buffered). A
        compaction that fails is logged, not raised (the changes are written by then),
        and not tried again for a minute."""
        with self._lock:
            self._check_open()
            if self._writeback is not None:
                self._writeback.flush_locked()

    @property
    def storage(self) -> GraphStorage | None:
        """The SQLite store, or None for an in-memory graph."""
        return None if self._writeback is None else self._writeback.storage

    def close(self) -> None:
        """Flush and close the SQLite file (idempotent). From then on writes, reads
        (``len()`` and ``in`` included), flush() and subscribe() raise
        LocalProtocolError (existing subscriptions can still cancel; :meth:`changes`
        iterators end once drained). If the final flush fails (GraphStorageError) the
        graph stays open, so that close() can be retried."""
        with self._lock:
            if self._closed:
                return
            flusher = None if self._writeback is None else self._writeback.close()
            self._closed = True
            self._query.close()
            # copies first: a collected stream's finalizer may remove its subscription
            # in the middle of this
            ending = [sub for subs in list(self._subs.values()) for sub in list(subs)]
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

    # -- what the methods below all use ----------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise LocalProtocolError("the graph is closed", ErrorCode.ARG)

    _value_of = staticmethod(signed_value)

    def _ensure_view(self) -> SummaryView:
        view = self._view
        if view is None:
            view = SummaryView()
            for batch in self._table.export():
                view.add(entries(batch))
            self._view = view
            self.stats["view_rebuilds"] += 1
        return view

    # -- local writes: nested mappings flattened, stamped, signed, merged as one batch -----

    def put(self, soul: str, data: Mapping[str, Any]) -> float:
        """Write fields of node ``soul``; returns the state they were written with.

        Values are what a Gun peer holds (docs/graph.md, "Values"): None, bools,
        numbers, strings; ``{"#": other}`` is a link; any other mapping becomes the node
        ``<soul>/<field>``, written too, with a link to it in the field. Anything else
        (a list, an int no binary64 holds, NaN, a field named ``_``) raises
        :class:`~dtp.graph.values.GraphValueError` and writes nothing.
        Writes to a user-space soul ``~<address>/...`` are signed with :attr:`identity`,
        which must own it; a write to a Gun user space (``~<pub>``, whose values only
        SEA's owner signs: :mod:`dtp.graph.sea`) is refused (LocalProtocolError,
        ``ARG``), and so is one breaking another rule of gun's (an alias list, a
        content-addressed soul). Nested mappings that reach one node's field by two paths
        (``{"b": {"c": ...}}`` and ``{"b/c": ...}``) are refused whole, even with equal
        values (LocalProtocolError, ``ARG``).
        The graph's rules (:attr:`rules`) judge every field first: one refused raises
        :class:`~dtp.graph.rules.RuleRefused` and nothing is written. A node whose
        history is tracked (:attr:`history`) gets a version of this write, in the same
        batch. (The tiers' handles write through the same path: :meth:`_write`.)
        """
        writes = self._fields_of(soul, data)
        for s, _, _ in writes:
            if private.is_private(s):
                # encrypted to readers and signed by the author: only the tier's API
                # (dtp.graph._tiers) makes such values
                raise LocalProtocolError(
                    f"put() to the private soul {s.decode(errors='replace')[:80]!r}: write "
                    "with graph.private(...) (docs/graph.md, 'Privacy tiers')",
                    ErrorCode.ARG,
                )
        return self._write(writes, Signer(self.identity))

    def set(self, soul: str, field: str, value: Any) -> float:
        """Write one field (see :meth:`put`)."""
        return self.put(soul, {field: value})

    def _write(
        self,
        data: Sequence[tuple[bytes, bytes, bytes]],
        sealer: Sealer,
        records: Sequence[tuple[bytes, bytes, Callable[[float], bytes]]] = (),
        *,
        versioned: bool = True,
    ) -> float:
        """The one path of every local write -- :meth:`put`, :meth:`set`, the tiers'
        handles (:mod:`dtp.graph._tiers`), a private space's key records -- as one
        batch at one state; returns the state.

        ``data``: (soul, field, the value's Gun text), each stored as
        ``sealer.seal(soul, field, state, text)`` makes it (plain, signed over the
        state, or encrypted with it as associated data); a tracked node's version and
        heads (:attr:`history`, read with ``sealer.open``) are written with them, sealed
        alike. ``records``: fields whose stored value is made from the state alone
        (``make(state)``: a private space's readers and wrapped keys), no history's.
        ``versioned`` False: no version either way (a collaborative value's records,
        :mod:`dtp.graph.collab`, are their own history). Then the rules (:attr:`rules`)
        judge every update, as peers will: one refused raises
        :class:`~dtp.graph.rules.RuleRefused`. What raises -- a seal, a rule --
        leaves the graph as it was."""
        changes: list[Change] = []
        try:
            with self._lock:
                self._check_open()
                self._advance_due(changes)
                # a tracked node's version and heads (dtp.graph._history), written with it
                tracking = versioned and self.history.tracking
                plan = self.history.plan(data, sealer.open) if tracking else None
                touched = [(s, f) for s, f, _ in data] + [(s, f) for s, f, _ in records]
                if plan is not None:
                    touched.extend(plan.touched)
                after: float | None = None
                for s, f in touched:
                    current = self._table.get(s, f)
                    if current is not None and (after is None or current[0] > after):
                        after = current[0]
                state = self.clock.next(after)
                if plan is not None:
                    data = [*data, *plan.writes(state)]
                writeback = self._writeback
                if writeback is not None and state > writeback.clock_reserved:
                    writeback.reserve_clock(state)
                updates = [HamUpdate(s, f, state, make(state)) for s, f, make in records]
                seal = sealer.seal
                updates.extend(
                    HamUpdate(s, f, state, seal(s, f, state, text)) for s, f, text in data
                )
                if self.rules.active:
                    refused = self.rules.check_local(updates)
                    if refused is not None:
                        name = refused.rule or ""
                        by_rule = self.stats["refused_by_rule"]
                        by_rule[name] = by_rule.get(name, 0) + 1
                        raise RuleRefused(refused)
                result = self._table.merge(encode_ham_batch(updates), max(state, MAX_STATE))
                self._changed(result.changed, None, changes)
        finally:
            # deferred updates applied on the way in are committed (forwarded, logged):
            # their subscribers must hear of them even when this write fails (a value
            # too large, no identity for a user-space soul, a rule's refusal)
            self._deliver(changes)
        return state

    def _fields_of(self, soul: str, data: Mapping[str, Any]) -> list[tuple[bytes, bytes, bytes]]:
        """What :meth:`put` would write for ``data``: (soul, field, the value's Gun
        text) for the node and every nested node, checked as put() checks them."""
        writes: list[tuple[bytes, bytes, bytes]] = []
        self._flatten(soul, data, writes, 0)
        twice = _field_written_twice(writes)
        if twice is not None:
            raise LocalProtocolError(
                f"put() writes field {twice[1]!r} of node {twice[0]!r} twice "
                "(nested mappings naming the same child node)",
                ErrorCode.ARG,
            )
        return writes

    def _flatten(
        self,
        soul: str,
        data: Mapping[str, Any],
        out: list[tuple[bytes, bytes, bytes]],
        depth: int,
        above: tuple[tuple[int, str], ...] = (),
    ) -> None:
        if not isinstance(soul, str) or not soul:
            raise LocalProtocolError("a soul is a non-empty string", ErrorCode.ARG)
        if depth > 32:
            raise LocalProtocolError("nodes nested more than 32 deep", ErrorCode.ARG)
        s = utf8_name(soul, "a soul")
        if namespace.is_user_space(s) and namespace.owner_of(s) is None:
            raise LocalProtocolError(
                f"user-space souls read ~0x<64 hex>[/...]: {soul!r}", ErrorCode.ARG
            )
        if not isinstance(data, Mapping) or not data:
            raise LocalProtocolError("put() takes a non-empty mapping of fields", ErrorCode.ARG)
        for field, value in data.items():
            if not isinstance(field, str) or not field:
                raise LocalProtocolError("field names are non-empty strings", ErrorCode.ARG)
            check_field_name(field)
            if isinstance(value, Mapping) and link_soul(value) is None:
                # the mappings on the way down and their souls: one that holds itself
                # would otherwise recurse to the depth limit, whose message hides why
                path = (*above, (id(data), soul))
                _check_nested(soul, field, value, path)
                child = f"{soul}/{field}"
                self._flatten(child, value, out, depth + 1, path)
                value = {"#": child}
            out.append((s, utf8_name(field, "a field name"), encode_value(value)))

    # -- merging what peers send (protocol.md 6.1), and the deferred updates ---------------

    def merge(
        self,
        batch: bytes | bytearray | memoryview,
        *,
        origin: object = None,
        atomic: bool = False,
    ) -> MergeReport:
        """Merge a peer's HAM batch (protocol.md 6.1) after the ownership check, the
        checks of Gun's user spaces (:func:`dtp.graph.sea.filter_batch`) and of the
        private tier (:func:`dtp.graph._private.filter_batch`), and the graph's rules
        (:attr:`rules`, docs/graph.md "Rules").

        Raises RemoteProtocolError (``HAM_*`` code) for a malformed batch, before any
        change. ``origin`` (a sync session) is not sent its own changes back.
        ``atomic``: merge nothing of the batch when any of its updates is refused (the
        Gun endpoint takes a put whole or not at all); otherwise the rest is merged.
        """
        return self._merge(batch, origin, atomic=atomic, final=True)

    def _merge(
        self,
        batch: bytes | bytearray | memoryview,
        origin: object,
        *,
        atomic: bool,
        final: bool,
    ) -> MergeReport:
        """:meth:`merge`; with ``final`` False the rules' refusals are reported but not
        counted in :attr:`stats` (a sync session tries them again once its peer's whole
        exchange is in, and counts those still refused then:
        :meth:`_count_rule_refusals`)."""
        if not isinstance(batch, bytes | bytearray | memoryview):
            # bytes(5) would be five zero bytes, bytes("x") a TypeError
            raise LocalProtocolError(
                f"merge() takes a HAM batch as bytes, not {type(batch).__name__}", ErrorCode.ARG
            )
        data = canonical_states(bytes(batch))
        details: list[tuple[HamUpdate, str, str]] = []
        filtered, refused = namespace.filter_batch(data, self._held, details)
        filtered, sea_refused = sea.filter_batch(filtered, self._held, details)
        for reason, n in sea_refused.items():
            refused[reason] = refused.get(reason, 0) + n
        # the private tier: only the author signs there (dtp.graph._private)
        filtered, private_refused = private.filter_batch(filtered, self._held, details)
        for reason, n in private_refused.items():
            refused[reason] = refused.get(reason, 0) + n
        refusals = [Refusal.of(u, reason, message) for u, reason, message in details]
        changes: list[Change] = []
        try:
            with self._lock:
                self._check_open()
                self._advance_due(changes)
                by_rules: list[Refusal] = []
                if self.rules.active:
                    # (under the lock: a rule sees the current value the merge compares)
                    filtered, by_rules = self.rules.filter_batch(filtered)
                    refusals.extend(by_rules)
                    if by_rules and final:
                        refused[RULE] = len(by_rules)
                        self._count_by_rule(by_rules)
                if atomic and (refused or by_rules):
                    filtered = EMPTY_BATCH  # taken whole or not at all
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
                    refused=sum(refused.values()) + (0 if final else len(by_rules)),
                    dropped_leaves=dropped_leaves,
                    refusals=tuple(refusals),
                )
                st = self.stats
                st["merged_batches"] += 1
                st["deferred"] += report.deferred
                st["dropped"] += report.dropped
                if refused:
                    st["refused"] += sum(refused.values())
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

    def _count_by_rule(self, refusals: list[Refusal]) -> None:
        """Count the rules' refusals by rule (lock held)."""
        by_rule = self.stats["refused_by_rule"]
        for r in refusals:
            if r.rule is not None:
                by_rule[r.rule] = by_rule.get(r.rule, 0) + 1

    def _count_rule_refusals(self, refusals: list[Refusal]) -> None:
        """Count, as :meth:`merge` does, the rules' refusals a merge with ``final``
        False left uncounted, once they are final."""
        if not refusals:
            return
        with self._lock:
            st = self.stats
            st["refused"] += len(refusals)
            by_reason = st["refused_by_reason"]
            by_reason[RULE] = by_reason.get(RULE, 0) + len(refusals)
            self._count_by_rule(refusals)

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

    # -- what follows every change (lock held), and when deferred updates are due ----------

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
        index = self._query.index
        if index is not None:
            # (queued before the log's buffer: a flush that it sets off writes the query
            # tables and the log's rows together)
            index.changed(changed, n, len(self._table))
        writeback = self._writeback
        if writeback is not None:
            writeback.append(changed)
        decoded: list[Entry] | None = None
        view = self._view
        if view is not None:
            if n > _VIEW_DROP and n * 4 > view.size:
                self._view = None
            else:
                decoded = entries(changed)
                view.add(decoded)
        # live queries that read a field of the batch are due
        decoded = self._query.touch(changed, decoded)
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
            soul = name_text(soul_b)
            if soul is None or soul not in subs:
                continue
            field = name_text(field_b)
            if field is None:
                continue
            try:
                decoded_value = self._value_of(soul_b, value)
            except DTPError:
                continue
            changes.append(Change(soul, field, decoded_value, state))

    def _deliver(self, changes: list[Change]) -> None:
        if self._query.due:
            # (after the subscribers: a slow live query does not hold them back)
            try:
                self._deliver_changes(changes)
            finally:
                self._query.deliver()
        else:
            self._deliver_changes(changes)

    def _deliver_changes(self, changes: list[Change]) -> None:
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

    # -- reads: each takes the lock once (for a node, its fields at once) ------------------

    def get(self, soul: str) -> dict[str, JSON] | None:
        """The node's fields as a dict (links as ``{"#": soul}``), or None if unknown.

        Fields whose stored bytes are not JSON, and fields whose name is not UTF-8
        (written by a misbehaving peer), are left out.
        """
        s = utf8_name(soul, "a soul")
        with self._lock:
            self._check_open()
            fields = self._ensure_view().fields.get(s)
            if not fields:
                return None
            stored = [(f, self._table.get(s, f)) for f in fields]
        node: dict[str, JSON] = {}
        for f, entry in stored:
            name = name_text(f)
            if entry is None or name is None:
                continue
            try:
                node[name] = self._value_of(s, entry[1])
            except DTPError:
                continue
        return node

    def get_field(self, soul: str, field: str, default: Any = None) -> JSON:
        """One field's value, or ``default`` when the field is unknown."""
        s = utf8_name(soul, "a soul")
        f = utf8_name(field, "a field name")
        with self._lock:
            self._check_open()
            entry = self._table.get(s, f)
        if entry is None:
            return default  # type: ignore[no-any-return]
        return self._value_of(s, entry[1])

    def state_of(self, soul: str, field: str) -> float | None:
        """The HAM state of a field, or None."""
        s, f = utf8_name(soul, "a soul"), utf8_name(field, "a field name")
        with self._lock:
            self._check_open()
            entry = self._table.get(s, f)
        return None if entry is None else entry[0]

    def stored_node(self, soul: str) -> list[tuple[bytes, float, bytes]]:
        """Every field of node ``soul`` as the table holds it: (field name, state,
        stored value bytes), in no order; empty for an unknown node. (What the Gun
        endpoint serves: a value's stored bytes are its Gun text.)"""
        s = utf8_name(soul, "a soul")
        with self._lock:
            self._check_open()
            fields = self._ensure_view().fields.get(s)
            if not fields:
                return []
            get = self._table.get
            out = []
            for f in fields:
                entry = get(s, f)
                if entry is not None:
                    out.append((f, entry[0], entry[1]))
            return out

    def walk(self, soul: str, *path: str) -> str:
        """Follow links from ``soul`` through the fields in ``path``; returns the soul
        reached. KeyError when a field is missing or not a link (its message says
        which: a value is read with :meth:`get_field`, as gun's chain reads it)."""
        utf8_name(soul, "a soul")  # (with no path, nothing else would look at it)
        current = soul
        for field in path:
            value = self.get_field(current, field, _MISSING)
            target = link_soul(value)
            if target is None:
                if value is _MISSING:
                    raise KeyError(
                        f"{current}.{field} is not a link: node {current!r} has no field {field!r}"
                    )
                if value is None:
                    raise KeyError(f"{current}.{field} is not a link: it holds null (deleted)")
                raise KeyError(
                    f"{current}.{field} is not a link: it holds {value!r:.80}, a value "
                    f"(get_field({current!r}, {field!r}) reads it)"
                )
            current = target
        return current

    def souls(self) -> list[str]:
        """Every node with at least one field (but those whose soul, written by a
        misbehaving peer, is not UTF-8: no str names them)."""
        with self._lock:
            self._check_open()
            names = [name_text(s) for s in self._ensure_view().fields]
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

    # -- queries, indexes and live queries (docs/graph.md, "Queries") ----------------------

    def query(self, *souls: str) -> Query:
        """A query starting at ``souls`` (see :class:`~dtp.graph._query.Query`), as in
        ``g.query("user/alice").out("posts").each().where("time", ">", t).souls()``."""
        if not souls:
            raise QueryError("query() takes at least one soul to start from")
        return Query(self, tuple(check_soul(s, "query()") for s in souls))

    def find(self, field: str, op: str, value: GunValue) -> Query:
        """A query starting at every node whose ``field`` compares with ``value`` (as
        :meth:`Query.where <dtp.graph._query.Query.where>`), found with the index on
        ``field`` (QueryError when there is none: :meth:`create_index` first)."""
        where = make_where(field, op, value)
        self._check_indexed(where)
        return Query(self, where)

    def create_index(self, field: str) -> bool:
        """Index ``field`` of every node, in SQLite: :meth:`find` uses it, and so does
        every :meth:`~dtp.graph._query.Query.where` on it. Kept with every change;
        persisted in the graph's file. False when it was indexed already."""
        name = check_field(field, "create_index()")
        with self._lock:
            self._check_open()
            if self._query.index is None:
                self._query_index(index=(name,))  # (the tables made indexing it: one pass)
                return True
            index = self._query_index()
            if index.is_indexed(name):
                return False
            index.add_field(name, self._table)
            return True

    def drop_index(self, field: str) -> bool:
        """Drop the index on ``field``; False when there was none."""
        name = check_field(field, "drop_index()")
        with self._lock:
            self._check_open()
            index = self._query.index
            if index is None or not index.is_indexed(name):
                return False
            self._query_index()  # (level with the table: the file's log is flushed)
            index.drop_field(name)
            return True

    def indexes(self) -> list[str]:
        """The indexed fields, sorted."""
        with self._lock:
            self._check_open()
            index = self._query.index
            return [] if index is None else index.fields

    # -- what queries call (dtp.graph._query.QueryRunner) -----------------------------------

    def _run_query(self, query: Query) -> list[str]:
        with self._lock:
            self._check_open()
            return self._evaluate(query, None)

    def _query_nodes(self, query: Query) -> dict[str, dict[str, JSON]]:
        with self._lock:
            self._check_open()
            souls = self._evaluate(query, None)
            return {soul: self.get(soul) or {} for soul in souls}

    def _explain_query(self, query: Query) -> list[str]:
        with self._lock:
            self._check_open()
            index = self._query.index
            self._check_indexed_in(index, query.start)
            if index is None:  # (a graph not yet queried: no index, nothing to build)
                return explain(set(), query.start, query.steps)
            return index.explain(query.start, query.steps)

    def _live_query(self, query: Query, callback: Callable[[QueryUpdate], None]) -> LiveQuery:
        with self._lock:
            self._check_open()
            reads = ReadSet()
            souls = tuple(self._evaluate(query, reads))
            # registered under the lock that evaluated it: no change falls in between
            live = LiveQuery(self, query, callback, souls, reads)
            self._query.live.append(live)
        return live

    def _evaluate_live(self, live: LiveQuery) -> tuple[str, ...]:
        with self._lock:
            self._check_open()
            reads = ReadSet()
            souls = tuple(self._evaluate(live.query, reads))
            live._reads = reads
            return souls

    def _forget_live(self, live: LiveQuery) -> None:
        self._query.forget(live)

    # -- the query tables ------------------------------------------------------------------

    def _query_index(self, index: tuple[str, ...] = ()) -> QueryIndex:
        """The query tables, made on first use (indexing ``index``), level with the
        table (lock held)."""
        writeback = self._writeback
        flush = None if writeback is None else writeback.flush_locked
        tables = self._query.index
        if tables is None:
            if flush is not None:
                flush()  # (the tables are built from the table: the log must hold it all)
            storage = None if writeback is None else writeback.storage
            tables = QueryIndex.create(storage, self._table, self._value_of, index)
            self._query.index = tables
        else:
            tables.catch_up(self._table, flush)
        return tables

    def _evaluate(self, query: Query, record: ReadSet | None) -> list[str]:
        index = self._query_index()
        self._check_indexed_in(index, query.start)
        found = index.evaluate(query.start, query.steps, self._table, record)
        souls = []
        for soul in found:
            try:
                souls.append(soul.decode())
            except UnicodeDecodeError:  # (no link names such a soul, nor a str)
                continue
        souls.sort()
        return souls

    def _check_indexed(self, where: Where) -> None:
        with self._lock:
            self._check_open()
            self._check_indexed_in(self._query.index, where)

    @staticmethod
    def _check_indexed_in(index: QueryIndex | None, start: tuple[str, ...] | Where) -> None:
        if isinstance(start, Where) and (index is None or not index.is_indexed(start.field)):
            raise QueryError(
                f"find() reads the index on {start.field!r}, and there is none: "
                f"create_index({start.field!r}) first"
            )

    # -- subscriptions: callbacks and async iterators of the changes -----------------------

    def subscribe(
        self, soul: str, callback: Callable[[Change], None], *, field: str | None = None
    ) -> Subscription:
        """Call ``callback(change)`` for every change of node ``soul`` (or of one field),
        local or from a peer. Callbacks run in the thread that made the change, after
        the graph's lock is released: changes committed at once in several threads may
        arrive out of order (compare ``change.state``; see docs/graph.md)."""
        check_names(soul, field)
        if not callable(callback):
            raise LocalProtocolError("subscribe() needs a callable callback", ErrorCode.ARG)
        sub = Subscription(self, soul, field, callback)
        with self._lock:
            self._check_open()
            self._drop_abandoned()
            self._subs.setdefault(soul, []).append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription, *, wait: bool = True) -> None:
        # without wait (a collected stream's finalizer) a lock held elsewhere leaves the
        # subscription to whoever takes the lock next
        if not self._lock.acquire(blocking=wait):
            self._abandoned.append(sub)
            return
        try:
            self._drop_abandoned()
            self._remove_sub(sub)
        finally:
            self._lock.release()

    def _drop_abandoned(self) -> None:
        while self._abandoned:
            self._remove_sub(self._abandoned.popleft())

    def _remove_sub(self, sub: Subscription) -> None:
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

    # -- the privacy tiers' node handles (dtp.graph._tiers, docs/graph.md "Privacy tiers") ---

    def public(self, soul: str) -> PublicNode:
        """The public node ``soul``: anyone reads and writes. LocalProtocolError for a
        soul of another tier (``~0x...`` protected, ``%0x...`` private, a Gun user's)."""
        return public_node(self, soul)

    def protected(
        self, path: str = "", identity: HostIdentity | None = None, *, author: str | None = None
    ) -> ProtectedNode:
        """The node ``~<author>/<path>`` (``~<author>`` for path ""): anyone reads, only
        the author writes. ``identity`` (the graph's by default) signs writes and names
        the author unless ``author`` (a Sui address) does; reading needs neither."""
        return protected_node(self, path, identity, author)

    def private(
        self, path: str, identity: HostIdentity | None = None, *, author: str | None = None
    ) -> PrivateNode:
        """The node ``%<author>/<path>`` of a private space: ``path`` is the space's
        name (1..64 of ``A-Z a-z 0-9 _ . -``), then optionally ``/`` and the node's
        path in it. ``identity`` (the graph's by default) reads with its Noise key
        and, when it is the author, writes; ``author`` (a Sui address) names another
        author's space."""
        return private_node(self, path, identity, author)

    # -- what sync sessions read (dtp.graph.sync, protocol.md 6); export for tools ---------

    def text(self, soul: str, field: str) -> CollabText:
        """A replica of the collaborative text in ``field`` of ``soul`` (docs/graph.md,
        "Collaborative values"): a Yjs document, merged by Yjs, whose edits are written
        as :meth:`put` writes (a ``~0x`` soul signed with :attr:`identity`; a private
        soul through :meth:`private`). Needs the ``collab`` extra."""
        return self._collab_node(soul).text(field)

    def array(self, soul: str, field: str) -> CollabArray:
        """A replica of the collaborative array (a list) in ``field`` of ``soul`` (see
        :meth:`text`)."""
        return self._collab_node(soul).array(field)

    def map(self, soul: str, field: str) -> CollabMap:
        """A replica of the collaborative map in ``field`` of ``soul`` (see :meth:`text`);
        not gun's ``map()``."""
        return self._collab_node(soul).map(field)

    def _collab_node(self, soul: str) -> PublicNode | ProtectedNode:
        s = utf8_name(soul, "a soul")
        if private.is_private(s):
            raise LocalProtocolError(
                f"a collaborative value of the private soul {soul[:80]!r}: open it with "
                "graph.private(...).text(field) (docs/graph.md, 'Privacy tiers')",
                ErrorCode.ARG,
            )
        owner = namespace.owner_of(s) if namespace.is_user_space(s) else None
        if owner is not None:
            return ProtectedNode(self, soul, owner, self.identity)
        return self.public(soul)

    def add_listener(self, listener: ChangeListener, owner: object) -> None:
        """Call ``listener(changed_batch, origin)`` after every merge that changes the
        table, except those whose origin is ``owner``."""
        check_listener(listener)
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
        queues its HELLO there, so that no change committed in between goes out first,
        which the peer would refuse as a message before HELLO)."""
        check_listener(listener)
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

    def root_summary(self) -> tuple[int, int]:
        """(digest, field count) of the whole table."""
        with self._lock:
            self._check_open()
            return self._ensure_view().root()

    def child_summaries(self, level: int, prefix: int) -> dict[int, tuple[int, int]]:
        """Non-empty children of summary node (level, prefix): prefix -> (digest, count).

        ``level`` is 0..LEAF_LEVEL - 1 (leaves have no children) and ``prefix`` one of
        that level's nodes (0 at the root); TypeError / ValueError otherwise."""
        check_node("child_summaries()", (level, prefix), LEAF_LEVEL - 1)
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
        checked = [check_node("node_batches()", node, LEAF_LEVEL) for node in pairs]
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

    def snapshot(self) -> dict[tuple[bytes, bytes], tuple[float, bytes]]:
        """Every field as (soul, field) -> (state, stored value) -- for tests and tools."""
        out: dict[tuple[bytes, bytes], tuple[float, bytes]] = {}
        for batch in self.export():
            for soul, field, state, value, _ in entries(batch):
                out[soul, field] = (state, value)
        return out


def _check_nested(
    soul: str, field: str, value: Mapping[str, Any], above: tuple[tuple[int, str], ...]
) -> None:
    """Refuse a nested mapping put() cannot make a node of, saying why."""
    for mapping, where in above:
        if mapping == id(value):
            raise LocalProtocolError(
                f"put(): field {field!r} of node {soul!r} holds a mapping that contains it "
                f"(a cycle): link to its node instead, link({where!r})",
                ErrorCode.ARG,
            )
    if not value:
        raise LocalProtocolError(
            f"put(): field {field!r} of node {soul!r} holds an empty mapping: a node needs "
            "a field (a HAM table holds fields, not empty nodes)",
            ErrorCode.ARG,
        )


def _field_written_twice(writes: list[tuple[bytes, bytes, bytes]]) -> tuple[str, str] | None:
    """The first (soul, field) that ``writes`` names twice, decoded for a message."""
    seen: set[tuple[bytes, bytes]] = set()
    for s, f, _ in writes:
        if (s, f) in seen:
            return s.decode("utf-8", "replace"), f.decode("utf-8", "replace")
        seen.add((s, f))
    return None


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
    "soul_leaf",
]
