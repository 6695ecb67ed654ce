"""Strategies for the replicated graph (docs/graph.md): every kind of value a field holds,
souls and field names, states, and streams of HAM updates in which replicas disagree the
hard ways -- equal states with different values (ties), the same update twice, states
ahead of the clock (deferred until it reaches them).

    @given(stream=update_streams(now_ms=T0))
    def test_order_does_not_matter(stream): ...
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final

from dtp.graph.values import GunValue, encode_value, link
from dtp.native.core import encode_ham_batch
from dtp.native.types import HamUpdate
from dtp.testing.strategies._hypothesis import st

__all__ = [
    "field_names",
    "gun_numbers",
    "gun_values",
    "ham_batches",
    "ham_updates",
    "node_fields",
    "souls",
    "states",
    "update_streams",
]

#: Default size of the pools update streams draw souls, fields and states from: small,
#: so that updates meet on one field and at one state.
POOL: Final = 4


def souls() -> st.SearchStrategy[str]:
    """Node names ``put`` takes in the shared namespace: non-empty text (any Unicode but
    lone surrogates) without ``~`` or ``#``, which put a soul under SEA's rules (a user
    space, an alias list, a content-addressed soul: docs/graph.md)."""
    return st.text(
        st.characters(exclude_characters="~#", exclude_categories=["Cs"]), min_size=1, max_size=24
    )


def field_names() -> st.SearchStrategy[str]:
    """Field names: non-empty text, never ``_`` (where Gun keeps a node's metadata)."""
    return st.text(min_size=1, max_size=16).filter(lambda f: f != "_")


def gun_numbers() -> st.SearchStrategy[int | float]:
    """Numbers a Gun peer holds exactly: every int a binary64 holds (all up to 2**53,
    and larger powers of two), every finite float (-0.0, the subnormals, 1e-7 and 1e21
    where JavaScript's notation changes)."""
    return st.one_of(
        st.integers(-(2**53), 2**53),
        st.integers(54, 1023).map(lambda k: 2**k),
        st.sampled_from([-0.0, 0.5, 1e-6, 1e-7, 1e20, 1e21, 5e-324, 1.7976931348623157e308]),
        st.floats(allow_nan=False, allow_infinity=False),
    )


def gun_values(*, souls_from: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[GunValue]:
    """Every value a field holds (docs/graph.md, "Values"): None (Gun's delete), bools,
    numbers (:func:`gun_numbers`), strings (escapes, astral characters, none with a
    lone surrogate) and links to souls (``souls_from``, :func:`souls` by default)."""
    targets = souls_from if souls_from is not None else souls()
    return st.one_of(
        st.none(),
        st.booleans(),
        gun_numbers(),
        st.text(),
        st.sampled_from(["", '"', "\\", "\n", "\u2028", "é", "😀", "\x00"]),
        targets.map(link),
    )


def node_fields(*, max_fields: int = 6) -> st.SearchStrategy[dict[str, Any]]:
    """What ``Graph.put`` takes: a non-empty mapping of field names to values."""
    return st.dictionaries(field_names(), gun_values(), min_size=1, max_size=max_fields)


def states(
    *, now_ms: float | None = None, max_drift_ms: float = 1000.0, pool: Sequence[float] = ()
) -> st.SearchStrategy[float]:
    """States (ms since the epoch, binary64): from ``pool`` when given (so updates tie),
    the edges (0, -0.0, negatives, fractions of a ms) and, with ``now_ms``, states the
    replicas' clock has reached and states beyond ``now_ms + max_drift_ms`` (deferred)."""
    edges: list[float] = [0.0, -0.0, -1.0, 0.5, 1.0, 1e15]
    parts: list[st.SearchStrategy[float]] = [st.sampled_from(edges)]
    if pool:
        parts.append(st.sampled_from(list(pool)))
    if now_ms is not None:
        horizon = now_ms + max_drift_ms
        parts.append(st.floats(0.0, now_ms, allow_nan=False))
        parts.append(st.floats(horizon, horizon + 1e9, exclude_min=True, allow_nan=False))
    else:
        parts.append(st.floats(-1e18, 1e18, allow_nan=False))
    return st.one_of(*parts)


def ham_updates(
    *,
    souls_from: st.SearchStrategy[str] | None = None,
    fields_from: st.SearchStrategy[str] | None = None,
    states_from: st.SearchStrategy[float] | None = None,
    values_from: st.SearchStrategy[GunValue] | None = None,
) -> st.SearchStrategy[HamUpdate]:
    """HAM updates (soul, field, state, value in Gun's text, all bytes) as a peer's batch
    carries them (docs/protocol.md §6)."""
    return st.builds(
        lambda soul, field, state, value: HamUpdate(
            soul.encode(), field.encode(), state, encode_value(value)
        ),
        souls_from if souls_from is not None else souls(),
        fields_from if fields_from is not None else field_names(),
        states_from if states_from is not None else states(),
        values_from if values_from is not None else gun_values(),
    )


@st.composite
def update_streams(
    draw: st.DrawFn,
    *,
    now_ms: float | None = None,
    max_drift_ms: float = 1000.0,
    min_size: int = 1,
    max_size: int = 40,
    pool: int = POOL,
) -> list[HamUpdate]:
    """A stream of updates that collide: souls, fields and states drawn from pools of
    ``pool`` each, so that many updates land on one field, some at one state with
    different values (HAM's tie, broken by the value's UTF-16 order), some repeated
    whole; with ``now_ms``, some states are ahead of ``now_ms + max_drift_ms`` and a
    replica defers them. Every Gun value type appears across examples."""
    soul_pool = draw(st.lists(souls(), min_size=1, max_size=pool, unique=True))
    field_pool = draw(st.lists(field_names(), min_size=1, max_size=pool, unique=True))
    state_pool = draw(
        st.lists(
            states(now_ms=now_ms, max_drift_ms=max_drift_ms),
            min_size=1,
            max_size=pool,
            unique_by=lambda s: (s, math.copysign(1.0, s)),
        )
    )
    updates = ham_updates(
        souls_from=st.sampled_from(soul_pool),
        fields_from=st.sampled_from(field_pool),
        states_from=st.sampled_from(state_pool),
        values_from=gun_values(souls_from=st.sampled_from(soul_pool)),
    )
    stream = draw(st.lists(updates, min_size=min_size, max_size=max_size))
    resend = draw(st.booleans())
    if stream and resend:
        # the same update again, later in the stream (a peer's resend)
        stream.append(stream[draw(st.integers(0, len(stream) - 1))])
    return stream


def ham_batches(**kwargs: Any) -> st.SearchStrategy[bytes]:
    """:func:`update_streams` encoded as HAM batches (``Graph.merge`` takes them)."""
    return update_streams(**kwargs).map(encode_ham_batch)
