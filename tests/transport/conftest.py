"""Fixtures of the transport tests: a story told once about a server runs on both APIs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.procs import ServerProc, server_process
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


@pytest.fixture(scope="session")
def echo_processes() -> Iterator[Callable[[str], ServerProc]]:
    """``echo_processes(api)``: an echo server of that API in a process of its own
    (tests/support/servers.py), started when first asked for and shared by every test
    that only echoes through it (a process start costs more than those tests)."""
    started: dict[str, ServerProc] = {}
    with contextlib.ExitStack() as stack:

        def get(api: str) -> ServerProc:
            if api not in started:
                started[api] = stack.enter_context(server_process("echo", api=api))
            return started[api]

        yield get
