"""The fixed inputs of the golden registry transactions
(tests/golden/coordination_transactions.json): the Registry's reference and each builder's
arguments with the inputs it must produce (CASES)."""

from __future__ import annotations

from typing import Any

from dtp.ledger.sui._tx import CLOCK_ID, SharedRef

REGISTRY = SharedRef("0x" + "c7" * 32, 41)
MEMBER = "0x" + "0d" * 32
S = "shared"
#: name -> (builder args, the Move call's argument kinds, {shared object: mutable}).
CASES: dict[str, tuple[tuple[Any, ...], list[str], dict[str, bool]]] = {
    "create_registry": ((), [], {}),
    "registry_admit": ((REGISTRY, MEMBER), [S, "pure"], {REGISTRY.object_id: True}),
    "registry_revoke": ((REGISTRY, MEMBER), [S, "pure"], {REGISTRY.object_id: True}),
    "acquire_lease": (
        (REGISTRY, b"leader", b"server-a", 10_000),
        [S, "pure", "pure", "pure", S],
        {REGISTRY.object_id: True, CLOCK_ID: False},
    ),
    "renew_lease": (
        (REGISTRY, b"leader", 7, 10_000),
        [S, "pure", "pure", "pure", S],
        {REGISTRY.object_id: True, CLOCK_ID: False},
    ),
    "release_lease": ((REGISTRY, b"leader", 7), [S, "pure", "pure"], {REGISTRY.object_id: True}),
    "registry_put": (
        (REGISTRY, b"leader", 7, b"config", b"\x01\x02"),
        [S, "pure", "pure", "pure", "pure", S],
        {REGISTRY.object_id: True, CLOCK_ID: False},
    ),
    "registry_remove": (
        (REGISTRY, b"leader", 7, b"config"),
        [S, "pure", "pure", "pure", S],
        {REGISTRY.object_id: True, CLOCK_ID: False},
    ),
}
