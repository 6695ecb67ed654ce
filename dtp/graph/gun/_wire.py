"""Gun's wire messages, read and written; no I/O. docs/graph.md, "The Gun peer", lists
the messages a relay sees (``put``, ``get`` with a field or a LEX, the ``dam``
greeting) and their answers.

A WebSocket text frame holds one message, a JSON object, or a batch of them, a JSON
array. JSON is read as JavaScript reads it: every number is a binary64
(``parse_int=float``), and NaN or Infinity are no JSON. Output is built from the stored
values' Gun text (:func:`dtp.graph.values.gun_value`), which is the JSON text gun would
send.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dtp.graph.values import GraphValueError, js_number, value_text
from dtp.native.reference._limits import HAM_MAX_KEY, HAM_MAX_VALUE

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class GunWireError(ValueError):
    """A message that breaks Gun's wire format; its text is what the peer is told."""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_decoder = json.JSONDecoder(parse_int=float, parse_constant=_no_constant)


def parse_frame(text: str) -> list[dict[str, Any]]:
    """The messages of one frame (an object, or an array of objects); GunWireError for
    a frame that is not JSON or holds something else."""
    try:
        data = _decoder.decode(text)
    except (ValueError, RecursionError):
        raise GunWireError("DAM JSON parse error.") from None
    items = data if isinstance(data, list) else [data]
    for item in items:
        if not isinstance(item, dict):
            raise GunWireError("DAM message is not a JSON object.")
    return items


class IdMaker:
    """Message IDs: a random prefix per peer and a counter (gun only needs them unique
    among the messages of the last seconds)."""

    def __init__(self) -> None:
        self._prefix = "".join(_ALPHABET[b % len(_ALPHABET)] for b in os.urandom(6))
        self._count = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._count):x}"


def random_id(length: int = 9) -> str:
    """A random ID in gun's alphabet (a peer's ``pid``)."""
    return "".join(_ALPHABET[b % len(_ALPHABET)] for b in os.urandom(length))


@dataclass(frozen=True)
class PutField:
    """One field of a peer's ``put``, checked: the names and the value's Gun text in
    UTF-8, the state, and the value as read."""

    soul: str
    field: str
    state: float
    value: Any
    soul_bytes: bytes
    field_bytes: bytes
    text: bytes


def _cut(text: object) -> str:
    """How gun names a soul or a field in its errors."""
    return " '" + str(text)[:9] + "...' "


_ERR = "Error: Invalid graph!"


def _name(text: str, what: str, soul: str) -> bytes:
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raise GunWireError(f"{_ERR}{_cut(soul)}{what} is not valid Unicode.") from None
    if not 1 <= len(raw) <= HAM_MAX_KEY:
        raise GunWireError(f"{_ERR}{_cut(soul)}{what} must be 1 to {HAM_MAX_KEY} bytes of UTF-8.")
    return raw


def read_put(put: object) -> list[PutField]:
    """The fields of a ``put`` (its ``"put"`` member), each checked as Gun checks them
    -- and as a HAM table must hold them: GunWireError at the first that is not, naming
    it (the peer is told; nothing of the message is kept).

    Refused: a node that is not an object, with no ``_`` or ``_.>``, or whose ``_.#``
    is not its soul; a field with no state, a state that is not a finite number (gun
    takes any state; a HAM table cannot), a value Gun cannot hold (an array, an object
    other than a link, NaN -- :func:`dtp.graph.values.value_text`); names of 0 or more
    than 1024 bytes, values of more than 1 MiB.
    """
    if not isinstance(put, dict) or not put:
        raise GunWireError(f"{_ERR} a put holds an object of nodes.")
    if "#" in put and "." in put:
        raise GunWireError(f"{_ERR} a put of one field ('#', '.') is not supported.")
    fields: list[PutField] = []
    for soul, node in put.items():
        if not isinstance(node, dict):
            raise GunWireError(f"{_ERR}{_cut(soul)}no node.")
        meta = node.get("_")
        if not isinstance(meta, dict):
            raise GunWireError(f"{_ERR}{_cut(soul)}no meta.")
        if meta.get("#") != soul:
            raise GunWireError(f"{_ERR}{_cut(soul)}soul not same.")
        states = meta.get(">")
        if not isinstance(states, dict):
            raise GunWireError(f"{_ERR}{_cut(soul)}no state.")
        soul_bytes = _name(soul, "the soul", soul)
        for key, value in node.items():
            if key == "_":
                continue
            state = states.get(key)
            if state is None:
                raise GunWireError(f"{_ERR}{_cut(key)}on{_cut(soul)}no state.")
            if isinstance(state, bool) or not isinstance(state, float | int):
                raise GunWireError(f"{_ERR}{_cut(key)}on{_cut(soul)}state is not a number.")
            if not math.isfinite(state):
                raise GunWireError(f"{_ERR}{_cut(key)}on{_cut(soul)}state is not finite.")
            field_bytes = _name(key, "a field name", soul)
            try:
                text = value_text(value).encode("utf-8")
            except GraphValueError as exc:
                raise GunWireError(
                    f"{_ERR}{_cut(key)}on{_cut(soul)}bad {type(value).__name__}: {exc}"
                ) from None
            if len(text) > HAM_MAX_VALUE:
                raise GunWireError(
                    f"{_ERR}{_cut(key)}on{_cut(soul)}value of more than {HAM_MAX_VALUE} bytes."
                )
            fields.append(
                PutField(soul, key, float(state) + 0.0, value, soul_bytes, field_bytes, text)
            )
    return fields


def quote(text: str) -> str:
    """A string as JSON, as JavaScript writes it."""
    return value_text(text)


def obj(members: Mapping[str, Any]) -> str:
    """A small message of plain members as JSON text."""
    return json.dumps(members, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def ack(msg_id: str, reply_to: str, err: str | None = None) -> str:
    """A put's acknowledgement: ``ok``, or ``err`` with a reason."""
    if err is None:
        return '{"#":' + quote(msg_id) + ',"@":' + quote(reply_to) + ',"ok":true}'
    return '{"#":' + quote(msg_id) + ',"@":' + quote(reply_to) + ',"err":' + quote(err) + "}"


def not_found(msg_id: str, reply_to: str) -> str:
    """The answer to a ``get`` of nothing."""
    return '{"#":' + quote(msg_id) + ',"@":' + quote(reply_to) + "}"


NodeFields = Iterable[tuple[str, float, bytes]]
"""A node's fields for :func:`put_message`: (name, state, the value's Gun text)."""


def node_json(soul: str, fields: NodeFields) -> str:
    """A node as gun writes it: ``{"_": {"#": soul, ">": states}, field: value, ...}``,
    values from their Gun text as they are."""
    states: list[str] = []
    values: list[str] = []
    for name, state, text in fields:
        key = quote(name)
        states.append(key + ":" + js_number(state))
        values.append("," + key + ":" + text.decode("utf-8"))
    q = quote(soul)
    return q + ':{"_":{"#":' + q + ',">":{' + ",".join(states) + "}}" + "".join(values) + "}"


def put_message(msg_id: str, nodes: Iterable[str], reply_to: str | None = None) -> str:
    """A ``put`` message of nodes made with :func:`node_json`; an answer to
    ``reply_to`` when given."""
    head = '{"#":' + quote(msg_id)
    if reply_to is not None:
        head += ',"@":' + quote(reply_to)
    return head + ',"put":{' + ",".join(nodes) + "}}"


def frame(messages: list[str]) -> str:
    """One frame for messages: the message itself, or a batch (a JSON array)."""
    return messages[0] if len(messages) == 1 else "[" + ",".join(messages) + "]"


def lex_match(text: str, lex: object) -> bool:
    """gun's ``String.match``: whether a name matches a LEX condition (a string is
    ``{"=": it}``; ``"*"`` a prefix; ``">"`` / ``"<"`` bounds, compared as JavaScript
    compares strings, in UTF-16 code units)."""
    if isinstance(lex, str):
        lex = {"=": lex}
    if not isinstance(lex, dict):
        lex = {}
    first = lex.get("=") or lex.get("*") or lex.get(">") or lex.get("<")
    if text == first:
        return True
    if "=" in lex:
        return False
    start = lex.get("*") or lex.get(">")
    start = start if isinstance(start, str) else ""
    if text[: _units_prefix(text, start)] == start:
        return True
    if "*" in lex:
        return False
    low, high = lex.get(">"), lex.get("<")
    if low is not None and high is not None:
        return _ge(text, low) and _le(text, high)
    if low is not None and _ge(text, low):
        return True
    return high is not None and _le(text, high)


def _units_prefix(text: str, start: str) -> int:
    """The number of characters of ``text`` that JavaScript's ``slice(0, start.length)``
    keeps (its length counts UTF-16 code units)."""
    units = len(start.encode("utf-16-le")) // 2
    n = 0
    for i, ch in enumerate(text):
        if n >= units:
            return i
        n += 2 if ord(ch) > 0xFFFF else 1
    return len(text)


def _key16(text: str) -> bytes:
    return text.encode("utf-16-be", "surrogatepass")


def _ge(text: str, bound: object) -> bool:
    return isinstance(bound, str) and _key16(text) >= _key16(bound)


def _le(text: str, bound: object) -> bool:
    return isinstance(bound, str) and _key16(text) <= _key16(bound)


__all__ = [
    "GunWireError",
    "IdMaker",
    "NodeFields",
    "PutField",
    "ack",
    "frame",
    "lex_match",
    "node_json",
    "not_found",
    "obj",
    "parse_frame",
    "put_message",
    "quote",
    "random_id",
    "read_put",
]
