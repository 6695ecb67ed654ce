"""Strategies for sequences of ledger operations, and their runner: what participants of
a :class:`~dtp.testing.ledger_world.LedgerWorld` may do, in any order -- open, top up,
serve and claim, claim a flawed receipt, close, finalize, settle, let time pass.

    @given(ops=ledger_operations())
    def test_any_history_keeps_the_rules(ops):
        world = LedgerWorld()
        run_operations(world, ops)      # world.check() after every step

Operations name clients and channels by index (a channel index is taken modulo the
channels open when it runs; an operation on a channel before any is skipped), so any
sequence runs, and shrinks to a short one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final, Literal

from dtp.errors import ChainError
from dtp.ledger.receipt import Receipt, fee
from dtp.testing.identities import identity
from dtp.testing.ledger_world import Channel, LedgerWorld
from dtp.testing.strategies._hypothesis import st
from dtp.testing.strategies._money import Flaw, possible_flaws

__all__ = [
    "AdvanceClock",
    "ClaimFlawed",
    "Close",
    "Finalize",
    "NextEpoch",
    "Open",
    "Operation",
    "Serve",
    "Settle",
    "Step",
    "TopUp",
    "apply_operation",
    "ledger_operations",
    "run_operations",
]

Who = Literal["client", "server", "stranger"]
#: Someone in no connection of the world (a claim or a close by them must fail).
STRANGER: Final = identity(10**9)


@dataclass(frozen=True)
class Open:
    """Client ``client`` opens a connection with ``deposit``."""

    client: int
    deposit: int


@dataclass(frozen=True)
class TopUp:
    """The channel's client adds ``amount``."""

    channel: int
    amount: int


@dataclass(frozen=True)
class Serve:
    """The server serves ``kib`` KiB and ``requests`` requests more (as far as the
    deposit covers), the client signs for them and the server claims the receipt."""

    channel: int
    kib: int
    requests: int


@dataclass(frozen=True)
class ClaimFlawed:
    """The server claims a receipt with one flaw: the ledger must refuse it, unchanged."""

    channel: int
    flaw: Flaw


@dataclass(frozen=True)
class _ByWho:
    """A step of the channel's end that ``who`` takes (the client, the server, or a
    stranger, whom the ledger must refuse)."""

    channel: int
    who: Who


class Close(_ByWho):
    """``who`` closes the channel (half-close, then close)."""


class Finalize(_ByWho):
    """``who`` finalizes the channel (its half-close timeout passed)."""


class Settle(_ByWho):
    """``who`` settles the channel (the server at any time, the client after the
    timeout)."""


@dataclass(frozen=True)
class AdvanceClock:
    """The ledger's clock moves on ``ms``."""

    ms: int


@dataclass(frozen=True)
class NextEpoch:
    """The ledger moves to its next epoch."""


Operation = (
    Open | TopUp | Serve | ClaimFlawed | Close | Finalize | Settle | AdvanceClock | NextEpoch
)


@dataclass(frozen=True)
class Step:
    """One operation as it ran: ``error`` is the ledger's error name when it refused
    (``None``: it went through; ``"skipped"``: there was no channel to run it on)."""

    operation: Operation
    error: str | None


def ledger_operations(
    *,
    clients: int = 2,
    max_deposit: int = 5_000,
    min_size: int = 0,
    max_size: int = 30,
) -> st.SearchStrategy[list[Operation]]:
    """Sequences of operations on a world of ``clients`` clients (deposits up to
    ``max_deposit``; clock moves that reach the half-close timeout and beyond)."""
    channel = st.integers(0, 7)
    who = st.sampled_from(["client", "server", "stranger"])
    op = st.one_of(
        st.builds(Open, st.integers(0, clients - 1), st.integers(0, max_deposit)),
        st.builds(TopUp, channel, st.integers(0, max_deposit // 2)),
        st.builds(Serve, channel, st.integers(0, 64), st.integers(0, 8)),
        st.builds(ClaimFlawed, channel, st.sampled_from(list(Flaw))),
        st.builds(Close, channel, who),
        st.builds(Finalize, channel, who),
        st.builds(Settle, channel, who),
        st.builds(AdvanceClock, st.sampled_from([1, 1_000, 599_999, 600_000, 1_800_000])),
        st.just(NextEpoch()),
    )
    return st.lists(op, min_size=min_size, max_size=max_size)


def run_operations(world: LedgerWorld, operations: list[Operation]) -> list[Step]:
    """Run ``operations`` in order on ``world``, checking its invariants after each
    (:meth:`LedgerWorld.check` raises :class:`~dtp.testing.ledger_world.WorldBroken`).
    A refusal by the ledger is recorded, and must leave every balance as it was."""
    steps = []
    for operation in operations:
        steps.append(apply_operation(world, operation))
        world.check()
    return steps


def apply_operation(world: LedgerWorld, operation: Operation) -> Step:
    """Run one operation; a ledger refusal is its :class:`Step`'s ``error``. A refused
    call that moved money, or a flawed receipt the ledger took, raises AssertionError."""
    if isinstance(operation, AdvanceClock):
        world.advance_clock(operation.ms)
        return Step(operation, None)
    if isinstance(operation, NextEpoch):
        advance = getattr(world.ledger, "advance_epoch", None)
        if advance is not None:
            advance()
        return Step(operation, None)
    if isinstance(operation, Open):
        return _guarded(world, operation, lambda: world.open(operation.client, operation.deposit))
    if not world.channels:
        return Step(operation, "skipped")
    channel = world.channels[operation.channel % len(world.channels)]
    if isinstance(operation, TopUp):
        return _guarded(world, operation, lambda: world.top_up(channel, operation.amount))
    if isinstance(operation, Serve):
        return _serve(world, channel, operation)
    if isinstance(operation, ClaimFlawed):
        return _claim_flawed(world, channel, operation)
    actor = {"client": channel.client, "server": world.server, "stranger": STRANGER}[operation.who]
    end = {Close: world.close, Finalize: world.finalize, Settle: world.settle}[type(operation)]
    return _guarded(world, operation, lambda: end(channel, actor))


def _guarded(world: LedgerWorld, operation: Operation, call: object) -> Step:
    before = world.balances()
    try:
        call()  # type: ignore[operator]
    except ChainError as exc:
        after = world.balances()
        assert after == before, f"{operation} was refused ({exc.name}) but moved money"
        return Step(operation, exc.name or type(exc).__name__)
    return Step(operation, None)


def _next_usage(world: LedgerWorld, channel: Channel, kib: int, requests: int) -> tuple[int, int]:
    """The channel's usage after ``kib`` KiB and ``requests`` more, cut to what its
    deposit covers."""
    world.refresh(channel)
    terms = channel.terms
    b, r = terms.claimed_usage or (0, 0)
    sla, deposit = terms.sla, terms.deposited
    r2 = r + requests
    while r2 > r and fee(sla, b, r2) > deposit:
        r2 -= 1
    b2 = b + kib * 1024
    if fee(sla, b2, r2) > deposit:
        b2 = (
            max(b, (deposit - r2 * sla.price_per_request) * 1024 // sla.price_per_kib)
            if sla.price_per_kib
            else b2
        )
    return b2, r2


def _serve(world: LedgerWorld, channel: Channel, operation: Serve) -> Step:
    if channel.terms.claimed_usage is None:
        world.refresh(channel)
    usage = _next_usage(world, channel, operation.kib, operation.requests)
    if fee(channel.terms.sla, *usage) > channel.terms.deposited:
        return Step(operation, "skipped")
    receipt = world.sign(channel, *usage)
    return _guarded(world, operation, lambda: world.claim(channel, receipt))


def _claim_flawed(world: LedgerWorld, channel: Channel, operation: ClaimFlawed) -> Step:
    world.refresh(channel)
    terms = channel.terms
    if operation.flaw not in possible_flaws(terms) or terms.claimed_usage is None:
        return Step(operation, "skipped")
    b, r = terms.claimed_usage
    if fee(terms.sla, b, r + 1) <= terms.deposited:
        r += 1
    base = terms.receipt(b, r)
    receipt = _flawed(world, channel, base, operation.flaw)
    before = world.ledger.get_escrow(channel.escrow_id)
    step = _guarded(
        world, operation, lambda: world.ledger.claim(world.server, channel.escrow_id, receipt)
    )
    after = world.ledger.get_escrow(channel.escrow_id)
    if step.error is None:
        raise AssertionError(f"the ledger took a receipt with flaw {operation.flaw.name}")
    if not after.settled:
        assert step.error == operation.flaw.error, (operation.flaw, step.error)
    assert (after.claimed, after.latest_nonce) == (before.claimed, before.latest_nonce)
    return step


def _flawed(world: LedgerWorld, channel: Channel, base: Receipt, flaw: Flaw) -> Receipt:
    terms = channel.terms
    b, r, nonce = base.total_bytes, base.total_requests, base.nonce
    if flaw is Flaw.FORGED:
        return terms.receipt(b, r, nonce=nonce, signer=STRANGER)
    if flaw is Flaw.TAMPERED:
        return replace(base, total_requests=r + 1)
    if flaw is Flaw.BAD_SIGNATURE:
        return replace(base, signature=bytes([base.signature[0] ^ 1]) + base.signature[1:])
    if flaw is Flaw.OTHER_CONNECTION:
        return replace(terms, connection_id="0x" + "ab" * 32).receipt(b, r, nonce=nonce)
    if flaw is Flaw.OTHER_ESCROW:
        return replace(terms, escrow_id="0x" + "cd" * 32).receipt(b, r, nonce=nonce)
    if flaw is Flaw.OTHER_PACKAGE:
        return replace(terms, package="0x" + "ef" * 32).receipt(b, r, nonce=nonce)
    if flaw is Flaw.AMOUNT_MISMATCH:
        return terms.receipt(b, r, fee(terms.sla, b, r) + 1, nonce)
    if flaw is Flaw.EXCEEDS_DEPOSIT:
        sla = terms.sla
        if sla.price_per_request:
            return terms.receipt(0, terms.deposited // sla.price_per_request + 1, nonce=nonce)
        return terms.receipt((terms.deposited + 1) * 1024 // sla.price_per_kib + 1, 0, nonce=nonce)
    if flaw is Flaw.REPLAYED:
        return terms.receipt(b, r, nonce=terms.latest_nonce)
    # NOT_CUMULATIVE (possible once more than 0 was claimed): no usage at all, fee 0
    return terms.receipt(0, 0, nonce=nonce)
