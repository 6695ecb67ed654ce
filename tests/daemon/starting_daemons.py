"""A ``dtp daemon`` that is slow to start (an allowlist published one transaction an
address), and a script run as one that is SIGTERMed once started and must stop with
status 0, for the tests of signals during a start."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger
from tests.support.daemon_procs import ENV, ROOT, SUI, wait_until

ALLOWED = 1000


def write_slow_config(tmp: Path, entries: int = ALLOWED) -> Path:
    """A provider with a service, a forward and an allowlist of ``entries`` addresses:
    its first start publishes them one transaction each."""
    HostIdentity.generate().save(tmp / "provider.key")
    allow = ", ".join(f'"0x{i:064x}"' for i in range(1, entries + 1))
    config = tmp / "daemon.toml"
    config.write_text(
        f"""[daemon]
ledger = "ledger.sqlite"
identity = "provider.key"
state_dir = "state"
faucet = {SUI}
drain_timeout = 1

[firewall]
mode = "allowlist"
allow = [{allow}]

[[service]]
name = "svc"
port = 7000
backends = ["127.0.0.1:9"]
health_interval = 30

[[forward]]
name = "out"
listen = "127.0.0.1:0"
target = "dtp://0x{"1" * 64}:80"
"""
    )
    LocalLedger(tmp / "ledger.sqlite").close()  # the file exists, to be locked
    return config


def stop_daemon_script(tmp_path: Path, script: str) -> None:
    """Run ``script`` (a ``dtp daemon`` with hooks, given the config's path) on a slow
    config, SIGTERM it once started, and check that it stopped with status 0."""
    config = write_slow_config(tmp_path, entries=20)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(config)],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # the daemon's handlers are in place once it has started on its Host
        wait_until(lambda: (tmp_path / "state" / "host.json").exists(), 60, "the host")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert '"stopped"' in err, err
