"""What a ledger charges in gas for the end of a connection (and for a claim made while it
lives), and what an address has paid so far (docs/escrow.md §7.1).

On Sui every transaction costs its sender gas on top of what it moves; a connection's
end is a transaction of its server (the claim and the settlement, one
``settle_with_receipt``) or two of its client (its half-close, then its settlement once
the half-close timeout has passed). A server whose connection earned less than its end
costs in gas loses money by claiming: :class:`EndGas` is what each of those
transactions is expected to cost, which the paid servers and the daemon weigh against
the fee (:mod:`dtp.payments._ends`). LocalLedger charges no gas: its :meth:`EndGas.free`
makes every end worth its transaction, as before gas was weighed.

:class:`GasSpent` is what an address has paid in gas through one ledger object (a
process's), by the kind of transaction: ``dtp status`` shows the daemon's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

__all__ = ["END_KINDS", "EndGas", "GasSpent", "end_kind"]


@dataclass(frozen=True)
class EndGas:
    """MIST of gas each transaction of a connection's end is expected to cost its
    sender (net: computation and storage less the storage rebate)."""

    settle_claim: int
    """The server's claim and settlement in one transaction (``settle_with_receipt``):
    the connection closed, the fee paid to the server, the rest refunded."""
    settle_refund: int
    """A settlement that claims nothing (``settle``): the whole balance refunded. The
    server's, or the client's own once the half-close timeout has passed."""
    batch_claim: int
    """One more connection's claim and settlement in a transaction that settles several
    (``settle_batch``): what it adds to that transaction's gas."""
    client_close: int
    """The client's half-close (``close``), which starts the half-close timeout."""
    observed: bool = True
    """Whether the figures come from transactions this ledger paid for (else from the
    network's gas price and a model of the objects written: docs/sui.md, "Gas")."""
    claim_only: int | None = None
    """A claim alone (``escrow::claim``), made while the connection lives; None: not
    known apart (see :attr:`claim`)."""

    @classmethod
    def free(cls) -> EndGas:
        """A ledger that charges no gas (LocalLedger)."""
        return cls(0, 0, 0, 0, True, 0)

    @property
    def claim(self) -> int:
        """What a claim made while the connection lives costs (``escrow::claim``: the
        server's payment as a new coin, the escrow rewritten): :attr:`claim_only`, else
        the figure of a settlement that claims nothing, which writes that and a little
        more (the connection and the cap): never less than the claim."""
        return self.settle_refund if self.claim_only is None else self.claim_only

    @property
    def charged(self) -> bool:
        """Whether the ledger charges gas for a connection's end at all."""
        return bool(self.settle_claim or self.settle_refund or self.client_close)

    @property
    def client_refund(self) -> int:
        """What a client pays to take its deposit back alone: its half-close, then its
        settlement after the timeout."""
        return self.client_close + self.settle_refund

    def batch(self, count: int) -> int:
        """The gas of one transaction settling ``count`` connections with receipts."""
        if count <= 0:
            return 0
        return self.settle_claim + (count - 1) * self.batch_claim


#: The kinds of transaction :class:`GasSpent` sorts gas into, and the Move functions of
#: each (a kind not listed is ``other``).
END_KINDS: Final[Mapping[str, frozenset[str]]] = {
    "ends": frozenset(
        {
            "escrow::claim",
            "transport_control::settle",
            "transport_control::settle_with_receipt",
            "transport_control::settle_batch",
            "transport_control::close",
            "transport_control::finalize",
        }
    ),
    "opens": frozenset(
        {
            "spending_cap::create",
            "transport_control::open",
            "escrow::top_up",
            "subscription::open_connection",
            "sponsor::open_connection",
        }
    ),
    "host": frozenset(
        {
            "host::create",
            "host::set_authority",
            "host::set_noise_static_key",
            "host::set_endpoints",
            "host::set_firewall_mode",
            "host::allow",
            "host::disallow",
            "host::deny",
            "host::undeny",
            "host::set_client_limits",
            "host::add_service",
            "host::update_service",
            "host::remove_service",
        }
    ),
}


def end_kind(what: str) -> str:
    """The :data:`END_KINDS` kind of a transaction named ``what`` (``module::function``,
    as SuiLedger names its transactions), ``other`` for the rest."""
    for kind, names in END_KINDS.items():
        if what in names:
            return kind
    return "other"


@dataclass(frozen=True)
class GasSpent:
    """Gas one address paid through one ledger object, in MIST (failed transactions
    included: Sui charges them too)."""

    total: int = 0
    transactions: int = 0
    by_kind: Mapping[str, int] = field(default_factory=dict)
    """MIST by :func:`end_kind` (``ends``, ``opens``, ``host``, ``other``)."""

    def to_json(self) -> dict[str, object]:
        """The figures as JSON values (``by_kind`` sorted by kind)."""
        return {
            "total": self.total,
            "transactions": self.transactions,
            "by_kind": dict(sorted(self.by_kind.items())),
        }
