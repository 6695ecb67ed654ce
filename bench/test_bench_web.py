"""pytest-benchmark suite for bench/web_rows.py (fewer calls than compare.py's): each
side of ``ws_rpc_roundtrip`` runs in headless Chromium against its own servers, which
the test stops. Without chromium the row cannot run: skipped, saying so (CI, where
scripts/bootstrap.sh installs it, fails instead)."""

from __future__ import annotations

import os

import pytest

from bench import web_rows
from bench.workload import run_side


@pytest.mark.parametrize("side", ["ours", "peer"])
def test_ws_rpc_roundtrip(benchmark, side: str) -> None:  # type: ignore[no-untyped-def]
    why = web_rows.missing()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    run_side(benchmark, web_rows.ws_rpc_roundtrip(20), side)
