"""docs/coordination.md's examples run, in order as a reader would type them, and print
what their comments say."""

from __future__ import annotations

import contextlib
import io
import re

import pytest

from tests.support.paths import ROOT

DOC = ROOT / "docs" / "coordination.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


def printed(block: str) -> list[str]:
    """What the block's print lines say they print: the comment, up to a colon."""
    return [
        line.split("#", 1)[1].split(":")[0].strip()
        for line in block.splitlines()
        if line.lstrip().startswith("print(")
    ]


@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_the_example_prints_what_it_says(number: int) -> None:
    block = BLOCKS[number]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, str(DOC), "exec"), {})
    assert out.getvalue().splitlines() == printed(block)


def test_the_doc_has_its_examples() -> None:
    assert len(BLOCKS) == 2  # the servers' side, and the ledger methods
