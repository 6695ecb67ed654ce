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

# The first DTP server a process makes freezes what exists and raises the collector's
# thresholds (dtp.transport._collector). This process makes hundreds of servers among
# every test's objects, which must stay collectable as each test expects: the suite, and
# the servers it starts in processes of their own, keep CPython's collector as it is.
# tests/transport/test_collector_tuning.py runs the tuning in a process of its own.
os.environ.setdefault("DTP_SERVER_GC", "default")

# The event loop the asyncio tests run on, DTP_TEST_LOOP: "asyncio" (the default);
# "uvloop", every asyncio.run (and asyncio.Runner) of every test making uvloop's loop;
# or "uvloop-listed", the tests under the paths tests/uvloop.txt lists on uvloop and the
# rest on asyncio's (_event_loop_of_the_test). scripts/test.sh runs its C backend's
# parts with "uvloop-listed" and its pure-Python parts on asyncio, so every listed
# asyncio test runs on both loops, the suite taking no longer. (A listed file of
# tests/core_independent.txt, which runs on the C backend only, stays on asyncio.)
TEST_LOOPS = ("asyncio", "uvloop", "uvloop-listed")
TEST_LOOP = os.environ.get("DTP_TEST_LOOP", "asyncio")
if TEST_LOOP not in TEST_LOOPS:
    raise RuntimeError(f"DTP_TEST_LOOP must be one of {', '.join(TEST_LOOPS)}, not {TEST_LOOP!r}")
if TEST_LOOP == "uvloop":
    import asyncio

    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


@pytest.fixture(params=BACKENDS, ids=lambda b: b.name)
def backend(request: pytest.FixtureRequest) -> SimpleNamespace:
    return request.param


@pytest.fixture(autouse=True, scope="session")
def _quiet_refund_collectors() -> Iterator[None]:
    """A metered client whose server did not settle leaves its process's refund
    collector waiting ten minutes to take the deposit back (dtp.payments._refunds), and
    what still waits at exit is logged with its ``dtp refund`` command: right for a
    user's program, a hundred lines of noise at the end of a test session, whose
    ledgers are gone by then. The collectors are stopped here, silently."""
    yield
    from dtp.payments import _refunds as refunds

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
UVLOOP_LISTED = Path(__file__).resolve().parent / "uvloop.txt"


def _listed_paths(listing: Path, root: Path) -> set[Path]:
    """The paths (files or folders) ``listing`` names, one a line, ``#`` comments."""
    listed: set[Path] = set()
    for line in listing.read_text().splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            path = (root / name).resolve()
            if not path.exists():
                raise pytest.UsageError(f"{listing} names {name}, which does not exist")
            listed.add(path)
    return listed


def _core_independent_files(root: Path) -> set[Path]:
    return _listed_paths(CORE_INDEPENDENT, root)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    listed = _core_independent_files(Path(config.rootpath))
    on_uvloop = _listed_paths(UVLOOP_LISTED, Path(config.rootpath))
    for item in items:
        path = Path(item.path).resolve()
        if path in listed:
            item.add_marker("core_independent")
        elif TEST_LOOP == "uvloop-listed" and (
            path in on_uvloop or not on_uvloop.isdisjoint(path.parents)
        ):
            item.add_marker("uvloop_listed")


def pytest_report_header(config: pytest.Config) -> str:
    where = {
        "asyncio": "asyncio's",
        "uvloop": "uvloop",
        "uvloop-listed": f"uvloop for the tests under {UVLOOP_LISTED.name}'s paths, else asyncio's",
    }
    return f"event loop (DTP_TEST_LOOP={TEST_LOOP}): {where[TEST_LOOP]}"


@pytest.fixture(autouse=True)
def _event_loop_of_the_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Under DTP_TEST_LOOP=uvloop-listed, a listed test's asyncio.run, asyncio.Runner and
    new_event_loop make uvloop's loop while it runs (its fixtures' too); asyncio's
    default policy again after it."""
    if request.node.get_closest_marker("uvloop_listed") is None:
        yield
        return
    import asyncio

    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(None)


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
