"""SuiLedger: the :class:`~dtp.ledger.interface.Ledger` interface on a real Sui network.

Every state-changing method reads the object references it needs from a full node
(shared objects' initial shared versions, once per object; owned objects' versions and
digests), leases gas coins from the signer's pool (:mod:`dtp.ledger.sui._gas`; the
reference gas price is read once an epoch), builds the programmable transaction offline
(:mod:`dtp.ledger.sui._tx`), signs it with ``signer.sign_transaction`` and executes it over
gRPC (:mod:`dtp.ledger.sui._client`). Results come from the effects (created objects by
type) and the events (amounts, sequence numbers; :mod:`dtp.ledger.sui._effects`); Move
aborts become the same :class:`~dtp.errors.ChainError` subclasses as in ``LocalLedger``,
through ``dtp.errors.move_error_from_abort_code``. Threads may share a ledger: their
transactions run side by side, each with gas coins of its own.

Differences from ``LocalLedger`` that callers see: gas is paid from the signer's SUI coins
on top of deposits (``SuiLedger.last_outcome.gas_cost`` tells how much, per thread;
:meth:`SuiLedger.gas_balance` what is left); clock and epochs are the network's; event
cursors are opaque hex strings of ``ListEvents`` watermarks; a transaction Sui's
congestion control cancels is sent again, then :class:`SharedObjectCongestion`.

Configuration (:class:`~dtp.ledger.sui._config.SuiConfig`): a ledger spec through
:func:`dtp.ledger.open_ledger` (``testnet``, ``localnet@http://127.0.0.1:9000``...;
docs/sui.md), or :meth:`SuiLedger.from_env`: ``DTP_SUI_RPC`` (gRPC endpoint,
``https://fullnode.testnet.sui.io:443`` or ``http://127.0.0.1:9000``), ``DTP_SUI_PACKAGE``
(the published ``move/dtp`` package ID) and optionally ``DTP_SUI_KEY`` (a Sui keystring of
a funded Ed25519 key, exposed as :attr:`SuiLedger.default_signer`; kept in memory only),
``DTP_SUI_GAS_BUDGET`` (MIST per transaction) and ``DTP_SUI_TIMEOUT`` (seconds per call).
"""

from __future__ import annotations

from collections.abc import Mapping

from dtp._extras import missing

try:  # first: without the sui extra, one error naming it (and no half-imported package)
    import pysui  # noqa: F401
except ImportError as exc:
    raise missing("sui", "A Sui ledger", exc) from None

from dtp.errors import SuiConfigError
from dtp.ledger.sui._calls import SuiCalls
from dtp.ledger.sui._calls_apps import SuiAppCalls
from dtp.ledger.sui._calls_deletion import DeletionCalls
from dtp.ledger.sui._calls_versions import VersionCalls
from dtp.ledger.sui._client import LedgerUnavailable, SharedObjectCongestion
from dtp.ledger.sui._codec import MESSAGING_EVENT_LAYOUTS, RESPONSE_ESCROW_LAYOUT
from dtp.ledger.sui._config import DEFAULT_GAS_BUDGET, SuiConfig
from dtp.ledger.sui._effects import (
    MissingEvent,
    TxOutcome,
    event_from_proto,
    execution_error,
    parse_executed,
)
from dtp.ledger.sui._gas import MAX_GAS_COINS
from dtp.ledger.sui._ledger import OBJECT_TYPES, SuiLedgerCore

__all__ = [
    "DEFAULT_GAS_BUDGET",
    "MAX_GAS_COINS",
    "MESSAGING_EVENT_LAYOUTS",
    "OBJECT_TYPES",
    "RESPONSE_ESCROW_LAYOUT",
    "LedgerUnavailable",
    "MissingEvent",
    "SharedObjectCongestion",
    "SuiConfig",
    "SuiConfigError",
    "SuiLedger",
    "TxOutcome",
    "event_from_proto",
    "execution_error",
    "parse_executed",
]


class SuiLedger(
    VersionCalls,
    DeletionCalls,
    SuiAppCalls,
    SuiCalls,
    SuiLedgerCore,
):
    """The ledger on a Sui network (see the module docs)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SuiLedger:
        """A ledger configured by ``DTP_SUI_*`` variables (see :meth:`SuiConfig.from_env`)."""
        return cls(SuiConfig.from_env(env))
