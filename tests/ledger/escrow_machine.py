"""The escrow rules of LocalLedger as a hypothesis state machine (LedgerMachine): what each
rule and invariant checks is told in tests/ledger/test_escrow_state_machine.py, which
runs it; tests/ledger/test_payment_models_state_machine.py extends it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dtp.chain.local import LocalLedger
from dtp.chain.objects import ConnectionState, Sla
from dtp.errors import ChainError
from dtp.escrow import Receipt, ReceiptScope, fee
from dtp.keys import HostIdentity

SLA = Sla(10, 5, 100)
TIMEOUT = 600_000


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


SERVER, MALLORY = ident(0x33), ident(0x22)
CLIENTS = [ident(0x11), ident(0x12)]
EVERYONE = [SERVER, MALLORY, *CLIENTS]
STATS = {"claims": 0}


@dataclass
class Conn:
    id: str
    escrow: str
    client: HostIdentity
    cap: str
    usage: tuple[int, int] = (0, 0)
    nonce: int = 0
    claimed_receipts: list[Receipt] = field(default_factory=list)


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ledger = LocalLedger(":memory:", clock_ms=0)
        self.host = self.ledger.create_host(SERVER, b"\x01" * 32)
        self.ledger.add_service(SERVER, self.host, 7, "raw", SLA)
        self.caps = {c.sui_address: self.ledger.create_spending_cap(c, 2_000) for c in CLIENTS}
        self.conns: list[Conn] = []
        for client in CLIENTS:
            self.ledger.faucet(client.sui_address, 4_000)
        # cap id -> epoch -> MIST reserved and not released (our own bookkeeping)
        self.reserved: dict[str, dict[int, int]] = {cap: {} for cap in self.caps.values()}
        # connection id -> (epoch of its latest reservation, MIST reserved then)
        self.held: dict[str, tuple[int, int]] = {}
        self.host_version = self.ledger.object_ref(self.host).version

    # helpers

    def balances(self) -> dict[str, int]:
        return {p.sui_address: self.ledger.balance(p.sui_address) for p in EVERYONE}

    def expect(self, call: Any, changes: dict[str, int], error: str | None = None) -> Any:
        """Run ``call``; on error nothing changes, else balances move exactly by ``changes``."""
        before_dump = self.ledger.dump()
        before = self.balances()
        try:
            result = call()
        except ChainError as exc:
            assert self.ledger.dump() == before_dump, f"failed call changed state: {exc}"
            if error is not None:
                assert exc.name == error, (exc.name, error)
            return exc
        assert error is None, f"expected {error}"
        after = self.balances()
        for addr, value in after.items():
            assert value == before[addr] + changes.get(addr, 0), "unexpected balance change"
        return result

    def room(self, cap_id: str) -> int:
        """What the cap lets be reserved now, by the model."""
        cap = self.ledger.get_cap(cap_id)
        return cap.max_per_epoch - self.reserved[cap_id].get(self.ledger.epoch(), 0)

    def reserve(self, conn_id: str, cap_id: str, amount: int, *, top_up: bool) -> None:
        epoch = self.ledger.epoch()
        per_epoch = self.reserved[cap_id]
        per_epoch[epoch] = per_epoch.get(epoch, 0) + amount
        held_epoch, held = self.held.get(conn_id, (epoch, 0))
        self.held[conn_id] = (epoch, held + amount if top_up and held_epoch == epoch else amount)

    def release(self, conn_id: str, cap_id: str, refunded: int) -> None:
        epoch = self.ledger.epoch()
        held_epoch, held = self.held[conn_id]
        if held_epoch == epoch:
            per_epoch = self.reserved[cap_id]
            released = min(refunded, held, per_epoch.get(epoch, 0))
            per_epoch[epoch] = per_epoch.get(epoch, 0) - released
            self.held[conn_id] = (held_epoch, held - released)

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
            if deposit > self.room(cap)
            else None
        )
        result = self.expect(
            lambda: self.ledger.open_connection(who, self.host, 7, cap, deposit),
            {who.sui_address: -deposit},
            error,
        )
        if error is None:
            self.conns.append(Conn(result.connection_id, result.escrow_id, who, cap))
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
            if amount > self.room(conn.cap)
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
            conn.nonce += 1
            receipt = Receipt(
                ReceiptScope(self.ledger.package_id, conn.escrow, conn.id), b, r, amount, conn.nonce
            ).sign(signer)
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
            if final:
                self.release(conn.id, conn.cap, e.balance - paid)
            STATS["claims"] += 1

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
    def conserved(self) -> None:
        audit = self.ledger.audit()
        assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]

    @invariant()
    def escrows_balance(self) -> None:
        for conn in self.conns:
            e = self.ledger.get_escrow(conn.escrow)
            assert e.balance == e.deposited - e.claimed - e.refunded >= 0
            assert e.claimed <= e.deposited
            tc = self.ledger.get_connection(conn.id)
            assert tc.settled == e.settled
            if e.settled:
                assert e.balance == 0 and tc.state is ConnectionState.CLOSED

    @invariant()
    def host_untouched(self) -> None:
        # connections only read the Host: Sui runs them concurrently
        assert self.ledger.object_ref(self.host).version == self.host_version

    @invariant()
    def caps_match_reservations(self) -> None:
        # Each reservation was checked against the limit when it was made (in `open` and
        # `top_up`); the cap holds exactly what was reserved and not released in its
        # epoch, and each escrow what it reserved.
        for cap_id in self.caps.values():
            cap = self.ledger.get_cap(cap_id)
            assert cap.spent == self.reserved[cap_id].get(cap.epoch, 0)
        for conn in self.conns:
            e = self.ledger.get_escrow(conn.escrow)
            assert (e.reserved_epoch, e.reserved) == self.held[conn.id]
