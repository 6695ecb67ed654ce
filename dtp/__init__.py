"""DTP for Python: TCP-like, end-to-end encrypted connections between hosts named by
Sui object IDs, with an on-chain firewall, fees in escrow, messaging and a replicated
graph store.

The package exports nothing but ``__version__`` itself (``import dtp`` stays cheap for
the ``dtp`` command); users import from the modules, as README.md shows:

- ``dtp.socket`` (blocking: ``create_server``, ``create_connection``, ``serve``) and
  ``dtp.aio`` (asyncio: ``start_server``, ``open_connection``, ``serve``): connections,
  by address or by host ID (``dtp://0x<host id>:<port>``);
- ``dtp.identity.keys.HostIdentity``: a host's or client's Sui (Ed25519) and Noise
  (X25519) keys;
- ``dtp.ledger.local.LocalLedger`` (embedded, SQLite) and ``dtp.ledger.sui.SuiLedger``
  (a Sui node): the ledger, either opened from a ledger spec by
  ``dtp.ledger.open_ledger`` (``"local"``, ``"testnet"``...); ``dtp.ledger.objects`` has
  its objects (``Sla``, ...);
- ``dtp.payments.receipts`` (``Meter``, ``Receipt``, ``ReceiptScope``): per-byte and
  per-request fees; ``dtp.payments`` has the rest of the money layer (metering,
  settlement, receipt store);
- ``dtp.errors``: every exception the package raises;
- ``dtp.discovery.lan`` (``announce``, ``browse``): finding DTP endpoints on the LAN
  over mDNS, with no ledger;
- ``dtp.messaging`` (RPC, pub/sub, sealed messages, broadcast, discovery on the ledger),
  ``dtp.graph`` (the replicated graph), ``dtp.hostid.udp`` (UDP through DTP) and
  ``dtp.daemon`` (the services daemon, ``dtp daemon``).

Docs: README.md and docs/*.md in the source tree; docs/architecture.md has the layers
and the old module paths that still import (:data:`MOVED`).
"""

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Sequence

__version__ = "0.1.0"

__all__ = ["__version__"]

# Modules that moved into the layer folders (docs/architecture.md, "Layout"), old name ->
# new name. A name that is a package maps its submodules too (``dtp.chain.local`` ->
# ``dtp.ledger.local``); the longest matching old name wins.
MOVED: dict[str, str] = {
    "dtp._core": "dtp.native.core",
    "dtp._types": "dtp.native.types",
    "dtp._reference": "dtp.native.reference",
    "dtp.keys": "dtp.identity.keys",
    "dtp.keys_ahead": "dtp.identity.ahead",
    "dtp.crypto": "dtp.identity.noise",
    "dtp._ed25519": "dtp.identity.ed25519",
    "dtp._uleb128": "dtp.identity.bcs",
    "dtp._paths": "dtp.identity.files",
    "dtp._filelock": "dtp.identity.files",
    "dtp._durable": "dtp.identity.files",
    "dtp._state": "dtp.protocol.state",
    "dtp.events": "dtp.protocol.events",
    "dtp._recovery": "dtp.protocol.recovery",
    "dtp._buffers": "dtp.protocol.buffers",
    "dtp.connection": "dtp.protocol.connection",
    "dtp.chain": "dtp.ledger",
    "dtp.chain.ledger": "dtp.ledger.interface",
    "dtp.escrow": "dtp.payments.receipts",
    "dtp.metering": "dtp.payments.metering",
    "dtp.ratelimit": "dtp.payments.ratelimit",
    "dtp.receipt_store": "dtp.payments.receipt_store",
    "dtp.receipt_writer": "dtp.payments.receipt_writer",
    "dtp.settlement": "dtp.payments.settlement",
    # the dtp command in cli/, the daemon's signals in daemon/signals.py
    "dtp.daemon.loop_signals": "dtp.daemon.signals",
    "dtp.ledger.cli": "dtp.cli.ledger",
    "dtp.ledger.cli_funds": "dtp.cli.funds",
    "dtp.daemon.cli": "dtp.cli.daemon",
    "dtp.demo": "dtp.cli.demo",
    "dtp.daemon.demo_step": "dtp.cli.demo_daemon",
    # the argument checks, into the errors they raise
    "dtp._checks": "dtp.errors",
    # paid connections and UDP flows, under hostid/ (the server's receipts: payments)
    "dtp.paid": "dtp.hostid.paid",
    "dtp.paid_aio": "dtp.hostid.paid.aio",
    "dtp.udp": "dtp.hostid.udp",
    "dtp.udp_aio": "dtp.hostid.udp.asyncio",
    # the local and Sui ledgers' modules, into their packages ledger/local/ and ledger/sui/
    "dtp.ledger.local_rules": "dtp.ledger.local.rules",
    "dtp.ledger.local_tx": "dtp.ledger.local.tx",
    "dtp.ledger.local_economics": "dtp.ledger.local.rules.economics",
    "dtp.ledger.sui_client": "dtp.ledger.sui.client",
    "dtp.ledger.sui_codec": "dtp.ledger.sui.codec",
    "dtp.ledger.sui_config": "dtp.ledger.sui.config",
    "dtp.ledger.sui_economics": "dtp.ledger.sui.economics",
    "dtp.ledger.sui_effects": "dtp.ledger.sui.effects",
    "dtp.ledger.sui_gas": "dtp.ledger.sui.gas",
    "dtp.ledger.sui_keystore": "dtp.ledger.sui.keystore",
    "dtp.ledger.sui_tx": "dtp.ledger.sui.tx",
    # stage 1b, blocking side: the transport's and host ID's small modules
    "dtp._session": "dtp.transport.session",
    "dtp._poll": "dtp.transport.poll",
    "dtp.handshake_slots": "dtp.transport.handshake_slots",
    "dtp.handshake_gate": "dtp.transport.handshake_gate",
    "dtp.replay_guard": "dtp.transport.replay_guard",
    "dtp.heap_release": "dtp.transport.heap_release",
    "dtp.carriers": "dtp.transport.carriers",
    "dtp.carriers.ledger": "dtp.hostid.ledger_carrier.carrier",
    "dtp.carriers.ledger_bridge": "dtp.hostid.ledger_carrier.bridge",
    "dtp.address": "dtp.hostid.address",
    "dtp.served": "dtp.hostid.served",
    "dtp.admission": "dtp.hostid.admission",
    # the RPC drivers, named blocking_*/asyncio_* (what both share: client_base,
    # server_base); the old asyncio module held client and server: the package has both
    "dtp.messaging.rpc.client": "dtp.messaging.rpc.blocking_client",
    "dtp.messaging.rpc.server": "dtp.messaging.rpc.blocking_server",
    "dtp.messaging.rpc.aio": "dtp.messaging.rpc",
    # the paid drivers, named blocking*/asyncio*
    "dtp.hostid.paid.server": "dtp.hostid.paid.blocking_server",
    "dtp.hostid.paid.asyncio_streams": "dtp.hostid.paid.asyncio",
}


class _MovedModuleLoader:
    """Hands out the module at its new name, so the old name is the same object."""

    def __init__(self, new_name: str) -> None:
        self.new_name = new_name
        self._spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        # importlib keeps the attributes a module already has (__name__, __path__), but
        # always sets __spec__ to the old name's: kept here, put back by exec_module, so
        # that the module's repr, importlib.reload() and pickling see its real name
        module = importlib.import_module(self.new_name)
        self._spec = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run (the module was run once, at its new name): its own spec goes
        back in place of the old name's."""
        if self._spec is not None:
            module.__spec__ = self._spec

    def get_code(self, fullname: str) -> types.CodeType | None:
        """The new module's code, for ``python -m <old name>`` (runpy runs it as
        ``__main__``, a fresh module, so nothing is run twice under the old name)."""
        spec = importlib.util.find_spec(self.new_name)
        loader = spec.loader if spec is not None else None
        get_code = getattr(loader, "get_code", None)
        return get_code(self.new_name) if get_code is not None else None

    def is_package(self, fullname: str) -> bool:
        """runpy asks, to run a package's ``__main__``."""
        spec = importlib.util.find_spec(self.new_name)
        return spec is not None and spec.submodule_search_locations is not None


class _MovedModuleFinder:
    """Resolves an old module name of :data:`MOVED` to the module at its new name.

    A meta path finder and its loader by protocol (PEP 451) rather than by subclassing
    ``importlib.abc``, whose import costs ``import dtp`` about 10 ms.

    It goes first in ``sys.meta_path``: otherwise ``dtp.chain.local`` would be found
    through the aliased package's ``__path__`` and run a second time under the old name,
    a copy that monkeypatching and ``isinstance`` would tell apart.
    """

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        new_name = moved_to(fullname)
        if new_name is None:
            return None
        # None for an old name whose new module does not exist, so the import fails with
        # the old name in ModuleNotFoundError; the origin gives ``python -m <old>`` a __file__
        found = importlib.util.find_spec(new_name)
        if found is None:
            return None
        # typeshed asks for an importlib.abc.Loader; the protocol is all importlib uses.
        loader = _MovedModuleLoader(new_name)
        return importlib.machinery.ModuleSpec(
            fullname,
            loader,  # type: ignore[arg-type]
            origin=found.origin,
            is_package=found.submodule_search_locations is not None,
        )


def moved_to(name: str) -> str | None:
    """The new name of module ``name`` if it moved (see :data:`MOVED`), else None."""
    old = name
    while old not in MOVED:
        old, dot, _ = old.rpartition(".")
        if not dot:
            return None
    return MOVED[old] + name[len(old) :]


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedModuleFinder())
