"""Config files of ``dtp daemon`` processes on one LocalLedger file: a provider with a free
echo service, or with one service "svc" as the test says, a client with the forwards
given, and the forwards' rows in a status file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dtp.daemon._state import read_status
from dtp.identity.keys import HostIdentity
from tests.support.daemon_procs import SUI

FAKE_HOST = "0x" + "ab" * 32


def provider(tmp: Path, backend: int, extra_daemon: str = "") -> Path:
    """A provider's config: free service "echo" on DTP port 7000."""
    HostIdentity.generate().save(tmp / "provider.key")
    config = tmp / "provider.toml"
    config.write_text(
        f"""[daemon]
ledger = "ledger.sqlite"
identity = "provider.key"
state_dir = "provider-state"
faucet = {SUI}
drain_timeout = 2
{extra_daemon}

[[service]]
name = "echo"
port = 7000
backends = ["127.0.0.1:{backend}"]
health_interval = 30
"""
    )
    return config


def write_provider(
    tmp: Path, backend_port: int, daemon_extra: str = "", service_extra: str = ""
) -> Path:
    """Keys for a provider and a client, and the provider's config: one service "svc"
    on port 7000 to the backend; ``daemon_extra`` and ``service_extra`` go into
    [daemon] and the [[service]]."""
    HostIdentity.generate().save(tmp / "provider.key")
    HostIdentity.generate().save(tmp / "client.key")
    provider = tmp / "daemon.toml"
    provider.write_text(
        f"""[daemon]
ledger = "ledger.sqlite"
identity = "provider.key"
state_dir = "daemon-state"
faucet = {SUI}
{daemon_extra}

[[service]]
name = "svc"
port = 7000
backends = ["127.0.0.1:{backend_port}"]
{service_extra}
"""
    )
    return provider


def forward(name: str, listen: str, target: str, extra: str = "") -> str:
    """A ``[[forward]]`` table (``extra``: more of its keys)."""
    return f"""
[[forward]]
name = "{name}"
listen = "{listen}"
target = "{target}"
{extra}
"""


def client_config(tmp: Path, forwards: str) -> Path:
    """A client's config (its key made once) with the ``forwards`` tables."""
    if not (tmp / "client.key").exists():
        HostIdentity.generate().save(tmp / "client.key")
    config = tmp / "client.toml"
    config.write_text(
        f"""[daemon]
ledger = "ledger.sqlite"
identity = "client.key"
state_dir = "client-state"
faucet = {10 * SUI}
drain_timeout = 2
"""
        + forwards
    )
    return config


def forward_rows(state: Path) -> dict[str, Any]:
    """The forwards' rows of the status file in ``state``."""
    return dict((read_status(state) or {}).get("forwards", {}))
