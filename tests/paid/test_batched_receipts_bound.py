"""Receipts that each cover several calls, on the paid server's sans-I/O engine
(PaidConnectionEngine and its ReceiptGate) and a virtual clock (docs/escrow.md §6.1;
docs/web-frontend.md, "Paying per call").

A client like the page's ``Payment`` signs once the usage no receipt covers reaches its
bound in MIST, or a time after the first call it left unsigned, and answers the server's
asks; the server stores each receipt (the writer lands it some calls later, or never)
and serves a call only when the engine says SERVE. Under random prices, bounds, call
sizes, write delays and clients that stop paying:

- the server never serves past what the receipts it kept cover plus its allowance (nor
  past the deposit): a call beyond that is paused, and a pause with no covering receipt
  for the pause timeout is cut (CLOSE, PAYMENT_REQUIRED);
- an honest client whose bound leaves room for a call beyond it within the allowance,
  each receipt kept before it signs the next, is never paused;
- the close's receipt is exactly the fee of what was served, to the MIST.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from dtp.hostid.paid._engine import PaidConnectionEngine, ReceiptStep
from dtp.hostid.paid._policy import ServicePolicy
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.receipt import Receipt, fee
from dtp.payments._gate import CLOSE_PAYMENT_REQUIRED, GateState, ReceiptGate
from dtp.payments._ratelimit import ClientBuckets, TokenBucket
from tests.support.scopes import scope_of

CID = "0x" + "b7" * 32
CLIENT = HostIdentity.from_private_bytes(b"\x57" * 32, b"\x57" * 32)
PAUSE_MS = 2_000


@dataclass
class World:
    """One paid connection: the client's bound, the server's engine, the writer's queue."""

    sla: Sla
    deposit: int
    every_amount: int
    every_ms: int
    engine: PaidConnectionEngine
    now_ms: int = 0
    usage: tuple[int, int] = (0, 0)
    nonce: int = 0
    signed: int = 0  # the amount of the client's latest receipt
    unsigned_since: int | None = None
    writing: list[Receipt] = field(default_factory=list)  # stored, not yet kept
    paused_since: int | None = None
    pauses: int = 0
    closed: bool = False
    silent: bool = False  # the client signs nothing more, on any bound

    @property
    def gate_ms(self) -> int:
        """The clock as the engine reads it: the drivers pass seconds, the gate counts
        whole ms (``int(now * 1000)``, which may read one ms short of ``now_ms``)."""
        return int(self.now_ms / 1000 * 1000)

    def verdict_for(self, extra: tuple[int, int]) -> GateState:
        total = (self.usage[0] + extra[0], self.usage[1] + extra[1])
        return self.engine.verdict(total, self.now_ms / 1000).state

    def sign(self) -> None:
        amount = fee(self.sla, *self.usage)
        if amount == self.signed or amount > self.deposit:
            return
        self.nonce += 1
        receipt = Receipt(scope_of(CID), *self.usage, amount, self.nonce).sign(CLIENT)
        step, checked = self.engine.receipt_frame(receipt.encode(), closed=False)
        assert step is ReceiptStep.STORE and checked is not None
        self.writing.append(checked)
        self.signed = amount
        self.unsigned_since = None

    def land(self, count: int) -> None:
        for receipt in self.writing[:count]:
            self.engine.kept(receipt)
        del self.writing[:count]

    def client_bound(self) -> None:
        """What the client does after a call: sign when its bound says so."""
        unsigned = fee(self.sla, *self.usage) - self.signed
        if unsigned <= 0:
            return
        if unsigned >= self.every_amount:
            self.sign()
        elif self.unsigned_since is None:
            self.unsigned_since = self.now_ms

    def tick(self, ms: int) -> None:
        self.now_ms += ms
        if self.silent:
            return
        if self.unsigned_since is not None and self.now_ms - self.unsigned_since >= self.every_ms:
            self.sign()


def _world(sla: Sla, deposit: int, every_amount: int, every_ms: int) -> World:
    gate = ReceiptGate(
        scope=scope_of(CID),
        client_public_key=CLIENT.ed25519_public,
        sla=sla,
        deposited=deposit,
        pause_timeout_ms=PAUSE_MS,
    )
    buckets = ClientBuckets(TokenBucket(0, 0.0), TokenBucket(0, 0.0))  # unlimited
    engine = PaidConnectionEngine(
        gate, buckets, ServicePolicy(pause_timeout=PAUSE_MS / 1000), CID, "0x" + "c7" * 32
    )
    return World(sla, deposit, every_amount, every_ms, engine)


SLAS = st.builds(
    Sla,
    price_per_kib=st.sampled_from([0, 0, 1, 40]),
    price_per_request=st.sampled_from([1, 7, 25]),
    min_deposit=st.sampled_from([25, 100, 1000, 2000]),
)
#: (kind, value): a call of that many bytes both ways; time passing; writes landing;
#: the client going silent for good
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("call"), st.integers(0, 3000)),
        st.tuples(st.just("tick"), st.integers(1, 1500)),
        st.tuples(st.just("land"), st.integers(0, 3)),
        st.tuples(st.just("silent"), st.just(0)),
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(
    sla=SLAS,
    deposit=st.integers(100, 20_000),
    every_fraction=st.sampled_from([0, 1, 2, 4, 8]),
    every_ms=st.integers(1, 3000),
    steps=STEPS,
)
def test_nothing_is_served_past_the_receipts_kept_plus_the_allowance(
    sla: Sla, deposit: int, every_fraction: int, every_ms: int, steps: list[tuple[str, int]]
) -> None:
    # the client's bound: 0 (a receipt a call), or the credit over 1, 2, 4 or 8 -- 1 is
    # the whole credit, which the server's copy in writing can only lag
    every_amount = 0 if not every_fraction else sla.min_deposit // every_fraction
    world = _world(sla, deposit, every_amount, every_ms)
    gate = world.engine.gate
    silent = False
    for kind, value in steps:
        if world.closed:
            break
        if kind == "tick":
            world.tick(value)
        elif kind == "land":
            world.land(value)
        elif kind == "silent":
            silent = world.silent = True
        if kind != "call" and world.paused_since is None:
            continue
        # a call (or the one paused, looked at again): a request and its bytes
        call = (value if kind == "call" else 0, 1 if kind == "call" else 0)
        if world.paused_since is not None:
            call = (0, 0)  # (the paused call is in the usage already)
        state = world.verdict_for(call)
        if state is GateState.SERVE:
            world.usage = (world.usage[0] + call[0], world.usage[1] + call[1])
            # the bound: what was served is paid by the receipts kept plus the allowance,
            # and the receipts never pass the deposit
            served = fee(sla, *world.usage)
            assert served <= gate.payable() + min(gate.allowance, deposit - gate.payable())
            world.paused_since = None
            if not silent:
                world.client_bound()
            continue
        if state is GateState.PAUSE:
            if world.paused_since is None:
                world.paused_since = world.gate_ms
                world.pauses += 1
                # the paused call is in the usage (the client sent it), not served
                world.usage = (world.usage[0] + call[0], world.usage[1] + call[1])
            if not silent:
                world.sign()  # the server asked: the client signs what it used, at once
            assert world.gate_ms - world.paused_since < PAUSE_MS
            continue
        # CLOSE: only a pause that lasted the timeout with nothing covering it
        assert state is GateState.CLOSE
        assert world.paused_since is not None and world.gate_ms - world.paused_since >= PAUSE_MS
        close = world.engine.payment_required(
            world.engine.verdict(world.usage, world.now_ms / 1000)
        )
        assert close.code == CLOSE_PAYMENT_REQUIRED
        world.closed = True
    if world.closed or silent:
        return
    # the close's receipt: exactly the fee of what was served (or the deposit's worth
    # where the usage ran past what it pays, which the client never signs beyond)
    world.sign()
    served = fee(sla, *world.usage)
    assert world.signed == (served if served <= deposit else world.signed)
    if served <= deposit:
        step, _ = world.engine.receipt_frame(
            Receipt(scope_of(CID), *world.usage, served, world.nonce + 1).sign(CLIENT).encode(),
            closed=True,
        )
        assert step is ReceiptStep.FINAL
        assert world.engine.final is not None and world.engine.final.total_amount == served


@settings(max_examples=100, deadline=None)
@given(
    price=st.sampled_from([1, 7, 25]),
    calls=st.lists(st.integers(1, 200), min_size=1, max_size=200),
    every_fraction=st.sampled_from([2, 4, 8]),
)
def test_an_honest_batched_client_is_never_paused(
    price: int, calls: list[int], every_fraction: int
) -> None:
    # bytes free, a credit of 40 calls, receipts at a half, a quarter or an eighth of it;
    # each receipt kept before the client signs the next (the writer keeps up)
    sla = Sla(price_per_kib=0, price_per_request=price, min_deposit=40 * price)
    world = _world(sla, 10**9, sla.min_deposit // every_fraction, 60_000)
    for size in calls:
        world.land(len(world.writing))
        assert world.verdict_for((size, 1)) is GateState.SERVE
        world.usage = (world.usage[0] + size, world.usage[1] + 1)
        world.client_bound()
        world.tick(1)
    receipts = world.nonce
    assert receipts <= len(calls) // (40 // every_fraction) + 1
    assert world.signed + world.every_amount > fee(sla, *world.usage) - 1


@settings(max_examples=100, deadline=None)
@given(
    sla=SLAS,
    every_fraction=st.sampled_from([1, 2, 4]),
    paying_calls=st.integers(0, 60),
    size=st.integers(0, 500),
    gaps=st.lists(st.integers(1, 700), min_size=1, max_size=8),
)
def test_a_client_that_stops_paying_is_paused_at_the_bound_then_cut(
    sla: Sla, every_fraction: int, paying_calls: int, size: int, gaps: list[int]
) -> None:
    world = _world(sla, 10**9, sla.min_deposit // every_fraction, 60_000)
    gate = world.engine.gate
    calls = 0
    while True:
        world.land(len(world.writing))  # (every receipt it did send is kept)
        state = world.verdict_for((size, 1) if world.paused_since is None else (0, 0))
        if state is GateState.SERVE:
            assert world.paused_since is None
            world.usage = (world.usage[0] + size, world.usage[1] + 1)
            calls += 1
            assert fee(sla, *world.usage) <= gate.payable() + gate.allowance
            if calls <= paying_calls:
                world.client_bound()
            else:
                world.silent = True
        elif state is GateState.PAUSE:
            if world.paused_since is None:
                world.paused_since = world.gate_ms
                world.usage = (world.usage[0] + size, world.usage[1] + 1)
            assert world.gate_ms - world.paused_since < PAUSE_MS
        else:
            # cut once the pause lasted the timeout, and not before
            assert world.paused_since is not None
            assert world.gate_ms - world.paused_since >= PAUSE_MS
            break
        world.tick(gaps[calls % len(gaps)])
    # what it served unpaid is within the allowance: the server's whole loss
    served = fee(sla, world.usage[0] - size, world.usage[1] - 1)
    assert served - gate.payable() <= gate.allowance
