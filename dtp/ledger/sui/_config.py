"""Where and how :class:`~dtp.ledger.sui.SuiLedger` reaches Sui: :class:`SuiConfig`, from
the ``DTP_SUI_*`` variables (:meth:`SuiConfig.from_env`) or from a node and a package
that a ledger spec named (:meth:`SuiConfig.for_node`, used by
:func:`dtp.ledger.open_ledger`; docs/sui.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from dtp.errors import ChainError, SuiConfigError, shown
from dtp.ledger._objects import U64_MAX, is_whole, normalize_id
from dtp.ledger._versions import PACKAGE_VERSION
from dtp.ledger.sui._client import parse_endpoint, positive_seconds

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity

__all__ = ["DEFAULT_GAS_BUDGET", "SuiConfig", "SuiConfigError"]

#: Default gas budget per transaction, in MIST (0.05 SUI).
DEFAULT_GAS_BUDGET: Final = 50_000_000


@dataclass(frozen=True, repr=False)
class SuiConfig:
    """Where and how ``SuiLedger`` reaches Sui. Holds no key material as text."""

    #: gRPC endpoint URL.
    rpc: str
    #: Published ``move/dtp`` package ID (the one calls go to).
    package: str
    #: The funded identity from ``DTP_SUI_KEY``, if any (see :attr:`SuiLedger.default_signer`).
    key: HostIdentity | None = None
    gas_budget: int = DEFAULT_GAS_BUDGET
    #: Seconds per node call.
    timeout: float = 30.0
    #: Seconds between polls in ``wait_events``.
    poll_interval: float = 1.0
    #: The package that defines the types (the original ID, after upgrades); ``package``
    #: when None.
    type_package: str | None = None
    #: Times a read that failed transiently is tried again (see :class:`SuiNode`).
    retries: int = 2
    #: The package's AdminCap (``dtp::version::AdminCap``), which migrates its objects
    #: after an upgrade (``Ledger.migrate``; docs/sui.md, "Upgrading the package"): what
    #: ``dtp deploy`` recorded, or ``DTP_SUI_ADMIN_CAP``. None: unknown here.
    admin_cap: str | None = None
    #: The version of the package ``package`` names (``version::VERSION`` of its code):
    #: the SDK's own by default, ``DTP_SUI_PACKAGE_VERSION`` for a package upgraded past
    #: it. What ``dtp migrate`` moves objects to.
    package_version: int = PACKAGE_VERSION

    def __post_init__(self) -> None:
        try:
            parse_endpoint(self.rpc)  # ValueError for a non-str too
        except ValueError as exc:
            raise SuiConfigError(f"DTP_SUI_RPC: {exc}.") from None
        self._normalize_id("package", "package ID", "DTP_SUI_PACKAGE")
        if self.type_package is not None:
            self._normalize_id("type_package", "package ID", "DTP_SUI_PACKAGE")
        if not is_whole(self.package_version, 1, U64_MAX):
            raise SuiConfigError(
                f"DTP_SUI_PACKAGE_VERSION: a package version is a positive integer, got "
                f"{shown(self.package_version)}."
            )
        if self.admin_cap is not None:
            self._normalize_id("admin_cap", "AdminCap ID", "DTP_SUI_ADMIN_CAP")
        # an int (not a bool), checked here: encode_u64 would refuse a float only in
        # each transaction, after the node was asked for gas; True would be 1 MIST
        if not is_whole(self.gas_budget, 1, U64_MAX):
            raise SuiConfigError(
                f"DTP_SUI_GAS_BUDGET: the gas budget must be a positive integer of MIST "
                f"below 2**64, got {shown(self.gas_budget)}."
            )
        # NaN never fires in asyncio.wait_for and infinity never ends: a silent node
        # would hang every call; zero or less fails every call at once; an int too large
        # for a float is refused by this error, not an OverflowError
        for value, what in (
            (self.timeout, "DTP_SUI_TIMEOUT"),
            (self.poll_interval, "poll_interval"),
        ):
            if not positive_seconds(value):
                raise SuiConfigError(
                    f"{what} must be a positive number of seconds, got {shown(value)}."
                )
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise SuiConfigError(
                f"DTP_SUI_RETRIES must be a non-negative integer, got {shown(self.retries)}."
            )

    def _normalize_id(self, name: str, what: str, variable: str) -> None:
        """The object ID in field ``name`` normalized in place; a malformed one is the
        error of the variable ``variable`` that gives it."""
        try:
            object.__setattr__(self, name, normalize_id(getattr(self, name), what))
        except ChainError as exc:
            raise SuiConfigError(f"{variable}: {exc}") from None

    def __repr__(self) -> str:
        key = self.key.sui_address if self.key is not None else None
        return f"SuiConfig(rpc={self.rpc!r}, package={self.package!r}, key_address={key!r})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SuiConfig:
        """From ``DTP_SUI_RPC``, ``DTP_SUI_PACKAGE`` and the optional ``DTP_SUI_KEY``,
        ``DTP_SUI_GAS_BUDGET``, ``DTP_SUI_TIMEOUT``, ``DTP_SUI_RETRIES``; raises
        :class:`SuiConfigError`."""
        env = os.environ if env is None else env
        rpc = env.get("DTP_SUI_RPC", "").strip()
        package = env.get("DTP_SUI_PACKAGE", "").strip()
        missing = [n for n, v in (("DTP_SUI_RPC", rpc), ("DTP_SUI_PACKAGE", package)) if not v]
        if missing:
            raise SuiConfigError(
                f"SuiLedger is not configured: set {' and '.join(missing)} (the gRPC endpoint "
                "of a Sui full node, e.g. https://fullnode.testnet.sui.io:443, and the ID of "
                "the published move/dtp package)."
            )
        return cls.for_node(rpc, package, env)

    @classmethod
    def for_node(cls, rpc: str, package: str, env: Mapping[str, str] | None = None) -> SuiConfig:
        """The node ``rpc`` and the package ``package``, with the optional ``DTP_SUI_KEY``,
        ``DTP_SUI_GAS_BUDGET``, ``DTP_SUI_TIMEOUT``, ``DTP_SUI_RETRIES``,
        ``DTP_SUI_ADMIN_CAP`` and ``DTP_SUI_PACKAGE_VERSION`` of ``env`` (``os.environ`` when
        None); raises :class:`SuiConfigError`."""
        env = os.environ if env is None else env
        key = None
        keystring = env.get("DTP_SUI_KEY", "").strip()
        if keystring:
            from dtp.identity.keys import HostIdentity

            try:
                key = HostIdentity.from_sui_keystring(keystring)
            except ValueError as exc:
                raise SuiConfigError(f"DTP_SUI_KEY is not a usable Sui key: {exc}.") from None
        try:
            budget = int(env.get("DTP_SUI_GAS_BUDGET", "") or DEFAULT_GAS_BUDGET)
            timeout = float(env.get("DTP_SUI_TIMEOUT", "") or 30.0)
            retries = int(env.get("DTP_SUI_RETRIES", "") or 2)
        except ValueError as exc:
            raise SuiConfigError(
                f"DTP_SUI_GAS_BUDGET / DTP_SUI_TIMEOUT / DTP_SUI_RETRIES: {exc}."
            ) from None
        admin_cap = env.get("DTP_SUI_ADMIN_CAP", "").strip() or None
        try:
            version = int(env.get("DTP_SUI_PACKAGE_VERSION", "") or PACKAGE_VERSION)
        except ValueError as exc:
            raise SuiConfigError(f"DTP_SUI_PACKAGE_VERSION: {exc}.") from None
        return cls(
            rpc,
            package,
            key,
            budget,
            timeout,
            retries=retries,
            admin_cap=admin_cap,
            package_version=version,
        )
