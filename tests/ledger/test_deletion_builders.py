"""SuiLedger's deletion builders (dtp/ledger/sui/_tx_deletion.py) pinned by golden bytes:
each deleted object a mutable shared input (a shared object taken by value must be), the
Clock read-only, and the two-call transactions -- the client's ``settle`` then
``destroy``, the requester's ``refund`` then ``destroy`` -- using one input for each
object, borrowed by the first call and moved by the second.

Regenerate the golden vectors (only after a deliberate change to the builders)::

    python -m tests.ledger.test_deletion_builders --regenerate
"""

from __future__ import annotations

import json

import pytest
from pysui.sui.sui_bcs import bcs

from dtp.ledger._deletion import Deletions
from dtp.ledger.sui import _tx as sui_tx
from dtp.ledger.sui import _tx_deletion as tx
from dtp.ledger.sui._tx import CLOCK_ID
from tests.ledger.deletion_tx_cases import CASES
from tests.ledger.payment_model_cases import LANE, POOL
from tests.ledger.sui_tx_cases import CTX, PACKAGE, SENDER
from tests.support.golden_tx import regenerate_main, write_golden
from tests.support.paths import GOLDEN as GOLDEN_DIR

GOLDEN = GOLDEN_DIR / "deletion_transactions.json"


def build_all() -> dict[str, str]:
    return {name: tx.DELETION_BUILDERS[name](CTX, *args).hex() for name, (args, _) in CASES.items()}


def test_every_deletion_has_a_builder_and_a_case() -> None:
    methods = {n for n in vars(Deletions) if not n.startswith("_") and n != "storage_rebate"}
    assert set(tx.DELETION_BUILDERS) == set(tx.DELETION_TARGETS) == set(CASES)
    assert methods == set(tx.DELETION_BUILDERS) - set(tx.VARIANTS)
    assert set(tx.VARIANTS.values()) <= methods
    assert not set(tx.DELETION_BUILDERS) & set(sui_tx.BUILDERS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_deletion_golden_bytes(name: str) -> None:
    golden = json.loads(GOLDEN.read_text())["transactions"]
    built = build_all()[name]
    assert built == golden[name], (
        "run python -m tests.ledger.test_deletion_builders --regenerate after a deliberate change"
    )
    args, calls = CASES[name]
    data = bcs.TransactionData.from_bytes(bytes.fromhex(built)).value
    assert data.Sender.to_address_str() == SENDER.sui_address
    ptx = data.TransactionKind.value
    inputs = list(ptx.Inputs)
    commands = [c.value for c in ptx.Command]
    assert all(c.Package.to_address_str() == PACKAGE for c in commands)
    assert [(c.Module, c.Function) for c in commands] == calls
    assert calls[-1] == tx.DELETION_TARGETS[name]
    shared = {
        i.value.value.ObjectID.to_address_str(): i.value.value.Mutable
        for i in inputs
        if i.enum_name == "Object" and i.value.enum_name == "SharedObject"
    }
    # every object the transaction names is one input, mutable (the Clock read-only, and
    # a sponsor pool, whose terms are only read)
    assert {ref.object_id for ref in args} == set(shared) - {CLOCK_ID}
    assert all(shared[ref.object_id] == (ref != POOL) for ref in args)
    assert shared.get(CLOCK_ID, False) is False
    # the last call moves the objects the first one borrowed: the same inputs
    first, last = commands[0], commands[-1]
    moved = [a.value for a in last.Arguments if a.enum_name == "Input"]
    if len(commands) == 2:
        borrowed = [a.value for a in first.Arguments if a.enum_name == "Input"]
        # (a sponsored connection's deletion also takes its pool and lane, by reference)
        lanes = {
            n
            for n, i in enumerate(inputs)
            if i.enum_name == "Object"
            and i.value.value.ObjectID.to_address_str() in (POOL.object_id, LANE.object_id)
        }
        assert set(moved) - lanes <= set(borrowed)


def regenerate() -> None:
    """Rewrite tests/golden/deletion_transactions.json from the current builders."""
    write_golden(
        GOLDEN,
        (
            "the dtp.ledger.sui._tx_deletion builders for the fixed inputs of "
            "tests/ledger/deletion_tx_cases.py"
        ),
        build_all(),
    )


if __name__ == "__main__":
    regenerate_main(regenerate)
