"""Graph store: subscribers hear of every committed change, also when the put() or
merge() that applied it fails afterwards.

put() and merge() first apply the deferred updates now due, then their own batch.
When that batch failed (a peer's malformed batch; a value too large, or a user-space
write without the identity), the exception skipped the delivery: the deferred updates
were in the table, logged and forwarded to sync peers, but no subscriber ever heard of
them."""

from __future__ import annotations

import pytest

from dtp._core import encode_ham_batch
from dtp._types import HamUpdate
from dtp.errors import LocalProtocolError, RemoteProtocolError
from dtp.graph import Change, Graph

T0 = 1_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def _graph_with_a_due_update(ham: str) -> tuple[Graph, Clock, list[Change]]:
    clock = Clock()
    graph = Graph(now_ms=clock, max_drift_ms=0, ham=ham)
    seen: list[Change] = []
    graph.subscribe("s", seen.append)
    report = graph.merge(encode_ham_batch([HamUpdate(b"s", b"f", T0 + 500, b'"later"')]))
    assert report.deferred == 1
    clock.now += 1000  # now due: the next put() or merge() applies it first
    return graph, clock, seen


@pytest.mark.parametrize("ham", ["c", "python"])
def test_a_malformed_batch_does_not_swallow_the_deferred_changes_it_applied(ham: str) -> None:
    graph, _, seen = _graph_with_a_due_update(ham)
    with pytest.raises(RemoteProtocolError):
        graph.merge(b"\x01\x05\x00\x00\x00garbage")
    assert graph.get_field("s", "f") == "later"
    assert [(c.soul, c.field, c.value) for c in seen] == [("s", "f", "later")]
    graph.close()


@pytest.mark.parametrize(
    ("soul", "fields"),
    [
        ("t", {"big": "x" * 2_000_000}),  # a value beyond HAM's 1 MiB
        ("~0x" + "ab" * 32, {"name": "no identity"}),  # user space, no identity
    ],
)
def test_a_failing_put_does_not_swallow_the_deferred_changes_it_applied(
    soul: str, fields: dict[str, str]
) -> None:
    graph, _, seen = _graph_with_a_due_update("c")
    with pytest.raises(LocalProtocolError):
        graph.put(soul, fields)
    assert graph.get_field("s", "f") == "later"
    assert [(c.soul, c.field, c.value) for c in seen] == [("s", "f", "later")]
    graph.close()
