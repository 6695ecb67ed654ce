"""The Sui CLI's keystore: the active address's key, for the ``dtp`` commands that sign
on a Sui ledger when there is no DTP identity file (docs/sui.md, "Signing keys").

The Sui CLI keeps its settings in ``$SUI_CONFIG_DIR`` (default ``~/.sui/sui_config``):
``client.yaml`` names the ``active_address`` and the keystore file (``keystore: File:
PATH``, by default ``sui.keystore`` beside it), a JSON list of base64 strings, each a
scheme flag byte followed by the private key. DTP signs with Ed25519 keys only (flag
0x00); the Noise static key is derived from the Ed25519 seed by
:meth:`dtp.identity.keys.HostIdentity.from_sui_keystring` (keyed BLAKE2b-256, key
``DTP/noise-static/v1``: one-way, and the same keystore always gives the same identity).

The key is read into memory only; nothing is written.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from dtp.errors import ChainError, LedgerSpecError
from dtp.ledger._objects import normalize_id

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity

__all__ = ["SUI_CONFIG_ENV", "active_address", "keystore_identity", "sui_config_dir"]

#: The variable naming the Sui CLI's configuration directory.
SUI_CONFIG_ENV: Final = "SUI_CONFIG_DIR"
#: The Sui signature scheme flags of the keys a keystore may hold, by name.
_SCHEMES: Final = {0x00: "Ed25519", 0x01: "Secp256k1", 0x02: "Secp256r1"}
_HINT: Final = "or create a DTP identity with `dtp keys new`, or pass --identity"


def sui_config_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$SUI_CONFIG_DIR``, else ``~/.sui/sui_config``."""
    given = (os.environ if env is None else env).get(SUI_CONFIG_ENV, "")
    return Path(given) if given else Path.home() / ".sui" / "sui_config"


def _client_config(env: Mapping[str, str] | None) -> tuple[Path, dict[str, Any]]:
    """``client.yaml`` of the Sui CLI, read: (its path, its mapping)."""
    import yaml

    path = sui_config_dir(env) / "client.yaml"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LedgerSpecError(
            f"No DTP identity file, and no Sui CLI configuration at {path}: set "
            f"{SUI_CONFIG_ENV} to the Sui CLI's configuration directory, {_HINT}."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise LedgerSpecError(f"{path} cannot be read: {why}.") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = str(exc).splitlines()[0] if str(exc) else "invalid YAML"
        raise LedgerSpecError(f"{path} is not the Sui CLI's client.yaml: {problem}.") from None
    if not isinstance(doc, dict):
        raise LedgerSpecError(f"{path} is not the Sui CLI's client.yaml (not a mapping).")
    return path, doc


def active_address(env: Mapping[str, str] | None = None) -> str:
    """The Sui CLI's ``active_address`` (``client.yaml``), normalized; a
    :class:`LedgerSpecError` naming the file when it has none. Reading it needs no key
    (read-only commands use it for "my" address)."""
    path, doc = _client_config(env)
    value = doc.get("active_address")
    if not isinstance(value, str) or not value.strip():
        raise LedgerSpecError(
            f"{path} names no active_address: choose one with `sui client switch --address "
            f"ADDRESS`, {_HINT}."
        )
    try:
        return normalize_id(value, "address")
    except ChainError as exc:
        raise LedgerSpecError(f"{path}: active_address: {exc}") from None


def _keystore_path(config: Path, doc: Mapping[str, Any]) -> Path:
    keystore = doc.get("keystore")
    if keystore is None:
        return config.parent / "sui.keystore"
    file = keystore.get("File") if isinstance(keystore, dict) else None
    if not isinstance(file, str) or not file:
        raise LedgerSpecError(
            f"{config}: keystore is {keystore!r}, not a keystore file (keystore: File: PATH): "
            f"DTP reads keys from a file only; {_HINT}."
        )
    path = Path(file).expanduser()
    return path if path.is_absolute() else config.parent / path


def _address_of(scheme: int, private: bytes) -> str | None:
    """The Sui address of a Secp256k1 or Secp256r1 private key (``blake2b-256(flag ||
    compressed public key)``), None when it is no such key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    curve: ec.EllipticCurve = ec.SECP256K1() if scheme == 0x01 else ec.SECP256R1()
    try:
        key = ec.derive_private_key(int.from_bytes(private, "big"), curve)
    except ValueError:
        return None
    public = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    return "0x" + hashlib.blake2b(bytes([scheme]) + public, digest_size=32).hexdigest()


def keystore_identity(env: Mapping[str, str] | None = None) -> HostIdentity:
    """The Sui CLI's active address's key as a :class:`~dtp.identity.keys.HostIdentity` (its
    Noise key derived from it, see the module docs). Raises :class:`LedgerSpecError`,
    one sentence naming the file, when there is no configuration or keystore, no active
    address, no key for it in the keystore, or a key that is not Ed25519."""
    from dtp.identity.keys import HostIdentity

    config, doc = _client_config(env)
    address = active_address(env)
    path = _keystore_path(config, doc)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LedgerSpecError(
            f"{config} names the keystore {path}, which does not exist; {_HINT}."
        ) from None
    except OSError as exc:
        raise LedgerSpecError(f"{path} cannot be read: {exc.strerror or exc}.") from None
    except (ValueError, RecursionError):
        entries = None
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise LedgerSpecError(f"{path} is not a Sui keystore (a JSON list of key strings).")
    for entry in entries:
        try:
            raw = base64.b64decode(entry.strip(), validate=True)
        except (binascii.Error, ValueError):
            continue  # (a damaged entry is not the active address's: others may be)
        if len(raw) != 33 or raw[0] not in _SCHEMES:
            continue
        if raw[0] == 0x00:
            identity = HostIdentity.from_sui_keystring(entry)
            if identity.sui_address == address:
                return identity
        elif _address_of(raw[0], raw[1:]) == address:
            raise LedgerSpecError(
                f"The Sui CLI's active address {address} has a {_SCHEMES[raw[0]]} key in "
                f"{path}, and DTP signs with Ed25519 keys only: switch to an Ed25519 "
                f"address with `sui client switch --address`, {_HINT}."
            )
    raise LedgerSpecError(
        f"{path} holds no key for the Sui CLI's active address {address} (client.yaml: "
        f"{config}); {_HINT}."
    )
