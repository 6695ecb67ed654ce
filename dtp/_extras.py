"""The optional parts of the ``dtp-sui`` distribution and the packages each needs.

``pip install dtp-sui`` installs what the protocol, the embedded ledger (LocalLedger), the
messaging layers, the graph store and the services daemon need. Eight features bring
packages of their own, installed as extras (pyproject.toml, README.md "Install"):

- ``sui``: ledgers on a Sui network (:mod:`dtp.ledger.sui`: pysui and its gRPC stack,
  PyYAML for the Sui CLI's keystore; pysui's fastcrypto also speeds up Ed25519
  verification, :mod:`dtp.identity._ed25519`);
- ``lan``: LAN discovery over mDNS (:mod:`dtp.discovery.lan`, ``dtp lan``, the daemon's
  ``lan_announce``, :func:`dtp.graph.sync_with_lan`: zeroconf, LGPL);
- ``gun``: the Gun peer for gun.js apps (:mod:`dtp.graph.gun`: websockets);
- ``ws``: the WebSocket carrier of DTP records, for browsers
  (:mod:`dtp.transport.carriers._websocket`, ``listen_websocket``, ``ws://`` URLs:
  websockets, the same package as ``gun``'s, an extra of its own so that a service
  asks for what it uses by name);
- ``metrics``: the daemon's Prometheus metrics (``metrics_listen``,
  :mod:`dtp.daemon._metrics`: prometheus_client);
- ``testing``: testing applications (docs/testing.md): the strategies and state
  machines of :mod:`dtp.testing` (hypothesis) and its pytest plugin's fixtures (pytest).
  The Sui node stand-in, :mod:`dtp.testing.sui_node`, speaks pysui's messages: it needs
  ``sui``.
- ``fast``: uvloop, the event loop the daemon and :func:`dtp.aio.run` take when it is
  installed (:mod:`dtp.eventloop`; ``[daemon] event_loop`` chooses).
- ``collab``: collaborative values in the graph (:mod:`dtp.graph.collab`,
  ``graph.text()``: Yjs documents merged by pycrdt).

Asked for without its extra, a feature raises :class:`~dtp.errors.MissingExtra`, whose
message ends with the command that installs it. The modules of a feature check on
import (:func:`missing`); settings that name a feature (a ledger spec, the daemon's
config) check before anything runs (:func:`require`), without importing the packages.
"""

from __future__ import annotations

import importlib.util
from typing import Final

from dtp.errors import MissingExtra

__all__ = ["EXTRAS", "installed", "missing", "require"]

#: Each extra's top-level modules (the import names of its packages).
EXTRAS: Final[dict[str, tuple[str, ...]]] = {
    "sui": ("pysui", "yaml"),
    "lan": ("zeroconf", "ifaddr"),
    "gun": ("websockets",),
    "ws": ("websockets",),
    "metrics": ("prometheus_client",),
    "testing": ("hypothesis", "pytest"),
    "fast": ("uvloop",),
    "collab": ("pycrdt",),
}


def _absent(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # (a finder that refuses it, a broken __spec__)
        return True


def installed(extra: str) -> bool:
    """Whether every module of ``extra`` can be imported (none is imported)."""
    return not any(_absent(module) for module in EXTRAS[extra])


def require(extra: str, feature: str) -> None:
    """Raise :class:`MissingExtra` for ``feature`` (a few words: "A Sui ledger") unless
    ``extra`` is installed."""
    for module in EXTRAS[extra]:
        if _absent(module):
            raise MissingExtra(extra, feature, module)


def missing(extra: str, feature: str, exc: ImportError) -> ImportError:
    """What an import of ``extra``'s packages that failed with ``exc`` raises instead:
    :class:`MissingExtra` when one of them is not installed, else ``exc`` itself (a
    package that is there but broken says so in its own words). Used as::

        try:
            import zeroconf
        except ImportError as exc:
            raise missing("lan", "LAN discovery", exc) from exc
    """
    name = (exc.name or "").partition(".")[0]
    if isinstance(exc, ModuleNotFoundError) and name in EXTRAS[extra]:
        # the extra's main package when it is missing too (zeroconf, not the ifaddr
        # that happens to be imported first)
        absent = [module for module in EXTRAS[extra] if _absent(module)]
        return MissingExtra(extra, feature, absent[0] if absent else name)
    return exc
