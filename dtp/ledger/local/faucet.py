"""The local ledger's test money (:class:`Faucet`): minting it, moving it between
addresses (a plain transfer, Sui's ``transfer-sui``), and auditing where every MIST is
(conservation: docs/escrow.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from dtp.errors import InsufficientFunds, InvalidArgument
from dtp.ledger.local import rules
from dtp.ledger.local.call_arguments import U64_MAX, u64
from dtp.ledger.local.rules import economics as local_economics
from dtp.ledger.local.stored import SHAPE_ERRORS, SqlStore, _balance
from dtp.ledger.local.transactions import _UPSERT_BALANCE, SqliteTransactions
from dtp.ledger.objects import check_signer, check_transfer_amount, normalize_id

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity

#: Escrow-like money holders of the payment models: Move type -> the balance field.
_ESCROW_LIKE: Final = {
    local_economics.OBJECT_TYPES["Subscription"]: "funds",
    local_economics.OBJECT_TYPES["SponsorPool"]: "funds",
    local_economics.OBJECT_TYPES["RetainedRecord"]: "deposit",
}


class Faucet(SqliteTransactions):
    """The faucet, the audit of all MIST and the dump of every row of
    :class:`~dtp.ledger.local.store.LocalStore`."""

    def faucet(self, address: str, amount: int) -> int:
        """Mint ``amount`` test MIST to ``address``; returns its new balance. The total ever
        minted may not exceed 2**64-1 (so no u64 sum of MIST can overflow)."""
        address = normalize_id(address, "address")
        u64(amount, "the faucet amount")

        def apply() -> int:
            minted = rules.stored_int(self._meta("minted")) + amount
            if minted > U64_MAX:
                raise InvalidArgument(
                    f"The faucet cannot mint {amount} MIST: the total would pass 2**64-1."
                )
            self._set_meta("minted", minted)
            new = SqlStore(self._db).balance(address) + amount
            self._db.execute(_UPSERT_BALANCE, (address, str(new)))
            return new

        return self._write(apply)

    def transfer(self, signer: HostIdentity, recipient: str, amount: int) -> None:
        """Move ``amount`` MIST from the signer's balance to ``recipient``'s
        (:meth:`dtp.ledger.interface.Ledger.transfer`): what a Sui transfer of SUI does,
        without gas (LocalLedger charges none) and without an event (Sui's has none).
        The total minted stays as it was: the audit still balances."""
        check_signer(signer)
        sender = normalize_id(signer.sui_address, "address")
        to = normalize_id(recipient, "recipient address")
        check_transfer_amount(amount)

        def apply() -> None:
            store = SqlStore(self._db)
            held = store.balance(sender)
            if amount > held:
                # in Sui's words for a coin split beyond its balance (the rules' take_coin)
                raise InsufficientFunds(
                    f"Address {sender} has {held} MIST, {amount} are needed.",
                    name="InsufficientCoinBalance",
                    module="sui",
                )
            if to != sender:
                self._db.execute(_UPSERT_BALANCE, (sender, str(held - amount)))
                self._db.execute(_UPSERT_BALANCE, (to, str(store.balance(to) + amount)))

        self._write(apply)

    def minted(self) -> int:
        """Total MIST ever minted by the faucet."""
        return self._read_one(lambda: rules.stored_int(self._meta("minted")))

    def audit(self) -> dict[str, int]:
        """Where all MIST is: ``minted``, ``balances``, ``escrows`` (connection escrows,
        prepaid response fees, unearned subscription money, sponsor pools and retained
        records' storage deposits), ``broadcasts`` (pools plus unclaimed earnings, and ticket
        money of events not yet on air). Conservation holds iff minted == the other three."""

        def read() -> dict[str, int]:
            rows = self._db.execute("SELECT address, amount FROM balances")
            balances = sum(_balance(address, amount) for address, amount in rows)
            escrows = broadcasts = 0
            for object_id, type_, data in self._db.execute("SELECT id, type, data FROM objects"):
                obj = rules.from_json(data)
                try:
                    if type_ == rules.OBJECT_TYPES["Escrow"]:
                        escrows += obj["funds"]
                    elif type_ == rules.OBJECT_TYPES["Broadcast"]:
                        broadcasts += obj["pool"] + obj["earned"]
                    elif type_ == rules.OBJECT_TYPES["ResponseEscrow"]:
                        escrows += obj["funds"]  # prepaid response fees count as escrow
                    elif type_ in _ESCROW_LIKE:
                        escrows += obj[_ESCROW_LIKE[type_]]
                    elif type_ == rules.OBJECT_TYPES["TicketSale"]:
                        broadcasts += obj["funds"]  # ticket money waits for an event to air
                except SHAPE_ERRORS as exc:
                    raise rules.wrong_shape(f"object {object_id}", exc) from exc
            return {
                "minted": rules.stored_int(self._meta("minted")),
                "balances": balances,
                "escrows": escrows,
                "broadcasts": broadcasts,
            }

        return self._read(read)

    def dump(self) -> dict[str, Any]:
        """Every row of every table (for tests comparing states)."""

        def read() -> dict[str, Any]:
            return {
                table: sorted(self._db.execute(f"SELECT * FROM {table}").fetchall())
                for table in ("meta", "objects", "balances", "events", "transactions")
            }

        return self._read(read)
