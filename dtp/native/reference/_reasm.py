"""Reorder / reassembly buffer: the twin of dtp_reasm_* (reasm.c), protocol.md section 5.

The buffer covers a byte sequence space (sequence number = byte offset, as in TCP). It
holds *runs*: maximal stretches of received bytes that have not been released yet, kept
sorted, disjoint and never touching. The readable prefix is the first run when it starts
at ``next_seq``; every held byte lies in ``[next_seq, next_seq + window)``.

The bytes live in one bytearray covering ``[next_seq, end of the last run)`` (gaps hold
zeros), as the C ring does: a chunk costs its own length plus a walk of the runs it
touches, never a copy of the runs it joins -- a peer trickling small chunks onto a long
run (or under it) would otherwise make each push copy the run, quadratic in the window.
Releasing bytes deletes them from the front (O(1) for a bytearray).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence

from dtp.errors import ErrorCode, LocalProtocolError, RemoteProtocolError

_U64 = 1 << 64
_U32 = 1 << 32

Chunk = tuple[int, bytes | bytearray | memoryview]


def _add_run(starts: list[int], ends: list[int], lo: int, hi: int) -> None:
    """Unite [lo, hi) with the runs ``starts``/``ends`` (sorted, disjoint, not touching),
    joining the runs it overlaps or touches."""
    first = bisect.bisect_left(ends, lo)  # the first run ending at or after lo
    last = bisect.bisect_right(starts, hi)  # past the last run starting at or before hi
    if first < last:
        lo = min(lo, starts[first])
        hi = max(hi, ends[last - 1])
    starts[first:last] = [lo]
    ends[first:last] = [hi]


def _gaps(starts: list[int], ends: list[int], lo: int, hi: int) -> Iterator[tuple[int, int]]:
    """The stretches of [lo, hi) that no run covers, in order."""
    k = bisect.bisect_right(ends, lo)  # the first run ending after lo
    cur = lo
    while cur < hi:
        if k < len(starts) and starts[k] <= cur:
            cur = ends[k]
            k += 1
            continue
        gap_end = min(hi, starts[k]) if k < len(starts) else hi
        yield cur, gap_end
        cur = gap_end


class Reassembler:
    """Reorder buffer over a byte sequence space; memory capped by ``window``."""

    def __init__(self, start_seq: int = 0, window: int = 1 << 20, max_ranges: int = 1024) -> None:
        if not (0 <= start_seq < _U64 and 0 < window < _U32 and 0 < max_ranges < _U32):
            raise LocalProtocolError("reassembler parameters out of range", ErrorCode.ARG)
        self._next = start_seq
        self._window = window
        self._max_ranges = max_ranges
        self._starts: list[int] = []  # run start sequence numbers, sorted
        self._ends: list[int] = []  # run ends (exclusive), parallel to _starts
        self._buf = bytearray()  # bytes of [next_seq, next_seq + len(_buf))

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
        # as bytes: a buffer of wider items holds more bytes than items. The views are
        # released on every path, errors included: a caller may resize its buffer in
        # its except clause (a live export would make that fail).
        views = [(seq, memoryview(data).cast("B")) for seq, data in chunks]
        try:
            self._push_views(views)
        finally:
            for _, view in views:
                view.release()

    def _push_views(self, views: list[tuple[int, memoryview]]) -> None:
        for seq, data in views:
            if not 0 <= seq < _U64 or len(data) >= _U32:
                raise LocalProtocolError("chunk sequence out of range", ErrorCode.ARG)
        fresh: list[tuple[int, int, int]] = []  # (lo, end, index into views)
        for i, (seq, data) in enumerate(views):
            end = seq + len(data)
            if end >= _U64:
                raise LocalProtocolError("chunk ends past 2**64 - 1", ErrorCode.ARG)
            if end > self._next + self._window:
                raise RemoteProtocolError(code=ErrorCode.REASM_WINDOW)
            lo = max(seq, self._next)
            if lo < end:  # bytes before next_seq were already released: ignored
                fresh.append((lo, end, i))
        if not fresh:
            return
        starts, ends = self._starts.copy(), self._ends.copy()
        for lo, hi, _ in fresh:
            _add_run(starts, ends, lo, hi)
        if len(starts) > self._max_ranges:
            raise RemoteProtocolError(code=ErrorCode.REASM_FRAGMENTED)
        # in list order, each chunk's bytes go where nothing is held yet (the runs held
        # before this call, and the earlier chunks): the first arrival wins
        buf, base = self._buf, self._next
        top = ends[-1] - base
        if top > len(buf):
            buf.extend(bytes(top - len(buf)))
        for lo, hi, i in fresh:
            seq, data = views[i]
            for gap_lo, gap_hi in _gaps(self._starts, self._ends, lo, hi):
                buf[gap_lo - base : gap_hi - base] = data[gap_lo - seq : gap_hi - seq]
            _add_run(self._starts, self._ends, lo, hi)

    def pop(self, max_bytes: int | None = None) -> bytes:
        """Release contiguous bytes (all that are ready, or at most ``max_bytes``)."""
        ready = self.readable
        size = ready if max_bytes is None else min(ready, max_bytes)
        if size <= 0:
            return b""
        out = bytes(self._buf[:size])
        del self._buf[:size]
        self._next += size
        if size == ready:
            del self._starts[0], self._ends[0]
        else:
            self._starts[0] += size
        return out

    @property
    def next_seq(self) -> int:
        """Sequence number of the first byte not yet released."""
        return self._next

    @property
    def readable(self) -> int:
        """Contiguous bytes ready to pop."""
        if self._starts and self._starts[0] == self._next:
            return self._ends[0] - self._next
        return 0

    @property
    def buffered(self) -> int:
        """All bytes held, contiguous or not."""
        return sum(self._ends) - sum(self._starts)
