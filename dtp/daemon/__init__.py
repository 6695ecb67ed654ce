"""The services daemon: expose local TCP backends as ``<host id>:<port>`` services and
forward local TCP ports to remote ones, through DTP (docs/daemon.md).

Modules: config (the TOML file), services (exposing side), forwarder (client side),
balancer (backends, health, failover), tunnel (wire format and byte pump), fees
(receipts and claims), state / status (counters and ``dtp status``), runner
(``dtp daemon``), signals (its signal handling); the ``dtp daemon`` command itself is
:mod:`dtp.cli.daemon`.
"""

from dtp.daemon.config import DaemonConfig, load_config

__all__ = ["DaemonConfig", "load_config"]
