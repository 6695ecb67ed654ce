"""One job for a Node.js tool of ``tools/`` (``tools/<name>/run.sh``, which installs the
tool's pinned npm packages on first use): the JSON job on stdin, what it printed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any


def run_job(runner: Path, job: dict[str, Any] | str, *args: str, timeout: float = 600.0) -> str:
    """Run ``sh runner *args`` with ``job`` (or its JSON text) on stdin; its stdout
    (RuntimeError, with the end of its stderr, if it fails)."""
    out = subprocess.run(
        ["sh", str(runner), *args],
        input=job if isinstance(job, str) else json.dumps(job, allow_nan=False),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if out.returncode != 0:
        what = "/".join((f"tools/{runner.parent.name}", *args[:1]))
        raise RuntimeError(f"{what} failed ({out.returncode}): {out.stderr[-3000:]}")
    return out.stdout
