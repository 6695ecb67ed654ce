"""Fixtures of the transport tests: a story told once about a server runs on both APIs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.transport.server_drivers import APIS, DRIVERS, Serve, ServerDriver


@pytest.fixture(params=APIS)
def api(request: pytest.FixtureRequest) -> str:
    """``"blocking"`` (dtp.socket) or ``"asyncio"`` (dtp.aio): the test runs on each."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def server_driver(api: str) -> Iterator[Serve]:
    """Starts ``api``'s server (tests/transport/server_drivers.py); closed after the test."""
    started: list[ServerDriver] = []

    def start(accept: Any = None, **options: Any) -> ServerDriver:
        driver = DRIVERS[api](accept, **options)
        started.append(driver)
        return driver

    yield start
    for driver in started:
        driver.close()
