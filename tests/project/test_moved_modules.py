"""Old module paths keep working after a move into the layer folders.

``dtp/__init__.py`` maps each old name (``dtp.keys``, ``dtp.chain.local``...) to the module
at its new path, so the old name is the very same module object: ``from dtp.keys import
HostIdentity`` works, and monkeypatching through either name patches the one module.
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from collections.abc import Iterator

import pytest

import dtp


@pytest.mark.parametrize("old", sorted(dtp.MOVED))
def test_an_old_name_is_the_module_at_its_new_name(old: str) -> None:
    new = dtp.MOVED[old]
    assert importlib.import_module(old) is importlib.import_module(new)
    assert sys.modules[old] is sys.modules[new]
    assert sys.modules[old].__name__ == new
    # its spec stays its own (importlib sets the old name's on it), so that its repr
    # and importlib.reload() see its real name
    assert sys.modules[old].__spec__.name == new
    assert repr(sys.modules[old]).startswith(f"<module '{new}'")


@pytest.fixture
def probe_alias() -> Iterator[str]:
    """A throwaway old name for the package ``dtp.graph``, removed afterwards."""
    dtp.MOVED["dtp._moved_probe"] = "dtp.graph"
    yield "dtp._moved_probe"
    del dtp.MOVED["dtp._moved_probe"]
    for name in [n for n in sys.modules if n.startswith("dtp._moved_probe")]:
        del sys.modules[name]


def test_a_package_alias_maps_its_submodules_to_the_same_objects(probe_alias: str) -> None:
    import dtp.graph.clock

    old_clock = importlib.import_module(f"{probe_alias}.clock")
    assert old_clock is dtp.graph.clock
    assert importlib.import_module(probe_alias).clock is dtp.graph.clock
    assert dtp.moved_to(f"{probe_alias}.clock") == "dtp.graph.clock"
    assert dtp.moved_to("dtp.graph.clock") is None


def test_patching_through_the_old_name_patches_the_module(
    probe_alias: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dtp.graph.clock

    old_clock = importlib.import_module(f"{probe_alias}.clock")
    monkeypatch.setattr(old_clock, "_probe_value", 7, raising=False)
    assert vars(dtp.graph.clock)["_probe_value"] == 7


def test_a_name_that_never_existed_still_fails_to_import() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("dtp.no_such_module")


def test_a_missing_submodule_of_an_old_package_name_is_not_found(probe_alias: str) -> None:
    """The finder answers only for a new module that exists: the error names the old name,
    and find_spec says None as for any missing module."""
    assert importlib.util.find_spec(f"{probe_alias}.no_such_module") is None
    with pytest.raises(ModuleNotFoundError, match=f"{probe_alias}.no_such_module"):
        importlib.import_module(f"{probe_alias}.no_such_module")


def test_python_m_runs_a_module_by_its_old_name(probe_alias: str) -> None:
    """``python -m <old name>`` runs the module at its new path as __main__ (runpy needs
    the loader's get_code and a __file__)."""
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import runpy, dtp; dtp.MOVED['dtp._moved_probe'] = 'dtp.graph';"
            " g = runpy.run_module('dtp._moved_probe.clock', run_name='__main__');"
            " print(g['__file__'])",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert run.stdout.strip().endswith("graph/clock.py")


def test_open_ledger_still_imports_from_the_spec_module() -> None:
    """open_ledger moved from dtp.ledger.spec to dtp.ledger.open (spec cannot import it:
    open imports spec); the names it had keep giving the same function."""
    from dtp.chain.spec import open_ledger as old
    from dtp.ledger.open import open_ledger
    from dtp.ledger.spec import open_ledger as spec_name

    assert old is spec_name is open_ledger
    assert dtp.ledger.open_ledger is open_ledger
