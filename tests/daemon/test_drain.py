"""The daemon's shut-down going on past a forward's failed drain:

* a services' drain that raises (its firewall watcher died of a ledger's surprise) does
  not end the daemon's shut-down there: the fees' close (the receipt writer's last
  receipts), the status save, the ledger's close and the state lock's release follow;
* a daemon drain cancelled midway still closes the ledger and unlocks the state
  directory;
* a forward whose own drain ended cancelled (its CancelledError, not the shut-down's)
  is not taken for the shut-down's cancellation: the services are drained, their
  connections settled.

A daemon UDP forward whose forwarder takes longer to close than the drain timeout (a
connect's ledger clean-up, flows waiting for final reports) is logged, and the
shut-down goes on: the services' drain (their settlements), the status save, the
ledger's close and the state lock's release."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from dtp.daemon._config import Backend, ForwardConfig, HostAddress, load_config
from dtp.daemon._runner import Daemon
from dtp.daemon._state import STATUS_FILE, StatusBook
from dtp.daemon._udp_forward import UdpForward
from dtp.errors import LedgerUnavailable
from dtp.hostid.udp import UdpStats
from dtp.identity.keys import HostIdentity

BOUND = 4.0


def _daemon(tmp: Path) -> Daemon:
    HostIdentity.generate().save(tmp / "provider.key")
    config = tmp / "daemon.toml"
    config.write_text(
        """[daemon]
ledger = "ledger.sqlite"
identity = "provider.key"
state_dir = "state"
drain_timeout = 1

[[service]]
name = "svc"
port = 80
backends = ["127.0.0.1:9"]
"""
    )
    return Daemon(load_config(config))


class _Services:
    """What the shut-down uses of a ServiceHost: a drain that raises ``error``, or waits
    for ``release`` (``started`` set once it is under way)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.drained = False
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    def stop_listening(self) -> None:
        pass

    async def drain(self, timeout: float) -> None:
        self.started.set()
        if self.error is not None:
            raise self.error
        await self.release.wait()
        self.drained = True


class _Fees:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class _Forward:
    """What the shut-down uses of a forward: a drain that ends cancelled on its own."""

    config = SimpleNamespace(name="f")

    def stop_listening(self) -> None:
        pass

    async def drain(self, timeout: float) -> None:
        raise asyncio.CancelledError  # (a future it waited on, cancelled by another)


def _ledger_closed(daemon: Daemon) -> bool:
    try:
        daemon.ledger.balance(daemon.identity.sui_address)
    except LedgerUnavailable:
        return True
    return False


def _stopped_saved(tmp: Path) -> bool:
    """Whether the status file says the daemon stopped (the save at the drain's end)."""
    path = tmp / "state" / STATUS_FILE
    return path.exists() and "stopped" in json.loads(path.read_text())


def test_a_services_drain_that_raises_does_not_end_the_shut_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = _daemon(tmp_path)
    services, fees = _Services(RuntimeError("the firewall watcher died")), _Fees()
    daemon.services, daemon.fees = services, fees  # type: ignore[assignment]
    with caplog.at_level(logging.ERROR, logger="dtp.daemon"):
        asyncio.run(asyncio.wait_for(daemon.drain(), BOUND))
    assert fees.closed  # (the receipt writer's last receipts written)
    assert daemon.fees is None
    assert _ledger_closed(daemon)
    assert daemon._lock is None
    assert _stopped_saved(tmp_path)
    assert "the firewall watcher died" in caplog.text


def test_a_cancelled_drain_still_closes_the_ledger_and_releases_the_lock(
    tmp_path: Path,
) -> None:
    daemon = _daemon(tmp_path)
    services = _Services()
    daemon.services = services  # type: ignore[assignment]

    async def main() -> None:
        drain = asyncio.ensure_future(daemon.drain())
        await asyncio.wait_for(services.started.wait(), BOUND)
        drain.cancel()
        with pytest.raises(asyncio.CancelledError):
            await drain

    asyncio.run(asyncio.wait_for(main(), BOUND))
    assert _ledger_closed(daemon)
    assert daemon._lock is None
    assert _stopped_saved(tmp_path)


def test_a_forward_drain_ending_cancelled_on_its_own_still_drains_the_services(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = _daemon(tmp_path)
    services, fees = _Services(), _Fees()
    services.release.set()
    daemon.services, daemon.fees = services, fees  # type: ignore[assignment]
    daemon.forwarders["f"] = _Forward()  # type: ignore[assignment]
    with caplog.at_level(logging.ERROR, logger="dtp.daemon"):
        asyncio.run(asyncio.wait_for(daemon.drain(), BOUND))
    assert services.drained
    assert fees.closed
    assert _ledger_closed(daemon)
    assert daemon._lock is None
    assert "draining a forward failed" in caplog.text


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

    with caplog.at_level(logging.WARNING, logger="dtp.daemon._udp_forward"):
        took = asyncio.run(main())
    assert slow.cancelled and slow.closed
    assert took < 10
    assert "did not close within the drain timeout" in caplog.text
