"""DTP for Python: TCP-like, end-to-end encrypted connections between hosts named by
Sui object IDs, with an on-chain firewall, fees in escrow, messaging and a replicated
graph store.

The names most programs need import from here (:data:`__all__`)::

    import dtp

    server_id = dtp.HostIdentity.generate()
    with dtp.create_server(("127.0.0.1", 0), identity=server_id) as server:
        ...
    with dtp.create_connection(server.address, server_key=server.noise_public_key) as sock:
        sock.sendall(b"hello")

- ``create_connection``, ``create_server``, ``serve``: blocking connections, by address
  or by host ID (``dtp://0x<host id>:<port>``), from :mod:`dtp.socket`; :mod:`dtp.aio`
  is the asyncio twin (``open_connection``, ``start_server``, ``serve``);
- ``HostIdentity``: a host's or client's Sui (Ed25519) and Noise (X25519) keys;
- ``Ledger`` (the interface), ``LocalLedger`` (embedded, SQLite), ``SuiLedger`` (a Sui
  node; the ``sui`` extra), ``open_ledger`` (either, from a ledger spec: ``"local"``,
  ``"testnet"``...), ``Sla`` (a service's terms);
- ``Meter``, ``Receipt``, ``MeteringConfig``: per-byte and per-request fees;
- ``Graph`` (the replicated graph), ``RpcClient`` and ``RpcServer`` (RPC over DTP);
- :mod:`dtp.errors` (every exception the package raises) and the ones most code
  catches: ``DTPError`` (the base), ``ConnectionRefused``, ``HandshakeError``,
  ``ConnectionLost``, ``ConnectionClosed``, ``DTPTimeoutError``, ``ChainError``,
  ``PaymentError``.

Each is imported on first use (PEP 562), so ``import dtp`` loads no other module (the
``dtp`` command starts fast) and works on the base install: a name of an extra that is
not installed (``SuiLedger``) raises :class:`~dtp.errors.MissingExtra` when used.

The rest is in the layer folders (docs/architecture.md): ``dtp.messaging`` (pub/sub,
sealed messages, broadcast, discovery on the ledger), ``dtp.graph`` (sync, the Gun
peer), ``dtp.discovery.lan`` (mDNS), ``dtp.hostid.udp`` (UDP through DTP),
``dtp.payments`` (metering, settlement, the receipt store), ``dtp.daemon``. The public
module paths of earlier versions import until 0.3.0 with a ``DeprecationWarning``; the
private ones are gone (CHANGES.md has the table, old to new; :mod:`dtp._retired`).
"""

from __future__ import annotations

# typing.TYPE_CHECKING without importing typing, which would cost ``import dtp`` more than
# everything else it does (type checkers take any name TYPE_CHECKING as true)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from dtp import aio as aio
    from dtp import errors as errors
    from dtp import socket as socket
    from dtp.errors import (
        ChainError,
        ConnectionClosed,
        ConnectionLost,
        ConnectionRefused,
        DTPError,
        DTPTimeoutError,
        HandshakeError,
        PaymentError,
    )
    from dtp.graph import Graph
    from dtp.identity.keys import HostIdentity
    from dtp.ledger._objects import Sla
    from dtp.ledger._open import open_ledger
    from dtp.ledger.interface import Ledger
    from dtp.ledger.local import LocalLedger
    from dtp.ledger.sui import SuiLedger
    from dtp.messaging.rpc import RpcClient, RpcServer
    from dtp.payments.metering import MeteringConfig
    from dtp.payments.receipts import Meter, Receipt
    from dtp.socket import create_connection, create_server, serve

__version__ = "0.1.0"

# the public module paths of 0.0.x import, with a DeprecationWarning, until 0.3.0
from dtp import _retired  # noqa: E402

_retired.install()

# Where each name of the face is defined: a module's path, or None for a submodule of
# the package itself. Read by __getattr__; tests/project/test_public_face.py pins it.
_FACE: dict[str, str | None] = {
    "aio": None,
    "errors": None,
    "socket": None,
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
    "ChainError": "dtp.errors",
    "ConnectionClosed": "dtp.errors",
    "ConnectionLost": "dtp.errors",
    "ConnectionRefused": "dtp.errors",
    "DTPError": "dtp.errors",
    "DTPTimeoutError": "dtp.errors",
    "HandshakeError": "dtp.errors",
    "PaymentError": "dtp.errors",
}

__all__ = [
    "ChainError",
    "ConnectionClosed",
    "ConnectionLost",
    "ConnectionRefused",
    "DTPError",
    "DTPTimeoutError",
    "Graph",
    "HandshakeError",
    "HostIdentity",
    "Ledger",
    "LocalLedger",
    "Meter",
    "MeteringConfig",
    "PaymentError",
    "Receipt",
    "RpcClient",
    "RpcServer",
    "Sla",
    "SuiLedger",
    "__version__",
    "aio",
    "create_connection",
    "create_server",
    "errors",
    "open_ledger",
    "serve",
    "socket",
]


def __getattr__(name: str) -> Any:
    """A name of the face, imported from its module on first use and kept here."""
    if name not in _FACE:
        raise AttributeError(f"module 'dtp' has no attribute {name!r}")
    import importlib  # (here: import dtp itself imports nothing)

    where = _FACE[name]
    if where is None:
        value: Any = importlib.import_module(f"dtp.{name}")
    else:
        value = getattr(importlib.import_module(where), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
