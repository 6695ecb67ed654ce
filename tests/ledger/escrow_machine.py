"""The escrow rules of LocalLedger as a hypothesis state machine (LedgerMachine): what each
rule and invariant checks is told in tests/ledger/test_escrow_state_machine.py, which
runs it; tests/ledger/test_payment_models_state_machine.py extends it.

It runs on dtp.testing's public tools, as an application's machine would: a
``LedgerWorld`` holds the server, its service, the funded clients and their spending
caps, every connection is one of the world's channels, receipts are made by its
``ReceiptTerms`` (the client's through ``LedgerWorld.sign``, noted as signed) and
``LedgerWorld.check`` is an invariant -- on top of what this machine predicts itself
(each call's exact outcome and the spending caps' counts, docs/escrow.md §4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dtp.errors import ChainError
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import HALF_CLOSE_TIMEOUT_MS, ConnectionState
from dtp.ledger.local import LocalLedger
from dtp.payments.receipts import Receipt, fee
from dtp.testing.identities import identities, identity
from dtp.testing.ledger_world import DEFAULT_SLA, Channel, LedgerWorld
from dtp.testing.receipts import ReceiptTerms

SLA = DEFAULT_SLA  # 10 MIST a KiB, 5 a request, a deposit of at least 100
TIMEOUT = HALF_CLOSE_TIMEOUT_MS
FUNDS, CAP = 4_000, 2_000  # each client's, at the start

# (LedgerWorld numbers its server 1 and its clients 2 and 3)
SERVER, CLIENTS, MALLORY = identity(1), identities(2, start=2), identity(4)
EVERYONE = [SERVER, MALLORY, *CLIENTS]


@dataclass
class CapModel:
    """What a spending cap must hold by docs/escrow.md §4, kept by the machine."""

    outstanding: int = 0
    #: epoch -> claims counted on the cap in it
    counted: dict[int, int] = field(default_factory=dict)
    #: epoch -> MIST servers were paid in it from the cap's escrows (what happened)
    claims: dict[int, int] = field(default_factory=dict)
    #: the limit in force at the latest reservation of more than 0
    limit_at_reservation: int = 0


@dataclass
class EscrowModel:
    """An escrow's part of its cap's counts."""

    reserved: int
    claim_epoch: int
    claimed_in_epoch: int = 0


@dataclass
class Conn:
    """One of the world's channels, and what the machine knows of it beyond the world:
    the usage claimed last, the last nonce signed, the receipts claimed."""

    channel: Channel
    usage: tuple[int, int] = (0, 0)
    nonce: int = 0
    claimed_receipts: list[Receipt] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.channel.connection_id

    @property
    def escrow(self) -> str:
        return self.channel.escrow_id

    @property
    def client(self) -> HostIdentity:
        return self.channel.client

    @property
    def cap(self) -> str:
        return self.channel.cap_id


class LedgerMachine(RuleBasedStateMachine):
    #: Everyone who signs a transaction in the machine (funded for gas on Sui).
    SIGNERS: tuple[HostIdentity, ...] = tuple(EVERYONE)

    def __init__(self) -> None:
        super().__init__()
        self.ledger = self.new_ledger()
        #: Every call's outcome: its error's name, or its balance moves and its amount
        #: (an int result), in order -- what must not depend on the ledger.
        self.trace: list[object] = []
        self.world = LedgerWorld(
            self.ledger, clients=len(CLIENTS), funds=FUNDS, sla=SLA, port=7, cap=CAP
        )
        assert (self.world.server, self.world.clients) == (SERVER, CLIENTS)
        self.host = self.world.host_id
        self.caps = self.world.caps
        self.conns: list[Conn] = []
        # our own bookkeeping of the caps' counts (docs/escrow.md §4)
        self.cap_models = {cap: CapModel() for cap in self.caps.values()}
        self.escrow_models: dict[str, EscrowModel] = {}  # by connection id
        self.host_version = self.ledger.object_ref(self.host).version

    def new_ledger(self) -> LocalLedger:
        """The ledger the machine runs on: LocalLedger in memory, clock frozen at 0
        (tests/ledger/test_economics_on_sui.py: SuiLedger on the node stand-in)."""
        return LocalLedger(":memory:", clock_ms=0)

    def teardown(self) -> None:
        self.ledger.close()

    # helpers

    def track(self, connection_id: str, escrow_id: str, who: HostIdentity) -> Conn:
        """A connection opened other than by ``LedgerWorld.open`` (a sponsored or
        subscribed one), made one of the world's channels so that its checks cover it."""
        terms = ReceiptTerms.of(self.ledger, connection_id, who)
        channel = Channel(who, connection_id, escrow_id, self.caps[who.sui_address], terms)
        self.world.channels.append(channel)
        return Conn(channel)

    def receipt(
        self,
        conn: Conn,
        total_bytes: int,
        total_requests: int,
        amount: int,
        signer: HostIdentity | None = None,
    ) -> Receipt:
        """``conn``'s next receipt (its nonce moves on): signed by its client through
        the world (noted as signed: no claim may go beyond it) or by ``signer``."""
        conn.nonce += 1
        if signer is None or signer is conn.client:
            return self.world.sign(
                conn.channel, total_bytes, total_requests, amount=amount, nonce=conn.nonce
            )
        return conn.channel.terms.receipt(
            total_bytes, total_requests, amount, conn.nonce, signer=signer
        )

    def balances(self) -> dict[str, int]:
        return {p.sui_address: self.ledger.balance(p.sui_address) for p in EVERYONE}

    def expect(self, call: Any, changes: dict[str, int], error: str | None = None) -> Any:
        """Run ``call``; on error nothing changes, else balances move exactly by ``changes``.
        A payment beyond the payer's funds is not sent where gas coins would pay it
        (tests/ledger/standin_ledger.py): the outcome is the one predicted."""
        if error == "InsufficientCoinBalance" and getattr(self.ledger, "pays_from_gas", False):
            self.trace.append(error)
            return ChainError("not sent: paid from the gas grant on Sui", name=error)
        before_dump = self.ledger.dump()
        before = self.balances()
        try:
            result = call()
        except ChainError as exc:
            assert self.ledger.dump() == before_dump, f"failed call changed state: {exc}"
            if error is not None:
                assert exc.name == error, (exc.name, error)
            self.trace.append(exc.name)
            return exc
        assert error is None, f"expected {error}"
        after = self.balances()
        for addr, value in after.items():
            assert value == before[addr] + changes.get(addr, 0), "unexpected balance change"
        moves = {
            addr: value - before[addr] for addr, value in after.items() if value != before[addr]
        }
        self.trace.append((moves, result if type(result) is int else None))
        return result

    def room(self, cap_id: str, conn_id: str | None = None) -> int:
        """What the cap lets be reserved now, by the model: the limit less this epoch's
        counted claims and what is outstanding (after ``conn_id``'s claims were counted,
        as a top-up counts them first). Negative once a lowering went below them."""
        model, epoch = self.cap_models[cap_id], self.ledger.epoch()
        outstanding, counted = model.outstanding, model.counted.get(epoch, 0)
        if conn_id is not None:
            taken, in_epoch = self._unreported(conn_id, cap_id)
            outstanding, counted = outstanding - taken, counted + in_epoch
        return self.ledger.get_cap(cap_id).max_per_epoch - counted - outstanding

    def refused_reservation(self, cap_id: str, amount: int, conn_id: str | None = None) -> bool:
        """Whether reserving ``amount`` is refused: never for 0 (docs/escrow.md §4)."""
        return amount > 0 and amount > self.room(cap_id, conn_id)

    def _unreported(self, conn_id: str, cap_id: str) -> tuple[int, int]:
        """(claims the escrow has not reported, the part of them counted this epoch)."""
        e, model = self.escrow_models[conn_id], self.cap_models[cap_id]
        funds = self.ledger.get_escrow(self.ledger.get_connection(conn_id).escrow).balance
        taken = min(max(0, e.reserved - funds), model.outstanding)
        in_epoch = min(taken, e.claimed_in_epoch) if e.claim_epoch == self.ledger.epoch() else 0
        return taken, in_epoch

    def _report(self, conn_id: str, cap_id: str, funds: int) -> None:
        """``escrow::report_claims`` on the model, the escrow holding ``funds``."""
        e, model, epoch = self.escrow_models[conn_id], self.cap_models[cap_id], self.ledger.epoch()
        if e.reserved <= funds:
            return
        taken = min(e.reserved - funds, model.outstanding)
        model.outstanding -= taken
        if e.claim_epoch == epoch:
            model.counted[epoch] = model.counted.get(epoch, 0) + min(taken, e.claimed_in_epoch)
        e.reserved = funds

    def reserve(self, conn_id: str, cap_id: str, amount: int, *, top_up: bool) -> None:
        """A successful open (``top_up=False``) or top-up of ``amount`` (call after it)."""
        model, epoch = self.cap_models[cap_id], self.ledger.epoch()
        if top_up:
            e = self.escrow_models[conn_id]
            funds = self.ledger.get_escrow(self.ledger.get_connection(conn_id).escrow).balance
            self._report(conn_id, cap_id, funds - amount)
            e.reserved += amount
        else:
            self.escrow_models[conn_id] = EscrowModel(amount, epoch)
        model.outstanding += amount
        if amount:  # (one of 0 is never checked against the limit)
            model.limit_at_reservation = self.ledger.get_cap(cap_id).max_per_epoch

    def claimed(self, conn_id: str, cap_id: str, paid: int) -> None:
        """A successful claim paying ``paid`` (call after it): the escrow notes it."""
        e, epoch = self.escrow_models[conn_id], self.ledger.epoch()
        if e.claim_epoch != epoch:
            e.claim_epoch, e.claimed_in_epoch = epoch, 0
        e.claimed_in_epoch += paid
        claims = self.cap_models[cap_id].claims
        claims[epoch] = claims.get(epoch, 0) + paid

    def release(self, conn_id: str, cap_id: str, refunded: int) -> None:
        """A successful settlement refunding ``refunded`` (call after it, and after
        :meth:`claimed` for its final receipt): the claims are reported, the refund
        released."""
        self._report(conn_id, cap_id, refunded)
        e, model = self.escrow_models[conn_id], self.cap_models[cap_id]
        released = min(refunded, e.reserved, model.outstanding)
        e.reserved -= released
        model.outstanding -= released

    # rules

    @rule(who=st.sampled_from(CLIENTS), amount=st.integers(0, 5_000))
    def faucet(self, who: HostIdentity, amount: int) -> None:
        self.ledger.faucet(who.sui_address, amount)

    @rule(who=st.sampled_from(CLIENTS), deposit=st.integers(0, 3_000))
    def open(self, who: HostIdentity, deposit: int) -> None:
        cap = self.caps[who.sui_address]
        have = self.ledger.balance(who.sui_address)
        error = (
            "InsufficientCoinBalance"
            if deposit > have
            else "EInsufficientDeposit"
            if deposit < SLA.min_deposit
            else "ESpendingCapExceeded"
            if self.refused_reservation(cap, deposit)
            else None
        )
        result = self.expect(
            lambda: self.world.open(who, deposit), {who.sui_address: -deposit}, error
        )
        if error is None:
            self.conns.append(Conn(result))
            self.reserve(result.connection_id, cap, deposit, top_up=False)

    @precondition(lambda self: self.conns)
    @rule(data=st.data(), amount=st.integers(0, 1_000))
    def top_up(self, data: st.DataObject, amount: int) -> None:
        conn = data.draw(st.sampled_from(self.conns))
        who = data.draw(st.sampled_from([conn.client, SERVER]))
        e = self.ledger.get_escrow(conn.escrow)
        have = self.ledger.balance(who.sui_address)
        error = (
            "InsufficientCoinBalance"
            if amount > have
            else "ENotClient"
            if who is not conn.client
            else "EEscrowSettled"
            if e.settled
            else "ESpendingCapExceeded"
            if self.refused_reservation(conn.cap, amount, conn.id)
            else None
        )
        result = self.expect(
            lambda: self.ledger.top_up(who, conn.escrow, amount), {who.sui_address: -amount}, error
        )
        if error is None:
            assert not isinstance(result, ChainError)
            self.reserve(conn.id, conn.cap, amount, top_up=True)

    @precondition(lambda self: self.conns)
    @rule(
        data=st.data(),
        kind=st.sampled_from(
            ["valid"] * 5 + ["forged", "replayed", "oversized", "lower", "mismatch"]
        ),
        more_bytes=st.integers(0, 8_000),
        more_requests=st.integers(0, 20),
        final=st.booleans(),
    )
    def claim(
        self,
        data: st.DataObject,
        kind: str,
        more_bytes: int,
        more_requests: int,
        final: bool,
    ) -> None:
        conn = data.draw(st.sampled_from(self.conns))
        who = data.draw(st.sampled_from([SERVER, SERVER, conn.client]))
        e = self.ledger.get_escrow(conn.escrow)
        tc = self.ledger.get_connection(conn.id)
        signer = MALLORY if kind == "forged" else conn.client
        if kind == "replayed":
            if not conn.claimed_receipts:
                return
            receipt = conn.claimed_receipts[-1]
        else:
            b, r = conn.usage
            if kind == "oversized":
                b, r = b + e.deposited * 1024 // SLA.price_per_kib + 1024, r
            elif kind == "lower":
                b, r = 0, 0
            else:
                b, r = b + more_bytes, r + more_requests
            amount = fee(SLA, b, r) + (1 if kind == "mismatch" else 0)
            receipt = self.receipt(conn, b, r, amount, signer)
        # predict (settle_with_receipt first checks settled, then claim's order; an Open
        # connection is closed by the server's settlement). The cap plays no part: the
        # deposit was reserved on it.
        paid = receipt.total_amount - e.claimed
        error: str | None = None
        if final and tc.settled:
            error = "EAlreadySettled"
        elif who is not SERVER:
            error = "ENotServer"
        elif e.settled:
            error = "EEscrowSettled"
        elif receipt.nonce <= e.latest_nonce:
            error = "EReplayedReceipt"
        elif not receipt.verify(conn.client.ed25519_public):
            error = "EBadSignature"
        elif receipt.total_amount != fee(SLA, receipt.total_bytes, receipt.total_requests):
            error = "EAmountMismatch"
        elif receipt.total_amount > e.deposited:
            error = "EReceiptExceedsDeposit"
        elif receipt.total_amount < e.claimed:
            error = "EReceiptNotCumulative"
        changes = {SERVER.sui_address: paid} if error is None else {}
        if final:
            if error is None:
                changes[conn.client.sui_address] = e.balance - paid
            result = self.expect(
                lambda: self.ledger.settle_with_receipt(who, conn.id, receipt), changes, error
            )
        else:
            result = self.expect(
                lambda: self.ledger.claim(who, conn.escrow, receipt), changes, error
            )
        if error is None:
            got = result.paid if final else result
            assert got == paid
            conn.usage = (receipt.total_bytes, receipt.total_requests)
            conn.claimed_receipts.append(receipt)
            self.claimed(conn.id, conn.cap, paid)
            if final:
                self.release(conn.id, conn.cap, e.balance - paid)

    @precondition(lambda self: self.conns)
    @rule(data=st.data(), kib=st.integers(1, 100))
    def serve(self, data: st.DataObject, kib: int) -> None:
        """The common case, so that runs reach claims in many epochs: the server claims
        a valid receipt for up to ``kib`` more KiB, as far as the deposit covers."""
        conn = data.draw(st.sampled_from(self.conns))
        e = self.ledger.get_escrow(conn.escrow)
        b, r = conn.usage
        covered = (e.deposited - r * SLA.price_per_request) * 1024 // SLA.price_per_kib
        b = min(b + kib * 1024, covered)
        if e.settled or b <= conn.usage[0]:
            return
        receipt = self.receipt(conn, b, r, fee(SLA, b, r))
        paid = receipt.total_amount - e.claimed
        result = self.expect(
            lambda: self.ledger.claim(SERVER, conn.escrow, receipt), {SERVER.sui_address: paid}
        )
        assert result == paid
        conn.usage = (b, r)
        conn.claimed_receipts.append(receipt)
        self.claimed(conn.id, conn.cap, paid)

    @precondition(lambda self: self.conns)
    @rule(data=st.data(), op=st.sampled_from(["close", "finalize", "settle"]))
    def closing(self, data: st.DataObject, op: str) -> None:
        conn = data.draw(st.sampled_from(self.conns))
        who = data.draw(st.sampled_from([SERVER, conn.client, MALLORY]))
        e = self.ledger.get_escrow(conn.escrow)
        was_open = self.ledger.get_connection(conn.id).state is ConnectionState.OPEN
        if op == "close":
            call: Any = lambda: self.ledger.close_connection(who, conn.id)  # noqa: E731
            changes: dict[str, int] = {}
        elif op == "finalize":
            call = lambda: self.ledger.finalize(who, conn.id)  # noqa: E731
            changes = {}
        else:
            call = lambda: self.ledger.settle(who, conn.id)  # noqa: E731
            changes = {conn.client.sui_address: e.balance}
        result = self.expect(call, changes)
        if isinstance(result, ChainError):
            if who is MALLORY:
                assert result.name == "ENotParticipant"
            elif op == "settle" and was_open and not e.settled:
                # the server may settle an Open connection, the client never
                assert who is conn.client and result.name == "EConnectionOpen"
        elif op == "settle":
            assert result.refunded == e.balance
            assert self.ledger.get_connection(conn.id).state is ConnectionState.CLOSED
            self.release(conn.id, conn.cap, result.refunded)

    @rule(ms=st.sampled_from([1, 1_000, TIMEOUT - 1, TIMEOUT, 3 * TIMEOUT]))
    def advance_clock(self, ms: int) -> None:
        self.ledger.advance_clock(ms)

    @rule()
    def next_epoch(self) -> None:
        self.ledger.advance_epoch()

    @rule(
        who=st.sampled_from([*CLIENTS, MALLORY]),
        owner=st.sampled_from(CLIENTS),
        limit=st.integers(0, 3_000),
    )
    def set_cap(self, who: HostIdentity, owner: HostIdentity, limit: int) -> None:
        cap = self.caps[owner.sui_address]
        error = None if who is owner else "ENotCapOwner"
        self.expect(lambda: self.ledger.set_max_per_epoch(who, cap, limit), {}, error)

    # invariants

    @invariant()
    def the_worlds_rules_hold(self) -> None:
        # LedgerWorld.check: MIST conserved; on every connection (the world's channels),
        # the escrow's books balance, nothing is claimed beyond the deposit or beyond a
        # receipt its client signed, and a settled escrow is empty, its connection Closed
        self.world.check()

    @invariant()
    def host_untouched(self) -> None:
        # connections only read the Host: Sui runs them concurrently
        assert self.ledger.object_ref(self.host).version == self.host_version

    def conns_of(self, cap_id: str) -> list[Conn]:
        """Every connection of the machine bound to ``cap_id`` (subclasses add theirs)."""
        return [c for c in self.conns if c.cap == cap_id]

    @invariant()
    def caps_match_the_model(self) -> None:
        # Each cap holds exactly what docs/escrow.md §4 says: the deposits outstanding
        # and this epoch's counted claims; each escrow its part of them.
        epoch = self.ledger.epoch()
        for cap_id, model in self.cap_models.items():
            cap = self.ledger.get_cap(cap_id)
            assert cap.outstanding == model.outstanding
            assert cap.used(epoch) == model.counted.get(epoch, 0) + model.outstanding
            assert cap.remaining(epoch) == max(0, self.room(cap_id))
            for conn in self.conns_of(cap_id):
                e = self.ledger.get_escrow(conn.escrow)
                m = self.escrow_models[conn.id]
                assert (e.reserved, e.claim_epoch, e.claimed_in_epoch) == (
                    m.reserved,
                    m.claim_epoch,
                    m.claimed_in_epoch,
                )
                assert e.reserved >= e.balance or e.settled

    @invariant()
    def no_epochs_claims_exceed_the_cap(self) -> None:
        # What servers were paid from a cap's escrows this epoch, plus all they could
        # still be paid (the unsettled escrows' balances, of whatever epoch), never
        # exceeds the limit in force at the cap's latest reservation: deposits of many
        # epochs cannot all be claimed in one. (Claims happen only in the current epoch,
        # so every past epoch was checked while it was current.)
        epoch = self.ledger.epoch()
        for cap_id, model in self.cap_models.items():
            claimable = sum(self.ledger.get_escrow(c.escrow).balance for c in self.conns_of(cap_id))
            assert model.claims.get(epoch, 0) + claimable <= model.limit_at_reservation
