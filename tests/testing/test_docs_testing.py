"""docs/testing.md's examples run as written, from a fresh project where dtp is installed
(tests/testing/installed.py): each block marked ``<!-- testing-example: NAME -->`` is
written to NAME there and run -- the test files with pytest, the script with python and
its printed output checked. The two worked examples pass; the service that bills twice
on retry is caught within hypothesis' default budget under several seeds, and its
failure replays from its seed (the one the doc shows). tests/project/test_wheel.py runs
them again from the wheel, and there compares the broken service's whole report with the
doc's, explain phase and all; here its runs skip that phase (doc_examples.SKIP_EXPLAIN:
nine tenths of such a run), which leaves the examples tried, the failure found, its
shrinking and its replay as they are. Every run here is without hypothesis' per-example
deadline, a wall-clock bound a loaded machine breaks (doc_examples.NO_DEADLINE)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.testing.doc_examples import (
    BROKEN,
    DOC,
    NO_DEADLINE,
    PASSING,
    SCRIPT,
    SKIP_EXPLAIN,
    billing_failed,
    examples,
    failing_call,
    falsified,
    shown_failure,
    write_examples,
)
from tests.testing.installed import make_site, run_in_project


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a project holding every example, dtp as installed)."""
    site = make_site(tmp_path_factory.mktemp("installed"))
    where = tmp_path_factory.mktemp("project")
    write_examples(where)
    (where / "skip_explain.py").write_text(SKIP_EXPLAIN, encoding="utf-8")
    (where / "no_deadline.py").write_text(NO_DEADLINE, encoding="utf-8")
    return where, site


def _pytest(project: tuple[Path, Path], *args: str) -> tuple[int, str]:
    where, site = project
    shutil.rmtree(where / ".hypothesis", ignore_errors=True)  # (no example database)
    done = run_in_project(where, site, "-m", "pytest", "-p", "no:cacheprovider", *args)
    return done.returncode, done.stdout + done.stderr


def test_every_block_of_the_doc_is_an_example() -> None:
    """No python block of docs/testing.md escapes this test."""
    text = DOC.read_text(encoding="utf-8")
    assert text.count("```python") == len(examples()) >= 8
    assert set(examples()) == {*PASSING, BROKEN, SCRIPT}


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", PASSING)
def test_the_examples_pass(project: tuple[Path, Path], name: str) -> None:
    code, output = _pytest(project, "-q", "-p", "no_deadline", name)
    assert code == 0, output
    assert " passed" in output and "failed" not in output


def test_the_network_script_prints_what_it_says(project: tuple[Path, Path]) -> None:
    where, site = project
    done = run_in_project(where, site, SCRIPT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["b'hello'"]


@pytest.mark.timeout(600)
def test_the_eager_service_is_caught_and_replays_from_its_seed(
    project: tuple[Path, Path],
) -> None:
    failures = {}
    for seed in ("1", "2"):
        code, output = _pytest(project, "-q", "-p", "skip_explain", BROKEN, "--dtp-seed", seed)
        assert code == 1, output[-3000:]
        # the billing assertion failed (not an error of the run), hypothesis' default
        # settings (100 examples: the profile changes the phases only) having found it
        assert billing_failed(output), output[-3000:]
        failures[seed] = falsified(output)
    code, again = _pytest(project, "-q", "-p", "skip_explain", BROKEN, "--dtp-seed", "1")
    assert code == 1
    assert falsified(again) == failures["1"]  # the same example, found again
    # the one the doc shows (there with the explain phase's comments)
    assert failing_call(failures["1"]) == failing_call(shown_failure())
