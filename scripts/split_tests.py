"""Split the test files into parts of about equal running time, for scripts/test.sh.

    python scripts/split_tests.py PARTS           one line per part: its files
    python scripts/split_tests.py PARTS --core    the same without the files listed in
                                                  tests/core_independent.txt (the
                                                  pure-Python core's run leaves them out)
    python scripts/split_tests.py --record XML... write tests/durations.txt from the
                                                  JUnit reports of a run

Each file weighs what it took in the last recorded run (``tests/durations.txt``: seconds
and path, both backends added up); a file not recorded there (new, or moved) weighs the
median, so it still runs. The heaviest go first, each to the lightest part so far
(longest-processing-time first): the parts end close together, where taking every Nth
file by name left one part a third lighter than the others.
"""

from __future__ import annotations

import statistics
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DURATIONS = ROOT / "tests" / "durations.txt"
CORE_INDEPENDENT = ROOT / "tests" / "core_independent.txt"


def test_files() -> list[str]:
    """Every test file under tests/, as a path relative to the checkout, by name."""
    return sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "tests").rglob("test_*.py")
        if "__pycache__" not in path.parts
    )


def recorded() -> dict[str, float]:
    """The seconds each file took in the recorded run (empty without the file)."""
    weights: dict[str, float] = {}
    if DURATIONS.exists():
        for line in DURATIONS.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                seconds, path = line.split(maxsplit=1)
                weights[path] = float(seconds)
    return weights


def core_independent() -> set[str]:
    """The files tests/core_independent.txt lists (they never reach the core)."""
    return {
        name
        for line in CORE_INDEPENDENT.read_text().splitlines()
        if (name := line.split("#", 1)[0].strip())
    }


def split(files: list[str], parts: int, weights: dict[str, float]) -> list[list[str]]:
    """``files`` in ``parts`` lists of about equal total weight (each list by name)."""
    default = statistics.median(weights.values()) if weights else 1.0
    loads = [0.0] * parts
    chunks: list[list[str]] = [[] for _ in range(parts)]
    for path in sorted(files, key=lambda p: (-weights.get(p, default), p)):
        lightest = loads.index(min(loads))
        chunks[lightest].append(path)
        loads[lightest] += weights.get(path, default)
    return [sorted(chunk) for chunk in chunks]


def record(reports: list[str]) -> None:
    """Add up each file's test times over ``reports`` (pytest ``--junitxml``) into
    tests/durations.txt."""
    seconds: dict[str, float] = defaultdict(float)
    for report in reports:
        for case in ET.parse(report).iter("testcase"):
            # classname is the dotted module (tests.daemon.test_x[.Class]); file is absent
            # by default, so the module's path is rebuilt from it
            dotted = case.get("classname", "")
            parts = dotted.split(".")
            while parts and not (ROOT / Path(*parts)).with_suffix(".py").exists():
                parts.pop()
            if parts:
                path = str(Path(*parts).with_suffix(".py"))
                seconds[path] += float(case.get("time", "0") or 0)
    lines = [f"{seconds[path]:.2f} {path}" for path in sorted(seconds)]
    DURATIONS.write_text(
        "# seconds per test file in a whole run (both backends), for scripts/split_tests.py;\n"
        "# refresh: python scripts/split_tests.py --record build/junit-*.xml\n"
        + "\n".join(lines)
        + "\n"
    )


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "--record":
        record(argv[1:])
        return 0
    core_only = argv[1:] == ["--core"]
    if len(argv) not in (1, 2) or (len(argv) == 2 and not core_only):
        print(__doc__, file=sys.stderr)
        return 2
    if not argv[0].isdigit() or int(argv[0]) < 1:
        print(__doc__, file=sys.stderr)
        return 2
    files = test_files()
    if core_only:
        skipped = core_independent()
        files = [path for path in files if path not in skipped]
    for chunk in split(files, int(argv[0]), recorded()):
        print(" ".join(chunk))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
