"""What the ledger commands (:mod:`dtp.cli._ledger`) and the funds commands
(:mod:`dtp.cli._funds`) share: their errors, the ledger, identity and address a command
line names, and how a result is printed.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final, TypeVar

from dtp._extras import require
from dtp.errors import LedgerSpecError
from dtp.ledger._objects import FirewallMode
from dtp.ledger._open import open_ledger
from dtp.ledger._spec import LedgerSpec, ledger_spec_from_env, parse_ledger_spec

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "FIREWALL_MODES",
    "CliError",
    "UsageError",
    "add_json",
    "address",
    "amount",
    "duration",
    "emit",
    "env_passphrase",
    "error_kind",
    "error_line",
    "firewall_mode",
    "firewall_mode_name",
    "given_path",
    "identity",
    "identity_path",
    "ledger",
    "ledger_spec",
    "plain",
    "print_error",
]

_T = TypeVar("_T")

# -- the vocabulary every command shares (docs/cli.md "Exit status", "Values") ---------

#: Exit statuses (docs/cli.md): done; the command ran and failed (a ledger's refusal, a
#: node out of reach, a file that cannot be read); the command line, a config file or
#: the environment cannot be used as given (nothing was done); stopped by Ctrl-C.
EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

#: The firewall modes by their one name, as the daemon's ``[firewall] mode`` spells
#: them; ``host set --firewall`` and ``host show`` use the same words.
FIREWALL_MODES: Final = {"open": FirewallMode.ALLOW_ALL, "allowlist": FirewallMode.ALLOW_LISTED}
#: Older spellings ``host set --firewall`` still takes (docs/cli.md, deprecated).
_FIREWALL_ALIASES: Final = {"allow-all": "open", "allow-listed": "allowlist"}

_MIST_PER_SUI: Final = 1_000_000_000
_DURATION_UNITS: Final = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}


def firewall_mode(text: str) -> FirewallMode:
    """A ``--firewall`` (argparse type): ``open`` or ``allowlist`` (the old ``allow-all``
    and ``allow-listed`` too)."""
    name = _FIREWALL_ALIASES.get(text, text)
    if name not in FIREWALL_MODES:
        raise argparse.ArgumentTypeError(f"expected open or allowlist, got {text!r}")
    return FIREWALL_MODES[name]


def firewall_mode_name(mode: int) -> str:
    """``open`` or ``allowlist`` for a ledger's mode number."""
    for name, value in FIREWALL_MODES.items():
        if value == mode:
            return name
    return str(mode)


def amount(text: str) -> int:
    """An amount of SUI (argparse type), in MIST: ``1500``, ``1500mist`` or ``1.5sui``
    (exact: a SUI amount finer than a MIST is refused). The range is the command's to
    check (each says which option, in the ledger's words)."""
    raw = text.strip().lower().replace("_", "")
    try:
        if raw.endswith("sui"):
            try:
                mist = Decimal(raw[:-3].strip()) * _MIST_PER_SUI
            except InvalidOperation:
                raise ValueError(text) from None
            if not mist.is_finite() or mist != mist.to_integral_value():
                raise ValueError(text)
            return int(mist)
        return int(raw.removesuffix("mist").strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an amount in MIST (1500, 1500mist) or SUI (1.5sui), got {text!r}"
        ) from None


def duration(unit: str, *, whole: bool = False) -> Any:
    """A duration's argparse type: a number in ``unit`` (``"s"`` or ``"ms"``), or one with
    its own unit (``1500ms``, ``90s``, ``5m``, ``2h``, ``7d``), as a number of ``unit``;
    from 0.
    ``whole``: an integer of ``unit`` (a ledger's milliseconds), its range the command's
    to check, in the ledger's words, as for amounts."""

    def parse(text: str) -> float:
        raw = text.strip().lower()
        number, scale = raw, 1.0
        for suffix in sorted(_DURATION_UNITS, key=len, reverse=True):
            if raw.endswith(suffix) and raw[: -len(suffix)].strip():
                number = raw[: -len(suffix)].strip()
                scale = _DURATION_UNITS[suffix] / _DURATION_UNITS[unit]
                break
        if whole:
            try:
                exact = Decimal(number) * Decimal(str(scale))
            except InvalidOperation:
                exact = Decimal("NaN")
            if exact.is_finite() and exact == exact.to_integral_value():
                return int(exact)
            raise argparse.ArgumentTypeError(
                f"expected a whole number of {_UNIT_WORDS[unit]} or a duration with its "
                f"unit (1500ms, 90s, 5m, 2h, 7d), got {text!r}"
            )
        try:
            value = float(number) * scale
        except ValueError:
            value = -1.0
        if not 0 <= value < float("inf"):  # (nan, inf and negatives)
            raise argparse.ArgumentTypeError(
                f"expected a duration from 0: a number of {_UNIT_WORDS[unit]} or one with "
                f"its unit (1500ms, 90s, 5m, 2h, 7d), got {text!r}"
            )
        return value

    parse.__name__ = "duration"  # (argparse names the type in its errors)
    return parse


_UNIT_WORDS: Final = {"s": "seconds", "ms": "milliseconds"}


def add_json(parser: argparse.ArgumentParser, what: str = "machine-readable output") -> None:
    """``--json``, the one spelling of machine-readable output."""
    parser.add_argument("--json", action="store_true", help=what)


def error_line(exc: BaseException) -> str:
    """An error as the one line a command prints after ``dtp:`` (or ``dtp COMMAND:``):
    its message (an OSError by its strerror and file name)."""
    if isinstance(exc, OSError) and not isinstance(exc, CliError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc) or type(exc).__name__


def error_kind(exc: BaseException) -> str:
    """What ``--json`` names an error by: the class of a typed error of
    :mod:`dtp.errors` (``ObjectNotFound``, ``LedgerSpecError``...), ``UsageError`` or
    ``CommandError`` for the command line's own, else the exception's class."""
    if isinstance(exc, UsageError):
        return "UsageError"
    if isinstance(exc, CliError):
        return "CommandError"
    return type(exc).__name__


def print_error(exc: BaseException, status: int, *, as_json: bool, command: str = "") -> int:
    """Print ``exc`` as one line on stderr and return ``status``: ``dtp: MESSAGE`` (``dtp
    COMMAND: MESSAGE``), or with ``--json`` one JSON object, ``{"error": KIND, "message":
    MESSAGE, "exit_status": STATUS}`` (:func:`error_kind`), for scripts that branch on
    the kind of failure."""
    from dtp.daemon._reporting import report

    return report(command, status, error_line(exc), as_json=as_json, kind=error_kind(exc))


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
    from dtp.ledger.sui._keystore import keystore_identity

    return keystore_identity()


def address(args: argparse.Namespace) -> str:
    """The identity's Sui address, for commands that only read: on a Sui ledger without
    an identity file, ``$DTP_SUI_KEY``'s or the Sui CLI's active address (its key is
    not read)."""
    if _uses_sui_keys(args):
        if os.environ.get("DTP_SUI_KEY", "").strip():
            return str(_sui_key().sui_address)
        from dtp.ledger.sui._keystore import active_address

        return active_address()
    return str(identity(args).sui_address)


def identity(args: argparse.Namespace) -> Any:
    """The key a command signs with: the identity file's (:func:`identity_file`), or on
    a Sui ledger without one the Sui key's (docs/sui.md, "Signing keys")."""
    if _uses_sui_keys(args):
        return _sui_key()
    return identity_file(args)


def identity_file(args: argparse.Namespace) -> Any:
    """The DTP identity in ``--identity`` (else the default file), whatever the ledger:
    a missing file is an error naming it."""
    from dtp.errors import KeyFileError
    from dtp.identity.keys import HostIdentity

    passphrase = env_passphrase(args)
    try:
        if passphrase is None:
            return HostIdentity.load(identity_path(args), passphrase)
        from dtp.cli._progress import progress

        with progress("decrypting the identity"):  # (a slow KDF, on purpose)
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
    package = getattr(args, "sui_package", None)  # (the localnet commands take none)
    if spec.path is None:
        ledger = open_ledger(spec, package=package, package_setting="--sui-package")
        return _closed_after(args, ledger)
    if package is not None:
        raise UsageError(
            f"--sui-package names a package on a Sui ledger; {spec.setting} names "
            f"{spec.describe()}."
        )
    if not create and not spec.path.exists():
        option = spec.setting if spec.setting in ("--ledger-path", "DTP_LEDGER") else "--ledger"
        raise CliError(
            f"No ledger at {spec.path}: check {option}, or create one with `dtp localnet faucet`."
        )
    if not spec.path.exists():
        from dtp.daemon._paths import under_a_file

        blocked = under_a_file(spec.path)
        if blocked is not None:
            raise CliError(f"{blocked}; check {spec.setting}.")
    from dtp.ledger.local import LocalLedger

    return _closed_after(args, LocalLedger(spec.path))


def _closed_after(args: argparse.Namespace, ledger: _T) -> _T:
    """``ledger``, to be closed once the command is done (``_run`` of
    :mod:`dtp.cli._ledger`): a SuiLedger keeps a thread, an event loop and a channel to its
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
        # field by field, not asdict(): that deep-copies what is not a dict, list or
        # tuple, and a read-only mapping (a Host's services) cannot be copied
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, FirewallMode):
        return firewall_mode_name(value)
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
