"""The module paths of 0.0.x (CHANGES.md, "Retired module paths"): a public one still
imports, as the very module at its new path, with a DeprecationWarning naming the new path
and the release that removes it (dtp/_retired.py); a private one (a component starting
with ``_``) fails like any missing module. The package's own code and tests use none."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp
from dtp import _retired
from tests.support.paths import ROOT

# the private old paths, gone: a dozen of the fourteen, a package's submodule among them
GONE = [
    "dtp._core",
    "dtp._types",
    "dtp._reference",
    "dtp._reference.crypto",
    "dtp._ed25519",
    "dtp._uleb128",
    "dtp._paths",
    "dtp._filelock",
    "dtp._state",
    "dtp._recovery",
    "dtp._checks",
    "dtp._session",
]

# old public paths under a retired package, mapped by the longest matching prefix
UNDER_PACKAGES = {
    "dtp.chain.local": "dtp.ledger.local",
    "dtp.chain.spec": "dtp.ledger._spec",
    "dtp.chain.ledger": "dtp.ledger.interface",
    "dtp.carriers.tcp": "dtp.transport.carriers._tcp",
    "dtp.carriers.ledger": "dtp.hostid.ledger_carrier._carrier",
    "dtp.connection.config": "dtp.protocol.connection._config",
}

OLD_PUBLIC = {**_retired.RETIRED, **UNDER_PACKAGES}


def _forget(name: str) -> None:
    """Drop the old path ``name`` (and what was imported under it) from sys.modules, so
    that importing it again runs the finder; the modules at the new paths stay."""
    for loaded in [n for n in sys.modules if n == name or n.startswith(name + ".")]:
        del sys.modules[loaded]


@pytest.fixture
def fresh() -> Iterator[None]:
    """The old paths a test imports are not left imported for the next one."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if _retired.new_path(name) is not None:
            del sys.modules[name]


@pytest.mark.parametrize("old", sorted(OLD_PUBLIC))
def test_a_public_old_path_warns_and_is_the_module_at_its_new_path(old: str, fresh: None) -> None:
    new = OLD_PUBLIC[old]
    assert _retired.new_path(old) == new
    _forget(old)
    with pytest.warns(DeprecationWarning) as caught:
        module = importlib.import_module(old)
    texts = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert f"{old} is deprecated and will be removed in 0.3.0: import {new} instead" in texts
    # at the line that imports (this file), not in the import machinery
    ours = [w for w in caught if str(w.message).startswith(f"{old} is")]
    assert ours and all(Path(w.filename) == Path(__file__) for w in ours), ours
    assert module is importlib.import_module(new) is sys.modules[old]
    assert module.__name__ == new and module.__spec__ is not None
    assert module.__spec__.name == new  # its own spec, for repr(), reload() and pickle


def test_each_old_path_warns_once(fresh: None) -> None:
    _forget("dtp.keys")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = sys._getframe().f_lineno + 1
        importlib.import_module("dtp.keys")
        importlib.import_module("dtp.keys")
        exec("import dtp.keys\nfrom dtp import keys", {})
    assert [str(w.message)[:22] for w in caught] == ["dtp.keys is deprecated"]
    assert (caught[0].filename, caught[0].lineno) == (__file__, line)


def test_the_warning_is_an_error_where_asked(fresh: None) -> None:
    """Under ``-W error::DeprecationWarning`` an old path fails to import and stays
    unimported, so the next attempt fails again."""
    _forget("dtp.udp")
    for _ in range(2):
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            with pytest.raises(
                DeprecationWarning, match=r"removed in 0\.3\.0: import dtp\.hostid\.udp "
            ):
                importlib.import_module("dtp.udp")
        assert "dtp.udp" not in sys.modules


@pytest.mark.parametrize("name", GONE)
def test_a_private_old_path_does_not_import(name: str) -> None:
    assert _retired.new_path(name) is None
    with pytest.raises(ModuleNotFoundError) as caught:
        importlib.import_module(name)
    # the missing name is the path's own, or its package's (dtp._reference)
    missing = caught.value.name or ""
    assert missing != "dtp" and (name == missing or name.startswith(missing + ".")), missing
    assert name not in sys.modules


@pytest.mark.parametrize("name", ["dtp.chain._nothing", "dtp.chain.no_such_module"])
def test_nothing_else_under_a_retired_package_imports(name: str, fresh: None) -> None:
    """A private or missing module under an old package path is not found, and the error
    names the old path."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(ModuleNotFoundError, match=re.escape(name)):
            importlib.import_module(name)
    assert importlib.util.find_spec(name) is None


def test_the_table_names_only_public_paths_and_existing_modules() -> None:
    """Every new path imports, no old path is a module of its own (the finder, first on
    sys.meta_path, would hide it) and none is private."""
    for old, new in _retired.RETIRED.items():
        assert not any(part.startswith("_") for part in old.split(".")), old
        assert importlib.util.find_spec(new) is not None, new
        relative = Path(*old.split("."))
        assert not (ROOT / relative).with_suffix(".py").exists(), old
        assert not (ROOT / relative / "__init__.py").exists(), old
    assert [type(f) for f in sys.meta_path].count(_retired.RetiredPathFinder) == 1
    importlib.reload(dtp)  # a reload installs no second finder
    assert [type(f) for f in sys.meta_path].count(_retired.RetiredPathFinder) == 1


def test_open_ledger_is_no_longer_importable_from_the_spec_module() -> None:
    from dtp.ledger import open_ledger
    from dtp.ledger._open import open_ledger as defined

    assert open_ledger is defined
    with pytest.raises(ImportError):
        from dtp.ledger._spec import open_ledger as _  # noqa: F401


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_python_m_of_an_old_path_runs_the_new_module_with_a_warning() -> None:
    """``python -m dtp.demo`` runs ``dtp.cli._demo`` as __main__, and says so by default
    (the warning is __main__'s, which Python shows, PEP 565); with the warnings as errors
    it stops before running anything."""
    run = _python("-m", "dtp.demo")
    assert run.returncode == 0, run.stderr
    assert (
        "DeprecationWarning: dtp.demo is deprecated and will be removed in 0.3.0:"
        " run python -m dtp.cli._demo instead"
    ) in run.stderr
    strict = _python("-W", "error::DeprecationWarning", "-m", "dtp.daemon.demo_step")
    assert strict.returncode != 0
    assert "DeprecationWarning: dtp.daemon.demo_step is deprecated" in strict.stderr
    assert "echo server" not in strict.stdout


def test_private_old_paths_do_not_run_as_commands() -> None:
    run = _python("-m", "dtp._checks")
    assert run.returncode != 0
    assert "No module named dtp._checks" in run.stderr


def test_every_module_of_the_package_imports_with_deprecations_as_errors() -> None:
    """The package's own modules use no old path: each imports in a fresh interpreter
    under ``-W error::DeprecationWarning`` (a module needing an extra that is missing
    says MissingExtra, which is no deprecation)."""
    code = (
        "import importlib, pkgutil, dtp\n"
        "from dtp.errors import MissingExtra\n"
        "names = [i.name for i in pkgutil.walk_packages(dtp.__path__, 'dtp.')\n"
        "         if not i.name.endswith('.__main__')]  # (a command: it would run)\n"
        "for name in names:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except MissingExtra:\n"
        "        pass\n"
        "print(len(names))\n"
    )
    run = _python("-W", "error::DeprecationWarning", "-c", code)
    assert run.returncode == 0, run.stderr[-3000:]
    assert int(run.stdout.split()[-1]) > 200


_DOTTED = re.compile(r"\bdtp(?:\.\w+)+")


def _old_paths_in(path: Path) -> list[str]:
    """The old module paths ``path`` imports, or names in a string (code run in a
    subprocess, a ``python -m`` argument)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = _DOTTED.findall(node.value)
        for name in names:
            prefixes = [".".join(name.split(".")[:n]) for n in range(2, name.count(".") + 2)]
            retired = [p for p in prefixes if _retired.new_path(p) or p in GONE]
            if retired:
                found.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}: {name}")
    return found


def test_the_tests_use_no_old_path() -> None:
    found = [
        hit
        for path in sorted((ROOT / "tests").rglob("*.py"))
        if path != Path(__file__)
        for hit in _old_paths_in(path)
    ]
    assert not found, "\n".join(found)
