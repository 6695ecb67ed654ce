"""The public module paths of 0.0.x, still importable until 0.3.0 with a warning.

An old path (``dtp.keys``, ``dtp.chain.local``...) is the very module at its new path
(``dtp.identity.keys``, ``dtp.ledger.local``), the same object, so ``isinstance`` and
monkeypatching see one module; importing it first warns :class:`DeprecationWarning` at the
importer's line, naming the new path and :data:`REMOVED_IN`. The old paths of private
modules (``dtp._core``...) have no alias and fail like any missing module. CHANGES.md
has the table; tests/project/test_retired_paths.py pins the behaviour.

``dtp/__init__.py`` puts :class:`RetiredPathFinder` on ``sys.meta_path``; this module
imports only what the interpreter has loaded before ``site`` runs, so ``import dtp`` stays
cheap (tests/project/test_public_face.py).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types
import warnings

# typing.TYPE_CHECKING without importing typing (dtp/__init__.py says why)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

# the version whose release drops the aliases (dtp.__version__ is 0.1.0)
REMOVED_IN = "0.3.0"

# Old path -> new path. A package maps its submodules too (``dtp.chain.local`` ->
# ``dtp.ledger.local``): the longest matching old path wins. No old path here or under one
# has a component starting with ``_``: private modules were never part of the API.
RETIRED: dict[str, str] = {
    "dtp.keys": "dtp.identity.keys",
    "dtp.keys_ahead": "dtp.identity._ahead",
    "dtp.crypto": "dtp.identity._noise",
    "dtp.events": "dtp.protocol._events",
    "dtp.connection": "dtp.protocol.connection",
    "dtp.chain": "dtp.ledger",
    "dtp.chain.ledger": "dtp.ledger.interface",
    "dtp.escrow": "dtp.payments.receipts",
    "dtp.metering": "dtp.payments.metering",
    "dtp.ratelimit": "dtp.payments._ratelimit",
    "dtp.receipt_store": "dtp.payments.receipt_store",
    "dtp.receipt_writer": "dtp.payments._receipt_writer",
    "dtp.settlement": "dtp.payments._settlement",
    "dtp.daemon.loop_signals": "dtp.daemon._signals",
    "dtp.ledger.cli": "dtp.cli._ledger",
    "dtp.ledger.cli_funds": "dtp.cli._funds",
    "dtp.daemon.cli": "dtp.cli._daemon",
    "dtp.demo": "dtp.cli._demo",
    "dtp.daemon.demo_step": "dtp.cli._demo_daemon",
    "dtp.paid": "dtp.hostid.paid",
    "dtp.paid_aio": "dtp.hostid.paid._aio",
    "dtp.udp": "dtp.hostid.udp",
    "dtp.udp_aio": "dtp.hostid.udp._asyncio",
    "dtp.ledger.local_rules": "dtp.ledger.local.rules",
    "dtp.ledger.local_tx": "dtp.ledger.local._tx",
    "dtp.ledger.local_economics": "dtp.ledger.local.rules._economics",
    "dtp.ledger.sui_client": "dtp.ledger.sui._client",
    "dtp.ledger.sui_codec": "dtp.ledger.sui._codec",
    "dtp.ledger.sui_config": "dtp.ledger.sui._config",
    "dtp.ledger.sui_economics": "dtp.ledger.sui._economics",
    "dtp.ledger.sui_effects": "dtp.ledger.sui._effects",
    "dtp.ledger.sui_gas": "dtp.ledger.sui._gas",
    "dtp.ledger.sui_keystore": "dtp.ledger.sui._keystore",
    "dtp.ledger.sui_tx": "dtp.ledger.sui._tx",
    "dtp.handshake_slots": "dtp.transport._admission",
    "dtp.handshake_gate": "dtp.transport._admission",
    "dtp.replay_guard": "dtp.transport._admission",
    "dtp.heap_release": "dtp.transport._admission",
    # (the paths 0.1.0's table sent the four above to, merged since)
    "dtp.transport.handshake_slots": "dtp.transport._admission",
    "dtp.transport.handshake_gate": "dtp.transport._admission",
    "dtp.transport.replay_guard": "dtp.transport._admission",
    "dtp.transport.heap_release": "dtp.transport._admission",
    "dtp.carriers": "dtp.transport.carriers",
    "dtp.carriers.ledger": "dtp.hostid.ledger_carrier._carrier",
    "dtp.carriers.ledger_bridge": "dtp.hostid.ledger_carrier._bridge",
    "dtp.address": "dtp.hostid._address",
    "dtp.served": "dtp.hostid._served",
    "dtp.admission": "dtp.hostid._admission",
    "dtp.messaging.rpc.client": "dtp.messaging.rpc._blocking_client",
    "dtp.messaging.rpc.server": "dtp.messaging.rpc._blocking_server",
    "dtp.messaging.rpc.aio": "dtp.messaging.rpc",
    "dtp.hostid.paid.server": "dtp.hostid.paid._blocking_server",
    "dtp.hostid.paid.asyncio_streams": "dtp.hostid.paid._asyncio",
}

_HERE = os.path.normcase(__file__)
_IMPORTLIB = os.path.normcase(os.path.dirname(importlib.__file__ or "")) + os.sep


def new_path(name: str) -> str | None:
    """The new path of module ``name`` if it is a retired public path, else None."""
    if any(part.startswith("_") for part in name.split(".")):
        return None
    old = name
    while old not in RETIRED:
        old, dot, _ = old.rpartition(".")
        if not dot:
            return None
    return _inside(RETIRED[old], name[len(old) :])


# the folder that holds dtp/ (this file is dtp/_retired.py)
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _inside(package: str, rest: str) -> str:
    """``package + rest`` with each module of ``rest`` at its private name: a retired
    package's modules (``dtp.carriers.tcp``) are now the folder's inside (``_tcp.py``,
    docs/architecture.md "Each folder's face"), found by the file that exists."""
    parts = package.split(".")
    for leaf in rest.split(".")[1:]:
        folder = os.path.join(_ROOT, *parts)
        public = os.path.exists(os.path.join(folder, f"{leaf}.py"))
        if not public and os.path.exists(os.path.join(folder, f"_{leaf}.py")):
            leaf = f"_{leaf}"
        parts.append(leaf)
    return ".".join(parts)


def message(old: str, new: str, *, use: str = "import {}") -> str:
    """The warning's text: the old path, the release that removes it, what to do instead."""
    instead = use.format(new)
    return f"{old} is deprecated and will be removed in {REMOVED_IN}: {instead} instead"


def _is_machinery(filename: str) -> bool:
    """A frame of the import system or of this module, between the importer and the warning."""
    filename = os.path.normcase(filename)
    return filename == _HERE or filename.startswith(("<frozen importlib", _IMPORTLIB))


def _importer_stacklevel() -> int:
    """The ``stacklevel`` that puts a warning raised by this module's caller on the line
    that imports, counted as ``warnings.warn`` counts: one per frame, except the frames of
    ``importlib._bootstrap``, which it skips on its own."""
    frame: types.FrameType | None = sys._getframe(
        2
    )  # the frame that calls warnings.warn is level 1
    level = 2
    while frame is not None and _is_machinery(frame.f_code.co_filename):
        if "_bootstrap" not in frame.f_code.co_filename:
            level += 1
        frame = frame.f_back
    return level


class _AliasLoader:
    """Hands out the module at its new path, so the old path is the same object."""

    def __init__(self, old: str, new: str) -> None:
        self.old = old
        self.new = new
        self._spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        warnings.warn(message(self.old, self.new), DeprecationWarning, _importer_stacklevel())
        # importlib sets the old path's __spec__ on the module: kept here, put back by
        # exec_module, so the module's repr, reload() and pickling see its real name
        module = importlib.import_module(self.new)
        self._spec = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run (the module ran once, at its new path): its own spec goes back."""
        if self._spec is not None:
            module.__spec__ = self._spec

    def get_code(self, fullname: str) -> types.CodeType | None:
        """The new module's code, for ``python -m <old path>``: runpy runs it as
        ``__main__``. The warning is the command's own (``__main__``'s), which Python
        shows by default (PEP 565); there is no importer's line to put it on."""
        warnings.warn_explicit(
            message(self.old, self.new, use="run python -m {}"),
            DeprecationWarning,
            filename=f"python -m {self.old}",
            lineno=0,
            module="__main__",
        )
        spec = importlib.util.find_spec(self.new)
        get_code = getattr(spec.loader if spec is not None else None, "get_code", None)
        return get_code(self.new) if get_code is not None else None

    def is_package(self, fullname: str) -> bool:
        """runpy asks, to run a package's ``__main__``."""
        spec = importlib.util.find_spec(self.new)
        return spec is not None and spec.submodule_search_locations is not None


class RetiredPathFinder:
    """Finds an old public path of :data:`RETIRED` as the module at its new path.

    A meta path finder by protocol (PEP 451), not a subclass of ``importlib.abc``, whose
    import would cost ``import dtp`` about 10 ms. It goes first on ``sys.meta_path``:
    otherwise ``dtp.chain.local`` would be found through the aliased package's
    ``__path__`` and run a second time under the old name, a copy that ``isinstance``
    and monkeypatching would tell apart.
    """

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        new = new_path(fullname) if fullname.startswith("dtp.") else None
        if new is None:
            return None
        # None where the new module does not exist, so that ModuleNotFoundError names the
        # old path; the origin gives ``python -m <old path>`` its __file__
        found = importlib.util.find_spec(new)
        if found is None:
            return None
        return importlib.machinery.ModuleSpec(
            fullname,
            _AliasLoader(fullname, new),  # type: ignore[arg-type]  # the protocol suffices
            origin=found.origin,
            is_package=found.submodule_search_locations is not None,
        )


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once: a reload of dtp adds none)."""
    if not any(isinstance(finder, RetiredPathFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, RetiredPathFinder())
