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
import dataclasses
import importlib
import inspect
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# -- prose claims ------------------------------------------------------------------------


def _doc_text(name: str) -> str:
    """A doc's text with runs of whitespace made one space (claims span line breaks)."""
    return " ".join((ROOT / name).read_text(encoding="utf-8").split())


def _default(func: Any, name: str) -> Any:
    return inspect.signature(func).parameters[name].default


def _claims() -> list[tuple[str, str, Any, Any]]:
    """(doc, a phrase it contains, what the code has, what the phrase says)."""
    import dtp.aio
    import dtp.socket
    from dtp.carriers.ledger import LedgerCarrier
    from dtp.carriers.ledger_bridge import LedgerCarrierOptions
    from dtp.connection import ConnectionConfig
    from dtp.graph import Graph, connect, sync_blocking, sync_stream
    from dtp.metering import MeteringConfig

    opts = LedgerCarrierOptions()
    config_defaults = {f.name: f.default for f in dataclasses.fields(ConnectionConfig)}
    metering = MeteringConfig()
    servers = (dtp.socket.create_server, dtp.aio.start_server)
    return [
        (
            "README.md",
            "A blocking server runs at most `max_handshakes` (32) handshakes at once",
            # the asyncio server has no such overall cap, only the per-address ones
            (
                _default(dtp.socket.create_server, "max_handshakes"),
                "max_handshakes" in inspect.signature(dtp.aio.start_server).parameters,
            ),
            (32, False),
        ),
        (
            "README.md",
            "either kind at most `max_handshakes_per_address` (8) from one client address",
            {_default(f, "max_handshakes_per_address") for f in servers},
            {8},
        ),
        (
            "README.md",
            "a line of `max_waiting_per_address` (64)",
            {_default(f, "max_waiting_per_address") for f in servers},
            {64},
        ),
        (
            "docs/protocol.md",
            "`sync_every` (16) new RECORD/FRAGMENT payloads, or `sync_interval` (1 s)",
            (_default(LedgerCarrier, "sync_every"), _default(LedgerCarrier, "sync_interval")),
            (16, 1.0),
        ),
        ("docs/protocol.md", "`gap_timeout` (2 s)", _default(LedgerCarrier, "gap_timeout"), 2.0),
        (
            "docs/protocol.md",
            "`LedgerCarrierOptions`: 64 payloads, 0.25 s and 0.5 s",
            (opts.sync_every, opts.sync_interval, opts.gap_timeout),
            (64, 0.25, 0.5),
        ),
        (
            "docs/ledger-carrier.md",
            "(`inner_count`, 4), SYNC cadence (`sync_every`, 64 payloads; `sync_interval`, "
            "0.25 s), gap timeout (`gap_timeout`, 0.5 s)",
            (opts.inner_count, opts.sync_every, opts.sync_interval, opts.gap_timeout),
            (4, 64, 0.25, 0.5),
        ),
        (
            "docs/ledger-carrier.md",
            "polls every 1 ms right after traffic, backing off to 20 ms",
            (opts.poll_min, opts.poll_max),
            (0.001, 0.02),
        ),
        (
            "docs/escrow.md",
            "`every_bytes` new bytes (default 64 MiB",
            metering.every_bytes,
            64 << 20,
        ),
        (
            "docs/escrow.md",
            "`every_requests` new streams (0 by default: off), or `every_ms` (1000)",
            (metering.every_requests, metering.every_ms),
            (0, 1000),
        ),
        (
            "docs/graph.md",
            "(a one-shot catch-up; `connect`'s default); otherwise (`sync_blocking`'s and "
            "`sync_stream`'s default)",
            tuple(_default(f, "until_synced") for f in (connect, sync_blocking, sync_stream)),
            (True, False, False),
        ),
        (
            "docs/graph.md",
            "`max_drift_ms`, 1000 ms by default",
            _default(Graph, "max_drift_ms"),
            1000.0,
        ),
        (
            "docs/udp.md",
            "`ConnectionConfig.max_datagram_size` bytes (16000 by default",
            config_defaults["max_datagram_size"],
            16000,
        ),
        (
            "docs/protocol.md",
            "(`ConnectionConfig.handshake_timeout`, 10 s)",
            config_defaults["handshake_timeout"],
            10.0,
        ),
    ]


def test_documented_defaults_are_the_code_defaults() -> None:
    """Each phrase is still in its doc, and what it says is what the code does."""
    for doc, phrase, actual, stated in _claims():
        assert phrase in _doc_text(doc), f"{doc} no longer says {phrase!r}: update this test"
        assert actual == stated, f"{doc}: {phrase!r}, but the code has {actual!r}"


def test_dotted_names_in_the_docs_resolve() -> None:
    """Every `dtp.x.y` a doc names imports or is an attribute of what does."""
    missing = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for name in sorted(set(re.findall(r"`(dtp(?:\.[A-Za-z_]\w*)+)", text))):
            if name == "dtp.toml":  # the daemon's config file, not a module
                continue
            parts = name.split(".")
            for i in range(len(parts), 0, -1):
                try:
                    obj: Any = importlib.import_module(".".join(parts[:i]))
                except ImportError:
                    continue
                for attr in parts[i:]:
                    obj = getattr(obj, attr, None)
                break
            if obj is None:
                missing.append(f"{path.name}: {name}")
    assert not missing, missing


def test_readme_layout_lists_the_docs() -> None:
    """The README's Layout block names every page of docs/ and every dtp/ subpackage."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = text[text.index("## Layout") :]
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert page.name in layout, f"README Layout does not list docs/{page.name}"
    for package in sorted((ROOT / "dtp").iterdir()):
        if (package / "__init__.py").exists() and not package.name.startswith("_"):
            assert f"{package.name}/" in layout, f"README Layout does not list dtp/{package.name}/"


def test_daemon_status_columns_are_documented() -> None:
    """docs/daemon.md's table explains every column `dtp status` prints for a service."""
    from dtp.daemon.status import _SERVICE_COLUMNS

    text = (ROOT / "docs" / "daemon.md").read_text(encoding="utf-8")
    table = text[text.index("| service column | meaning |") :]
    table = table[: table.index("\n\n")]
    documented = set()
    for row in table.splitlines()[2:]:
        cell = row.split("|")[1].strip()
        first, *others = (part.strip() for part in cell.split("/"))
        documented.add(first)
        # "tunnels / active", "bytes in / out": the second part shares the first's noun
        documented.update(f"{first.split()[0]} {o}" if " " in first else o for o in others)
    shown = {header for header, _key in _SERVICE_COLUMNS} - {"service", "port"}
    assert shown <= documented, f"undocumented columns: {sorted(shown - documented)}"


def _cli_commands() -> list[tuple[str, list[str]]]:
    """The `dtp ...` commands of the docs' ```sh blocks: (where, argv after "dtp")."""
    found = []
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        inside = False
        for number, line in enumerate(lines, 1):
            if line.startswith("```"):
                inside = line.strip() == "```sh"
                continue
            if not inside:
                continue
            for part in line.split("#", 1)[0].split("&&"):
                words = part.split()
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    words = words[1:]  # DTP_PASSPHRASE=... dtp daemon
                if words and words[0] == "dtp":
                    found.append((f"{path.name}:{number}", words[1:]))
    return found


def test_cli_snippets_name_real_commands_and_options() -> None:
    """Each documented `dtp` command exists and takes the options the docs give it."""
    commands = _cli_commands()
    assert len(commands) >= 10, commands
    helps: dict[tuple[str, ...], str] = {}
    for where, argv in commands:
        sub = tuple(w for w in argv[:2] if re.fullmatch(r"[a-z]+", w))
        if sub not in helps:
            done = subprocess.run(
                [sys.executable, "-m", "dtp", *sub, "--help"],
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=False,
            )
            assert done.returncode == 0, f"{where}: dtp {' '.join(sub)}: {done.stderr}"
            helps[sub] = done.stdout
        for option in (w.split("=")[0] for w in argv if w.startswith("--")):
            assert option in helps[sub], f"{where}: dtp {' '.join(sub)} takes no {option}"
