"""Checks of README.md and docs/*.md against the code: documented defaults, dotted
names, the README's layout, the daemon's status columns and the CLI snippets.

(The Python snippets themselves are run by tests/test_s14_docs_examples.py, as the docs
mark them: ``<!-- doc-test: ... -->`` before a block that continues another, binds a
fixed port, or cannot run here.)
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TIMEOUT = 60.0


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
            "`max_handshakes`: handshakes in progress on the server | 32 |",
            {_default(f, "max_handshakes") for f in servers},
            {32},
        ),
        (
            "README.md",
            "`max_handshakes_per_address` (IPv6: per /64; None: no cap) | 8 |",
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
            "README.md",
            "`first_message_timeout`: a new connection's time to send its first handshake "
            "record | 3 s |",
            {_default(f, "first_message_timeout") for f in servers},
            {3.0},
        ),
        (
            "README.md",
            "`backlog`: connections waiting for their first record, and each line below | 128 |",
            {_default(f, "backlog") for f in servers},
            {128},
        ),
        (
            "README.md",
            "`max_pending` (blocking `DTPServer`: accepted, not yet taken by `accept()`) | 128 |",
            _default(dtp.socket.DTPServer, "max_pending"),
            128,
        ),
        (
            "docs/protocol.md",
            "`first_message_timeout` (3 s)",
            {_default(f, "first_message_timeout") for f in servers},
            {3.0},
        ),
        (
            "docs/protocol.md",
            "`max_handshakes_per_address + max_waiting_per_address` (72; 8 at least)",
            {
                _default(f, "max_handshakes_per_address") + _default(f, "max_waiting_per_address")
                for f in servers
            },
            {72},
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
            "`every_bytes` new bytes (default 128 MiB",
            metering.every_bytes,
            128 << 20,
        ),
        (
            "docs/escrow.md",
            "`every_requests` new streams (0 by default: none of its own;",
            metering.every_requests,
            0,
        ),
        (
            "docs/escrow.md",
            "or `every_ms` (1000) after the last receipt",
            metering.every_ms,
            1000,
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
