"""docs/coordination.md's example runs and prints what its comments say."""

from __future__ import annotations

import contextlib
import io
import re

from tests.support.paths import ROOT

DOC = ROOT / "docs" / "coordination.md"


def test_the_example_prints_what_it_says() -> None:
    (block,) = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    expected = [
        line.split("#", 1)[1].split(":")[0].strip()
        for line in block.splitlines()
        if line.lstrip().startswith("print(")
    ]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, str(DOC), "exec"), {})
    assert out.getvalue().splitlines() == expected
