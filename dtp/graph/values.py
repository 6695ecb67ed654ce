"""Graph field values as GunDB holds them: docs/graph.md, "Values", gives the table of
Python values and the Gun values they are, how numbers are written and read back, and
what is refused.

A field's value is stored in the HAM table as the UTF-8 bytes of its **Gun text**: the
text ``JSON.stringify`` gives for the value in JavaScript. GunDB breaks ties between
equal states by comparing exactly that text (by UTF-16 code units, protocol.md 6.3), so
a value written here and the same value written by a Gun peer are the same bytes, and
both networks pick the same winner. :func:`encode_value` writes it (GraphValueError for
what Gun cannot hold); :func:`decode_value` reads wider, as a graph written before
format 2 holds; :func:`gun_value` reads only what a Gun peer could hold, in Gun's own
text, and is what a Gun endpoint serves.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from json.encoder import encode_basestring
from typing import Any, TypeAlias

from dtp.errors import ErrorCode, LocalProtocolError, RemoteProtocolError

JSON: TypeAlias = bool | int | float | str | list[Any] | dict[str, Any] | None
"""A value of the JSON types (what :func:`decode_value` may return)."""

GunValue: TypeAlias = bool | int | float | str | dict[str, str] | None
"""A value a Gun peer holds in a field: null, a boolean, a number, a string or a link."""

LINK_KEY = "#"
#: The field name Gun keeps a node's metadata under (``{"_": {"#": soul, ">": states}}``).
META_FIELD = "_"
#: The largest integer JavaScript calls safe (``Number.MAX_SAFE_INTEGER``): every int of
#: at most this magnitude is a Gun number, exactly.
MAX_SAFE_INTEGER = 2**53 - 1

#: How deep a legacy value may nest when read (the limit format 1 wrote with).
_MAX_DEPTH = 64
_CONTAINERS: tuple[type, ...] = (list, dict)


class GraphValueError(LocalProtocolError, ValueError):
    """A value (or field name) that a Gun peer could not hold, given to the graph."""


def link(soul: str) -> dict[str, str]:
    """A link to the node ``soul``: ``{"#": soul}``."""
    if not isinstance(soul, str) or not soul:
        raise GraphValueError("a link needs a non-empty soul")
    return {LINK_KEY: soul}


def link_soul(value: object) -> str | None:
    """The soul a link value points to, or None when ``value`` is not a link (a mapping
    whose only key is ``"#"``, holding a non-empty string: Gun's own test)."""
    if isinstance(value, Mapping) and len(value) == 1:
        target = value.get(LINK_KEY)
        if isinstance(target, str) and target:
            return target
    return None


def check_field_name(name: str) -> None:
    """Refuse ``_`` as a field name (GraphValueError): a Gun node keeps its metadata
    there, so no Gun peer could hold such a field."""
    if name == META_FIELD:
        raise GraphValueError(
            "a field may not be named '_': Gun keeps a node's metadata under that name"
        )


def js_number(number: int | float) -> str:
    """The text JavaScript writes for ``number`` (``Number.prototype.toString``, which
    ``JSON.stringify`` uses): ECMA-262, Number::toString.

    The digits are the shortest that read back to the same binary64 (Python's ``repr``
    finds the same ones); positional notation when the decimal exponent is in
    -6..20, else ``d[.ddd]e±n``; ``-0`` is ``0``. GraphValueError for NaN, infinities
    and ints that no binary64 holds exactly."""
    x = _as_float(number)
    if x == 0.0:
        return "0"
    if -9007199254740992.0 <= x <= 9007199254740992.0 and x.is_integer():
        return str(int(x))  # (an integral float under 2**53: its digits are its repr's)
    text = repr(abs(x))
    mantissa, _, exponent = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = len(whole) + (int(exponent) if exponent else 0)  # value = 0.DIGITS * 10**point
    significant = digits.lstrip("0")
    point -= len(digits) - len(significant)
    digits = significant.rstrip("0")
    k = len(digits)
    if k <= point <= 21:
        out = digits + "0" * (point - k)
    elif 0 < point <= 21:
        out = digits[:point] + "." + digits[point:]
    elif -6 < point <= 0:
        out = "0." + "0" * -point + digits
    else:
        e = point - 1
        out = digits[0] + ("." + digits[1:] if k > 1 else "") + ("e+" if e >= 0 else "e-")
        out += str(abs(e))
    return "-" + out if x < 0 else out


def _as_float(number: int | float) -> float:
    """The binary64 a Gun peer would hold for ``number`` (GraphValueError if none, or
    another number)."""
    if isinstance(number, float):
        if not math.isfinite(number):
            raise GraphValueError("graph values cannot be NaN or infinite (Gun refuses them)")
        return float(number)
    try:
        x = float(number)
    except OverflowError:
        raise GraphValueError(
            f"int of {int(number).bit_length()} bits is beyond the range of a Gun number"
        ) from None
    if int(x) != number:
        raise GraphValueError(
            f"int {_short(number)} has no exact binary64 form: a Gun peer would hold "
            f"{js_number(x)} (pass a float to round it, or a str to keep every digit)"
        )
    return x


def _short(number: int) -> str:
    text = str(number) if number.bit_length() < 4000 else f"of {number.bit_length()} bits"
    return text if len(text) <= 40 else text[:20] + "..." + text[-8:]


def _string(text: str) -> str:
    """The JSON string JavaScript writes for ``text`` (the same escapes: ``"``, ``\\``,
    ``\\b \\f \\n \\r \\t``, other controls as lowercase ``\\u00xx``; everything else,
    non-ASCII included, as itself)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise GraphValueError(
            "graph values must be valid Unicode: a string holds a lone surrogate"
        ) from None
    out: str = encode_basestring(text)
    return out


def value_text(value: object) -> str:
    """The Gun text of a value (see the module docstring); GraphValueError for a value
    Gun cannot hold."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, int | float):
        return js_number(value)
    if isinstance(value, Mapping):
        soul = link_soul(value)
        if soul is None:
            raise GraphValueError(
                "a mapping in a field must be a link {'#': soul}: Gun holds no other "
                "object in a field (put() makes a nested mapping a node of its own)"
            )
        return '{"#":' + _string(soul) + "}"
    if isinstance(value, list | tuple):
        raise GraphValueError(
            "Gun has no arrays: store the items as the fields of a node, or as a string"
        )
    raise GraphValueError(
        f"not a graph value: {type(value).__name__} (Gun holds null, booleans, numbers, "
        "strings and links)"
    )


def encode_value(value: object) -> bytes:
    """The stored bytes of a value: its Gun text in UTF-8 (GraphValueError for a value
    Gun cannot hold)."""
    return value_text(value).encode("utf-8")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a graph value (NaN and infinities are refused)")


_SAFE = 2**53


def _js_int(text: str) -> int | float:
    """An integer's text as a number: exact within 2**53; beyond it the binary64 whose
    text JavaScript writes so (its shortest digits padded with zeros), or, for any other
    integer (an int a graph of format 1 stored), that exact int."""
    if len(text) < 16:
        return int(text)
    value = int(text)
    if -_SAFE <= value <= _SAFE:
        return value
    x = float(text)
    return x if math.isfinite(x) and js_number(x) == text else value


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
    parse_constant=_no_constant,
    parse_float=_finite_float,
    parse_int=_js_int,
    object_pairs_hook=_unique_keys,
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
    """True when ``value`` nests deeper than ``_MAX_DEPTH`` (no value below that depth,
    so a container that deep must be empty)."""
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
    """A value back from its stored bytes (RemoteProtocolError if they are not JSON).

    A number whose text is an integer of at most 2**53 in magnitude reads as ``int``,
    any other as ``float`` (``-0.0`` as ``0.0``) -- but an integer beyond 2**53 in
    another text than JavaScript's for a binary64 (an int stored by format 1) reads as
    that exact ``int``. Any JSON text is read (arrays and objects too, which graphs of
    format 1 hold) except what two readers could read differently: duplicate object
    keys, numbers with a fraction or an exponent beyond the float range, NaN and
    infinities, a lone surrogate (an unpaired ``\\uD800``-``\\uDFFF`` escape),
    nesting deeper than 64 levels.
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
        # disagree on whether the field exists
        raise RemoteProtocolError(
            f"graph value nested too deeply (more than {_MAX_DEPTH} levels)",
            ErrorCode.HAM_MALFORMED,
        )
    if b"\\u" in raw and _lone_surrogate(value):
        # json reads "\\ud800" as a str no UTF-8 can hold (printing or writing it raises
        # UnicodeEncodeError, put() refuses it): refused here, as a malformed value
        # (tests/graph/test_robustness.py)
        raise RemoteProtocolError(
            "graph value holds a lone surrogate (an unpaired \\uD800-\\uDFFF escape)",
            ErrorCode.HAM_MALFORMED,
        )
    return value


def gun_value(data: bytes | bytearray | memoryview) -> GunValue:
    """A stored value that a Gun peer can hold, read back; RemoteProtocolError for any
    other: not JSON, not a Gun value (an array, an object other than a link, an int no
    binary64 holds), or not in Gun's own text (``1.0`` for ``1``, a ``\\u0041``
    escape, spaces) -- text a Gun peer would compare differently at a tie."""
    raw = bytes(data)
    value = decode_value(raw)
    try:
        text = encode_value(value)
    except GraphValueError as exc:
        raise RemoteProtocolError(f"not a Gun value: {exc}", ErrorCode.HAM_MALFORMED) from None
    if text != raw:
        raise RemoteProtocolError(
            f"not in Gun's text: {raw[:40]!r} is written {text[:40]!r}", ErrorCode.HAM_MALFORMED
        )
    return value  # type: ignore[return-value]  # (encode_value took it: a Gun value)


def is_gun_value(data: bytes | bytearray | memoryview) -> bool:
    """True when :func:`gun_value` reads ``data``."""
    try:
        gun_value(data)
    except RemoteProtocolError:
        return False
    return True


__all__ = [
    "JSON",
    "LINK_KEY",
    "MAX_SAFE_INTEGER",
    "META_FIELD",
    "GraphValueError",
    "GunValue",
    "check_field_name",
    "decode_value",
    "encode_value",
    "gun_value",
    "is_gun_value",
    "js_number",
    "link",
    "link_soul",
    "value_text",
]
