"""Hypothesis state machine on LocalLedger: random deposits, receipts (valid, forged,
replayed, oversized, non-cumulative, mismatched), claims, closes, finalizes, settles,
top-ups, epochs, cap changes and clock moves.

Each claim's outcome is predicted independently (docs/escrow.md §6 check order) and
compared; every failed call must leave the whole ledger unchanged; balances may change
only as the rules say; a top-up of 0 is never refused by the cap, however far a lowering
took it. It runs on dtp.testing's LedgerWorld (tests/ledger/escrow_machine.py).
Invariants: LedgerWorld.check (MIST conserved, escrow balance == deposited − claimed −
refunded, no claim beyond a receipt the client signed, a settled escrow empty),
every cap holds exactly the deposits outstanding and the claims counted in its epoch
(and each escrow its part of them) as docs/escrow.md §4 tells, no epoch's claims --
what servers were paid in it plus all its escrows could still pay -- exceed the limit in
force at the cap's latest reservation, and the Host is never written by a connection
(docs/escrow.md §19).
"""

from __future__ import annotations

from hypothesis import settings

from tests.ledger.escrow_machine import LedgerMachine

LedgerMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestLedgerMachine = LedgerMachine.TestCase
