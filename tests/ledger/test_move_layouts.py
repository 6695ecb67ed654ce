"""Every BCS layout SuiLedger decodes objects and events with (dtp/ledger/sui/_codec.py,
dtp/ledger/sui/_economics.py) matches its Move struct in move/dtp/sources: the same
fields, in the same order, of the same types.

No `sui` binary exists here, and LocalLedger (and so the Sui node stand-in, which runs
its rules and encodes their objects with these very layouts) never sees a Move struct: a
field added to a struct and not to its layout, or the two in another order, would decode
garbage on a real network only. This test parses the structs (and the `State` enum) and
maps each Move type to the layout that reads it: integers, `bool` and `address` as
themselves, `ID`/`UID` as `id`, `vector<u8>` as `bytes`, `String` as `string`,
`Balance<SUI>` as `u64` (its value), `Table<..>` as `table` (its ID and size),
`vector<T>` and `VecSet<T>` as `("vec", T)`, `VecMap<K, V>` as `("map", K, V)`,
`Option<T>` as `("option", T)`, and a struct or enum of the package as its own layout.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from dtp.ledger.sui._codec import (
    EVENT_LAYOUTS,
    MESSAGING_EVENT_LAYOUTS,
    OBJECT_LAYOUTS,
    RESPONSE_ESCROW_LAYOUT,
)
from dtp.ledger.sui._coordination import COORDINATION_EVENT_LAYOUTS, COORDINATION_OBJECT_LAYOUTS
from dtp.ledger.sui._economics import ECONOMICS_EVENT_LAYOUTS, ECONOMICS_OBJECT_LAYOUTS
from tests.support.paths import MOVE_SOURCES

_STRUCT = re.compile(r"public struct (\w+)(?:<[^>]*>)?\s+has\s+[\w, ]+\s*\{(.*?)\n\}", re.S)
_ENUM = re.compile(r"public enum (\w+)\s+has\s+[\w, ]+\s*\{(.*?)\n\}", re.S)
_PRIMITIVES = {"u8", "u16", "u32", "u64", "u128", "u256", "bool", "address"}


def _strip(body: str) -> str:
    return re.sub(r"//[^\n]*", "", body)


def _split(text: str) -> list[str]:
    """``text`` split at the commas outside angle brackets and braces."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "<{(":
            depth += 1
        elif char in ">})":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current.strip())
    return parts


def _fields(body: str) -> list[tuple[str, str]]:
    fields = []
    for part in _split(_strip(body)):
        name, _, kind = part.partition(":")
        fields.append((name.strip(), " ".join(kind.split())))
    return fields


def _parse() -> tuple[dict[tuple[str, str], list[tuple[str, str]]], dict[str, Any]]:
    """(struct fields by (module, name), enum variants by name) of the package."""
    structs: dict[tuple[str, str], list[tuple[str, str]]] = {}
    enums: dict[str, Any] = {}
    for path in sorted(MOVE_SOURCES.glob("*.move")):
        text = path.read_text()
        module = re.search(r"^module dtp::(\w+);", text, re.M)
        assert module is not None, path
        for name, body in _STRUCT.findall(text):
            structs[(module.group(1), name)] = _fields(body)
        for name, body in _ENUM.findall(text):
            variants = []
            for part in _split(_strip(body)):
                head, _, rest = part.partition("{")
                variants.append((head.strip(), _fields(rest.rstrip("}")) if rest else []))
            enums[name] = variants
    return structs, enums


STRUCTS, ENUMS = _parse()


def _by_name(name: str) -> list[tuple[str, str]]:
    found = [fields for (_, struct), fields in STRUCTS.items() if struct == name]
    assert len(found) == 1, f"struct {name}: found {len(found)} in the package"
    return found[0]


def _layout(move_type: str) -> Any:
    """The layout that reads a field of ``move_type``."""
    generic = re.fullmatch(r"(\w+)<(.*)>", move_type)
    if move_type in _PRIMITIVES:
        return move_type
    if move_type in {"ID", "UID"}:
        return "id"
    if move_type == "String":
        return "string"
    if generic is None:
        if move_type in ENUMS:
            return (
                "enum",
                tuple((v, tuple((f, _layout(t)) for f, t in fs)) for v, fs in ENUMS[move_type]),
            )
        return ("struct", tuple((f, _layout(t)) for f, t in _by_name(move_type)))
    outer, args = generic.group(1), _split(generic.group(2))
    if outer == "vector":
        return "bytes" if args == ["u8"] else ("vec", _layout(args[0]))
    if outer == "VecSet":
        return ("vec", _layout(args[0]))
    if outer == "VecMap":
        return ("map", _layout(args[0]), _layout(args[1]))
    if outer == "Option":
        return ("option", _layout(args[0]))
    if outer == "Table":
        return "table"
    if outer == "Balance":
        return "u64"
    raise AssertionError(f"no layout reads the Move type {move_type}")


def _normal(layout: Any) -> Any:
    """A layout with its tuples and lists alike."""
    if isinstance(layout, (tuple, list)):
        return tuple(_normal(x) for x in layout)
    return layout


OBJECTS = {
    **OBJECT_LAYOUTS,
    **ECONOMICS_OBJECT_LAYOUTS,
    **COORDINATION_OBJECT_LAYOUTS,
    "ResponseEscrow": RESPONSE_ESCROW_LAYOUT,
}
EVENTS = {
    **EVENT_LAYOUTS,
    **ECONOMICS_EVENT_LAYOUTS,
    **COORDINATION_EVENT_LAYOUTS,
    **MESSAGING_EVENT_LAYOUTS,
}


def test_the_parse_found_the_package() -> None:
    assert len(STRUCTS) > 60 and "State" in ENUMS
    assert STRUCTS[("spending_cap", "SpendingCap")][0] == ("id", "UID")


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_object_layout_matches_its_move_struct(name: str) -> None:
    assert _normal(OBJECTS[name]) == _normal(_layout(name)), name


@pytest.mark.parametrize("key", sorted(EVENTS), ids=lambda k: "::".join(k))
def test_event_layout_matches_its_move_struct(key: tuple[str, str]) -> None:
    fields = STRUCTS.get(key)
    assert fields is not None, f"no struct {key[1]} in move/dtp/sources/{key[0]}.move"
    expected = ("struct", tuple((f, _layout(t)) for f, t in fields))
    assert _normal(EVENTS[key]) == _normal(expected), key


def test_every_event_struct_has_a_layout() -> None:
    # an event the package emits and SuiLedger cannot decode is lost on a real network
    emitted = set()
    for path in MOVE_SOURCES.glob("*.move"):
        module = path.stem
        for name in re.findall(r"event::emit\((\w+)\s*\{", path.read_text()):
            emitted.add((module, name))
    assert emitted and emitted - set(EVENTS) == set()
