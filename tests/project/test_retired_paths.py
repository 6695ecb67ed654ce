"""The module paths of earlier versions are retired (CHANGES.md, "Retired module paths
removed"): importing one fails as for any module that does not exist, with no alias left
behind to import it from."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from tests.support.paths import ROOT

# a few of each kind: a flat module, a private one, a package and a module under it, a
# module whose package still exists (dtp.ledger.cli), a renamed driver
RETIRED = [
    "dtp.keys",
    "dtp._core",
    "dtp._checks",
    "dtp.chain",
    "dtp.chain.local",
    "dtp.paid",
    "dtp.udp_aio",
    "dtp.carriers.tcp",
    "dtp.ledger.cli",
    "dtp.ledger.sui_client",
    "dtp.messaging.rpc.client",
    "dtp.hostid.paid.server",
]


@pytest.mark.parametrize("name", RETIRED)
def test_a_retired_path_does_not_import(name: str) -> None:
    with pytest.raises(ModuleNotFoundError) as caught:
        importlib.import_module(name)
    # the missing name is the path's own, or its retired package's (dtp.chain for
    # dtp.chain.local)
    missing = caught.value.name or ""
    assert missing != "dtp" and (name == missing or name.startswith(missing + ".")), missing
    assert name not in sys.modules


def test_no_alias_machinery_is_left_in_the_package() -> None:
    """No finder of the package's on the meta path, and no table of old names on it."""
    import dtp

    assert not hasattr(dtp, "MOVED")
    assert not hasattr(dtp, "moved_to")
    assert not [f for f in sys.meta_path if type(f).__module__.startswith("dtp")]


def test_open_ledger_is_no_longer_importable_from_the_spec_module() -> None:
    from dtp.ledger import open_ledger
    from dtp.ledger.open import open_ledger as defined

    assert open_ledger is defined
    with pytest.raises(ImportError):
        from dtp.ledger.spec import open_ledger as _  # noqa: F401


def test_a_retired_path_does_not_run_as_a_command() -> None:
    """``python -m dtp.demo`` (now ``dtp.cli.demo``) says no such module."""
    run = subprocess.run(
        [sys.executable, "-m", "dtp.demo", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode != 0
    assert "No module named dtp.demo" in run.stderr
