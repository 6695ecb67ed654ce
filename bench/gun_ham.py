"""GunDB's own merge, in Node.js: ``tools/gun-ham`` (``ham.js`` with the ``gun`` npm
package pinned by its package-lock, installed on first use by ``run.sh``).

Used by the equivalence test (``tests/graph/test_gun_equivalence.py``) and the
``ham_merge_vs_gun`` row (``bench/graph_rows.py``); ``ham.js`` says what a job is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from bench.node_jobs import run_job

RUNNER = Path(__file__).resolve().parent.parent / "tools" / "gun-ham" / "run.sh"

Message = list[Any]
"""``[soul, [[key, value, state], ...]]``: one gun ``put`` message of one node."""


def available() -> bool:
    """True when node and npm are here (the runner installs ``gun`` with npm once)."""
    return shutil.which("node") is not None and shutil.which("npm") is not None


def run(job: dict[str, Any] | str, timeout: float = 600.0) -> Any:
    """Run one job (or its JSON text) through ``ham.js`` and return its answer
    (RuntimeError if it fails)."""
    return json.loads(run_job(RUNNER, job, timeout=timeout))


def stringify(values: list[Any]) -> list[str]:
    """``JSON.stringify`` of each value, in JavaScript (values sent as JSON: a float's
    repr reads back exactly)."""
    texts: list[str] = run({"stringify": values})
    return texts


__all__ = ["RUNNER", "Message", "available", "run", "stringify"]
