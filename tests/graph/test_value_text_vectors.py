"""The ``value-text`` vectors of docs/protocol.md section 6.9: the bytes a graph
value is stored as, escapes included, against ``dtp.graph.values`` both ways and
against ``JSON.stringify`` in Node.js (the text GunDB writes and compares)."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest

from dtp.errors import RemoteProtocolError
from dtp.graph.values import GraphValueError, decode_value, encode_value, gun_value
from tests.support.vectors import load_vectors

VECTORS = load_vectors("value-text")


def test_the_vectors_cover_every_escape() -> None:
    """Each character JSON.stringify escapes, a character beyond the BMP, the ones it
    does not escape though JSON text may (/, U+007F, U+2028), a link, a refusal."""
    written = "".join(v["value"] for v in VECTORS if isinstance(v["value"], str) and v["text"])
    assert {chr(c) for c in range(0x20)} | set('"\\/\x7f\u2028\U0001f600') <= set(written)
    assert any(isinstance(v["value"], dict) for v in VECTORS)
    assert any(v["text"] is None for v in VECTORS)


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_each_value_is_stored_as_the_vector_says(vector: dict[str, Any]) -> None:
    value = vector["value"]
    if vector["text"] is None:
        with pytest.raises(GraphValueError):
            encode_value(value)
        # and a peer's value holding the escape is malformed when read
        with pytest.raises(RemoteProtocolError):
            decode_value(bytes.fromhex(vector["gun_text"]))
        return
    text = bytes.fromhex(vector["text"])
    assert encode_value(value) == text
    assert decode_value(text) == value
    assert gun_value(text) == value  # (Gun's own text: what a Gun endpoint serves)


_STRINGIFY = (
    'const values = JSON.parse(require("fs").readFileSync(0, "utf8"));'
    "process.stdout.write(JSON.stringify(values.map("
    '(v) => Buffer.from(JSON.stringify(v), "utf8").toString("hex"))));'
)


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is needed for JSON.stringify")
def test_json_stringify_writes_each_text() -> None:
    """JavaScript writes each value as the vector's text (a refused value as its
    ``gun_text``). The values travel to Node.js as JSON, which reads them exactly, a
    lone surrogate's escape included."""
    values = [v["value"] for v in VECTORS]
    out = subprocess.run(
        ["node", "-e", _STRINGIFY],
        input=json.dumps(values),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(out.stdout) == [v["text"] or v["gun_text"] for v in VECTORS]
