"""The layers of ``dtp/`` import only downward (docs/architecture.md, "Layout").

The import graph is read from the source with ``ast``: every ``import`` in a module counts,
lazy ones inside functions included (they are how a cycle hides), and those under
``if TYPE_CHECKING:`` too: they carry no arrow at run time, but a reader and a type checker
still walk them, so a part types against a small ``typing.Protocol`` of its own layer
instead of naming the module that imports it. The one exception is the package root
``dtp/__init__.py``, whose type-only imports name the public face it loads lazily (PEP 562)
and which no dtp module imports. The test fails on an import cycle among dtp modules and on
an import that the layer table forbids, unless the allow-list names it; and it fails on an
allow-listed entry that no longer exists, so the list only shrinks.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from tests.support.paths import ROOT

PACKAGE = ROOT / "dtp"

# Which layer a module belongs to: the longest matching prefix wins.
LAYER_OF: dict[str, str] = {
    "dtp.errors": "errors",
    # the extras and their checks: beside the errors they raise, below every layer that
    # has a feature of an extra
    "dtp._extras": "errors",
    # the distribution's name, which MissingExtra's message and `dtp version` give
    "dtp._distribution": "errors",
    # a JSON answer for the package's small HTTP fronts (stdlib only): at the bottom, so
    # that the ledger's bridge and the Sui stand-in's faucet share it
    "dtp._http_json": "errors",
    "dtp.native": "native",
    "dtp.identity": "identity",
    "dtp.protocol": "protocol",
    "dtp.ledger": "ledger",
    "dtp.payments": "payments",
    "dtp.transport": "transport",
    # the event loop the asyncio side runs on (asyncio or uvloop): chosen below the faces
    "dtp.eventloop": "transport",
    "dtp.hostid": "hostid",
    "dtp.hostid.paid": "paid",
    "dtp.hostid.udp": "udp",
    "dtp.socket": "faces",
    "dtp.aio": "faces",
    "dtp.discovery": "discovery",
    "dtp.messaging": "messaging",
    "dtp.graph": "graph",
    "dtp.daemon": "daemon",
    "dtp.cli": "cli",
    "dtp.__main__": "cli",
    "dtp.testing": "testing",
}

_BELOW_TRANSPORT = {"errors", "native", "identity", "protocol"}
_BELOW_HOSTID = {"errors", "native", "identity", "protocol", "ledger", "payments", "transport"}
_BELOW_DISCOVERY = _BELOW_HOSTID | {"hostid", "paid", "udp", "faces"}
_BELOW_APPS = _BELOW_DISCOVERY | {"discovery"}

# What each layer may import besides itself (the table of docs/architecture.md).
# protocol and ledger/payments sit side by side and never import each other; the
# transport imports no money.
MAY_IMPORT: dict[str, set[str]] = {
    "errors": set(),
    "native": {"errors"},
    "identity": {"errors", "native"},
    "protocol": {"errors", "native", "identity"},
    "ledger": {"errors", "native", "identity"},
    "payments": {"errors", "native", "identity", "ledger"},
    "transport": _BELOW_TRANSPORT,
    "hostid": _BELOW_HOSTID,
    "paid": _BELOW_HOSTID | {"hostid"},
    "udp": _BELOW_HOSTID | {"hostid"},
    "faces": _BELOW_HOSTID | {"hostid", "paid", "udp"},
    "discovery": _BELOW_DISCOVERY - {"paid", "udp"},
    "messaging": _BELOW_APPS,
    "graph": _BELOW_APPS - {"paid", "udp"},
    "daemon": _BELOW_APPS,
    "cli": _BELOW_APPS | {"messaging", "graph", "daemon"},
    # the tools for testing applications (docs/testing.md): built on every layer, and
    # imported by none of them
    "testing": _BELOW_APPS | {"messaging", "graph", "daemon", "cli"},
}

# Known imports against the table, each with the step that removes it. An
# entry that no longer exists fails the test: delete it.
ALLOWED_VIOLATIONS: dict[tuple[str, str], str] = {}

# Known import cycles (their modules, sorted), each with the step that breaks it.
ALLOWED_CYCLES: dict[tuple[str, ...], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


# modules whose ``if TYPE_CHECKING:`` imports do not count: the package root names the
# public face it imports on first use (PEP 562), and no dtp module imports the root
TYPING_EXEMPT = {"dtp"}


def imports_of(name: str, source: str, *, is_package: bool, modules: set[str]) -> set[str]:
    """The dtp modules (of ``modules``) that module ``name`` imports, given its source:
    lazy imports and ``if TYPE_CHECKING:`` ones included (unless ``name`` is in
    :data:`TYPING_EXEMPT`)."""

    def known(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    tree = ast.parse(source)
    # the body of ``if TYPE_CHECKING:`` only (its else, and a test that also asks
    # something else, run): skipped for the exempt modules alone
    typing_only = (
        {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If)
            and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
            for statement in node.body
            for inner in ast.walk(statement)
        }
        if name in TYPING_EXEMPT
        else set()
    )
    package = name if is_package else name.rpartition(".")[0]
    targets: set[str | None] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets.update(known(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            for alias in node.names:
                targets.add(known(f"{base}.{alias.name}") or known(base))
    return {target for target in targets if target and target != name}


@functools.cache
def import_graph() -> dict[str, set[str]]:
    """Each dtp module's imports of other dtp modules (read once per run)."""
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {
        name: imports_of(
            name,
            path.read_text(encoding="utf-8"),
            is_package=path.name == "__init__.py",
            modules=set(paths),
        )
        for name, path in paths.items()
    }


def layer(module: str) -> str | None:
    """The layer of ``module`` (None for the package root ``dtp``, which anyone may import)."""
    name = module
    while name:
        if name in LAYER_OF:
            return LAYER_OF[name]
        name = name.rpartition(".")[0]
    return None


def violations(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    found = set()
    for source, targets in graph.items():
        for target in targets:
            here, there = layer(source), layer(target)
            if there is None or here == there:
                continue
            if here is None or there not in MAY_IMPORT[here]:
                found.add((source, target))
    return found


def cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """The strongly connected components of more than one module (Tarjan, iterative),
    less a package and the submodules its ``__init__`` re-exports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[tuple[str, ...]] = set()
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                first = min(component)
                if len(component) > 1 and not all(
                    m == first or m.startswith(first + ".") for m in component
                ):
                    found.add(tuple(sorted(component)))
    return found


# the package root and the finder of its deprecated paths (dtp/_retired.py), which
# imports no layer (violations() says so if it does): anyone may import them
ROOT_MODULES = {"dtp", "dtp._retired"}


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(m for m in import_graph() if m not in ROOT_MODULES and layer(m) is None)
    assert not unplaced, f"modules with no layer in LAYER_OF: {unplaced}"


def test_imports_only_point_down() -> None:
    found = violations(import_graph())
    new = sorted(found - ALLOWED_VIOLATIONS.keys())
    gone = sorted(ALLOWED_VIOLATIONS.keys() - found)
    assert not new, "imports against the layer table: " + ", ".join(f"{a} -> {b}" for a, b in new)
    assert not gone, "fixed, delete from ALLOWED_VIOLATIONS: " + ", ".join(
        f"{a} -> {b}" for a, b in gone
    )


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    new = sorted(found - ALLOWED_CYCLES.keys())
    gone = sorted(ALLOWED_CYCLES.keys() - found)
    assert not new, "import cycles: " + "; ".join(" <-> ".join(c) for c in new)
    assert not gone, "broken, delete from ALLOWED_CYCLES: " + "; ".join(
        " <-> ".join(c) for c in gone
    )


def test_the_checks_see_what_they_look_for() -> None:
    """The walker finds a lazy import and a TYPE_CHECKING one (skipping the latter only in
    the package root), and reports a cycle and an upward arrow, so a silent pass means a
    clean tree and not a blind test."""
    graph = {
        "dtp.protocol.connection": {"dtp.ledger._objects"},
        "dtp.ledger._objects": {"dtp.protocol.connection"},
    }
    assert violations(graph) == {
        ("dtp.protocol.connection", "dtp.ledger._objects"),
        ("dtp.ledger._objects", "dtp.protocol.connection"),
    }
    assert cycles(graph) == {("dtp.ledger._objects", "dtp.protocol.connection")}
    real = import_graph()
    # lazy: cli.main imports the C core's wrapper inside a function, to report its backend
    assert "dtp.native.core" in real["dtp.cli"]
    # typing only: _served.py names the Ledger under TYPE_CHECKING and imports it nowhere else
    assert "dtp.ledger.interface" in real["dtp.hostid._served"]
    # the root's lazy face is exempt: it names dtp.graph only under TYPE_CHECKING
    assert "dtp.graph" not in real["dtp"]


def test_a_type_only_import_makes_a_cycle() -> None:
    """A part that names, under ``if TYPE_CHECKING:``, the module that imports it is a
    cycle (the shape every part once had before it typed against a Protocol)."""
    modules = {"dtp.graph._store", "dtp.graph._tiers", "dtp.graph.values"}
    tiers = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "from dtp.graph.values import JSON\n"
        "if TYPE_CHECKING:\n"
        "    from dtp.graph._store import Graph\n"
    )
    store = "from dtp.graph._tiers import GraphTiers\n"
    graph = {
        "dtp.graph._tiers": imports_of(
            "dtp.graph._tiers", tiers, is_package=False, modules=modules
        ),
        "dtp.graph._store": imports_of(
            "dtp.graph._store", store, is_package=False, modules=modules
        ),
        "dtp.graph.values": set(),
    }
    assert graph["dtp.graph._tiers"] == {"dtp.graph._store", "dtp.graph.values"}
    assert cycles(graph) == {("dtp.graph._store", "dtp.graph._tiers")}
    # the same lines in the exempt root count no arrow
    assert imports_of("dtp", tiers, is_package=True, modules=modules) == {"dtp.graph.values"}
