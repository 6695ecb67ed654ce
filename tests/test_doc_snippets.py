"""The Python snippets of README.md and docs/*.md run as written.

Users copy these first, so each ```python block is extracted and run in a fresh
interpreter (cwd = ``tmp_path``, so files such as ``localnet.sqlite`` land there) with
a timeout. The rule for what runs:

* A snippet runs on its own unless it is listed in :data:`CONTINUES` (the text says it
  continues earlier snippets: they are run first, in the same process, as a user typing
  them in order would) or in :data:`SKIP` (it needs something outside the process, or
  is a fragment with placeholders; each entry gives the reason).
* A new snippet is therefore run by default; an entry of either table that no longer
  matches its snippet (the first line changed, the snippet moved) fails the test, so
  the tables cannot drift silently.

Output comments are checked: ``print(x)  # b'HELLO'`` (or ``print(x)`` followed by a
line holding only ``# expected``) must print that, in order, among the snippet's output
lines (compared as Python literals when both sides parse as one, so dict order within
a printed mapping does not matter).
"""

from __future__ import annotations

import ast
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TIMEOUT = 60.0


@dataclass(frozen=True)
class Snippet:
    """One ```python block: its key (``file#n``, n counting python blocks from 1)."""

    key: str
    line: int
    code: str

    @property
    def first_line(self) -> str:
        return next(line for line in self.code.splitlines() if line.strip())


def extract(path: Path) -> list[Snippet]:
    """The ```python blocks of ``path``, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    name = path.relative_to(ROOT).as_posix()
    found: list[Snippet] = []
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        if fence.group(1) == "python":
            key = f"{name}#{len(found) + 1}"
            found.append(Snippet(key, i + 2, "\n".join(lines[i + 1 : end]) + "\n"))
        i = end + 1
    return found


SNIPPETS = {s.key: s for path in DOCS for s in extract(path)}

#: Snippets that continue earlier ones: key -> (its first line, the keys run before it).
CONTINUES: dict[str, tuple[str, tuple[str, ...]]] = {
    # "Connecting by host ID" and "A paid service" use the ledger snippet's names.
    "README.md#3": ("import dtp.socket", ("README.md#2",)),
    "README.md#4": ("def echo(sock):", ("README.md#2", "README.md#3")),
    # "The snippets below run in order against an embedded ledger".
    "README.md#6": ("offer = ledger.create_subscription_offer(", ("README.md#5",)),
    "README.md#7": ("pool = ledger.create_sponsor_pool(", ("README.md#5", "README.md#6")),
    "README.md#8": (
        "sale = ledger.create_ticket_sale(",
        ("README.md#5", "README.md#6", "README.md#7"),
    ),
    "README.md#9": (
        "terms = ledger.create_retention_terms(",
        ("README.md#5", "README.md#6", "README.md#7", "README.md#8"),
    ),
}

#: Snippets not run: key -> (its first line, why).
SKIP: dict[str, tuple[str, str]] = {
    "docs/ledger-carrier.md#1": (
        "sock = dtp.socket.create_connection(",
        "fragment: a placeholder host ID (0x<host id>), names from elsewhere and a "
        "top-level await; tests/test_ledger_carrier_sockets.py runs the real thing",
    ),
    "docs/ledger-carrier.md#2": (
        "server = dtp.socket.create_server(None,",
        "fragment: three alternative servers on one port, names from elsewhere and a "
        "top-level await; tests/test_ledger_carrier_sockets.py runs the real thing",
    ),
    "docs/sui.md#1": (
        "from dtp.chain.sui import SuiLedger, SuiConfig",
        "needs a Sui full node (DTP_SUI_RPC, DTP_SUI_PACKAGE): the live tests cover it",
    ),
    "docs/udp.md#1": (
        "import functools",
        "fragment: the host, its paid UDP service and a relay are set up elsewhere "
        "(tests/test_udp.py runs the whole paid flow)",
    ),
}

#: Snippets that bind a fixed port on 127.0.0.1 (as the text has the user do): key -> port.
#: They are skipped, saying so, when another process holds that port.
FIXED_PORTS: dict[str, int] = {"README.md#3": 7000, "README.md#4": 7000}

_PRINT_COMMENT = re.compile(r"^\s*print\(.*\)\s+#\s?(.*?)\s*$")
_BARE_PRINT = re.compile(r"^\s*print\(.*\)\s*$")
_COMMENT_LINE = re.compile(r"^\s*#\s?(.*?)\s*$")


def expected_output(code: str) -> list[str]:
    """What the snippet's output comments promise, in order."""
    lines = code.splitlines()
    expected: list[str] = []
    for i, line in enumerate(lines):
        m = _PRINT_COMMENT.match(line)
        if m:
            expected.append(m.group(1))
        elif _BARE_PRINT.match(line) and i + 1 < len(lines):
            nxt = _COMMENT_LINE.match(lines[i + 1])
            if nxt:
                expected.append(nxt.group(1))
    return expected


def _same(expected: str, actual: str) -> bool:
    if expected == actual:
        return True
    try:
        return bool(ast.literal_eval(expected) == ast.literal_eval(actual))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _in_order(expected: list[str], output: list[str]) -> bool:
    it = iter(output)
    return all(any(_same(want, got) for got in it) for want in expected)


def test_tables_match_the_docs() -> None:
    """Every allow-list entry names an existing snippet with the first line it expects."""
    assert SNIPPETS, "no python snippets found"
    for table in (CONTINUES, SKIP):
        for key, (first, *_rest) in table.items():
            assert key in SNIPPETS, f"{key}: no such snippet any more"
            assert SNIPPETS[key].first_line.startswith(first), (
                f"{key} (line {SNIPPETS[key].line}) now starts with "
                f"{SNIPPETS[key].first_line!r}, expected {first!r}: update the table"
            )
    assert not set(CONTINUES) & set(SKIP)
    assert set(FIXED_PORTS) <= set(SNIPPETS)
    for key, (_first, before) in CONTINUES.items():
        assert all(b in SNIPPETS and b not in SKIP for b in before), key


def test_expected_output_parsing() -> None:
    code = "with x:\n    print(s.recv(1024))   # b'HELLO'\nprint(a)\n# {'a': 1}\nprint(b)\n"
    assert expected_output(code) == ["b'HELLO'", "{'a': 1}"]
    assert _in_order(["b'HELLO'", "{'a': 1, 'b': 2}"], ["x", "b'HELLO'", "{'b': 2, 'a': 1}"])
    assert not _in_order(["2", "1"], ["1", "2"])


@pytest.mark.parametrize("key", sorted(SNIPPETS))
def test_snippet_runs(key: str, tmp_path: Path) -> None:
    if key in SKIP:
        pytest.skip(SKIP[key][1])
    if key in FIXED_PORTS and not _port_free(FIXED_PORTS[key]):
        pytest.skip(f"127.0.0.1:{FIXED_PORTS[key]} is in use by another process")
    snippet = SNIPPETS[key]
    before = CONTINUES.get(key, ("", ()))[1]
    code = "".join(SNIPPETS[k].code for k in (*before, key))
    script = tmp_path / "snippet.py"
    script.write_text(code, encoding="utf-8")
    env = dict(os.environ)
    # A user's shell: no test-suite flags leak in; the identity paths stay in tmp_path.
    env["HOME"] = str(tmp_path)
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    done = subprocess.run(
        [sys.executable, "-X", "dev", str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    where = f"{key} (line {snippet.line})"
    assert done.returncode == 0, f"{where} failed:\n{done.stdout}\n{done.stderr}"
    assert "ResourceWarning" not in done.stderr, f"{where}:\n{done.stderr}"
    want = expected_output(snippet.code)
    got = done.stdout.splitlines()
    assert _in_order(want, got), f"{where}: expected {want} in order, printed:\n{done.stdout}"
