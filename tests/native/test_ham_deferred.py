"""The HAM deferred queue holds an update once (protocol.md 6.3, rule 1), and the C
table's advance() is cheap when little is due (no buffer the size of the queue)."""

from __future__ import annotations

import struct
import sys
import tracemalloc
from types import SimpleNamespace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dtp.native.reference._ham import decode_ham_batch, encode_ham_batch, update_size
from dtp.native.types import HAM_APPLIED, HAM_DEFERRED, HAM_REJECTED, HamUpdate
from tests.native.ham_batches import header
from tests.support.backends import BACKENDS, NATIVE, REFERENCE, require_native

LATE = sys.float_info.max
SEED = bytes(range(16))
A = HamUpdate(b"user/1", b"name", 100.0, b'"alice"')
B = HamUpdate(b"user/2", b"name", 100.0, b'"bob"')


def table(g: Any) -> list[HamUpdate]:
    return sorted(u for batch in g.export() for u in decode_ham_batch(batch))


def test_an_update_resent_is_queued_once(backend: SimpleNamespace) -> None:
    g = backend.HamGraph(seed=SEED)
    for _ in range(3):  # a peer re-sending on every reconnect
        assert g.merge(encode_ham_batch([A]), 1.0).statuses == bytes([HAM_DEFERRED])
    assert g.merge(encode_ham_batch([A, A, B, A]), 1.0).statuses == bytes([HAM_DEFERRED] * 4)
    assert (g.deferred_count, g.deferred_bytes) == (2, update_size(A) + update_size(B))
    assert g.advance(LATE) == encode_ham_batch([A, B])
    assert (g.deferred_count, g.deferred_bytes) == (0, 0)


def test_copies_do_not_eat_the_cap(backend: SimpleNamespace) -> None:
    g = backend.HamGraph(max_deferred_bytes=update_size(A) + update_size(B), seed=SEED)
    for _ in range(10):
        assert g.merge(encode_ham_batch([A]), 1.0).statuses == bytes([HAM_DEFERRED])
    assert g.merge(encode_ham_batch([B]), 1.0).statuses == bytes([HAM_DEFERRED])
    # full now: a copy of a queued update is still held (once), anything new is dropped
    c = B._replace(value=b'"carol"')
    statuses = g.merge(encode_ham_batch([A, B, c]), 1.0).statuses
    assert statuses == bytes([HAM_DEFERRED, HAM_DEFERRED, HAM_REJECTED])
    assert g.deferred_count == 2
    assert g.advance(LATE) == encode_ham_batch([A, B])


def test_only_identical_updates_are_merged_into_one(backend: SimpleNamespace) -> None:
    g = backend.HamGraph(seed=SEED)
    ups = [
        HamUpdate(b"s", b"f", 5.0, b"a"),
        HamUpdate(b"s", b"f", 9.0, b"b"),  # beats the first, but falls due later
        HamUpdate(b"s", b"f", 5.0, b"b"),  # another value
        HamUpdate(b"s", b"g", 5.0, b"a"),  # another field
        HamUpdate(b"t", b"f", 5.0, b"a"),  # another soul
        HamUpdate(b"s", b"f", 5.5, b"a"),  # another state
    ]
    assert g.merge(encode_ham_batch(ups), 1.0).statuses == bytes([HAM_DEFERRED] * 6)
    assert g.deferred_count == 6
    # the older update holds the field until the newer one is due
    assert g.advance(6.0) == encode_ham_batch([ups[0], ups[2], ups[3], ups[4], ups[5]])
    assert g.get(b"s", b"f") == (5.5, b"a")
    assert g.advance(9.0) == encode_ham_batch([ups[1]])


def test_negative_zero_state_is_another_update(backend: SimpleNamespace) -> None:
    # identical means equal canonical encodings: 0.0 and -0.0 are two updates (the one
    # that arrives first sets the field's sign bits, as in the table)
    g = backend.HamGraph(seed=SEED)
    ups = [HamUpdate(b"s", b"f", 0.0, b"v"), HamUpdate(b"s", b"f", -0.0, b"v")]
    assert g.merge(encode_ham_batch(ups), -1.0).statuses == bytes([HAM_DEFERRED] * 2)
    assert g.deferred_count == 2
    assert g.advance(0.0) == encode_ham_batch(ups[:1])
    assert struct.pack("<d", g.get(b"s", b"f")[0]) == struct.pack("<d", 0.0)


def test_queued_again_once_applied(backend: SimpleNamespace) -> None:
    # after advance() takes updates out, the queue's index follows
    g = backend.HamGraph(seed=SEED)
    early, late = A._replace(state=10.0), B._replace(state=20.0)
    g.merge(encode_ham_batch([early, late]), 1.0)
    assert g.advance(15.0) == encode_ham_batch([early])
    assert g.merge(encode_ham_batch([late]), 15.0).statuses == bytes([HAM_DEFERRED])
    assert g.deferred_count == 1
    # a clock that went back: the applied one is deferred again (it is no longer queued)
    assert g.merge(encode_ham_batch([early, late]), 5.0).statuses == bytes([HAM_DEFERRED] * 2)
    assert g.deferred_count == 2
    assert g.advance(LATE) == encode_ham_batch([late])  # early: SAME, the table holds it
    assert g.deferred_count == 0


def test_queued_again_once_applied_among_many(backend: SimpleNamespace) -> None:
    # the same with the applied update's bytes not reclaimed yet (the C table reclaims
    # them once they are many): it is deferred again, the others still held once
    g = backend.HamGraph(seed=SEED)
    early = A._replace(state=10.0)
    filler = [HamUpdate(b"f%d" % i, b"x", 1e9, b"v" * 20) for i in range(50)]
    g.merge(encode_ham_batch([*filler[:25], early, *filler[25:]]), 1.0)
    assert g.advance(15.0) == encode_ham_batch([early])
    again = g.merge(encode_ham_batch([early, *filler]), 5.0)
    assert again.statuses == bytes([HAM_DEFERRED] * 51)
    assert g.deferred_count == 51
    assert g.deferred_bytes == update_size(early) + sum(update_size(u) for u in filler)
    assert g.advance(15.0) == header(0)  # SAME: the table holds it
    assert g.deferred_count == 50
    assert g.advance(LATE) == encode_ham_batch(filler)


def test_many_queued_then_resent(backend: SimpleNamespace) -> None:
    # enough updates that the C index grows and is rebuilt more than once
    ups = [HamUpdate(b"s%d" % i, b"f", float(10 + i % 50), b"v" * (i % 7)) for i in range(3000)]
    g = backend.HamGraph(seed=SEED)
    for lo in range(0, 3000, 700):
        g.merge(encode_ham_batch(ups[lo : lo + 700]), 1.0)
    for clock in (1.0, 20.0, 40.0):
        g.advance(clock)
        # all re-sent: those due are in the table, the others queued already
        assert g.merge(encode_ham_batch(ups), clock).statuses.count(HAM_APPLIED) == 0
        left = [u for u in ups if u.state > clock]
        assert g.deferred_count == len(left)
        assert g.deferred_bytes == sum(update_size(u) for u in left)
    g.advance(LATE)
    assert len(g) == 3000 and g.deferred_count == 0


# few souls, fields, states and values, so that identical updates are common
_updates = st.builds(
    HamUpdate,
    st.sampled_from([b"a", b"b"]),
    st.sampled_from([b"x", b"y"]),
    st.sampled_from([0.0, -0.0, 1.0, 2.0, 3.0, 7.5]),
    st.sampled_from([b"", b"v", b"w"]),
)


@given(
    batches=st.lists(st.lists(_updates, max_size=8), max_size=6),
    clocks=st.lists(st.sampled_from([-1.0, 0.0, 1.0, 2.5, 8.0]), min_size=6, max_size=6),
    cap=st.sampled_from([0, 40, 100, 1 << 20]),
)
def test_c_and_twin_agree_and_converge(
    batches: list[list[HamUpdate]], clocks: list[float], cap: int
) -> None:
    require_native()
    c = NATIVE.HamGraph(max_deferred_bytes=cap, seed=SEED)
    p = REFERENCE.HamGraph(max_deferred_bytes=cap, seed=SEED)
    for batch, clock in zip(batches, clocks, strict=False):
        data = encode_ham_batch(batch)
        assert c.merge(data, clock) == p.merge(data, clock)
        assert c.advance(clock) == p.advance(clock)
        assert (c.deferred_count, c.deferred_bytes) == (p.deferred_count, p.deferred_bytes)
    assert c.advance(LATE) == p.advance(LATE)
    assert table(c) == table(p)
    if cap == 1 << 20:  # nothing rejected: the same as merging everything late
        late = REFERENCE.HamGraph(seed=SEED)
        late.merge(encode_ham_batch([u for b in batches for u in b]), LATE)
        assert table(c) == table(late)


def _far_future_queue(size: int) -> Any:
    require_native()
    g = NATIVE.HamGraph(seed=SEED)
    ups = [HamUpdate(b"soul/%d" % i, b"f", 1e15 + i, b"v" * 100) for i in range(size // 120)]
    g.merge(encode_ham_batch(ups), 1.0)
    assert g.deferred_bytes > size // 2
    return g


def test_advance_with_nothing_due_does_not_allocate_the_queue() -> None:
    g = _far_future_queue(1 << 20)
    tracemalloc.start()
    try:
        for _ in range(5):
            assert g.advance(2.0) == header(0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 10, peak  # the whole queue was allocated each call: 1 MiB


def test_advance_with_a_lot_due_still_returns_it_all() -> None:
    # more due than the first buffer holds: the C reports the room and is asked again
    for b in BACKENDS:
        g = b.HamGraph(seed=SEED)
        ups = [HamUpdate(b"soul/%d" % i, b"f", 10.0 + i, b"v" * 300) for i in range(200)]
        g.merge(encode_ham_batch(ups), 1.0)
        assert g.advance(10.0 + 99) == encode_ham_batch(ups[:100])
        assert g.deferred_count == 100
        assert g.advance(LATE) == encode_ham_batch(ups[100:])
