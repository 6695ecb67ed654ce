"""Reorder / reassembly buffer: the twin of dtp_reasm_* (reasm.c), protocol.md section 5.

The buffer covers a byte sequence space (sequence number = byte offset, as in TCP). It
holds *runs*: maximal stretches of received bytes that have not been released yet, kept
sorted, disjoint and never touching. The readable prefix is the first run when it starts
at ``next_seq``; every held byte lies in ``[next_seq, next_seq + window)``.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from dtp.errors import ErrorCode, LocalProtocolError, RemoteProtocolError

_U64 = 1 << 64
_U32 = 1 << 32

Chunk = tuple[int, bytes | bytearray | memoryview]


def _union_count(intervals: list[tuple[int, int]]) -> int:
    """Number of maximal runs covered by half-open ``intervals`` (touching ones join)."""
    count = 0
    end = -1
    for lo, hi in sorted(intervals):
        if count and lo <= end:
            end = max(end, hi)
        else:
            count += 1
            end = hi
    return count


class Reassembler:
    """Reorder buffer over a byte sequence space; memory capped by ``window``."""

    def __init__(self, start_seq: int = 0, window: int = 1 << 20, max_ranges: int = 1024) -> None:
        if not (0 <= start_seq < _U64 and 0 < window < _U32 and 0 < max_ranges < _U32):
            raise LocalProtocolError("reassembler parameters out of range", ErrorCode.ARG)
        self._next = start_seq
        self._window = window
        self._max_ranges = max_ranges
        self._starts: list[int] = []  # run start sequence numbers, sorted
        self._runs: list[bytearray] = []  # run bytes, parallel to _starts

    def push(self, seq: int, data: bytes | bytearray | memoryview) -> None:
        """Insert one chunk whose first byte has sequence number ``seq``."""
        self.push_many([(seq, data)])

    def push_many(self, chunks: Sequence[Chunk]) -> None:
        """Insert chunks in one call; on error nothing is inserted.

        Checks (protocol.md 5.2): every ``seq`` must be a u64 and every chunk shorter
        than 2**32 (ARG); then per chunk in order: ``seq + len`` must fit a u64 (ARG) and
        must not pass ``next_seq + window`` (REASM_WINDOW); finally the runs after the
        push must number at most ``max_ranges`` (REASM_FRAGMENTED).
        """
        # as bytes: a buffer of wider items holds more bytes than items
        views = [(seq, memoryview(data).cast("B")) for seq, data in chunks]
        for seq, data in views:
            if not 0 <= seq < _U64 or len(data) >= _U32:
                raise LocalProtocolError("chunk sequence out of range", ErrorCode.ARG)
        fresh: list[tuple[int, int, memoryview]] = []
        for seq, data in views:
            end = seq + len(data)
            if end >= _U64:
                raise LocalProtocolError("chunk ends past 2**64 - 1", ErrorCode.ARG)
            if end > self._next + self._window:
                raise RemoteProtocolError(code=ErrorCode.REASM_WINDOW)
            lo = max(seq, self._next)
            if lo < end:  # bytes before next_seq were already released: ignored
                fresh.append((lo, end, data[lo - seq :]))
        held = [(s, s + len(run)) for s, run in zip(self._starts, self._runs, strict=True)]
        if _union_count(held + [(lo, hi) for lo, hi, _ in fresh]) > self._max_ranges:
            raise RemoteProtocolError(code=ErrorCode.REASM_FRAGMENTED)
        for lo, hi, piece in fresh:
            self._insert(lo, hi, piece)

    def _insert(self, lo: int, hi: int, piece: memoryview) -> None:
        """Merge [lo, hi) into the runs; bytes already held win (first arrival)."""
        first = bisect.bisect_left(self._starts, lo)
        if first > 0 and self._starts[first - 1] + len(self._runs[first - 1]) >= lo:
            first -= 1  # the previous run reaches (or touches) lo
        last = first
        while last < len(self._starts) and self._starts[last] <= hi:
            last += 1
        touched = list(zip(self._starts[first:last], self._runs[first:last], strict=True))
        start = min([lo, *(s for s, _ in touched)])
        end = max([hi, *(s + len(r) for s, r in touched)])
        run = bytearray(end - start)
        run[lo - start : hi - start] = piece
        for s, old in touched:
            run[s - start : s - start + len(old)] = old
        self._starts[first:last] = [start]
        self._runs[first:last] = [run]

    def pop(self, max_bytes: int | None = None) -> bytes:
        """Release contiguous bytes (all that are ready, or at most ``max_bytes``)."""
        ready = self.readable
        size = ready if max_bytes is None else min(ready, max_bytes)
        if size <= 0:
            return b""
        run = self._runs[0]
        out = bytes(run[:size])
        if size == len(run):
            del self._starts[0], self._runs[0]
        else:
            del run[:size]
            self._starts[0] += size
        self._next += size
        return out

    @property
    def next_seq(self) -> int:
        """Sequence number of the first byte not yet released."""
        return self._next

    @property
    def readable(self) -> int:
        """Contiguous bytes ready to pop."""
        if self._starts and self._starts[0] == self._next:
            return len(self._runs[0])
        return 0

    @property
    def buffered(self) -> int:
        """All bytes held, contiguous or not."""
        return sum(len(run) for run in self._runs)
