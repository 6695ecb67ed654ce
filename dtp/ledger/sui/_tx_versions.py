"""Offline builders of each versioned object's migration (docs/escrow.md "Versions"):
``migrate(&AdminCap, &mut obj)`` of the object's module, rows of
:data:`dtp.ledger.sui._tx.MOVE_CALLS` like every other builder's, the AdminCap an owned
input (its holder alone can sign for it), the object a mutable shared one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from dtp.ledger._versions import MIGRATE, MIGRATE_BUILDERS
from dtp.ledger.sui._tx import MOVE_CALL_BUILDERS, MOVE_CALLS, OwnedRef, SharedRef, TxContext

__all__ = ["MIGRATION_BUILDERS", "MIGRATION_TARGETS", "migrate"]


def migrate(ctx: TxContext, struct: str, admin_cap: OwnedRef, obj: SharedRef) -> bytes:
    """``migrate`` of ``struct``'s module (``host::migrate(&cap, &mut host)``,
    ``sponsor::migrate_pool(&cap, &mut pool)``, ...)."""
    return MIGRATION_BUILDERS[MIGRATE_BUILDERS[struct]](ctx, admin_cap, obj)


#: Builder name (:data:`~dtp.ledger._versions.MIGRATE_BUILDERS`) -> builder.
MIGRATION_BUILDERS: Final[dict[str, Callable[..., bytes]]] = {
    name: MOVE_CALL_BUILDERS[name] for name in MIGRATE_BUILDERS.values()
}

#: Builder name -> the Move function its transaction calls.
MIGRATION_TARGETS: Final[dict[str, tuple[str, str]]] = {
    name: MOVE_CALLS[name][:2] for name in MIGRATE_BUILDERS.values()
}
assert set(MIGRATION_TARGETS.values()) == set(MIGRATE.values())
