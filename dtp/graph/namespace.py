"""User space: nodes owned by a host key. docs/graph.md, "Signed namespaces", says the
souls (``~0x<64 lowercase hex>`` -- a Sui address, the *owner* -- optionally followed by
``/`` and anything; look-alikes refused), the signed envelope and what its signature
covers, and its Gun string on Gun's wire.

Every field of an owned node carries a **signed envelope** as its stored value::

    value = ed25519 public key (32) || signature (64) || the value's Gun text

The signature is over :func:`signing_message` (the soul, field and state with the
value), so it cannot be replayed elsewhere or later. The envelope lives inside the HAM
value: it travels, persists and is forwarded with the update unchanged, and every peer
checks it again before the update reaches the merge. On Gun's wire it travels as the
string :func:`to_wire` makes (``"dtp/s1:"`` and the ranked hex of key and signature,
so that Gun peers break ties as dtp peers do), read back by :func:`from_wire`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from dtp.errors import ErrorCode, LocalProtocolError
from dtp.graph._batch import MAX_DETAILS, filter_souls
from dtp.graph.values import is_gun_value
from dtp.identity.keys import HostIdentity, sui_address_from_public_key
from dtp.native.core import encode_ham_batch
from dtp.native.reference._limits import HAM_BATCH_HEADER_LEN
from dtp.native.types import HamUpdate

USER_SPACE = b"~0x"
DOMAIN = b"dtp-graph-v1/signed-field\x00"
PUBLIC_KEY_LEN = 32
SIGNATURE_LEN = 64
ENVELOPE_LEN = PUBLIC_KEY_LEN + SIGNATURE_LEN
WIRE_PREFIX = "dtp/s1:"
"""What a signed field's Gun string starts with on Gun's wire: the form's name and
version."""

# a byte's rank in protocol.md 6.3's UTF-16 order, and back
_RANK = bytes(b if b < 0xEE else b + 0x10 if b < 0xF0 else b - 2 for b in range(256))
_UNRANK = bytes(_RANK.index(r) for r in range(256))
_WIRE_HEX = re.compile(f"[0-9a-f]{{{2 * ENVELOPE_LEN}}}")

_OWNED = re.compile(rb"~(0x[0-9a-f]{64})(?:/.*)?", re.DOTALL)
_CLAIMED = re.compile(rb"~0x[0-9a-fA-F]{64}")  # what a user-space soul starts with

# reasons an update is refused (keys of Graph.stats["rejected"])
UNSIGNED = "unsigned"
BAD_SIGNATURE = "bad_signature"
WRONG_KEY = "wrong_key"
BAD_SOUL = "bad_soul"
#: What each reason means, as a refused update is reported to the peer that sent it.
MESSAGES = {
    UNSIGNED: "a user-space field without its owner's signature",
    BAD_SIGNATURE: "the owner's signature does not verify",
    WRONG_KEY: "signed by a key that is not the space's owner",
    BAD_SOUL: "user-space souls read ~0x<64 lowercase hex>[/...]",
}


def user_soul(owner: str | HostIdentity, path: str = "") -> str:
    """The soul ``~<owner address>/<path>`` (or just ``~<owner>`` without a path)."""
    address = owner.sui_address if isinstance(owner, HostIdentity) else owner
    soul = f"~{address}" + (f"/{path}" if path else "")
    if owner_of(soul.encode()) != address:
        raise LocalProtocolError(f"not a Sui address: {address!r}", ErrorCode.ARG)
    return soul


def is_user_space(soul: bytes) -> bool:
    """True for souls that start like an owned one (owned, or malformed and refused)."""
    return _CLAIMED.match(soul) is not None


def owner_of(soul: bytes) -> str | None:
    """The owner's Sui address of an owned soul; None for public souls and for
    malformed ``~`` souls (check :func:`is_user_space` to tell them apart)."""
    match = _OWNED.fullmatch(soul)
    return match.group(1).decode() if match else None


def _update_bytes(soul: bytes, field: bytes, state: float, value: bytes) -> bytes:
    """The canonical HAM update encoding of one update (protocol.md 6.1, no header): what
    the signed tiers sign (the private tier's associated data too)."""
    return encode_ham_batch([HamUpdate(soul, field, state, value)])[HAM_BATCH_HEADER_LEN:]


def signing_message(soul: bytes, field: bytes, state: float, value: bytes) -> bytes:
    """The bytes the owner signs: the domain, then the canonical update encoding."""
    return DOMAIN + _update_bytes(soul, field, state, value)


def seal(identity: HostIdentity, soul: bytes, field: bytes, state: float, value: bytes) -> bytes:
    """The stored value of an owned field: ``public key || signature || value``."""
    owner = owner_of(soul)
    if owner is None:
        raise LocalProtocolError(f"not an owned soul: {soul!r}", ErrorCode.ARG)
    if owner != identity.sui_address:
        raise LocalProtocolError(
            f"{soul.decode(errors='replace')[:80]} belongs to {owner}, not "
            f"{identity.sui_address}: only its owner's identity signs there (docs/graph.md, "
            "'Signed namespaces')",
            ErrorCode.ARG,
        )
    signature = identity.sign(signing_message(soul, field, state, value))
    return identity.ed25519_public + signature + value


def open_envelope(stored: bytes) -> bytes:
    """The JSON value inside an envelope (the caller knows the field is owned)."""
    return stored[ENVELOPE_LEN:]


def to_wire(stored: bytes) -> str | None:
    """The Gun string a signed field travels as on Gun's wire, or None for a stored
    value that is no envelope of a Gun value (one a format-1 file kept)."""
    if len(stored) < ENVELOPE_LEN or not is_gun_value(stored[ENVELOPE_LEN:]):
        return None
    ranked = stored[:ENVELOPE_LEN].translate(_RANK).hex()
    return WIRE_PREFIX + ranked + stored[ENVELOPE_LEN:].decode()


def from_wire(value: object) -> bytes | None:
    """The stored envelope a Gun peer's string stands for (the inverse of
    :func:`to_wire`), or None when it is not of that form (unchecked: :func:`check`
    judges the envelope)."""
    if not isinstance(value, str) or not value.startswith(WIRE_PREFIX):
        return None
    head = len(WIRE_PREFIX) + 2 * ENVELOPE_LEN
    if _WIRE_HEX.fullmatch(value, len(WIRE_PREFIX), head) is None:
        return None
    try:
        text = value[head:].encode()
    except UnicodeEncodeError:  # (a lone surrogate: no Gun value)
        return None
    if not is_gun_value(text):
        return None
    return bytes.fromhex(value[len(WIRE_PREFIX) : head]).translate(_UNRANK) + text


@lru_cache(maxsize=1024)
def _key(public: bytes) -> tuple[str, Ed25519PublicKey]:
    """A signer's Sui address and Ed25519 key (the signed tiers' checks, cached)."""
    return sui_address_from_public_key(public), Ed25519PublicKey.from_public_bytes(public)


def check(update: HamUpdate) -> str | None:
    """Why an update to the user space must be refused, or None if it is valid.

    Public souls (no ``~``) are always valid here.
    """
    soul, field, state, stored = update
    if not is_user_space(soul):
        return None
    owner = owner_of(soul)
    if owner is None:
        return BAD_SOUL
    if len(stored) < ENVELOPE_LEN:
        return UNSIGNED
    public = stored[:PUBLIC_KEY_LEN]
    address, key = _key(public)
    if address != owner:
        return WRONG_KEY
    try:
        key.verify(
            stored[PUBLIC_KEY_LEN:ENVELOPE_LEN],
            signing_message(soul, field, state, stored[ENVELOPE_LEN:]),
        )
    except InvalidSignature:
        return BAD_SIGNATURE
    return None


def filter_batch(
    batch: bytes,
    held: Callable[[list[HamUpdate]], list[bool]] | None = None,
    details: list[tuple[HamUpdate, str, str]] | None = None,
) -> tuple[bytes, dict[str, int]]:
    """Drop the updates of a peer's batch that break the ownership rule: the batch to
    merge (the input itself when nothing was dropped) and the count of refusals per
    reason. A batch in which ``~0x`` and 64 hex digits appear nowhere cannot name a
    user-space soul and passes without being decoded (one regex scan in C); the rest
    goes through :func:`dtp.graph._batch.filter_souls`. ``held(updates)``, if given,
    tells which updates the table already holds exactly, signature included: they pass
    without a second verification. ``details``, if given, receives ``(update, reason,
    message)`` for each refused update while it holds fewer than :data:`MAX_DETAILS`.
    """
    if _CLAIMED.search(batch) is None:
        return batch, {}
    return filter_souls(batch, (USER_SPACE,), _CLAIMED.match, _judge, held, details)


def _judge(update: HamUpdate) -> tuple[str, str] | None:
    reason = check(update)
    return None if reason is None else (reason, MESSAGES[reason])


__all__ = [
    "BAD_SIGNATURE",
    "BAD_SOUL",
    "DOMAIN",
    "ENVELOPE_LEN",
    "MAX_DETAILS",
    "MESSAGES",
    "UNSIGNED",
    "USER_SPACE",
    "WIRE_PREFIX",
    "WRONG_KEY",
    "check",
    "filter_batch",
    "from_wire",
    "is_user_space",
    "open_envelope",
    "owner_of",
    "seal",
    "signing_message",
    "to_wire",
    "user_soul",
]
