"""Small fixes of session 23, each tested where it fails without the fix.

1. dtp.aio's server: a connection that took its address's handshake slot and then could
   not be served (starting its task raised: connection_made aborts it) kept the slot for
   good; once that happened ``max_handshakes_per_address`` times, its address could
   never connect again. The slot is given back now.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

import dtp.aio
from dtp.errors import DTPError
from tests.test_handshake_slots import aio_echo_once, aio_server, async_wait_for


def test_aio_a_connection_that_cannot_be_served_gives_its_address_slot_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        server = await aio_server(max_handshakes_per_address=1)
        async with server:
            slots = server._address_slots
            assert slots is not None
            real = server._start_serving
            failures: list[str | None] = []

            def fails_once(proto: dtp.aio._Protocol, key: str | None) -> None:
                if not failures:
                    failures.append(key)
                    # (what a loop that no longer takes tasks raises)
                    raise RuntimeError("cannot start serving")
                real(proto, key)

            server._start_serving = fails_once  # type: ignore[method-assign]
            with pytest.raises(DTPError):
                await aio_echo_once(server, b"first")
            assert failures == ["127.0.0.1"]
            assert await async_wait_for(lambda: slots.in_progress("127.0.0.1") == 0)
            # the address's one slot is free: the next connection is served at once
            assert await aio_echo_once(server, b"after") == b"after"
            assert server.busy_refused == 0

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
