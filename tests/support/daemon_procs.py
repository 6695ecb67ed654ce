"""Real processes for the services daemon tests: backends (tests/support/daemon_backends.py)
and ``dtp daemon`` processes, each started, read and stopped by the tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.support.netns import in_namespace
from tests.support.paths import ROOT

if TYPE_CHECKING:
    from tests.support.netns import TwoMachines

# (without the caller's passphrase variable: the test identities are unencrypted, and
# one set but empty is refused)
ENV = {
    **{k: v for k, v in os.environ.items() if k != "DTP_PASSPHRASE"},
    "PYTHONPATH": str(ROOT),
}
SUI = 1_000_000_000


class Proc:
    """A child process that announced itself with one JSON line on stdout; with
    ``netns``, run inside that network namespace (tests/support/netns.py)."""

    def __init__(
        self, cmd: list[str], stderr: Path | None = None, netns: str | None = None
    ) -> None:
        self.stderr_path = stderr
        err = open(stderr, "ab") if stderr is not None else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd if netns is None else in_namespace(netns, cmd),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=ENV,
        )
        if stderr is not None:
            err.close()  # type: ignore[union-attr]
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            log = stderr.read_text() if stderr is not None else ""
            raise RuntimeError(f"{cmd[3:]} did not start (exit {self.proc.returncode}):\n{log}")
        self.info: dict[str, Any] = json.loads(line)

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def log(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path is not None else ""


def backend(mode: str, port: int = 0, host: str = "127.0.0.1", netns: str | None = None) -> Proc:
    cmd = [sys.executable, "-m", "tests.support.daemon_backends", mode, "--port", str(port)]
    return Proc([*cmd, "--host", host], netns=netns)


def daemon(config: Path, netns: str | None = None) -> Proc:
    return Proc(
        [sys.executable, "-m", "dtp.cli", "daemon", "--config", str(config)],
        stderr=config.with_suffix(".log"),
        netns=netns,
    )


def run_daemon(config: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """``dtp daemon`` expected to exit at once (a refused start): its status and output."""
    return subprocess.run(
        [sys.executable, "-m", "dtp.cli", "daemon", "--config", str(config)],
        cwd=ROOT,
        env={**ENV, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_forwarder(
    tmp: Path, host_id: str, port: int, extra: str = "", ledger: str | None = None
) -> Path:
    """A forwarder's config (identity client.key) with one forward "svc" to
    ``dtp://host_id:port``; ``extra`` lines go into the [[forward]]. ``ledger``: the
    ``[daemon]`` lines naming the ledger (default: ledger.sqlite, with a faucet)."""
    path = tmp / "forwarder.toml"
    lines = f'ledger = "ledger.sqlite"\nfaucet = {10 * SUI}' if ledger is None else ledger
    path.write_text(
        f"""[daemon]
{lines}
identity = "client.key"
state_dir = "forwarder-state"

[[forward]]
name = "svc"
listen = "127.0.0.1:0"
target = "dtp://{host_id}:{port}"
{extra}
"""
    )
    return path


def forward_address(forwarder: Proc, name: str = "svc") -> tuple[str, int]:
    """The local address a forwarder listens on for its forward ``name``."""
    host, port = forwarder.info["forwards"][name].rsplit(":", 1)
    return host, int(port)


@contextmanager
def running(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()


def wait_until(check: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``check()`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class DaemonPair:
    """A provider daemon on machine A and a forwarder daemon on machine B, from
    :func:`daemon_pair`."""

    provider: Proc
    forwarder: Proc
    provider_dir: Path
    """The provider's own directory: its config, identity, state and log."""
    forwarder_dir: Path
    """The forwarder's, likewise: the two share no file (but a ledger file, if named)."""

    @property
    def host_id(self) -> str:
        return str(self.provider.info["host_id"])

    @property
    def forward(self) -> tuple[str, int]:
        """Where clients on machine B connect: the forward's listener there."""
        return forward_address(self.forwarder)


def new_identity(path: Path) -> str:
    """Create the identity file ``path`` with ``dtp keys new`` (as a user would, before
    funding its address on a network); returns its Sui address."""
    path.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "dtp.cli", "keys", "new", "--identity", str(path), "--json"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return str(json.loads(done.stdout)["sui_address"])


def daemon_pair(
    netns: TwoMachines,
    ledger_spec_provider: str,
    ledger_spec_forwarder: str,
    tmp: Path,
    backends: list[str],
    *,
    port: int = 7000,
    service_extra: str = "",
    forward_extra: str = "",
    daemon_extra: str = "",
    faucet: int | None = 10 * SUI,
) -> DaemonPair:
    """Start a provider daemon in ``netns.a`` exposing ``backends`` (``host:port`` as
    seen from A) as DTP port ``port``, and a forwarder daemon in ``netns.b`` with one
    forward "svc" to it listening on B's 127.0.0.1. Each has its own directory under
    ``tmp`` (``provider``, ``forwarder``) holding its config, identity (``host.key``,
    ``client.key``: generated at first start unless made there beforehand, as on a
    network, to fund its address) and state directory. The provider listens on A's
    address on the A-B link, the endpoint it publishes. The ledger specs are the
    ``[daemon] ledger`` line of each, as written there: the one thing that changes
    between a ledger file shared through the filesystem and a ledger node both reach
    (``netns.root_address``); ``daemon_extra`` goes into both ``[daemon]`` tables
    (``sui_package = …``), ``{host_id}`` in ``forward_extra`` stands for the provider's
    host ID (another ``[[forward]]`` to it), and ``faucet`` None leaves out the
    embedded ledger's faucet (a Sui ledger refuses it). Both processes are tracked by
    ``netns`` (killed when it closes)."""
    provider_dir, forwarder_dir = tmp / "provider", tmp / "forwarder"
    provider_dir.mkdir(exist_ok=True)
    forwarder_dir.mkdir(exist_ok=True)
    listed = ", ".join(json.dumps(b) for b in backends)
    funding = "" if faucet is None else f"faucet = {faucet}"
    provider_toml = provider_dir / "dtp.toml"
    provider_toml.write_text(
        f"""[daemon]
ledger = {json.dumps(ledger_spec_provider)}
identity = "host.key"
state_dir = "state"
listen = "{netns.a.address}:0"
{funding}
drain_timeout = 5
{daemon_extra}

[[service]]
name = "svc"
port = {port}
backends = [{listed}]
health_interval = 0.3
{service_extra}
"""
    )
    provider = netns.track(daemon(provider_toml, netns=netns.a.name))
    forwarder_toml = forwarder_dir / "dtp.toml"
    forwarder_toml.write_text(
        f"""[daemon]
ledger = {json.dumps(ledger_spec_forwarder)}
identity = "client.key"
state_dir = "state"
{funding}
drain_timeout = 5
{daemon_extra}

[[forward]]
name = "svc"
listen = "127.0.0.1:0"
target = "dtp://{provider.info["host_id"]}:{port}"
{forward_extra.replace("{host_id}", provider.info["host_id"])}
"""
    )
    forwarder = netns.track(daemon(forwarder_toml, netns=netns.b.name))
    return DaemonPair(provider, forwarder, provider_dir, forwarder_dir)
