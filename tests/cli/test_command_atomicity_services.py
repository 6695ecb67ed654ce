"""The chain commands that pay and then read back: the ID of what was paid for is never lost.

``service sponsor [--fund]``, ``service subscription``, ``service retention`` and
``subscription buy|renew`` make the paid transaction, then read the new object back for
the output; when that read fails (LedgerUnavailable: ordinary on Sui, a timeout or a
node not caught up with its own write) the error still gives the ID of what was paid
for (needed later to fund, withdraw or use it). SuiLedger calls check their numbers
(ports, prices, epochs, counts, deadlines) and the response escrow's server address as
LocalLedger does, before any node I/O. A deployments.json, or a line of ``sui client
publish`` output, nested past the stack is a clear error of ``dtp deploy``, not a
RecursionError traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dtp.errors import ChainError, InvalidArgument, InvalidObjectId, LedgerUnavailable
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.ledger.sui import SuiLedger
from tests.cli.chain_cli import Cli, make_parser
from tests.cli.deploy_runs import PUBLISHED, deploy, fake_sui
from tests.support.recording_sui_node import (  # noqa: F401 - sui is a fixture
    HOST,
    PIPE,
    SIGNER,
    TERMS,
    ZERO,
    FakeNode,
    sui,
)

# -- the CLI: a paid transaction whose read-back fails still names what it made ---------------


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("DTP_PASSPHRASE", raising=False)
    c = Cli(tmp_path, capsys)
    c.json("keys", "new")
    c.json("localnet", "faucet")
    return c


@dataclass(frozen=True)
class Paid:
    """A CLI command that pays for a transaction, then reads its object back."""

    argv: Callable[[str, str, str], list[str]]  # (host, offer, subscription) -> argv
    read: str  # the LocalLedger getter the command reads the result with
    struct: str  # the type of the object it creates (or renews)
    said: str  # how the error starts: what was done


PAID = {
    "service sponsor": Paid(
        lambda h, o, s: [
            "service",
            "sponsor",
            h,
            "7",
            "--share-bps",
            "100",
            "--max-pledge",
            "1000",
        ],
        "get_sponsor_pool",
        "SponsorPool",
        "Created the sponsor pool",
    ),
    "service sponsor --fund": Paid(
        lambda h, o, s: [
            "service",
            "sponsor",
            h,
            "7",
            "--share-bps",
            "100",
            "--max-pledge",
            "1000",
            "--fund",
            "500",
        ],
        "get_sponsor_pool",
        "SponsorPool",
        "Created the sponsor pool",
    ),
    "service subscription": Paid(
        lambda h, o, s: ["service", "subscription", h, "7", "--price-per-epoch", "5"],
        "get_subscription_offer",
        "SubscriptionOffer",
        "Created the subscription offer",
    ),
    "service retention": Paid(
        lambda h, o, s: ["service", "retention", h, "7", "--retention-ms", "1000"],
        "get_retention_terms",
        "RetentionTerms",
        "Created the retention terms",
    ),
    "subscription buy": Paid(
        lambda h, o, s: ["subscription", "buy", o, "--epochs", "3"],
        "get_subscription",
        "Subscription",
        "Bought the subscription",
    ),
    "subscription renew": Paid(
        lambda h, o, s: ["subscription", "renew", s, "--epochs", "2"],
        "get_subscription",
        "Subscription",
        "Renewed the subscription",
    ),
}


@pytest.mark.parametrize("name", list(PAID))
def test_a_failed_read_back_names_what_the_transaction_made(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    paid = PAID[name]
    host = cli.json("host", "create")["host"]
    cli.json("service", "add", host, "7")
    offer = cli.json("service", "subscription", host, "7", "--price-per-epoch", "5")["offer"]
    sub = cli.json("subscription", "buy", offer["id"], "--epochs", "1")["subscription"]
    with LocalLedger(cli.ledger) as ledger:
        before = {r.object_id for r in ledger.objects(paid.struct)}

    real = getattr(LocalLedger, paid.read)

    def lagging(self: LocalLedger, object_id: str) -> Any:
        # the CLI's read fails; the ledger's own (renew reads the subscription) does not
        if sys._getframe(1).f_globals["__name__"] != "dtp.cli._ledger":
            return real(self, object_id)
        raise LedgerUnavailable("the Sui node did not answer within 30 s")

    monkeypatch.setattr(LocalLedger, paid.read, lagging)
    code, out, err = cli.run(*paid.argv(host, offer["id"], sub["id"]))
    monkeypatch.undo()
    with LocalLedger(cli.ledger) as ledger:
        made = {r.object_id for r in ledger.objects(paid.struct)} - before
    (object_id,) = made or {sub["id"]}  # renew makes nothing new
    # the transaction happened: the error says so, with the ID, in one line, and exit 1
    assert code == 1 and out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith(f"dtp: {paid.said} {object_id}")
    assert "reading it back failed" in err and "did not answer within 30 s" in err


def test_a_funded_pool_whose_read_back_failed_says_it_was_funded(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = cli.json("host", "create")["host"]
    cli.json("service", "add", host, "7")

    real = LocalLedger.get_sponsor_pool

    def lagging(self: LocalLedger, object_id: str) -> Any:
        # the CLI's read back fails; the funding's own (which finds the lanes) does not
        if sys._getframe(1).f_globals["__name__"] != "dtp.cli._ledger":
            return real(self, object_id)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(LocalLedger, "get_sponsor_pool", lagging)
    code, _, err = cli.run(
        "service",
        "sponsor",
        host,
        "7",
        "--share-bps",
        "100",
        "--max-pledge",
        "1000",
        "--fund",
        "500",
    )
    monkeypatch.undo()
    with LocalLedger(cli.ledger) as ledger:
        (pool,) = [r.object_id for r in ledger.objects("SponsorPool")]
        assert sum(lane.funds for lane in ledger.get_sponsor_lanes(pool)) == 500
    assert code == 1
    assert f"sponsor pool {pool} and funded it with 500 MIST" in err
    assert err.rstrip().endswith("Input/output error")


# -- SuiLedger: numbers and the server checked before any node I/O, as LocalLedger does -------


@dataclass(frozen=True)
class World:
    """A LocalLedger with one of each object the calls below name."""

    ledger: LocalLedger
    host: str
    offer: str
    sub: str
    pool: str
    sale: str
    pipe: str
    terms: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with LocalLedger(tmp_path_factory.mktemp("ledger") / "l.sqlite") as local:
        local.faucet(SIGNER.sui_address, 10**12)
        host = local.create_host(SIGNER, SIGNER.noise_public)
        local.add_service(SIGNER, host, 7, "raw", Sla(0, 0, 0))
        offer = local.create_subscription_offer(SIGNER, host, 7, 5)
        sub = local.subscribe(SIGNER, offer, 1)
        pool = local.create_sponsor_pool(SIGNER, host, 7, 100, max_pledge=10**9)
        sale = local.create_ticket_sale(SIGNER, "t", 1, 1, 2, local.clock_ms() + 10**9)
        cap = local.create_spending_cap(SIGNER, 10**9)
        conn = local.open_connection(SIGNER, host, 7, cap, 0).connection_id
        pipe = local.create_pipe(SIGNER, conn, 1)
        terms = local.create_retention_terms(SIGNER, host, 7, 1000, 10)
        yield World(local, host, offer, sub, pool, sale, pipe, terms)


Ids = dict[str, str]
#: name -> call(ledger, ids): one argument out of range (or malformed), the rest valid
BAD_ARGUMENTS: dict[str, Callable[[Any, Ids], Any]] = {
    "create_subscription_offer port": lambda led, i: led.create_subscription_offer(
        SIGNER, i["host"], 70000, 1
    ),
    "create_subscription_offer price_per_epoch": lambda led, i: led.create_subscription_offer(
        SIGNER, i["host"], 7, -1
    ),
    "create_subscription_offer period_epochs": lambda led, i: led.create_subscription_offer(
        SIGNER, i["host"], 7, 1, 2**64
    ),
    "subscribe epochs": lambda led, i: led.subscribe(SIGNER, i["offer"], -1),
    "renew_subscription epochs": lambda led, i: led.renew_subscription(SIGNER, i["sub"], -1),
    "create_sponsor_pool port": lambda led, i: led.create_sponsor_pool(
        SIGNER, i["host"], 70000, 100, max_pledge=10**9
    ),
    "create_sponsor_pool share_bps": lambda led, i: led.create_sponsor_pool(
        SIGNER, i["host"], 7, -1, max_pledge=10**9
    ),
    "create_sponsor_pool lanes": lambda led, i: led.create_sponsor_pool(
        SIGNER, i["host"], 7, 100, max_pledge=10**9, lanes=-1
    ),
    "fund_sponsor_pool amount": lambda led, i: led.fund_sponsor_pool(SIGNER, i["pool"], 2**64),
    "withdraw_sponsor_pool amount": lambda led, i: led.withdraw_sponsor_pool(SIGNER, i["pool"], -1),
    "open_sponsored_connection deposit": lambda led, i: led.open_sponsored_connection(
        SIGNER, i["pool"], i["host"], -1
    ),
    "create_ticket_sale ticket_price": lambda led, i: led.create_ticket_sale(
        SIGNER, "t", -1, 1, 2, 10**9
    ),
    "create_ticket_sale min_tickets": lambda led, i: led.create_ticket_sale(
        SIGNER, "t", 1, -1, 2, 10**9
    ),
    "create_ticket_sale max_tickets": lambda led, i: led.create_ticket_sale(
        SIGNER, "t", 1, 1, 2**64, 10**9
    ),
    "create_ticket_sale deadline_ms": lambda led, i: led.create_ticket_sale(
        SIGNER, "t", 1, 1, 2, -1
    ),
    "buy_tickets count": lambda led, i: led.buy_tickets(SIGNER, i["sale"], -1),
    "create_retention_terms port": lambda led, i: led.create_retention_terms(
        SIGNER, i["host"], True, 1000, 1
    ),
    "create_retention_terms retention_ms": lambda led, i: led.create_retention_terms(
        SIGNER, i["host"], 7, -1, 1
    ),
    "create_retention_terms storage_price_per_byte": lambda led, i: led.create_retention_terms(
        SIGNER, i["host"], 7, 1000, 1.5
    ),
    "send_retained inner": lambda led, i: led.send_retained(
        SIGNER, i["pipe"], i["terms"], -1, b"x"
    ),
    "response_escrow_deposit server": lambda led, i: led.response_escrow_deposit(
        SIGNER, "nothex", b"r", 10, 10**9
    ),
    "response_escrow_deposit deadline_ms": lambda led, i: led.response_escrow_deposit(
        SIGNER, SIGNER.sui_address, b"r", 10, -1
    ),
}


@pytest.mark.parametrize("name", list(BAD_ARGUMENTS))
def test_sui_refuses_bad_numbers_before_io_as_local_ledger_does(
    sui: tuple[SuiLedger, FakeNode],  # noqa: F811
    world: World,
    name: str,
) -> None:
    led, node = sui
    call = BAD_ARGUMENTS[name]
    # the node knows none of these objects but the host, pipe and terms: the check
    # must come first
    ids = {"host": HOST, "offer": ZERO, "sub": ZERO, "pool": ZERO, "sale": ZERO}
    with pytest.raises(ChainError) as on_sui:
        call(led, {**ids, "pipe": PIPE, "terms": TERMS})
    assert node.calls == [] and node.sent == []
    w = world
    local_ids = {
        "host": w.host,
        "offer": w.offer,
        "sub": w.sub,
        "pool": w.pool,
        "sale": w.sale,
        "pipe": w.pipe,
        "terms": w.terms,
    }
    with pytest.raises(ChainError) as on_local:
        call(w.ledger, local_ids)
    assert type(on_sui.value) is type(on_local.value)
    assert isinstance(on_sui.value, InvalidArgument | InvalidObjectId)
    assert str(on_sui.value) == str(on_local.value)


# -- deploy: JSON nested past the stack -----------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000


def test_a_deeply_nested_deployments_record_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    record = tmp_path / "data" / "dtp" / "deployments.json"
    record.parent.mkdir(parents=True)
    record.write_text(DEEP)
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "Move.toml").write_text('[package]\nname = "dtp"\n')
    published = tmp_path / "published"
    sui_bin = fake_sui(tmp_path / "sui", PUBLISHED, published)
    assert deploy("--sui-bin", str(sui_bin), "--package-path", str(package)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"dtp: {record} is not a deployments record (a JSON object)")
    assert len(err.splitlines()) == 1
    assert not published.exists()  # refused before the paid publish


def test_publish_output_nested_past_the_stack_keeps_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "Move.toml").write_text('[package]\nname = "dtp"\n')
    # a line of diagnostics that starts with "{" and nests past the stack, then the JSON
    output = '{"note": ' + DEEP + "}\n" + PUBLISHED
    sui_bin = fake_sui(tmp_path / "sui", output, tmp_path / "published")
    argv = ["deploy", "--network", "localnet", "--sui-bin", str(sui_bin), "--json"]
    args = make_parser().parse_args([*argv, "--package-path", str(package)])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["package_id"] == "0xabc"
    record = tmp_path / "data" / "dtp" / "deployments.json"
    assert json.loads(record.read_text())["localnet"]["package_id"] == "0xabc"
