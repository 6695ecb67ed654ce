"""Fuzz target: the HAM table (``dtp_ham_merge`` / ``dtp_ham_advance``) and the reorder
buffer (``dtp_reasm_push`` / ``dtp_reasm_pop``) driven by arbitrary bytes (atheris /
libFuzzer), the C core against its pure-Python twin.

Each input is one of two scripts. HAM: merges and advances over a small alphabet of
souls, fields, values and states (0.0 and -0.0, subnormals, huge values included, so
that ties, sign bits and the deferred queue's cap are reached), then the input itself
as a raw batch. Both tables must give the same statuses, the same ``changed`` bytes
(state bits included), the same error codes and the same fields, bit for bit. Reasm:
pushes (overlapping, duplicate, before ``next_seq``, past the window) and pops on a
small window.

    python fuzz/fuzz_ham_reasm.py -runs=20000
"""

from __future__ import annotations

import struct
import sys
from typing import Any

import atheris

with atheris.instrument_imports():
    from dtp.errors import ProtocolError
    from dtp.native import core as _core
    from dtp.native import reference as _reference
    from dtp.native.reference._ham import encode_ham_batch
    from dtp.native.types import HamUpdate

SEED = bytes(range(16))
SOULS = (b"a", b"b", b"\x00" * 3)
FIELDS = (b"x", b"yy")
VALUES = (b"", b"a", b"ab", b"b", b"\xff" * 5)
STATES = (0.0, -0.0, 5e-324, -5e-324, 1.0, 2.0, -1.0, 1e308, -1e308, 0.5)
CAPS = (0, 13, 40, 200, 1 << 20)
_F64 = struct.Struct("<d")


def _outcome(fn: Any, *args: Any) -> object:
    try:
        return ("ok", fn(*args))
    except ProtocolError as exc:
        return (type(exc).__name__, exc.code)


def _table(graph: Any) -> list[tuple[bytes, bytes] | None]:
    """Every field of the alphabet, the state as its bits (export would allocate a
    megabyte per call: too slow for a fuzz loop)."""
    rows: list[tuple[bytes, bytes] | None] = [None if len(graph) else (b"", b"")]
    for soul in SOULS:
        for field in FIELDS:
            got = graph.get(soul, field)
            rows.append(None if got is None else (_F64.pack(got[0]), got[1]))
    return rows


def _ham(data: bytes) -> None:
    cap = CAPS[data[0] % len(CAPS)]
    native = _core.NativeHamGraph(max_deferred_bytes=cap, seed=SEED)
    twin = _reference.HamGraph(max_deferred_bytes=cap, seed=SEED)
    pos, end = 1, min(len(data), 20)  # a short script: many of them in a run
    while pos < end:
        op = data[pos]
        clock = STATES[op % len(STATES)]
        if op & 0x80:
            got, want = native.advance(clock), twin.advance(clock)
            pos += 1
        else:
            count = 1 + (op >> 4) % 4
            raw = data[pos + 1 : pos + 1 + count]
            ups = [
                HamUpdate(SOULS[b % 3], FIELDS[(b >> 2) % 2], STATES[(b >> 3) % 10], VALUES[b % 5])
                for b in raw
            ]
            batch = encode_ham_batch(ups)
            got, want = _outcome(native.merge, batch, clock), _outcome(twin.merge, batch, clock)
            pos += 1 + count
        if got != want:
            raise AssertionError(f"HAM backends disagree: {got!r} != {want!r}")
        if (native.deferred_count, native.deferred_bytes) != (
            twin.deferred_count,
            twin.deferred_bytes,
        ):
            raise AssertionError("deferred queues disagree")
    if len(native) != len(twin) or _table(native) != _table(twin):
        raise AssertionError("tables disagree")
    # the input itself as a batch: only results or RemoteProtocolError, and the same
    got = _outcome(native.merge, data[1:], 1.0)
    if got != _outcome(twin.merge, data[1:], 1.0):
        raise AssertionError("raw batch outcomes disagree")


def _reasm(data: bytes) -> None:
    window = 1 + data[0] % 64
    ranges = 1 + data[1] % 4
    native = _core.NativeReassembler(1000, window, ranges)
    twin = _reference.Reassembler(1000, window, ranges)
    pattern = bytes(range(256))
    for i in range(2, min(len(data), 34) - 1, 2):
        a, b = data[i], data[i + 1]
        if a & 0x80:
            size = None if b == 0 else b % 80
            if native.pop(size) != twin.pop(size):
                raise AssertionError("pops disagree")
        else:
            seq = 1000 + a % 100 - 10  # some before next_seq, some past the window
            chunk = pattern[b : b + b % 40]
            got = _outcome(native.push_many, [(seq, chunk), (seq + b % 7, chunk[:3])])
            if got != _outcome(twin.push_many, [(seq, chunk), (seq + b % 7, chunk[:3])]):
                raise AssertionError("pushes disagree")
        if (native.next_seq, native.readable, native.buffered) != (
            twin.next_seq,
            twin.readable,
            twin.buffered,
        ):
            raise AssertionError("reassemblers disagree")


def test_one_input(data: bytes) -> None:
    """Run ``data`` as a HAM script or (the first byte's low bit) a reassembly script
    on both backends: one of them per run keeps a run cheap."""
    if len(data) < 2:
        return
    if data[0] & 1:
        _reasm(bytes([data[0] >> 1]) + data[1:])
    else:
        _ham(bytes([data[0] >> 1]) + data[1:])


def main(argv: list[str] | None = None) -> None:
    """Run the fuzzer (libFuzzer flags such as ``-runs=N`` are accepted)."""
    if not _core.HAVE_NATIVE:
        raise SystemExit("the C extension is not built: pip install -e . first")
    atheris.Setup(sys.argv if argv is None else argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
