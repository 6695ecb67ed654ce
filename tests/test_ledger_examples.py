"""The payment-model examples are real: examples/payment_models.py runs as a program, its
functions return the amounts docs/escrow.md §13-16 predict, and the README's "Payment
models" snippets execute in order against an embedded ledger."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "payment_models.py"


def test_example_program_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["subscription", "earned=200", "expires=5", "refunded=300"]
    assert lines[1].split() == ["sponsored", "client_pays=60", "provider_pays=60"]
    assert lines[2].split() == ["tickets", "revenue=100", "refund=150"]
    assert lines[3].split() == ["retention", "deposit=22", "returned=22"]
    assert lines[-1] == "MIST conserved in every run"


def test_example_functions_return_the_rules_amounts() -> None:
    example = runpy.run_path(str(EXAMPLE))
    assert example["subscription"]() == {"earned": 200, "expires": 5, "refunded": 300}
    assert example["sponsored"]() == {"client_pays": 60, "provider_pays": 60}
    assert example["tickets"]() == {"revenue": 100, "refund": 150}
    assert example["retention"]() == {"deposit": 22, "returned": 22}


def test_readme_payment_model_snippets_run() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Payment models")
    end = readme.index("\n## ", start + 1)
    blocks = re.findall(r"```python\n(.*?)```", readme[start:end], re.S)
    assert len(blocks) == 5, "setup plus one snippet per model"
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # our own docs
    ledger = namespace["ledger"]
    audit = ledger.audit()  # type: ignore[attr-defined]
    assert audit["minted"] == 200_000
