"""The client's meter and the server's receipt gate under random schedules: money
properties (docs/escrow.md §3, §4, §6, §6.1, §7).

A hypothesis state machine drives a :class:`dtp.payments.metering.ClientMeter` and the
:class:`dtp.payments._gate.ReceiptGate` a paid server builds for the same connection
(:func:`dtp.hostid.paid.gate_for`, a real :class:`dtp.payments.receipt_store.ReceiptStore` file), in
memory: the receipts the meter signs are handed to the gate late, twice, out of order
or never, and the usage grows only as far as the gate lets it (as the paid server moves
at most what the credit covers). The escrow and the spending cap live in a real
LocalLedger file: top-ups, a new epoch, a lowered or raised cap and the client's other
connections on the cap happen there, and the connection ends with
:func:`dtp.payments._settlement.claim_and_settle`, which the cap never refuses (the deposit was
reserved on it: docs/escrow.md §4).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from dtp.errors import InsufficientFunds, InvalidReceipt, ReplayedReceipt, SpendingCapExceeded
from dtp.hostid.paid import ServicePolicy, gate_for
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.payments._gate import ReceiptGate
from dtp.payments._settlement import claim_and_settle
from dtp.payments.metering import ClientMeter, MeteringConfig
from dtp.payments.receipt_store import ReceiptStore
from dtp.payments.receipts import U64_MAX, Meter, Receipt, fee
from tests.support.paid_twins import ident
from tests.support.scopes import scope_of

SERVER, CLIENT = ident(0xB1), ident(0xB2)
PORT = 7100
FUNDS = 2**62
WINDOW = 16 << 20  # the most a client sends ahead of the server's reads
SLAS = [
    Sla(price_per_kib=10, price_per_request=5, min_deposit=5000),
    Sla(price_per_kib=1, price_per_request=0, min_deposit=100),
    Sla(price_per_kib=0, price_per_request=7, min_deposit=70),
    Sla(price_per_kib=3000, price_per_request=1, min_deposit=4000),
    # 16 MiB cost more than 2**64-1 MIST: the client's count ahead of the server's may
    # take the fee past u64
    Sla(price_per_kib=2**50, price_per_request=0, min_deposit=2**52),
]
BYTES = st.one_of(
    st.sampled_from([0, 1, 1023, 1024, 1025, 4096, 1 << 20, U64_MAX - 1, U64_MAX]),
    st.integers(0, 1 << 22),
)


def conserved(ledger: LocalLedger) -> bool:
    audit = ledger.audit()
    return bool(audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"])


class MeterAndGate(RuleBasedStateMachine):
    """One paid connection: the client's meter, the server's gate, the ledger."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="dtp-meter-"))
        self.ledger = LocalLedger(self.dir / "ledger.db")
        self.store = ReceiptStore(self.dir / "receipts.db")
        self.now = 0
        self.used = (0, 0)  # what the server counted (bytes, requests)
        # bytes the client sent that the server has not read yet: the client counts
        # them already (docs/escrow.md §6.1: the counts differ by what is in flight)
        self.ahead = 0
        self.signed: list[Receipt] = []  # every receipt the client signed, in order
        self.inflight: list[Receipt] = []  # signed, not delivered yet
        self.accepted: list[Receipt] = []  # those the gate counted, in order
        self.ended = False
        self.expect_violation = False

    def teardown(self) -> None:
        self.store.close()
        self.ledger.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- set-up ------------------------------------------------------------------------

    @initialize(
        sla=st.sampled_from(SLAS),
        extra=st.integers(0, 20_000),
        cap_room=st.integers(0, 60_000),
        allowance=st.one_of(st.none(), st.integers(0, 10_000)),
        every_bytes=st.sampled_from([0, 1, 4096, 64 << 10]),
        every_requests=st.sampled_from([0, 1, 3]),
        every_ms=st.sampled_from([0, 1, 1000]),
    )
    def open(
        self,
        sla: Sla,
        extra: int,
        cap_room: int,
        allowance: int | None,
        every_bytes: int,
        every_requests: int,
        every_ms: int,
    ) -> None:
        ledger = self.ledger
        ledger.faucet(CLIENT.sui_address, FUNDS)
        self.host = host = ledger.create_host(SERVER, SERVER.noise_public)
        ledger.add_service(SERVER, host, PORT, "meter", sla)
        self.sla = sla
        deposit = sla.min_deposit + extra
        # room for the deposit (reserved at the open) and ``cap_room`` more
        self.cap = ledger.create_spending_cap(CLIENT, deposit + cap_room)
        opened = ledger.prepare_open_connection(CLIENT, host, PORT, self.cap, deposit).execute()
        self.cid, self.escrow_id = opened.connection_id, opened.escrow_id
        self.gate: ReceiptGate = gate_for(
            ledger, self.cid, ServicePolicy(allowance=allowance), self.store
        )
        # the client's limit, as dtp.payments._settlement.ClientPayment sets it: the deposit
        self.deposited = deposit
        config = MeteringConfig(
            every_bytes=every_bytes, every_ms=every_ms, every_requests=every_requests
        )
        self.meter = ClientMeter(CLIENT, ledger.receipt_scope(self.cid), sla, deposit, config)

    # -- helpers -----------------------------------------------------------------------

    def signs(self, receipt: Receipt | None) -> None:
        if receipt is not None:
            assert not self.signed or receipt.nonce > self.signed[-1].nonce
            self.signed.append(receipt)
            self.inflight.append(receipt)

    def gate_state(self) -> tuple[object, ...]:
        gate = self.gate
        return (gate.latest, gate.latest_nonce, gate.latest_amount, gate.payable())

    def read_deposit(self, *, ending: bool = False) -> None:
        """The server's read of the escrow when the gate wants one (dtp.hostid.paid's path)."""
        gate = self.gate
        if not gate.wants_deposit(self.now, *self.used, ending=ending):
            return
        gate.deposit_reading(self.now)
        pending = gate.deposit_read(self.ledger.get_escrow(self.escrow_id).deposited)
        if pending is not None:
            self.hand(pending)

    def hand(self, receipt: Receipt) -> None:
        """Hand ``receipt`` to the gate, checking the outcome against the model."""
        gate = self.gate
        before = self.gate_state()
        last_nonce = self.accepted[-1].nonce if self.accepted else 0
        checked_nonce = gate.checked.nonce if gate.checked is not None else 0
        try:
            gate.receive(receipt.encode())
        except ReplayedReceipt as exc:
            assert exc.name == "EReplayedReceipt"
            assert receipt.nonce <= max(last_nonce, checked_nonce)
            assert self.gate_state() == before
            # a replayed or older receipt counts nothing and is a bad receipt, which
            # closes the connection (docs/escrow.md §6.1; ReceiptGate.check)
            assert gate.violation is not None
            self.expect_violation = True
            return
        except InvalidReceipt as exc:
            assert exc.name == "EReceiptExceedsDeposit", exc
            assert receipt.total_amount > gate.deposited
            assert self.gate_state() == before
            return
        # never one at or below a nonce checked before (kept or not)
        assert receipt.nonce > max(last_nonce, checked_nonce)
        self.accepted.append(receipt)

    def served(self, total_bytes: int, total_requests: int) -> None:
        """The gate let the usage grow to this: within the allowance beyond the
        receipts, and within what the escrow can pay."""
        gate = self.gate
        assert gate.serving(total_bytes, total_requests)
        assert gate.owed(total_bytes, total_requests) <= gate.allowance
        cost = fee(self.sla, total_bytes, total_requests)
        assert cost <= max(gate.deposited, gate.payable())
        self.used = (total_bytes, total_requests)

    # -- rules -------------------------------------------------------------------------

    @precondition(lambda self: not self.ended)
    @rule(nbytes=BYTES, requests=st.integers(0, 3), force=st.booleans(), ms=st.integers(0, 1500))
    def use(self, nbytes: int, requests: int, force: bool, ms: int) -> None:
        """The client uses the connection; the server moves what the gate lets it."""
        self.now += ms
        gate = self.gate
        total_bytes, total_requests = self.used
        if requests and gate.serving(total_bytes, total_requests + requests):
            total_requests += requests
        if gate.serving(total_bytes, total_requests):
            room = gate.credit_bytes(total_bytes, total_requests)
            total_bytes += min(nbytes, room, U64_MAX - total_bytes - self.ahead)
        if (total_bytes, total_requests) != self.used:
            # the gate let it through: within the allowance and what the escrow pays
            self.served(total_bytes, total_requests)
        self.signs(self.meter.update(self.now, *self.client_used(), force=force))

    def client_used(self) -> tuple[int, int]:
        """The usage as the client counts it."""
        return self.used[0] + self.ahead, self.used[1]

    @precondition(lambda self: not self.ended)
    @rule(nbytes=st.sampled_from([1, 1024, 64 << 10, 1 << 20, WINDOW]))
    def client_sends(self, nbytes: int) -> None:
        """The client sends within its flow-control window: counted on its side now,
        on the server's once read."""
        self.ahead += min(nbytes, WINDOW - self.ahead, U64_MAX - self.client_used()[0])
        self.signs(self.meter.update(self.now, *self.client_used()))

    @precondition(lambda self: not self.ended and self.ahead > 0)
    @rule()
    def server_reads(self) -> None:
        """The server reads what the client sent, as far as the gate lets it."""
        gate = self.gate
        total_bytes, total_requests = self.used
        if gate.serving(total_bytes, total_requests):
            moved = min(self.ahead, gate.credit_bytes(total_bytes, total_requests))
            if moved:
                self.served(total_bytes + moved, total_requests)
                self.ahead -= moved

    @precondition(lambda self: not self.ended)
    @rule(ms=st.integers(0, 3000))
    def clock(self, ms: int) -> None:
        """Time passes: the cadence may come due."""
        self.now += ms
        self.signs(self.meter.update(self.now, *self.client_used()))

    @precondition(lambda self: not self.ended)
    @rule()
    def receipt_request(self) -> None:
        """The server asks for a receipt now (it is paused)."""
        self.signs(self.meter.update(self.now, *self.client_used(), force=True))
        self.signs(self.meter.flush(self.now))

    @precondition(lambda self: not self.ended and bool(self.inflight))
    @rule(data=st.data(), lose=st.booleans())
    def deliver(self, data: st.DataObject, lose: bool) -> None:
        """One receipt in flight (any, not only the oldest) reaches the server, or is
        lost."""
        index = data.draw(st.integers(0, len(self.inflight) - 1))
        receipt = self.inflight.pop(index)
        if not lose:
            self.hand(receipt)
            self.read_deposit()

    @precondition(lambda self: not self.ended and bool(self.signed))
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        """A receipt delivered before arrives again."""
        index = data.draw(st.integers(0, len(self.signed) - 1))
        self.hand(self.signed[index])

    @precondition(lambda self: not self.ended)
    @rule(amount=st.integers(1, 30_000))
    def top_up(self, amount: int) -> None:
        """The client tops the escrow up and signs up to the new deposit; past the cap's
        room this epoch the ledger refuses it, and nothing moves."""
        try:
            self.ledger.top_up(CLIENT, self.escrow_id, amount)
        except SpendingCapExceeded:
            assert self.ledger.get_escrow(self.escrow_id).deposited == self.deposited
            return
        self.deposited += amount
        self.signs(self.meter.top_up(amount, self.now))

    @precondition(lambda self: not self.ended)
    @rule()
    def server_reads_deposit(self) -> None:
        self.read_deposit()

    @precondition(lambda self: not self.ended)
    @rule()
    def new_epoch(self) -> None:
        self.ledger.advance_epoch()

    @precondition(lambda self: not self.ended)
    @rule(cap_max=st.integers(0, 60_000))
    def set_cap(self, cap_max: int) -> None:
        """The client lowers or raises its cap (the server need not know)."""
        self.ledger.set_max_per_epoch(CLIENT, self.cap, cap_max)

    @precondition(lambda self: not self.ended)
    @rule(kib=st.integers(0, 4000))
    def other_connection_spends(self, kib: int) -> None:
        """Another connection on the same cap is opened (its deposit reserved, when the
        cap has room) and paid: it takes part of the cap's budget this epoch, none of
        this connection's deposit (docs/escrow.md §4)."""
        sla = self.sla
        amount = fee(sla, kib * 1024, 1)
        if max(sla.min_deposit, amount) > FUNDS // 64:
            return  # (more than the client has)
        try:
            opened = self.ledger.prepare_open_connection(
                CLIENT, self.host, PORT, self.cap, max(sla.min_deposit, amount)
            ).execute()
        except SpendingCapExceeded:
            return
        receipt = Receipt(
            self.ledger.receipt_scope(opened.connection_id), kib * 1024, 1, amount, 1
        ).sign(CLIENT)
        self.ledger.settle_with_receipt(SERVER, opened.connection_id, receipt)

    @precondition(lambda self: not self.ended)
    @rule(final=st.booleans())
    def end(self, final: bool) -> None:
        """The connection ends: the client's final receipt (maybe), the settlement."""
        if final:
            self.signs(self.meter.flush(self.now))
            while self.inflight:
                self.hand(self.inflight.pop(0))
        self.read_deposit(ending=True)
        self.ended = True
        gate = self.gate
        latest = self.store.latest(self.cid)
        assert (latest.receipt if latest else None) == gate.latest
        # whatever the client did with its cap meanwhile, the claim goes through
        settlement = claim_and_settle(self.ledger, SERVER, self.cid, self.store)
        assert settlement is not None
        assert list(self.store.unclaimed()) == []
        escrow = self.ledger.get_escrow(self.escrow_id)
        assert escrow.settled
        assert settlement.claimed + settlement.refunded == escrow.deposited
        assert escrow.claimed + escrow.refunded == escrow.deposited == self.deposited
        # the fee charged is that of the last receipt counted
        expected = 0 if gate.latest is None else gate.latest.total_amount
        if gate.latest is not None:
            assert expected == fee(self.sla, gate.latest.total_bytes, gate.latest.total_requests)
        assert escrow.claimed == expected
        assert escrow.balance == 0

    @precondition(lambda self: self.ended)
    @rule()
    def settled_stays(self) -> None:
        """After the settlement nothing moves (the invariants look again)."""
        assert self.ledger.get_connection(self.cid).settled

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def receipted_credit_was_signed(self) -> None:
        gate = self.gate
        top = max((r.total_amount for r in self.signed), default=0)
        assert gate.latest_amount <= top
        assert gate.latest is None or gate.latest in self.signed

    @invariant()
    def accepted_receipts_are_cumulative(self) -> None:
        for older, newer in zip(self.accepted, self.accepted[1:], strict=False):
            assert newer.nonce > older.nonce
            assert newer.total_bytes >= older.total_bytes
            assert newer.total_requests >= older.total_requests
            assert newer.total_amount >= older.total_amount
        if self.accepted:
            assert self.gate.latest == self.accepted[-1]

    @invariant()
    def claimable_within_deposit(self) -> None:
        gate = self.gate
        payable = gate.payable()
        assert payable <= gate.deposited
        assert payable <= self.ledger.get_escrow(self.escrow_id).deposited

    @invariant()
    def violation_only_for_a_bad_receipt(self) -> None:
        if not self.expect_violation:
            assert self.gate.violation is None, self.gate.violation

    @invariant()
    def mist_is_conserved(self) -> None:
        assert conserved(self.ledger)


MeterAndGate.TestCase.settings = settings(
    max_examples=400,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_meter_and_gate = MeterAndGate.TestCase


# -- focused regressions ------------------------------------------------------------------

HUGE = Sla(price_per_kib=2**50, price_per_request=0, min_deposit=2**52)


def test_a_fee_past_u64_is_usage_the_deposit_cannot_cover() -> None:
    """The client's count runs ahead of the server's by what is in flight; on an SLA
    where 16 MiB cost more than 2**64-1 MIST, that took the total fee past u64. The
    meter refused it as InvalidArgument, which escaped ClientMeter.update (and the
    connection's I/O that calls it) instead of the last receipt for the whole deposit.
    A fee past u64 is past every escrow's deposit: InsufficientFunds, and the ClientMeter
    signs for what the deposit covers."""
    cid = "0x" + "5e" * 32
    meter = ClientMeter(CLIENT, scope_of(cid), HUGE, HUGE.min_deposit, MeteringConfig(every_ms=0))
    receipt = meter.update(0, (16 << 20) + 4096, 0)
    assert meter.exhausted
    assert receipt is not None and receipt.total_amount == HUGE.min_deposit
    assert receipt.total_bytes == 4096  # what 2**52 MIST pay for at 2**50 a KiB
    assert meter.update(1, 32 << 20, 0, force=True) is None  # nothing more signed
    # the same at the Meter: refused as over the deposit, nothing counted
    plain = Meter(CLIENT, scope_of(cid), HUGE, HUGE.min_deposit, every_bytes=1)
    with pytest.raises(InsufficientFunds):
        plain.record(0, 16 << 20)
    assert plain.total_bytes == 0
