"""A sponsor pool's lanes (docs/escrow.md §14, §19), on LocalLedger and on SuiLedger over
the node stand-in alike, to the MIST:

- two clients' sponsored opens and reimbursements write disjoint sets of shared objects:
  each its own lane and cap, never the pool or the host (on the stand-in also as Sui
  orders them: the shared inputs a transaction takes mutably, and what its effects
  changed);
- a reimbursement removes its pledge: the lane's Table keeps no entry (on the stand-in,
  the entry's dynamic field is deleted and its storage rebate paid back);
- a pool's funding spreads over its lanes, a withdrawal takes from the best funded, an
  open falls back to a lane that can pledge, and no lane pledges more than it holds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 import ChangedObjectIdOperation

import tests.ledger.deletion_tx_cases as deletion_cases
from dtp.errors import ChainError, InsufficientFunds, InvalidArgument, SponsorUnfunded
from dtp.identity.keys import HostIdentity
from dtp.ledger._economics import (
    PaymentModels,
    gather_from_lanes,
    lane_order,
    spread_over_lanes,
)
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.ledger.sui import _tx as sui_tx
from dtp.ledger.sui import _tx_deletion as sui_tx_deletion
from dtp.ledger.sui._codec import id_field_id
from dtp.ledger.sui._economics import pledges_table_id
from dtp.payments.receipts import Receipt
from dtp.testing.sui_node._ptb import ObjectInput, parse_tx
from tests.ledger.payment_model_cases import CASES, LANE, POOL
from tests.ledger.standin_ledger import GAS, StandInLedger
from tests.ledger.sui_tx_cases import CAP, CONN, ESCROW, HOST
from tests.support.paths import ROOT

SLA = Sla(10, 5, 1000)
FUNDS = 100_000


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


PROVIDER, ALICE, BOB = ident(0x61), ident(0x62), ident(0x63)


class Ledger:
    """One of the two ledgers, with what the tests read of it beyond the interface: an
    object's version, and the shared objects the last transactions took mutably (the
    stand-in only: LocalLedger's calls name no mutability)."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.mutable: list[set[str]] = []
        self.effects: list[Any] = []
        if kind == "local":
            self.led: Any = LocalLedger(tmp_path / "ledger.sqlite", clock_ms=0)
        else:
            self.led = StandInLedger((PROVIDER, ALICE, BOB))
            node = self.led.sui._node
            execute = node.execute

            def recorded(tx_bytes: bytes, signature: bytes) -> Any:
                shared = [i for i in parse_tx(tx_bytes).inputs if isinstance(i, ObjectInput)]
                self.mutable.append({i.object_id for i in shared if i.mutable})
                answer = execute(tx_bytes, signature)
                self.effects.append(answer.effects)
                return answer

            node.execute = recorded
        for who in (PROVIDER, ALICE, BOB):
            self.led.faucet(who.sui_address, FUNDS)

    def version(self, object_id: str) -> int:
        if self.kind == "local":
            return int(self.led.object_ref(object_id).version)
        row = self.led.node.state.object(object_id)
        assert row is not None, object_id
        return int(row.version)

    def written(self, ids: list[str], call: Callable[[], Any]) -> tuple[Any, set[str]]:
        """``call``'s result and which of ``ids`` it wrote (their versions moved)."""
        before = {i: self.version(i) for i in ids}
        result = call()
        return result, {i for i in ids if self.version(i) != before[i]}

    def close(self) -> None:
        self.led.close()


@pytest.fixture(params=["local", "stand-in"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    world = Ledger(request.param, tmp_path)
    yield world
    world.close()


def conserved(led: Any) -> None:
    audit = led.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


def host_with_pool(led: Any, lanes: int, funds: int) -> tuple[str, str, tuple[str, ...]]:
    """PROVIDER's host with a half-sponsoring pool of ``lanes`` lanes holding ``funds``."""
    host = led.create_host(PROVIDER, b"\x01" * 32)
    led.add_service(PROVIDER, host, 7, "raw", SLA)
    pool = led.create_sponsor_pool(PROVIDER, host, 7, 5_000, max_pledge=10**9, lanes=lanes)
    led.fund_sponsor_pool(PROVIDER, pool, funds)
    return host, pool, led.get_sponsor_pool(pool).lanes


def cap_on_another_lane(led: Any, who: HostIdentity, lanes: tuple[str, ...], taken: str) -> str:
    """A cap of ``who``'s whose home lane is not ``taken`` (caps fall on lanes by their
    random IDs: a few tries at most)."""
    for _ in range(40):
        cap = led.create_spending_cap(who, 10**6)
        if lane_order(lanes, cap)[0] != taken:
            return str(cap)
    raise AssertionError("40 caps on one lane of several")


def test_two_clients_sponsored_opens_write_disjoint_shared_objects(ledger: Ledger) -> None:
    led = ledger.led
    host, pool, lanes = host_with_pool(led, 4, 4_000)
    assert [lane.funds for lane in led.get_sponsor_lanes(pool)] == [1_000] * 4
    cap_a = led.create_spending_cap(ALICE, 10**6)
    lane_a = lane_order(lanes, cap_a)[0]
    cap_b = cap_on_another_lane(led, BOB, lanes, lane_a)
    lane_b = lane_order(lanes, cap_b)[0]
    shared = [pool, *lanes, host, cap_a, cap_b]
    ledger.mutable.clear()
    opened_a, wrote_a = ledger.written(
        shared, lambda: led.open_sponsored_connection(ALICE, pool, cap_a, 1_000)
    )
    opened_b, wrote_b = ledger.written(
        shared, lambda: led.open_sponsored_connection(BOB, pool, cap_b, 1_000)
    )
    # each open wrote its client's lane and cap, and nothing the other wrote: not the pool,
    # not the host
    assert wrote_a == {lane_a, cap_a} and wrote_b == {lane_b, cap_b}
    assert not wrote_a & wrote_b
    pledge_a = led.get_sponsor_pledge(pool, opened_a.connection_id)
    pledge_b = led.get_sponsor_pledge(pool, opened_b.connection_id)
    assert (pledge_a.lane, pledge_a.amount, pledge_b.lane, pledge_b.amount) == (
        lane_a,
        500,
        lane_b,
        500,
    )
    if ledger.kind == "stand-in":
        # as Sui orders them: the only shared objects each takes mutably are its own
        assert ledger.mutable == [{lane_a, cap_a}, {lane_b, cap_b}]
    tables = {}
    if ledger.kind == "stand-in":
        node = led.node
        for lane in (lane_a, lane_b):
            row = node.state.object(lane)
            tables[lane] = pledges_table_id(row.contents)
            assert len(node.state.fields(tables[lane], "", 100)) == 1  # the pledge's entry
    # both served, settled with a receipt of 120 MIST, and reimbursed its half: 60
    for who, opened in ((ALICE, opened_a), (BOB, opened_b)):
        scope = led.receipt_scope(opened.connection_id)
        led.close_connection(who, opened.connection_id)
        led.settle_with_receipt(
            PROVIDER, opened.connection_id, Receipt(scope, 10_240, 4, 120, 1).sign(who)
        )
    ledger.mutable.clear()
    ledger.effects.clear()
    rebates = {}
    if ledger.kind == "stand-in":
        for lane, opened in ((lane_a, opened_a), (lane_b, opened_b)):
            field = id_field_id(tables[lane], opened.connection_id)
            rebates[field] = led.node.state.object(field).storage_rebate
    tcs = [opened_a.connection_id, opened_a.escrow_id, opened_b.connection_id, opened_b.escrow_id]
    paid_a, back_a = ledger.written(
        shared + tcs, lambda: led.reimburse(ALICE, pool, opened_a.connection_id)
    )
    paid_b, back_b = ledger.written(
        shared + tcs, lambda: led.reimburse(PROVIDER, pool, opened_b.connection_id)
    )
    assert (paid_a, paid_b) == (60, 60)
    # a reimbursement writes only its lane: the connection's objects and the pool are read
    assert back_a == {lane_a} and back_b == {lane_b}
    # ... and leaves no entry behind
    for lane in led.get_sponsor_lanes(pool):
        assert (lane.reserved, lane.pledges) == (0, 0)
        assert lane.funds == (940 if lane.id in (lane_a, lane_b) else 1_000)
    assert led.get_sponsor_pledge(pool, opened_a.connection_id) is None
    assert led.get_sponsor_pledge(pool, opened_b.connection_id) is None
    if ledger.kind == "local":
        assert all(led._model_data(lane, "SponsorLane")["pledges"] == {} for lane in lanes)
    else:
        assert ledger.mutable == [{lane_a}, {lane_b}]
        for lane in (lane_a, lane_b):
            assert led.node.state.fields(tables[lane], "", 100) == []
        # the entry's dynamic field deleted by the reimbursement, its storage paid back
        for effects in ledger.effects:
            deleted = {
                co.object_id
                for co in effects.changed_objects
                if co.id_operation == ChangedObjectIdOperation.DELETED
            }
            (field,) = deleted & set(rebates)
            assert rebates[field] > 0
            assert effects.gas_used.storage_rebate >= rebates[field] * 99 // 100
    # to the MIST: each client paid 120 and got 60 back, the provider earned 240 and its
    # pool paid 120 of it
    assert led.balance(ALICE.sui_address) == FUNDS - 60
    assert led.balance(BOB.sui_address) == FUNDS - 60
    assert led.balance(PROVIDER.sui_address) == FUNDS - 4_000 + 240
    conserved(led)


def test_pool_funding_spreads_and_a_withdrawal_takes_from_the_best_funded(
    ledger: Ledger,
) -> None:
    led = ledger.led
    _host, pool, lanes = host_with_pool(led, 4, 10_001)
    assert [lane.funds for lane in led.get_sponsor_lanes(pool)] == [2_501, 2_500, 2_500, 2_500]
    # a pledge of 2000 from the first lane; the pool's lanes then hold 501, 2500, 2500, 2500
    cap = led.create_spending_cap(ALICE, 10**6)
    led.open_sponsored_connection(ALICE, pool, cap, 4_000, lane=lanes[0])
    # the best funded give first, towards one level: 501, 1375, 1375, 1375 unpledged
    led.withdraw_sponsor_pool(PROVIDER, pool, 3_375)
    got = [(lane.funds, lane.reserved) for lane in led.get_sponsor_lanes(pool)]
    assert got == [(2_501, 2_000), (1_375, 0), (1_375, 0), (1_375, 0)]
    # the least funded take first: 874 of 1000 bring the first lane to the others' level,
    # the rest goes to all four alike (the odd MIST to the first)
    led.fund_sponsor_pool(PROVIDER, pool, 1_000)
    assert [lane.available for lane in led.get_sponsor_lanes(pool)] == [1_407, 1_407, 1_406, 1_406]
    led.fund_sponsor_pool(PROVIDER, pool, 7, lane=lanes[3])  # or one lane, named
    assert led.get_sponsor_lane(lanes[3]).available == 1_413
    # more than the lanes hold unpledged, or than the funder holds: refused, nothing moved
    before = led.dump()
    with pytest.raises(SponsorUnfunded):
        led.withdraw_sponsor_pool(PROVIDER, pool, 5_634)
    held = FUNDS + (GAS if ledger.kind == "stand-in" else 0)  # (its gas grant too)
    with pytest.raises(InsufficientFunds):
        led.fund_sponsor_pool(BOB, pool, held + 1)
    assert led.dump() == before
    led.withdraw_sponsor_pool(PROVIDER, pool, 5_633)  # all of it
    assert [lane.available for lane in led.get_sponsor_lanes(pool)] == [0, 0, 0, 0]
    assert led.balance(PROVIDER.sui_address) == FUNDS - 10_001 - 1_007 + 3_375 + 5_633
    conserved(led)


def test_an_open_takes_the_next_lane_that_can_pledge(ledger: Ledger) -> None:
    led = ledger.led
    _host, pool, lanes = host_with_pool(led, 3, 3_000)
    cap = led.create_spending_cap(ALICE, 10**6)
    order = lane_order(lanes, cap)
    led.withdraw_sponsor_pool(PROVIDER, pool, 1_000, lane=order[0])  # its home lane: empty
    opened = led.open_sponsored_connection(ALICE, pool, cap, 1_000)
    assert led.get_sponsor_pledge(pool, opened.connection_id).lane == order[1]
    # no lane can pledge 1000 of a 2000 deposit: refused by its home lane, nothing moved
    led.withdraw_sponsor_pool(PROVIDER, pool, 1_500)
    assert sorted(lane.available for lane in led.get_sponsor_lanes(pool)) == [0, 0, 0]
    before = led.dump()
    with pytest.raises(SponsorUnfunded) as info:
        led.open_sponsored_connection(ALICE, pool, cap, 2_000)
    if ledger.kind == "local":  # (a node's abort names no object)
        assert order[0] in str(info.value)
    assert led.dump() == before
    conserved(led)


# -- the lanes' arithmetic ------------------------------------------------------------------------


@given(
    amount=st.integers(0, 10**6),
    levels=st.lists(st.integers(0, 10**6), min_size=1, max_size=8),
)
def test_a_spread_raises_the_least_funded_lanes_towards_one_level(
    amount: int, levels: list[int]
) -> None:
    parts = spread_over_lanes(amount, levels)
    assert sum(parts) == amount and all(p >= 0 for p in parts)
    after = [v + p for v, p in zip(levels, parts, strict=True)]
    raised = [a for a, p in zip(after, parts, strict=True) if p]
    if raised:
        # the lanes it reached end a MIST apart at most, and none it skipped is lower
        # than they are but for the odd MIST
        assert max(raised) - min(raised) <= 1
        assert all(a >= max(raised) - 1 for a, p in zip(after, parts, strict=True) if not p)


@given(data=st.data(), levels=st.lists(st.integers(0, 10**6), min_size=1, max_size=8))
def test_a_gathering_lowers_the_best_funded_lanes_towards_one_level(
    data: st.DataObject, levels: list[int]
) -> None:
    amount = data.draw(st.integers(0, sum(levels)))
    parts = gather_from_lanes(amount, levels)
    assert sum(parts) == amount
    assert all(0 <= p <= v for p, v in zip(parts, levels, strict=True))
    after = [v - p for v, p in zip(levels, parts, strict=True)]
    lowered = [a for a, p in zip(after, parts, strict=True) if p]
    if lowered:
        assert max(lowered) - min(lowered) <= 1
        assert all(a <= min(lowered) + 1 for a, p in zip(after, parts, strict=True) if not p)
    with pytest.raises(InvalidArgument):
        gather_from_lanes(sum(levels) + 1, levels)


def test_lanes_are_tried_from_the_one_the_cap_falls_on() -> None:
    lanes = ("0xa", "0xb", "0xc")
    assert lane_order(lanes, "0x" + "00" * 31 + "04") == ["0xb", "0xc", "0xa"]  # 4 % 3 == 1
    assert lane_order(lanes, None) == ["0xa", "0xb", "0xc"]
    assert lane_order((), "0x5") == []


def test_a_failure_part_way_names_what_was_done_before_it() -> None:
    done: list[tuple[str, int]] = []

    def call(lane: str, part: int) -> None:
        if lane == "0xc":
            raise ChainError("refused", name="ESponsorUnfunded", module="sponsor")
        done.append((lane, part))

    with pytest.raises(ChainError) as info:
        PaymentModels._per_lane("withdrawn from", [("0xa", 5), ("0xb", 6), ("0xc", 7)], call)
    assert done == [("0xa", 5), ("0xb", 6)]
    (note,) = info.value.__notes__
    assert "5 MIST withdrawn from lane 0xa" in note and "6 MIST withdrawn from lane 0xb" in note


# -- docs/escrow.md §18 states what each sponsor call writes -------------------------------------


def _section_18_rows() -> dict[str, tuple[set[str], set[str]]]:
    """Move function -> (shared objects taken mutably, read-only ones but the Clock), as
    the §18 table states them for ``sponsor::``."""
    text = (ROOT / "docs" / "escrow.md").read_text()
    table = text[text.index("## 18. ") : text.index("## 19. ")]
    rows: dict[str, tuple[set[str], set[str]]] = {}
    for line in table.splitlines():
        if not line.startswith("| `sponsor::"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        structs = [set(re.findall(r"\b(?:[A-Z][a-z]+)+\b", c)) for c in cells[1:3]]
        for function in re.findall(r"`(?:sponsor::)?(\w+)`", cells[0]):
            rows[function] = (structs[0], structs[1] - {"Clock"})
    return rows


def test_the_docs_state_the_objects_each_sponsor_call_takes_as_it_takes_them() -> None:
    names = {
        POOL.object_id: "SponsorPool",
        LANE.object_id: "SponsorLane",
        HOST.object_id: "Host",
        CAP.object_id: "SpendingCap",
        CONN.object_id: "TransportControl",
        ESCROW.object_id: "Escrow",
    }
    rows = _section_18_rows()
    calls = {
        name: target[1]
        for name, target in sui_tx.ECONOMICS_TARGETS.items()
        if target[0] == "sponsor"
    }
    # (the deletion's builder is one of dtp.ledger.sui._tx_deletion's: its row of
    # MOVE_CALLS says what it takes mutably)
    deleting = {
        name: target[1]
        for name, target in sui_tx_deletion.DELETION_TARGETS.items()
        if target[0] == "sponsor" and name not in sui_tx_deletion.VARIANTS
    }
    assert set(rows) == set(calls.values()) | set(deleting.values())
    for builder, function in deleting.items():
        kinds = [kind for kind, _ in sui_tx.MOVE_CALLS[builder][2]]
        args = deletion_cases.CASES[builder][0]
        mutability = {ref.object_id: kind == "mut" for ref, kind in zip(args, kinds, strict=True)}
        writes = {names[i] for i, mutable in mutability.items() if mutable}
        reads = {names[i] for i, mutable in mutability.items() if not mutable}
        assert rows[function] == (writes, reads), function
    for builder, function in calls.items():
        mutability = CASES[builder][2]
        writes = {names[i] for i, mutable in mutability.items() if mutable}
        reads = {names[i] for i, mutable in mutability.items() if not mutable}
        assert rows[function] == (writes, reads), function
    # and no sponsored open or reimbursement writes what all of a service's clients share
    for function in ("open_connection", "reimburse"):
        assert "SponsorPool" not in rows[function][0] and "Host" not in rows[function][0]
