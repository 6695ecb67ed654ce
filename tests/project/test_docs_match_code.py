"""Checks of README.md and docs/*.md against the code: documented defaults, dotted
names, the README's layout, the daemon's status columns and the CLI snippets.

(The Python snippets themselves are run by tests/project/test_doc_examples.py, as the docs
mark them: ``<!-- doc-test: ... -->`` before a block that continues another, binds a
fixed port, or cannot run here.)

The ``dtp`` command as the README has users run it: exit codes, one-line errors for
bad arguments (no traceback), and output on terminals that cannot show every character."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import ROOT

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
    from dtp.graph import Graph, connect, sync_blocking, sync_stream
    from dtp.hostid.ledger_carrier._bridge import LedgerCarrierOptions
    from dtp.hostid.ledger_carrier._carrier import LedgerCarrier
    from dtp.payments.metering import MeteringConfig
    from dtp.protocol.connection import ConnectionConfig

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


#: an install by a name that is not the distribution's: ``pip install dtp`` (on PyPI, an
#: unrelated project), an extra of ``dtp`` (``dtp[sui]``), a file named for it
#: (``dist/dtp-0.1.0-....whl``; the built files are ``dtp_sui-...``)
_NOT_THE_DISTRIBUTION = re.compile(
    r"pip3? install\s+(?:-\S+\s+)*['\"]?dtp(?![\w.-])|(?<![\w.-])dtp\[|dist/dtp-"
)
#: what users and developers read install lines in, besides the docs (CHANGES.md keeps
#: the history of the name, the old one included)
_READ_BESIDES_DOCS = ("dtp", "scripts", "examples", "bench", "fuzz", "web")
_TEXT = {".py", ".sh", ".md", ".toml", ".service", ".html", ".js", ".mjs", ".json"}


def test_every_install_line_names_the_distribution() -> None:
    """The docs, the package's docstrings and messages, the scripts and the examples
    install ``dtp-sui`` (``dtp`` is the import package's name and the command's)."""
    from dtp._distribution import NAME

    files = list(DOCS) + [
        path
        for folder in _READ_BESIDES_DOCS
        for path in sorted((ROOT / folder).rglob("*"))
        if path.suffix in _TEXT and "node_modules" not in path.parts and path.is_file()
    ]
    assert len(files) > 300
    wrong = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        for found in _NOT_THE_DISTRIBUTION.finditer(text):
            line = text.count("\n", 0, found.start()) + 1
            wrong.append(f"{path.relative_to(ROOT)}:{line}: {found.group()!r}")
    assert not wrong, wrong
    # (and the pattern does find the old lines: an unanchored regex passes any text)
    for old in ("pip install dtp\n", "pip install -U 'dtp[sui]'", "(`dtp[fast]`)", "dist/dtp-0"):
        assert _NOT_THE_DISTRIBUTION.search(old), old
    for new in (f"pip install {NAME}\n", f"pip install '{NAME}[sui]'", "pip install -e '.[all]'"):
        assert not _NOT_THE_DISTRIBUTION.search(new), new


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
    from dtp.daemon._status import _SERVICE_COLUMNS

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


# -- the README's ledger snippets on SuiLedger ----------------------------------------------

#: The lines of the README's ledger snippets that only the embedded ledger has, and what a
#: Sui user does instead: (pattern, replacement, why). Every other line runs as written,
#: on a SuiLedger (tests/support/sui_network.py: the stand-in, or a configured real node).
ON_SUI: list[tuple[str, str, str]] = [
    (
        r"^(\s*)(\w+) = LocalLedger\(.*$",
        r"\1\2 = open_ledger(_network.spec, package=_network.package_id)",
        "the ledger: a Sui node (the spec a user writes, e.g. localnet@http://127.0.0.1:9000)",
    ),
    (
        r"^(\s*)\w+\.faucet\((.+), (.+?)\)(\s*#.*)?$",
        r"\1_network.fund(\2, \3 + _GAS)",
        "test SUI: the network's faucet (plus what the snippets' transactions pay in gas)",
    ),
    (
        r"^(\s*)\w+\.set_clock\((.+?)\)(\s*#.*)?$",
        r"\1_network.node.set_clock(\2)",
        "a network's clock is its own: the stand-in's is moved instead",
    ),
    (
        r"^(\s*)\w+\.advance_clock\((.+?)\)(\s*#.*)?$",
        r"\1_network.advance_clock(\2)",
        "the same",
    ),
    (
        r"^(\s*)(\w+) = \w+\.audit\(\)(\s*#.*)?$",
        r"\1\2 = _network.node.audit()",
        "the MIST audit: the stand-in's, which counts the gas paid too",
    ),
    (
        r'^(\s*assert (\w+)\["minted"\] == .*\["broadcasts"\])',
        r'\1 + \2["gas"]',
        "on Sui the gas paid left the balances too",
    ),
]
#: What the prelude of a snippet run on Sui adds to each faucet amount: its gas (about
#: 5 000 000 MIST a transaction on the stand-in) for every transaction of the snippets.
_GAS = 10**9
_PRELUDE = f"""\
import atexit, contextlib
from dtp.ledger import open_ledger
from tests.support.sui_network import sui_network
_stack = contextlib.ExitStack()
atexit.register(_stack.close)
_network = _stack.enter_context(sui_network(clock_ms=0))
_GAS = {_GAS}
"""
_MOVES_CLOCK = re.compile(r"\.(set_clock|advance_clock|advance_epoch)\(")


def on_sui(code: str) -> str:
    """``code`` (README snippets) with each line of :data:`ON_SUI` replaced."""
    lines = []
    for line in code.splitlines():
        for pattern, replacement, _why in ON_SUI:
            line = re.sub(pattern, replacement, line)
        lines.append(line)
    return "\n".join(lines) + "\n"


def _readme_ledger_chains() -> list[str]:
    """The README blocks that end a chain of ledger snippets (each run with its chain)."""
    from tests.project.doc_blocks import BLOCKS, chain_of

    readme = {k: b for k, b in BLOCKS.items() if k.startswith("README.md#")}
    ledger = [k for k, b in readme.items() if "LocalLedger(" in chain_of(b)[0].code]
    ends = [
        k for k in ledger if not any(b.after and readme[k].name in b.after for b in readme.values())
    ]
    return sorted(ends)


def test_on_sui_rewrites_only_the_embedded_ledgers_lines() -> None:
    code = (
        'ledger = LocalLedger("localnet.sqlite")              # shared\n'
        "ledger.faucet(provider.sui_address, 10**9)           # test SUI\n"
        "ledger.set_clock(10_001)\n"
        "a = ledger.audit()\n"
        'assert a["minted"] == a["balances"] + a["escrows"] + a["broadcasts"]   # nothing lost\n'
        "cap = ledger.create_spending_cap(client, 1_000)\n"
    )
    assert on_sui(code).splitlines() == [
        "ledger = open_ledger(_network.spec, package=_network.package_id)",
        "_network.fund(provider.sui_address, 10**9 + _GAS)",
        "_network.node.set_clock(10_001)",
        "a = _network.node.audit()",
        'assert a["minted"] == a["balances"] + a["escrows"] + a["broadcasts"] + a["gas"]'
        "   # nothing lost",
        "cap = ledger.create_spending_cap(client, 1_000)",
    ]


@pytest.mark.parametrize("key", _readme_ledger_chains())
def test_readme_ledger_snippets_run_on_sui(key: str, tmp_path: Path) -> None:
    """Each chain of the README's ledger snippets, run as a user would on a Sui node: the
    embedded ledger's lines replaced (:data:`ON_SUI`), the rest as written. On a real
    node a chain stops before its first snippet that moves the ledger clock."""
    from tests.project.doc_blocks import (
        BLOCKS,
        chain_of,
        expected_output,
        held_for,
        in_order,
        port_free,
    )
    from tests.support.sui_network import real_node_configured

    chain = chain_of(BLOCKS[key])
    if real_node_configured():
        moves = [i for i, b in enumerate(chain) if _MOVES_CLOCK.search(b.code)]
        chain = chain[: moves[0]] if moves else chain
    code = on_sui("".join(b.code for b in chain))
    assert "LocalLedger(" not in code and ".faucet(" not in code
    script = tmp_path / "example.py"
    script.write_text(_PRELUDE + code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path / "data"), PYTHONPATH=str(ROOT))
    with held_for(chain):
        for b in chain:
            if b.port is not None and not port_free(b.port):
                pytest.skip(f"127.0.0.1:{b.port} is in use by another process")
        done = subprocess.run(
            [sys.executable, "-X", "dev", str(script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT * 2,
            check=False,
        )
    assert done.returncode == 0, f"{key} on Sui failed:\n{done.stdout}\n{done.stderr}"
    assert "Warning" not in done.stderr, done.stderr
    want = [line for b in chain for line in expected_output(b.code)]
    assert in_order(want, done.stdout.splitlines()), (want, done.stdout)


def _dtp(
    *argv: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = dict(os.environ)
    base["HOME"] = str(cwd)  # the default identity and ledger paths land in tmp_path
    base["XDG_DATA_HOME"] = str(cwd / "data")
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "dtp", *argv],
        cwd=cwd,
        env=base,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=60,
        check=False,
    )


def test_status_on_a_terminal_without_the_characters(tmp_path: Path) -> None:
    """A service name the output encoding cannot show is escaped, not a traceback."""
    state = tmp_path / "state"
    state.mkdir()
    status = {"pid": 1, "stopped": True, "services": {"café": {"port": 80, "connections": 3}}}
    (state / "status.json").write_text(json.dumps(status), encoding="utf-8")
    done = _dtp(
        "status", "--state-dir", str(state), cwd=tmp_path, env={"PYTHONIOENCODING": "ascii"}
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "caf\\xe9" in done.stdout
    assert "daemon: stopped" in done.stdout


@pytest.mark.parametrize(
    ("argv", "code", "says"),
    [
        (("bogus",), 2, "invalid choice"),
        (("demo", "--bogus"), 2, "unrecognized arguments"),
        (("demo", "--browser-wait", "-1"), 2, "expected a duration from 0"),
        (("demo", "--browser-wait", "nan"), 2, "expected a duration from 0"),
        (("localnet", "faucet", "--amount", "abc"), 2, "expected an amount in MIST"),
        (("host", "show", "zz"), 1, "No ledger at"),
        (("host", "create"), 1, "no identity file"),
        (("status", "--config", "missing.toml"), 2, "cannot read the config file"),
    ],
)
def test_bad_arguments_are_one_typed_line(
    argv: tuple[str, ...], code: int, says: str, tmp_path: Path
) -> None:
    """Bad input: the documented exit status and a short message naming the problem."""
    done = _dtp(*argv, cwd=tmp_path)
    assert done.returncode == code, (done.returncode, done.stderr)
    assert says in done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if not line.startswith(("usage:", " "))]
    assert len(errors) == 1, done.stderr
    assert done.stdout == ""


def _readme_daemon_configs() -> tuple[str, str]:
    """The README's side-by-side provider.toml / client.toml, as two files' text."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("```toml\n# provider.toml") + len("```toml\n")
    lines = text[start : text.index("```", start)].splitlines()
    column = lines[0].index("# client.toml")
    left = [line[:column].rstrip() for line in lines[1:]]
    right = [line[column:].strip().removeprefix("#").removeprefix(" ") for line in lines[1:]]
    return "\n".join(left) + "\n", "\n".join(right) + "\n"


class _Daemon:
    """``dtp daemon --config NAME`` in tmp_path; its ready line, parsed."""

    def __init__(self, tmp_path: Path, config: str) -> None:
        env = dict(os.environ, HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path / "data"))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dtp", "daemon", "--config", config],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        # the daemon prints the line once it listens, or exits (EOF) on an error
        self.ready = json.loads(self.proc.stdout.readline() or "null")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            assert self.proc.stdout is not None
            self.proc.stdout.close()


def test_readme_daemon_example_runs(tmp_path: Path) -> None:
    """The README's two daemon configs work as shown: ready lines, a tunnel, `dtp status`.

    Only the addresses change: the backends are an echo server of this test, the
    forwarder listens on a free port, and the target names the host just created.
    """
    import socketserver
    import threading

    class Echo(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while data := self.request.recv(65536):
                self.request.sendall(data)

    provider, client = _readme_daemon_configs()
    assert 'backends = ["127.0.0.1:8080", "127.0.0.1:8081"]' in provider
    assert 'listen = "127.0.0.1:18545"' in client and "0x<host id>" in client
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo) as backend:
        backend.daemon_threads = True
        thread = threading.Thread(target=backend.serve_forever)
        thread.start()
        daemons: list[_Daemon] = []
        try:
            echo = f'"127.0.0.1:{backend.server_address[1]}"'
            provider = provider.replace('"127.0.0.1:8080", "127.0.0.1:8081"', echo)
            (tmp_path / "provider.toml").write_text(provider, encoding="utf-8")
            for key in ("provider.key", "client.key"):
                assert _dtp("keys", "new", "--identity", key, cwd=tmp_path).returncode == 0
            daemons.append(_Daemon(tmp_path, "provider.toml"))
            ready = daemons[0].ready
            assert ready and ready["event"] == "ready" and ready["host_id"].startswith("0x")
            assert set(ready) == _documented_ready_keys()
            client = client.replace("127.0.0.1:18545", "127.0.0.1:0")
            client = client.replace("0x<host id>", ready["host_id"])
            (tmp_path / "client.toml").write_text(client, encoding="utf-8")
            daemons.append(_Daemon(tmp_path, "client.toml"))
            forwarded = daemons[1].ready["forwards"]["api"]
            host, port = forwarded.rsplit(":", 1)
            with socket_connection(host, int(port)) as conn:
                conn.sendall(b"through the README's daemons")
                got = b""
                while len(got) < 28 and (chunk := conn.recv(100)):
                    got += chunk
            assert got == b"through the README's daemons"
            status = _dtp("status", "--config", "provider.toml", cwd=tmp_path)
            assert status.returncode == 0, status.stderr
            assert "daemon: running" in status.stdout
            assert any(line.split()[:1] == ["api"] for line in status.stdout.splitlines())
        finally:
            codes = [d.stop() for d in reversed(daemons)]
            backend.shutdown()
            thread.join()
        assert codes == [0, 0], codes  # SIGTERM: drain and stop, status 0 (docs/daemon.md)


def _documented_ready_keys() -> set[str]:
    """The keys docs/daemon.md gives the ready line."""
    text = " ".join((ROOT / "docs" / "daemon.md").read_text(encoding="utf-8").split())
    m = re.search(r'`(\{"event": "ready".*?\})`', text)
    assert m, "docs/daemon.md no longer shows the ready line"
    return set(re.findall(r'"(\w+)":', m.group(1)))


def socket_connection(host: str, port: int) -> socket.socket:
    """A TCP connection to the forwarder, with a timeout so a hang fails the test."""
    return socket.create_connection((host, port), timeout=10)
