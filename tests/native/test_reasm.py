"""Reassembly (protocol.md section 5): both backends agree, reorder/duplicate/overlap
yields the original stream, and every error leaves the buffer unchanged.

The reorder buffer's cost stays linear when a peer trickles small chunks behind a
missing first byte, onto the end of a long run or under its start: the twin never
copies the whole run for every chunk that joins it (quadratic: a 4 MiB window of
64-byte chunks would mean over 100 GB of copying on the pure-Python backend)."""

from __future__ import annotations

import itertools
import time
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtp.errors import ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError
from tests.support.backends import BACKENDS, NATIVE, REFERENCE, require_native
from tests.support.vectors import load_vectors

U64 = 2**64
each_backend = pytest.mark.parametrize("b", BACKENDS, ids=lambda b: b.name)


def snapshot(r: Any) -> tuple[int, int, int]:
    return (r.next_seq, r.readable, r.buffered)


def outcome(fn: Any, *args: Any) -> Any:
    try:
        return ("ok", fn(*args))
    except ProtocolError as exc:
        return (type(exc).__name__, exc.code)


def test_in_order_and_out_of_order(backend: SimpleNamespace) -> None:
    r = backend.Reassembler(start_seq=100)
    assert snapshot(r) == (100, 0, 0)
    r.push(103, b"def")
    assert snapshot(r) == (100, 0, 3)
    assert r.pop() == b""
    r.push(100, b"abc")
    assert snapshot(r) == (100, 6, 6)
    assert r.pop(2) == b"ab"
    assert r.pop(0) == b"" and r.pop(-5) == b""
    assert r.pop() == b"cdef"
    assert snapshot(r) == (106, 0, 0)


def test_first_arrival_wins(backend: SimpleNamespace) -> None:
    r = backend.Reassembler()
    r.push(0, b"aaaa")
    r.push(2, b"bbbb")
    assert r.pop() == b"aaaabb"
    # within one call, the earlier chunk in the list arrived first
    r = backend.Reassembler()
    r.push_many([(2, b"XX"), (0, b"yyyy"), (1, b"zzzzzz")])
    assert r.pop() == b"yyXXzzz"


def test_released_bytes_are_ignored(backend: SimpleNamespace) -> None:
    r = backend.Reassembler()
    r.push(0, b"hello")
    assert r.pop() == b"hello"
    r.push(0, b"HELLO world")  # 0..4 already released
    assert r.pop() == b" world"
    r.push(3, b"xyz")  # entirely old: no effect
    assert snapshot(r) == (11, 0, 0)


def test_empty_chunks(backend: SimpleNamespace) -> None:
    r = backend.Reassembler(window=8)
    r.push_many([(5, b""), (0, b"")])
    assert snapshot(r) == (0, 0, 0)
    with pytest.raises(RemoteProtocolError) as info:
        r.push(9, b"")  # the window rule applies to empty chunks too
    assert info.value.code == ErrorCode.REASM_WINDOW


def test_window_error_changes_nothing(backend: SimpleNamespace) -> None:
    r = backend.Reassembler(start_seq=10, window=16)
    r.push(12, b"cd")
    r.push(10 + 16 - 1, b"z")  # last byte inside the window
    before = snapshot(r)
    with pytest.raises(RemoteProtocolError) as info:
        r.push_many([(10, b"ab"), (20, b"0123456789")])  # ends at 30 > 26
    assert info.value.code == ErrorCode.REASM_WINDOW
    assert snapshot(r) == before
    r.push(10, b"ab")
    assert r.pop() == b"abcd"
    r.push(27, b"q")  # the window moved with next_seq
    assert snapshot(r) == (14, 0, 2)


def test_fragmentation_counts_runs(backend: SimpleNamespace) -> None:
    r = backend.Reassembler(window=100, max_ranges=2)
    r.push(0, b"ab")  # readable prefix: one run
    r.push(10, b"k")
    before = snapshot(r)
    with pytest.raises(RemoteProtocolError) as info:
        r.push(20, b"u")
    assert info.value.code == ErrorCode.REASM_FRAGMENTED
    assert snapshot(r) == before
    # touching runs join, so these do not add one
    r.push_many([(11, b"l"), (2, b"c")])
    assert snapshot(r) == (0, 3, 5)
    # only the final count matters: the bridge arrives after the chunk it makes room for
    r.push_many([(20, b"u"), (3, b"defghij"), (12, b"mnopqrst")])
    assert r.pop() == b"abcdefghijklmnopqrstu"


def test_sequence_space_top(backend: SimpleNamespace) -> None:
    top = U64 - 1
    r = backend.Reassembler(start_seq=top - 9)
    r.push(top - 9, b"x" * 9)  # ends at 2**64 - 1: representable
    with pytest.raises(LocalProtocolError) as info:
        r.push_many([(top - 5, b"abc"), (top - 1, b"yy")])  # ends at 2**64
    assert info.value.code == ErrorCode.ARG
    assert snapshot(r) == (top - 9, 9, 9)
    assert r.pop() == b"x" * 9 and r.next_seq == top
    for bad in (-1, U64):
        with pytest.raises(LocalProtocolError) as info:
            r.push(bad, b"a")
        assert info.value.code == ErrorCode.ARG


def test_type_errors_checked_before_window(backend: SimpleNamespace) -> None:
    r = backend.Reassembler(window=4)
    with pytest.raises(LocalProtocolError) as info:
        r.push_many([(100, b"a"), (-1, b"a")])
    assert info.value.code == ErrorCode.ARG


@pytest.mark.parametrize(
    "args", [(-1, 16, 4), (U64, 16, 4), (0, 0, 4), (0, 2**32, 4), (0, 16, 0), (0, 16, 2**32)]
)
def test_bad_parameters(backend: SimpleNamespace, args: tuple[int, int, int]) -> None:
    with pytest.raises(LocalProtocolError) as info:
        backend.Reassembler(*args)
    assert info.value.code == ErrorCode.ARG


def test_protocol_vectors(backend: SimpleNamespace) -> None:
    vectors = load_vectors("reasm")
    assert vectors
    for v in vectors:
        r = backend.Reassembler(v["start_seq"], v["window"], v["max_ranges"])
        for i, step in enumerate(v["steps"]):
            where = f"{v['name']} step {i}"
            if "push" in step:
                chunks = [(seq, bytes.fromhex(h)) for seq, h in step["push"]]
                if "error" in step:
                    with pytest.raises(ProtocolError) as info:
                        r.push_many(chunks)
                    assert info.value.code == ErrorCode[step["error"]], where
                else:
                    r.push_many(chunks)
            else:
                assert r.pop(step["pop"]) == bytes.fromhex(step["expect"]), where
            assert snapshot(r) == (step["next_seq"], step["readable"], step["buffered"]), where


@st.composite
def scrambled(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, bytes]]]:
    """A byte string and chunks covering it, plus duplicates and overlaps, shuffled."""
    data = draw(st.binary(min_size=1, max_size=3000))
    cuts = sorted(
        draw(st.sets(st.integers(1, len(data) - 1), max_size=30)) if len(data) > 1 else []
    )
    bounds = [0, *cuts, len(data)]
    chunks = [(lo, data[lo:hi]) for lo, hi in itertools.pairwise(bounds)]
    extra = draw(
        st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 400)), max_size=15)
    )
    chunks += [(lo, data[lo : lo + n]) for lo, n in extra]
    return data, draw(st.permutations(chunks))


@each_backend
@given(case=scrambled(), start=st.integers(0, U64 - 4000), group=st.integers(1, 5))
def test_scrambled_chunks_rebuild_the_stream(
    b: SimpleNamespace, case: tuple[bytes, list[tuple[int, bytes]]], start: int, group: int
) -> None:
    data, chunks = case
    r = b.Reassembler(start_seq=start, window=4096, max_ranges=64)
    out = bytearray()
    for i in range(0, len(chunks), group):
        r.push_many([(start + off, piece) for off, piece in chunks[i : i + group]])
        out += r.pop(r.readable // 2 + 1)
    out += r.pop()
    assert bytes(out) == data
    assert snapshot(r) == (start + len(data), 0, 0)


@each_backend
@given(data=st.binary(min_size=1, max_size=20000), window=st.integers(1, 700), seed=st.randoms())
def test_small_window_streaming(b: SimpleNamespace, data: bytes, window: int, seed: Any) -> None:
    """Stream far more than the window through it (the C ring wraps and grows)."""
    r = b.Reassembler(start_seq=7, window=window, max_ranges=8)
    out = bytearray()
    while len(out) < len(data):
        base = r.next_seq - 7
        hi = min(len(data), base + window)
        # deliver the window's tail first, then its head
        mid = base + seed.randrange(0, hi - base + 1)
        r.push_many([(7 + mid, data[mid:hi])])
        r.push(7 + base, data[base:mid])
        out += r.pop(seed.randrange(1, window + 1))
    assert bytes(out) == data


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("push"),
            st.lists(st.tuples(st.integers(-2, 300), st.integers(0, 60)), max_size=4),
        ),
        st.tuples(st.just("pop"), st.one_of(st.none(), st.integers(-1, 80))),
    ),
    max_size=40,
)


@given(
    ops=ops,
    window=st.integers(1, 200),
    max_ranges=st.integers(1, 5),
    start=st.sampled_from([0, 5, U64 - 250]),
)
def test_differential(ops: list[Any], window: int, max_ranges: int, start: int) -> None:
    require_native()
    pattern = bytes(range(256)) * 2
    c = NATIVE.Reassembler(start, window, max_ranges)
    p = REFERENCE.Reassembler(start, window, max_ranges)
    for op, arg in ops:
        if op == "push":
            chunks = [(start + off, pattern[off % 256 : off % 256 + n]) for off, n in arg]
            assert outcome(c.push_many, chunks) == outcome(p.push_many, chunks)
        else:
            assert c.pop(arg) == p.pop(arg)
        assert snapshot(c) == snapshot(p)


def test_many_instances_free_cleanly(backend: SimpleNamespace) -> None:
    for i in range(200):
        r = backend.Reassembler(start_seq=i, window=1 << 16)
        r.push(i + 10, bytes(5000))
        r.push(i, b"x" * 10)
        if i % 2:
            r.pop(100)
        del r


WINDOW = 1 << 22
CHUNK = 64
COUNT = WINDOW // CHUNK - 1
# CPU seconds of this process (not wall time, which other processes' load stretches);
# linear work takes well under one here, quadratic work many times the budget
BUDGET = 4.0


def trickle(b: SimpleNamespace, order: range) -> None:
    r = b.Reassembler(0, WINDOW, 16)
    chunk = bytes(range(CHUNK))
    deadline = time.process_time() + BUDGET
    for n, i in enumerate(order):
        r.push(i * CHUNK, chunk)
        if n % 512 == 0:
            assert time.process_time() < deadline, f"{n} pushes took the whole budget"
    assert (r.readable, r.buffered) == (0, COUNT * CHUNK)
    r.push(0, chunk)  # the missing first chunk: everything is readable
    assert r.readable == WINDOW
    assert r.pop() == chunk * (COUNT + 1)
    assert (r.next_seq, r.buffered) == (WINDOW, 0)


@each_backend
def test_chunks_appended_to_a_long_run(b: SimpleNamespace) -> None:
    trickle(b, range(1, COUNT + 1))


@each_backend
def test_chunks_put_under_a_long_run(b: SimpleNamespace) -> None:
    trickle(b, range(COUNT, 0, -1))


@each_backend
@pytest.mark.parametrize(
    "chunks",
    [
        [(0, bytearray(b"abcdefgh"))],  # past the window
        [(0, bytearray(b"ab")), (2**64 - 1, bytearray(b"ab"))],  # past 2**64 - 1
        [(0, bytearray(b"a")), (2, bytearray(b"a")), (6, bytearray(b"a"))],  # fragmented
        [(1, bytearray(b"ab"))],  # accepted
    ],
)
def test_the_callers_buffers_can_be_resized_after_a_push(
    b: SimpleNamespace, chunks: list[tuple[int, bytearray]]
) -> None:
    r = b.Reassembler(0, 7, 2)
    try:
        r.push_many(chunks)
    except (LocalProtocolError, RemoteProtocolError):
        for _, data in chunks:
            data += b"x"  # in the except clause: no export of it may be left
    for _, data in chunks:
        data += b"y"
