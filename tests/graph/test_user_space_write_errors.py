"""A local write to a user-space soul (``~0x<owner>/...``) that cannot be signed says
whose identity it needs and how to give it, and writes nothing."""

from __future__ import annotations

import pytest

from dtp.errors import LocalProtocolError
from dtp.graph import Graph, user_soul
from dtp.identity.keys import HostIdentity


@pytest.mark.parametrize("ham", ["c", "python"])
def test_a_write_without_identity_names_the_owner_and_how_to_sign(ham: str) -> None:
    owner = HostIdentity.generate()
    soul = user_soul(owner, "profile")
    graph = Graph(ham=ham)
    with pytest.raises(LocalProtocolError) as raised:
        graph.put(soul, {"name": "alice"})
    message = str(raised.value)
    assert soul in message
    assert owner.sui_address in message
    assert "Graph(identity=" in message and "graph.protected(" in message
    assert graph.get(soul) is None
    graph.close()


@pytest.mark.parametrize("ham", ["c", "python"])
def test_a_write_by_another_identity_says_only_the_owner_signs(ham: str) -> None:
    owner, other = HostIdentity.generate(), HostIdentity.generate()
    soul = user_soul(owner, "profile")
    graph = Graph(identity=other, ham=ham)
    with pytest.raises(LocalProtocolError) as raised:
        graph.put(soul, {"name": "mallory"})
    message = str(raised.value)
    assert owner.sui_address in message and other.sui_address in message
    assert "only its owner's identity signs there" in message
    assert graph.get(soul) is None
    graph.close()
