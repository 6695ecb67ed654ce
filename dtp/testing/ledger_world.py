"""A small economy on a ledger for tests: one server publishing one paid service, clients
with funds and spending caps, their connections, every receipt each client signed, and
the checks that must hold whatever happened (:meth:`LedgerWorld.check`).

    world = LedgerWorld()                      # LocalLedger in memory, clock frozen at 0
    ch = world.open(0, deposit=1_000)          # client 0 opens a connection
    world.claim(ch, world.sign(ch, 10_240, 4)) # the server claims a receipt the client signed
    world.check()                              # money conserved, no claim beyond a receipt...

The escrow state machine (:class:`dtp.testing.machines.EscrowMachine`) and the ledger
operation sequences (:func:`dtp.testing.strategies.ledger_operations`) run on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from dtp.identity.keys import HostIdentity
from dtp.ledger._connections import client_settles_at
from dtp.ledger._objects import ConnectionState, Settlement, Sla
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from dtp.ledger.receipt import Receipt
from dtp.testing.identities import identity
from dtp.testing.receipts import ReceiptTerms

__all__ = ["DEFAULT_SLA", "Channel", "LedgerWorld", "WorldBroken"]

#: 10 MIST per KiB, 5 per request, a deposit of at least 100 (docs/escrow.md's examples).
DEFAULT_SLA: Final = Sla(price_per_kib=10, price_per_request=5, min_deposit=100)


class WorldBroken(AssertionError):
    """A check of :meth:`LedgerWorld.check` failed: a rule of docs/escrow.md was broken."""


@dataclass
class Channel:
    """One ledger connection of the world: its IDs, its client, and every receipt the
    client signed for it through :meth:`LedgerWorld.sign` (what the server may claim)."""

    client: HostIdentity
    connection_id: str
    escrow_id: str
    cap_id: str
    terms: ReceiptTerms
    signed: list[Receipt] = field(default_factory=list)

    @property
    def most_signed(self) -> int:
        """The largest amount the client signed for (0 before any receipt)."""
        return max((r.total_amount for r in self.signed), default=0)


class LedgerWorld:
    """One server (``server``), its Host and one service on ``port`` with ``sla``, and
    ``clients`` funded identities with ``funds`` MIST and a spending cap each, on
    ``ledger`` (a LocalLedger in memory with its clock frozen at ``clock_ms`` by default).
    Another ledger needs a ``faucet(address, amount)`` to fund from: the ledger's own, or
    ``faucet=`` (a Sui node stand-in's, for a SuiLedger on it: the server is funded too
    then, for its gas). On Sui, gas moves balances beyond what the rules do, so checks
    of balances before and after a call hold on LocalLedger only; :meth:`check`'s hold
    on both.

    Every call is the ledger's own: a rule it breaks raises the ledger's error, which
    callers catch as they expect. :meth:`check` asserts what must hold after any of them.
    """

    def __init__(
        self,
        ledger: Ledger | None = None,
        *,
        clients: int = 2,
        funds: int = 100_000,
        sla: Sla = DEFAULT_SLA,
        port: int = 7,
        server: HostIdentity | None = None,
        clock_ms: int = 0,
        cap: int = 10**12,
        first_identity: int = 1,
        faucet: Callable[[str, int], object] | None = None,
    ) -> None:
        self.ledger: Ledger = (
            ledger if ledger is not None else LocalLedger(":memory:", clock_ms=clock_ms)
        )
        self.server = server if server is not None else identity(first_identity)
        self.clients = [identity(first_identity + 1 + n) for n in range(clients)]
        self.sla, self.port = sla, port
        if faucet is not None:
            faucet(self.server.sui_address, funds)  # (its gas, on a ledger that charges it)
        else:
            faucet = getattr(self.ledger, "faucet", None)
            if faucet is None:
                raise TypeError(
                    f"{type(self.ledger).__name__} has no faucet to fund the clients: pass faucet="
                )
        self.host_id = self.ledger.create_host(self.server, self.server.noise_public)
        self.ledger.add_service(self.server, self.host_id, port, "raw", sla)
        self.caps: dict[str, str] = {}
        for client in self.clients:
            faucet(client.sui_address, funds)
            self.caps[client.sui_address] = self.ledger.create_spending_cap(client, cap)
        self.channels: list[Channel] = []

    # -- the participants' calls ---------------------------------------------------------------

    def client(self, who: int | HostIdentity) -> HostIdentity:
        """A client by its index (or itself)."""
        return self.clients[who] if isinstance(who, int) else who

    def open(self, who: int | HostIdentity, deposit: int) -> Channel:
        """``who`` opens a connection to the service with ``deposit`` MIST."""
        client = self.client(who)
        opened = self.ledger.open_connection(
            client, self.host_id, self.port, self.caps[client.sui_address], deposit
        )
        channel = Channel(
            client,
            opened.connection_id,
            opened.escrow_id,
            self.caps[client.sui_address],
            ReceiptTerms.of(self.ledger, opened.connection_id, client),
        )
        self.channels.append(channel)
        return channel

    def sign(
        self,
        channel: Channel,
        total_bytes: int,
        total_requests: int,
        *,
        amount: int | None = None,
        nonce: int | None = None,
    ) -> Receipt:
        """The client signs a receipt for ``channel``'s usage so far (the fee by default,
        the next nonce after any it signed); it is noted as signed."""
        last = max((r.nonce for r in channel.signed), default=channel.terms.latest_nonce)
        receipt = channel.terms.receipt(
            total_bytes, total_requests, amount, last + 1 if nonce is None else nonce
        )
        channel.signed.append(receipt)
        return receipt

    def claim(
        self, channel: Channel, receipt: Receipt, *, signer: HostIdentity | None = None
    ) -> int:
        """The server (or ``signer``) claims ``receipt`` on ``channel``'s escrow."""
        paid = self.ledger.claim(signer or self.server, channel.escrow_id, receipt)
        channel.terms = channel.terms.after(receipt)
        return paid

    def top_up(self, channel: Channel, amount: int) -> None:
        """The client adds ``amount`` to ``channel``'s escrow."""
        self.ledger.top_up(channel.client, channel.escrow_id, amount)
        self.refresh(channel)

    def close(self, channel: Channel, who: HostIdentity) -> None:
        """``who`` closes ``channel`` (a half-close first, then the other side's close)."""
        self.ledger.close_connection(who, channel.connection_id)

    def finalize(self, channel: Channel, who: HostIdentity) -> None:
        """``who`` finalizes a half-closed connection once its timeout passed."""
        self.ledger.finalize(who, channel.connection_id)

    def settle(self, channel: Channel, who: HostIdentity) -> Settlement:
        """``who`` settles ``channel``: the escrow's balance back to the client."""
        return self.ledger.settle(who, channel.connection_id)

    def settle_with_receipt(self, channel: Channel, receipt: Receipt) -> Settlement:
        """The server's final settlement, claiming ``receipt`` first."""
        done = self.ledger.settle_with_receipt(self.server, channel.connection_id, receipt)
        channel.terms = channel.terms.after(receipt)
        return done

    def refresh(self, channel: Channel) -> None:
        """Read ``channel``'s escrow again (after calls made elsewhere, on its ledger)."""
        escrow = self.ledger.get_escrow(channel.escrow_id)
        usage = channel.terms.claimed_usage if escrow.claimed == channel.terms.claimed else None
        channel.terms = ReceiptTerms(
            channel.connection_id,
            channel.escrow_id,
            channel.client,
            escrow.sla,
            escrow.deposited,
            escrow.claimed,
            escrow.latest_nonce,
            channel.terms.package,
            usage if escrow.claimed else (0, 0),
        )

    def advance_clock(self, ms: int) -> None:
        """Move the ledger's (frozen) clock on by ``ms``."""
        advance = getattr(self.ledger, "advance_clock", None)
        if advance is None:
            raise TypeError(f"{type(self.ledger).__name__} has no clock to move")
        advance(ms)

    # -- what the participants hold --------------------------------------------------------------

    def balances(self) -> dict[str, int]:
        """Every participant's balance, by Sui address."""
        who = [self.server, *self.clients]
        return {p.sui_address: self.ledger.balance(p.sui_address) for p in who}

    def client_settles_at(self, channel: Channel) -> int | None:
        """When the client may settle ``channel`` alone: the connection's half-close
        timeout after its first close (None while it is Open, or once settled)."""
        return client_settles_at(self.ledger.get_connection(channel.connection_id))

    # -- what must always hold -------------------------------------------------------------------

    def check(self) -> None:
        """Assert docs/escrow.md's invariants (:class:`WorldBroken` names the one broken):

        - MIST is conserved, on a ledger that can tell (LocalLedger's ``audit()``:
          ``minted == balances + escrows + broadcasts``);
        - each escrow's books balance: ``balance == deposited - claimed - refunded >= 0``,
          and nothing is claimed beyond the deposit;
        - no claim beyond a signed receipt: what the server took from an escrow is the
          amount of a receipt its client signed (0 before any claim), never more than
          the most the client signed for;
        - a settled escrow holds nothing, its connection is Closed, and the client got
          back exactly what was not claimed.
        """
        audit = getattr(self.ledger, "audit", None)
        if audit is not None:
            a = audit()
            if a["minted"] != a["balances"] + a["escrows"] + a["broadcasts"]:
                raise WorldBroken(f"MIST not conserved: {a}")
        for channel in self.channels:
            self._check_channel(channel)

    def _check_channel(self, channel: Channel) -> None:
        e = self.ledger.get_escrow(channel.escrow_id)
        name = channel.connection_id
        if not e.balance == e.deposited - e.claimed - e.refunded >= 0:
            raise WorldBroken(f"{name}: escrow books do not balance: {e}")
        if e.claimed > e.deposited:
            raise WorldBroken(f"{name}: claimed {e.claimed} beyond the deposit {e.deposited}")
        signed = {r.total_amount for r in channel.signed}
        if e.claimed > channel.most_signed:
            raise WorldBroken(
                f"{name}: the server took {e.claimed} MIST, the client signed for at most "
                f"{channel.most_signed}"
            )
        if e.claimed and e.claimed not in signed:
            raise WorldBroken(f"{name}: claimed {e.claimed}, the amount of no receipt signed")
        tc = self.ledger.get_connection(channel.connection_id)
        if tc.settled != e.settled:
            raise WorldBroken(f"{name}: connection settled={tc.settled}, escrow {e.settled}")
        if e.settled and (
            e.balance
            or tc.state is not ConnectionState.CLOSED
            or e.refunded != e.deposited - e.claimed
        ):
            raise WorldBroken(f"{name}: settled but {e} / {tc.state}")
