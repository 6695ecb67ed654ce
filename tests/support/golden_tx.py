"""The golden Sui transaction vectors of tests/ledger/ (``tests/golden/*_transactions.json``):
how a test module writes its file again, run as ``python -m <module> --regenerate``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _module() -> str:
    """The module run as ``python -m``: the one whose vectors are rewritten."""
    spec = sys.modules["__main__"].__spec__
    assert spec is not None, "run it as python -m tests.ledger.<module> --regenerate"
    return spec.name


def write_golden(path: Path, of: str, transactions: dict[str, Any], **fields: Any) -> None:
    """Rewrite ``path``: the hex ``transactions`` of the builders ``of`` names (and for
    which inputs), with ``fields`` beside them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "description": (
            f"Sui TransactionData V1 bytes (hex) of {of}. Regenerate with "
            f"`python -m {_module()} --regenerate` after a deliberate change."
        ),
        **fields,
        "transactions": transactions,
    }
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(f"wrote {len(transactions)} vectors to {path}")


def regenerate_main(regenerate: Callable[[], None]) -> None:
    """A vectors module's ``__main__``: ``--regenerate`` runs ``regenerate``, anything
    else is a usage error."""
    if sys.argv[1:] == ["--regenerate"]:
        regenerate()
    else:
        print(f"usage: python -m {_module()} --regenerate", file=sys.stderr)
        sys.exit(2)
