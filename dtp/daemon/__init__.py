"""The services daemon: expose local TCP backends as ``<host id>:<port>`` services and
forward local TCP ports to remote ones, through DTP (docs/daemon.md).

Modules: config (the TOML file); services (exposing side: listener, admission, the
handler of each connection), served (a connection served), served_tunnels (its TCP
tunnels and receipts), udp_flows (its UDP flow), settlements (claims, refunds, their
retries), host_policy (the Host's firewall while serving); forwarder (client side),
forwards (the forwarders a daemon runs, started and reloaded); balancer (backends,
health, failover), tunnel (wire format and byte pump), fees (receipts and claims),
state / status (counters and ``dtp status``); runner (``dtp daemon``), host_setup (the
Host on the ledger, created and published), signals (its signal handling); the
operator's side: ledger_calls (every ledger call timed), live (the live status and its
history), web (the HTTP endpoint: metrics, status page, live status), control (the
control socket's client side), metrics (the Prometheus collector), status_page (the
page), systemd (the service manager's notify protocol), check (``dtp daemon
--check``); the ``dtp daemon`` command itself is :mod:`dtp.cli._daemon`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dtp.daemon._config import DaemonConfig, load_config

__all__ = ["DaemonConfig", "load_config"]


def __getattr__(name: str) -> Any:
    # The re-exports load on first use (PEP 562): ``dtp daemon`` imports
    # dtp.daemon._signals first, to catch a stop signal from its first moment, and that
    # import must not pull config's (and with it the ledger's and asyncio's) in ahead
    # of it (tests/daemon/test_signal_import.py).
    if name in __all__:
        from dtp.daemon import _config as config

        return getattr(config, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
