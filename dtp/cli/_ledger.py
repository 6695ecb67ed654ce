"""``dtp keys|localnet|host|service|subscription|deploy``: the chain commands of the
``dtp`` CLI (``service subscription|sponsor|retention`` publish the payment models of
docs/escrow.md §13-16, ``service retire-retention`` takes retention terms back;
``balance``, ``connections``, ``refund`` and ``claim`` live in :mod:`dtp.cli._funds`).

:func:`register` adds them to the ``dtp`` command's subparsers. The options they share
(the ledger spec, :mod:`dtp.ledger._spec`; the package, the identity, its passphrase's
variable, ``--json``), and which command takes which: docs/cli.md, "Options every
chain command takes", and :func:`_common`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar

from dtp.cli._common import EXIT_FAILURE, EXIT_USAGE
from dtp.cli._common import CliError as _CliError
from dtp.cli._common import UsageError as _UsageError
from dtp.cli._common import amount as _amount
from dtp.cli._common import duration as _duration
from dtp.cli._common import emit as _emit
from dtp.cli._common import env_passphrase as _env_passphrase
from dtp.cli._common import firewall_mode as _firewall_mode
from dtp.cli._common import given_path as _given_path
from dtp.cli._common import identity as _identity
from dtp.cli._common import identity_file as _identity_file
from dtp.cli._common import identity_path as _identity_path
from dtp.cli._common import ledger as _ledger
from dtp.cli._common import ledger_spec as _spec
from dtp.cli._common import plain as _plain
from dtp.cli._common import print_error as _print_error
from dtp.cli._progress import progress
from dtp.errors import DTPError, LedgerSpecError, ObjectNotFound, move_error
from dtp.identity._files import write_durably
from dtp.ledger._economics import DEFAULT_SPONSOR_LANES
from dtp.ledger._objects import (
    HALF_CLOSE_TIMEOUT_MS,
    MAX_ENDPOINT_LENGTH,
    MAX_ENDPOINTS,
    Service,
    Sla,
    as_bytes_list,
    check_half_close_timeout,
    is_low_order_noise_key,
    normalize_id,
)
from dtp.ledger._spec import deployments_path, read_deployments

__all__ = ["SUI_INSTALL_HINT", "EnvNameGiven", "register", "unset_passphrase_env"]

#: The one sentence printed when ``sui`` is missing.
SUI_INSTALL_HINT: Final = (
    "The Sui CLI (`sui`) was not found: install it as described at "
    "https://docs.sui.io/guides/developer/getting-started/sui-install "
    "(for example `brew install sui` or `cargo install --locked --git "
    "https://github.com/MystenLabs/sui.git sui`) or pass --sui-bin PATH."
)
_DEFAULT_FAUCET: Final = 10_000_000_000  # 10 SUI
#: What to do on Sui instead of each ``dtp localnet`` command.
_ON_SUI: Final = {
    "status": "read the network's state with `sui client` or an explorer (dtp balance, "
    "dtp host show and dtp connections work there)",
    "faucet": "fund an address with `dtp fund`, which asks the network's faucet",
    "advance-epoch": "epochs end on the network's schedule (about a day)",
    "advance-clock": "the clock is the network's",
}
#: The default ``--passphrase-env``: the variable holding the identity passphrase.
_PASSPHRASE_ENV: Final = "DTP_PASSPHRASE"
_NETWORKS: Final = ("localnet", "devnet", "testnet", "mainnet")

Handler = Callable[[argparse.Namespace], int]
_T = TypeVar("_T")


# -- helpers ------------------------------------------------------------------


def _common(
    *, ledger: bool = True, package: bool = True, identity: bool = True
) -> argparse.ArgumentParser:
    """The options the chain commands share, as a parent parser: ``ledger``,
    ``--ledger`` and ``--ledger-path``; ``package``, ``--sui-package``; ``identity``,
    ``--identity`` and ``--passphrase-env``; ``--json`` always. A command takes only
    those it uses: one taken and ignored lets a user believe it acted on that ledger
    or key."""
    parent = argparse.ArgumentParser(add_help=False)
    if ledger:
        parent.add_argument(
            "--ledger",
            metavar="SPEC",
            help="the ledger: local (the embedded one, $XDG_DATA_HOME/dtp/localnet.sqlite), "
            "local:PATH, localnet, devnet, testnet, mainnet, NETWORK@URL or sui:URL (default "
            "$DTP_LEDGER, else local; docs/sui.md)",
        )
        parent.add_argument("--ledger-path", metavar="PATH", help="the same as --ledger local:PATH")
    if package:
        parent.add_argument(
            "--sui-package",
            metavar="ID",
            help="the dtp package on a Sui ledger (default $DTP_SUI_PACKAGE, else the one "
            "`dtp deploy` recorded for the network)",
        )
    if identity:
        parent.add_argument(
            "--identity",
            help="identity file (default $XDG_DATA_HOME/dtp/identity.json, "
            "~/.local/share/dtp/identity.json when it is unset)",
        )
        parent.add_argument(
            "--passphrase-env",
            default=_PASSPHRASE_ENV,
            type=_parse_env_name,
            action=EnvNameGiven,
            help="environment variable holding the identity passphrase (default DTP_PASSPHRASE)",
        )
    parent.add_argument("--json", action="store_true", help="machine-readable output")
    return parent


class EnvNameGiven(argparse.Action):
    """Stores a ``--passphrase-env`` and records that it was given (``env_name_given``):
    ``keys new`` (and ``dtp daemon``'s first start) then takes the variable unset as an
    error, where the default one unset means an unencrypted identity
    (:func:`unset_passphrase_env`)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        namespace.env_name_given = True


def unset_passphrase_env(args: argparse.Namespace) -> str | None:
    """The error, one line, for a command about to write a new identity when
    ``--passphrase-env`` was given (:class:`EnvNameGiven`) and names a variable that is
    not set; None when the variable is set or the option was left out (the default
    variable unset: an unencrypted identity, as documented). Shared by ``keys new`` and
    ``dtp daemon``, so that the rule and its words are the same."""
    if not getattr(args, "env_name_given", False) or args.passphrase_env in os.environ:
        return None
    # the user named where the passphrase is: writing the secret key unencrypted
    # instead, with nothing said, is the one outcome they did not ask for
    return (
        f"--passphrase-env names ${args.passphrase_env}, which is not set: set it to the "
        f"new identity's passphrase, or leave the option out (with ${_PASSPHRASE_ENV} "
        "unset) for an unencrypted identity."
    )


def _local_only(args: argparse.Namespace, what: str) -> None:
    """Refuse a command of the embedded ledger alone on a Sui spec, in one sentence."""
    spec = _spec(args)
    if spec.is_sui:
        raise _UsageError(
            f"`dtp localnet {what}` works on the embedded ledger only, and {spec.setting} "
            f"names {spec.describe()}: on Sui, {_ON_SUI[what]}."
        )


def _run(handler: Handler) -> Handler:
    def wrapped(args: argparse.Namespace) -> int:
        try:
            try:
                return handler(args)
            finally:
                for ledger in args.__dict__.pop("opened_ledgers", []):
                    ledger.close()
        except (_UsageError, LedgerSpecError) as exc:
            # (a ledger spec, package or key setting: the command line or environment
            # cannot be used as given)
            return _print_error(exc, EXIT_USAGE, as_json=args.json)
        except (_CliError, DTPError) as exc:
            return _print_error(exc, EXIT_FAILURE, as_json=args.json)
        except BrokenPipeError:
            # the reader of stdout went away (`dtp host show ID | head -1`): dtp's main
            # stops quietly (exit 141), as for its other commands; as an OSError below it
            # printed "dtp: Broken pipe" and exited 1
            raise
        except OSError as exc:  # a file the command reads or writes
            return _print_error(exc, EXIT_FAILURE, as_json=args.json)

    return wrapped


def _check_u64(value: int, option: str) -> None:
    """Refuse an ``option`` value no ledger takes (MIST, a count: a u64), in the ledger's
    words, for commands that check it before their first transaction (the ledger itself
    checks it only in the transaction that uses it, after the earlier ones were done)."""
    if not 0 <= value < 2**64:
        raise _CliError(f"{option} must be an integer from 0 to 2**64-1, got {value}.")


def _parse_hex32(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raise argparse.ArgumentTypeError("expected 32 bytes as 64 hex digits") from None
    if len(raw) != 32:
        raise argparse.ArgumentTypeError("expected 32 bytes as 64 hex digits")
    return raw


def _parse_env_name(text: str) -> str:
    """A ``--passphrase-env``: an empty name (``"$UNSET"``) reads no passphrase, so
    ``keys new`` wrote the new secret key unencrypted, with nothing said."""
    if not text:
        raise argparse.ArgumentTypeError("is empty: name an environment variable")
    return text


def _parse_kind(text: str) -> str:
    """A ``--kind``: the daemon's config needs a non-empty service kind, so an empty one
    (``"$UNSET"``) would publish a service no daemon can be configured to serve."""
    if not text:
        raise argparse.ArgumentTypeError("is empty: name a service kind (default raw)")
    return text


def _parse_gas_budget(text: str) -> int:
    """A ``--gas-budget``: MIST, a u64 above zero (``sui client publish`` refuses any
    other, after the build, in its own words)."""
    try:
        value = _amount(text)
    except argparse.ArgumentTypeError:
        value = 0
    if not 0 < value < 2**64:
        raise argparse.ArgumentTypeError(
            f"expected an integer from 1 to 2**64-1 (MIST), got {text!r}"
        )
    return value


def _parse_endpoint(text: str) -> str:
    """An ``--endpoint`` as published. A TCP one (``host:port``, ``[v6]:port`` or
    ``tcp://host:port``) must be one clients can read: they skip what
    :func:`dtp.hostid._connect.tcp_endpoints` cannot parse (no port, a port beyond 65535), so a
    typo would publish a host nobody reaches. Other schemes are other carriers' and pass."""
    from dtp.hostid._connect import tcp_endpoint

    # the ledger's limit, checked here: `host set` refused it in the endpoints'
    # transaction, after its noise key change was done (surrogatepass: text that is not
    # UTF-8 is the ledger's to refuse, in its words)
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_ENDPOINT_LENGTH:
        raise argparse.ArgumentTypeError(
            f"an endpoint is at most {MAX_ENDPOINT_LENGTH} bytes, got {size}"
        )
    scheme, sep, _ = text.strip().partition("://")
    if sep and scheme.lower() != "tcp":
        return text
    if tcp_endpoint(text) is None:
        raise argparse.ArgumentTypeError(
            f"expected host:port with a port in 0..65535 ([v6]:port for IPv6), got {text!r}"
        )
    return text


# -- keys ------------------------------------------------------------------


def _keys_new(args: argparse.Namespace) -> int:
    from dtp.identity.keys import HostIdentity

    path = _identity_path(args)
    if path.is_dir():
        # (--force cannot replace a folder: saying "pass --force" sent the user round)
        raise _CliError(f"{path} is a directory: --identity names the identity file to write.")
    if not args.force and os.path.lexists(path):
        # said here in the CLI's words (HostIdentity.save names its Python argument)
        raise _CliError(f"{path} already exists; pass --force to replace it.")
    from dtp.daemon._paths import under_a_file

    blocked = under_a_file(path)
    if blocked is not None:
        raise _CliError(f"{blocked}; check --identity.")
    passphrase = _env_passphrase(args)
    unset = unset_passphrase_env(args)
    if unset is not None:
        raise _UsageError(unset)
    identity = HostIdentity.generate()
    try:
        # (a passphrase is stretched by a slow KDF: a second or more)
        with progress("encrypting the new identity") if passphrase else nullcontext():
            identity.save(path, passphrase, overwrite=args.force)
    except ValueError as exc:
        # a passphrase the environment holds as bytes that are not UTF-8 (os.environ
        # gives them as lone surrogates): a traceback before
        raise _CliError(f"${args.passphrase_env} cannot be used as a passphrase: {exc}") from None
    _emit(
        args,
        {
            "identity": str(path),
            "sui_address": identity.sui_address,
            "noise_public": identity.noise_public.hex(),
        },
    )
    return 0


def _keys_show(args: argparse.Namespace) -> int:
    # the identity file's keys, even where a Sui ledger signs with the Sui keystore's
    # key without one: printed under the file's path, that key passed for the file's
    path = _identity_path(args)
    if not os.path.lexists(path):
        from dtp.errors import KeyFileError, LedgerSpecError

        try:
            on_sui = _spec(args).is_sui
        except (_UsageError, LedgerSpecError):
            on_sui = False  # (a bad $DTP_LEDGER is the other commands' error to report)
        # the Sui remark only where it applies: on a local ledger nothing signs without it
        sui = (
            " (`keys show` shows a DTP identity; on a Sui ledger without one, the other "
            "commands sign with $DTP_SUI_KEY, else the Sui CLI's key)"
            if on_sui
            else ""
        )
        raise KeyFileError(
            f"no identity file at {path}: create one with `dtp keys new`, or name one "
            f"with --identity{sui}"
        )
    identity = _identity_file(args)
    _emit(
        args,
        {
            "identity": str(path),
            "sui_address": identity.sui_address,
            "ed25519_public": identity.ed25519_public.hex(),
            "noise_public": identity.noise_public.hex(),
        },
    )
    return 0


# -- localnet ------------------------------------------------------------------


def _localnet_status(args: argparse.Namespace) -> int:
    _local_only(args, "status")
    ledger = _ledger(args, create=False)
    counts: dict[str, int] = {}
    for ref in ledger.objects():
        name = ref.type.rsplit("::", 1)[-1]
        counts[name] = counts.get(name, 0) + 1
    # the head's sequence number is the count (events are numbered from 1, none
    # removed); reading a page of them to its end decoded up to a million events and
    # stopped there, printing 1000000 for any larger count
    cursor = ledger.head_cursor()
    _emit(
        args,
        {
            "ledger": ledger.path,
            # what the file's receipts name (docs/escrow.md §6): its own, drawn at random
            "package": ledger.package_id,
            "clock_ms": ledger.clock_ms(),
            "clock_frozen": ledger.clock_frozen(),
            "epoch": ledger.epoch(),
            "minted_mist": ledger.minted(),
            "objects": counts,
            "events": int(cursor or 0),
        },
    )
    return 0


def _localnet_faucet(args: argparse.Namespace) -> int:
    _local_only(args, "faucet")
    # `--to "$UNSET"` is an error, not a mint to the identity instead; the identity is
    # read first, so that a missing one creates no ledger
    address = args.to if args.to is not None else _identity(args).sui_address
    # and the address and amount are checked before the ledger is opened (created):
    # refused by the faucet's transaction, they left a new, empty ledger behind
    normalize_id(address, "address")
    _check_u64(args.amount, "--amount")
    ledger = _ledger(args)
    balance = ledger.faucet(address, args.amount)
    _emit(args, {"address": address, "received_mist": args.amount, "balance_mist": balance})
    return 0


def _localnet_advance_epoch(args: argparse.Namespace) -> int:
    _local_only(args, "advance-epoch")
    # create=False: a mistyped --ledger-path made a new ledger and advanced its epoch
    _emit(args, {"epoch": _ledger(args, create=False).advance_epoch()})
    return 0


def _localnet_advance_clock(args: argparse.Namespace) -> int:
    _local_only(args, "advance-clock")
    _emit(args, {"clock_ms": _ledger(args, create=False).advance_clock(args.ms)})
    return 0


# -- host and service ------------------------------------------------------------------


def _check_endpoints(endpoints: list[str] | None) -> None:
    """Refuse ``--endpoint`` values the ledger would (each one's size is the parser's):
    too many, or one that is not UTF-8, in its words, before the first transaction."""
    if endpoints is None:
        return
    if len(endpoints) > MAX_ENDPOINTS:
        raise _CliError(
            f"--endpoint: a host publishes at most {MAX_ENDPOINTS} endpoints, got {len(endpoints)}."
        )
    as_bytes_list(endpoints)  # the ledger's own check and words


def _naming_host(ledger: Any, host_id: str, transaction: Callable[[], _T]) -> _T:
    """``transaction()``, with a ``host_id`` it found missing named as a Host, as ``host
    show`` does ("No Host with ID ... exists on this ledger"): the transactions that
    take a host say "No object with ID ...", not what was missing.

    The host is looked up after the transaction failed, not before it: looked up first,
    a missing host was said instead of what the command said before (a missing identity
    file, a port or a price out of range), which the user must fix all the same."""
    try:
        return transaction()
    except ObjectNotFound:
        try:
            ledger.get_host(host_id)
        except ObjectNotFound as missing:
            raise missing from None
        raise  # the host is there: another object was missing


def _host_create(args: argparse.Namespace) -> int:
    identity = _identity(args)
    # before the ledger is opened (created): refused by the transaction, they left a
    # new, empty ledger behind
    _check_endpoints(args.endpoint)
    noise = args.noise_key if args.noise_key is not None else identity.noise_public
    if is_low_order_noise_key(noise):  # the ledger's check (host::create), in its words
        raise move_error(
            "host",
            "EInvalidNoiseKey",
            f"{noise.hex()} is a low-order X25519 point, with which no handshake can succeed",
        )
    ledger = _ledger(args)
    host_id = ledger.create_host(identity, noise, args.endpoint or [])
    _emit(args, {"host": host_id, "authority": identity.sui_address})
    return 0


def _host_show(args: argparse.Namespace) -> int:
    ledger = _ledger(args, create=False)
    host = ledger.get_host(args.host)
    data = _plain(host)
    data["endpoints"] = [bytes(e).decode(errors="replace") for e in host.endpoints]
    # the lists are Tables beside the Host (its counts say whether to read them)
    for which in ("allow", "deny"):
        count = getattr(host.firewall, f"{which}_count")
        data["firewall"][which] = list(ledger.firewall_list(host.id, which)) if count else []
    _emit(args, data)
    return 0


def _host_set(args: argparse.Namespace) -> int:
    identity = _identity(args)
    ledger = _ledger(args, create=False)
    # the addresses are checked before the first transaction: a typo in the last one
    # (the authority) must not leave the others done
    if args.authority is not None:  # `--authority ""` is refused, not skipped
        normalize_id(args.authority, "address")
    for name in ("allow", "disallow", "deny", "undeny"):
        for client in getattr(args, name) or []:
            normalize_id(client, "address")
    # so are the limits, the last step but one: a bad one failed after the rest were done
    for option in ("max-connections-per-client", "max-bytes-per-sec", "max-requests-per-sec"):
        value = getattr(args, option.replace("-", "_"))
        if value is not None:
            _check_u64(value, f"--{option}")
    # and the endpoints (too many, or one that is not UTF-8): refused before the first
    # transaction, so that a refusal never comes after the noise key was changed
    _check_endpoints(args.endpoint)
    # (what, the transaction): each is its own transaction, run in this order
    steps: list[tuple[str, Callable[[], None]]] = []
    if args.noise_key is not None:
        steps.append(
            ("noise key", lambda: ledger.set_noise_static_key(identity, args.host, args.noise_key))
        )
    if args.endpoint is not None or args.clear_endpoints:
        steps.append(
            ("endpoints", lambda: ledger.set_endpoints(identity, args.host, args.endpoint or []))
        )
    if args.firewall is not None:  # (a FirewallMode: "open" is 0, so not truth-tested)
        mode = args.firewall
        steps.append(
            ("firewall mode", lambda: ledger.set_firewall_mode(identity, args.host, int(mode)))
        )
    for name in ("allow", "disallow", "deny", "undeny"):
        for client in getattr(args, name) or []:
            steps.append(
                (f"{name} {client}", partial(getattr(ledger, name), identity, args.host, client))
            )
    limits = (args.max_connections_per_client, args.max_bytes_per_sec, args.max_requests_per_sec)
    if any(v is not None for v in limits):

        def set_limits() -> None:
            current = ledger.get_host(args.host).firewall
            ledger.set_client_limits(
                identity,
                args.host,
                *(
                    new if new is not None else old
                    for new, old in zip(
                        limits,
                        (
                            current.max_connections_per_client,
                            current.max_bytes_per_sec,
                            current.max_requests_per_sec,
                        ),
                        strict=True,
                    )
                ),
            )

        steps.append(("client limits", set_limits))
    # last: once the host is handed over, this identity may change nothing else on it
    if args.authority is not None:
        steps.append(
            ("authority", lambda: ledger.set_authority(identity, args.host, args.authority))
        )
    if not steps:
        raise _CliError("Nothing to change: give at least one option (see dtp host set --help).")
    done: list[str] = []
    for index, (what, step) in enumerate(steps):
        try:
            _naming_host(ledger, args.host, step)
        except (DTPError, OSError) as exc:
            if not done:
                raise  # nothing happened: the error alone says it all
            # the earlier transactions happened: say so, or the error would read as if
            # the whole command had failed (and a retry would repeat them)
            rest = [w for w, _ in steps[index + 1 :]]
            raise _CliError(
                f"Host {args.host}: changed {', '.join(done)}; then {what} failed"
                + (f" ({', '.join(rest)} not tried)" if rest else "")
                + f": {_reason(exc)}"
            ) from None
        done.append(what)
    _emit(args, {"host": args.host, "changed": done})
    return 0


def _reason(exc: BaseException) -> str:
    """An exception as _run prints it (an OSError by its strerror and file name)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f": {exc.filename}" if exc.filename else "")
    return str(exc)


def _service_add(args: argparse.Namespace) -> int:
    identity = _identity(args)
    ledger = _ledger(args, create=False)
    sla = Sla(
        args.price_per_kib,
        args.price_per_request,
        args.min_deposit,
        _timeout_or(args.half_close_timeout, HALF_CLOSE_TIMEOUT_MS),
    )
    _naming_host(
        ledger,
        args.host,
        lambda: ledger.add_service(
            identity, args.host, args.port, args.kind, sla, args.max_connections
        ),
    )
    _emit(args, {"host": args.host, "port": args.port, "kind": args.kind, "sla": sla})
    return 0


def _timeout_or(given: int | None, default: int) -> int:
    """``--half-close-timeout`` (ms), else ``default``; one out of the ledger's bounds is
    refused in its words (``host::EInvalidHalfCloseTimeout``) before the transaction."""
    return default if given is None else check_half_close_timeout(given)


def _published_service(ledger: Any, host_id: str, port: int) -> Service:
    """The service ``host_id`` publishes on ``port``: ``host::EServiceNotFound`` for none
    (and the Host named when it is the Host that is missing)."""
    service: Service | None = _naming_host(
        ledger, host_id, lambda: ledger.get_service(host_id, port)
    )
    if service is None:
        raise move_error("host", "EServiceNotFound", f"port {port} of host {host_id}")
    return service


def _service_update(args: argparse.Namespace) -> int:
    """``host::update_service``: the terms and limit given change, the others stay as
    published (the half-close timeout among them: a service's connections keep the one
    they opened under, docs/escrow.md §2)."""
    changes = {
        name: getattr(args, name)
        for name in ("price_per_kib", "price_per_request", "min_deposit", "max_connections")
        if getattr(args, name) is not None
    }
    if not changes and args.half_close_timeout is None:
        raise _CliError(
            "Nothing to change: give at least one option (see dtp service update --help)."
        )
    identity = _identity(args)
    ledger = _ledger(args, create=False)
    current = _published_service(ledger, args.host, args.port)
    old = current.sla
    sla = Sla(
        changes.get("price_per_kib", old.price_per_kib),
        changes.get("price_per_request", old.price_per_request),
        changes.get("min_deposit", old.min_deposit),
        _timeout_or(args.half_close_timeout, old.half_close_timeout_ms),
    )
    limit = changes.get("max_connections", current.max_connections)
    _naming_host(
        ledger, args.host, lambda: ledger.update_service(identity, args.host, args.port, sla, limit)
    )
    _emit(
        args,
        {
            "host": args.host,
            "port": args.port,
            "kind": current.kind,
            "sla": sla,
            "max_connections": limit,
        },
    )
    return 0


def _service_show(args: argparse.Namespace) -> int:
    ledger = _ledger(args, create=False)
    service = _published_service(ledger, args.host, args.port)
    _emit(args, {"host": args.host, "port": args.port, **_plain(service)})
    return 0


# -- payment models (docs/escrow.md §13-16) ----------------------------------------


def _read_back(done: str, read: Callable[[], Any]) -> Any:
    """``read()``: what a paid transaction just made or changed, for the output.

    Its failure (a Sui node not caught up with the write yet, a timeout) is not the
    transaction's: that went through, and the ID of what it made is printed nowhere else
    (the pool to fund or withdraw from later, the subscription to use). So the error says
    what was done, naming the ID (``done``), as ``host set`` and ``service sponsor
    --fund`` report a partial result, and the command exits 1."""
    try:
        return read()
    except (DTPError, OSError) as exc:
        raise _CliError(
            f"{done}, but reading it back failed (the transaction went through; do not "
            f"repeat it): {_reason(exc)}"
        ) from None


def _service_subscription(args: argparse.Namespace) -> int:
    ledger = _ledger(args, create=False)
    offer = _naming_host(
        ledger,
        args.host,
        lambda: ledger.create_subscription_offer(
            _identity(args), args.host, args.port, args.price_per_epoch, args.period_epochs
        ),
    )
    shown = _read_back(
        f"Created the subscription offer {offer}", lambda: ledger.get_subscription_offer(offer)
    )
    _emit(args, {"offer": shown})
    return 0


def _service_sponsor(args: argparse.Namespace) -> int:
    # checked before the pool is made: refused by fund_sponsor_pool, a bad amount left a
    # new, empty pool behind
    _check_u64(args.fund, "--fund")
    identity = _identity(args)
    ledger = _ledger(args, create=False)
    pool = _naming_host(
        ledger,
        args.host,
        lambda: ledger.create_sponsor_pool(
            identity,
            args.host,
            args.port,
            args.share_bps,
            max_pledge=args.max_pledge,
            lanes=args.lanes,
        ),
    )
    if args.fund:
        try:
            ledger.fund_sponsor_pool(identity, pool, args.fund)
        except (DTPError, OSError) as exc:
            # the pool exists (a transaction made it): its ID must not be lost with the
            # error, or it can be neither funded later nor withdrawn from
            raise _CliError(
                f"Created the sponsor pool {pool}, but funding it failed (fund it later "
                f"with that ID): {_reason(exc)}"
            ) from None
    done = f"Created the sponsor pool {pool}" + (
        f" and funded it with {args.fund} MIST" if args.fund else ""
    )
    shown = _read_back(
        done, lambda: (ledger.get_sponsor_pool(pool), ledger.get_sponsor_lanes(pool))
    )
    # the pool's terms, and its money lane by lane (docs/escrow.md §14)
    _emit(args, {"pool": shown[0], "lanes": shown[1]})
    return 0


def _service_retention(args: argparse.Namespace) -> int:
    ledger = _ledger(args, create=False)
    if args.replace is not None:
        return _replace_retention(args, ledger)
    terms = _naming_host(
        ledger,
        args.host,
        lambda: ledger.create_retention_terms(
            _identity(args), args.host, args.port, args.retention_ms, args.storage_price_per_byte
        ),
    )
    shown = _read_back(
        f"Created the retention terms {terms}", lambda: ledger.get_retention_terms(terms)
    )
    _emit(args, {"terms": shown})
    return 0


def _replace_retention(args: argparse.Namespace, ledger: Any) -> int:
    """``service retention HOST PORT --replace OLD``: ``retention::replace_terms``, the old
    terms retired and the new ones published in one transaction (docs/escrow.md §16), so
    that the port is neither left without terms nor offered both. The old terms must be
    the ones of HOST and PORT: the command says what it changes, and a mistyped ID is
    caught before anything is paid."""
    old = ledger.get_retention_terms(args.replace)
    if (normalize_id(old.host), old.port) != (normalize_id(args.host), args.port):
        raise _CliError(
            f"The retention terms {old.id} are for host {old.host} port {old.port}, not "
            f"host {normalize_id(args.host)} port {args.port}; nothing was done."
        )
    terms = ledger.replace_retention_terms(
        _identity(args), old.id, args.retention_ms, args.storage_price_per_byte
    )
    shown = _read_back(
        f"Retired the retention terms {old.id} and created {terms}",
        lambda: ledger.get_retention_terms(terms),
    )
    _emit(args, {"terms": shown, "replaced": old.id})
    return 0


def _service_retire_retention(args: argparse.Namespace) -> int:
    """``retention::retire_terms``: sends refuse the terms from now on; records kept
    under them keep their deadlines (docs/escrow.md §16)."""
    ledger = _ledger(args, create=False)
    try:
        ledger.retire_retention_terms(_identity(args), args.terms)
    except ObjectNotFound:
        # named as retention terms ("No RetentionTerms with ID ..."), not as an object
        ledger.get_retention_terms(args.terms)
        raise
    shown = _read_back(
        f"Retired the retention terms {args.terms}", lambda: ledger.get_retention_terms(args.terms)
    )
    _emit(args, {"terms": shown})
    return 0


def _subscription_buy(args: argparse.Namespace) -> int:
    ledger = _ledger(args, create=False)
    sub = ledger.subscribe(_identity(args), args.offer, args.epochs)
    shown = _read_back(
        f"Bought the subscription {sub} ({args.epochs} epochs)",
        lambda: ledger.get_subscription(sub),
    )
    _emit(args, {"subscription": shown})
    return 0


def _subscription_renew(args: argparse.Namespace) -> int:
    ledger = _ledger(args, create=False)
    ledger.renew_subscription(_identity(args), args.subscription, args.epochs)
    # the ID is the user's own, but a bare read error would read as a failed renewal,
    # and a retry would pay again
    shown = _read_back(
        f"Renewed the subscription {args.subscription} by {args.epochs} epochs",
        lambda: ledger.get_subscription(args.subscription),
    )
    _emit(args, {"subscription": shown})
    return 0


def _subscription_show(args: argparse.Namespace) -> int:
    ledger = _ledger(args, create=False)
    sub = ledger.get_subscription(args.subscription)
    _emit(args, {"subscription": sub, "live": sub.is_live(ledger.epoch())})
    return 0


# -- deploy ------------------------------------------------------------------


#: The Move package of a checkout (``move/dtp`` beside ``dtp/``), and the copy an
#: installed ``dtp`` carries (setup.py copies it in; read-only, so built in a copy).
CHECKOUT_PACKAGE = Path(__file__).resolve().parent.parent.parent / "move" / "dtp"
BUNDLED_PACKAGE = Path(__file__).resolve().parent.parent / "move" / "dtp"


def _default_package_path() -> tuple[Path, bool]:
    """The Move package to deploy and whether it is the bundled copy."""
    if (CHECKOUT_PACKAGE / "Move.toml").is_file():
        return CHECKOUT_PACKAGE, False
    return BUNDLED_PACKAGE, True


def _child_env(args: argparse.Namespace) -> dict[str, str]:
    """The environment for the ``sui`` children of ``dtp deploy``: ours without the
    identity passphrase (the variable ``--passphrase-env`` names, and the default one).
    They need no DTP secret, and what a child holds any process it starts inherits."""
    env = dict(os.environ)
    for name in {_PASSPHRASE_ENV, getattr(args, "passphrase_env", _PASSPHRASE_ENV)}:
        env.pop(name, None)
    return env


def _sui(
    sui: str,
    *argv: str,
    env: dict[str, str],
    cwd: Path | None = None,
    stop: _Stop | None = None,
) -> str:
    """Run ``sui argv...`` and return what it printed; a failure is a :class:`_CliError`.
    Stopped meanwhile (``stop``'s SIGTERM, Ctrl-C), the child is killed before the
    exception goes on; a SIGTERM that lands from the child's start until the wait for
    it is held until it is ours to kill (raised inside Popen's construction, it left
    the child running, orphaned; raised as the progress display started, before the
    kill was set up, it left ``Popen.__exit__`` waiting for the child's own end)."""
    if stop is not None:
        stop.holding = True
    try:
        process = subprocess.Popen(
            [sui, *argv],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # sui speaks UTF-8 whatever the locale; a byte that is not (a path in a
            # compiler diagnostic) is replaced, never a UnicodeDecodeError that would
            # lose a publish's package ID
            encoding="utf-8",
            errors="replace",
        )
    except BaseException:
        if stop is not None:
            stop.holding = False
        raise
    with process:
        try:
            with progress(f"sui {' '.join(argv[:2])}"):
                if stop is not None:
                    stop.holding = False
                    stop.raise_held()
                stdout, stderr = process.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise _CliError(f"`sui {' '.join(argv)}` did not finish within 900 seconds.") from None
        except BaseException:
            process.kill()  # (stopped: SIGTERM, Ctrl-C)
            raise
    if process.returncode != 0:
        detail = (stderr or stdout).strip().splitlines()
        raise _CliError(f"`sui {' '.join(argv)}` failed: {detail[-1] if detail else 'no output'}")
    return stdout


class _Stop:
    """The SIGTERM handler of a deploy.

    It stops the deploy as Ctrl-C does, by an exception (SystemExit, exit status 143):
    subprocess.run then kills the running ``sui`` and the temporary copy is removed. The
    default action ended dtp alone, and ``sui client publish`` ran on, orphaned, to
    publish (and pay for) a package recorded nowhere. Once the publish has succeeded
    (:attr:`deferred`), the signal is only recorded, and the deploy exits with it once
    the package is recorded and printed: raised then, it lost the package ID paid for.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        """The first SIGTERM received, if any."""
        self.deferred = False
        """Whether a SIGTERM waits for the deploy's end (set once the publish is done)."""
        self.holding = False
        """Whether a SIGTERM waits for a ``sui`` child being started (:func:`_sui`)."""

    def __call__(self, signum: int, _frame: object) -> None:
        if self.signum is not None:
            return  # a repeat: the first one's exit is under way (the cleanup with it)
        self.signum = signum
        if not (self.deferred or self.holding):
            raise SystemExit(128 + signum)

    def raise_held(self) -> None:
        """Raise the SIGTERM held while a child was being started, if one was."""
        if self.signum is not None and not self.deferred:
            raise SystemExit(128 + self.signum)


def _deploy(args: argparse.Namespace) -> int:
    stop = _Stop()
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stop) if on_main_thread else None
    try:
        code = _deploy_package(args, stop)
    finally:
        if on_main_thread:
            # None: a handler not set from Python (the default, to the interpreter)
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    if stop.signum is not None:  # arrived after the publish: exit with it now
        raise SystemExit(128 + stop.signum)
    return code


def _deploy_package(args: argparse.Namespace, stop: _Stop) -> int:
    sui_bin = _given_path(args.sui_bin, "--sui-bin")
    sui = str(sui_bin) if sui_bin is not None else shutil.which("sui")
    if not sui or not Path(sui).exists():
        # (a CliError: "dtp: " before it as every command's failures, and with --json one
        # JSON object, where a bare line was printed)
        raise _CliError(SUI_INSTALL_HINT)
    # absolute: `sui move build` and `sui client publish` run in the package directory,
    # where a relative --sui-bin (or a relative PATH entry) names nothing
    sui = os.path.abspath(sui)
    given = _given_path(args.package_path, "--package-path", "a directory")
    package, bundled = (given, False) if given is not None else _default_package_path()
    if not (package / "Move.toml").is_file():
        raise _CliError(f"No Move package at {package} (Move.toml missing); pass --package-path.")
    if bundled:
        # `sui move build` writes build/ and Move.lock beside Move.toml: not into the
        # installed package
        with tempfile.TemporaryDirectory(prefix="dtp-move-") as tmp:
            copy = Path(tmp) / "dtp"
            shutil.copytree(package, copy)
            return _publish(args, sui, copy, stop)
    return _publish(args, sui, package, stop)


def _read_deployments(path: Path) -> dict[str, Any]:
    """The deployment records at ``path`` (:func:`dtp.ledger._spec.read_deployments`),
    read before anything is published: a publish costs gas, and its package ID would
    have nowhere to go."""
    try:
        return read_deployments(path)
    except LedgerSpecError as exc:  # (a damaged record: exit 1, as before)
        raise _CliError(str(exc)) from None


def _write_deployments(path: Path, records: dict[str, Any]) -> None:
    """Replace ``path`` with ``records`` atomically: written to a new file beside it,
    synced, then renamed over it, so a crash or a full disk mid-write leaves the old
    records whole (written in place, the file was truncated first and then lost)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # a symlinked record stays one: the file it points to is the one replaced
    path = Path(os.path.realpath(path))
    data = (json.dumps(records, indent=2, sort_keys=True) + "\n").encode("utf-8")
    write_durably(path, data)


#: A ``"packageId": "0x..."`` in ``sui client publish`` output, however it is framed.
_PACKAGE_ID: Final = re.compile(r'"packageId"\s*:\s*"(0x[0-9a-fA-F]+)"')


def _publish_output(output: str) -> dict[str, Any] | None:
    """The JSON object ``sui client publish --json`` printed on stdout, or None.

    Sui CLIs up to 1.64 print compiler diagnostics on stdout before the JSON even with
    ``--json``, and those may hold ``{`` (source lines quoted in a warning): parsing
    from the first ``{`` failed after the package had been published. So each line that
    starts with ``{`` (the JSON is printed from column 0) is tried as the start of a JSON
    value; a value that parses is taken whole (the objects nested in it are not tried
    again), and of the objects the last with the keys of a publish's result wins."""
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    position = 0
    while position < len(output):
        end = output.find("\n", position)
        end = len(output) if end == -1 else end + 1
        if output.startswith("{", position):
            try:
                value, stop = decoder.raw_decode(output, position)
            except (ValueError, RecursionError):  # RecursionError: nested past the stack
                value = None
            if isinstance(value, dict):
                found.append(value)
                # resume at the line after the value, not inside it
                stop = output.find("\n", stop)
                end = len(output) if stop == -1 else stop + 1
        position = end
    return next((v for v in reversed(found) if "objectChanges" in v or "effects" in v), None)


def _publish(args: argparse.Namespace, sui: str, package: Path, stop: _Stop) -> int:
    record_path = deployments_path()
    records = _read_deployments(record_path)
    env = _child_env(args)
    active = _sui(sui, "client", "active-env", env=env, stop=stop).strip()
    if active != args.network:
        raise _CliError(
            f"The Sui CLI's active environment is {active!r}, not {args.network!r}; run "
            f"`sui client switch --env {args.network}` first."
        )
    _sui(sui, "move", "build", env=env, cwd=package, stop=stop)
    try:
        output = _sui(
            sui,
            "client",
            "publish",
            "--json",
            "--gas-budget",
            str(args.gas_budget),
            env=env,
            cwd=package,
            stop=stop,
        )
        # published: a SIGTERM from now on waits until the package is recorded and printed
        stop.deferred = True
    except (SystemExit, KeyboardInterrupt):
        # stopped (SIGTERM, Ctrl-C), `sui` killed: its transaction may have gone through
        # already, paid for, and its package ID is in no record
        print(
            "dtp: stopped during `sui client publish`: the package may have been published "
            f"all the same; it is not recorded in {record_path} (look for its UpgradeCap "
            "in `sui client objects`).",
            file=sys.stderr,
        )
        raise
    effects = _publish_output(output)
    changes = effects.get("objectChanges") if effects is not None else None
    package_id = next(
        (
            c.get("packageId")
            for c in (changes if isinstance(changes, list) else [])
            if isinstance(c, dict) and c.get("type") == "published"
        ),
        None,
    )
    if effects is None or not isinstance(package_id, str) or not package_id:
        # the publish may have happened and been paid for: a package ID anywhere in what
        # sui printed is named, and with none the output itself is shown, so that it is
        # never lost with a one-line error
        what = (
            "Could not read the JSON output of `sui client publish`"
            if effects is None
            else "`sui client publish` reported no published package"
        )
        found = list(dict.fromkeys(_PACKAGE_ID.findall(output)))
        if found:
            raise _CliError(
                f"{what}, but its output names the package {', '.join(found)}; it was not "
                f"recorded in {record_path}."
            )
        if effects is None:
            sys.stderr.write(output if output.endswith("\n") else output + "\n")
            raise _CliError(f"{what} (printed above).")
        raise _CliError(f"{what}.")
    digest = effects.get("digest")
    record: dict[str, Any] = {
        "package_id": package_id,
        "digest": digest if isinstance(digest, str) else None,
    }
    admin_cap = _admin_cap(changes)
    if admin_cap is not None:
        # the AdminCap init gave the publisher: what migrates the objects after an
        # upgrade (docs/sui.md, "Upgrading the package")
        record["admin_cap"] = admin_cap
    records[args.network] = record
    try:
        _write_deployments(record_path, records)
    except OSError as exc:
        # published and paid for: the ID must not be lost with the record
        raise _CliError(
            f"Published {package_id} on {args.network}, but could not record it in "
            f"{record_path}: {exc.strerror or exc}"
        ) from None
    _emit(
        args,
        {
            "network": args.network,
            "package_id": package_id,
            "admin_cap": admin_cap,
            "recorded_in": record_path,
        },
    )
    return 0


def _admin_cap(changes: Any) -> str | None:
    """The ID of the ``version::AdminCap`` a publish created (its ``objectChanges``), or
    None (a package from before the versioned objects, or output without it)."""
    for change in changes if isinstance(changes, list) else []:
        if (
            isinstance(change, dict)
            and change.get("type") == "created"
            and str(change.get("objectType", "")).endswith("::version::AdminCap")
            and isinstance(change.get("objectId"), str)
        ):
            return str(change["objectId"])
    return None


# -- registration ------------------------------------------------------------------

_HALF_CLOSE_HELP = (
    "the time its server has to claim after a connection's first close, before the "
    "client may settle alone: milliseconds, or a duration (10m, 2h, 7d); from 10 minutes "
    "to 7 days (docs/escrow.md section 2)"
)


def register(subparsers: Any) -> None:
    """Add ``keys``, ``localnet``, ``host``, ``service``, ``subscription``, ``balance``,
    ``connections``, ``refund``, ``claim``, ``migrate`` and ``deploy`` to ``subparsers`` (the object
    returned by ``ArgumentParser.add_subparsers``)."""
    common = _common()

    def leaf(
        group: Any,
        name: str,
        handler: Handler,
        help_text: str,
        options: argparse.ArgumentParser = common,
    ) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = group.add_parser(name, parents=[options], help=help_text)
        parser.set_defaults(func=_run(handler))
        return parser

    # the keys commands read or write the identity file alone; the localnet ones act on
    # a LocalLedger file (whose package is its own), and only faucet reads the identity
    # (the address it mints to by default)
    keys_only = _common(ledger=False, package=False)
    local_only = _common(package=False, identity=False)
    local_and_key = _common(package=False)
    of_a_service = _common()
    of_a_service.add_argument("host", help="host ID")
    of_a_service.add_argument("port", type=int, help="port of the service")

    keys = subparsers.add_parser("keys", help="create or show the host identity")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    new = leaf(keys_sub, "new", _keys_new, "create a new identity file", keys_only)
    new.add_argument("--force", action="store_true", help="overwrite an existing identity")
    leaf(keys_sub, "show", _keys_show, "show the identity's address and public keys", keys_only)

    localnet = subparsers.add_parser("localnet", help="the embedded local ledger")
    local_sub = localnet.add_subparsers(dest="localnet_command", metavar="ACTION", required=True)
    leaf(local_sub, "status", _localnet_status, "clock, epoch, objects and events", local_only)
    faucet = leaf(local_sub, "faucet", _localnet_faucet, "mint test SUI", local_and_key)
    faucet.add_argument("--to", help="address (default: the identity's)")
    faucet.add_argument(
        "--amount", type=_amount, default=_DEFAULT_FAUCET, help="MIST, or 1.5sui (default 10 SUI)"
    )
    leaf(local_sub, "advance-epoch", _localnet_advance_epoch, "start the next epoch", local_only)
    clock = leaf(
        local_sub, "advance-clock", _localnet_advance_clock, "move the clock forward", local_only
    )
    clock.add_argument(
        "ms", type=_duration("ms", whole=True), help="milliseconds, or a duration (90s, 5m, 2h)"
    )

    host = subparsers.add_parser("host", help="create, show and configure hosts")
    host_sub = host.add_subparsers(dest="host_command", metavar="ACTION", required=True)
    create = leaf(host_sub, "create", _host_create, "create a host owned by the identity")
    create.add_argument(
        "--endpoint",
        action="append",
        type=_parse_endpoint,
        help="reachable endpoint, host:port (repeatable)",
    )
    create.add_argument("--noise-key", type=_parse_hex32, help="Noise key (default: identity's)")
    show = leaf(host_sub, "show", _host_show, "show a host")
    show.add_argument("host", help="host ID")
    hset = leaf(host_sub, "set", _host_set, "change a host's settings")
    hset.add_argument("host", help="host ID")
    hset.add_argument(
        "--authority", help="hand the host to this address (done after the other changes)"
    )
    hset.add_argument("--noise-key", type=_parse_hex32, help="new Noise static key (hex)")
    # one or the other: argparse refuses the two together
    endpoints = hset.add_mutually_exclusive_group()
    endpoints.add_argument(
        "--endpoint",
        action="append",
        type=_parse_endpoint,
        help="replace the endpoints, host:port (repeatable)",
    )
    endpoints.add_argument("--clear-endpoints", action="store_true", help="publish no endpoints")
    hset.add_argument(
        "--firewall",
        type=_firewall_mode,
        metavar="{open,allowlist}",
        help="firewall mode: open (everyone not denied) or allowlist (those allowed only), "
        "as the daemon's [firewall] mode",
    )
    for name in ("allow", "disallow", "deny", "undeny"):
        hset.add_argument(f"--{name}", action="append", metavar="ADDRESS", help=f"{name} a client")
    for name in ("max-connections-per-client", "max-bytes-per-sec", "max-requests-per-sec"):
        hset.add_argument(f"--{name}", type=int, help="per-client limit (0 = unlimited)")

    service = subparsers.add_parser("service", help="publish services on a host")
    service_sub = service.add_subparsers(dest="service_command", metavar="ACTION", required=True)
    add = leaf(service_sub, "add", _service_add, "add a service on a port")
    add.add_argument("host", help="host ID")
    add.add_argument("port", type=int, help="port (0-65535)")
    add.add_argument("--kind", default="raw", type=_parse_kind, help="service kind (default raw)")
    add.add_argument("--price-per-kib", type=_amount, default=0, help="MIST per KiB")
    add.add_argument("--price-per-request", type=_amount, default=0, help="MIST per request")
    add.add_argument("--min-deposit", type=_amount, default=0, help="smallest deposit, MIST")
    add.add_argument("--max-connections", type=int, default=0, help="0 = unlimited")
    add.add_argument(
        "--half-close-timeout",
        type=_duration("ms", whole=True),
        help=_HALF_CLOSE_HELP + " (default 10 minutes)",
    )
    update = leaf(
        service_sub,
        "update",
        _service_update,
        "change a service's terms (what is not given stays as published)",
        of_a_service,
    )
    update.add_argument("--price-per-kib", type=_amount, help="MIST per KiB")
    update.add_argument("--price-per-request", type=_amount, help="MIST per request")
    update.add_argument("--min-deposit", type=_amount, help="smallest deposit, MIST")
    update.add_argument("--max-connections", type=int, help="0 = unlimited")
    update.add_argument(
        "--half-close-timeout", type=_duration("ms", whole=True), help=_HALF_CLOSE_HELP
    )
    leaf(service_sub, "show", _service_show, "show a service's terms", of_a_service)

    offer = leaf(
        service_sub, "subscription", _service_subscription, "sell access by the epoch", of_a_service
    )
    offer.add_argument("--price-per-epoch", type=_amount, required=True, help="MIST per epoch")
    offer.add_argument("--period-epochs", type=int, default=1, help="sold in multiples of")
    sponsor = leaf(
        service_sub, "sponsor", _service_sponsor, "pay a share of clients' fees", of_a_service
    )
    sponsor.add_argument("--share-bps", type=int, required=True, help="1..10000 basis points")
    sponsor.add_argument(
        "--max-pledge",
        type=_amount,
        required=True,
        help="most MIST the pool pledges to one connection (so no client locks it all)",
    )
    sponsor.add_argument(
        "--lanes",
        type=int,
        default=DEFAULT_SPONSOR_LANES,
        help=f"1..64 parts of the pool's money that clients open through, so that their "
        f"sponsored opens are not ordered with each other (default {DEFAULT_SPONSOR_LANES})",
    )
    sponsor.add_argument(
        "--fund", type=_amount, default=0, help="MIST to put in the pool (spread over its lanes)"
    )
    keep = leaf(
        service_sub, "retention", _service_retention, "retain ledger-carried data", of_a_service
    )
    keep.add_argument(
        "--retention-ms",
        type=_duration("ms", whole=True),
        required=True,
        help="how long to keep data: milliseconds, or a duration (90s, 5m, 2h)",
    )
    keep.add_argument("--storage-price-per-byte", type=_amount, default=0, help="MIST per byte")
    keep.add_argument(
        "--replace",
        metavar="TERMS",
        help="retire these terms of the port in the same transaction (RetentionTerms ID)",
    )
    retire = leaf(
        service_sub,
        "retire-retention",
        _service_retire_retention,
        "stop offering retention terms (sends refuse them; kept records keep their deadlines)",
    )
    retire.add_argument("terms", help="RetentionTerms ID")

    subscription = subparsers.add_parser("subscription", help="pre-paid service access")
    sub_sub = subscription.add_subparsers(
        dest="subscription_command", metavar="ACTION", required=True
    )
    buy = leaf(sub_sub, "buy", _subscription_buy, "subscribe to an offer")
    buy.add_argument("offer", help="SubscriptionOffer ID")
    buy.add_argument("--epochs", type=int, required=True, help="epochs to pay for")
    renew = leaf(sub_sub, "renew", _subscription_renew, "extend a subscription")
    renew.add_argument("subscription", help="Subscription ID")
    renew.add_argument("--epochs", type=int, required=True, help="epochs to add")
    sshow = leaf(sub_sub, "show", _subscription_show, "show a subscription")
    sshow.add_argument("subscription", help="Subscription ID")

    from dtp.cli._funds import register as register_funds

    register_funds(subparsers, leaf)

    from dtp.cli._migrate import register as register_migrate

    register_migrate(subparsers, leaf)

    # (the sui CLI publishes with its active key and environment: no --ledger, --identity
    # or --sui-package, which a user would take for the key that pays, is taken)
    deploy = subparsers.add_parser(
        "deploy",
        help="build and publish the dtp Move package",
        description="Build move/dtp and publish it with the Sui CLI's active address and "
        "environment (`sui client active-address`, `sui client switch --env`), then record "
        "its package ID for the network.",
    )
    deploy.set_defaults(func=_run(_deploy))
    deploy.add_argument(
        "--passphrase-env",
        default=_PASSPHRASE_ENV,
        type=_parse_env_name,
        help="environment variable holding a DTP identity passphrase, kept from the sui "
        "commands it runs (default DTP_PASSPHRASE)",
    )
    deploy.add_argument("--json", action="store_true", help="machine-readable output")
    deploy.add_argument("--network", choices=_NETWORKS, required=True, help="target network")
    deploy.add_argument("--sui-bin", help="path to the sui binary (default: found on PATH)")
    deploy.add_argument(
        "--package-path",
        help="Move package (default: the checkout's move/dtp, else the copy installed with dtp)",
    )
    deploy.add_argument(
        "--gas-budget", type=_parse_gas_budget, default=500_000_000, help="MIST (above 0)"
    )
