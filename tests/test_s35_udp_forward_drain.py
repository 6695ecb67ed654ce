"""Session 35: a daemon UDP forward whose forwarder took longer to close than the drain
timeout (a connect's ledger clean-up, flows waiting for final reports) let the wait's
TimeoutError out of ``UdpForward.drain``, and with it out of the daemon's shut-down:
the services' drain (their settlements), the status save, the ledger's close and the
state lock's release were all skipped. The drain now logs it and goes on."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from dtp.daemon.config import Backend, ForwardConfig, HostAddress
from dtp.daemon.state import StatusBook
from dtp.daemon.udp_forward import UdpForward
from dtp.keys import HostIdentity
from dtp.udp import UdpStats


class _SlowClose:
    """A forwarder whose close outlasts the drain (its port is closed all the same)."""

    def __init__(self) -> None:
        self.closed = False
        self.cancelled = False
        self.stats = UdpStats()
        self.sessions = 0

    async def close(self) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            self.closed = True


def test_a_udp_forward_slow_to_close_does_not_end_the_drain(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = ForwardConfig(
        name="f",
        listen=Backend("127.0.0.1", 0),
        target=HostAddress.parse("dtp://0x" + "ab" * 32 + ":53"),
        deposit=5000,
        protocol="udp",
    )
    forward = UdpForward(config, None, HostIdentity.generate(), StatusBook(tmp_path))  # type: ignore[arg-type]
    slow = _SlowClose()
    forward._forwarder = slow  # type: ignore[assignment]

    async def main() -> float:
        began = time.monotonic()
        await forward.drain(0.0)  # (waits its 1 s floor)
        return time.monotonic() - began

    with caplog.at_level(logging.WARNING, logger="dtp.daemon.udp_forward"):
        took = asyncio.run(main())
    assert slow.cancelled and slow.closed
    assert took < 10
    assert "did not close within the drain timeout" in caplog.text
