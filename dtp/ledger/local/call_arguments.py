"""The arguments the local ledger's calls share (:class:`CallArguments`): IDs, ports,
SLAs and receipts checked and turned into a transaction's values."""

from __future__ import annotations

from typing import Final

from dtp.errors import InvalidArgument
from dtp.ledger.local.tx import Address
from dtp.ledger.objects import Sla, as_bytes, normalize_id
from dtp.ledger.receipt import Receipt

U64_MAX: Final = 2**64 - 1


def u64(value: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= U64_MAX:
        raise InvalidArgument(f"{what} must be an integer from 0 to 2**64-1, got {value!r}.")
    return value


class CallArguments:
    """The argument checks of :class:`~dtp.ledger.local.store.LocalStore`'s calls."""

    @staticmethod
    def _id(value: str, what: str = "object ID") -> Address:
        return Address(normalize_id(value, what))

    @staticmethod
    def _port(port: int) -> int:
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 0xFFFF:
            raise InvalidArgument(f"A port is a u16 (0..65535), got {port!r}.")
        return port

    @staticmethod
    def _sla_args(sla: Sla) -> tuple[int, int, int]:
        if not isinstance(sla, Sla):
            raise InvalidArgument(f"sla must be an Sla, got {type(sla).__name__}.")
        return (
            u64(sla.price_per_kib, "price_per_kib"),
            u64(sla.price_per_request, "price_per_request"),
            u64(sla.min_deposit, "min_deposit"),
        )

    @staticmethod
    def _receipt_args(receipt: Receipt) -> tuple[int, int, int, int, bytes]:
        if not isinstance(receipt, Receipt):
            raise InvalidArgument(f"receipt must be a Receipt, got {type(receipt).__name__}.")
        return (
            u64(receipt.total_bytes, "total_bytes"),
            u64(receipt.total_requests, "total_requests"),
            u64(receipt.total_amount, "total_amount"),
            u64(receipt.nonce, "nonce"),
            as_bytes(receipt.signature, "signature"),
        )
