"""SuiLedger on a Sui node stand-in of its own, with the controls the ledger state
machines use on LocalLedger (faucet, clock, epochs, audit, dump), so that the same
machines check the same money rules through Sui transactions
(tests/ledger/test_economics_on_sui.py).

Gas is what sets the two apart: on Sui every transaction, failed ones too, costs its
sender gas from the same coins that pay. Every signer gets a grant of :data:`GAS` MIST
for it at the start, and :meth:`StandInLedger.balance` is the balance the rules speak
of: what the address holds, less its grant, plus the gas it paid. The audit counts the
gas paid with the balances, so ``minted == balances + escrows + broadcasts`` as on
LocalLedger. A payment beyond an address's rule balance would be paid from its grant on
Sui: the machines do not send those (:attr:`StandInLedger.pays_from_gas`), and the
stand-in's own refusal of a coin it does not hold is tested in
tests/ledger/test_sui_node_standin.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import ObjectRef
from dtp.ledger.sui import SuiConfig, SuiLedger
from dtp.testing.sui_node import SuiNodeStandIn

#: The gas grant of every signer (far beyond what a machine's run spends on gas).
GAS = 10**12
#: An epoch as long as the machines' runs never reach: they end epochs themselves.
EPOCH_MS = 10**15


class StandInLedger:
    """A SuiLedger on a fresh stand-in (clock frozen at ``clock_ms``), funded with a gas
    grant for each of ``signers``. Every ledger call is SuiLedger's own (a transaction
    or a read through the node's gRPC API); the controls go to the node."""

    #: A payment beyond the rule balance is taken from the gas grant here: not sent.
    pays_from_gas = True

    def __init__(self, signers: Iterable[HostIdentity], clock_ms: int = 0) -> None:
        self.node = SuiNodeStandIn(clock_ms=clock_ms, epoch_ms=EPOCH_MS).start()
        try:
            self.sui = SuiLedger(SuiConfig(self.node.url, self.node.package_id, timeout=30.0))
        except BaseException:
            self.node.close()
            raise
        self.granted: dict[str, int] = {}
        for who in signers:
            self.node.faucet(who.sui_address, GAS)
            self.granted[who.sui_address] = GAS

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sui, name)

    def close(self) -> None:
        try:
            self.sui.close()
        finally:
            self.node.close()

    # -- what LocalLedger has beyond the Ledger interface --------------------------------------

    def faucet(self, address: str, amount: int) -> None:
        if amount:
            self.node.faucet(address, amount)

    def balance(self, address: str) -> int:
        """The rule balance: held, less the gas grant, plus the gas paid."""
        held = self.sui.balance(address)
        return held - self.granted.get(address, 0) + self.node.gas_paid(address)

    def clock_ms(self) -> int:
        return self.sui.clock_ms()

    def set_clock(self, ms: int) -> None:
        self.node.set_clock(ms)

    def advance_clock(self, ms: int) -> int:
        return self.node.advance_clock(ms)

    def advance_epoch(self) -> int:
        return self.node.advance_epoch()

    def audit(self) -> dict[str, int]:
        """LocalLedger's audit: the gas paid counted with the balances it came from."""
        out = self.node.audit()
        gas = out.pop("gas")
        out["balances"] += gas
        return out

    def object_ref(self, object_id: str) -> ObjectRef:
        """Read through SuiLedger (the version) and the node (owner and type)."""
        version = self.sui.get_object(object_id).version
        row = self.node.state.object(object_id)
        assert row is not None, object_id
        return ObjectRef(object_id, version, row.owner or row.owner_kind, row.type)

    def dump(self) -> dict[str, Any]:
        """What a failed transaction must leave as it was: every object's contents (not its
        version, which Sui bumps for the inputs of a failed transaction too) and the rule
        balances of the funded addresses."""
        rows = self.node.state.ledger.dump()["objects"]
        return {
            "objects": sorted((id_, type_, owner, data) for id_, type_, owner, _v, data in rows),
            "balances": {a: self.balance(a) for a in sorted(self.granted)},
        }
