"""The private tier's format and the rule every peer applies to it: docs/graph.md, "The
private envelope (format 1)", says the souls, the signed string, the bodies and their
keys byte for byte.

A private space belongs to an *author* (a host key, named by its Sui address) and holds
nodes whose values are encrypted to a set of *readers*, each known by its X25519 Noise
static key. Peers that are not readers check the signature and the body's shape (not the
ciphertext: they cannot), merge by HAM and forward; the keys and who may read are the
business of :mod:`dtp.graph._tiers`.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from dtp.errors import ErrorCode, LocalProtocolError, PrivateDataError
from dtp.graph._batch import filter_souls
from dtp.graph.namespace import _key, _update_bytes
from dtp.identity.keys import HostIdentity
from dtp.native.reference._limits import HAM_MAX_VALUE
from dtp.native.types import HamUpdate

PREFIX = b"%0x"
TEXT_PREFIX = "dtp/p1:"
"""What every stored value of a private soul starts with (inside its JSON quotes): the
format's name and version."""
KEYS_SUFFIX = ":keys"
SIGN_DOMAIN = b"dtp-graph-v1/private-field\x00"
VALUE_LABEL = b"dtp-graph-v1/private-value\x00"
WRAP_LABEL = b"dtp-graph-v1/private-wrap\x00"

PUBLIC_KEY_LEN = 32
SIGNATURE_LEN = 64
KEY_ID_LEN = 16
NONCE_LEN = 24
CONTENT_KEY_LEN = 32
TAG_LEN = 16
PAD = 32
"""Plaintexts are padded with zero bytes to a multiple of this: sizes leak to 32 bytes."""

VALUE = 1
READER = 2
WRAP = 3

_SIGNED_LEN = PUBLIC_KEY_LEN + SIGNATURE_LEN
_VALUE_HEADER = 1 + KEY_ID_LEN + NONCE_LEN
_WRAP_LEN = 1 + 32 + CONTENT_KEY_LEN + TAG_LEN
_ZERO_NONCE = bytes(12)
_QUOTED_PREFIX = b'"' + TEXT_PREFIX.encode()
_B64URL = re.compile(rb"[A-Za-z0-9_-]*")

_CLAIMED = re.compile(rb"%0x[0-9a-fA-F]{64}")
_SOUL = re.compile(rb"%(0x[0-9a-f]{64})/([A-Za-z0-9_.-]{1,64})(:keys|/.+)?", re.DOTALL)
SPACE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_READER_FIELD = re.compile(rb"r:([0-9a-f]{64})")
_WRAP_FIELD = re.compile(rb"w:([0-9a-f]{32}):([0-9a-f]{64})")

# the largest Gun text a private value may hold: its stored string stays within a HAM value
MAX_PLAINTEXT = (
    ((HAM_MAX_VALUE - len(_QUOTED_PREFIX) - 1) // 4 * 3 - _SIGNED_LEN - _VALUE_HEADER - TAG_LEN)
    // PAD
    * PAD
)

# reasons an update is refused (keys of Graph.stats["refused_by_reason"])
UNSIGNED = "private_unsigned"
WRONG_KEY = "private_wrong_key"
BAD_SIGNATURE = "private_bad_signature"
BAD_SOUL = "private_bad_soul"
MALFORMED = "private_malformed"
#: What each reason means, as a refused update is reported to the peer that sent it.
MESSAGES = {
    UNSIGNED: "a private field without its author's signature",
    WRONG_KEY: "signed by a key that is not the space's author",
    BAD_SIGNATURE: "the author's signature does not verify",
    BAD_SOUL: "private souls read %0x<64 lowercase hex>/<space>[/...]",
    MALFORMED: "not a private envelope of this version",
}


@dataclass(frozen=True)
class PrivateSoul:
    """A private soul, parsed: its author's address, its space, and whether it is the
    space's key node (``path`` is the node's path below the space root, "" for the
    root and the key node)."""

    author: str
    space: str
    keys: bool
    path: str


def is_private(soul: bytes) -> bool:
    """True for souls that start like a private one (well-formed or refused)."""
    return _CLAIMED.match(soul) is not None


def parse_soul(soul: bytes) -> PrivateSoul | None:
    """The parts of a well-formed private soul, or None (public, or malformed)."""
    match = _SOUL.fullmatch(soul)
    if match is None:
        return None
    tail = match.group(3) or b""
    try:
        path = tail[1:].decode() if tail.startswith(b"/") else ""
    except UnicodeDecodeError:
        return None
    return PrivateSoul(match.group(1).decode(), match.group(2).decode(), tail == b":keys", path)


def space_soul(author: str, space: str) -> str:
    """The root soul of ``author``'s space ``space``."""
    return f"%{author}/{space}"


def key_soul(author: str, space: str) -> str:
    """The soul of the key node of ``author``'s space ``space``."""
    return f"%{author}/{space}{KEYS_SUFFIX}"


def reader_field(reader: bytes) -> str:
    """The key node's field recording whether ``reader`` reads."""
    return "r:" + reader.hex()


def wrap_field(key_id: bytes, reader: bytes) -> str:
    """The key node's field holding content key ``key_id`` wrapped to ``reader``."""
    return f"w:{key_id.hex()}:{reader.hex()}"


def parse_key_field(field: bytes) -> tuple[str, bytes, bytes | None] | None:
    """``("r", reader, None)`` or ``("w", reader, key id)`` for a key node's field, None
    for any other name."""
    match = _READER_FIELD.fullmatch(field)
    if match is not None:
        return "r", bytes.fromhex(match.group(1).decode()), None
    match = _WRAP_FIELD.fullmatch(field)
    if match is not None:
        return "w", bytes.fromhex(match.group(2).decode()), bytes.fromhex(match.group(1).decode())
    return None


# -- the signed string -------------------------------------------------------------------


def signing_message(soul: bytes, field: bytes, state: float, body: bytes) -> bytes:
    """The bytes the author signs for a field."""
    return SIGN_DOMAIN + _update_bytes(soul, field, state, body)


def sign(identity: HostIdentity, soul: bytes, field: bytes, state: float, body: bytes) -> bytes:
    """The stored value (Gun text, UTF-8) of a field of ``identity``'s private space."""
    parsed = parse_soul(soul)
    if parsed is None:
        raise LocalProtocolError(f"not a private soul: {soul[:80]!r}", ErrorCode.ARG)
    if parsed.author != identity.sui_address:
        raise LocalProtocolError(
            f"{soul[:80].decode(errors='replace')} belongs to {parsed.author}, "
            f"not {identity.sui_address}",
            ErrorCode.ARG,
        )
    raw = identity.ed25519_public + identity.sign(signing_message(soul, field, state, body)) + body
    return _QUOTED_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=") + b'"'


def unpack(stored: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(public key, signature, body) of a stored value, or None when it is not of the
    form ``"dtp/p1:<base64url>"``."""
    if not stored.startswith(_QUOTED_PREFIX) or not stored.endswith(b'"') or len(stored) < 9:
        return None
    text = stored[len(_QUOTED_PREFIX) : -1]
    if _B64URL.fullmatch(text) is None or len(text) % 4 == 1:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(raw) <= _SIGNED_LEN or base64.urlsafe_b64encode(raw).rstrip(b"=") != text:
        # (one spelling per value: unused low bits set would make another string of the
        # same signed bytes, a second value that wins or loses the tie against the first)
        return None
    return raw[:PUBLIC_KEY_LEN], raw[PUBLIC_KEY_LEN:_SIGNED_LEN], raw[_SIGNED_LEN:]


def body_of(stored: bytes | str) -> bytes | None:
    """The body of a stored value (its Gun text, or the string a read returned), or None."""
    if isinstance(stored, str):
        stored = b'"' + stored.encode("utf-8", "surrogatepass") + b'"'
    parts = unpack(stored)
    return None if parts is None else parts[2]


def _body_shape(parsed: PrivateSoul, field: bytes, body: bytes) -> bool:
    """Whether a body has the shape its soul and field call for."""
    if parsed.keys:
        kind = parse_key_field(field)
        if kind is None:
            return False
        if kind[0] == "r":
            return len(body) == 2 and body[0] == READER and body[1] in (0, 1)
        return len(body) == _WRAP_LEN and body[0] == WRAP
    sealed = len(body) - _VALUE_HEADER - TAG_LEN
    return body[0] == VALUE and sealed >= PAD and sealed % PAD == 0


def check(update: HamUpdate) -> str | None:
    """Why an update to a private soul must be refused, or None if it is valid (and for
    souls outside the private tier). Needs no key: every peer runs it."""
    soul, field, state, stored = update
    if not is_private(soul):
        return None
    parsed = parse_soul(soul)
    if parsed is None:
        return BAD_SOUL
    parts = unpack(stored)
    if parts is None:
        return UNSIGNED
    public, signature, body = parts
    address, key = _key(public)
    if address != parsed.author:
        return WRONG_KEY
    try:
        key.verify(signature, signing_message(soul, field, state, body))
    except InvalidSignature:
        return BAD_SIGNATURE
    if not _body_shape(parsed, field, body):
        return MALFORMED
    return None


def filter_batch(
    batch: bytes,
    held: Callable[[list[HamUpdate]], list[bool]] | None = None,
    details: list[tuple[HamUpdate, str, str]] | None = None,
) -> tuple[bytes, dict[str, int]]:
    """Drop the updates of a peer's batch that break the private tier's rule, as
    :func:`dtp.graph.namespace.filter_batch` does for the protected tier (the marker:
    ``%0x`` and 64 hex digits)."""
    if _CLAIMED.search(batch) is None:
        return batch, {}
    return filter_souls(batch, (PREFIX,), is_private, _judge, held, details)


def _judge(update: HamUpdate) -> tuple[str, str] | None:
    reason = check(update)
    return None if reason is None else (reason, MESSAGES[reason])


# -- values: encrypted under a content key -----------------------------------------------


def _value_key(content_key: bytes, key_id: bytes, nonce: bytes) -> ChaCha20Poly1305:
    info = VALUE_LABEL + key_id + nonce
    return ChaCha20Poly1305(HKDFExpand(hashes.SHA256(), 32, info).derive(content_key))


def seal_value(
    content_key: bytes,
    key_id: bytes,
    soul: bytes,
    field: bytes,
    state: float,
    text: bytes,
    *,
    nonce: bytes | None = None,
) -> bytes:
    """The body of a value: ``text`` (the value's Gun text) encrypted under the content
    key, bound to its soul, field and state. ``nonce`` is random unless given (the
    docs' vectors fix it)."""
    if len(text) > MAX_PLAINTEXT:
        raise LocalProtocolError(
            f"a private value's Gun text is at most {MAX_PLAINTEXT} bytes, not {len(text)}",
            ErrorCode.HAM_SIZE,
        )
    if nonce is None:
        nonce = os.urandom(NONCE_LEN)
    elif len(nonce) != NONCE_LEN:
        raise LocalProtocolError(f"a value's nonce is {NONCE_LEN} bytes", ErrorCode.ARG)
    header = bytes([VALUE]) + key_id + nonce
    padded = text + bytes(-len(text) % PAD)
    aad = VALUE_LABEL + _update_bytes(soul, field, state, header)
    return header + _value_key(content_key, key_id, nonce).encrypt(_ZERO_NONCE, padded, aad)


def value_key_id(body: bytes) -> bytes | None:
    """The key id a value's body names, or None when it is not a value's body."""
    if len(body) < _VALUE_HEADER + TAG_LEN or body[0] != VALUE:
        return None
    return body[1 : 1 + KEY_ID_LEN]


def open_value(content_key: bytes, soul: bytes, field: bytes, state: float, body: bytes) -> bytes:
    """The Gun text inside a value's body; :class:`~dtp.errors.PrivateDataError` when it
    does not authenticate under this key for this soul, field and state."""
    key_id = value_key_id(body)
    if key_id is None:
        raise PrivateDataError(f"field {field[:64]!r} of {soul[:80]!r} holds no private value")
    nonce = body[1 + KEY_ID_LEN : _VALUE_HEADER]
    aad = VALUE_LABEL + _update_bytes(soul, field, state, body[:_VALUE_HEADER])
    try:
        padded = _value_key(content_key, key_id, nonce).decrypt(
            _ZERO_NONCE, body[_VALUE_HEADER:], aad
        )
    except InvalidTag:
        raise PrivateDataError(
            f"field {field[:64]!r} of {soul[:80]!r} fails authentication"
        ) from None
    # (a Gun text never ends in a zero byte: JSON ends in a quote, a brace, a digit, a letter)
    return padded.rstrip(b"\x00")


# -- content keys, wrapped to each reader ------------------------------------------------


def new_content_key() -> tuple[bytes, bytes]:
    """A fresh (key id, content key)."""
    return os.urandom(KEY_ID_LEN), os.urandom(CONTENT_KEY_LEN)


def _wrap_aead(shared: bytes, ephemeral: bytes, reader: bytes) -> ChaCha20Poly1305:
    key = HKDF(hashes.SHA256(), 32, salt=ephemeral + reader, info=WRAP_LABEL).derive(shared)
    return ChaCha20Poly1305(key)


def wrap(
    content_key: bytes,
    reader: bytes,
    soul: bytes,
    field: bytes,
    state: float,
    *,
    ephemeral_secret: X25519PrivateKey | None = None,
) -> bytes:
    """The body of a wrap: ``content_key`` encrypted to the X25519 key ``reader``
    (LocalProtocolError when ``reader`` is no usable X25519 public key). The ephemeral
    key is fresh unless given (the docs' vectors fix it)."""
    secret = X25519PrivateKey.generate() if ephemeral_secret is None else ephemeral_secret
    ephemeral = secret.public_key().public_bytes_raw()
    try:
        shared = secret.exchange(X25519PublicKey.from_public_bytes(reader))
    except ValueError:  # a low-order point: every secret gives the same (zero) result
        raise LocalProtocolError(
            f"not a usable X25519 public key: {reader.hex()}", ErrorCode.ARG
        ) from None
    head = bytes([WRAP]) + ephemeral
    aad = WRAP_LABEL + _update_bytes(soul, field, state, head)
    return head + _wrap_aead(shared, ephemeral, reader).encrypt(_ZERO_NONCE, content_key, aad)


def unwrap(secret: X25519PrivateKey, soul: bytes, field: bytes, state: float, body: bytes) -> bytes:
    """The content key inside a wrap to ``secret``'s public key;
    :class:`~dtp.errors.PrivateDataError` when it does not open."""
    if len(body) != _WRAP_LEN or body[0] != WRAP:
        raise PrivateDataError(f"field {field[:120]!r} of {soul[:80]!r} holds no wrapped key")
    ephemeral = body[1:33]
    reader = secret.public_key().public_bytes_raw()
    aad = WRAP_LABEL + _update_bytes(soul, field, state, body[:33])
    try:
        shared = secret.exchange(X25519PublicKey.from_public_bytes(ephemeral))
        return _wrap_aead(shared, ephemeral, reader).decrypt(_ZERO_NONCE, body[33:], aad)
    except (ValueError, InvalidTag):
        raise PrivateDataError(
            f"the key wrapped in field {field[:120]!r} of {soul[:80]!r} does not open"
        ) from None


__all__ = [
    "BAD_SIGNATURE",
    "BAD_SOUL",
    "KEYS_SUFFIX",
    "MALFORMED",
    "MAX_PLAINTEXT",
    "PREFIX",
    "READER",
    "SIGN_DOMAIN",
    "TEXT_PREFIX",
    "UNSIGNED",
    "VALUE",
    "WRAP",
    "WRONG_KEY",
    "PrivateSoul",
    "body_of",
    "check",
    "filter_batch",
    "is_private",
    "key_soul",
    "new_content_key",
    "open_value",
    "parse_key_field",
    "parse_soul",
    "reader_field",
    "seal_value",
    "sign",
    "signing_message",
    "space_soul",
    "unpack",
    "unwrap",
    "value_key_id",
    "wrap",
    "wrap_field",
]
