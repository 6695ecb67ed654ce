"""Shared fixtures. ``backend`` runs a test once per core backend: the C extension
(``dtp.native.core`` native names) and the pure-Python twin (``dtp.native.reference``).

The files listed in ``tests/core_independent.txt`` never reach the core (ledger rules,
the Sui codec, command lines, docs): they are marked ``core_independent``, and
scripts/test.sh runs them on the C backend only, where the fixture below checks the
claim at every run (the C core's entry points are counted while such a test runs)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, settings

from dtp.native import core as _core
from tests.support.backends import BACKENDS
from tests.support.netns import NetnsUnavailable, TwoMachines, two_machines

if TYPE_CHECKING:
    from tests.support.sui_network import SuiNetwork

# the fixtures dtp ships for applications' tests (dtp_ledger, dtp_pair, dtp_network, ...;
# docs/testing.md): registered here too, where dtp is a checkout rather than installed
# (the pytest11 entry point registers it under the same name, so never twice)
pytest_plugins = ["dtp.testing.plugin"]

settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile("sanitizer", max_examples=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# DTP_TEST_LOOP=uvloop: every asyncio.run (and asyncio.Runner) of the tests makes uvloop's
# loop, so the asyncio tests run on it too (scripts/test.sh: the C backend's parts)
if os.environ.get("DTP_TEST_LOOP") == "uvloop":
    import asyncio

    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
elif os.environ.get("DTP_TEST_LOOP", "asyncio") != "asyncio":
    raise RuntimeError(
        f"DTP_TEST_LOOP must be asyncio or uvloop, not {os.environ['DTP_TEST_LOOP']!r}"
    )


@pytest.fixture(params=BACKENDS, ids=lambda b: b.name)
def backend(request: pytest.FixtureRequest) -> SimpleNamespace:
    return request.param


@pytest.fixture(autouse=True, scope="session")
def _quiet_refund_collectors() -> Iterator[None]:
    """A metered client whose server did not settle leaves its process's refund
    collector waiting ten minutes to take the deposit back (dtp.payments.refunds), and
    what still waits at exit is logged with its ``dtp refund`` command: right for a
    user's program, a hundred lines of noise at the end of a test session, whose
    ledgers are gone by then. The collectors are stopped here, silently."""
    yield
    from dtp.payments import refunds

    with refunds._collectors_lock:
        collectors = list(refunds._running | set(refunds._collectors.values()))
    for collector in collectors:
        collector.close(timeout=1.0, log_waiting=False)


@pytest.fixture
def netns() -> Iterator[TwoMachines]:
    """Two machines: network namespaces joined by a veth pair (tests/support/netns.py), removed
    after the test; skipped, with the reason, where namespaces cannot be made."""
    stack = contextlib.ExitStack()
    try:
        machines = stack.enter_context(two_machines())
    except NetnsUnavailable as exc:
        pytest.skip(str(exc))
    with stack:
        yield machines


@pytest.fixture
def sui_network() -> Iterator[SuiNetwork]:
    """A Sui node with a funded key: the stand-in, or the real node DTP_SUI_RPC,
    DTP_SUI_PACKAGE and DTP_SUI_KEY name (tests/support/sui_network.py, the one switch)."""
    from tests.support import sui_network as networks

    with networks.sui_network() as network:
        yield network


CORE_INDEPENDENT = Path(__file__).resolve().parent / "core_independent.txt"


def _core_independent_files(root: Path) -> set[Path]:
    listed: set[Path] = set()
    for line in CORE_INDEPENDENT.read_text().splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            path = (root / name).resolve()
            if not path.exists():
                raise pytest.UsageError(f"{CORE_INDEPENDENT} names {name}, which does not exist")
            listed.add(path)
    return listed


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    listed = _core_independent_files(Path(config.rootpath))
    for item in items:
        if Path(item.path).resolve() in listed:
            item.add_marker("core_independent")


class _CountedCore:
    """dtp.native.core's ``lib`` with each entry point looked up recorded, except by threads that
    were running before the test began (a server an earlier test left closing is not this
    test's doing), other than the test's own thread."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self.used: set[str] = set()
        own = threading.current_thread()
        self._earlier = {t for t in threading.enumerate() if t is not own}

    def __getattr__(self, name: str) -> Any:
        if threading.current_thread() not in self._earlier:
            self.used.add(name)
        return getattr(self._lib, name)


@pytest.fixture(autouse=True)
def _core_independence_checked(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """A ``core_independent`` test (run on one backend only) fails if it reaches the C
    core in this process."""
    if request.node.get_closest_marker("core_independent") is None or _core.PUREPYTHON:
        yield
        return
    counted = _CountedCore(_core.lib)
    monkeypatch.setattr(_core, "lib", counted)
    yield
    assert not counted.used, (
        f"{request.node.nodeid} is listed in tests/core_independent.txt (run on the C "
        f"backend only) but reached the C core: {sorted(counted.used)}"
    )
