"""Reading stored values with no batch decoder (dtp.graph.stored.open_stored): what
``snapshot()``, ``stored_node()`` and ``export()`` give, for each tier -- public, dtp's
signed ``~0x`` spaces, private spaces, Gun's SEA user spaces -- verified as a merge
verifies it and opened; moved to another soul, field or state, signed by another key or
cut short, it raises StoredValueError with the reason a merge counts."""

from __future__ import annotations

import pytest

from dtp.graph import Graph, sea
from dtp.graph._batch import entries
from dtp.graph.stored import SEA, StoredValueError, open_stored
from dtp.graph.values import encode_value
from dtp.identity.keys import HostIdentity
from dtp.native.core import encode_ham_batch
from dtp.native.types import HamUpdate

ALICE = HostIdentity.generate()
MALLORY = HostIdentity.generate()


@pytest.fixture(params=["c", "python"])
def graph(request: pytest.FixtureRequest) -> Graph:
    g = Graph(identity=ALICE, ham=request.param)
    g.put("notes/1", {"text": "hi", "n": 2})
    g.protected("profile").put({"name": "Alice", "friend": {"#": "notes/1"}})
    g.private("diary").put({"day1": "rain"})
    return g


def test_every_stored_value_opens_by_tier(graph: Graph) -> None:
    opened = {
        (s.decode(), f.decode()): open_stored(s, f, state, stored)
        for (s, f), (state, stored) in graph.snapshot().items()
    }
    profile = f"~{ALICE.sui_address}/profile"
    assert {k: (v.tier, v.author, v.value) for k, v in opened.items() if v.tier != "private"} == {
        ("notes/1", "text"): ("public", None, "hi"),
        ("notes/1", "n"): ("public", None, 2),
        (profile, "name"): ("protected", ALICE.sui_address, "Alice"),
        (profile, "friend"): ("protected", ALICE.sui_address, {"#": "notes/1"}),
    }
    private = {k: v for k, v in opened.items() if v.tier == "private"}
    assert len(private) == 2  # the value, and its key wrapped to the author
    for value in private.values():
        assert value.author == ALICE.sui_address
        assert isinstance(value.value, str) and value.value.startswith("dtp/p1:")
        assert value.text == encode_value(value.value)
    # the protected value's text is what it signs: the stored bytes without the envelope
    name = opened[profile, "name"]
    assert name.text == b'"Alice"'


def test_the_same_from_stored_node_and_export(graph: Graph) -> None:
    soul = f"~{ALICE.sui_address}/profile"
    for field, state, stored in graph.stored_node(soul):
        assert open_stored(soul, field, state, stored).author == ALICE.sui_address
    count = 0
    for batch in graph.export():
        for s, f, state, stored, _ in entries(batch):
            open_stored(s, f, state, stored)
            count += 1
    assert count == len(graph)


def test_a_value_moved_or_forged_does_not_verify(graph: Graph) -> None:
    soul = f"~{ALICE.sui_address}/profile"
    ((_, state, stored),) = [e for e in graph.stored_node(soul) if e[0] == b"name"]
    cases = [
        ("bad_signature", (soul, "name", state + 1, stored)),  # another state
        ("bad_signature", (soul, "friend", state, stored)),  # another field
        ("bad_signature", (soul + "/x", "name", state, stored)),  # another node
        ("unsigned", (soul, "name", state, stored[:20])),
    ]
    for reason, args in cases:
        with pytest.raises(StoredValueError) as error:
            open_stored(*args)
        assert error.value.reason == reason
    # signed by another key in alice's space
    graph_m = Graph(identity=MALLORY)
    graph_m.protected("profile").put({"name": "Mallory"})
    ((_, m_state, m_stored),) = graph_m.stored_node(f"~{MALLORY.sui_address}/profile")
    with pytest.raises(StoredValueError) as error:
        open_stored(soul, "name", m_state, m_stored)
    assert error.value.reason == "wrong_key"
    # a private value moved to another field
    diary = graph.private("diary")
    ((f, p_state, p_stored),) = graph.stored_node(diary.soul)
    with pytest.raises(StoredValueError) as error:
        open_stored(diary.soul, f + b"2", p_state, p_stored)
    assert error.value.reason == "private_bad_signature"
    # bytes that are no value at all, in a public soul
    with pytest.raises(StoredValueError) as error:
        open_stored("notes/1", "text", 1.0, b"not json")
    assert error.value.reason == "not_a_value"


def test_a_gun_user_space_value_opens_to_what_sea_signed() -> None:
    pair = sea.SeaPair.generate()
    soul = pair.soul + "/profile"
    signed = pair.sign(soul, "name", "Alice", 1700000000000.5)
    g = Graph()
    batch = encode_ham_batch(
        [HamUpdate(soul.encode(), b"name", 1700000000000.5, encode_value(signed))]
    )
    assert g.merge(batch).applied == 1
    ((field, state, stored),) = g.stored_node(soul)
    value = open_stored(soul, field, state, stored)
    assert (value.tier, value.author, value.value) == (SEA, pair.pub, "Alice")
    with pytest.raises(StoredValueError) as error:
        open_stored(soul, field, state + 1, stored)
    assert error.value.reason == sea.UNVERIFIED


def test_arguments_of_the_wrong_type_are_named() -> None:
    with pytest.raises(TypeError, match="state"):
        open_stored("a", "b", "1", b"1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="stored"):
        open_stored("a", "b", 1.0, "1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="soul"):
        open_stored(1, "b", 1.0, b"1")  # type: ignore[arg-type]
