"""The pytest plugin dtp ships (dtp.testing.plugin): each fixture used as a user would, the
seed option, and the plugin found through its pytest11 entry point by a project that is
not this one (``pytest --fixtures`` lists the DTP fixtures there)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger
from dtp.ledger.sui import SuiConfig, SuiLedger
from dtp.testing.identities import identity
from dtp.testing.ledger_world import LedgerWorld
from dtp.testing.network import Link, SimNetwork
from dtp.testing.plugin import DTP_CLOCK_MS
from dtp.testing.sui_node import SuiNodeStandIn, request_funds
from dtp.transport.blocking._socket import DTPSocket
from tests.testing.doc_examples import FIXTURES
from tests.testing.installed import make_site, run_in_project


def test_the_ledger_fixtures(
    dtp_ledger: LocalLedger,
    dtp_funded: Callable[..., list[HostIdentity]],
    dtp_world: LedgerWorld,
    dtp_identity: Callable[[int], HostIdentity],
) -> None:
    assert dtp_ledger.clock_ms() == DTP_CLOCK_MS and dtp_ledger.clock_frozen()
    alice, bob = dtp_funded(2, funds=500)
    (carol,) = dtp_funded()
    assert len({alice, bob, carol}) == 3
    assert dtp_ledger.balance(alice.sui_address) == 500
    assert dtp_ledger.balance(carol.sui_address) == 10**9
    assert dtp_identity(3) == dtp_identity(3) != dtp_identity(4)
    channel = dtp_world.open(0, 1_000)
    dtp_world.claim(channel, dtp_world.sign(channel, 1024, 2))
    dtp_world.check()
    assert dtp_world.ledger is dtp_ledger


def test_numbered_identities_are_made_once() -> None:
    assert identity(5) is identity(5)  # (derived once: a machine's worlds ask at every run)
    assert identity(5).sui_address != identity(-5).sui_address
    with pytest.raises(TypeError, match="an int, got bool"):
        identity(True)  # (never identity(1), which equals it as a cache key)


def test_the_blocking_pair(dtp_pair: tuple[DTPSocket, DTPSocket]) -> None:
    client, server = dtp_pair
    client.sendall(b"ping")
    assert server.recv(4) == b"ping"
    server.sendall(b"pong")
    assert client.recv(4) == b"pong"


def test_the_asyncio_pair_on_a_real_loop_and_on_the_simulated_network(
    dtp_aio_pair: Callable[..., object], dtp_network: SimNetwork
) -> None:
    async def exchange(**where: object) -> bytes:
        async with dtp_aio_pair(**where) as ((_, c_writer), (s_reader, s_writer)):  # type: ignore[attr-defined]
            c_writer.write(b"hello")
            got: bytes = await s_reader.readexactly(5)
            s_writer.write(b"!")
            return got

    assert asyncio.run(exchange()) == b"hello"
    dtp_network.add_hosts("client", "server")
    dtp_network.link("client", "server", Link(delay=0.25))

    async def simulated() -> tuple[bytes, float]:
        with dtp_network.host("client"):
            got = await exchange(host="server", port=7000)
        return got, asyncio.get_running_loop().time()

    got, virtual = dtp_network.run(simulated())
    assert got == b"hello" and virtual >= 1.0  # (round trips of 0.5 s, at no real cost)


def test_the_paid_service(dtp_paid_service: Callable[..., object]) -> None:
    service = dtp_paid_service()
    with service.connect(deposit=5_000) as sock:  # type: ignore[attr-defined]
        sock.sendall(b"paid bytes")
        assert sock.recv(100) == b"paid bytes"
    assert service.wait_settled()  # type: ignore[attr-defined]
    service.check()  # type: ignore[attr-defined]
    (client,) = service.clients  # type: ignore[attr-defined]
    spent = 10**9 - service.ledger.balance(client.sui_address)  # type: ignore[attr-defined]
    assert 0 < spent < 5_000  # the bytes and stream were paid for, the rest came back


def test_the_network_is_seeded_by_the_test(dtp_network: SimNetwork, dtp_seed: int) -> None:
    assert dtp_network.seed == dtp_seed


def test_the_sui_node(
    dtp_sui_node: SuiNodeStandIn, dtp_identity: Callable[[int], HostIdentity]
) -> None:
    who = dtp_identity(7).sui_address
    assert dtp_sui_node.faucet_url is not None
    request_funds(dtp_sui_node.faucet_url, who, 1234)
    ledger = SuiLedger(SuiConfig(dtp_sui_node.url, dtp_sui_node.package_id))
    try:
        assert ledger.balance(who) == 1234
    finally:
        ledger.close()


@pytest.fixture
def tcp_echo() -> Iterator[tuple[str, int]]:
    """A plain TCP echo backend on 127.0.0.1 (threads)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[:2]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_the_daemon_pair(dtp_daemon_pair: Callable[..., object], tcp_echo: tuple[str, int]) -> None:
    pair = dtp_daemon_pair([f"{tcp_echo[0]}:{tcp_echo[1]}"])
    with socket.create_connection(pair.forward, timeout=30) as sock:  # type: ignore[attr-defined]
        sock.sendall(b"through two daemons")
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := sock.recv(1024):
            got += chunk
    assert got == b"through two daemons"
    ledger = pair.ledger()  # type: ignore[attr-defined]
    try:
        audit = ledger.audit()
        assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
    finally:
        ledger.close()


# -- the plugin seen from another project -------------------------------------------------------


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dtp as installed (tests/testing/installed.py)."""
    return make_site(tmp_path_factory.mktemp("installed"))


def _fresh_project(tmp_path: Path, site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m pytest ARGS`` in a new project directory (a test file of its own, no
    conftest) with ``site`` first on the path."""
    (tmp_path / "test_app.py").write_text(
        "def test_uses_the_ledger(dtp_ledger):\n    assert dtp_ledger.clock_frozen()\n"
    )
    return run_in_project(tmp_path, site, "-m", "pytest", "-p", "no:cacheprovider", *args)


def test_a_fresh_project_finds_the_fixtures_through_the_entry_point(
    installed: Path, tmp_path: Path
) -> None:
    entry_points = (installed / "dtp_sui.egg-info" / "entry_points.txt").read_text()
    assert (
        "[pytest11]" in entry_points and "dtp.testing.plugin = dtp.testing.plugin" in entry_points
    )
    listed = _fresh_project(tmp_path, installed, "--fixtures")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    for name in FIXTURES:
        assert name in listed.stdout, name
    ran = _fresh_project(tmp_path, installed, "-q", "--dtp-seed", "4242")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "1 passed" in ran.stdout
    header = _fresh_project(tmp_path, installed, "--dtp-seed", "4242")
    assert "dtp: seed 4242 (replay with --dtp-seed 4242)" in header.stdout
    off = _fresh_project(tmp_path, installed, "-q", "-p", "no:dtp.testing.plugin")
    assert off.returncode != 0 and "fixture 'dtp_ledger' not found" in off.stdout


def test_a_failed_test_names_the_seed_to_replay_it(installed: Path, tmp_path: Path) -> None:
    (tmp_path / "test_fails.py").write_text("def test_fails(dtp_seed):\n    assert False\n")
    done = run_in_project(
        tmp_path, installed, "-m", "pytest", "-p", "no:cacheprovider", "--dtp-seed", "77",
        "test_fails.py",
    )  # fmt: skip
    assert done.returncode == 1
    assert "run seed 77: replay with --dtp-seed 77 (this test's dtp_seed: " in done.stdout


def test_a_failed_property_says_whether_its_examples_came_from_the_seed(
    installed: Path, tmp_path: Path
) -> None:
    """A hypothesis test failed in a run without ``--dtp-seed`` drew its examples from
    hypothesis' own seed: the report says so rather than promise a replay."""
    (tmp_path / "test_prop.py").write_text(
        "from hypothesis import HealthCheck, given, settings, strategies as st\n\n"
        "@given(st.integers())\n"
        "def test_prop(x):\n    assert x < 10\n\n"
        "@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])\n"
        "@given(st.integers())\n"
        "def test_prop_uses_dtp(dtp_identity, x):\n    assert x < 10\n"
    )

    def report(*args: str) -> str | None:
        done = run_in_project(
            tmp_path, installed, "-m", "pytest", "-p", "no:cacheprovider", "test_prop.py", *args
        )
        assert done.returncode == 1, done.stdout + done.stderr
        lines = [x for x in done.stdout.splitlines() if x.startswith("run seed ")]
        assert len(lines) <= 1, lines
        return lines[0] if lines else None

    alone = "not uses_dtp"
    assert report("-k", alone, "--dtp-seed", "8") == "run seed 8: replay with --dtp-seed 8"
    assert "hypothesis drew its examples from a seed of its own" in report("-k", "uses_dtp")
    # a failure that no dtp fixture and no --dtp-seed had a part in is reported as
    # without dtp: in a project that has dtp installed, its seed would be noise
    assert report("-k", alone) is None


# -- what the plugin costs a project that does not use it ---------------------------------------


def test_loading_the_plugin_loads_nothing_of_dtp_but_the_plugin() -> None:
    """Loaded by every pytest run where dtp is installed (this project's own among
    them): no C core, no ledger, no asyncio, no hypothesis until a fixture asks for one
    (dtp.errors brings sqlite3, whose error one of its errors extends)."""
    script = (
        "import sys, pytest\n"
        "before = set(sys.modules)\n"
        "import dtp.testing.plugin\n"
        "print(' '.join(sorted(set(sys.modules) - before)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = set(done.stdout.split())
    ours = {name for name in loaded if name.startswith("dtp")}
    # (dtp._retired: the finder of the retired import paths, which import dtp installs;
    # dtp._distribution: the distribution's name, which MissingExtra's message gives)
    expected = {
        "dtp",
        "dtp._retired",
        "dtp.errors",
        "dtp._distribution",
        "dtp._extras",
        "dtp.testing",
    }
    assert ours == expected | {"dtp.testing.plugin"}, ours
    assert not loaded & {"hypothesis", "cffi", "dtp._dtp_core", "asyncio"}, loaded


def test_the_plugin_leaves_hypothesis_alone_unless_asked(installed: Path, tmp_path: Path) -> None:
    """Without ``--dtp-seed`` hypothesis' seed and settings are the project's own (no
    seed, or its ``--hypothesis-seed``; its profile). With it, hypothesis is seeded from
    it unless ``--hypothesis-seed`` says otherwise, and stops at the first failing
    example, on top of the project's profile (else the example it shrinks would depend
    on the machine's speed: dtp.testing.plugin.pytest_sessionstart)."""
    (tmp_path / "conftest.py").write_text(
        "from hypothesis import settings\n"
        "settings.register_profile('mine', max_examples=7)\n"
        "settings.load_profile('mine')\n"
    )
    (tmp_path / "test_seed.py").write_text(
        "from hypothesis import settings\n\n"
        "def test_seed(pytestconfig):\n"
        "    now = settings.default\n"
        "    print('hypothesis:', pytestconfig.getoption('hypothesis_seed'),\n"
        "          now.max_examples, now.report_multiple_bugs)\n"
    )

    def seen(*args: str) -> str:
        done = run_in_project(
            tmp_path, installed, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-s", *args
        )
        assert done.returncode == 0, done.stdout + done.stderr
        (line,) = [x for x in done.stdout.splitlines() if "hypothesis:" in x]
        return line.split("hypothesis:", 1)[1].strip()

    assert seen() == "None 7 True"
    assert seen("--hypothesis-seed", "3") == "3 7 True"
    assert seen("--dtp-seed", "9") == "9 7 False"
    assert seen("--dtp-seed", "9", "--hypothesis-seed", "3") == "3 7 False"


def test_a_project_naming_the_plugin_too_has_it_once(installed: Path, tmp_path: Path) -> None:
    """A conftest's ``pytest_plugins = ["dtp.testing.plugin"]`` (this project's, which
    runs from a checkout) beside the entry point: one plugin, one header line, the
    fixtures working."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["dtp.testing.plugin"]\n')
    done = _fresh_project(tmp_path, installed, "--dtp-seed", "5")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("dtp: seed 5 (replay with --dtp-seed 5)") == 1, done.stdout
    assert "1 passed" in done.stdout


def test_the_ledger_world_on_sui(dtp_sui_node: SuiNodeStandIn) -> None:
    """LedgerWorld on a SuiLedger, funded by the node stand-in's faucet: a claim of a
    signed receipt, and the invariants (conservation is checked through the node's
    audit, which counts the gas)."""
    ledger = SuiLedger(SuiConfig(dtp_sui_node.url, dtp_sui_node.package_id, timeout=30.0))
    try:
        world = LedgerWorld(ledger, clients=1, funds=10**10, faucet=dtp_sui_node.faucet)
        channel = world.open(0, 10_000)
        assert world.claim(channel, world.sign(channel, 2048, 1)) == 25
        world.check()
        audit = dtp_sui_node.audit()
        assert (
            audit["minted"]
            == audit["balances"] + audit["escrows"] + audit["broadcasts"] + audit["gas"]
        )
    finally:
        ledger.close()


def test_what_needs_no_hypothesis_imports_without_it() -> None:
    """The plugin (loaded in every project with dtp) and the tools beside the strategies
    import without hypothesis; the strategies say what to install."""
    script = (
        "import sys; sys.modules['hypothesis'] = None\n"
        "import dtp.testing.plugin, dtp.testing.network, dtp.testing.ledger_world\n"
        "import dtp.testing.pairs, dtp.testing.services, dtp.testing.daemons\n"
        "import dtp.testing.sui_node, dtp.testing.identities, dtp.testing.receipts\n"
        "try:\n    import dtp.testing.strategies\nexcept ImportError as exc:\n    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert "pip install 'dtp-sui[testing]'" in done.stdout
