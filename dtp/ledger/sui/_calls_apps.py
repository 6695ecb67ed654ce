"""SuiLedger's own part of the applications' calls: plain transfers of SUI, registries,
response escrows and a sponsor lane's pledges read from the node (the calls themselves are
the Ledger mixins', sent by ``SuiLedgerCore._move``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dtp.errors import ObjectNotFound
from dtp.ledger._coordination import RegistryState
from dtp.ledger._objects import check_signer, check_transfer_amount, normalize_id
from dtp.ledger.interface import ResponseEscrow
from dtp.ledger.sui import _tx as sui_tx
from dtp.ledger.sui._client import MalformedResponse
from dtp.ledger.sui._codec import RESPONSE_ESCROW_LAYOUT, BcsDecodeError, decode, id_field_id
from dtp.ledger.sui._coordination import decode_registry
from dtp.ledger.sui._economics import pledges_table_id
from dtp.ledger.sui._ledger import SuiLedgerCore

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity


class SuiAppCalls(SuiLedgerCore):
    """Transfers of SUI, and the reads of registries, response escrows and sponsor lanes'
    pledges."""

    def transfer(self, signer: HostIdentity, recipient: str, amount: int) -> None:
        check_signer(signer)
        to = normalize_id(recipient, "recipient address")
        check_transfer_amount(amount)
        # (the pool leases coins covering the budget and the amount, or raises
        # InsufficientFunds saying what the address holds: nothing is sent then)
        self._execute(signer, "transfer", lambda ctx: sui_tx.transfer_sui(ctx, to, amount), amount)

    def get_registry(self, registry_id: str) -> RegistryState:
        obj = self._app_object(registry_id, "Registry")
        return decode_registry(obj.version, obj.contents)

    def get_response_escrow(self, escrow_id: str) -> ResponseEscrow:
        obj = self._app_object(escrow_id, "ResponseEscrow")
        d = decode(RESPONSE_ESCROW_LAYOUT, obj.contents)
        return ResponseEscrow.from_fields(obj.object_id, obj.version, d)

    def _sponsor_pledge(self, lane_id: str, connection_id: str) -> int | None:
        """One GetObject of the pledge's dynamic field, whose ID is derived from the
        lane's pledges table (read once per lane: it never changes) and the connection."""
        key = normalize_id(lane_id)
        with self._shared_lock:
            table = self._pledge_tables.get(key)
        if table is None:
            try:
                table = pledges_table_id(self._model_object(key, "SponsorLane").contents)
            except BcsDecodeError as exc:
                raise BcsDecodeError(f"SponsorLane {key} does not decode ({exc}).") from None
            self._remember(self._pledge_tables, key, table)
        field_id = id_field_id(table, connection_id)
        try:
            entry = self._node.get_object(field_id)
        except ObjectNotFound:
            return None
        # Field<ID, u64> { id, name: the connection, value: the pledge }
        head = bytes.fromhex(field_id[2:] + normalize_id(connection_id)[2:])
        if len(entry.contents) != len(head) + 8 or not entry.contents.startswith(head):
            raise MalformedResponse(
                f"The node sent {entry.type} {field_id} as lane {key}'s pledge to "
                f"{connection_id}: not a Field<ID, u64> of it."
            )
        return int.from_bytes(entry.contents[len(head) :], "little")
