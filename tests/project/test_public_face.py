"""The package's own face: ``import dtp`` gives the names most programs need (README.md,
docs/*.md), each imported on first use, so that ``import dtp`` loads nothing else and
works on the base install (dtp/__init__.py)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest

import dtp
from dtp._extras import EXTRAS
from tests.support.paths import ROOT

NO_EXTRAS = ROOT / "tests" / "support" / "no_extras"

# The face, pinned: a name added or taken away is a change of the public API (and of
# README.md's examples), made here on purpose.
FACE = {
    "__version__": "dtp",
    "aio": "dtp.aio",
    "errors": "dtp.errors",
    "socket": "dtp.socket",
    "create_connection": "dtp.socket",
    "create_server": "dtp.socket",
    "serve": "dtp.socket",
    "HostIdentity": "dtp.identity.keys",
    "Ledger": "dtp.ledger.interface",
    "LocalLedger": "dtp.ledger.local",
    "SuiLedger": "dtp.ledger.sui",
    "open_ledger": "dtp.ledger._open",
    "Sla": "dtp.ledger._objects",
    "Meter": "dtp.payments.receipts",
    "MeteringConfig": "dtp.payments.metering",
    "Receipt": "dtp.payments.receipts",
    "Graph": "dtp.graph",
    "RpcClient": "dtp.messaging.rpc",
    "RpcServer": "dtp.messaging.rpc",
    "DTPError": "dtp.errors",
    "ChainError": "dtp.errors",
    "ConnectionClosed": "dtp.errors",
    "ConnectionLost": "dtp.errors",
    "ConnectionRefused": "dtp.errors",
    "DTPTimeoutError": "dtp.errors",
    "HandshakeError": "dtp.errors",
    "PaymentError": "dtp.errors",
}

# what `import dtp` may load besides the package itself: dtp._retired, the finder of the
# deprecated old paths (about 0.2 ms with its bytecode cached), and nothing of the stdlib
# that the interpreter has not loaded already
MAX_NEW_MODULES = 3
LOADED_WITH_DTP = ["dtp", "dtp._retired"]


def test_the_face_is_pinned() -> None:
    assert sorted(dtp.__all__) == sorted(FACE)
    assert len(dtp.__all__) == len(set(dtp.__all__))


@pytest.mark.parametrize("name", sorted(FACE))
def test_every_name_resolves_to_the_object_its_module_defines(name: str) -> None:
    value = getattr(dtp, name)
    module = importlib.import_module(FACE[name])
    if name in ("aio", "errors", "socket"):
        assert value is module
    else:
        assert value is getattr(module, name)
    assert name in dir(dtp)


def test_star_import_gives_the_face() -> None:
    scope: dict[str, object] = {}
    exec("from dtp import *", scope)
    assert {name for name in scope if name != "__builtins__"} == set(dtp.__all__)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        _ = dtp.Nothing  # type: ignore[attr-defined]
    assert not hasattr(dtp, "MOVED")


def _fresh(code: str, *, no_extras: bool = False) -> subprocess.CompletedProcess[str]:
    """``code`` in a new interpreter importing this checkout's dtp (and, with
    ``no_extras``, refusing the extras' packages as the base install would lack them)."""
    path = [str(NO_EXTRAS)] if no_extras else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*path, str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_import_dtp_loads_nothing_else() -> None:
    code = (
        "import sys, json\n"
        "before = set(sys.modules)\n"
        "import dtp\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    done = _fresh(code)
    assert done.returncode == 0, done.stderr
    new: list[str] = json.loads(done.stdout)
    assert [name for name in new if name.startswith("dtp")] == LOADED_WITH_DTP, new
    assert len(new) <= MAX_NEW_MODULES, new
    extras = {module for modules in EXTRAS.values() for module in modules}
    assert not [name for name in new if name.partition(".")[0] in extras], new


def test_the_face_on_the_base_install() -> None:
    """Without the extras: the base names work, and a name of an extra (SuiLedger, the
    sui extra's) says which extra to install when used, not when ``dtp`` is imported."""
    code = (
        "import dtp\n"
        "from dtp import LocalLedger, HostIdentity, Graph, create_connection, aio\n"
        "from dtp.errors import MissingExtra\n"
        "print(LocalLedger.__name__, HostIdentity.__name__, Graph.__name__)\n"
        "try:\n"
        "    dtp.SuiLedger\n"
        "except MissingExtra as exc:\n"
        "    print('extra', exc.extra)\n"
    )
    done = _fresh(code, no_extras=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["LocalLedger", "HostIdentity", "Graph", "extra", "sui"]


def test_the_blocking_face_lists_no_internals() -> None:
    """dtp.socket's __all__ is what applications use: the engine's tuning constants and
    the read helpers stay in the transport's modules."""
    import dtp.socket

    internals = {
        "DRAIN_QUIET",
        "FIRST_RECV_CHUNK",
        "LOSSY_LINGER",
        "READ_FIRST_SKIP",
        "RECV_CHUNK",
        "recv_into_target",
    }
    assert not internals & set(dtp.socket.__all__)
    assert not [name for name in internals if hasattr(dtp.socket, name)]
    for name in dtp.socket.__all__:
        assert getattr(dtp.socket, name) is not None, name


def test_the_upper_layers_hooks_are_not_public_on_the_streams() -> None:
    """A payment riding on a connection is set by the host-ID layer (dtp.hostid), not
    by applications: what the layers above use is behind one ``layer`` accessor on both
    drivers' streams, not among the members an application calls."""
    from dtp.aio import DTPStreamWriter
    from dtp.socket import DTPSocket
    from dtp.transport.asyncio._streams import ConnectionLayer as AsyncLayer
    from dtp.transport.blocking._socket import ConnectionLayer

    upper = {"hook", "set_hook", "start_timer", "check_live", "run_and_flush", "driver", "wake"}
    for cls, layer in ((DTPSocket, ConnectionLayer), (DTPStreamWriter, AsyncLayer)):
        assert isinstance(vars(cls)["layer"], property), cls
        names = {n for n in dir(cls) if not n.startswith("_")}
        assert not names & (upper | {"connection_hook", "connection_driver"}), cls
        assert not [n for n in names if "connection_hook" in n], cls
        assert upper - {"start_timer"} <= set(dir(layer)), layer
    assert "start_timer" in dir(ConnectionLayer)  # (an asyncio connection starts its own)
