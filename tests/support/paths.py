"""Paths into the checkout, for tests at any depth under ``tests/`` (a test file's own
``__file__`` is one folder deeper than the helpers', so none computes the root itself)."""

from __future__ import annotations

from pathlib import Path

#: the checkout's root (the folder holding ``dtp/``, ``docs/`` and ``tests/``)
ROOT = Path(__file__).resolve().parents[2]
#: golden transaction vectors (``python -m <test module> --regenerate`` rewrites them)
GOLDEN = ROOT / "tests" / "golden"
#: the TOML scenarios the ledger tests replay
SCENARIOS = ROOT / "tests" / "scenarios"
#: the normative wire spec, whose hex vectors the tests load
PROTOCOL_MD = ROOT / "docs" / "protocol.md"
#: the graph's doc, whose vectors of the signed tiers the tests load
GRAPH_MD = ROOT / "docs" / "graph.md"
#: the Move package's sources
MOVE_SOURCES = ROOT / "move" / "dtp" / "sources"
