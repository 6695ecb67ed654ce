"""On ``PYTHONPATH``, makes the process (and the Python processes it starts, which
inherit the variable) one where dtp's extras are not installed: importing their
packages fails as it does where pip never installed them (tests/project/test_lean_install.py).

The packages stay on disk; a meta path finder placed first refuses them, so the rest of
the environment is the suite's own."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from types import ModuleType

#: the top-level modules of dtp's extras (dtp._extras.EXTRAS), pysui's native module and
#: pytest's own package (``pytest`` is a shim over ``_pytest``)
BLOCKED = frozenset(
    {
        "pysui",
        "pysui_fastcrypto",
        "yaml",
        "zeroconf",
        "ifaddr",
        "websockets",
        "prometheus_client",
        "hypothesis",
        "pytest",
        "_pytest",
        "uvloop",
        "pycrdt",
    }
)


class _NotInstalled:
    """Refuses the blocked packages as if no finder knew them."""

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> None:
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, _NotInstalled())
