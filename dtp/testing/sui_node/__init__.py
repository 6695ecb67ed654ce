"""A stand-in Sui full node for tests (docs/sui.md, "The node stand-in"; docs/testing.md):
it speaks Sui's gRPC API (``sui.rpc.v2`` over
HTTP/2, pysui's generated messages) and executes the dtp package's transactions with
LocalLedger's own rule code, so that SuiLedger, the daemon and the ``dtp`` command run end
to end on a machine where no Sui node can.

It is a stand-in, not Sui: it checks and executes transactions as a full node does for
the commands dtp builds (SplitCoins from the gas coin, TransferObjects, MoveCall of the
package's functions), keeps Sui's object model (IDs, Lamport versions, digests, owners,
``Coin<SUI>`` objects, dynamic fields) and charges gas by a simple, exact formula; it
compiles no Move. That SuiLedger works on a real network is shown only on a real node
(tests/ledger/test_sui_transactions.py's live tests with DTP_SUI_RPC, DTP_SUI_PACKAGE, DTP_SUI_KEY).

In a test::

    with SuiNodeStandIn() as node:
        node.faucet(identity.sui_address, 10**9)
        ledger = SuiLedger(SuiConfig(node.url, node.package_id))

As a process of its own (two daemons in two network namespaces, or on two machines,
can share it: ``--host 0.0.0.0``, and each names one of the URLs its ready line lists)::

    python -m dtp.testing.sui_node --port 0 --state DIR --fund 0x…=10000000000
    python -m dtp.testing.sui_node fund http://127.0.0.1:9123/v2/gas 0x…=5000000000

It speaks pysui's generated messages: it needs the ``sui`` extra (``pip install
'dtp-sui[sui,testing]'`` for it and the rest of :mod:`dtp.testing`).
"""

import sys

from dtp._extras import missing

try:  # first: without the sui extra, one error naming it (and no half-imported package)
    import pysui  # noqa: F401
except ImportError as exc:
    error = missing("sui", "The Sui node stand-in", exc)
    if sys.argv[:1] == ["-m"]:
        # `python -m dtp.testing.sui_node` imports this package before its __main__ can
        # catch anything (argv[0] is "-m" meanwhile): one line there too, not a traceback
        raise SystemExit(f"python -m dtp.testing.sui_node: {error}") from None
    raise error from None

from dtp.testing.sui_node._faucet import DEFAULT_AMOUNT, FaucetError, request_funds
from dtp.testing.sui_node._server import (
    DEFAULT_PACKAGE,
    SuiNodeStandIn,
    client_url,
    listening_addresses,
)
from dtp.testing.sui_node._state import DAY_MS

__all__ = [
    "DAY_MS",
    "DEFAULT_AMOUNT",
    "DEFAULT_PACKAGE",
    "FaucetError",
    "SuiNodeStandIn",
    "client_url",
    "listening_addresses",
    "request_funds",
]
