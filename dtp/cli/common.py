"""What the ledger commands (:mod:`dtp.cli.ledger`) and the funds commands
(:mod:`dtp.cli.funds`) share: their errors, the ledger, identity and address a command
line names, and how a result is printed.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from dtp.errors import LedgerSpecError
from dtp.extras import require
from dtp.ledger.objects import FirewallMode
from dtp.ledger.open import open_ledger
from dtp.ledger.spec import LedgerSpec, ledger_spec_from_env, parse_ledger_spec

__all__ = [
    "CliError",
    "UsageError",
    "address",
    "emit",
    "env_passphrase",
    "given_path",
    "identity",
    "identity_path",
    "ledger",
    "ledger_spec",
    "plain",
]

_T = TypeVar("_T")


def given_path(text: str | None, option: str, what: str = "a file") -> Path | None:
    """The path an option names (None when it was not given). An empty one is an error:
    ``--ledger-path "$UNSET"`` would otherwise act on the default file."""
    if text is None:
        return None
    if not text:
        raise CliError(f"{option} is empty: give {what}, or leave the option out.")
    return Path(text)


def identity_path(args: argparse.Namespace) -> Path:
    from dtp.identity.keys import default_identity_path

    return given_path(args.identity, "--identity") or default_identity_path()


def ledger_spec(args: argparse.Namespace) -> LedgerSpec:
    """The ledger spec of ``args``: ``--ledger``, ``--ledger-path`` (``local:PATH``),
    else ``$DTP_LEDGER``, else ``local``; checked, nothing opened."""
    ledger, path = getattr(args, "ledger", None), getattr(args, "ledger_path", None)
    if ledger is not None and path is not None:
        raise UsageError(
            "Give --ledger or --ledger-path, not both (--ledger-path PATH is --ledger local:PATH)."
        )
    given = given_path(path, "--ledger-path")
    if given is not None:
        return LedgerSpec(str(path), "--ledger-path", path=given)
    if ledger is not None:
        return parse_ledger_spec(ledger, setting="--ledger")
    return ledger_spec_from_env()


def _uses_sui_keys(args: argparse.Namespace) -> bool:
    """Whether a command signs with a Sui key rather than a DTP identity file: no
    ``--identity``, no default identity file, and a Sui ledger (docs/sui.md, "Signing
    keys"). Raises :class:`~dtp.errors.MissingExtra` naming the spec when it does and
    the sui extra (the keystore's reader among it) is not installed."""
    if args.identity is not None or os.path.lexists(identity_path(args)):
        return False
    spec = ledger_spec(args)
    if spec.is_sui:
        require("sui", f"{spec.setting}: {spec.describe()}")
    return spec.is_sui


def _sui_key() -> Any:
    """``$DTP_SUI_KEY``'s identity, else the Sui CLI keystore's active one."""
    keystring = os.environ.get("DTP_SUI_KEY", "").strip()
    if keystring:
        from dtp.identity.keys import HostIdentity

        try:
            return HostIdentity.from_sui_keystring(keystring)
        except ValueError as exc:
            raise LedgerSpecError(f"DTP_SUI_KEY is not a usable Sui key: {exc}.") from None
    from dtp.ledger.sui.keystore import keystore_identity

    return keystore_identity()


def address(args: argparse.Namespace) -> str:
    """The identity's Sui address, for commands that only read: on a Sui ledger without
    an identity file, ``$DTP_SUI_KEY``'s or the Sui CLI's active address (its key is
    not read)."""
    if _uses_sui_keys(args):
        if os.environ.get("DTP_SUI_KEY", "").strip():
            return str(_sui_key().sui_address)
        from dtp.ledger.sui.keystore import active_address

        return active_address()
    return str(identity(args).sui_address)


def identity(args: argparse.Namespace) -> Any:
    from dtp.errors import KeyFileError
    from dtp.identity.keys import HostIdentity

    if _uses_sui_keys(args):
        return _sui_key()
    passphrase = env_passphrase(args)
    try:
        return HostIdentity.load(identity_path(args), passphrase)
    except KeyFileError as exc:
        # The library cannot know where a command line takes its passphrase from: say it,
        # or the user is left to find --passphrase-env in --help.
        if passphrase is not None or not str(exc).endswith("a passphrase is required"):
            raise
        message = str(exc)
    raise KeyFileError(
        f"{message}: set ${args.passphrase_env} or name another variable with --passphrase-env"
    )


def ledger(args: argparse.Namespace, *, create: bool = True) -> Any:
    """The ledger of ``args`` (:func:`ledger_spec`); read-only commands, and those acting on an
    object that must already be on it (a host, an offer), pass ``create=False``, so that
    a mistyped LocalLedger path is an error rather than a new, empty ledger (left behind
    by a command that then failed with "No object with ID ...")."""
    spec = ledger_spec(args)
    if spec.path is None:
        ledger = open_ledger(spec, package=args.sui_package, package_setting="--sui-package")
        return _closed_after(args, ledger)
    if args.sui_package is not None:
        raise UsageError(
            f"--sui-package names a package on a Sui ledger; {spec.setting} names "
            f"{spec.describe()}."
        )
    if not create and not spec.path.exists():
        option = spec.setting if spec.setting in ("--ledger-path", "DTP_LEDGER") else "--ledger"
        raise CliError(
            f"No ledger at {spec.path}: check {option}, or create one with `dtp localnet faucet`."
        )
    from dtp.ledger.local import LocalLedger

    return _closed_after(args, LocalLedger(spec.path))


def _closed_after(args: argparse.Namespace, ledger: _T) -> _T:
    """``ledger``, to be closed once the command is done (``_run`` of
    :mod:`dtp.cli.ledger`): a SuiLedger keeps a thread, an event loop and a channel to its
    node until closed."""
    args.__dict__.setdefault("opened_ledgers", []).append(ledger)
    return ledger


class CliError(Exception):
    """A problem to report in one line, exiting with status 1."""


class UsageError(CliError):
    """A command line (or environment) that cannot be used as given: exit status 2."""


def env_passphrase(args: argparse.Namespace) -> str | None:
    """The identity passphrase the variable named by ``--passphrase-env`` holds
    (:func:`dtp.identity.keys.passphrase_from_env`: set but empty is a usage error)."""
    from dtp.identity.keys import passphrase_from_env

    try:
        return passphrase_from_env(args.passphrase_env)
    except ValueError as exc:
        raise UsageError(f"{exc}.") from None


def plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return plain(asdict(value))
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, FirewallMode):
        return value.name.lower().replace("_", "-")
    return value


def emit(args: argparse.Namespace, data: dict[str, Any]) -> None:
    data = plain(data)
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return
    for key, value in data.items():
        if isinstance(value, dict | list):
            value = json.dumps(value, sort_keys=True)
        print(f"{key.replace('_', ' ')}: {value}")
