"""SuiLedger's migration builders (dtp/ledger/sui/_tx_versions.py) pinned by golden bytes:
one for each versioned struct, calling its module's ``migrate`` with the AdminCap as an
owned input and the object as a mutable shared one; and the Move package has that
function for every struct, taking ``&AdminCap`` and ``&mut`` the struct.

Regenerate the golden vectors (only after a deliberate change to the builders)::

    python -m tests.ledger.test_migration_builders --regenerate
"""

from __future__ import annotations

import json

import pytest
from pysui.sui.sui_bcs import bcs

from dtp.ledger._versions import MIGRATE, MIGRATE_BUILDERS, VERSIONED
from dtp.ledger.sui import _tx_versions as tx
from dtp.ledger.sui._tx import OwnedRef, SharedRef
from tests.ledger.sui_tx_cases import CTX, PACKAGE, SENDER
from tests.ledger.test_move_signatures import parse_package
from tests.support.golden_tx import regenerate_main, write_golden
from tests.support.paths import GOLDEN as GOLDEN_DIR

GOLDEN = GOLDEN_DIR / "migration_transactions.json"
ADMIN_CAP = OwnedRef("0x" + "ad" * 32, 3, "11111111111111111111111111111111")
OBJECT = SharedRef("0x" + "0b" * 32, 17)


def build_all() -> dict[str, str]:
    return {
        name: builder(CTX, ADMIN_CAP, OBJECT).hex()
        for name, builder in tx.MIGRATION_BUILDERS.items()
    }


def test_every_versioned_struct_has_a_migration() -> None:
    assert set(MIGRATE) == VERSIONED and len(VERSIONED) == 14
    assert set(tx.MIGRATION_BUILDERS) == set(MIGRATE_BUILDERS.values()) == set(tx.MIGRATION_TARGETS)
    package = parse_package()
    for struct, (module, function) in MIGRATE.items():
        fun = package[module][function]
        assert fun.callable_from_ptb, (module, function)
        assert [t for _, t in fun.params] == ["&AdminCap", f"&mut {struct}"], (module, function)


@pytest.mark.parametrize("name", sorted(MIGRATE_BUILDERS.values()))
def test_migration_golden_bytes(name: str) -> None:
    golden = json.loads(GOLDEN.read_text())["transactions"]
    built = build_all()[name]
    assert built == golden[name], (
        "run python -m tests.ledger.test_migration_builders --regenerate after a deliberate change"
    )
    data = bcs.TransactionData.from_bytes(bytes.fromhex(built)).value
    assert data.Sender.to_address_str() == SENDER.sui_address
    ptx = data.TransactionKind.value
    (command,) = [c.value for c in ptx.Command]
    assert command.Package.to_address_str() == PACKAGE
    assert (command.Module, command.Function) == tx.MIGRATION_TARGETS[name]
    cap, obj = (ptx.Inputs[a.value].value for a in command.Arguments)
    assert cap.enum_name == "ImmOrOwnedObject"
    assert cap.value.ObjectID.to_address_str() == ADMIN_CAP.object_id
    assert cap.value.SequenceNumber == ADMIN_CAP.version
    assert obj.enum_name == "SharedObject"
    assert obj.value.ObjectID.to_address_str() == OBJECT.object_id and obj.value.Mutable


def regenerate() -> None:
    """Rewrite tests/golden/migration_transactions.json from the current builders."""
    write_golden(
        GOLDEN,
        (
            "the dtp.ledger.sui._tx_versions builders for a fixed AdminCap and object "
            "(tests/ledger/test_migration_builders.py)"
        ),
        build_all(),
    )


if __name__ == "__main__":
    regenerate_main(regenerate)
