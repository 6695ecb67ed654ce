"""Offline checks of the Sui Move package (move/dtp).

No `sui` binary exists on the development machines, so the Move code cannot be compiled
here. These tests run what can run: the tree-sitter check in tools/move-syntax (syntax,
and the compile errors a parse tree shows: a tuple bound to one local, an immutable local
changed, a constant or package function that does not exist, a private or miscounted
call), which must accept every file of move/dtp and reject each broken fixture with a
file:line:col diagnostic saying why; and a consistency check between the scenario table
in tests/scenarios/ and the Move tests that mirror it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.support.paths import ROOT

CHECKER = ROOT / "tools" / "move-syntax" / "check.sh"
FIXTURES = ROOT / "tools" / "move-syntax" / "fixtures"
PACKAGE = ROOT / "move" / "dtp"
SCENARIOS = ROOT / "tests" / "scenarios"

needs_node = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="node and npm are needed for the Move syntax checker (tools/move-syntax)",
)


def run_checker(*paths: Path) -> subprocess.CompletedProcess[str]:
    """Run tools/move-syntax/check.sh on `paths` (installs its npm packages on first use)."""
    return subprocess.run(
        ["sh", str(CHECKER), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@needs_node
def test_move_package_parses() -> None:
    result = run_checker(PACKAGE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stderr


@needs_node
def test_good_fixture_parses() -> None:
    result = run_checker(FIXTURES / "good_sample.move")
    assert result.returncode == 0, result.stdout + result.stderr


BAD_FIXTURES = sorted(FIXTURES.glob("bad_*.move"))


#: What each fixture of a compile error (it parses) must be refused for: every fragment
#: appears in a diagnostic, so a fixture cannot pass for another reason.
COMPILE_ERRORS = {
    "bad_tuple_local": ["a tuple is bound to the single local 'state'"],
    "bad_tuple_call_local": ["a tuple is bound to the single local 'parts'"],
    "bad_immutable_local": [
        "'total' is assigned but was not declared `mut`",
        "'total' is borrowed mutably but was not declared `mut`",
        "bad_immutable_local::bump takes &mut self, but 'c' was not declared `mut`",
    ],
    "bad_unknown_constant": [
        "ETooLarge: module bad_unknown_constant declares no such constant",
        "abort_code bad_unknown_constant::ETooBig: module bad_unknown_constant declares no "
        "constant ETooBig",
    ],
    "bad_calls": [
        "bad_calls_lib::secret is private to module bad_calls_lib",
        "bad_calls_lib::sub: module bad_calls_lib has no function sub",
        "bad_calls_lib::add takes 2 argument(s); this call passes 1",
    ],
}


def test_bad_fixtures_exist() -> None:
    names = {p.name for p in BAD_FIXTURES}
    assert {"bad_missing_brace.move", "bad_stray_token.move", "bad_unbalanced_module.move"} <= names
    assert {f"{name}.move" for name in COMPILE_ERRORS} <= names


@needs_node
@pytest.mark.parametrize("fixture", BAD_FIXTURES, ids=lambda p: p.stem)
def test_bad_fixture_rejected_with_position(fixture: Path) -> None:
    result = run_checker(fixture)
    assert result.returncode == 1, result.stdout + result.stderr
    diagnostics = re.findall(rf"^{re.escape(str(fixture))}:(\d+):(\d+): .+$", result.stdout, re.M)
    assert diagnostics, result.stdout
    for line, col in diagnostics:
        assert int(line) >= 1 and int(col) >= 1
    for fragment in COMPILE_ERRORS.get(fixture.stem, []):
        assert fragment in result.stdout, (fragment, result.stdout)


@needs_node
def test_tuple_bound_to_one_local_is_found_where_it_was(tmp_path: Path) -> None:
    """The mistake that kept `sui move test` from compiling (a tuple bound to one local in
    a test helper), put back into a copy of the package: the checker names its line."""
    package = tmp_path / "dtp"
    shutil.copytree(PACKAGE, package)
    tests = package / "tests" / "economics_scenario_tests.move"
    source = tests.read_text()
    values = "(lane.funds_value(), lane.reserved(), lane.pledge_count());"
    fixed = "let (funds, reserved, pledges) = " + values
    assert fixed in source
    broken = source.replace(fixed, "let state = " + values)
    tests.write_text(broken.replace("    (funds, reserved, pledges)\n}", "    state\n}"))
    line = broken[: broken.index("let state = (")].count("\n") + 1
    result = run_checker(package)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"economics_scenario_tests.move:{line}:5: a tuple is bound to the single local " in (
        result.stdout
    )


def _scenarios() -> list[dict]:
    found = []
    for path in sorted(SCENARIOS.glob("*.toml")):
        with path.open("rb") as f:
            found.extend(tomllib.load(f)["scenario"])
    return found


def _move_scenario_tests() -> dict[str, str | None]:
    """Scenario test name -> expected error `module::EName` (None for a passing test)."""
    names = ("scenario_tests.move", "economics_scenario_tests.move")
    source = "\n".join((PACKAGE / "tests" / name).read_text() for name in names)
    tests: dict[str, str | None] = {}
    pattern = re.compile(
        r"#\[test(?:, expected_failure\(abort_code = (\w+::\w+)\))?\]\s*\nfun (\w+)\(\)"
    )
    for error, name in pattern.findall(source):
        tests[name] = error or None
    return tests


def test_scenarios_mirror_move_tests() -> None:
    scenarios = _scenarios()
    names = [s["name"] for s in scenarios]
    assert len(names) == len(set(names)), "scenario names must be unique"
    move_tests = _move_scenario_tests()
    assert sorted(names) == sorted(move_tests)
    for scenario in scenarios:
        steps = scenario["step"]
        errors = [i for i, step in enumerate(steps) if "error" in step]
        assert errors in ([], [len(steps) - 1]), f"{scenario['name']}: error only on the last step"
        expected = steps[-1].get("error")
        assert move_tests[scenario["name"]] == expected, scenario["name"]


def test_error_names_exist_in_move_sources() -> None:
    declared = set()
    for path in (PACKAGE / "sources").glob("*.move"):
        for name in re.findall(r"#\[error\(code = \d+\)\]\s*const (\w+)", path.read_text()):
            declared.add(f"{path.stem}::{name}")
    for scenario in _scenarios():
        for step in scenario["step"]:
            if "error" in step:
                assert step["error"] in declared, step["error"]
