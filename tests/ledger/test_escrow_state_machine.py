"""Hypothesis state machine on LocalLedger: random deposits, receipts (valid, forged,
replayed, oversized, non-cumulative, mismatched), claims, closes, finalizes, settles,
top-ups, epochs, cap changes and clock moves.

Each claim's outcome is predicted independently (docs/escrow.md §6 check order) and
compared; every failed call must leave the whole ledger unchanged; balances may change
only as the rules say. Invariants: MIST conserved, escrow balance == deposited − claimed
− refunded, every cap holds exactly the reservations (opens, top-ups) less the releases
(settlements in the reservation's epoch) of its epoch, never beyond its limit when it was
made, and the Host is never written by a connection (docs/escrow.md §4, "Throughput").
"""

from __future__ import annotations

from hypothesis import settings

from tests.ledger.escrow_machine import LedgerMachine

LedgerMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestLedgerMachine = LedgerMachine.TestCase
