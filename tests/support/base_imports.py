"""Imports every module of the installed ``dtp`` package, one by one, and prints what
each did as one JSON object: ``{module: "ok" | "extra:<name>" | "error:<repr>"}``.

Run as a script by the interpreter under test (a fresh virtualenv's, or one whose
extras are blocked: tests/support/no_extras), so it imports nothing of the tests.
``__main__`` modules are left out (importing one runs a command).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

#: The modules that belong to an extra (dtp._extras), by name prefix: without the extra
#: each raises MissingExtra naming it; every other module imports with the base install.
EXTRA_MODULES = {
    "dtp.ledger.sui": "sui",
    "dtp.discovery.lan": "lan",
    "dtp.discovery._mdns": "lan",
    "dtp.discovery._browsing": "lan",
    "dtp.daemon._lan": "lan",
    "dtp.graph.sync._lan": "lan",
    "dtp.graph.gun": "gun",
    "dtp.graph.collab": "collab",
    "dtp.graph._ydoc": "collab",
    "dtp.cli._demo_browser": "gun",
    "dtp.daemon._metrics": "metrics",
    "dtp.transport.carriers._websocket": "ws",
    "dtp.transport.carriers._websocket_bridge": "ws",
    "dtp.testing.strategies": "testing",
    "dtp.testing.machines": "testing",
    "dtp.testing.plugin": "testing",
    # (the node stand-in speaks pysui's messages; hypothesis and pytest it does not need)
    "dtp.testing.sui_node": "sui",
}


def extra_of(module: str) -> str | None:
    """The extra ``module`` needs (None: the base install)."""
    for prefix, extra in EXTRA_MODULES.items():
        if module == prefix or module.startswith(prefix + "."):
            return extra
    return None


def modules(package: Path) -> list[str]:
    """Every module under ``package`` (the installed dtp/), by dotted name."""
    names = []
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def main() -> None:
    import dtp
    from dtp.errors import MissingExtra

    results: dict[str, str] = {}
    for name in modules(Path(dtp.__file__).parent):
        before = set(sys.modules)
        try:
            importlib.import_module(name)
        except BaseException as exc:
            results[name] = (
                f"extra:{exc.extra}" if isinstance(exc, MissingExtra) else f"error:{exc!r}"
            )
            # what the failed import loaded before it failed (dtp.graph.gun's relay, say,
            # before its server) would be found in sys.modules by the next import, which
            # in a process of its own fails with its package
            for loaded in set(sys.modules) - before:
                del sys.modules[loaded]
        else:
            results[name] = "ok"
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
