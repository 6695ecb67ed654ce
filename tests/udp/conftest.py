"""Fixtures of the UDP tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.udp.world import DnsLikeBackend


@pytest.fixture
def backend() -> Iterator[DnsLikeBackend]:
    """A DNS-like UDP backend on 127.0.0.1; closed after the test."""
    b = DnsLikeBackend()
    yield b
    b.close()
