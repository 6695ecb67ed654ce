"""Canonical value encoding of graph fields (docs/graph.md, "Values").

A field's value is stored in the HAM table as opaque bytes, and HAM breaks ties between
equal states by comparing those bytes. Every peer must therefore produce the *same*
bytes for the same value: the encoding is canonical JSON --

- UTF-8, no whitespace (``separators=(",", ":")``), object keys sorted by code point,
  non-ASCII characters written as themselves (not ``\\u`` escapes);
- integers in decimal, floats in Python's shortest round-trip form (``repr``); NaN and
  infinities are refused (HAM and JSON have no room for them);
- ``true``/``false``/``null`` as usual; arrays and objects nested freely.

A **link** to another node is the object ``{"#": soul}`` with that single key (GunDB's
convention); :func:`link` builds one and :func:`link_soul` recognises one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, TypeAlias

from dtp.errors import ErrorCode, LocalProtocolError, RemoteProtocolError

JSON: TypeAlias = bool | int | float | str | list[Any] | dict[str, Any] | None
"""A value of the JSON types (lists and objects hold JSON values)."""

LINK_KEY = "#"

_encoder = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
)


def link(soul: str) -> dict[str, str]:
    """A link to the node ``soul``: ``{"#": soul}``."""
    if not isinstance(soul, str) or not soul:
        raise LocalProtocolError("a link needs a non-empty soul", ErrorCode.ARG)
    return {LINK_KEY: soul}


def link_soul(value: object) -> str | None:
    """The soul a link value points to, or None when ``value`` is not a link."""
    if isinstance(value, Mapping) and len(value) == 1:
        target = value.get(LINK_KEY)
        if isinstance(target, str) and target:
            return target
    return None


def _check(value: object, depth: int = 0) -> None:
    """Refuse what JSON cannot carry (keys that are not strings, NaN, other types)."""
    if depth > 64:
        raise LocalProtocolError("value nested too deeply (more than 64 levels)", ErrorCode.ARG)
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LocalProtocolError("graph values cannot be NaN or infinite", ErrorCode.ARG)
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check(item, depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise LocalProtocolError("object keys must be strings", ErrorCode.ARG)
            _check(item, depth + 1)
        return
    raise LocalProtocolError(f"not a JSON value: {type(value).__name__}", ErrorCode.ARG)


def encode_value(value: object) -> bytes:
    """The canonical bytes of a JSON value (raises LocalProtocolError for anything else)."""
    _check(value)
    try:
        return _encoder.encode(value).encode("utf-8")
    except UnicodeEncodeError:
        raise LocalProtocolError(
            "graph values must be valid Unicode: a string holds a lone surrogate", ErrorCode.ARG
        ) from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a graph value (NaN and infinities are refused)")


def decode_value(data: bytes | bytearray | memoryview) -> JSON:
    """A value back from its canonical bytes (RemoteProtocolError if they are not JSON).

    Decoding accepts any JSON text; only encoding is canonical.
    """
    try:
        value: JSON = json.loads(bytes(data).decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # (RecursionError: nesting too deep to decode, as a hostile peer may send)
        raise RemoteProtocolError(
            f"graph value is not UTF-8 JSON: {exc}", ErrorCode.HAM_MALFORMED
        ) from None
    return value


__all__ = ["JSON", "LINK_KEY", "decode_value", "encode_value", "link", "link_soul"]
