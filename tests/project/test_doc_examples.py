"""Every Python example a user copies from README.md and docs/*.md is checked.

Each ```python block is

* compiled (top-level ``await`` allowed: the asyncio examples use it);
* checked statically: every ``dtp...`` module, name and attribute it imports or uses
  exists, and every call of a ``dtp`` function, class or method -- including methods of
  objects the example made, as far as return annotations tell their type -- binds to
  the callee's signature (the keyword arguments exist, not too many positionals);
* run in a fresh interpreter (``-X dev``, cwd ``tmp_path``, 127.0.0.1 and LocalLedger
  only), and its output comments (``print(x)  # b'HELLO'``) checked, unless the doc
  marks it as not runnable.

How a doc marks a block: an HTML comment on the line(s) just before the fence, so the
reader sees it in the source and nothing in the rendered page:

``<!-- doc-test: skip: REASON -->``
    a fragment (placeholders, names from elsewhere) or a block that needs something
    outside the machine (a Sui node); still compiled and checked statically.
``<!-- doc-test: id=NAME -->``, ``<!-- doc-test: after=NAME,NAME -->``
    ``after`` runs the named blocks first in the same process, as a user typing the
    examples in order would (``id`` names a block for that).
``port=N``
    the block binds 127.0.0.1:N as the text has the user do; skipped, saying so, when
    another process holds that port.

Docs owned by other work streams (:data:`READ_ONLY`) are read at test time but get no
markers from this file: their blocks that cannot run are listed in :data:`OTHER_SKIP`
with a reason each, and an entry that no longer matches its block fails the test.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import os
import re
import subprocess
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.project.doc_blocks import (
    BLOCKS,
    NAMED,
    OWNED,
    READ_ONLY,
    Block,
    chain_of,
    expected_output,
    held_for,
    in_order,
    port_free,
)
from tests.support.paths import ROOT

TIMEOUT = 60.0

#: Blocks of the READ_ONLY docs that are not run: key -> (its first line, why).
OTHER_SKIP: dict[str, tuple[str, str]] = {
    "docs/sui.md#2": (
        "from dtp.ledger.sui import SuiLedger, SuiConfig",
        "needs a Sui full node (DTP_SUI_RPC, DTP_SUI_PACKAGE); the live tests cover it",
    ),
}


def _skip_reason(block: Block) -> str | None:
    if block.key in OTHER_SKIP:
        return f"listed in OTHER_SKIP: {OTHER_SKIP[block.key][1]}"
    return f"marked in the doc: {block.skip}" if block.skip else None


def test_markers_and_tables_are_consistent() -> None:
    assert len(BLOCKS) >= 14, sorted(BLOCKS)
    for key, (first, _why) in OTHER_SKIP.items():
        assert key in BLOCKS, f"{key}: no such block any more: update OTHER_SKIP"
        assert BLOCKS[key].first_line.startswith(first), (
            f"{key} (line {BLOCKS[key].line}) now starts with {BLOCKS[key].first_line!r}"
        )
    assert len(NAMED) == sum(1 for b in BLOCKS.values() if b.name), "duplicate doc-test id"
    for block in BLOCKS.values():
        for name in block.after:
            assert name in NAMED, f"{block.key}: after={name}: no block has that id"
            assert _skip_reason(NAMED[name]) is None, f"{block.key}: after a skipped block"


# -- static checks -----------------------------------------------------------------------


@dataclass(frozen=True)
class Inst:
    """An instance of a ``dtp`` class, as far as the example's calls tell."""

    cls: type


@dataclass
class Checker(ast.NodeVisitor):
    """Resolves what an example names in ``dtp`` and checks its calls' signatures."""

    where: str
    env: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def report(self, node: ast.AST, text: str) -> None:
        self.problems.append(f"{self.where} line +{getattr(node, 'lineno', 0)}: {text}")

    # imports and bindings

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] != "dtp":
                continue
            try:
                module = importlib.import_module(alias.name)
            except ImportError as exc:
                self.report(node, f"import {alias.name}: {exc}")
                continue
            if alias.asname:
                self.env[alias.asname] = module
            else:
                self.env["dtp"] = importlib.import_module("dtp")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if (node.module or "").split(".")[0] != "dtp":
            return
        try:
            module = importlib.import_module(node.module or "")
        except ImportError as exc:
            self.report(node, f"from {node.module} import ...: {exc}")
            return
        for alias in node.names:
            value = getattr(module, alias.name, None)
            if value is None:
                try:
                    value = importlib.import_module(f"{node.module}.{alias.name}")
                except ImportError:
                    self.report(node, f"{node.module} has no {alias.name}")
                    continue
            self.env[alias.asname or alias.name] = value

    def visit_Assign(self, node: ast.Assign) -> None:
        target, source = node.targets[0], node.value
        if (
            len(node.targets) == 1
            and isinstance(target, ast.Tuple)
            and isinstance(source, ast.Tuple)
            and len(target.elts) == len(source.elts)
        ):  # a, b = x(), y()
            for element, value in zip(target.elts, source.elts, strict=True):
                self.bind(element, self.resolve(value))
            return
        value = self.resolve(source)
        for target in node.targets:
            self.bind(target, value)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.bind(node.target, self.resolve(node.value))

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.bind(node.target, self.resolve(node.value))

    def visit_With(self, node: ast.With | ast.AsyncWith) -> None:
        for item in node.items:
            value = self.resolve(item.context_expr)
            if item.optional_vars is not None:
                if isinstance(value, Inst):
                    enter = getattr(value.cls, "__enter__", None) or getattr(
                        value.cls, "__aenter__", None
                    )
                    entered = self.returns(enter) if enter else None
                    # ``__enter__`` annotated ``-> Self`` gives nothing: keep the instance
                    value = entered if isinstance(entered, Inst) else value
                self.bind(item.optional_vars, value)
        for statement in node.body:
            self.visit(statement)

    visit_AsyncWith = visit_With

    def visit_For(self, node: ast.For | ast.AsyncFor) -> None:
        self.resolve(node.iter)
        self.bind(node.target, None)
        for statement in [*node.body, *node.orelse]:
            self.visit(statement)

    visit_AsyncFor = visit_For

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.env[node.name] = None
        saved = dict(self.env)
        for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]:
            self.env[arg.arg] = None
        for statement in node.body:
            self.visit(statement)
        self.env = saved

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Expr(self, node: ast.Expr) -> None:
        self.resolve(node.value)

    def generic_visit(self, node: ast.AST) -> None:
        # Statements this checker has no rule for: still look at their expressions.
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self.resolve(child)
            else:
                self.visit(child)

    def bind(self, target: ast.expr, value: Any) -> None:
        if isinstance(target, ast.Name):
            self.env[target.id] = value
        elif isinstance(target, ast.Tuple | ast.List):
            for element in target.elts:
                self.bind(element, None)
        else:
            self.resolve(target)

    # expressions

    def resolve(self, node: ast.expr) -> Any:
        """What ``node`` evaluates to, when it is something of ``dtp``; else None."""
        if isinstance(node, ast.Name):
            return self.env.get(node.id)
        if isinstance(node, ast.Attribute):
            return self.attribute(node, self.resolve(node.value), node.attr)
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.Await):
            return self.resolve(node.value)
        if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
            values = [self.resolve(v) for v in node.values]
            return next((v for v in values if v is not None), None)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self.resolve(child)
            elif isinstance(child, ast.comprehension):
                self.resolve(child.iter)
                for condition in child.ifs:
                    self.resolve(condition)
        return None

    def attribute(self, node: ast.AST, base: Any, name: str) -> Any:
        if isinstance(base, types.ModuleType) and base.__name__.split(".")[0] == "dtp":
            if hasattr(base, name):
                return getattr(base, name)
            try:
                return importlib.import_module(f"{base.__name__}.{name}")
            except ImportError:
                self.report(node, f"{base.__name__} has no {name}")
                return None
        if isinstance(base, type) and _ours(base):
            if not hasattr(base, name):
                self.report(node, f"{base.__qualname__} has no {name}")
                return None
            return getattr(base, name)
        if isinstance(base, Inst):
            return self.instance_attribute(node, base.cls, name)
        return None

    def instance_attribute(self, node: ast.AST, cls: type, name: str) -> Any:
        static = None
        for klass in cls.__mro__:
            if name in vars(klass):
                static = vars(klass)[name]
                break
        if static is None:
            if name in _instance_attributes(cls):
                return _as_inst(_hints(cls).get(name))
            self.report(node, f"{cls.__qualname__} objects have no attribute {name}")
            return None
        if isinstance(static, property):
            return self.returns(static.fget) if static.fget else None
        if isinstance(static, staticmethod | classmethod):
            return getattr(cls, name)
        if inspect.isfunction(static):
            return BoundMethod(cls, static)
        return None

    def call(self, node: ast.Call) -> Any:
        callee = self.resolve(node.func)
        for arg in node.args:
            self.resolve(arg.value if isinstance(arg, ast.Starred) else arg)
        for keyword in node.keywords:
            self.resolve(keyword.value)
        target = callee.func if isinstance(callee, BoundMethod) else callee
        if not callable(target) or not _ours(target):
            return None
        signature = _signature(callee)
        spread = any(isinstance(a, ast.Starred) for a in node.args) or any(
            k.arg is None for k in node.keywords
        )  # f(*args) / f(**kw): nothing to count
        if signature is not None and not spread:
            try:
                signature.bind(*node.args, **{k.arg: k.value for k in node.keywords if k.arg})
            except TypeError as exc:
                self.report(node, f"{_name(callee)}{signature}: {exc}")
        if isinstance(target, type):
            return Inst(target)
        return self.returns(target)

    def returns(self, func: Any) -> Any:
        hints = _hints(func)
        return _as_inst(hints.get("return"))


@dataclass(frozen=True)
class BoundMethod:
    """A plain method looked up on an instance of ``cls``."""

    cls: type
    func: Any


def _ours(obj: Any) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module == "dtp" or module.startswith("dtp.")


def _name(callee: Any) -> str:
    if isinstance(callee, BoundMethod):
        return f"{callee.cls.__qualname__}.{callee.func.__name__}"
    return f"{callee.__module__}.{getattr(callee, '__qualname__', callee)}"


def _signature(callee: Any) -> inspect.Signature | None:
    try:
        if isinstance(callee, BoundMethod):
            signature = inspect.signature(callee.func)
            return signature.replace(parameters=list(signature.parameters.values())[1:])
        return inspect.signature(callee)
    except (TypeError, ValueError):
        return None


def _hints(obj: Any) -> dict[str, Any]:
    """``obj``'s annotations, each evaluated on its own where it can be.

    ``typing.get_type_hints`` gives up on the whole function when one annotation names
    something imported only under ``TYPE_CHECKING``; the return type alone usually
    resolves, and a bare class name is looked up among the loaded ``dtp`` modules.
    """
    try:
        return typing.get_type_hints(obj)
    except Exception:
        pass
    try:
        raw = inspect.get_annotations(obj)
    except TypeError:
        return {}
    namespace = dict(
        getattr(obj, "__globals__", None) or vars(sys.modules.get(obj.__module__, sys))
    )
    hints: dict[str, Any] = {}
    for name, annotation in raw.items():
        if not isinstance(annotation, str):
            hints[name] = annotation
            continue
        try:
            hints[name] = eval(annotation, namespace)
        except Exception:
            if re.fullmatch(r"[A-Za-z_]\w*", annotation):
                hints[name] = _find_class(annotation)
    return hints


def _find_class(name: str) -> type | None:
    """The one ``dtp`` class called ``name`` among the loaded modules, if just one."""
    found = {
        value
        for module_name, module in list(sys.modules.items())
        if module_name.split(".")[0] == "dtp"
        for value in [getattr(module, name, None)]
        if isinstance(value, type) and _ours(value)
    }
    return found.pop() if len(found) == 1 else None


def _as_inst(hint: Any) -> Inst | None:
    """``Inst`` for a hint naming one ``dtp`` class (``X | None`` counts as X)."""
    if isinstance(hint, type) and _ours(hint):
        return Inst(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        classes = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(classes) == 1:
            return _as_inst(classes[0])
    return None


def _instance_attributes(cls: type) -> set[str]:
    """Attribute names an instance of ``cls`` has: annotations, fields, slots, ``self.x =``."""
    names: set[str] = set()
    for klass in cls.__mro__:
        names.update(getattr(klass, "__annotations__", {}))
        slots = vars(klass).get("__slots__", ())
        names.update([slots] if isinstance(slots, str) else slots)
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        names.update(re.findall(r"\bself\.([A-Za-z_]\w*)\s*(?::[^=\n]*)?=(?!=)", source))
    if dataclasses.is_dataclass(cls):
        names.update(f.name for f in dataclasses.fields(cls))
    return names


def _free_names() -> dict[str, Any]:
    """Names the fragments use without defining them, typed as their text describes."""
    import dtp.aio
    import dtp.socket
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.local import LocalLedger
    from dtp.testing.network import SimNetwork

    me = Inst(HostIdentity)
    return {
        "dtp": dtp,
        "ledger": Inst(LocalLedger),
        "net": Inst(SimNetwork),  # (docs/testing.md: the simulated network)
        "me": me,
        "identity": me,
        "host_key": me,
        "provider": me,
        "client": me,
    }


def check(code: str, where: str) -> list[str]:
    """The problems the static check finds in one example (or a run of them)."""
    try:
        tree = compile(
            code, where, "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        )
    except SyntaxError as exc:
        return [f"{where} line +{exc.lineno}: does not compile: {exc.msg}"]
    checker = Checker(where, env=_free_names())
    for statement in tree.body:
        checker.visit(statement)
    return checker.problems


def test_checker_finds_what_it_should() -> None:
    """The static check catches wrong keywords, missing names and missing methods."""
    bad = (
        "import dtp.socket\n"
        "from dtp.ledger.local import LocalLedger\n"
        "from dtp.identity.keys import HostIdentity, NoSuchThing\n"
        "led = LocalLedger(':memory:')\n"
        "me = HostIdentity.generate()\n"
        "led.open_connection(me, 'h', 1, 'c', depos=1)\n"
        "led.no_such_method()\n"
        "dtp.socket.create_server(('127.0.0.1', 0), identity=me, prot=1)\n"
        "with dtp.socket.create_connection(('h', 1), server_key=b'') as s:\n"
        "    s.send_recv(b'', 1, 2, 3)\n"
        "dtp.sockets\n"
        "x = await dtp.aio.open_connection('h', 1, nope=1)\n"
    )
    problems = check(bad, "probe")
    for expected in (
        "NoSuchThing",
        "depos",
        "no_such_method",
        "prot",
        "send_recv",
        "dtp has no sockets",
        "nope",
    ):
        assert any(expected in p for p in problems), (expected, problems)
    good = (
        "import dtp.socket\n"
        "from dtp.identity.keys import HostIdentity\n"
        "me = HostIdentity.generate()\n"
        "print(me.sui_address, me.noise_public)\n"
        "srv = dtp.socket.create_server(('127.0.0.1', 0), identity=me)\n"
        "print(srv.address, srv.noise_public_key)\n"
    )
    assert check(good, "probe") == []
    assert "does not compile" in check("def f(:\n", "probe")[0]


@pytest.mark.parametrize("key", sorted(BLOCKS))
def test_block_names_and_signatures(key: str) -> None:
    """Compiles; every ``dtp`` name it uses exists and every call binds."""
    block = BLOCKS[key]
    chain = [block] if _skip_reason(block) else chain_of(block)
    code = "".join(b.code for b in chain)
    problems = check(code, f"{key} (line {block.line})")
    if len(chain) > 1:  # report only this block's own lines' problems, not its chain's
        offset = sum(b.code.count("\n") for b in chain[:-1])
        problems = [p for p in problems if _line_of(p) > offset]
    assert not problems, "\n".join(problems)


def _line_of(problem: str) -> int:
    m = re.search(r"line \+(\d+)", problem)
    return int(m.group(1)) if m else 0


# -- running -----------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(BLOCKS))
def test_block_runs(key: str, tmp_path: Path) -> None:
    """Runs offline as written (after its ``after`` blocks) and prints what it says."""
    block = BLOCKS[key]
    reason = _skip_reason(block)
    if reason:
        pytest.skip(reason)
    chain = chain_of(block)
    with held_for(chain):
        _run_block(key, block, chain, tmp_path)


def _run_block(key: str, block: Block, chain: list[Block], tmp_path: Path) -> None:
    """:func:`test_block_runs` once the block's ports are held."""
    for b in chain:
        if b.port is not None and not port_free(b.port):
            pytest.skip(f"127.0.0.1:{b.port} is in use by another process")
    script = tmp_path / "example.py"
    script.write_text("".join(b.code for b in chain), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DTP_SUI", "PYTEST"))}
    env["HOME"] = str(tmp_path)  # identity files and the like land in tmp_path
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    # this checkout's dtp, whatever checkout the interpreter's dtp was installed from (a
    # git worktree's run would test another tree's package)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-X", "dev", str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    where = f"{key} (line {block.line})"
    assert done.returncode == 0, f"{where} failed:\n{done.stdout}\n{done.stderr}"
    assert "Warning" not in done.stderr, f"{where}:\n{done.stderr}"
    want = expected_output(block.code)
    assert in_order(want, done.stdout.splitlines()), (
        f"{where}: expected {want} in order, printed:\n{done.stdout}"
    )


# -- calls in the prose ------------------------------------------------------------------


def _prose_calls(relpath: str) -> list[tuple[str, ast.Call]]:
    """Inline code spans of a doc that are calls with keyword arguments."""
    text = (ROOT / relpath).read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)  # fenced blocks are above
    found = []
    for span in re.findall(r"`([^`]+)`", text):
        source = " ".join(span.split())
        try:
            tree = ast.parse(source, mode="eval")
        except SyntaxError:
            continue
        if isinstance(tree.body, ast.Call) and any(k.arg for k in tree.body.keywords):
            found.append((source, tree.body))
    return found


def _dtp_objects(name: str) -> list[Any]:
    """Every public ``dtp`` function or class called ``name`` (``X.y`` for methods)."""
    import pkgutil

    import dtp

    head, _, method = name.partition(".")
    found = []
    for info in pkgutil.walk_packages(dtp.__path__, "dtp."):
        if "._" in info.name:
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional dependency (pysui) is missing
            continue
        obj = getattr(module, head, None)
        if obj is None or not _ours(obj):
            continue
        if method:
            obj = getattr(obj, method, None)
        if callable(obj) and obj not in found:
            found.append(obj)
    return found


def _takes(obj: Any, keywords: set[str]) -> bool:
    """Whether ``obj`` accepts these keyword arguments (by name; values not checked)."""
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return True
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True
    return keywords <= set(params)


@pytest.mark.parametrize("doc", OWNED + READ_ONLY)
def test_prose_calls_use_real_keywords(doc: str) -> None:
    """``create_connection(..., subscription=x)`` in the text: the keyword exists."""
    problems = []
    for source, call in _prose_calls(doc):
        func = call.func
        parts = ast.unparse(func).split(".")
        if len(parts) == 2 and isinstance(_free_names().get(parts[0]), Inst):
            parts[0] = _free_names()[parts[0]].cls.__name__  # ledger.open_connection
        # dtp.socket.create_connection -> create_connection; Graph -> Graph; X.y stays
        name = ".".join(parts[-2:] if len(parts) > 1 and parts[-2][:1].isupper() else parts[-1:])
        candidates = _dtp_objects(name)
        if not candidates:  # hashlib's blake2b, a method named on its own: not ours to check
            continue
        keywords = {k.arg for k in call.keywords if k.arg}
        if not any(_takes(obj, keywords) for obj in candidates):
            problems.append(f"{doc}: `{source}`: {name} takes no {sorted(keywords)}")
    assert not problems, "\n".join(problems)


# -- the daemon's config tables ----------------------------------------------------------

_MINIMAL_CONFIG = """
[daemon]
ledger = "l.sqlite"
identity = "id.key"

[[service]]
name = "s"
port = 1
backends = ["127.0.0.1:2"]

[[forward]]
name = "f"
listen = "127.0.0.1:0"
target = "dtp://0x1:1"
"""


def _doc_default(cell: str) -> Any:
    """A table's default cell as a value; ``_NOT_A_VALUE`` for prose ("required")."""
    cell = cell.strip().strip("`")
    if m := re.fullmatch(r"(\d+) MiB", cell):
        return int(m.group(1)) << 20
    try:
        return ast.literal_eval(cell)
    except (ValueError, SyntaxError):
        return _NOT_A_VALUE


_NOT_A_VALUE = object()


def _daemon_table(text: str, heading: str) -> dict[str, str]:
    """key -> default cell of the ``| key | default | |`` table under ``heading``."""
    section = text[text.index(heading) :]
    section = section[: section.index("\n\n", section.index("| key |"))]
    rows: dict[str, str] = {}
    for row in section.splitlines():
        cells = row.split("|")
        if len(cells) < 4 or not cells[1].strip().startswith("`"):
            continue
        for key in re.findall(r"`(\w+)`", cells[1]):
            rows[key] = cells[2]
    return rows


def test_daemon_doc_defaults_are_the_parsers(tmp_path: Path) -> None:
    """docs/daemon.md's config tables give the defaults a minimal file really gets."""
    from dtp.daemon._config import parse_config

    config = parse_config(_MINIMAL_CONFIG, tmp_path / "dtp.toml")
    text = (ROOT / "docs" / "daemon.md").read_text(encoding="utf-8")
    checked = 0
    for heading, parsed in (
        ("### `[daemon]`", config.daemon),
        ("### `[[service]]`", config.services[0]),
        ("### `[[forward]]`", config.forwards[0]),
    ):
        for key, cell in _daemon_table(text, heading).items():
            stated = _doc_default(cell)
            if stated is _NOT_A_VALUE:
                continue
            actual = getattr(parsed, key)
            if isinstance(actual, Path):
                actual = actual.name
            elif isinstance(actual, tuple):
                actual = list(actual)
            elif key == "listen":
                actual = f"{actual.host}:{actual.port}"
            assert actual == stated, (
                f"daemon.md {heading} {key}: says {cell.strip()}, is {actual!r}"
            )
            checked += 1
    assert checked >= 15, checked


def test_py_typed_ships() -> None:
    """The package is marked typed for users' type checkers, in wheels and sdists."""
    import tomllib

    assert (ROOT / "dtp" / "py.typed").is_file()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["dtp"]
    assert "include dtp/py.typed" in (ROOT / "MANIFEST.in").read_text(encoding="utf-8")


@pytest.mark.parametrize("doc", OWNED + READ_ONLY)
def test_prose_methods_exist(doc: str) -> None:
    """``LedgerCarrier.reclaim_storage()`` in the text: the class has that attribute."""
    text = re.sub(r"^```.*?^```", "", (ROOT / doc).read_text(encoding="utf-8"), flags=re.S | re.M)
    problems = []
    for span in re.findall(r"`([^`]+)`", text):
        m = re.fullmatch(r"([A-Z]\w+)\.([a-z_]\w*)(\(.*\))?", " ".join(span.split()))
        if not m:
            continue
        classes = [c for c in _dtp_objects(m.group(1)) if isinstance(c, type)]
        if classes and not any(
            hasattr(c, m.group(2)) or m.group(2) in _instance_attributes(c) for c in classes
        ):
            problems.append(f"{doc}: `{span}`: {m.group(1)} has no {m.group(2)}")
    assert not problems, "\n".join(problems)


# -- what the docs tell users to import --------------------------------------------------

#: Public methods, of classes the docs name, that have no docstring yet (in files this
#: test's owner does not edit; reported). New gaps fail the test; fixed ones may go.
KNOWN_UNDOCUMENTED: set[str] = set()
"""Documented names without a docstring yet (each is a gap to close, not a rule)."""


def _documented_names() -> set[str]:
    """``dtp.x.y`` names the docs use: in prose, imported or used by an example."""
    names: set[str] = set()
    for doc in OWNED + READ_ONLY:
        names.update(re.findall(r"`(dtp(?:\.[A-Za-z_]\w*)+)", (ROOT / doc).read_text("utf-8")))
    for block in BLOCKS.values():
        tree = compile(
            block.code, block.key, "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        )
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dtp"):
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names if a.name.startswith("dtp"))
        names.update(re.findall(r"\b(dtp(?:\.[A-Za-z_]\w*)+)", block.code))
    names.discard("dtp.toml")  # the daemon's config file
    return names


def _lookup(dotted: str) -> Any:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr, None)
        return obj
    return None


def _gaps(dotted: str, obj: Any) -> list[str]:
    """What ``obj`` lacks of a docstring and annotations (a class: its public methods)."""
    gaps = []
    if not (inspect.getdoc(obj) or "").strip():
        gaps.append(f"{dotted}: no docstring")
    if inspect.isfunction(obj):
        signature = inspect.signature(obj)
        gaps += [
            f"{dotted}: parameter {p.name} has no type"
            for p in signature.parameters.values()
            if p.annotation is inspect.Parameter.empty and p.name not in ("self", "cls")
        ]
        if signature.return_annotation is inspect.Signature.empty:
            gaps.append(f"{dotted}: no return type")
    if isinstance(obj, type) and not issubclass(obj, BaseException):
        for name, member in vars(obj).items():
            if name.startswith("_") or not inspect.isfunction(member):
                continue
            where = f"{dotted}.{name}"
            documented = (inspect.getdoc(getattr(obj, name)) or "").strip()
            if not documented and where not in KNOWN_UNDOCUMENTED:
                gaps.append(f"{where}: no docstring")
            signature = inspect.signature(member)
            gaps += [
                f"{where}: parameter {p.name} has no type"
                for p in list(signature.parameters.values())[1:]
                if p.annotation is inspect.Parameter.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            ]
            if signature.return_annotation is inspect.Signature.empty:
                gaps.append(f"{where}: no return type")
    return gaps


def test_documented_names_exist_with_docstrings_and_types() -> None:
    """Everything the docs have users import from ``dtp`` is there, documented and typed."""
    names = _documented_names()
    assert len(names) >= 40, sorted(names)
    problems = []
    for dotted in sorted(names):
        obj = _lookup(dotted)
        if obj is None:
            problems.append(f"{dotted}: does not exist")
        elif not isinstance(obj, int | str | float | tuple | frozenset):
            problems += _gaps(dotted, obj)
    assert not problems, "\n".join(problems)


def test_the_package_docstring_names_real_modules() -> None:
    """``help(dtp)`` points at the modules users start from, and they import."""
    import dtp

    named = re.findall(r"``(dtp(?:\.\w+)+)``", dtp.__doc__ or "")
    assert len(named) >= 5, dtp.__doc__
    missing = [name for name in named if _lookup(name) is None]
    assert not missing, missing


#: Names a non-fragment block of a READ_ONLY doc uses without defining (reported to the
#: doc's owner; empty now that docs/sui.md binds ``identity``).
KNOWN_UNDEFINED: dict[str, set[str]] = {}


def _undefined_names(code: str) -> set[str]:
    """Names ``code`` reads at module level or in its functions but never binds."""
    import builtins

    tree = compile(code, "block", "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    bound = set(dir(builtins))
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (used if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)  # (``except E as name``)
    return used - bound


def test_whole_blocks_define_what_they_use() -> None:
    """A block not marked as a fragment (it runs, or needs only a Sui node) is complete:
    a user pasting it gets no NameError."""
    problems = []
    for key, block in BLOCKS.items():
        reason = _skip_reason(block) or ""
        if "fragment" in reason:
            continue
        code = "".join(b.code for b in chain_of(block)) if not reason else block.code
        missing = _undefined_names(code) - KNOWN_UNDEFINED.get(key, set())
        if missing:
            problems.append(f"{key} (line {block.line}): uses {sorted(missing)} undefined")
    assert not problems, "\n".join(problems)
