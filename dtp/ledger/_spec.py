"""Ledger specs: one string names the ledger everywhere -- ``--ledger`` of every ``dtp``
command, ``$DTP_LEDGER``, ``ledger = ...`` in the daemon's config and
:func:`~dtp.ledger._open.open_ledger` in Python (docs/sui.md, "Ledger specs", is the grammar's one
description):

- ``local``: the embedded :class:`~dtp.ledger.local.LocalLedger` at its default file;
- ``local:PATH``, or any other value that is none of the forms below: a LocalLedger file;
- ``localnet``, ``devnet``, ``testnet``, ``mainnet``: that Sui network through its
  default full node;
- ``NETWORK@URL``: that network's package record, through the node at URL;
- ``sui:URL`` or a bare ``http://``/``https://`` URL: a Sui node, whose package must be
  given explicitly.

:func:`parse_ledger_spec` only reads the string (no file, no network): callers check a
setting before anything runs. :func:`~dtp.ledger._open.open_ledger` resolves the package
of a Sui spec (the explicit one, ``$DTP_SUI_PACKAGE``, else what ``dtp deploy``
recorded) and opens the ledger. Every mistake is a :class:`~dtp.errors.LedgerSpecError`
whose message is one sentence naming the setting.

This module imports neither SQLite nor pysui until a ledger is opened.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from dtp.errors import ChainError, LedgerSpecError
from dtp.identity._files import data_home
from dtp.ledger._objects import normalize_id

__all__ = [
    "DEFAULT_NODES",
    "NETWORKS",
    "LedgerSpec",
    "default_local_path",
    "deployments_path",
    "ledger_spec_from_env",
    "parse_ledger_spec",
    "read_deployments",
    "recorded_admin_cap",
    "resolve_package",
]

#: The Sui networks a spec names by name (and ``dtp deploy --network`` publishes to).
NETWORKS: Final = ("localnet", "devnet", "testnet", "mainnet")
#: Each network's default full node (gRPC): ``sui start``'s for localnet, Mysten's public
#: ones for the others.
DEFAULT_NODES: Final = {
    "localnet": "http://127.0.0.1:9000",
    **{net: f"https://fullnode.{net}.sui.io:443" for net in NETWORKS[1:]},
}
#: The variable a spec comes from when none is given.
LEDGER_ENV: Final = "DTP_LEDGER"
#: The variable holding a package ID that overrides the deploy records.
PACKAGE_ENV: Final = "DTP_SUI_PACKAGE"
#: What the errors about a missing package say can be set instead.
_PACKAGE_SETTINGS: Final = "DTP_SUI_PACKAGE (--sui-package, sui_package in the daemon config)"

# "scheme://": a URL, never a file name (the forms a user means by it are refused, not
# taken for a path)
_URL: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# "name@scheme://...": NETWORK@URL (a file name with an "@" has no "://" after it)
_AT_URL: Final = re.compile(r"([^/@:\s]+)@([A-Za-z][A-Za-z0-9+.-]*://.*)", re.DOTALL)
# a bare word: what a mistyped keyword looks like ("tesnet"), unlike a file name
# ("ledger.sqlite", "./x")
_WORD: Final = re.compile(r"[A-Za-z0-9_-]+")
_KEYWORDS: Final = ("local", "sui", *NETWORKS)


@dataclass(frozen=True)
class LedgerSpec:
    """A parsed ledger spec (:func:`parse_ledger_spec`): either a LocalLedger file
    (:attr:`path`) or a Sui node (:attr:`node`, and the :attr:`network` whose ``dtp
    deploy`` record gives the package, when the spec names one)."""

    # (two specs naming the same ledger are equal, however and wherever written: a
    # daemon's reload compares its settings)
    text: str = field(compare=False)
    """The spec as written."""
    setting: str = field(compare=False)
    """Where it was written (``--ledger``, ``DTP_LEDGER``, ``dtp.toml:3: daemon.ledger``),
    for the errors about it."""
    path: Path | None = None
    """The LocalLedger file (None for a Sui spec)."""
    node: str | None = None
    """The Sui full node's gRPC URL, ``http(s)://host:port`` (None for a LocalLedger)."""
    network: str | None = None
    """The Sui network (one of :data:`NETWORKS`), None for a LocalLedger and for a bare
    node URL."""

    @property
    def is_sui(self) -> bool:
        """Whether the spec names a Sui node (not the embedded ledger)."""
        return self.node is not None

    def describe(self) -> str:
        """A few words for messages: ``the ledger file X`` / ``Sui testnet at URL``."""
        if self.path is not None:
            return f"the ledger file {self.path}"
        return f"Sui {self.network or 'node'} at {self.node}"

    def error(self, detail: str) -> LedgerSpecError:
        """A :class:`LedgerSpecError` about this spec: ``setting: detail``."""
        return LedgerSpecError(f"{self.setting}: {detail}")


def default_local_path(env: Mapping[str, str] | None = None) -> Path:
    """The default LocalLedger file, which the spec ``local`` names: the file
    ``$DTP_LEDGER`` names when it names one (``/var/dtp/l.sqlite``, ``local:PATH``), else
    ``$XDG_DATA_HOME/dtp/localnet.sqlite``."""
    env = os.environ if env is None else env
    # stripped as parse_ledger_spec strips it: " local" parsed would name this default
    # again, and ask for it here again (tests/ledger/test_spec.py)
    text = env.get(LEDGER_ENV, "").strip()
    if text and text != "local":
        try:
            spec = parse_ledger_spec(text, setting=LEDGER_ENV, env=env)
        except LedgerSpecError:
            spec = None  # (said where $DTP_LEDGER itself is used)
        if spec is not None and spec.path is not None:
            return spec.path
    return data_home(env) / "dtp" / "localnet.sqlite"


def deployments_path(env: Mapping[str, str] | None = None) -> Path:
    """Where ``dtp deploy`` records the package it published on each network:
    ``$XDG_DATA_HOME/dtp/deployments.json``, ``{network: {"package_id", "digest"}}``."""
    return data_home(env) / "dtp" / "deployments.json"


def read_deployments(path: Path) -> dict[str, Any]:
    """The deployment records at ``path`` ({} when there are none). A file that is not
    such a record is a :class:`LedgerSpecError` naming it, found before anything is
    published or opened (a publish costs gas, and its package ID would have nowhere to
    go)."""
    if not os.path.lexists(path):
        return {}
    if not path.is_file():
        # read as "no records", then the write after the publish failed (a directory):
        # paid for, and the package ID printed nowhere
        raise LedgerSpecError(f"{path} is not a regular file; move it aside.")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the stack
        records = None
    except OSError as exc:
        raise LedgerSpecError(f"{path} cannot be read: {exc.strerror or exc}.") from None
    if not isinstance(records, dict):
        raise LedgerSpecError(
            f"{path} is not a deployments record (a JSON object); fix or move it aside."
        )
    for network, record in records.items():
        # each entry is what `dtp deploy` writes; anything else ({"version": true}, a
        # bare package ID) is damage that would be carried on into every later record
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("package_id"), str)
            or not record["package_id"]
            or not isinstance(record.get("digest"), str | None)
        ):
            raise LedgerSpecError(
                f"{path} is not a deployments record ({network!r} is not "
                '{"package_id": ..., "digest": ...}); fix or move it aside.'
            )
    return records


def _node_url(url: str, fail: Any) -> str:
    """``http(s)://host[:port]`` checked (``fail(detail)`` raises): plain text for
    ``http://``, TLS for ``https://``. A gRPC channel has no path, so one is refused
    rather than dropped."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise fail(f"{url!r} has an invalid port (give http(s)://HOST:PORT)") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise fail(
            f"{url!r} is not a Sui node URL: the scheme must be http:// (plain text) or "
            "https:// (TLS)"
        )
    if not parts.hostname:
        raise fail(f"{url!r} names no host (give http(s)://HOST:PORT)")
    if parts.username is not None or parts.password is not None:
        raise fail(f"{url!r} holds a user name or password, which a Sui node URL cannot")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise fail(f"{url!r} has a path or query: a Sui node URL is http(s)://HOST[:PORT]")
    if port == 0:
        raise fail(f"{url!r} has port 0, which is no port to connect to")
    return f"{parts.scheme.lower()}://{parts.netloc}"


def _local_path(text: str, base: Path | None, fail: Any) -> Path:
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # "~user/..." for an unknown user, or no home directory
        raise fail(f"cannot expand {text!r}: unknown user or no home directory") from None
    return path if path.is_absolute() or base is None else base / path


def parse_ledger_spec(
    text: str,
    *,
    setting: str = "ledger spec",
    base: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> LedgerSpec:
    """The ledger ``text`` names, read without opening anything (see the module docs).

    ``setting`` names where the spec was written, for the errors (``--ledger``,
    ``DTP_LEDGER``, ``dtp.toml:3: daemon.ledger``); ``base`` is the directory a relative
    file name is relative to (a config file's; the working directory when None).
    ``env`` is where ``local`` reads ``$DTP_LEDGER`` and ``$XDG_DATA_HOME``
    (``os.environ`` when None). Raises :class:`LedgerSpecError`."""

    def fail(detail: str) -> LedgerSpecError:
        return LedgerSpecError(f"{setting}: {detail}.")

    if not isinstance(text, str):
        raise fail(f"a ledger spec is a string, not {type(text).__name__}")
    spec = text.strip()
    if not spec:
        raise fail("is empty: give local, local:PATH, a network (testnet...) or a node URL")
    if "\0" in spec:
        raise fail(f"a ledger spec cannot hold a NUL character, got {text!r}")
    if spec == "local":
        return LedgerSpec(text, setting, path=default_local_path(env))
    if spec.startswith("local:"):
        rest = spec[len("local:") :]
        if not rest:
            raise fail("local: names no file: write local:PATH, or local for the default file")
        return LedgerSpec(text, setting, path=_local_path(rest, base, fail))
    if spec in NETWORKS:
        return LedgerSpec(text, setting, node=DEFAULT_NODES[spec], network=spec)
    if spec.startswith("sui:"):
        rest = spec[len("sui:") :]
        if not _URL.match(rest):
            raise fail(
                f"{spec!r} names no node: write sui:http://HOST:PORT or sui:https://HOST:PORT"
            )
        return LedgerSpec(text, setting, node=_node_url(rest, fail))
    at = _AT_URL.fullmatch(spec)
    if at is not None:
        network, url = at.groups()
        if network not in NETWORKS:
            raise fail(
                f"{network!r} in {spec!r} is no Sui network (expected localnet, devnet, "
                "testnet or mainnet before the @)"
            )
        return LedgerSpec(text, setting, node=_node_url(url, fail), network=network)
    if _URL.match(spec):
        return LedgerSpec(text, setting, node=_node_url(spec, fail))
    if _WORD.fullmatch(spec) and not os.path.lexists(_local_path(spec, base, fail)):
        # a bare word that is no file yet: a keyword mistyped (or the old `--ledger
        # sui`) would otherwise make a new, empty LocalLedger of that name
        if spec == "sui":
            raise fail(
                "sui alone names no node: write a network (localnet, devnet, testnet, "
                "mainnet), NETWORK@URL or sui:URL (./sui for a ledger file of that name)"
            )
        close = difflib.get_close_matches(spec.lower(), _KEYWORDS, n=1, cutoff=0.75)
        if close:
            raise fail(
                f"{spec!r} is no ledger spec (did you mean {close[0]}?); write ./{spec} "
                "for a ledger file of that name"
            )
    return LedgerSpec(text, setting, path=_local_path(spec, base, fail))


def ledger_spec_from_env(env: Mapping[str, str] | None = None) -> LedgerSpec:
    """The spec of ``$DTP_LEDGER`` (unset or empty: ``local``)."""
    env = os.environ if env is None else env
    text = env.get(LEDGER_ENV, "")
    if not text:
        return parse_ledger_spec("local", setting="the default ledger (local)", env=env)
    return parse_ledger_spec(text, setting=LEDGER_ENV, env=env)


def _package_id(value: str, setting: str) -> str:
    try:
        return normalize_id(value, "package ID")
    except ChainError as exc:
        raise LedgerSpecError(f"{setting}: {exc}") from None


def resolve_package(
    spec: LedgerSpec,
    package: str | None = None,
    *,
    package_setting: str = "package",
    env: Mapping[str, str] | None = None,
) -> str:
    """The ``move/dtp`` package ID of the Sui ledger ``spec`` names: ``package`` when
    given (``package_setting`` names where it came from: ``--sui-package``,
    ``dtp.toml:4: daemon.sui_package``), else ``$DTP_SUI_PACKAGE``, else the ``dtp
    deploy`` record of the spec's network (:func:`deployments_path`). Raises
    :class:`LedgerSpecError` when none of them gives a ``0x`` + hex ID."""
    env = os.environ if env is None else env
    if package is not None:
        return _package_id(package, package_setting)
    from_env = env.get(PACKAGE_ENV, "").strip()
    if from_env:
        return _package_id(from_env, PACKAGE_ENV)
    network = spec.network
    if network is None:
        raise spec.error(
            f"{spec.text.strip()!r} names a node but no network, so no `dtp deploy` record "
            f"gives its dtp package: set {_PACKAGE_SETTINGS}, or write NETWORK@URL."
        )
    path = deployments_path(env)
    record = read_deployments(path).get(network)
    if record is None:
        raise LedgerSpecError(
            f"No dtp package is recorded for {network} ({spec.setting}; records: {path}): "
            f"run `dtp deploy --network {network}`, or set {_PACKAGE_SETTINGS}."
        )
    return _package_id(record["package_id"], f"{path}: {network}")


def recorded_admin_cap(
    spec: LedgerSpec, package_id: str, env: Mapping[str, str] | None = None
) -> str | None:
    """The AdminCap ``dtp deploy`` recorded with ``package_id`` for the spec's network
    (docs/sui.md, "Upgrading the package"), or None: no network, no record, a record of
    another package, or one written before deploys recorded it."""
    if spec.network is None:
        return None
    try:
        record = read_deployments(deployments_path(env)).get(spec.network)
    except LedgerSpecError:
        return None
    if record is None or not isinstance(record.get("admin_cap"), str):
        return None
    try:
        if normalize_id(record["package_id"], "package ID") != package_id:
            return None
        return normalize_id(record["admin_cap"], "AdminCap ID")
    except ChainError:
        return None
