"""The rules of ``dtp::version`` (docs/escrow.md "Versions"): the checks every entry
function makes first (:func:`call`), and each versioned struct's ``migrate``.

On Sui every input object is loaded before the transaction's first command, a
``SplitCoins`` runs before the Move call it feeds, and the Move function's first lines
refuse an object of another version, the objects in the order of its parameters. So
:func:`call` loads every object argument, checks every coin argument, then the versions,
and only then runs the rule: the same order on LocalLedger and on the node stand-in,
which both run their Move calls through it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from dtp.errors import move_error
from dtp.ledger._versions import MIGRATE, VERSIONED, stored_version
from dtp.ledger.local.rules._common import SCHEMAS, Exec, Handler

__all__ = ["FUNCTIONS", "call"]


def call(
    x: Exec,
    functions: Mapping[tuple[str, str], tuple[tuple[str, ...], Handler]],
    module: str,
    function: str,
    args: list[Any] | tuple[Any, ...],
) -> Any:
    """Run the entry function ``module::function`` of ``functions`` on ``args`` (checked
    by ``check_args``): its objects loaded, its coin split, the versions of its versioned
    objects checked (not by a ``migrate``, whose object is of another version), then its
    rule."""
    schema, handler = functions[(module, function)]
    structs = [
        (kind[4:], value) for kind, value in zip(schema, args, strict=True) if kind[:4] == "obj:"
    ]
    loaded = [x.load(value, struct) for struct, value in structs]
    for kind, value in zip(schema, args, strict=True):
        if kind == "coin":
            x.check_coin(value)
    if (module, function) not in _MIGRATIONS:
        # (the data loaded above: a coin's split reads no object, so a second load of
        # each would find the same)
        for (struct, value), data in zip(structs, loaded, strict=True):
            if struct in VERSIONED:
                x.check_loaded_version(data, value, struct)
    return handler(x, *args)


def _migrate(struct: str) -> Callable[[Exec, str, str], int]:
    def migrate(x: Exec, _cap_id: str, object_id: str) -> int:
        """``migrate(&AdminCap, &mut obj)``: the object moved forward to the code's
        version (``version::ENotUpgrade`` for one at it or past it)."""
        data = x.load(object_id, struct)
        version = stored_version(data)
        if version >= x.code_version:
            raise move_error(
                "version",
                "ENotUpgrade",
                f"{struct} {object_id} is at package version {version}, the code is "
                f"version {x.code_version}",
            )
        data["version"] = x.code_version
        x.emit(
            "version",
            "ObjectMigrated",
            {"object": object_id, "from_version": version, "to_version": x.code_version},
        )
        return x.code_version

    migrate.__name__ = f"migrate_{struct}"
    return migrate


#: Each versioned struct's ``migrate``: (module, function) -> (argument kinds, rule).
FUNCTIONS: Final = {
    (module, function): (SCHEMAS[module, function], _migrate(struct))
    for struct, (module, function) in MIGRATE.items()
}
_MIGRATIONS: Final = frozenset(FUNCTIONS)
