"""Open the ledger a ledger spec names (docs/sui.md "Ledger specs"): the embedded
LocalLedger file or a Sui node. Apart from :mod:`dtp.ledger._spec`, which only reads specs,
so that LocalLedger can use the spec's default path without the two importing each other.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from dtp._extras import require
from dtp.ledger._spec import (
    LedgerSpec,
    ledger_spec_from_env,
    parse_ledger_spec,
    recorded_admin_cap,
    resolve_package,
)
from dtp.ledger.interface import Ledger

__all__ = ["open_ledger"]


def open_ledger(
    spec: str | LedgerSpec | None = None,
    *,
    package: str | None = None,
    package_setting: str = "package",
    setting: str = "ledger spec",
    create: bool = True,
    env: Mapping[str, str] | None = None,
) -> Ledger:
    """Open the ledger ``spec`` names (a string, or a :class:`LedgerSpec` already
    parsed); None: ``$DTP_LEDGER``, else ``local``.

    A LocalLedger file is created unless ``create`` is False (then a missing one is a
    :class:`LedgerSpecError`: a mistyped path must not become a new, empty ledger). A
    Sui ledger's package is resolved by :func:`resolve_package` (``package`` overrides
    ``$DTP_SUI_PACKAGE`` and the deploy records); its optional key, gas budget, timeout
    and retries come from ``DTP_SUI_KEY``, ``DTP_SUI_GAS_BUDGET``, ``DTP_SUI_TIMEOUT``
    and ``DTP_SUI_RETRIES`` (:meth:`~dtp.ledger.sui._config.SuiConfig.for_node`); opening
    it does no I/O (the first call reaches the node). ``setting`` names a string
    ``spec`` in errors. Raises :class:`LedgerSpecError` (or the ``SuiConfigError`` of
    a ``DTP_SUI_*`` setting) before anything is opened, and
    :class:`~dtp.errors.MissingExtra` for a Sui spec when the ``sui`` extra is not
    installed."""
    env = os.environ if env is None else env
    if spec is None:
        parsed = ledger_spec_from_env(env)
    elif isinstance(spec, LedgerSpec):
        parsed = spec
    else:
        parsed = parse_ledger_spec(spec, setting=setting, env=env)
    if parsed.path is not None:
        if not create and not parsed.path.exists():
            raise parsed.error(f"no ledger file at {parsed.path}")
        from dtp.ledger.local import LocalLedger

        return LocalLedger(parsed.path)
    assert parsed.node is not None
    # before the package is resolved: "run `dtp deploy`" would send a user without
    # pysui the wrong way
    require("sui", f"{parsed.setting}: {parsed.describe()}")
    package_id = resolve_package(parsed, package, package_setting=package_setting, env=env)
    from dtp.ledger.sui import SuiLedger
    from dtp.ledger.sui._config import SuiConfig

    config = SuiConfig.for_node(parsed.node, package_id, env)
    if config.admin_cap is None:
        admin_cap = recorded_admin_cap(parsed, config.package, env)
        config = dataclasses.replace(config, admin_cap=admin_cap)
    return SuiLedger(config)
