"""HAM batches and merge rules: the twin of dtp_ham_* (ham.c), protocol.md section 6.

``encode_ham_batch`` / ``decode_ham_batch`` are the batch codec used by both backends and
by the graph layer. :class:`HamGraph` is the readable spec of the C table: a dict from
(soul, field) to (state, value), plus the queue of updates deferred because their state
is ahead of the machine clock.
"""

from __future__ import annotations

import math
import os
import struct
from array import array
from collections.abc import Iterable, Iterator

from dtp.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from dtp.native.reference._limits import (
    HAM_BATCH_HEADER_LEN,
    HAM_BATCH_VERSION,
    HAM_EXPORT_MAX_BATCH,
    HAM_EXPORT_MIN_BATCH,
    HAM_MAX_KEY,
    HAM_MAX_UPDATES,
    HAM_MAX_VALUE,
)
from dtp.native.reference._varint import varint_decode, varint_encode, varint_size
from dtp.native.types import (
    HAM_APPLIED,
    HAM_DEFERRED,
    HAM_HISTORICAL,
    HAM_REJECTED,
    HAM_SAME,
    HamUpdate,
    MergeResult,
)

_HEADER = struct.Struct("<BI")
_F64 = struct.Struct("<d")

UTF16_ORDER = bytes(b if b < 0xEE else b - 2 if b >= 0xF0 else b + 0x10 for b in range(256))
"""Each byte's rank in the tie-break order (protocol.md 6.3): ``0xF0..0xFF`` before
``0xEE`` and ``0xEF``. UTF-8 leads U+E000..U+FFFF with 0xEE/0xEF and what is beyond
U+FFFF with 0xF0..0xF4, which UTF-16 writes as surrogates, below U+E000: two UTF-8 texts
whose bytes are ranked so compare as their UTF-16 code units do (as JavaScript, and so
GunDB, compares strings), and any two byte strings still have one order."""


def value_order(a: bytes, b: bytes) -> int:
    """-1, 0 or 1 as value ``a`` comes before, equals or follows ``b`` in the
    tie-break order (a proper prefix first)."""
    ka, kb = a.translate(UTF16_ORDER), b.translate(UTF16_ORDER)
    return (ka > kb) - (ka < kb)


def update_size(update: HamUpdate) -> int:
    """Bytes of one update's canonical encoding (no batch header)."""
    soul, field, _, value = update
    return (
        varint_size(len(soul))
        + len(soul)
        + varint_size(len(field))
        + len(field)
        + 8
        + varint_size(len(value))
        + len(value)
    )


def _encode_update(update: HamUpdate) -> bytes:
    soul, field, state, value = update
    return b"".join(
        (
            varint_encode(len(soul)) or b"",
            soul,
            varint_encode(len(field)) or b"",
            field,
            _F64.pack(state),
            varint_encode(len(value)) or b"",
            value,
        )
    )


def _header(count: int) -> bytes:
    return _HEADER.pack(HAM_BATCH_VERSION, count)


def encode_ham_batch(updates: Iterable[HamUpdate]) -> bytes:
    """Encode updates as one canonical batch (minimal varints).

    Raises LocalProtocolError: HAM_SIZE for too many updates or a soul, field or value
    out of range, HAM_STATE for a state that is not finite (checked per update in wire
    order: soul, field, state, value).
    """
    items = [HamUpdate(*u) for u in updates]
    if len(items) > HAM_MAX_UPDATES:
        raise LocalProtocolError("too many updates in one HAM batch", ErrorCode.HAM_SIZE)
    parts = [_header(len(items))]
    for soul, field, state, value in items:
        soul, field, value = bytes(soul), bytes(field), bytes(value)
        if not 1 <= len(soul) <= HAM_MAX_KEY:
            raise LocalProtocolError("HAM soul must be 1..1024 bytes", ErrorCode.HAM_SIZE)
        if not 1 <= len(field) <= HAM_MAX_KEY:
            raise LocalProtocolError("HAM field must be 1..1024 bytes", ErrorCode.HAM_SIZE)
        if not math.isfinite(state):
            raise LocalProtocolError(code=ErrorCode.HAM_STATE)
        if len(value) > HAM_MAX_VALUE:
            raise LocalProtocolError("HAM value must be at most 1 MiB", ErrorCode.HAM_SIZE)
        parts.append(_encode_update(HamUpdate(soul, field, float(state), value)))
    return b"".join(parts)


def _malformed(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"malformed HAM batch: {what}", ErrorCode.HAM_MALFORMED)


def _read_bytes(buf: bytes, pos: int, lo: int, hi: int, what: str) -> tuple[bytes, int]:
    """A varint length in [lo, hi], then that many bytes (protocol.md 6.2)."""
    got = varint_decode(buf, pos)
    if got is None:
        raise _malformed(f"{what} length truncated")
    size, pos = got
    if not lo <= size <= hi:
        raise RemoteProtocolError(f"HAM {what} length {size} out of range", ErrorCode.HAM_SIZE)
    if pos + size > len(buf):
        raise _malformed(f"{what} truncated")
    return buf[pos : pos + size], pos + size


def _walk(buf: bytes) -> Iterator[tuple[int, int, int, HamUpdate]]:
    """Validate a batch while yielding (start, where its state is, end, update) for each
    of its updates.

    Order of checks (protocol.md 6.2): header (MALFORMED), count (SIZE), then per update
    soul, field, state, value -- a truncated varint or byte string is MALFORMED, a length
    out of range SIZE, a NaN or infinite state STATE -- and finally trailing bytes
    (MALFORMED). Non-minimal varints are accepted.
    """
    if len(buf) < HAM_BATCH_HEADER_LEN or buf[0] != HAM_BATCH_VERSION:
        raise _malformed("bad header")
    _, count = _HEADER.unpack_from(buf, 0)
    if count > HAM_MAX_UPDATES:
        raise RemoteProtocolError("too many updates in one HAM batch", ErrorCode.HAM_SIZE)
    pos = HAM_BATCH_HEADER_LEN
    for _ in range(count):
        start = pos
        soul, pos = _read_bytes(buf, pos, 1, HAM_MAX_KEY, "soul")
        field, pos = _read_bytes(buf, pos, 1, HAM_MAX_KEY, "field")
        if pos + 8 > len(buf):
            raise _malformed("state truncated")
        (state,) = _F64.unpack_from(buf, pos)
        if not math.isfinite(state):
            raise RemoteProtocolError(code=ErrorCode.HAM_STATE)
        at = pos
        value, pos = _read_bytes(buf, pos + 8, 0, HAM_MAX_VALUE, "value")
        yield start, at, pos, HamUpdate(soul, field, state, value)
    if pos != len(buf):
        raise _malformed("trailing bytes")


def decode_ham_batch(batch: bytes | bytearray | memoryview) -> list[HamUpdate]:
    """Decode and validate a whole batch; any fault raises RemoteProtocolError (the
    checks and their order: :func:`_walk`)."""
    return [update for _, _, _, update in _walk(bytes(batch))]


def find_ham_souls(batch: bytes | bytearray | memoryview, prefix: bytes) -> list[tuple[int, int]]:
    """Validate a whole batch as :func:`decode_ham_batch` does and return the byte spans
    ``(start, end)`` of the updates whose soul starts with ``prefix``, in batch order.
    (The C twin walks the batch without building an update per entry: a caller looking
    for a few updates among many decodes only those.)"""
    return [(start, end) for start, _, end, u in _walk(bytes(batch)) if u.soul.startswith(prefix)]


def zero_negative_states(batch: bytes | bytearray | memoryview) -> tuple[bytes, int]:
    """Validate a whole batch as :func:`decode_ham_batch` does and return it with every
    state that is ``-0.0`` written as ``0.0`` (nothing else changes), and how many were.
    (States compare as numbers, so the two are one state: written alike, every table
    keeps the same bits for it.)"""
    buf = bytes(batch)
    out = bytearray(buf)
    changed = 0
    for _, at, _, u in _walk(buf):
        if u.state == 0.0 and math.copysign(1.0, u.state) < 0:
            out[at : at + 8] = bytes(8)
            changed += 1
    return bytes(out), changed


class _DeferredQueue:
    """The deferred updates in arrival order, as their canonical encodings back to back.

    The queue is capped in canonical bytes (``max_deferred_bytes``, as in C), and a
    peer may fill it: held as Python objects -- an update tuple, its bytes objects and a
    set key each -- it took about 23 times the cap. Here an entry costs its encoding,
    its end offset and state (8 bytes each) and two or so 8-byte slots of an
    open-addressing index (by Python's randomised bytes hash) that finds an identical
    entry, queued once (protocol.md 6.3). Nothing is removed but by :meth:`HamGraph.advance`,
    which builds the queue of the updates left anew.
    """

    def __init__(self) -> None:
        self.data = bytearray()
        self.ends = array("Q")  # where each entry's encoding ends in ``data``
        self.states = array("d")
        self._slots = array("q", bytes(8 * 8))  # entry index + 1; 0 is free

    def __len__(self) -> int:
        return len(self.states)

    def entry(self, i: int) -> bytes:
        """The canonical encoding of entry ``i``."""
        return bytes(self.data[self.ends[i - 1] if i else 0 : self.ends[i]])

    def _slot(self, encoded: bytes) -> int:
        """The slot of the entry equal to ``encoded``, or the free slot it would take."""
        slots = self._slots
        mask = len(slots) - 1
        i = hash(encoded) & mask
        while slots[i] and self.entry(slots[i] - 1) != encoded:
            i = (i + 1) & mask  # linear probing: the index stays at most half full
        return i

    def holds(self, encoded: bytes) -> bool:
        return bool(self._slots[self._slot(encoded)])

    def append(self, encoded: bytes, state: float) -> None:
        """Queue an update (not already queued: see :meth:`holds`)."""
        self.data += encoded
        self.ends.append(len(self.data))
        self.states.append(state)
        if 2 * len(self.states) > len(self._slots):
            self._slots = array("q", bytes(16 * len(self._slots)))
            for i in range(len(self.states)):
                self._slots[self._slot(self.entry(i))] = i + 1
        else:
            self._slots[self._slot(encoded)] = len(self.states)


def check_table_args(max_deferred_bytes: int, seed: bytes | None) -> bytes:
    """The checks of a new HAM table's arguments (both backends'); returns its seed."""
    seed = os.urandom(16) if seed is None else seed
    if not 0 <= max_deferred_bytes < 2**64:
        raise LocalProtocolError("max_deferred_bytes out of range", ErrorCode.ARG)
    if len(seed) != 16:
        raise LocalProtocolError("HAM hash seed must be 16 bytes", ErrorCode.ARG)
    return seed


class HamGraph:
    """The HAM field table: merge batches, hold deferred updates, look up.

    ``seed`` keys the C table's hash; a dict needs none, but it is checked the same way.
    """

    def __init__(self, max_deferred_bytes: int = 64 << 20, seed: bytes | None = None) -> None:
        check_table_args(max_deferred_bytes, seed)
        self._max_deferred = max_deferred_bytes
        self._table: dict[tuple[bytes, bytes], tuple[float, bytes]] = {}
        self._deferred = _DeferredQueue()

    def _apply(self, update: HamUpdate) -> int:
        """Merge one update not ahead of the clock (protocol.md 6.3); returns its status."""
        soul, field, state, value = update
        current = self._table.get((soul, field))
        if current is not None:
            cur_state, cur_value = current
            if state < cur_state:
                return HAM_HISTORICAL
            if state == cur_state:
                if value == cur_value:
                    return HAM_SAME
                if value.translate(UTF16_ORDER) < cur_value.translate(UTF16_ORDER):
                    return HAM_HISTORICAL
        self._table[soul, field] = (state, value)
        return HAM_APPLIED

    def merge(self, batch: bytes | bytearray | memoryview, machine_state: float) -> MergeResult:
        """Merge an encoded batch against the machine clock ``machine_state``."""
        if not math.isfinite(machine_state):
            raise LocalProtocolError("machine state must be finite", ErrorCode.HAM_STATE)
        updates = decode_ham_batch(batch)
        statuses = bytearray()
        applied: list[HamUpdate] = []
        for update in updates:
            if update.state > machine_state:
                # (identical updates have equal canonical encodings: soul, field, the
                # state's 8 bytes -- so 0.0 and -0.0 differ -- and value)
                encoded = _encode_update(update)
                if self._deferred.holds(encoded):
                    statuses.append(HAM_DEFERRED)  # identical to a queued one: held once
                elif len(self._deferred.data) + len(encoded) > self._max_deferred:
                    statuses.append(HAM_REJECTED)
                else:
                    self._deferred.append(encoded, update.state)
                    statuses.append(HAM_DEFERRED)
                continue
            status = self._apply(update)
            if status == HAM_APPLIED:
                applied.append(update)
            statuses.append(status)
        return MergeResult(bytes(statuses), self._batch(applied))

    def advance(self, machine_state: float) -> bytes:
        """Apply deferred updates now due (in arrival order); returns those applied."""
        if not math.isfinite(machine_state):
            raise LocalProtocolError("machine state must be finite", ErrorCode.HAM_STATE)
        queue = self._deferred
        due = [i for i, state in enumerate(queue.states) if not state > machine_state]
        if not due:
            return _header(0)
        waiting = _DeferredQueue()
        for i, state in enumerate(queue.states):
            if state > machine_state:
                waiting.append(queue.entry(i), state)
        self._deferred = waiting
        applied: list[HamUpdate] = []
        # in arrival order; in batches of at most HAM_MAX_UPDATES (a large queue of small
        # updates holds more)
        for first in range(0, len(due), HAM_MAX_UPDATES):
            chunk = due[first : first + HAM_MAX_UPDATES]
            encoded = _header(len(chunk)) + b"".join(queue.entry(i) for i in chunk)
            for update in decode_ham_batch(encoded):
                if self._apply(update) == HAM_APPLIED:
                    applied.append(update)
        return self._batch(applied)

    @staticmethod
    def _batch(updates: list[HamUpdate]) -> bytes:
        return _header(len(updates)) + b"".join(_encode_update(u) for u in updates)

    def get(self, soul: bytes, field: bytes) -> tuple[float, bytes] | None:
        """(state, value) of one field, or None."""
        return self._table.get((bytes(soul), bytes(field)))

    def export(self, max_batch_bytes: int = 1 << 20) -> Iterator[bytes]:
        """The whole table as a sequence of batches of at most ``max_batch_bytes``
        (never less than one maximal entry needs, nor more than
        :data:`~dtp.native.reference._limits.HAM_EXPORT_MAX_BATCH`); the order is unspecified.
        Fields may change value while the batches are consumed; a merge that adds a
        field makes the next batch raise RuntimeError (the dict's own check)."""
        limit = min(max(max_batch_bytes, HAM_EXPORT_MIN_BATCH), HAM_EXPORT_MAX_BATCH)
        chunk: list[HamUpdate] = []
        size = HAM_BATCH_HEADER_LEN
        for (soul, field), (state, value) in self._table.items():
            update = HamUpdate(soul, field, state, value)
            need = update_size(update)
            if size + need > limit:
                yield self._batch(chunk)
                chunk, size = [], HAM_BATCH_HEADER_LEN
            chunk.append(update)
            size += need
        if chunk:
            yield self._batch(chunk)

    def __len__(self) -> int:
        return len(self._table)

    @property
    def deferred_count(self) -> int:
        return len(self._deferred)

    @property
    def deferred_bytes(self) -> int:
        return len(self._deferred.data)


__all__ = [
    "UTF16_ORDER",
    "HamGraph",
    "decode_ham_batch",
    "encode_ham_batch",
    "find_ham_souls",
    "update_size",
    "value_order",
    "zero_negative_states",
]
