"""The ledger scenarios of tests/scenarios/*.toml (SCENARIOS) and the Runner that plays one
on a LocalLedger or on any other World with the same calls (tests/ledger/test_scenarios.py
runs them on LocalLedger, tests/ledger/test_sui_on_standin.py on the Sui node stand-in)."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from typing import Any, Protocol

import pytest

from dtp.errors import ChainError, ObjectNotFound
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Event, Sla
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from dtp.payments.receipts import Receipt
from tests.support.paths import SCENARIOS

SCENARIO_DIR = SCENARIOS
SEEDS = {
    "client": 0x11,
    "mallory": 0x22,
    "server": 0x33,
    "other": 0x44,
    "listener_a": 0x55,
    "listener_b": 0x66,
}
ACTORS = {
    name: HostIdentity.from_private_bytes(bytes([s]) * 32, bytes([s]) * 32)
    for name, s in SEEDS.items()
}
PORT = 7
HOST_SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=1000)
# The events a successful step must emit, by op (in this order, possibly among others).
EXPECTED_EVENTS: dict[str, list[str]] = {
    "create_cap": ["SpendingCapCreated"],
    "open": ["SpendingCapReserved", "ConnectionOpened"],
    "top_up": ["SpendingCapReserved", "EscrowToppedUp"],
    "claim": ["ReceiptClaimed"],
    "finalize": ["ConnectionClosed"],
    "settle": ["EscrowRefunded", "ConnectionSettled"],
    "settle_with_receipt": ["ReceiptClaimed", "EscrowRefunded", "ConnectionSettled"],
    "deny": ["HostUpdated"],
    "allow": ["HostUpdated"],
    "set_firewall_mode": ["HostUpdated"],
    "set_client_limits": ["HostUpdated"],
    "broadcast_create": ["BroadcastCreated"],
    "broadcast_create_ticketed": ["BroadcastCreated"],
    "contribute": ["BroadcastContributed"],
    "transmit": ["BroadcastTransmitted"],
    "broadcast_claim": ["BroadcastClaimed"],
    "broadcast_cancel": ["BroadcastCancelled"],
    "broadcast_withdraw": ["ContributionRefunded"],
    "broadcast_leave": ["ContributionRefunded"],
    "broadcast_heartbeat": ["BroadcastHeartbeat"],
    # payment models (docs/escrow.md §13-16)
    "offer_create": ["SubscriptionOfferCreated"],
    "subscribe": ["Subscribed"],
    "renew": ["SubscriptionRenewed"],
    "subscription_claim": ["SubscriptionClaimed"],
    "offer_withdraw": ["SubscriptionOfferWithdrawn"],
    "subscription_refund": ["SubscriptionRefunded"],
    "open_subscribed": ["SpendingCapReserved", "ConnectionOpened", "SubscribedConnectionOpened"],
    "end_subscribed": [
        "ConnectionClosed",
        "EscrowRefunded",
        "ConnectionSettled",
        "SubscribedConnectionEnded",
    ],
    "sponsor_create": ["SponsorPoolCreated"],
    "sponsor_fund": ["SponsorPoolFunded"],
    "sponsor_withdraw": ["SponsorPoolWithdrawn"],
    "sponsor_set_max_pledge": ["SponsorPledgeLimitChanged"],
    "set_cap": ["SpendingCapChanged"],
    "set_authority": ["HostUpdated"],
    "open_sponsored": ["SpendingCapReserved", "ConnectionOpened", "SponsoredConnectionOpened"],
    "reimburse": ["SponsorReimbursed"],
    "destroy": ["ConnectionDeleted"],
    # (SponsorReimbursed before it when the lane still held the pledge)
    "reimburse_and_destroy": ["ConnectionDeleted"],
    "ticket_sale_create": ["TicketSaleCreated"],
    "buy_tickets": ["TicketsBought"],
    "go_on_air": ["TicketedEventOnAir"],
    "ticket_sale_cancel": ["TicketSaleCancelled"],
    "refund_tickets": ["TicketsRefunded"],
    "retention_terms": ["RetentionTermsCreated"],
    "retire_terms": ["RetentionTermsRetired"],
    "replace_terms": ["RetentionTermsRetired", "RetentionTermsCreated"],
    "create_pipe": ["PipeCreated"],
    "send_retained": ["PipeDataSent", "RecordRetained"],
    "confirm_consumed": ["RecordConsumed"],
    "delete_retained": ["RecordDeleted"],
    "pay": ["PaymentSent"],
}


def load_scenarios() -> list[dict[str, Any]]:
    scenarios = []
    for path in sorted(SCENARIO_DIR.glob("*.toml")):
        with path.open("rb") as f:
            for scenario in tomllib.load(f)["scenario"]:
                scenario["_file"] = path.name
                scenarios.append(scenario)
    return scenarios


SCENARIOS = load_scenarios()


class World(Protocol):
    """A fresh ledger for one scenario (clock at 0 ms, epoch 0) and its surroundings."""

    ledger: Ledger

    def fund(self, address: str, amount: int) -> None:
        """Give ``address`` ``amount`` MIST (counted as minted by the scenario)."""

    def set_clock(self, ms: int) -> None: ...

    def advance_clock(self, ms: int) -> None: ...

    def next_epoch(self) -> None: ...

    def balance(self, address: str) -> int:
        """``address``'s balance as the scenarios count it: without gas."""

    def assert_conserved(self, minted: int) -> None:
        """Every MIST the scenario minted is held somewhere (or was paid as gas)."""

    def snapshot(self) -> Any:
        """What a failed step must leave unchanged."""


class LocalWorld:
    """The scenarios on LocalLedger (gas is free there)."""

    def __init__(self) -> None:
        self.ledger = LocalLedger(":memory:", clock_ms=0)

    def fund(self, address: str, amount: int) -> None:
        self.ledger.faucet(address, amount)

    def set_clock(self, ms: int) -> None:
        self.ledger.set_clock(ms)

    def advance_clock(self, ms: int) -> None:
        self.ledger.advance_clock(ms)

    def next_epoch(self) -> None:
        self.ledger.advance_epoch()

    def balance(self, address: str) -> int:
        return self.ledger.balance(address)

    def assert_conserved(self, minted: int) -> None:
        audit = self.ledger.audit()
        assert audit["minted"] == minted
        assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]

    def snapshot(self) -> Any:
        return self.ledger.dump()


class Runner:
    """Executes one scenario on a fresh ledger (a LocalLedger unless ``world`` is given)."""

    def __init__(self, scenario: dict[str, Any], world: World | None = None) -> None:
        self.scenario = scenario
        self.world: World = world if world is not None else LocalWorld()
        self.ledger = self.world.ledger
        self.caps: dict[str, str] = {}
        self.conns: dict[str, str] = {}
        #: The sponsor lane (by place) each sponsored connection opened through.
        self.lanes: dict[str, int] = {}
        self.host_id: str | None = None
        self.broadcast_id: str | None = None
        # payment models: one offer, subscription, pool, sale and terms per scenario
        self.model: dict[str, str] = {}
        self.pipes: dict[str, str] = {}
        self.records: dict[str, str] = {}
        self.cursor: str | None = None
        self.minted = 0

    def addr(self, actor: str) -> str:
        return ACTORS[actor].sui_address

    # setup

    def setup(self) -> None:
        setup = self.scenario["setup"]
        fixture = setup["fixture"]
        if fixture == "none":
            assert set(setup) == {"fixture"}, f"unknown setup keys {setup}"
            return
        assert fixture == "host", f"unknown fixture {fixture!r}"
        known = {"fixture", "service_max_connections", "cap_max_per_epoch", "client_funds"}
        assert set(setup) <= known, f"unknown setup keys {set(setup) - known}"
        server, client = ACTORS["server"], ACTORS["client"]
        self.host_id = self.ledger.create_host(server, b"\x01" * 32, ["tcp://127.0.0.1:7000"])
        self.ledger.add_service(
            server, self.host_id, PORT, "raw", HOST_SLA, setup["service_max_connections"]
        )
        self.caps["client"] = self.ledger.create_spending_cap(client, setup["cap_max_per_epoch"])
        self.fund("client", setup["client_funds"])
        self.cursor = self.ledger.events()[1]

    def fund(self, actor: str, amount: int) -> None:
        self.world.fund(self.addr(actor), amount)
        self.minted += amount

    # steps

    def receipt(self, conn: str, spec: dict[str, Any]) -> Receipt:
        assert set(spec) == {"total_bytes", "total_requests", "total_amount", "nonce", "signer"}
        return Receipt(
            self.ledger.receipt_scope(self.conns[conn]),
            spec["total_bytes"],
            spec["total_requests"],
            spec["total_amount"],
            spec["nonce"],
        ).sign(ACTORS[spec["signer"]])

    def op(self, step: dict[str, Any]) -> Callable[[], Any]:
        ledger, op = self.ledger, step["op"]
        by = ACTORS[step["by"]] if "by" in step else None
        host = self.host_id or ""

        def conn() -> str:
            return self.conns[step["conn"]]

        table: dict[str, Callable[[], Any]] = {
            "fund": lambda: self.fund(step["to"], step["amount"]),
            "create_cap": lambda: self.caps.__setitem__(
                step["by"], ledger.create_spending_cap(by, step["max_per_epoch"])
            ),
            "set_cap": lambda: ledger.set_max_per_epoch(
                by, self.caps[step["by"]], step["max_per_epoch"]
            ),
            "set_authority": lambda: ledger.set_authority(by, host, self.addr(step["to"])),
            "update_service": lambda: ledger.update_service(
                by,
                host,
                PORT,
                Sla(
                    step["price_per_kib"],
                    step["price_per_request"],
                    step["min_deposit"],
                    step["half_close_timeout_ms"],
                ),
                step["max_connections"],
            ),
            "open": lambda: self.open(step),
            "top_up": lambda: ledger.top_up(
                by, ledger.get_connection(conn()).escrow, step["amount"]
            ),
            "pay": lambda: ledger.pay(
                by, self.addr(step["to"]), step["amount"], step["memo"].encode()
            ),
            "claim": lambda: ledger.claim(
                by,
                ledger.get_connection(conn()).escrow,
                self.receipt(step["conn"], step["receipt"]),
            ),
            "destroy": lambda: ledger.destroy_connection(by, conn()),
            "reimburse_and_destroy": lambda: ledger.reimburse_and_destroy(by, conn()),
            "close": lambda: ledger.close_connection(by, conn()),
            "finalize": lambda: ledger.finalize(by, conn()),
            "settle": lambda: ledger.settle(by, conn()).refunded,
            "settle_with_receipt": lambda: (
                ledger.settle_with_receipt(
                    by, conn(), self.receipt(step["conn"], step["receipt"])
                ).paid
            ),
            "deny": lambda: ledger.deny(by, host, self.addr(step["client"])),
            "allow": lambda: ledger.allow(by, host, self.addr(step["client"])),
            "set_firewall_mode": lambda: ledger.set_firewall_mode(by, host, step["mode"]),
            "set_client_limits": lambda: ledger.set_client_limits(
                by,
                host,
                step["max_connections_per_client"],
                step["max_bytes_per_sec"],
                step["max_requests_per_sec"],
            ),
            "set_clock": lambda: self.world.set_clock(step["ms"]),
            "advance_clock": lambda: self.world.advance_clock(step["ms"]),
            "next_epoch": self.world.next_epoch,
            "broadcast_create": lambda: self.create_broadcast(step),
            "broadcast_create_ticketed": lambda: self.create_broadcast(step, ticketed=True),
            "contribute": lambda: ledger.broadcast_contribute(by, self.bcast(), step["amount"]),
            "transmit": lambda: ledger.broadcast_transmit(by, self.bcast(), step["data"].encode()),
            "broadcast_claim": lambda: ledger.broadcast_claim(by, self.bcast()),
            "broadcast_cancel": lambda: ledger.broadcast_cancel(by, self.bcast()),
            "broadcast_withdraw": lambda: ledger.broadcast_withdraw(by, self.bcast()),
            "broadcast_leave": lambda: ledger.broadcast_leave(by, self.bcast()),
            "broadcast_heartbeat": lambda: ledger.broadcast_heartbeat(by, self.bcast()),
            "check": lambda: self.check(step),
            **self.model_ops(step),
        }
        if op not in table:
            pytest.fail(f"scenario {self.scenario['name']}: op {op!r} has no runner support")
        return table[op]

    def model_ops(self, step: dict[str, Any]) -> dict[str, Callable[[], Any]]:
        """Ops of the payment models (docs/escrow.md §13-16)."""
        ledger, m = self.ledger, self.model
        by = ACTORS[step["by"]] if "by" in step else None
        host = self.host_id or ""

        def keep(key: str, value: str) -> None:
            m[key] = value

        def opened(opened: Any) -> None:
            self.conns[step["conn"]] = opened.connection_id
            if "lane" in step:
                self.lanes[step["conn"]] = step["lane"]

        def lane(index: int) -> str:
            """The ID of the pool's lane ``index`` (the scenario names lanes by place)."""
            return ledger.get_sponsor_pool(m["pool"]).lanes[index]

        def record() -> str:
            return self.records[step["record"]]

        return {
            "offer_create": lambda: keep(
                "offer",
                ledger.create_subscription_offer(
                    by, host, PORT, step["price_per_epoch"], step["period_epochs"]
                ),
            ),
            "subscribe": lambda: keep("sub", ledger.subscribe(by, m["offer"], step["epochs"])),
            "renew": lambda: ledger.renew_subscription(by, m["sub"], step["epochs"]),
            "subscription_claim": lambda: ledger.claim_subscription(by, m["sub"]),
            "offer_withdraw": lambda: ledger.withdraw_subscription_offer(by, m["offer"]),
            "subscription_refund": lambda: ledger.refund_subscription(by, m["sub"]),
            "open_subscribed": lambda: opened(
                ledger.open_subscribed_connection(
                    by, m["sub"], self.caps[step["by"]], step["deposit"]
                )
            ),
            "end_subscribed": lambda: ledger.end_subscribed_connection(
                by, self.conns[step["conn"]], m["sub"]
            ),
            "sponsor_create": lambda: keep(
                "pool",
                ledger.create_sponsor_pool(
                    by,
                    host,
                    PORT,
                    step["share_bps"],
                    max_pledge=step["max_pledge"],
                    lanes=step.get("lanes", 1),
                ),
            ),
            "sponsor_fund": lambda: ledger.fund_sponsor_pool(
                by, m["pool"], step["amount"], lane=lane(step.get("lane", 0))
            ),
            "sponsor_withdraw": lambda: ledger.withdraw_sponsor_pool(
                by, m["pool"], step["amount"], lane=lane(step.get("lane", 0))
            ),
            "sponsor_set_max_pledge": lambda: ledger.set_sponsor_max_pledge(
                by, m["pool"], step["max_pledge"]
            ),
            "open_sponsored": lambda: opened(
                ledger.open_sponsored_connection(
                    by,
                    m["pool"],
                    self.caps[step["by"]],
                    step["deposit"],
                    lane=lane(step.get("lane", 0)),
                )
            ),
            # through the lane the connection opened through, unless the step names one
            "reimburse": lambda: ledger.reimburse(
                by,
                m["pool"],
                self.conns[step["conn"]],
                lane=lane(step.get("lane", self.lanes.get(step["conn"], 0))),
            ),
            "ticket_sale_create": lambda: keep(
                "sale",
                ledger.create_ticket_sale(
                    by,
                    step["title"],
                    step["ticket_price"],
                    step["min_tickets"],
                    step["max_tickets"],
                    step["deadline_ms"],
                ),
            ),
            "buy_tickets": lambda: ledger.buy_tickets(by, m["sale"], step["count"]),
            "go_on_air": lambda: ledger.go_on_air(by, m["sale"]),
            "ticket_sale_cancel": lambda: ledger.cancel_ticket_sale(by, m["sale"]),
            "refund_tickets": lambda: ledger.refund_tickets(by, m["sale"]),
            "retention_terms": lambda: keep(
                "terms",
                ledger.create_retention_terms(
                    by, host, PORT, step["retention_ms"], step["storage_price_per_byte"]
                ),
            ),
            "retire_terms": lambda: ledger.retire_retention_terms(by, m["terms"]),
            "replace_terms": lambda: keep(
                "terms",
                ledger.replace_retention_terms(
                    by, m["terms"], step["retention_ms"], step["storage_price_per_byte"]
                ),
            ),
            "create_pipe": lambda: self.pipes.__setitem__(
                step["by"], ledger.create_pipe(by, self.conns[step["conn"]], step["inners"])
            ),
            "send_retained": lambda: self.records.__setitem__(
                step["record"],
                ledger.send_retained(
                    by, self.pipes[step["by"]], m["terms"], step["inner"], step["data"].encode()
                ),
            ),
            "confirm_consumed": lambda: ledger.confirm_consumed(by, record()),
            "delete_retained": lambda: ledger.delete_retained(by, record()),
        }

    def check_models(self, step: dict[str, Any]) -> None:
        """The payment models' ``check`` keys."""
        ledger = self.ledger
        if "subscription" in step:
            sub = ledger.get_subscription(self.model["sub"])
            for key, expected in step["subscription"].items():
                if key == "live":
                    assert sub.is_live(ledger.epoch()) == expected, "subscription live"
                else:
                    assert key in {"start_epoch", "expires_epoch", "claimed_epochs", "funds"}, key
                    assert getattr(sub, key) == expected, f"subscription.{key}"
            span = sub.expires_epoch - sub.start_epoch - sub.claimed_epochs
            assert sub.funds == span * sub.price_per_epoch, "subscription funds invariant"
        if "sponsor" in step:
            pool = ledger.get_sponsor_pool(self.model["pool"])
            lanes = ledger.get_sponsor_lanes(pool.id)
            totals = {
                "funds": sum(one.funds for one in lanes),
                "reserved": sum(one.reserved for one in lanes),
                "max_pledge": pool.max_pledge,
            }
            for key, expected in step["sponsor"].items():
                if key == "quote":
                    fee, client_part, provider_part = expected
                    assert pool.quote(fee) == (client_part, provider_part), "quote"
                elif key == "lanes":
                    got = [[one.funds, one.reserved, one.pledges] for one in lanes]
                    assert got == expected, "sponsor.lanes"
                else:
                    assert key in totals, key
                    assert totals[key] == expected, f"sponsor.{key}"
            for one in lanes:
                assert 0 <= one.reserved <= one.funds, f"lane {one.id}"
        if "tickets" in step:
            sale = ledger.get_ticket_sale(self.model["sale"])
            for key, expected in step["tickets"].items():
                assert key in {"sold", "funds", "on_air"}, key
                assert getattr(sale, key) == expected, f"tickets.{key}"
            assert sum(sale.holders.values()) == sale.sold
            if not sale.on_air:
                assert sale.funds == sale.sold * sale.ticket_price
        if "record" in step:
            spec = dict(step["record"])
            record_id = self.records[spec.pop("record")]
            if spec.pop("deleted", False):
                with pytest.raises(ObjectNotFound):
                    ledger.get_retained_record(record_id)
            for key, expected in spec.items():
                assert key in {"deposit", "consumed", "seq", "reclaim_after_ms"}, key
                assert getattr(ledger.get_retained_record(record_id), key) == expected, key

    def bcast(self) -> str:
        assert self.broadcast_id is not None, "no broadcast created yet"
        return self.broadcast_id

    def open(self, step: dict[str, Any]) -> None:
        actor = step["by"]
        key = ACTORS["mallory"].ed25519_public if actor == "other" else None
        opened = self.ledger.open_connection(
            ACTORS[actor], self.host_id or "", PORT, self.caps[actor], step["deposit"], key
        )
        self.conns[step["conn"]] = opened.connection_id

    def create_broadcast(self, step: dict[str, Any], *, ticketed: bool = False) -> None:
        by, args = ACTORS[step["by"]], (step["channel"], step["slot_price"], step["slot_ms"])
        if ticketed:
            self.broadcast_id = self.ledger.create_ticketed_broadcast(by, self.model["sale"], *args)
        else:
            self.broadcast_id = self.ledger.create_broadcast(by, *args)

    # checks

    def check(self, step: dict[str, Any]) -> None:
        known = {"op", "balances", "escrow", "connection", "cap", "host", "broadcast"}
        known |= {"subscription", "sponsor", "tickets", "record"}
        unknown = set(step) - known
        if unknown:
            pytest.fail(f"check keys {unknown} have no runner support")
        ledger = self.ledger
        for actor, expected in step.get("balances", {}).items():
            assert self.world.balance(self.addr(actor)) == expected, f"balance of {actor}"
        if "escrow" in step:
            spec = dict(step["escrow"])
            escrow = ledger.get_escrow(ledger.get_connection(self.conns[spec.pop("conn")]).escrow)
            for key, expected in spec.items():
                assert key in {
                    "balance",
                    "claimed",
                    "refunded",
                    "latest_nonce",
                    "settled",
                    "reserved",
                    "claim_epoch",
                    "claimed_in_epoch",
                }, key
                assert getattr(escrow, key) == expected, f"escrow.{key}"
            assert escrow.balance == escrow.deposited - escrow.claimed - escrow.refunded
        if "connection" in step:
            spec = dict(step["connection"])
            cid = self.conns[spec.pop("conn")]
            if spec.pop("deleted", False):
                # (deleted: read as unknown, as an ID never on the ledger)
                assert not spec, f"connection check keys {set(spec)} of a deleted connection"
                with pytest.raises(ObjectNotFound):
                    ledger.get_connection(cid)
            for key, expected in spec.items():
                tc = ledger.get_connection(cid)
                if key == "state":
                    assert tc.state.label == expected
                elif key == "settled":
                    assert tc.settled == expected
                elif key == "half_close_timeout_ms":
                    assert tc.half_close_timeout_ms == expected, key
                else:
                    pytest.fail(f"connection check key {key!r} has no runner support")
        if "cap" in step:
            spec = dict(step["cap"])
            cap = ledger.get_cap(self.caps[spec.pop("owner")])
            for key, expected in spec.items():
                if key == "remaining":
                    assert cap.remaining(ledger.epoch()) == expected, "cap.remaining"
                else:
                    assert key in {"epoch", "claimed", "outstanding", "max_per_epoch"}, key
                    assert getattr(cap, key) == expected, f"cap.{key}"
        if "host" in step:
            h = ledger.get_host(self.host_id or "")
            for key, expected in step["host"].items():
                if key == "max_connections":
                    assert h.services[PORT].max_connections == expected, key
                elif key == "max_connections_per_client":
                    assert h.firewall.max_connections_per_client == expected, key
                else:
                    pytest.fail(f"host check key {key!r} has no runner support")
        if "broadcast" in step:
            spec = dict(step["broadcast"])
            b = ledger.get_broadcast(self.bcast())
            for key, expected in spec.items():
                if key == "on_air":
                    assert ledger.is_on_air(b.id) == expected, "on_air"
                elif key in ("earned", "pool"):
                    assert getattr(b, key) == expected, f"broadcast.{key}"
                elif key == "ticketed":
                    sale = self.model.get("sale") if expected else None
                    assert b.ticket_sale == sale, "broadcast.ticket_sale"
                else:
                    pytest.fail(f"broadcast check key {key!r} has no runner support")
        self.check_models(step)

    # driving

    def new_events(self) -> list[Event]:
        events, self.cursor = self.ledger.events(self.cursor)
        return events

    def assert_conserved(self) -> None:
        self.world.assert_conserved(self.minted)

    def run(self) -> None:
        self.setup()
        steps = self.scenario["step"]
        for index, step in enumerate(steps):
            where = f"{self.scenario['name']} step {index} ({step['op']})"
            call = self.op(step)
            if "error" in step:
                assert index == len(steps) - 1, f"{where}: a failing step must be the last"
                before = self.world.snapshot()
                with pytest.raises(ChainError) as info:
                    call()
                assert info.value.qualified_name == step["error"], where
                assert str(info.value), "errors carry a message"
                after = self.world.snapshot()
                assert after == before, f"{where}: state changed by a failed call"
                assert self.new_events() == []
                return
            result = call()
            if "returns" in step:
                assert result == step["returns"], where
            names = [e.name for e in self.new_events()]
            expected = EXPECTED_EVENTS.get(step["op"], [])
            it = iter(names)
            assert all(name in it for name in expected), f"{where}: events {names}"
            if step["op"] == "close":
                assert names in (["ConnectionHalfClosed"], ["ConnectionClosed"]), where
            if step["op"] in ("fund", "check", "set_clock", "advance_clock", "next_epoch"):
                assert names == [], where
            self.assert_conserved()
