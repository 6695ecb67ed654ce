"""docs/testing.md's examples as files a project holds, and what reading their runs
takes: shared by tests/testing/test_docs_testing.py (dtp as a checkout installs it) and
tests/project/test_wheel.py (dtp from its wheel, in a fresh virtualenv)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.paths import ROOT

DOC = ROOT / "docs" / "testing.md"
# (a doc-test marker for tests/project/test_doc_examples.py may stand between)
_EXAMPLE = re.compile(
    r"<!-- testing-example: (\S+) -->\n(?:<!-- doc-test:.*-->\n)?```python\n(.*?)```", re.S
)

#: the fixtures the plugin gives (dtp.testing.plugin), as `pytest --fixtures` lists them
FIXTURES = (
    "dtp_seed",
    "dtp_identity",
    "dtp_ledger",
    "dtp_funded",
    "dtp_world",
    "dtp_pair",
    "dtp_aio_pair",
    "dtp_paid_service",
    "dtp_daemon_pair",
    "dtp_network",
    "dtp_sui_node",
)

#: the examples run by pytest and pass (the two worked ones last); hello_network.py is
#: a script, test_eager_service.py the one that must fail
PASSING = (
    "test_fixtures.py",
    "test_ledger_history.py",
    "test_my_service_machine.py",
    "test_on_sui.py",
    "test_blocking_echo.py",
    "test_paid_jsonrpc.py",
    "test_notes_converge.py",
)
BROKEN = "test_eager_service.py"
SCRIPT = "hello_network.py"


def examples() -> dict[str, str]:
    """NAME -> code of each block marked ``<!-- testing-example: NAME -->``."""
    text = DOC.read_text(encoding="utf-8")
    found = dict(_EXAMPLE.findall(text))
    assert len(found) == text.count("<!-- testing-example:")
    return found


def write_examples(where: Path) -> None:
    """Every example, as the file it names, in ``where``."""
    for name, code in examples().items():
        (where / name).write_text(code, encoding="utf-8")


def falsified(output: str) -> str:
    """The failing example hypothesis reports (``Failing test case: ...(...)``, in
    earlier versions ``Falsifying example``), up to its closing parenthesis."""
    found = re.search(
        r"(?:Failing test case|Falsifying example):.*?\n(?:E?\s+.*\n)*?E?\s*\)\n", output
    )
    assert found, output[-3000:]
    return found.group(0)


def failing_call(falsified_text: str) -> str:
    """The failing example of :func:`falsified`'s text, as one line of code: without the
    comments hypothesis' explain phase adds (``# or any other generated value``), its
    line breaks and its trailing commas -- so that a run without that phase reads as the
    same example as one with it."""
    lines = [re.sub(r"^E?\s*", "", line) for line in falsified_text.splitlines()]
    code = "".join(re.sub(r"\s*#.*$", "", line) for line in lines)
    return re.sub(r",\)", ")", re.sub(r"\s+", "", code))


#: A pytest plugin (``-p skip_explain``) that loads a hypothesis profile without the
#: explain phase. That phase runs after shrinking and reruns the shrunk failure many
#: times under a line tracer (sys.settrace before Python 3.12) to comment which of its
#: parts did not matter: about nine tenths of a failing seeded run of the eager service.
#: Which example fails, how it shrinks and its replay are the phases before it.
#: Without the per-example deadline too (see NO_DEADLINE).
SKIP_EXPLAIN = (
    "from hypothesis import Phase, settings\n\n"
    "PHASES = [phase for phase in Phase if phase is not Phase.explain]\n"
    'settings.register_profile("skip-explain", phases=PHASES, deadline=None)\n'
    'settings.load_profile("skip-explain")\n'
)

#: A pytest plugin (``-p no_deadline``) that loads a hypothesis profile without the
#: per-example deadline (200 ms by default), for the passing examples' runs: on a loaded
#: machine a process waits that long for a CPU now and then, and hypothesis fails the
#: example that waited (test_ledger_history.py: "took 305.67ms", then 1.29 ms when
#: retried). The examples drawn, and how many, are the same.
NO_DEADLINE = (
    "from hypothesis import settings\n\n"
    'settings.register_profile("no-deadline", deadline=None)\n'
    'settings.load_profile("no-deadline")\n'
)


def billing_failed(output: str) -> bool:
    """Whether the broken service's billing assertion is what failed (not an error of
    the run)."""
    return re.search(r"AssertionError: \d+ MIST for \d+ answers", output) is not None


def shown_failure() -> str:
    """The failing example docs/testing.md shows for ``--dtp-seed 1`` (its ``text``
    block after the broken example), as :func:`falsified` reads it."""
    text = DOC.read_text(encoding="utf-8")
    after = text[text.index("<!-- testing-example: " + BROKEN) :]
    block = re.search(r"```text\n(.*?)```", after, re.S)
    assert block is not None
    return falsified(block.group(1))
