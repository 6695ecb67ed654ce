"""Loader for the `dtp-vector` blocks of docs/protocol.md."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.support.paths import PROTOCOL_MD

_BLOCK = re.compile(r"```dtp-vector\n(.*?)\n```", re.S)


def load_vectors(kind: str | None = None) -> list[dict[str, Any]]:
    """Every vector in protocol.md (of one ``kind`` if given), in document order."""
    vectors = [json.loads(block) for block in _BLOCK.findall(PROTOCOL_MD.read_text())]
    names = [v["name"] for v in vectors]
    assert len(names) == len(set(names)), "duplicate vector names in protocol.md"
    return [v for v in vectors if kind is None or v["kind"] == kind]
