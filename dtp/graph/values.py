"""Canonical value encoding of graph fields (docs/graph.md, "Values").

A field's value is stored in the HAM table as opaque bytes, and HAM breaks ties between
equal states by comparing those bytes. Every peer must therefore produce the *same*
bytes for the same value: the encoding is canonical JSON --

- UTF-8, no whitespace (``separators=(",", ":")``), object keys sorted by code point,
  non-ASCII characters written as themselves (not ``\\u`` escapes);
- integers in decimal, floats in Python's shortest round-trip form (``repr``); NaN and
  infinities are refused (HAM and JSON have no room for them), and ``-0.0`` is written
  as ``0.0`` (they compare equal, so they are one value and must have one encoding);
- ``true``/``false``/``null`` as usual; arrays (lists, tuples) and objects (any mapping
  with str keys) nested freely.

A **link** to another node is the object ``{"#": soul}`` with that single key (GunDB's
convention); :func:`link` builds one and :func:`link_soul` recognises one.

Decoding (what peers send) refuses what another implementation could read differently:
an object with a duplicate key (Python's ``json`` would silently keep the last one),
NaN, infinities (``1e400`` included), nesting deeper than :func:`encode_value` writes
(64 levels), a lone surrogate escape (``"\\ud800"``: no UTF-8 holds it); a ``-0.0``
reads as ``0.0``.
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

#: How deep a value may nest: the value itself is at depth 0, the items of a container
#: one deeper than it, and nothing may be deeper than this. Encoding and decoding apply
#: the same limit, so that a peer's value is one put() could have written.
_MAX_DEPTH = 64
_CONTAINERS: tuple[type, ...] = (list, dict)

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


def _check(value: object, depth: int = 0) -> bool:
    """Refuse what JSON cannot carry (keys that are not strings, NaN, other types);
    True when the value must be copied before ``json`` can write it: it holds a ``-0.0``
    (to be written as ``0.0``) or a mapping that is not a dict (``json`` writes dicts
    only: a ``MappingProxyType`` or a ``UserDict`` was a bare TypeError out of put())."""
    if depth > _MAX_DEPTH:
        raise LocalProtocolError(
            f"value nested too deeply (more than {_MAX_DEPTH} levels)", ErrorCode.ARG
        )
    if value is None or isinstance(value, bool | int | str):
        return False
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LocalProtocolError("graph values cannot be NaN or infinite", ErrorCode.ARG)
        return value == 0.0 and math.copysign(1.0, value) < 0
    negative_zero = False
    if isinstance(value, list | tuple):
        for item in value:
            negative_zero |= _check(item, depth + 1)
        return negative_zero
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise LocalProtocolError("object keys must be strings", ErrorCode.ARG)
            negative_zero |= _check(item, depth + 1)
        return negative_zero or not isinstance(value, dict)
    raise LocalProtocolError(f"not a JSON value: {type(value).__name__}", ErrorCode.ARG)


def _plain(value: Any) -> Any:
    """A copy of a checked value that ``json`` writes canonically: every ``-0.0``
    replaced by ``0.0``, every mapping a dict and every tuple a list."""
    if isinstance(value, float):
        return value + 0.0  # -0.0 + 0.0 is +0.0 (IEEE 754, round to nearest)
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value


def encode_value(value: object) -> bytes:
    """The canonical bytes of a JSON value (raises LocalProtocolError for anything else).

    Any :class:`~collections.abc.Mapping` with str keys is an object and any tuple an
    array, as dicts and lists are."""
    if _check(value):
        # -0.0 == 0.0: one value, one encoding (json would write "-0.0"), so that equal
        # values written on two peers are the same bytes; and json writes no mapping
        # but a dict
        value = _plain(value)
    try:
        return _encoder.encode(value).encode("utf-8")
    except UnicodeEncodeError:
        raise LocalProtocolError(
            "graph values must be valid Unicode: a string holds a lone surrogate", ErrorCode.ARG
        ) from None
    except ValueError as exc:  # an int past the interpreter's digit limit (4300 digits)
        raise LocalProtocolError(f"not a graph value: {exc}", ErrorCode.ARG) from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a graph value (NaN and infinities are refused)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 overflows to infinity
        raise ValueError(f"{text[:32]} is not a graph value (out of the float range)")
    return value + 0.0  # -0.0 reads as 0.0, the one value they both are


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        # json.loads would keep the last one; another implementation may keep the first
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate object key {key[:64]!r}")
            seen.add(key)
    return obj


# built once: json.loads with hooks builds a decoder on every call (twice the time)
_decoder = json.JSONDecoder(
    parse_constant=_no_constant, parse_float=_finite_float, object_pairs_hook=_unique_keys
)


def _lone_surrogate(value: JSON) -> bool:
    """True when a string of ``value`` (object keys included) holds a lone surrogate."""
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item)  # the keys
            stack.extend(item.values())
    return False


def _too_deep(value: JSON) -> bool:
    """True when ``value`` nests deeper than :func:`encode_value` writes (its rule: no
    value below depth ``_MAX_DEPTH``, so a container that deep must be empty)."""
    if type(value) not in _CONTAINERS:
        return False
    level: list[Any] = [value]  # the containers at one depth
    for _ in range(_MAX_DEPTH):
        # one comprehension a level, exact types (the decoder makes plain lists and
        # dicts): a generator per container made a 1 MiB value of small containers
        # cost twice its decoding again
        level = [
            item
            for container in level
            for item in (container.values() if type(container) is dict else container)
            if type(item) in _CONTAINERS
        ]
        if not level:
            return False
    return any(level)  # a non-empty container at depth _MAX_DEPTH holds values below it


def decode_value(data: bytes | bytearray | memoryview) -> JSON:
    """A value back from its canonical bytes (RemoteProtocolError if they are not JSON).

    Decoding accepts any JSON text (only encoding is canonical) except what two readers
    could read differently: duplicate object keys, numbers beyond the float range, a
    lone surrogate (an unpaired ``\\uD800``-``\\uDFFF`` escape, which :func:`encode_value`
    refuses too), nesting deeper than 64 levels (as :func:`encode_value`); NaN and
    infinities are refused too, and ``-0.0`` reads as ``0.0``.
    """
    raw = bytes(data)
    try:
        value: JSON = _decoder.decode(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # (RecursionError: nesting too deep to decode, as a hostile peer may send)
        raise RemoteProtocolError(
            f"graph value is not a JSON value in UTF-8: {exc}", ErrorCode.HAM_MALFORMED
        ) from None
    if raw.count(b"[") + raw.count(b"{") > _MAX_DEPTH and _too_deep(value):
        # (fewer brackets cannot nest that deep.) A fixed depth, not RecursionError: left
        # to it, a value nested a few hundred levels would be read or refused as the
        # caller's stack happens to be deep (a sync thread, a callback), so replicas would
        # disagree on whether the field exists, and put() could refuse to write it back
        raise RemoteProtocolError(
            f"graph value nested too deeply (more than {_MAX_DEPTH} levels)",
            ErrorCode.HAM_MALFORMED,
        )
    if b"\\u" in raw and _lone_surrogate(value):
        # json reads "\\ud800" as a str no UTF-8 can hold: print() or a write of it
        # raised UnicodeEncodeError in the application, put() of it LocalProtocolError,
        # and other JSON readers refuse it or read U+FFFD
        raise RemoteProtocolError(
            "graph value holds a lone surrogate (an unpaired \\uD800-\\uDFFF escape)",
            ErrorCode.HAM_MALFORMED,
        )
    return value


__all__ = ["JSON", "LINK_KEY", "decode_value", "encode_value", "link", "link_soul"]
