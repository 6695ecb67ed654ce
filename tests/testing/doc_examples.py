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
