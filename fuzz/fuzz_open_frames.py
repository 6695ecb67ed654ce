"""Fuzz target: ``dtp_aead_open_frames`` (open records and decode their frames in one
call), ``dtp_aead_open_lone_frame`` (a buffer of one record of one frame) and
``dtp_rx_take`` (the lane's run of in-order STREAM records) on arbitrary record
plaintexts and arbitrary record streams (atheris / libFuzzer).

Each input is used twice: as the plaintexts of genuine records (so that the frame
decoder behind the AEAD is reached) and as a raw record stream (headers, truncation,
authentication failures). The C core and the pure-Python twin must agree on every
outcome, and the only allowed errors are the ones reported in the result.

    python fuzz/fuzz_open_frames.py -runs=20000
"""

from __future__ import annotations

import itertools
import sys
from typing import Any

import atheris

with atheris.instrument_imports():
    from dtp.native import core as _core
    from dtp.native import reference as _reference
    from dtp.native.types import FULL, NEED_MORE, OK, STOP

KEY = bytes(range(32))
_SEALER = _reference.Aead(KEY)


def _summary(result: Any) -> object:
    if result.status not in (OK, NEED_MORE, FULL, STOP) and result.error is None:
        raise AssertionError(f"bad status without an error: {result.status}")
    error = None if result.error is None else (type(result.error).__name__, result.status)
    records = [
        (r.counter, r.replayed, [(*f[:4], bytes(f.data), f.ranges) for f in r.frames])
        for r in result.records
    ]
    return (records, result.consumed, result.status, error)


def test_one_input(data: bytes) -> None:
    """Open ``data`` as record plaintexts and as a raw stream with both backends."""
    if len(data) < 2:
        return
    limit = 1 + data[0] % 8 if data[0] & 0x80 else 1024
    max_records = 1 + data[1] % 16
    body = data[2:]
    # genuine records: the body cut into up to four plaintexts
    cuts = sorted({0, len(body), *(b % (len(body) + 1) for b in data[:3])})
    plaintexts = [body[a:b] for a, b in itertools.pairwise(cuts)][:4] or [b""]
    stream = _SEALER.seal(data[1] % 7, [p[:16384] for p in plaintexts])
    for blob in (stream, stream[: len(stream) - data[0] % 5], body):
        native = _core.NativeAead(KEY).open_frames(blob, max_records, limit, limit)
        twin = _reference.Aead(KEY).open_frames(blob, max_records, limit, limit)
        got, want = _summary(native), _summary(twin)
        if got != want:
            raise AssertionError(f"backends disagree: {got!r} != {want!r}")
        got, want = (_lone(aead(KEY), blob) for aead in (_core.NativeAead, _reference.Aead))
        if got != want:
            raise AssertionError(f"lone frames disagree: {got!r} != {want!r}")
        got, want = (_take(lane, blob, data) for lane in (_core.NativeLane, _reference.Lane))
        if got != want:
            raise AssertionError(f"lanes disagree: {got!r} != {want!r}")


def _lone(aead: Any, blob: bytes) -> object:
    """``open_lone_frame`` of ``blob``, then ``open_frames`` of it (what the first left)."""
    record = aead.open_lone_frame(blob)
    lone = None
    if record is not None:
        frames = [(*f[:4], bytes(f.data)) for f in record.frames]
        lone = (record.counter, record.replayed, frames, record.datagrams)
    return lone, _summary(aead.open_frames(blob))


def _take(lane_type: Any, blob: bytes, data: bytes) -> object:
    """One lane take of ``blob`` for stream ``data[0] % 8`` from offset 0, with the
    buffer and the limits drawn from ``data``; everything it reports."""
    recv = (_core.NativeAead if lane_type is _core.NativeLane else _reference.Aead)(KEY)
    lane = lane_type(recv, recv)
    dst = bytearray(data[1] * 64)
    limit = (data[2] if len(data) > 2 else 0) * 256
    result = lane.take(blob, data[0] % 8, 0, limit, 0, limit or 1 << 20, dst)
    if result.status not in (OK, NEED_MORE, FULL, STOP) or result.consumed > len(blob):
        raise AssertionError(f"bad take result {result!r}")
    return (*result[:4], bytes(result.spill), bytes(dst[: result.taken]))


def main(argv: list[str] | None = None) -> None:
    """Run the fuzzer (libFuzzer flags such as ``-runs=N`` are accepted)."""
    if not _core.HAVE_NATIVE:
        raise SystemExit("the C extension is not built: pip install -e . first")
    atheris.Setup(sys.argv if argv is None else argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
