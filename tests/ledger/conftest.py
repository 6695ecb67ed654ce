"""Fixtures of the ledger tests: ``grpc_node`` makes Sui node stand-ins answering from a
table (tests/support/grpc_nodes.py), ``sui_node`` SuiNode clients; both closed after the
test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from dtp.ledger.sui._client import SuiNode
from tests.support.grpc_nodes import NODE_TIMEOUT, Answer, GrpcNode


@pytest.fixture
def grpc_node() -> Iterator[Callable[[dict[str, Answer]], GrpcNode]]:
    """Makes a GrpcNode answering from its table (method name -> answer)."""
    nodes: list[GrpcNode] = []

    def make(answers: dict[str, Answer]) -> GrpcNode:
        nodes.append(GrpcNode(answers))
        return nodes[-1]

    yield make
    for node in nodes:
        node.close()


@pytest.fixture
def sui_node() -> Iterator[Callable[[str], SuiNode]]:
    """Makes a SuiNode client of a node's URL (timeout NODE_TIMEOUT)."""
    made: list[SuiNode] = []

    def make(url: str) -> SuiNode:
        made.append(SuiNode(url, timeout=NODE_TIMEOUT))
        return made[-1]

    yield make
    for node in made:
        node.close()
