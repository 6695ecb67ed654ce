"""LocalLedger's plain reads: a field of a stored object rewritten behind the
ledger's back to a value of the wrong type (text or a float for a number, a bool for an
int, a negative for a u64, a missing key, a wrong nested value) must fail as
``DamagedData`` naming the file and the object. The typed views copied such fields as
stored, so ``get_escrow`` returned an Escrow whose ``balance`` was a str, and converted
others (a bool for a price became 1, a firewall mode of ``true`` became ALLOW_LISTED, an
unknown connection state became Closed, a balance of "-5" became -5)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dtp.errors import ChainError
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger, rules
from tests.ledger.files import damage

SLA = Sla(10, 5, 1000)
PORT = 7


def ident(seed: int) -> HostIdentity:
    """A fixed identity."""
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


SERVER, CLIENT = ident(0x91), ident(0x92)


@dataclass(frozen=True)
class World:
    """A closed ledger file holding one object of every kind a typed read returns."""

    path: Path
    ids: dict[str, str]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    path = tmp_path / "ledger.sqlite"
    ledger = LocalLedger(path)
    try:
        host = ledger.create_host(SERVER, b"\x01" * 32, ["tcp://127.0.0.1:7000"])
        ledger.add_service(SERVER, host, PORT, "raw", SLA)
        ledger.allow(SERVER, host, CLIENT.sui_address)
        ledger.faucet(CLIENT.sui_address, 10**9)
        ledger.faucet(SERVER.sui_address, 10**9)
        cap = ledger.create_spending_cap(CLIENT, 10**6)
        opened = ledger.open_connection(CLIENT, host, PORT, cap, 1000)
        pipe = ledger.create_pipe(CLIENT, opened.connection_id, 2)
        broadcast = ledger.create_broadcast(SERVER, "news", 10, 1000)
        ledger.broadcast_contribute(CLIENT, broadcast, 100)
        offer = ledger.create_subscription_offer(SERVER, host, PORT, 100)
        subscription = ledger.subscribe(CLIENT, offer, 1)
        pool = ledger.create_sponsor_pool(SERVER, host, PORT, 5000, max_pledge=10**9, lanes=2)
        lane = ledger.get_sponsor_pool(pool).lanes[1]
        sale = ledger.create_ticket_sale(SERVER, "show", 10, 1, 5, 2**50)
        ledger.buy_tickets(CLIENT, sale, 1)
        terms = ledger.create_retention_terms(SERVER, host, PORT, 60_000, 1)
        deposit = ledger.response_escrow_deposit(CLIENT, SERVER.sui_address, b"r" * 32, 50, 2**50)
    finally:
        ledger.close()
    yield World(
        path,
        {
            "Host": host,
            "SpendingCap": cap,
            "TransportControl": opened.connection_id,
            "Escrow": opened.escrow_id,
            "Pipe": pipe,
            "Broadcast": broadcast,
            "SubscriptionOffer": offer,
            "Subscription": subscription,
            "SponsorPool": pool,
            "SponsorLane": lane,
            "TicketSale": sale,
            "RetentionTerms": terms,
            "ResponseEscrow": deposit,
        },
    )


Read = Callable[[LocalLedger, World], object]


def view(led: LocalLedger, w: World) -> object:
    """connection_view of the world's connection (which reads its host, escrow and cap)."""
    return led.connection_view(w.ids["TransportControl"], w.ids["Host"], with_cap=True)


# every typed read of each kind of object
READS: dict[str, list[tuple[str, Read]]] = {
    "Host": [
        ("get_host", lambda led, w: led.get_host(w.ids["Host"])),
        ("connection_view", view),
    ],
    "SpendingCap": [
        ("get_cap", lambda led, w: led.get_cap(w.ids["SpendingCap"])),
        ("connection_view", view),
    ],
    "TransportControl": [
        ("get_connection", lambda led, w: led.get_connection(w.ids["TransportControl"])),
        ("connection_view", view),
    ],
    "Escrow": [
        ("get_escrow", lambda led, w: led.get_escrow(w.ids["Escrow"])),
        ("get_objects", lambda led, w: led.get_objects([w.ids["Host"], w.ids["Escrow"]])),
        ("connection_view", view),
    ],
    "Pipe": [("get_pipe", lambda led, w: led.get_pipe(w.ids["Pipe"]))],
    "Broadcast": [
        ("get_broadcast", lambda led, w: led.get_broadcast(w.ids["Broadcast"])),
        ("is_on_air", lambda led, w: led.is_on_air(w.ids["Broadcast"])),
    ],
    "SubscriptionOffer": [
        ("get", lambda led, w: led.get_subscription_offer(w.ids["SubscriptionOffer"]))
    ],
    "Subscription": [("get", lambda led, w: led.get_subscription(w.ids["Subscription"]))],
    "SponsorPool": [("get", lambda led, w: led.get_sponsor_pool(w.ids["SponsorPool"]))],
    "SponsorLane": [
        ("get", lambda led, w: led.get_sponsor_lane(w.ids["SponsorLane"])),
        ("get_sponsor_lanes", lambda led, w: led.get_sponsor_lanes(w.ids["SponsorPool"])),
    ],
    "TicketSale": [("get", lambda led, w: led.get_ticket_sale(w.ids["TicketSale"]))],
    "RetentionTerms": [("get", lambda led, w: led.get_retention_terms(w.ids["RetentionTerms"]))],
    "ResponseEscrow": [("get", lambda led, w: led.get_response_escrow(w.ids["ResponseEscrow"]))],
}

MISSING = object()
NUMBER_DAMAGE: list[object] = ["1000", 1.5, 7.0, True, -1, MISSING]
FLAG_DAMAGE: list[object] = ["true", 0, 1, None, MISSING]
ADDRESS_DAMAGE: list[object] = [7, None, ["0x1"], MISSING]
BYTES_DAMAGE: list[object] = ["0101", 5, MISSING]

# (kind, JSON path of the field, damaged values)
FIELDS: list[tuple[str, str, list[object]]] = [
    ("Host", "$.authority", ADDRESS_DAMAGE),
    ("Host", "$.noise_static_key", BYTES_DAMAGE),
    ("Host", "$.endpoints", ["tcp://x", {"a": 1}, [5], MISSING]),
    ("Host", "$.services.7.max_connections", NUMBER_DAMAGE),
    ("Host", "$.services.7.sla.price_per_kib", NUMBER_DAMAGE),
    ("Host", "$.services.7.kind", [5, MISSING]),
    ("Host", "$.services", [[1, 2], "raw", {"seven": {}}]),
    ("Host", "$.firewall.mode", ["1", 1.0, True, 5, MISSING]),
    ("Host", "$.firewall.allow", ["0xabc", [7], {"0x1": True}, {"0x" + "1" * 64: 1}, MISSING]),
    ("Host", "$.firewall.deny", [5, ["0x1"], {"0x" + "1" * 64: None}, MISSING]),
    ("Host", "$.firewall.max_bytes_per_sec", NUMBER_DAMAGE),
    ("SpendingCap", "$.max_per_epoch", NUMBER_DAMAGE),
    ("SpendingCap", "$.claimed", NUMBER_DAMAGE),
    # (missing: a cap stored before outstanding deposits were counted, read by its spent)
    ("SpendingCap", "$.outstanding", NUMBER_DAMAGE),
    ("SpendingCap", "$.owner", ADDRESS_DAMAGE),
    ("TransportControl", "$.port", NUMBER_DAMAGE),
    ("TransportControl", "$.opened_at_ms", NUMBER_DAMAGE),
    ("TransportControl", "$.settled", FLAG_DAMAGE),
    ("TransportControl", "$.sla.min_deposit", NUMBER_DAMAGE),
    ("TransportControl", "$.sla", [[10, 5, 1000], "sla"]),
    ("TransportControl", "$.state.kind", ["Gone", 0, None, MISSING]),
    ("TransportControl", "$.escrow", ADDRESS_DAMAGE),
    ("Escrow", "$.funds", NUMBER_DAMAGE),
    ("Escrow", "$.deposited", NUMBER_DAMAGE),
    ("Escrow", "$.latest_nonce", NUMBER_DAMAGE),
    ("Escrow", "$.reserved", NUMBER_DAMAGE),
    # (missing: an escrow stored before the cap's counts, read as holding none of them)
    ("Escrow", "$.claim_epoch", ["0", 1.5, False, -1]),
    ("Escrow", "$.claimed_in_epoch", NUMBER_DAMAGE),
    ("Escrow", "$.settled", FLAG_DAMAGE),
    ("Escrow", "$.client_public_key", BYTES_DAMAGE),
    ("Escrow", "$.sla.price_per_request", NUMBER_DAMAGE),
    ("Escrow", "$.spending_cap", ADDRESS_DAMAGE),
    ("Pipe", "$.inners", ["ab", [5], {"0": 1}, MISSING]),
    ("Pipe", "$.inners[0].next_seq", NUMBER_DAMAGE),
    ("Pipe", "$.owner", ADDRESS_DAMAGE),
    ("Broadcast", "$.pool", NUMBER_DAMAGE),
    ("Broadcast", "$.slot_ms", NUMBER_DAMAGE),
    ("Broadcast", "$.cancelled", FLAG_DAMAGE),
    ("Broadcast", "$.stakes", [[["0x1", 1]], "x", {"0x1": 5}, {"0x1": {"shares": 1}}]),
    ("Broadcast", "$.total_shares", ["1000", 1.5, True, -1, 2**128, MISSING]),
    ("Broadcast", "$.last_live_ms", NUMBER_DAMAGE),
    ("Broadcast", "$.ticket_sale", [5, ["0x1"], {"id": "0x1"}]),
    ("SubscriptionOffer", "$.price_per_epoch", NUMBER_DAMAGE),
    ("SubscriptionOffer", "$.withdrawn", FLAG_DAMAGE),
    ("Subscription", "$.funds", NUMBER_DAMAGE),
    ("Subscription", "$.expires_epoch", NUMBER_DAMAGE),
    ("SponsorPool", "$.share_bps", NUMBER_DAMAGE),
    ("SponsorPool", "$.max_pledge", NUMBER_DAMAGE),
    ("SponsorPool", "$.lanes", ["0x1", [5], {"0x1": 1}, MISSING]),
    ("SponsorLane", "$.funds", NUMBER_DAMAGE),
    ("SponsorLane", "$.reserved", NUMBER_DAMAGE),
    ("SponsorLane", "$.pool", ADDRESS_DAMAGE),
    ("SponsorLane", "$.pledges", ["x", [5], MISSING]),
    ("TicketSale", "$.funds", NUMBER_DAMAGE),
    ("TicketSale", "$.on_air", FLAG_DAMAGE),
    ("RetentionTerms", "$.storage_price_per_byte", NUMBER_DAMAGE),
    ("ResponseEscrow", "$.funds", NUMBER_DAMAGE),
    ("ResponseEscrow", "$.state", NUMBER_DAMAGE),
    ("ResponseEscrow", "$.request_id", BYTES_DAMAGE),
]


def label(value: object) -> str:
    """A test ID for a damaged value."""
    return "missing" if value is MISSING else json.dumps(value).replace(" ", "")


CASES = [
    pytest.param(kind, field, value, id=f"{kind}-{field[2:]}-{label(value)}")
    for kind, field, values in FIELDS
    for value in values
]


def damage_field(path: Path, object_id: str, field: str, value: object) -> None:
    """Set (or remove) one field of the stored JSON of ``object_id``, in SQLite."""
    if value is MISSING:
        statement = "UPDATE objects SET data = json_remove(data, ?) WHERE id = ?"
        damage(path, statement, field, object_id)
    else:
        damage(
            path,
            "UPDATE objects SET data = json_set(data, ?, json(?)) WHERE id = ?",
            field,
            json.dumps(value),
            object_id,
        )


def assert_damaged(caught: pytest.ExceptionInfo[BaseException], path: Path, named: str) -> None:
    error = caught.value
    assert isinstance(error, rules.DamagedData), f"{type(error).__name__}: {error}"
    assert isinstance(error, ChainError) and error.name == "LedgerUnavailable"
    assert str(path) in str(error), f"the file is not named: {error}"
    assert named in str(error), f"{named} is not named: {error}"


def test_every_read_reads_the_undamaged_world(world: World) -> None:
    """The reads below fail only because of the damage (each reads back as written)."""
    ledger = LocalLedger(world.path)
    try:
        for reads in READS.values():
            for _name, read in reads:
                read(ledger, world)
        escrow = ledger.get_escrow(world.ids["Escrow"])
        assert escrow.balance == 1000 and escrow.sla == SLA
    finally:
        ledger.close()


@pytest.mark.parametrize(("kind", "field", "value"), CASES)
def test_a_damaged_field_is_damaged_data_in_every_read(
    world: World, kind: str, field: str, value: object
) -> None:
    object_id = world.ids[kind]
    damage_field(world.path, object_id, field, value)
    ledger = LocalLedger(world.path)
    try:
        for name, read in READS[kind]:
            with pytest.raises(ChainError) as caught:
                result = read(ledger, world)
                pytest.fail(f"{name} returned {result!r:.300}")
            assert_damaged(caught, world.path, object_id)
        # the handle goes on serving what is not damaged
        if kind != "SpendingCap":
            assert ledger.get_cap(world.ids["SpendingCap"]).max_per_epoch == 10**6
    finally:
        ledger.close()


@pytest.mark.parametrize("amount", ["-5", " 5", "5_0", "1.5", "18446744073709551616", "", 1.5])
def test_a_damaged_balance_is_damaged_data_naming_the_address(world: World, amount: object) -> None:
    address = CLIENT.sui_address
    damage(world.path, "UPDATE balances SET amount = ? WHERE address = ?", amount, address)
    ledger = LocalLedger(world.path)
    try:
        for call in (
            lambda: ledger.balance(address),
            ledger.audit,
            lambda: ledger.faucet(address, 1),
        ):
            with pytest.raises(ChainError) as caught:
                result = call()
                pytest.fail(f"returned {result!r}")
            assert_damaged(caught, world.path, address)
        assert ledger.balance(SERVER.sui_address) > 0
    finally:
        ledger.close()


@pytest.mark.parametrize("value", ["5_0", " 5", "+5", "1.5", "", "٥"])
def test_a_damaged_meta_number_is_damaged_data(world: World, value: str) -> None:
    """int() read "5_0" as 50, " 5" and "+5" as 5 and the Arabic-Indic digit five as 5:
    an epoch or a minted total the ledger never wrote."""
    damage(world.path, "UPDATE meta SET value = ? WHERE key = 'epoch'", value)
    damage(world.path, "UPDATE meta SET value = ? WHERE key = 'minted'", value)
    ledger = LocalLedger(world.path)
    try:
        for call in (ledger.epoch, ledger.minted):
            with pytest.raises(ChainError, match="not an integer"):
                result = call()
                pytest.fail(f"returned {result!r}")
    finally:
        ledger.close()
