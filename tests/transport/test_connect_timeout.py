"""A connect's ``timeout`` bounds the carrier connect plus the handshake, in both APIs,
and ends it with DTPTimeoutError at that bound: the client config's own
``handshake_timeout`` (10 s by default) no longer fails a longer connect early with
HandshakeError. The servers' handshake timeout stays theirs."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from dtp import aio
from dtp.errors import DTPTimeoutError
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig
from dtp.socket import create_connection


@pytest.fixture
def silent_server() -> Iterator[tuple[str, int]]:
    """A TCP listener that never accepts: the kernel completes each connect (its listen
    backlog) and the client's first handshake message is never answered."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    try:
        address = listener.getsockname()
        yield address[0], address[1]
    finally:
        listener.close()


def _blocking(address: tuple[str, int], timeout: float, config: ConnectionConfig | None) -> None:
    create_connection(address, timeout=timeout, server_key=_SERVER.noise_public, config=config)


def _asyncio(address: tuple[str, int], timeout: float, config: ConnectionConfig | None) -> None:
    async def go() -> None:
        await aio.open_connection(
            *address, timeout=timeout, server_key=_SERVER.noise_public, config=config
        )

    asyncio.run(go())


_SERVER = HostIdentity.generate()
_APIS: dict[str, Callable[[tuple[str, int], float, ConnectionConfig | None], None]] = {
    "blocking": _blocking,
    "asyncio": _asyncio,
}


def _timed(
    address: tuple[str, int], timeout: float, config: ConnectionConfig | None = None
) -> dict[str, tuple[BaseException | None, float]]:
    """Connect with each API at once (one thread each) to ``address``: what each raised
    and after how long."""
    outcome: dict[str, tuple[BaseException | None, float]] = {}

    def run(name: str) -> None:
        start = time.monotonic()
        error: BaseException | None = None
        try:
            _APIS[name](address, timeout, config)
        except BaseException as exc:  # (recorded, asserted by the test)
            error = exc
        outcome[name] = (error, time.monotonic() - start)

    threads = [threading.Thread(target=run, args=(name,)) for name in _APIS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 15)
    return outcome


@pytest.mark.timeout(90)
def test_a_25_second_connect_to_a_silent_server_times_out_at_25_seconds_in_both_apis(
    silent_server: tuple[str, int],
) -> None:
    # the timeout asked for: 25 s +- 1 s, DTPTimeoutError (not HandshakeError at 10 s,
    # the config's handshake_timeout). Both APIs run side by side: 25 s of wall time once
    outcome = _timed(silent_server, 25.0)
    assert set(outcome) == set(_APIS)
    for name, (error, elapsed) in outcome.items():
        assert isinstance(error, DTPTimeoutError), (name, error)
        assert "timed out after 25 s" in str(error), (name, error)
        assert 24.0 <= elapsed <= 26.0, (name, elapsed)


def test_the_callers_bound_outlasts_a_shorter_handshake_timeout_of_the_config(
    silent_server: tuple[str, int],
) -> None:
    # a config whose handshake_timeout (1 s) is under the caller's bound (3 s): the
    # caller's bound wins, and says so with DTPTimeoutError
    config = ConnectionConfig(
        identity=HostIdentity.generate(),
        is_client=True,
        server_static=_SERVER.noise_public,
        handshake_timeout=1.0,
    )
    outcome = _timed(silent_server, 3.0, config)
    for name, (error, elapsed) in outcome.items():
        assert isinstance(error, DTPTimeoutError), (name, error)
        assert 2.9 <= elapsed <= 4.0, (name, elapsed)


def test_a_shorter_bound_than_the_handshake_timeout_times_out_at_the_bound(
    silent_server: tuple[str, int],
) -> None:
    outcome = _timed(silent_server, 1.5)
    for name, (error, elapsed) in outcome.items():
        assert isinstance(error, DTPTimeoutError), (name, error)
        assert str(silent_server[1]) in str(error), (name, error)
        assert 1.4 <= elapsed <= 2.5, (name, elapsed)
