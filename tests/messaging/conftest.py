"""Fixtures of the messaging tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.messaging.rpc_world import Served, make_rpc


@pytest.fixture
def served() -> Iterator[Served]:
    """A blocking RPC server (``make_rpc``) on a DTP server; closed after the test."""
    s = Served(make_rpc())
    yield s
    s.close()
