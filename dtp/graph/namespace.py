"""User space: nodes owned by a host key (docs/graph.md, "Signed namespaces").

A soul that begins with ``~0x`` and 64 hex digits belongs to the user space. It must
read ``~0x<64 lowercase hex>`` -- a Sui address, the *owner* -- optionally followed by
``/`` and anything; other souls with that beginning (upper-case hex, no ``/``) are
refused outright, so nobody can squat look-alike names. Every other soul, ``~bob``
included, is public.

Every field of an owned node carries a **signed envelope** as its stored value::

    value = ed25519 public key (32) || signature (64) || the value's Gun text

The public key must hash to the owner's Sui address (``blake2b-256(0x00 || key)``), and
the signature is Ed25519 over::

    b"dtp-graph-v1/signed-field\\x00" || canonical HAM update encoding of
        (soul, field, state, the value's Gun text)

(protocol.md 6.1: varint lengths, the state as f64le), so a signature binds the value
to its node, its field and its state -- it cannot be replayed elsewhere or later. The
envelope lives inside the HAM value, so it travels, persists and is forwarded with the
update unchanged, and every peer checks it again before the update reaches the merge.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from functools import lru_cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from dtp.errors import ErrorCode, LocalProtocolError
from dtp.graph._batch import MAX_DETAILS, drop_refused
from dtp.identity.keys import HostIdentity, sui_address_from_public_key
from dtp.native.core import decode_ham_batch, encode_ham_batch, find_ham_souls
from dtp.native.reference._limits import HAM_BATCH_VERSION
from dtp.native.types import HamUpdate

USER_SPACE = b"~0x"
DOMAIN = b"dtp-graph-v1/signed-field\x00"
PUBLIC_KEY_LEN = 32
SIGNATURE_LEN = 64
ENVELOPE_LEN = PUBLIC_KEY_LEN + SIGNATURE_LEN

_OWNED = re.compile(rb"~(0x[0-9a-f]{64})(?:/.*)?", re.DOTALL)
_CLAIMED = re.compile(rb"~0x[0-9a-fA-F]{64}")  # what a user-space soul starts with
_HEADER = struct.Struct("<BI")
_ONE = _HEADER.pack(HAM_BATCH_VERSION, 1)  # the header of a batch of one update

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


def signing_message(soul: bytes, field: bytes, state: float, value: bytes) -> bytes:
    """The bytes the owner signs: the domain, then the canonical update encoding."""
    return DOMAIN + encode_ham_batch([HamUpdate(soul, field, state, value)])[5:]


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


@lru_cache(maxsize=1024)
def _key(public: bytes) -> tuple[str, Ed25519PublicKey]:
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
    """Drop the updates of a peer's batch that break the ownership rule.

    Returns the batch to merge (the input itself when nothing was dropped) and the
    count of refusals per reason. A batch in which ``~0x`` and 64 hex digits appear
    nowhere cannot name a user-space soul, so it passes without being decoded (one
    regex scan in C). Otherwise the C core validates it (RemoteProtocolError if
    malformed) and finds the updates whose soul starts with ``~0x``; only those are
    decoded here, and every user-space one checked. (Decoding the whole batch in Python
    cost about a second of CPU per 8 MiB of small public updates that one such update,
    or the marker anywhere in a value, brought along.)

    ``held(updates)``, if given, tells for each user-space update whether the table
    already holds exactly it (same state and stored bytes, signature included): such
    an update was checked when it first came, so it passes without a second Ed25519
    verification -- a batch sent again (a resync, the same change forwarded by several
    neighbours) costs a table lookup per update, not a signature check.

    ``details``, if given, receives ``(update, reason, message)`` for each refused
    update (a sync session reports them to the peer) while it holds fewer than
    :data:`MAX_DETAILS`.
    """
    if _CLAIMED.search(batch) is None:
        return batch, {}
    claimed: list[tuple[int, int, HamUpdate]] = []
    for start, end in find_ham_souls(batch, USER_SPACE):
        (update,) = decode_ham_batch(_ONE + batch[start:end])
        if _CLAIMED.match(update.soul) is not None:
            claimed.append((start, end, update))
    if not claimed:
        return batch, {}
    return drop_refused(batch, claimed, held, _judge, details)


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
    "WRONG_KEY",
    "check",
    "filter_batch",
    "is_user_space",
    "open_envelope",
    "owner_of",
    "seal",
    "signing_message",
    "user_soul",
]
