"""``HamGraph.export`` while the table changes: the C table's cursor is an index into
its slots, which a growing table rearranges, so an export consumed across a merge that
adds fields skipped some and repeated others, silently. Both backends now raise
RuntimeError at the next batch (the twin's dict does), and value changes stay allowed."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from dtp._reference.ham import decode_ham_batch, encode_ham_batch
from dtp._types import HamUpdate
from tests.conftest import BACKENDS

each_backend = pytest.mark.parametrize("b", BACKENDS, ids=lambda b: b.name)
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
