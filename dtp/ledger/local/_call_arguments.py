"""The u64 check the local ledger's calls share (the others are
:class:`~dtp.ledger.local._store.LocalStore`'s: IDs, ports, SLAs and receipts)."""

from __future__ import annotations

from typing import Final

from dtp.errors import InvalidArgument

U64_MAX: Final = 2**64 - 1


def u64(value: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= U64_MAX:
        raise InvalidArgument(f"{what} must be an integer from 0 to 2**64-1, got {value!r}.")
    return value
