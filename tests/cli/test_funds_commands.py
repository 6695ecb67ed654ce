"""``dtp --version``, ``dtp balance``, ``dtp connections``, ``dtp refund`` and ``dtp claim``
end to end: each run as a real ``python -m dtp`` process against a ledger named by a
ledger spec, set up and checked through the ``Ledger`` interface.

The ledger is the ``world`` fixture, each test running on both: a :class:`LocalWorld` (a
temporary LocalLedger file, ``--ledger local:PATH``) and a :class:`SuiWorld` (the Sui node
of tests/support/sui_network.py, the stand-in unless a real node is configured: ``--ledger
localnet@http://127.0.0.1:PORT --sui-package 0x…``). A world gives the same things: its
``dtp`` arguments and daemon config lines, a ``Ledger`` to set up and read with, a way to
fund an address and a way to move the ledger clock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

import dtp
from dtp._distribution import NAME as DISTRIBUTION
from dtp.cli._funds import sui_text
from dtp.errors import ObjectNotFound
from dtp.identity._files import lock_exclusive
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import HALF_CLOSE_TIMEOUT_MS, Sla
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from dtp.payments.receipt_store import ReceiptStore
from dtp.payments.receipts import Receipt
from tests.support.cli_runs import chain_argv
from tests.support.daemon_procs import ENV, ROOT, daemon
from tests.support.sui_network import SuiNetwork

SUI = 1_000_000_000
DEPOSIT = 100_000
SLA = Sla(0, 100, 1_000)  # 100 MIST a request


class LocalWorld:
    """A LocalLedger file named by ``--ledger local:PATH``."""

    def __init__(self, tmp: Path) -> None:
        self.path = tmp / "ledger.sqlite"
        self.ledger: Ledger = LocalLedger(self.path)
        self.args = ["--ledger", f"local:{self.path}"]
        self.daemon_toml = f'ledger = "local:{self.path}"\n'

    def fund(self, address: str, mist: int) -> None:
        assert isinstance(self.ledger, LocalLedger)
        self.ledger.faucet(address, mist)

    def advance_clock(self, ms: int) -> None:
        assert isinstance(self.ledger, LocalLedger)
        self.ledger.advance_clock(ms)

    def close(self) -> None:
        self.ledger.close()


class SuiWorld:
    """A Sui node (tests/support/sui_network.py) named by ``--ledger localnet@URL
    --sui-package``."""

    def __init__(self, network: SuiNetwork) -> None:
        self.network = network
        self.ledger: Ledger = network.ledger()
        self.args = network.args
        self.daemon_toml = network.daemon_toml()

    def fund(self, address: str, mist: int) -> None:
        self.network.fund(address, mist)

    def advance_clock(self, ms: int) -> None:
        self.network.advance_clock(ms)

    def close(self) -> None:
        self.ledger.close()


World = LocalWorld | SuiWorld


class Place:
    """Two identities (a client and a server, as files), a host with a paid service on
    the world's ledger, and the ``dtp`` command run as a process."""

    def __init__(self, tmp: Path, world: World) -> None:
        self.tmp, self.world = tmp, world
        self.env = {
            **{k: v for k, v in ENV.items() if not k.startswith(("DTP_LEDGER", "DTP_SUI_"))},
            "XDG_DATA_HOME": str(tmp / "data"),
            "SUI_CONFIG_DIR": str(tmp / "no-sui-config"),
        }
        self.client, self.server = HostIdentity.generate(), HostIdentity.generate()
        self.client.save(tmp / "client.json")
        self.server.save(tmp / "server.json")
        world.fund(self.client.sui_address, 5 * SUI)
        world.fund(self.server.sui_address, 1 * SUI)
        ledger = world.ledger
        self.host = ledger.create_host(self.server, self.server.noise_public, [])
        ledger.add_service(self.server, self.host, 7, "raw", SLA)
        self.cap = ledger.create_spending_cap(self.client, SUI)

    def open(self) -> str:
        """A new connection of the client to the service: its ID."""
        opened = self.world.ledger.open_connection(self.client, self.host, 7, self.cap, DEPOSIT)
        return opened.connection_id

    def run(self, *argv: str, who: str = "client", ledger: bool = True) -> tuple[int, str, str]:
        """``python -m dtp ARGV`` as ``who`` (its identity file): (status, out, err)."""
        identity = ["--identity", str(self.tmp / f"{who}.json")] if who else []
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "dtp",
                *chain_argv(argv, self.world.args if ledger else [], identity),
            ],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return done.returncode, done.stdout, done.stderr

    def json(self, *argv: str, who: str = "client") -> Any:
        code, out, err = self.run(*argv, "--json", who=who)
        assert code == 0, err
        return json.loads(out)

    def fails(self, *argv: str, code: int = 1, who: str = "client") -> str:
        """The one line a failing command prints (and nothing on stdout)."""
        got, out, err = self.run(*argv, who=who)
        assert (got, out) == (code, ""), err
        assert err.count("\n") == 1 and err.startswith("dtp: "), err
        return err[len("dtp: ") : -1]

    def store(self, *receipts: Receipt) -> Path:
        """A daemon state directory whose receipt store holds ``receipts``."""
        state = self.tmp / "state"
        state.mkdir(mode=0o700, exist_ok=True)
        with ReceiptStore(state / "receipts.sqlite") as store:
            for receipt in receipts:
                assert store.keep(receipt)
        return state

    def receipt(self, connection: str, requests: int, nonce: int) -> Receipt:
        scope = self.world.ledger.receipt_scope(connection)
        return Receipt(scope, 0, requests, requests * 100, nonce).sign(self.client)


@pytest.fixture(params=["local", "sui"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    made: World
    if request.param == "sui":
        made = SuiWorld(request.getfixturevalue("sui_network"))
    else:
        made = LocalWorld(tmp_path)
    try:
        yield made
    finally:
        made.close()


#: For tests whose ledger is not the world's (offline Sui specs, no ledger at all): the
#: embedded world only.
LOCAL_ONLY = pytest.mark.parametrize("world", ["local"], indirect=True)


@pytest.fixture
def place(tmp_path: Path, world: World) -> Place:
    return Place(tmp_path, world)


# -- version ------------------------------------------------------------------------------


@LOCAL_ONLY
def test_version(place: Place) -> None:
    code, out, err = place.run("--version", who="", ledger=False)
    assert (code, err) == (0, "")
    # the version of the distribution installed, found by its name (dtp-sui)
    assert out == f"dtp {metadata.version(DISTRIBUTION)}\n"
    assert metadata.version(DISTRIBUTION) == dtp.__version__  # one version, pyproject reads it
    code, out, _ = place.run("version", who="", ledger=False)
    assert code == 0
    assert out.startswith(f"dtp {dtp.__version__} (distribution dtp-sui, core backend: ")


# -- balance -------------------------------------------------------------------------------


def test_balance_of_the_identity_and_of_an_address(place: Place) -> None:
    mine = place.json("balance")
    assert mine["address"] == place.client.sui_address
    held = place.world.ledger.balance(place.client.sui_address)
    assert mine["balance_mist"] == held
    whole, frac = divmod(held, SUI)
    assert mine["balance_sui"] == f"{whole}.{frac:09d}".rstrip("0").rstrip(".")
    # gas coins are Sui's: a ledger without them says nothing of them
    coins = place.world.ledger.gas_coin_count(place.client.sui_address)
    assert mine.get("gas_coins") == coins
    # the server was given 1 SUI; on Sui, publishing its host and service paid gas
    server = place.world.ledger.balance(place.server.sui_address)
    assert server == SUI or (isinstance(place.world, SuiWorld) and server < SUI)
    theirs = place.json("balance", place.server.sui_address)
    assert (theirs["address"], theirs["balance_mist"], theirs["balance_sui"]) == (
        place.server.sui_address,
        server,
        sui_text(server),
    )
    code, out, _ = place.run("balance", place.server.sui_address)
    assert code == 0 and f"balance sui: {sui_text(server)}\n" in out
    assert "not a valid address" in place.run("balance", "0xnope")[2]  # argparse: exit 2


# -- connections ------------------------------------------------------------------------------


def test_connections_as_client_and_as_host(place: Place) -> None:
    first, second = place.open(), place.open()
    listed = place.json("connections")
    assert listed["client"] == place.client.sui_address and listed["complete"] is True
    rows = {row["connection"]: row for row in listed["connections"]}
    assert list(rows) == [first, second]
    row = rows[first]
    assert (row["host"], row["port"], row["peer"]) == (place.host, 7, place.server.sui_address)
    assert (row["state"], row["settled"], row["deposit_mist"]) == ("Open", False, DEPOSIT)
    assert (row["claimed_mist"], row["refunded_mist"]) == (0, 0)
    assert row["claimable_mist"] is None  # no receipt store: unknown
    assert row["refundable_mist"] == DEPOSIT
    assert row["when"].startswith("half-close first")
    # the host's view, with its daemon's receipts: claimable known, peer the client
    state = place.store(place.receipt(second, 3, 1))
    hosted = place.json("connections", "--host", place.host, "--state-dir", str(state))
    rows = {row["connection"]: row for row in hosted["connections"]}
    assert [rows[c]["claimable_mist"] for c in (first, second)] == [0, 300]
    assert rows[second]["refundable_mist"] == DEPOSIT - 300
    assert rows[second]["peer"] == place.client.sui_address
    assert rows[second]["when"] == "settle now"  # the server may, at any time
    # another client's connections are not this one's
    assert place.json("connections", who="server")["connections"] == []
    text = place.run("connections")[1]
    assert text.startswith(
        f"connections open or not yet settled of client {place.client.sui_address}: 2\n"
    )
    assert f"service:    {place.host}:7" in text and "claimable:  unknown" in text


def test_connections_of_a_host_not_on_the_ledger_fail(place: Place) -> None:
    # a shortened or mistyped host ID is not "a host with no connections"
    message = place.fails("connections", "--host", "0x8a4f")
    assert message.startswith("No Host with ID 0x" + "8a4f".rjust(64, "0"))
    assert place.json("connections", "--host", place.host)["connections"] == []


def test_connections_half_closed_settled_and_a_bounded_scan(place: Place) -> None:
    first, second = place.open(), place.open()
    ledger = place.world.ledger
    ledger.close_connection(place.client, first)
    half = ledger.get_connection(first)
    assert half.half_closed_at_ms is not None
    row = place.json("connections")["connections"][0]
    assert row["state"] == "HalfClosed" and row["half_closed_by"] == place.client.sui_address
    settles = half.half_closed_at_ms + HALF_CLOSE_TIMEOUT_MS
    assert row["client_settles_at_ms"] == settles
    assert row["when"].startswith("refundable by the client after ")
    assert row["state_text"].startswith(f"HalfClosed by client {place.client.sui_address} since")
    # the server settles the other: gone from the default list, there with --all
    ledger.settle(place.server, second)
    assert [r["connection"] for r in place.json("connections")["connections"]] == [first]
    every = place.json("connections", "--all")["connections"]
    assert [r["connection"] for r in every] == [first, second]
    assert every[1]["settled"] is True and every[1]["refunded_mist"] == DEPOSIT
    assert every[1]["when"] == "settled"
    # a scan of one event reads the first open only, and says it stopped
    bounded = place.json("connections", "--all", "--limit", "1")
    assert bounded["complete"] is False
    assert [r["connection"] for r in bounded["connections"]] == [first]
    assert "pass a larger --limit" in place.run("connections", "--limit", "1")[1]


# -- refund ------------------------------------------------------------------------------------


def _pending(place: Place, opened: str) -> tuple[str, dict[str, object]]:
    """``dtp refund`` before the timeout: exit status 0 (the half-close, all it can do
    now, was done: no failure), ``settled: false`` and when on stdout, the sentence
    saying when on stderr."""
    code, out, err = place.run("refund", opened, "--json")
    assert code == 0, err
    assert err.count("\n") == 1 and err.startswith("dtp: "), err
    return err[len("dtp: ") : -1], json.loads(out)


def test_refund_half_closes_then_says_when(place: Place) -> None:
    opened = place.open()
    ledger = place.world.ledger
    message, result = _pending(place, opened)
    tc = ledger.get_connection(opened)
    assert tc.half_closed_by == place.client.sui_address  # it half-closed
    assert message.startswith(f"Connection {opened} is half-closed; its client may ")
    assert "or pass --wait." in message
    settles_at = tc.half_closed_at_ms + HALF_CLOSE_TIMEOUT_MS
    assert result == {
        "connection": opened,
        "refunded_mist": 0,
        "settled": False,
        "already_settled": False,
        "state": "half-closed",
        "settles_at_ms": settles_at,
    }
    # again, before the timeout: the same answer, nothing more done
    # (what follows "(in" is the time left: the ledger clock runs meanwhile)
    when = message.split(" (in ")[0]
    assert _pending(place, opened)[0].split(" (in ")[0] == when
    # the server closing its end too changes nothing of the client's timeout
    ledger.close_connection(place.server, opened)
    closed, result = _pending(place, opened)
    assert closed.split(" (in ")[0] == when.replace("is half-closed;", "is closed;")
    assert result["state"] == "closed" and result["settles_at_ms"] == settles_at
    place.world.advance_clock(HALF_CLOSE_TIMEOUT_MS)
    done = place.json("refund", opened)
    assert done == {
        "connection": opened,
        "refunded_mist": DEPOSIT,
        "settled": True,
        "already_settled": False,
    }
    tc = ledger.get_connection(opened)
    assert tc.settled and ledger.get_escrow(tc.escrow).refunded == DEPOSIT
    # idempotent: an already settled connection says so
    assert place.json("refund", opened)["already_settled"] is True
    code, out, _ = place.run("refund", opened)
    assert code == 0 and "already settled: True" in out


def test_refund_waits_when_asked(place: Place) -> None:
    opened = place.open()
    waiting = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dtp",
            "refund",
            opened,
            "--wait",
            "--json",
            *place.world.args,
            "--identity",
            str(place.tmp / "client.json"),
        ],
        cwd=ROOT,
        env=place.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ledger = place.world.ledger
        deadline = time.monotonic() + 60
        while ledger.get_connection(opened).half_closed_at_ms is None:
            assert time.monotonic() < deadline and waiting.poll() is None
            time.sleep(0.05)
        time.sleep(0.3)
        assert waiting.poll() is None  # waiting for the timeout
        place.world.advance_clock(HALF_CLOSE_TIMEOUT_MS)
        out, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.communicate()
    assert waiting.returncode == 0, err
    assert json.loads(out)["refunded_mist"] == DEPOSIT
    assert err.startswith("dtp: waiting until ")
    assert ledger.get_connection(opened).settled


def test_refund_is_the_clients(place: Place) -> None:
    opened = place.open()
    message = place.fails("refund", opened, who="server")
    assert message == (
        f"Connection {opened} is the client {place.client.sui_address}'s, not "
        f"{place.server.sui_address}'s: only its client is refunded (its server settles with "
        "`dtp claim --settle`)."
    )
    assert place.world.ledger.get_connection(opened).half_closed_at_ms is None
    assert "is not a valid connection ID" in place.run("refund", "zz")[2]


def test_refund_of_an_unknown_connection_names_the_ledger_asked(place: Place) -> None:
    # a connection ID mistyped, or one on another ledger: said in the user's words (a
    # connection, not the Move struct) with the ledger that was asked
    unknown = "0x" + "77c2".rjust(64, "0")
    message = place.fails("refund", unknown)
    assert message.startswith(f"No connection {unknown} on ")
    assert "TransportControl" not in message
    if isinstance(place.world, LocalWorld):
        assert f"on the ledger file {place.world.path}:" in message
    assert message.endswith(
        "`dtp connections` lists the identity's (pass --ledger for another ledger)."
    )
    code, out, err = place.run("refund", unknown, "--json")
    assert (code, out) == (1, "")
    assert json.loads(err)["error"] == "ObjectNotFound"  # the type scripts branch on, kept


# -- claim -------------------------------------------------------------------------------------


def test_claim_the_stored_receipt_then_settle(place: Place) -> None:
    opened = place.open()
    ledger = place.world.ledger
    state = place.store(place.receipt(opened, 2, 1))
    claimed = place.json("claim", opened, "--state-dir", str(state), who="server")
    assert claimed == {
        "connection": opened,
        "receipt_mist": 200,
        "claimed_mist": 200,
        "total_claimed_mist": 200,
        "settled": False,
    }
    assert ledger.get_escrow(ledger.get_connection(opened).escrow).claimed == 200
    with ReceiptStore(state / "receipts.sqlite") as store:
        assert list(store.unclaimed()) == []  # marked: no recovery claims it again
        assert store.keep(place.receipt(opened, 5, 2))  # the client paid on
    again = place.json("claim", opened, "--state-dir", str(state), "--settle", who="server")
    assert again["claimed_mist"] == 300 and again["total_claimed_mist"] == 500
    assert again["settled"] is True and again["refunded_mist"] == DEPOSIT - 500
    tc = ledger.get_connection(opened)
    assert tc.settled and ledger.get_escrow(tc.escrow).refunded == DEPOSIT - 500
    # once more: nothing left, said so
    last = place.json("claim", opened, "--state-dir", str(state), who="server")
    assert last["already_claimed"] is True and last["claimed_mist"] == 0
    assert last["settled"] is True


def test_claim_refusals(place: Place) -> None:
    opened, other = place.open(), place.open()
    state = place.store(place.receipt(opened, 1, 1))
    store = state / "receipts.sqlite"
    assert place.fails("claim", other, "--state-dir", str(state), who="server") == (
        f"The receipt store {store} holds no receipt for {other}."
    )
    assert place.fails("claim", opened, "--state-dir", str(state)) == (
        f"Connection {opened} pays {place.server.sui_address}, not "
        f"{place.client.sui_address}: pass the daemon's identity file with --identity."
    )
    nowhere = place.tmp / "nowhere"
    assert place.fails("claim", opened, "--state-dir", str(nowhere), who="server") == (
        f"No receipt store at {nowhere / 'receipts.sqlite'}: give the daemon's state directory "
        "([daemon] state_dir) with --state-dir."
    )
    assert not nowhere.exists()
    # a server using the store (its run lock held): refused
    with ReceiptStore(store) as live:
        live.attach_server()
        try:
            refused = place.fails("claim", opened, "--state-dir", str(state), who="server")
        finally:
            live.detach_server()
    assert (
        refused == f"Another server is using the receipt store {store}: stop it to claim by hand."
    )
    # the daemon's state directory lock held: refused, naming the holder's pid
    lock = lock_exclusive(state / "daemon.lock")
    assert lock is not None
    try:
        os.pwrite(lock, f"{os.getpid()}\n".encode(), 0)
        refused = place.fails("claim", opened, "--state-dir", str(state), who="server")
    finally:
        os.close(lock)
    assert refused == (
        f"A dtp daemon (pid {os.getpid()}) is running on {state}: it claims its receipts "
        "itself; stop it to claim by hand."
    )
    escrow = place.world.ledger.get_escrow(place.world.ledger.get_connection(opened).escrow)
    assert escrow.claimed == 0  # none of them claimed anything


class _ClientSettlesMeanwhile(LocalLedger):
    """The client settles (its half-close timeout passed) just after ``dtp claim``
    read the escrow, before its own settlement."""

    client: HostIdentity | None = None
    delete = False
    """And deletes the connection's objects once settled (docs/escrow.md §7)."""

    def get_escrow(self, escrow_id: str) -> Any:
        escrow = super().get_escrow(escrow_id)
        if self.client is not None:
            client, self.client = self.client, None
            super().settle(client, escrow.connection)
            if self.delete:
                self.destroy_connection(client, escrow.connection)
        return escrow


@pytest.mark.parametrize("when", ["settled meanwhile", "deleted meanwhile", "deleted before"])
def test_claim_settle_on_a_connection_its_client_settled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], when: str
) -> None:
    """The client settled the connection while ``dtp claim`` ran (claim_and_settle finds
    it settled), and perhaps deleted it then or before the command (docs/escrow.md §7):
    the command says it is settled with what its escrow paid (read from the settlement's
    event once deleted), and the receipt is written off and marked in the store."""
    import argparse

    from dtp.cli._funds import _claim_from

    ledger = _ClientSettlesMeanwhile(tmp_path / "ledger.sqlite")
    server, client = HostIdentity.generate(), HostIdentity.generate()
    ledger.faucet(client.sui_address, SUI)
    host = ledger.create_host(server, server.noise_public, [])
    ledger.add_service(server, host, 7, "raw", SLA)
    cap = ledger.create_spending_cap(client, SUI)
    opened = ledger.open_connection(client, host, 7, cap, DEPOSIT).connection_id
    store = tmp_path / "receipts.sqlite"
    with ReceiptStore(store) as receipts:
        assert receipts.keep(Receipt(ledger.receipt_scope(opened), 0, 2, 200, 1).sign(client))
    ledger.close_connection(client, opened)
    ledger.advance_clock(HALF_CLOSE_TIMEOUT_MS)
    if when == "deleted before":
        ledger.settle(client, opened)
        ledger.destroy_connection(client, opened)
    else:
        ledger.client, ledger.delete = client, when == "deleted meanwhile"
    balance = ledger.balance(server.sui_address)
    args = argparse.Namespace(connection=opened, settle=True, json=True)
    assert _claim_from(args, ledger, server, store) == 0
    assert json.loads(capsys.readouterr().out) == {
        "connection": opened,
        "receipt_mist": 200,
        "claimed_mist": 0,
        "total_claimed_mist": 0,
        "settled": True,
        "already_claimed": False,
        "already_settled": True,
    }
    if when == "settled meanwhile":
        escrow = ledger.get_escrow(ledger.get_connection(opened).escrow)
        assert escrow.settled and escrow.refunded == DEPOSIT  # the client took it all back
    else:
        with pytest.raises(ObjectNotFound):
            ledger.get_connection(opened)
    assert ledger.balance(server.sui_address) == balance
    with ReceiptStore(store) as receipts:
        assert list(receipts.unclaimed()) == []  # written off: no recovery tries again
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
    ledger.close()


def test_claim_is_refused_while_a_daemon_runs_on_the_state_dir(place: Place) -> None:
    """A real ``dtp daemon`` holding its state directory."""
    config = place.tmp / "daemon.toml"
    config.write_text(
        f'[daemon]\n{place.world.daemon_toml}identity = "server.json"\n'
        'state_dir = "state"\nlog_format = "text"\n\n'
        '[[service]]\nname = "s"\nport = 9\nbackends = ["127.0.0.1:9"]\nprice_per_request = 1\n'
    )
    running = daemon(config)
    try:
        message = place.fails(
            "claim", place.open(), "--state-dir", str(place.tmp / "state"), who="server"
        )
        assert message == (
            f"A dtp daemon (pid {running.proc.pid}) is running on {place.tmp / 'state'}: it "
            "claims its receipts itself; stop it to claim by hand."
        )
    finally:
        assert running.stop() == 0


# -- the embedded ledger's own commands, and Sui specs offline ----------------------------------


@LOCAL_ONLY
def test_localnet_commands_on_a_sui_spec_say_so(place: Place) -> None:
    for action, hint in (
        ("faucet", "fund an address with `dtp fund`, which asks the network's faucet."),
        ("advance-epoch", "epochs end on the network's schedule (about a day)."),
        ("status", "dtp connections work there)."),
    ):
        got, out, err = place.run("localnet", action, "--ledger", "testnet", ledger=False)
        assert (got, out) == (2, "") and err.count("\n") == 1
        assert err.startswith(
            f"dtp: `dtp localnet {action}` works on the embedded ledger only, and --ledger "
            "names Sui testnet at https://fullnode.testnet.sui.io:443: on Sui, "
        )
        assert err.endswith(hint + "\n")


@LOCAL_ONLY
def test_an_unreachable_node_is_one_line(place: Place) -> None:
    """Nothing listens on port 1: LedgerUnavailable, in one line, not a traceback; the
    address is the identity's even though the ledger is Sui (an identity file exists)."""
    got, out, err = place.run(
        "balance", "--ledger", "http://127.0.0.1:1", "--sui-package", "0x2", ledger=False
    )
    assert (got, out) == (1, "")
    assert err == (
        f"dtp: Sui node http://127.0.0.1:1 is unreachable (GetBalance "
        f"{place.client.sui_address}): [Errno 111] Connect call failed ('127.0.0.1', 1)\n"
    )


@LOCAL_ONLY
def test_a_sui_spec_without_a_package_is_refused_before_any_call(place: Place) -> None:
    opened = place.open()
    records = place.tmp / "data" / "dtp" / "deployments.json"
    got, out, err = place.run("refund", opened, "--ledger", "testnet", ledger=False)
    assert (got, out) == (2, "")
    assert err == (
        f"dtp: No dtp package is recorded for testnet (--ledger; records: {records}): run "
        "`dtp deploy --network testnet`, or set DTP_SUI_PACKAGE (--sui-package, sui_package "
        "in the daemon config).\n"
    )
    got, _, err = place.run("balance", "--ledger", "local", "--sui-package", "0x2", ledger=False)
    assert got == 2 and "--sui-package names a package on a Sui ledger" in err


@LOCAL_ONLY
def test_without_an_identity_file_a_sui_spec_uses_the_sui_keystore(place: Place) -> None:
    """No DTP identity: the Sui CLI's active address is "mine" (its key is not needed to
    read; the node, unreachable here, is asked for that address's balance)."""
    keystring = HostIdentity.generate().to_sui_keystring()
    address = HostIdentity.from_sui_keystring(keystring).sui_address
    config = place.tmp / "sui_config"
    config.mkdir()
    (config / "sui.keystore").write_text(json.dumps([keystring]))
    (config / "client.yaml").write_text(
        f'keystore:\n  File: {config / "sui.keystore"}\nactive_address: "{address}"\n'
    )
    place.env["SUI_CONFIG_DIR"] = str(config)
    argv = ("balance", "--ledger", "http://127.0.0.1:1", "--sui-package", "0x2")
    got, _, err = place.run(*argv, who="", ledger=False)
    assert got == 1 and f"(GetBalance {address})" in err
    # and with DTP_SUI_KEY set, that key's
    key = HostIdentity.generate()
    place.env["DTP_SUI_KEY"] = key.to_sui_bech32()
    assert f"(GetBalance {key.sui_address})" in place.run(*argv, who="", ledger=False)[2]
