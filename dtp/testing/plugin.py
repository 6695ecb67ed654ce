"""The pytest plugin of dtp (registered under the ``pytest11`` entry point: installed with
dtp, active in every project that has it; ``-p no:dtp.testing.plugin`` turns it off).

Fixtures (docs/testing.md), each closed after its test:

==========================  ===============================================================
``dtp_seed``                this test's seed: from ``--dtp-seed`` (or a random one per run,
                            printed in the header), mixed with the test's ID
``dtp_identity``            ``dtp_identity(n)``: the deterministic identity number ``n``
``dtp_ledger``              an embedded LocalLedger (a file in ``tmp_path``), its clock
                            frozen at ``DTP_CLOCK_MS`` (move it: ``advance_clock``)
``dtp_funded``              ``dtp_funded(count=1, funds=10**9)``: identities funded on
                            ``dtp_ledger``
``dtp_world``               a :class:`~dtp.testing.ledger_world.LedgerWorld` on
                            ``dtp_ledger``: a server, its paid service, funded clients
``dtp_pair``                a connected blocking pair ``(client, server)`` (DTPSockets)
``dtp_aio_pair``            ``async with dtp_aio_pair() as ((cr, cw), (sr, sw))``: the
                            asyncio pair, on the running loop
``dtp_paid_service``        ``dtp_paid_service(handler=echo, sla=...)``: a paid service
                            on ``dtp_ledger``'s file, clients connect by host ID
``dtp_daemon_pair``         ``dtp_daemon_pair(backends=[...])``: a provider and a
                            forwarder ``dtp daemon`` process on one ledger
``dtp_network``             a :class:`~dtp.testing.network.SimNetwork` seeded with
                            ``dtp_seed`` (``dtp_network.run(main())``)
``dtp_sui_node``            a Sui node stand-in in this process, with its HTTP faucet
==========================  ===============================================================

``--dtp-seed N`` replays: the seeds of ``dtp_seed`` and ``dtp_network`` come from it, and
so does hypothesis' (as ``--hypothesis-seed N``, unless that is given), so a failing
property found under one seed is found again, example for example, under the same one
(hypothesis stopping at its first failure: :func:`pytest_sessionstart`).
A failed test's report names the run's seed when the seed had a part in it: the test
used a ``dtp_`` fixture, or the run was given ``--dtp-seed`` (the report then adds the
test's own ``dtp_seed``, if it used it; for a property failed without ``--dtp-seed``,
that hypothesis drew its own). Other projects' failures are reported as without dtp.

Nothing heavy is imported until a fixture is used: a project with dtp installed and
no DTP tests pays for the option and the header line only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from dtp._extras import missing

try:  # (pytest loads this module, so pytest is there; an import by hand may lack it)
    import pytest
except ImportError as exc:
    raise missing("testing", "The pytest plugin dtp.testing.plugin", exc) from None

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.local import LocalLedger
    from dtp.testing.daemons import DaemonPair
    from dtp.testing.ledger_world import LedgerWorld
    from dtp.testing.network import SimNetwork
    from dtp.testing.pairs import AioEnds
    from dtp.testing.services import PaidService
    from dtp.testing.sui_node import SuiNodeStandIn
    from dtp.transport.blocking._socket import DTPSocket

__all__ = ["DTP_CLOCK_MS"]

#: Where ``dtp_ledger``'s clock stands (2023-11-14 22:13:20 UTC): a fixed moment, so that
#: every run of a test sees the same ledger times.
DTP_CLOCK_MS: Final = 1_700_000_000_000
_SEED_KEY = pytest.StashKey[int]()
_TEST_SEED_KEY = pytest.StashKey[int]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dtp", "DTP (dtp.testing)")
    group.addoption(
        "--dtp-seed",
        action="store",
        type=int,
        default=None,
        metavar="N",
        help="seed of the DTP fixtures (dtp_seed, dtp_network) and of hypothesis, to "
        "replay a run (default: a random one, printed in the header)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    seed = config.getoption("dtp_seed", default=None)
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "big")
    elif _has_option(config, "hypothesis_seed") and config.getoption("hypothesis_seed") is None:
        # (before hypothesis' own pytest_configure reads it: hence tryfirst)
        config.option.hypothesis_seed = str(seed)
    config.stash[_SEED_KEY] = seed


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under ``--dtp-seed``, hypothesis stops at the first failing example it generates
    (``report_multiple_bugs=False``, on top of the profile in force): otherwise it goes
    on generating for up to ten seconds of wall-clock time, keeping the smallest failing
    example it meets, so that what it shrinks -- and reports -- would depend on how fast
    the machine ran that day rather than on the seed. (After the project's conftest and
    ``--hypothesis-profile`` have chosen their profile: hence here, not at configure.)"""
    if session.config.getoption("dtp_seed", default=None) is None:
        return
    try:
        from hypothesis import settings
    except ImportError:  # (no hypothesis: nothing of it to seed)
        return
    settings.register_profile("dtp-replay", parent=settings.default, report_multiple_bugs=False)
    settings.load_profile("dtp-replay")


def _has_option(config: pytest.Config, name: str) -> bool:
    try:
        config.getoption(name)
    except ValueError:
        return False
    return True


def pytest_report_header(config: pytest.Config) -> str:
    seed = config.stash.get(_SEED_KEY, None)
    return f"dtp: seed {seed} (replay with --dtp-seed {seed})"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and _seed_had_a_part(item):
        seed = item.config.stash.get(_SEED_KEY, None)
        line = f"run seed {seed}: replay with --dtp-seed {seed}"
        if _TEST_SEED_KEY in item.stash:
            line += f" (this test's dtp_seed: {item.stash[_TEST_SEED_KEY]})"
        hypothesis_test = getattr(getattr(item, "obj", None), "is_hypothesis_test", False)
        if hypothesis_test and item.config.getoption("dtp_seed", default=None) is None:
            # (seeding hypothesis in every run would turn its example database off)
            line += (
                "; hypothesis drew its examples from a seed of its own in this run: its "
                "example database replays this failure here, --dtp-seed from now on"
            )
        report.sections.append(("dtp", line))
    return report


def _seed_had_a_part(item: pytest.Item) -> bool:
    """Whether the run's seed could have shaped ``item``'s run: it used a fixture of this
    plugin (each draws from the seed), or the run was given ``--dtp-seed`` (hypothesis
    then draws from it too). Otherwise a seed line would be noise in a failure that dtp
    had no part in."""
    if item.config.getoption("dtp_seed", default=None) is not None:
        return True
    return any(name.startswith("dtp_") for name in getattr(item, "fixturenames", ()))


# -- seeds and identities ------------------------------------------------------------------------


@pytest.fixture
def dtp_seed(request: pytest.FixtureRequest) -> int:
    """This test's seed: the run's (``--dtp-seed``) mixed with the test's ID, so that each
    test has its own and replays it alone or in the whole run."""
    base = request.config.stash.get(_SEED_KEY, 0)
    digest = hashlib.blake2b(f"{base}/{request.node.nodeid}".encode(), digest_size=8).digest()
    seed = int.from_bytes(digest, "big")
    request.node.stash[_TEST_SEED_KEY] = seed
    return seed


@pytest.fixture
def dtp_identity() -> Callable[[int], HostIdentity]:
    """``dtp_identity(n)``: identity number ``n`` (the same keys in every run:
    :func:`dtp.testing.identities.identity`)."""
    from dtp.testing.identities import identity

    return identity


# -- the ledger ------------------------------------------------------------------------------------


@pytest.fixture
def dtp_ledger(tmp_path: Path) -> Iterator[LocalLedger]:
    """An embedded ledger: a LocalLedger file in ``tmp_path`` (other handles, processes
    and daemons may open ``dtp_ledger.path``), its clock frozen at :data:`DTP_CLOCK_MS`."""
    from dtp.ledger.local import LocalLedger

    ledger = LocalLedger(tmp_path / "dtp-ledger.sqlite", clock_ms=DTP_CLOCK_MS)
    try:
        yield ledger
    finally:
        ledger.close()


@pytest.fixture
def dtp_funded(
    dtp_ledger: LocalLedger, dtp_identity: Callable[[int], HostIdentity]
) -> Callable[..., list[HostIdentity]]:
    """``dtp_funded(count=1, funds=10**9)``: ``count`` new identities (numbered from 10,
    on in each call), each given ``funds`` MIST on ``dtp_ledger``."""
    made = [10]

    def funded(count: int = 1, funds: int = 10**9) -> list[HostIdentity]:
        who = [dtp_identity(made[0] + n) for n in range(count)]
        made[0] += count
        for one in who:
            dtp_ledger.faucet(one.sui_address, funds)
        return who

    return funded


@pytest.fixture
def dtp_world(dtp_ledger: LocalLedger) -> LedgerWorld:
    """A :class:`~dtp.testing.ledger_world.LedgerWorld` on ``dtp_ledger``: a server
    publishing a paid service, two funded clients with spending caps; ``check()`` asserts
    the escrow rules' invariants."""
    from dtp.testing.ledger_world import LedgerWorld

    return LedgerWorld(dtp_ledger)


# -- connections -----------------------------------------------------------------------------


@pytest.fixture
def dtp_pair() -> Iterator[tuple[DTPSocket, DTPSocket]]:
    """A connected blocking pair ``(client, server)``: the two ends of one DTP connection
    over TCP on 127.0.0.1 (:func:`dtp.testing.pairs.blocking_pair`)."""
    from dtp.testing.pairs import blocking_pair

    with blocking_pair() as pair:
        yield pair


@pytest.fixture
def dtp_aio_pair() -> Callable[
    ..., contextlib.AbstractAsyncContextManager[tuple[AioEnds, AioEnds]]
]:
    """``async with dtp_aio_pair(**options) as ((cr, cw), (sr, sw))``: an asyncio pair on
    the running loop (:func:`dtp.testing.pairs.aio_pair`: 127.0.0.1, or a host of a
    simulated network)."""
    from dtp.testing.pairs import aio_pair

    def made(
        *args: Any, **kwargs: Any
    ) -> contextlib.AbstractAsyncContextManager[tuple[AioEnds, AioEnds]]:
        return aio_pair(*args, **kwargs)

    return made


@pytest.fixture
def dtp_paid_service(dtp_ledger: LocalLedger) -> Iterator[Callable[..., PaidService]]:
    """``dtp_paid_service(handler=echo, **options)``: a paid service on ``dtp_ledger``'s
    file (:func:`dtp.testing.services.paid_service`), stopped after the test; its
    ``connect()`` connects a funded client by host ID."""
    from dtp.testing.services import paid_service

    with contextlib.ExitStack() as stack:
        count = [0]

        def start(*args: Any, **kwargs: Any) -> PaidService:
            kwargs.setdefault("port", 7 + count[0])  # (each service a port of its own)
            count[0] += 1
            return stack.enter_context(paid_service(dtp_ledger.path, *args, **kwargs))

        yield start


@pytest.fixture
def dtp_daemon_pair(tmp_path: Path) -> Iterator[Callable[..., DaemonPair]]:
    """``dtp_daemon_pair(backends=["127.0.0.1:8080"], **options)``: a provider and a
    forwarder ``dtp daemon`` process on a LocalLedger file in ``tmp_path``
    (:func:`dtp.testing.daemons.daemon_pair`), stopped after the test."""
    from dtp.testing.daemons import daemon_pair

    with contextlib.ExitStack() as stack:
        count = [0]

        def start(backends: list[str], **kwargs: Any) -> DaemonPair:
            count[0] += 1
            where = tmp_path / f"daemons-{count[0]}"
            return stack.enter_context(daemon_pair(where, backends, **kwargs))

        yield start


@pytest.fixture
def dtp_network(dtp_seed: int) -> SimNetwork:
    """A simulated network (:class:`dtp.testing.network.SimNetwork`) seeded with
    ``dtp_seed``: add hosts and links, then ``dtp_network.run(main())``."""
    from dtp.testing.network import SimNetwork

    return SimNetwork(seed=dtp_seed)


@pytest.fixture
def dtp_sui_node() -> Iterator[SuiNodeStandIn]:
    """The Sui node stand-in, serving in this process on 127.0.0.1 with its HTTP faucet
    (:mod:`dtp.testing.sui_node`): ``SuiLedger(SuiConfig(node.url, node.package_id))``."""
    from dtp.testing.sui_node import SuiNodeStandIn

    with SuiNodeStandIn(faucet_port=0) as node:
        yield node
