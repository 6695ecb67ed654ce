"""The HAM field table of the C core (``dtp_ham_*``, ham.c): :class:`NativeHamGraph`,
:func:`native_find_ham_souls`, :func:`native_zero_negative_states`. Their twins are in
:mod:`dtp.native.reference._ham`; :mod:`dtp.native.core` picks the backend."""

from __future__ import annotations

import math
from collections.abc import Iterator

from dtp.errors import ErrorCode, LocalProtocolError
from dtp.native import types as t
from dtp.native._binding import _check, _from, ffi, lib
from dtp.native.reference._ham import check_table_args
from dtp.native.reference._limits import (
    HAM_BATCH_HEADER_LEN,
    HAM_EXPORT_MAX_BATCH,
    HAM_EXPORT_MIN_BATCH,
)
from dtp.native.types import MergeResult

__all__ = ["NativeHamGraph", "native_find_ham_souls", "native_zero_negative_states"]

# the buffer NativeHamGraph.advance tries first
_ADVANCE_ROOM = 4096


class NativeHamGraph:
    """The HAM field table (C core): merge batches, hold deferred updates, look up."""

    def __init__(self, max_deferred_bytes: int = 64 << 20, seed: bytes | None = None) -> None:
        seed = check_table_args(max_deferred_bytes, seed)
        g = lib.dtp_ham_new(max_deferred_bytes, _from(seed), len(seed))
        if g == ffi.NULL:
            raise MemoryError("could not allocate a HAM table")
        self._g = ffi.gc(g, lib.dtp_ham_free)

    def merge(self, batch: bytes | bytearray | memoryview, machine_state: float) -> MergeResult:
        """Merge an encoded batch against the machine clock ``machine_state``."""
        if not math.isfinite(machine_state):
            raise LocalProtocolError("machine state must be finite", ErrorCode.HAM_STATE)
        data = _from(batch)
        size = len(data)
        status = bytearray(max(1, size // 12 + 1))
        changed = bytearray(max(size, HAM_BATCH_HEADER_LEN))
        counts = ffi.new("size_t[2]")
        rc = lib.dtp_ham_merge(
            self._g,
            machine_state,
            data,
            size,
            _from(status),
            len(status),
            counts,
            _from(changed),
            len(changed),
            counts + 1,
        )
        del data  # (see _from)
        _check(rc, remote=True)
        # one copy each: slicing the memoryview does not copy, bytes() does
        return MergeResult(
            bytes(memoryview(status)[: counts[0]]), bytes(memoryview(changed)[: counts[1]])
        )

    def advance(self, machine_state: float) -> bytes:
        """Apply deferred updates now due; returns those applied, as a batch."""
        if not math.isfinite(machine_state):
            raise LocalProtocolError("machine state must be finite", ErrorCode.HAM_STATE)
        # One call with a small buffer does for the usual case (nothing or little due):
        # sizing it for the whole queue cost 16 MiB zeroed per call with the queue full.
        # When more is due, the C changes nothing and reports the room it needs.
        changed = bytearray(_ADVANCE_ROOM)
        written = ffi.new("size_t *")
        rc = lib.dtp_ham_advance(self._g, machine_state, _from(changed), len(changed), written)
        if rc == ErrorCode.BUFFER:
            changed = bytearray(written[0])
            rc = lib.dtp_ham_advance(self._g, machine_state, _from(changed), len(changed), written)
        _check(rc, remote=False)
        return bytes(memoryview(changed)[: written[0]])

    def get(self, soul: bytes, field: bytes) -> tuple[float, bytes] | None:
        """(state, value) of one field, or None."""
        if type(soul) is not bytes or type(field) is not bytes:
            # cffi passes bytes as they are; any other bytes-like key as its bytes
            soul, field = bytes(soul), bytes(field)
        state = ffi.new("double *")
        value = ffi.new("uint8_t **")
        vlen = ffi.new("size_t *")
        found = lib.dtp_ham_get(self._g, soul, len(soul), field, len(field), state, value, vlen)
        if not found:
            return None
        return state[0], bytes(ffi.buffer(value[0], vlen[0]))

    def export(self, max_batch_bytes: int = 1 << 20) -> Iterator[bytes]:
        """The whole table as a sequence of batches of at most ``max_batch_bytes`` (as
        the twin bounds them: never less than one maximal entry needs, nor more than
        ``HAM_EXPORT_MAX_BATCH``, the buffer being allocated whole).

        Fields may change value while the batches are consumed, but a merge that adds a
        field (the table grows and moves its entries: the cursor would skip some and
        repeat others) makes the next batch raise RuntimeError, as a dict's iteration
        does in the twin."""
        cursor = ffi.new("uint64_t *")
        written = ffi.new("size_t *")
        size = min(max(max_batch_bytes, HAM_EXPORT_MIN_BATCH), HAM_EXPORT_MAX_BATCH)
        out = bytearray(size)
        count = lib.dtp_ham_count(self._g)
        while True:
            rc = _check(
                lib.dtp_ham_export(self._g, cursor, _from(out), len(out), written), remote=False
            )
            if written[0] > HAM_BATCH_HEADER_LEN:
                yield bytes(out[: written[0]])
            if rc == t.OK:
                return
            if lib.dtp_ham_count(self._g) != count:
                raise RuntimeError("HAM table changed size during export")

    def __len__(self) -> int:
        return int(lib.dtp_ham_count(self._g))

    @property
    def deferred_count(self) -> int:
        return int(lib.dtp_ham_deferred_count(self._g))

    @property
    def deferred_bytes(self) -> int:
        return int(lib.dtp_ham_deferred_bytes(self._g))


# the spans native_find_ham_souls makes room for at first (more: a second call)
_SOUL_SPANS = 64


def native_find_ham_souls(
    batch: bytes | bytearray | memoryview, prefix: bytes
) -> list[tuple[int, int]]:
    """Validate a whole batch (RemoteProtocolError as ``decode_ham_batch``) and return the
    byte spans ``(start, end)`` of the updates whose soul starts with ``prefix``."""
    data = _from(batch)
    prefix = bytes(prefix)
    found = ffi.new("size_t *")
    cap = 2 * _SOUL_SPANS
    spans = ffi.new("uint64_t[]", cap)
    rc = lib.dtp_ham_find_souls(data, len(data), prefix, len(prefix), spans, cap, found)
    if rc == ErrorCode.BUFFER:
        cap = 2 * found[0]
        spans = ffi.new("uint64_t[]", cap)
        rc = lib.dtp_ham_find_souls(data, len(data), prefix, len(prefix), spans, cap, found)
    del data  # (see _from)
    _check(rc, remote=True)
    flat = ffi.unpack(spans, 2 * found[0])
    return list(zip(flat[::2], flat[1::2], strict=True))


def native_zero_negative_states(batch: bytes | bytearray | memoryview) -> tuple[bytes, int]:
    """Validate a whole batch (RemoteProtocolError as ``decode_ham_batch``) and return it
    with every state that is ``-0.0`` written as ``0.0``, and how many were."""
    out = bytearray(batch)
    changed = ffi.new("size_t *")
    buf = _from(out)
    rc = lib.dtp_ham_zero_states(buf, len(buf), changed)
    del buf  # (see _from)
    _check(rc, remote=True)
    return bytes(out), int(changed[0])
