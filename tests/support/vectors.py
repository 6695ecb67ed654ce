"""Loader for the `dtp-vector` blocks of docs/protocol.md (and of docs/graph.md: the
signed tiers' envelopes)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.support.paths import PROTOCOL_MD

_BLOCK = re.compile(r"```dtp-vector\n(.*?)\n```", re.S)


def load_vectors(kind: str | None = None, doc: Path = PROTOCOL_MD) -> list[dict[str, Any]]:
    """Every vector in ``doc`` (protocol.md unless given; of one ``kind`` if given), in
    document order."""
    vectors = [json.loads(block) for block in _BLOCK.findall(doc.read_text())]
    names = [v["name"] for v in vectors]
    assert len(names) == len(set(names)), f"duplicate vector names in {doc.name}"
    return [v for v in vectors if kind is None or v["kind"] == kind]
