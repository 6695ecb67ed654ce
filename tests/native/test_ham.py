"""HAM batches and merge (protocol.md section 6): codec, CRDT laws on both backends,
C-vs-twin agreement on valid and invalid batches, and the C buffer contracts.

``HamGraph.export`` while the table changes: the C table's cursor is an index into
its slots, which a growing table rearranges, so an export consumed across a merge that
adds fields skipped some and repeated others, silently. Both backends now raise
RuntimeError at the next batch (the twin's dict does), and value changes stay allowed."""

from __future__ import annotations

import contextlib
import itertools
import math
import struct
import sys
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtp.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from dtp.native import core as _core
from dtp.native.reference._ham import decode_ham_batch, encode_ham_batch, update_size
from dtp.native.reference._limits import HAM_EXPORT_MAX_BATCH, HAM_MAX_VALUE
from dtp.native.types import (
    FULL,
    HAM_APPLIED,
    HAM_DEFERRED,
    HAM_HISTORICAL,
    HAM_REJECTED,
    HAM_SAME,
    OK,
    HamUpdate,
)
from tests.native import ham_vectors
from tests.native.ham_batches import BAD_BATCHES, F1, GOOD, header, outcome, raw_update
from tests.support.backends import BACKENDS, NATIVE, REFERENCE, require_native
from tests.support.vectors import load_vectors

LATE = sys.float_info.max  # a machine clock no finite state is ahead of
SEED = bytes(range(16))
each_backend = pytest.mark.parametrize("b", BACKENDS, ids=lambda b: b.name)

# few souls, fields and values so updates collide, ties included
souls = st.sampled_from([b"a", b"b", b"user/1", b"\x00" * 70])
fields = st.sampled_from([b"x", b"name", b"y" * 64])
states = st.one_of(
    st.integers(-3, 6).map(float),
    st.sampled_from([-0.0, 0.5, 1e15, -1e300]),
    st.floats(allow_nan=False, allow_infinity=False),
)
# (0xED..0xF0 and 0xFF: where the tie-break's UTF-16 order parts from byte order)
values = st.one_of(
    st.sampled_from([b"", b"a", b"ab", b"b", b"\xff", b"\xed", b"\xee", b"\xef", b"\xf0", b"\xf4"]),
    st.binary(max_size=80),
    st.text(max_size=8).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
updates = st.builds(HamUpdate, souls, fields, states, values)
update_lists = st.lists(updates, max_size=25)


def table(g: Any) -> list[HamUpdate]:
    """The graph's table as a sorted list (export order is unspecified)."""
    rows = [u for batch in g.export() for u in decode_ham_batch(batch)]
    assert len(rows) == len(g)
    return sorted(rows)


def merge_all(b: SimpleNamespace, ups: list[HamUpdate], clock: float = LATE, **kw: Any) -> Any:
    g = b.HamGraph(seed=SEED, **kw)
    g.merge(encode_ham_batch(ups), clock)
    return g


def once(ups: list[HamUpdate]) -> list[HamUpdate]:
    """The first of each set of identical updates (equal canonical encodings): the
    deferred queue holds each once (protocol.md 6.3, rule 1)."""
    seen: set[bytes] = set()
    out = []
    for u in ups:
        key = encode_ham_batch([u])
        if key not in seen:
            seen.add(key)
            out.append(u)
    return out


# ------------------------------------------------------------------------------------
# codec


def test_batch_vectors() -> None:
    vectors = load_vectors("ham-batch")
    assert vectors
    for v in vectors:
        ups = [
            HamUpdate(
                bytes.fromhex(u["soul"]),
                bytes.fromhex(u["field"]),
                u["state"],
                bytes.fromhex(u["value"]),
            )
            for u in v["updates"]
        ]
        assert encode_ham_batch(ups) == bytes.fromhex(v["hex"]), v["name"]
        assert decode_ham_batch(bytes.fromhex(v["hex"])) == ups, v["name"]


@given(update_lists)
def test_codec_round_trip(ups: list[HamUpdate]) -> None:
    batch = encode_ham_batch(ups)
    assert decode_ham_batch(batch) == ups
    assert decode_ham_batch(memoryview(bytearray(batch))) == ups
    assert len(batch) == 5 + sum(update_size(u) for u in ups)


def test_decode_accepts_non_minimal_varints() -> None:
    long_form = header(1) + b"\x40\x01s\x80\x00\x00\x01f" + F1 + b"\xc0" + bytes(6) + b"\x01v"
    assert decode_ham_batch(long_form) == [HamUpdate(b"s", b"f", 1.0, b"v")]
    assert decode_ham_batch(header(0)) == []


@pytest.mark.parametrize(("name", "batch", "code"), BAD_BATCHES, ids=[c[0] for c in BAD_BATCHES])
def test_decode_rejects(name: str, batch: bytes, code: ErrorCode) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_ham_batch(batch)
    assert info.value.code == code


@pytest.mark.parametrize(
    ("update", "code"),
    [
        (HamUpdate(b"", b"f", 1.0, b""), ErrorCode.HAM_SIZE),
        (HamUpdate(b"s" * 1025, b"f", 1.0, b""), ErrorCode.HAM_SIZE),
        (HamUpdate(b"s", b"", 1.0, b""), ErrorCode.HAM_SIZE),
        (HamUpdate(b"s", b"f" * 1025, 1.0, b""), ErrorCode.HAM_SIZE),
        (HamUpdate(b"s", b"f", math.nan, b""), ErrorCode.HAM_STATE),
        (HamUpdate(b"s", b"f", -math.inf, b""), ErrorCode.HAM_STATE),
        (HamUpdate(b"s", b"f", 1.0, bytes(1048577)), ErrorCode.HAM_SIZE),
    ],
)
def test_encode_rejects(update: HamUpdate, code: ErrorCode) -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode_ham_batch([update])
    assert info.value.code == code


def test_encode_limits_are_inclusive() -> None:
    big = HamUpdate(b"s" * 1024, b"f" * 1024, -0.0, bytes(1048576))
    assert decode_ham_batch(encode_ham_batch([big])) == [big]


@given(st.binary(max_size=300))
def test_decode_garbage_raises_only_remote_errors(data: bytes) -> None:
    for candidate in (data, header(0)[:1] + data, header(1) + data, header(2) + GOOD + data):
        with contextlib.suppress(RemoteProtocolError):
            decode_ham_batch(candidate)


# ------------------------------------------------------------------------------------
# merge rules


def test_vectors_are_the_documented_ones() -> None:
    """protocol.md 6.6 holds exactly the vectors tests/native/ham_vectors.py builds from
    their description (statuses stated by hand there):
    ``python -m tests.native.ham_vectors --regenerate`` rewrites them."""
    built = ham_vectors.vectors()
    documented = {v["name"]: v for v in load_vectors() if v["kind"].startswith("ham-")}
    assert {v["name"] for v in built} == documented.keys()
    for v in built:
        assert documented[v["name"]] == v, v["name"]


def test_merge_vectors(backend: SimpleNamespace) -> None:
    vectors = load_vectors("ham-merge")
    assert vectors
    for v in vectors:
        g = backend.HamGraph(seed=SEED)
        g.merge(bytes.fromhex(v["start"]), v["start_machine_state"])
        result = g.merge(bytes.fromhex(v["batch"]), v["machine_state"])
        assert list(result.statuses) == v["statuses"], v["name"]
        assert result.changed == bytes.fromhex(v["changed"]), v["name"]
        assert (g.deferred_count, g.deferred_bytes) == (v["deferred_count"], v["deferred_bytes"])
        assert g.advance(v["advance_to"]) == bytes.fromhex(v["advanced"]), v["name"]
        assert g.deferred_count == 0 and g.deferred_bytes == 0


def test_each_outcome(backend: SimpleNamespace) -> None:
    g = backend.HamGraph(seed=SEED)

    def one(state: float, value: bytes, clock: float = 10.0) -> int:
        return g.merge(encode_ham_batch([HamUpdate(b"s", b"f", state, value)]), clock).statuses[0]

    assert g.get(b"s", b"f") is None
    assert one(5.0, b"m") == HAM_APPLIED
    assert one(4.0, b"z") == HAM_HISTORICAL
    assert one(5.0, b"m") == HAM_SAME
    assert one(5.0, b"l") == HAM_HISTORICAL
    assert one(5.0, b"") == HAM_HISTORICAL  # empty is the smallest value
    assert one(5.0, b"m\x00") == HAM_APPLIED  # a proper prefix is smaller
    assert one(5.0, b"m") == HAM_HISTORICAL
    assert one(5.0, b"\x80") == HAM_APPLIED  # unsigned bytes
    assert one(10.0, b"a") == HAM_APPLIED  # equal to the clock: not deferred
    assert one(10.5, b"b") == HAM_DEFERRED
    assert g.get(b"s", b"f") == (10.0, b"a")
    assert g.get(b"s", b"g") is None and g.get(b"", b"f") is None
    assert len(g) == 1 and g.deferred_count == 1


# characters on both sides of where UTF-16 order and code point order part (U+D7FF,
# U+E000..U+FFFF against the supplementary planes), and some of every kind
_chars = st.one_of(
    st.sampled_from(["a", "\u00e9", "\ud7ff", "\ue000", "\uffff", "\U00010000", "\U0001f600"]),
    st.characters(exclude_categories=["Cs"]),
)


@each_backend
@given(x=st.text(_chars, max_size=6), y=st.text(_chars, max_size=6))
def test_ties_go_to_the_greater_utf16_text(b: SimpleNamespace, x: str, y: str) -> None:
    """Two UTF-8 texts at one state: the one whose UTF-16 code units are greater wins
    (JavaScript's string order, and so GunDB's tie-break: protocol.md 6.3), in either
    arrival order."""
    ux, uy = x.encode(), y.encode()
    want = max(x, y, key=lambda t: t.encode("utf-16-be")).encode()  # (BE: by code unit)
    for first, second in ((ux, uy), (uy, ux)):
        g = b.HamGraph(seed=SEED)
        g.merge(encode_ham_batch([HamUpdate(b"s", b"f", 5.0, v) for v in (first, second)]), 9.0)
        assert g.get(b"s", b"f") == (5.0, want)


def test_utf16_order_examples(backend: SimpleNamespace) -> None:
    """The examples of protocol.md 6.3: U+FFFF beats U+1F600, whose bytes are greater."""

    def winner(*texts: bytes) -> bytes:
        g = backend.HamGraph(seed=SEED)
        g.merge(encode_ham_batch([HamUpdate(b"s", b"f", 1.0, t) for t in texts]), 1.0)
        return bytes(g.get(b"s", b"f")[1])

    smile, top = '"\U0001f600"'.encode(), '"\uffff"'.encode()
    assert smile > top  # bytewise (F0 > EF) the emoji was greater
    assert winner(smile, top) == winner(top, smile) == top
    assert winner(b"0.5", b"0.000001") == winner(b"0.000001", b"0.5") == b"0.5"
    assert winner(b"\xee", b"\xff") == b"\xee"  # any bytes: 0xF0..0xFF rank below 0xEE
    assert winner(b"\xed", b"\xf0") == b"\xf0"  # ... and above 0xED
    assert winner(b"\xef\x00", b"\xef") == b"\xef\x00"  # a proper prefix is smaller


def test_negative_zero_equals_zero(backend: SimpleNamespace) -> None:
    g = backend.HamGraph(seed=SEED)
    g.merge(encode_ham_batch([HamUpdate(b"s", b"f", 0.0, b"v")]), 1.0)
    result = g.merge(encode_ham_batch([HamUpdate(b"s", b"f", -0.0, b"v")]), 1.0)
    assert result.statuses == bytes([HAM_SAME])
    result = g.merge(encode_ham_batch([HamUpdate(b"s", b"f", -0.0, b"w")]), 1.0)
    assert result.statuses == bytes([HAM_APPLIED])
    state, value = g.get(b"s", b"f") or (1.0, b"")
    assert value == b"w" and math.copysign(1.0, state) == -1.0  # bits kept as sent


def test_machine_state_must_be_finite(backend: SimpleNamespace) -> None:
    g = backend.HamGraph(seed=SEED)
    for clock in (math.nan, math.inf, -math.inf):
        for call in (lambda c: g.merge(header(0), c), g.advance):
            with pytest.raises(LocalProtocolError) as info:
                call(clock)
            assert info.value.code == ErrorCode.HAM_STATE


@pytest.mark.parametrize("kwargs", [{"seed": b"short"}, {"max_deferred_bytes": -1}])
def test_bad_parameters(backend: SimpleNamespace, kwargs: dict[str, Any]) -> None:
    with pytest.raises(LocalProtocolError) as info:
        backend.HamGraph(**kwargs)
    assert info.value.code == ErrorCode.ARG


@each_backend
@pytest.mark.parametrize(("name", "batch", "code"), BAD_BATCHES, ids=[c[0] for c in BAD_BATCHES])
def test_bad_batch_changes_nothing(
    b: SimpleNamespace, name: str, batch: bytes, code: ErrorCode
) -> None:
    # a good update first: validation covers the whole batch before merging any of it
    g = b.HamGraph(seed=SEED)
    g.merge(encode_ham_batch([HamUpdate(b"k", b"f", 1.0, b"old")]), 5.0)
    if batch[:1] == header(0)[:1] and len(batch) >= 5:
        count = struct.unpack_from("<I", batch, 1)[0]
        if count < 4_000_000:
            good = raw_update(b"k", b"f", struct.pack("<d", 2.0), b"new")
            batch = header(count + 1) + good + batch[5:]
    with pytest.raises(RemoteProtocolError) as info:
        g.merge(batch, 5.0)
    assert info.value.code == code
    assert g.get(b"k", b"f") == (1.0, b"old")
    assert len(g) == 1 and g.deferred_count == 0


# ------------------------------------------------------------------------------------
# CRDT laws (hypothesis, both backends)


@each_backend
@given(ups=update_lists, data=st.data())
def test_commutative(b: SimpleNamespace, ups: list[HamUpdate], data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(ups))
    one_by_one = b.HamGraph(seed=SEED)
    for u in shuffled:
        one_by_one.merge(encode_ham_batch([u]), LATE)
    assert table(merge_all(b, ups)) == table(merge_all(b, shuffled)) == table(one_by_one)


@each_backend
@given(ups=update_lists, cuts=st.lists(st.integers(0, 25), max_size=6))
def test_associative(b: SimpleNamespace, ups: list[HamUpdate], cuts: list[int]) -> None:
    bounds = sorted({0, len(ups), *(c for c in cuts if c <= len(ups))})
    groups = [ups[lo:hi] for lo, hi in itertools.pairwise(bounds)]
    grouped = b.HamGraph(seed=SEED)
    for group in groups:
        grouped.merge(encode_ham_batch(group), LATE)
    whole = merge_all(b, ups)
    assert table(grouped) == table(whole)
    # merging whole tables: (A ∪ B) ∪ C == A ∪ (B ∪ C), through exported state
    parts = [merge_all(b, group) for group in groups]
    joined = b.HamGraph(seed=SEED)
    for part in reversed(parts):
        for batch in part.export():
            joined.merge(batch, LATE)
    assert table(joined) == table(whole)


@each_backend
@given(ups=update_lists)
def test_idempotent(b: SimpleNamespace, ups: list[HamUpdate]) -> None:
    g = merge_all(b, ups)
    before = table(g)
    again = g.merge(encode_ham_batch(ups), LATE)
    assert set(again.statuses) <= {HAM_SAME, HAM_HISTORICAL}
    assert again.changed == header(0)
    for batch in g.export():
        assert set(g.merge(batch, LATE).statuses) == {HAM_SAME}
    assert table(g) == before


@each_backend
@given(ups=update_lists, clocks=st.lists(st.integers(-3, 7).map(float), min_size=1, max_size=4))
def test_deferred_apply_once_the_clock_passes(
    b: SimpleNamespace, ups: list[HamUpdate], clocks: list[float]
) -> None:
    g = b.HamGraph(seed=SEED)
    clock = min(clocks)
    result = g.merge(encode_ham_batch(ups), clock)
    for u, status in zip(ups, result.statuses, strict=True):
        assert (status == HAM_DEFERRED) == (u.state > clock)
    waiting = once([u for u in ups if u.state > clock])
    assert g.deferred_count == len(waiting)
    assert g.deferred_bytes == sum(update_size(u) for u in waiting)
    applied = [u for u, s in zip(ups, result.statuses, strict=True) if s == HAM_APPLIED]
    assert result.changed == encode_ham_batch(applied)
    for step in sorted(clocks):
        changed = g.advance(step)
        for u in decode_ham_batch(changed):
            assert u.state <= step
        waiting = [u for u in waiting if u.state > step]
        assert g.deferred_count == len(waiting)
    g.advance(LATE)
    assert g.deferred_count == 0 and g.deferred_bytes == 0
    assert table(g) == table(merge_all(b, ups))


@each_backend
@given(ups=update_lists, cap=st.integers(0, 400))
def test_rejected_when_the_queue_is_full(
    b: SimpleNamespace, ups: list[HamUpdate], cap: int
) -> None:
    g = b.HamGraph(max_deferred_bytes=cap, seed=SEED)
    ahead = [u._replace(state=abs(u.state) + 1.0) for u in ups]
    statuses = g.merge(encode_ham_batch(ahead), 0.0).statuses
    held = 0
    queued: set[bytes] = set()
    for u, status in zip(ahead, statuses, strict=True):
        key = encode_ham_batch([u])
        if key in queued:
            assert status == HAM_DEFERRED  # held once already, full queue or not
        elif held + update_size(u) > cap:
            assert status == HAM_REJECTED
        else:
            assert status == HAM_DEFERRED
            held += update_size(u)
            queued.add(key)
    assert g.deferred_bytes == held <= cap
    kept = [u for u, s in zip(ahead, statuses, strict=True) if s == HAM_DEFERRED]
    g.advance(LATE)
    assert table(g) == table(merge_all(b, kept))


def test_advance_keeps_order_and_later_updates(backend: SimpleNamespace) -> None:
    g = backend.HamGraph(seed=SEED)
    ups = [
        HamUpdate(b"s", b"f", 3.0, b"c"),
        HamUpdate(b"s", b"f", 9.0, b"late"),
        HamUpdate(b"s", b"f", 2.0, b"b"),  # older than the first: HISTORICAL on advance
        HamUpdate(b"t", b"f", 2.0, b"t"),
    ]
    assert g.merge(encode_ham_batch(ups), 1.0).statuses == bytes([HAM_DEFERRED] * 4)
    assert g.advance(1.5) == header(0)
    assert g.advance(5.0) == encode_ham_batch([ups[0], ups[3]])
    assert g.deferred_count == 1 and g.deferred_bytes == update_size(ups[1])
    assert g.advance(9.0) == encode_ham_batch([ups[1]])
    assert g.get(b"s", b"f") == (9.0, b"late") and len(g) == 2


def test_export_splits_into_batches(backend: SimpleNamespace) -> None:
    big = [HamUpdate(b"s%d" % i, b"f", 1.0, bytes([i]) * 400_000) for i in range(6)]
    g = merge_all(backend, big)
    batches = list(g.export(max_batch_bytes=1))
    assert len(batches) >= 3
    assert all(len(x) <= 1051677 for x in batches)
    assert sorted(u for x in batches for u in decode_ham_batch(x)) == sorted(big)
    assert list(backend.HamGraph(seed=SEED).export()) == []


def test_large_table_grows(backend: SimpleNamespace) -> None:
    ups = [
        HamUpdate(b"soul-%d" % (i % 3000), b"f%d" % (i % 7), float(i % 11), b"v%d" % i)
        for i in range(20000)
    ]
    g = merge_all(backend, ups)
    expected: dict[tuple[bytes, bytes], tuple[float, bytes]] = {}
    for u in ups:
        cur = expected.get((u.soul, u.field))
        if cur is None or (u.state, u.value) > cur:
            expected[u.soul, u.field] = (u.state, u.value)
    assert len(g) == len(expected)
    for (soul, field), sv in expected.items():
        assert g.get(soul, field) == sv


def test_values_that_grow_and_shrink(backend: SimpleNamespace) -> None:
    """The C table carves entries from arena blocks, and moves one whose value outgrows
    its room to an allocation of its own (which then grows in place): every value read
    back is the last one applied, among many fields, small values and 1 MiB ones."""
    g = backend.HamGraph(seed=SEED)
    sizes = [0, 1, 40, 39, 5000, 17_000, 3, 300_000, HAM_MAX_VALUE, 10, 70_000]
    want: dict[bytes, bytes] = {}
    for step, size in enumerate(sizes):
        ups = []
        for k in range(40):
            value = bytes([k + step]) * ((size + k) % (HAM_MAX_VALUE + 1))
            ups.append(HamUpdate(b"s%d" % k, b"f", float(step), value))
            want[b"s%d" % k] = value
        for k in range(0, 40, 3):  # some fields stay small, filling blocks around them
            ups.append(HamUpdate(b"small%d-%d" % (k, step), b"f", 1.0, b"x" * k))
        g.merge(encode_ham_batch(ups), LATE)
        for soul, value in want.items():
            assert g.get(soul, b"f") == (float(step), value)
    assert len(g) == 40 + 14 * len(sizes)
    assert sum(1 for batch in g.export() for _ in decode_ham_batch(batch)) == len(g)


# ------------------------------------------------------------------------------------
# C vs twin
# ------------------------------------------------------------------------------------
# C vs twin


def _mutate(batch: bytes, how: int, pos: int, byte: int) -> bytes:
    if not batch:
        return batch
    pos %= len(batch)
    if how == 0:
        return batch[:pos]
    if how == 1:
        return batch[:pos] + bytes([byte]) + batch[pos + 1 :]
    if how == 2:
        return batch + bytes([byte])
    return batch[:pos] + bytes([byte]) + batch[pos:]


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("merge"),
            update_lists,
            st.integers(-3, 6).map(float),
            st.one_of(
                st.none(), st.tuples(st.integers(0, 3), st.integers(0, 10**6), st.integers(0, 255))
            ),
        ),
        st.tuples(st.just("advance"), st.integers(-3, 8).map(float)),
    ),
    max_size=12,
)


@given(ops=ops, cap=st.sampled_from([0, 60, 300, 64 << 20]))
def test_differential(ops: list[Any], cap: int) -> None:
    require_native()
    c = NATIVE.HamGraph(max_deferred_bytes=cap, seed=SEED)
    p = REFERENCE.HamGraph(max_deferred_bytes=cap, seed=SEED)
    for op in ops:
        if op[0] == "merge":
            _, ups, clock, mutation = op
            batch = encode_ham_batch(ups)
            if mutation is not None:
                batch = _mutate(batch, *mutation)
            assert outcome(c.merge, batch, clock) == outcome(p.merge, batch, clock)
        else:
            assert c.advance(op[1]) == p.advance(op[1])
        assert (len(c), c.deferred_count, c.deferred_bytes) == (
            len(p),
            p.deferred_count,
            p.deferred_bytes,
        )
    assert table(c) == table(p)
    for u in table(p):
        assert c.get(u.soul, u.field) == p.get(u.soul, u.field)


@given(data=st.binary(max_size=200), prefix=st.sampled_from([b"", b"\x01", header(1), header(3)]))
def test_differential_garbage(data: bytes, prefix: bytes) -> None:
    require_native()
    batch = prefix + data
    c = NATIVE.HamGraph(seed=SEED)
    p = REFERENCE.HamGraph(seed=SEED)
    got = outcome(c.merge, batch, 0.0)
    assert got == outcome(p.merge, batch, 0.0)
    assert got[0] in ("ok", "RemoteProtocolError")
    expected = outcome(decode_ham_batch, batch)
    assert expected[0] == got[0] and (got[0] == "ok" or expected[1] == got[1])
    assert table(c) == table(p)


@pytest.mark.parametrize(("name", "batch", "code"), BAD_BATCHES, ids=[c[0] for c in BAD_BATCHES])
def test_differential_bad_batches(name: str, batch: bytes, code: ErrorCode) -> None:
    require_native()
    for clock in (0.0, 5.0):
        got = outcome(NATIVE.HamGraph(seed=SEED).merge, batch, clock)
        assert got == outcome(REFERENCE.HamGraph(seed=SEED).merge, batch, clock)
        assert got == ("RemoteProtocolError", code)


# ------------------------------------------------------------------------------------
# C buffer contracts (through cffi directly: the wrapper always passes enough room)


class Raw:
    """Direct calls into the C API, for the buffer-size rules the wrapper never hits."""

    def __init__(self, max_deferred: int = 1 << 20) -> None:
        require_native()
        self.ffi, self.lib = _core.ffi, _core.lib
        self.g = self.ffi.gc(self.lib.dtp_ham_new(max_deferred, SEED, 16), self.lib.dtp_ham_free)

    def merge(self, batch: bytes, clock: float, status_cap: int, changed_cap: int) -> Any:
        status = self.ffi.new("uint8_t[]", max(1, status_cap))
        changed = self.ffi.new("uint8_t[]", max(1, changed_cap))
        counts = self.ffi.new("size_t[2]")
        rc = self.lib.dtp_ham_merge(
            self.g,
            clock,
            batch,
            len(batch),
            status,
            status_cap,
            counts,
            changed,
            changed_cap,
            counts + 1,
        )
        return rc, bytes(self.ffi.buffer(changed, counts[1]))

    def advance(self, clock: float, cap: int) -> tuple[int, bytes | int]:
        """(status, the batch written) -- or, for DTP_ERR_BUFFER, (-1, the room needed)."""
        out = self.ffi.new("uint8_t[]", max(1, cap))
        written = self.ffi.new("size_t *")
        rc = self.lib.dtp_ham_advance(self.g, clock, out, cap, written)
        if rc == ErrorCode.BUFFER:
            return rc, int(written[0])
        return rc, bytes(self.ffi.buffer(out, written[0]))


def test_c_merge_buffer_checks_come_first() -> None:
    raw = Raw()
    ups = [HamUpdate(b"s", b"f%d" % i, 1.0, b"v") for i in range(3)]
    batch = encode_ham_batch(ups)
    assert raw.merge(batch, 5.0, 2, len(batch))[0] == -1  # status_cap < count
    needed = len(batch)  # all applicable: 5 + canonical sizes == len for a canonical batch
    assert raw.merge(batch, 5.0, 3, needed - 1)[0] == -1
    assert raw.lib.dtp_ham_count(raw.g) == 0
    # deferred updates need no room in `changed`
    assert raw.merge(batch, 0.0, 3, 5) == (0, header(0))
    assert raw.lib.dtp_ham_deferred_count(raw.g) == 3
    # a malformed batch is reported as such even with no room at all
    assert raw.merge(b"\x02", 5.0, 0, 0)[0] == ErrorCode.HAM_MALFORMED
    assert raw.merge(batch, math.nan, 3, needed)[0] == ErrorCode.ARG
    # advance: room for what is due, checked before anything changes, and the room
    # needed told back
    assert raw.advance(5.0, needed - 1) == (-1, needed)
    assert raw.advance(5.0, 0) == (-1, needed)
    assert raw.lib.dtp_ham_deferred_count(raw.g) == 3
    assert raw.advance(0.5, 5) == (0, header(0))  # nothing due: a header is enough
    assert raw.advance(5.0, needed) == (0, batch)
    assert raw.lib.dtp_ham_count(raw.g) == 3
    assert raw.advance(5.0, 4) == (-1, 5)
    assert raw.advance(5.0, 5) == (0, header(0))


def test_c_export_cursor() -> None:
    raw = Raw()
    ffi, lib = raw.ffi, raw.lib
    ups = [HamUpdate(b"soul%d" % i, b"f", 2.0, b"x" * 20) for i in range(10)]
    assert raw.merge(encode_ham_batch(ups), 5.0, 10, 1000)[0] == OK
    size = update_size(ups[0])
    cursor = ffi.new("uint64_t *")
    written = ffi.new("size_t *")
    out = ffi.new("uint8_t[]", 5 + 3 * size)
    assert lib.dtp_ham_export(raw.g, cursor, out, 4, written) == -1  # no room for a header
    assert lib.dtp_ham_export(raw.g, cursor, out, 5 + size - 1, written) == -1  # one entry
    got: list[HamUpdate] = []
    rounds = 0
    while True:
        rc = lib.dtp_ham_export(raw.g, cursor, out, 5 + 3 * size, written)
        got += decode_ham_batch(bytes(ffi.buffer(out, written[0])))
        rounds += 1
        if rc == OK:
            break
        assert rc == FULL and written[0] == 5 + 3 * size
    assert rounds == 4 and sorted(got) == sorted(ups)


def test_c_reasm_argument_checks() -> None:
    require_native()
    ffi, lib = _core.ffi, _core.lib
    r = ffi.gc(lib.dtp_reasm_new(0, 64, 4), lib.dtp_reasm_free)
    chunk = ffi.new("dtp_chunk[]", 1)
    chunk[0].seq, chunk[0].data_off, chunk[0].len = 0, 2, 3
    assert lib.dtp_reasm_push(r, chunk, 1, b"abcd", 4) == ErrorCode.ARG  # 2 + 3 > 4
    chunk[0].data_off = 2**64 - 1
    assert lib.dtp_reasm_push(r, chunk, 1, b"abcd", 4) == ErrorCode.ARG
    chunk[0].data_off, chunk[0].len = 1, 3
    assert lib.dtp_reasm_push(r, chunk, 1, b"abcd", 4) == OK
    assert lib.dtp_reasm_readable(r) == 3
    assert lib.dtp_reasm_new(0, 0, 4) == ffi.NULL
    assert lib.dtp_ham_new(0, SEED, 15) == ffi.NULL


def test_many_graphs_free_cleanly(backend: SimpleNamespace) -> None:
    for i in range(100):
        g = backend.HamGraph(max_deferred_bytes=1000, seed=SEED)
        ups = [HamUpdate(b"s%d" % j, b"f", float(j % 4), b"v" * (i + j)) for j in range(30)]
        g.merge(encode_ham_batch(ups), 1.5)
        if i % 2:
            g.advance(2.0)
        del g


BIG = b"v" * 400_000  # two such entries fill the smallest export batch


def graph(b: SimpleNamespace, seed: bytes) -> Any:
    g = b.HamGraph(seed=seed)
    g.merge(encode_ham_batch([HamUpdate(b"s%d" % i, b"f", 1.0, BIG) for i in range(12)]), 5.0)
    return g


@each_backend
@pytest.mark.parametrize("seed", [bytes(16), bytes(range(16)), b"\xff" * 16])
def test_new_fields_during_an_export_raise(b: SimpleNamespace, seed: bytes) -> None:
    g = graph(b, seed)
    batches = g.export(1)
    first = next(batches)
    assert 1 <= len(decode_ham_batch(first)) < 12
    more = [HamUpdate(b"t%d" % i, b"f", 1.0, b"") for i in range(100)]
    g.merge(encode_ham_batch(more), 5.0)
    with pytest.raises(RuntimeError):
        next(batches)


@each_backend
def test_value_changes_during_an_export_are_fine(b: SimpleNamespace) -> None:
    g = graph(b, bytes(16))
    seen: list[bytes] = []
    for k, batch in enumerate(g.export(1)):
        seen += [u.soul for u in decode_ham_batch(batch)]
        if k == 0:
            newer = [HamUpdate(b"s%d" % i, b"f", 2.0, b"w") for i in range(12)]
            g.merge(encode_ham_batch(newer), 5.0)
    assert sorted(seen) == sorted(b"s%d" % i for i in range(12))


@each_backend
def test_a_whole_export_then_changes(b: SimpleNamespace) -> None:
    g = graph(b, bytes(16))
    batches = list(g.export(1))
    g.merge(encode_ham_batch([HamUpdate(b"new", b"f", 1.0, b"")]), 5.0)
    assert sum(len(decode_ham_batch(x)) for x in batches) == 12


def _updates() -> list[HamUpdate]:
    return [HamUpdate(b"soul%d" % i, b"f", 1.0, b"v%d" % i) for i in range(50)]


@each_backend
@pytest.mark.parametrize("size", [HAM_EXPORT_MAX_BATCH + 1, 1 << 40, 2**63])
def test_a_huge_batch_size_exports_the_table(b: SimpleNamespace, size: int) -> None:
    g = b.HamGraph(seed=bytes(16))
    g.merge(encode_ham_batch(_updates()), 5.0)
    batches = list(g.export(size))
    assert len(batches) == 1
    assert sorted(decode_ham_batch(batches[0])) == sorted(_updates())


@each_backend
def test_batches_stop_at_the_cap(b: SimpleNamespace) -> None:
    # 70 values of 1 MiB: more than one capped batch holds
    g = b.HamGraph(seed=bytes(16))
    big = [HamUpdate(b"s%d" % i, b"f", 1.0, bytes(1 << 20)) for i in range(70)]
    for i in range(0, 70, 10):
        g.merge(encode_ham_batch(big[i : i + 10]), 5.0)
    batches = list(g.export(1 << 40))
    assert len(batches) == 2
    assert all(len(batch) <= HAM_EXPORT_MAX_BATCH for batch in batches)
    assert sum(len(decode_ham_batch(batch)) for batch in batches) == 70
