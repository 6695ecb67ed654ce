"""Host identities: the Sui authority key (Ed25519) and the Noise static key (X25519).

A DTP host is named on chain by its ``Host`` object; the object records the host's
*authority* (a Sui address, derived from an Ed25519 public key) and its Noise static
public key. :class:`HostIdentity` holds both private keys and does what the rest of DTP
needs with them: Sui addresses, Sui intent signing (personal messages and transactions,
whose checks take every Sui scheme, :mod:`dtp.identity._schemes`, as a wallet of any
kind may sign), interchange with Sui wallets and pysui through keystrings, and identity
files, encrypted with a passphrase or plain, kept from other users
(:meth:`HostIdentity.save`, :meth:`HostIdentity.load`).

Identity file format (JSON, version 1)::

    {
      "version": 1,
      "kind": "dtp-identity",
      "sui_address": "0x…",              # public header, for humans and tools
      "noise_public": "<64 hex>",
      "secret": {"encoding": "plain", "data": "<base64 of the secret JSON>"}
    }

or, with a passphrase, ``"secret": {"encoding": "scrypt-chacha20poly1305", "kdf":
{"name": "scrypt", "n": 32768, "r": 8, "p": 1, "salt": "<base64, 16 bytes>"}, "nonce":
"<base64, 12 bytes>", "ciphertext": "<base64>"}``: scrypt turns the (NFC-normalized,
UTF-8) passphrase into a 32-byte ChaCha20-Poly1305 key, which seals the secret JSON with
the public header (the four fields above, as compact JSON with sorted keys) as
associated data. The secret JSON is ``{"noise_private": "<base64, 32 bytes>",
"sui_keystring": "<base64 Sui keystring>"}``. On load the keys must match the header.

Secrets never appear in ``repr`` or in exception messages.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hashlib
import json
import os
import secrets
import shlex
import stat
import unicodedata
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from dtp.errors import CryptoError, KeyFileError
from dtp.identity._bcs import uleb128
from dtp.identity._ed25519 import has_small_order as has_small_order
from dtp.identity._files import data_home, fsync_directory
from dtp.identity._schemes import InvalidSignature, check_signature

__all__ = [
    "ED25519_FLAG",
    "IDENTITY_FILE_KIND",
    "IDENTITY_FILE_VERSION",
    "SUI_SIGNATURE_SIZE",
    "HostIdentity",
    "InvalidSignature",
    "NeedsSuiNode",
    "core_noise_key",
    "default_identity_path",
    "noise_key_object",
    "passphrase_from_env",
    "personal_message_digest",
    "sui_address_from_public_key",
    "transaction_digest",
    "verify_personal_message",
    "verify_transaction",
]

_T = TypeVar("_T")

#: Durable renames, for identity files and the sealed inbox's state file alike.
_fsync_directory = fsync_directory

#: Sui signature scheme flag for Ed25519 (the only scheme DTP host authorities use).
ED25519_FLAG: Final = 0x00
#: Size of a serialized Ed25519 Sui signature: flag (1) || signature (64) || public key (32).
SUI_SIGNATURE_SIZE: Final = 1 + 64 + 32

#: Sui intents (scope, version, app id); see Sui's ``shared_crypto::intent``.
_INTENT_TRANSACTION: Final = bytes([0, 0, 0])
_INTENT_PERSONAL_MESSAGE: Final = bytes([3, 0, 0])

IDENTITY_FILE_KIND: Final = "dtp-identity"
IDENTITY_FILE_VERSION: Final = 1

# Encryption of the secret part of identity files.
_SCRYPT_N: Final = 2**15
_SCRYPT_R: Final = 8
_SCRYPT_P: Final = 1
_SALT_SIZE: Final = 16
_NONCE_SIZE: Final = 12
# Cost ceilings accepted on load, so a crafted file cannot make us burn gigabytes or
# minutes. Each of n, r, p within its own bound is not enough: scrypt's memory is
# 128 * r * n bytes (n=2**20, r=32 is 4 GiB) and its work grows with n * r * p. The
# ceilings sit well above what save() writes (32 MiB, n*r*p = 2**18, about 0.15 s),
# so files from a future, costlier default still load.
_SCRYPT_MAX_N: Final = 2**20
_SCRYPT_MAX_R: Final = 32
_SCRYPT_MAX_P: Final = 16
_SCRYPT_MAX_MEMORY: Final = 256 * 2**20  # 128 * r * n bytes: 8x the default
_SCRYPT_MAX_WORK: Final = 2**22  # n * r * p: 16x the default, a few seconds
_ENCRYPTED: Final = "scrypt-chacha20poly1305"
_PLAIN: Final = "plain"
#: What :meth:`HostIdentity.load` holds in place of a file that was not JSON.
_NOT_JSON: Final = object()
# Bech32 private keys ("suiprivkey1..."), as `sui keytool export` and wallets show them.
_SUI_BECH32_HRP: Final = "suiprivkey"
# Noise static key derivation from the Ed25519 seed (see from_sui_keystring).
_NOISE_DERIVATION_KEY: Final = b"DTP/noise-static/v1"
# An identity file is under a kilobyte; a file far larger is something else (a path
# mistyped onto a log or a disk image), refused before it is read into memory.
_MAX_IDENTITY_FILE_SIZE: Final = 1 << 20
# Symlinks followed on the way to an identity file, at most: Linux's limit for one
# lookup (ELOOP past it), for the check of the directories on the way.
_MAX_SYMLINKS: Final = 40


class NeedsSuiNode(InvalidSignature):
    """A zkLogin signature (or a multisig with zkLogin members), checked where no Sui
    node verifies its proof: it is refused, as it proves nothing there (docs/protocol.md
    8.4)."""


#: Transaction signatures a :class:`HostIdentity` of this process made, each taken once
#: by :func:`verify_transaction`: (digest, serialized signature) -> the signer's address.
#: An Ed25519 signature made with a key verifies under that key's public half, which is
#: the one the signature carries, so checking it again proves nothing new -- and
#: LocalLedger checks every transaction it signs itself (about 60 us each, on the path
#: of every ledger call). It holds nothing this process did not sign; bounded, oldest
#: dropped first (an unchecked entry only means one verification more).
_OWN_TX_SIGNATURES: dict[tuple[bytes, bytes], str] = {}
_OWN_TX_SIGNATURES_MAX: Final = 1024


def _remember_own_signature(digest: bytes, signature: bytes, address: str) -> None:
    table = _OWN_TX_SIGNATURES
    while len(table) >= _OWN_TX_SIGNATURES_MAX:
        # (other threads may sign or verify meanwhile: a race only costs a verification)
        with contextlib.suppress(RuntimeError, StopIteration, KeyError):
            del table[next(iter(table))]
    table[(digest, signature)] = address


# -- Sui primitives -------------------------------------------------------------------------


def _blake2b256(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def _bytes_arg(what: str, value: object) -> bytes:
    """``value`` as bytes if it is bytes-like; TypeError otherwise.

    ``bytes(value)`` would turn an int into that many zero bytes: ``sign(5)`` would sign
    five zero bytes, and ``verify_transaction(tx, 97)`` would read 97 zero bytes as a
    signature by the all-zero key (of small order), which verifies for any transaction.
    """
    try:
        return bytes(memoryview(value))  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"{what} must be a bytes-like object, not {type(value).__name__!r}"
        ) from None


def sui_address_from_public_key(ed25519_public: bytes) -> str:
    """The Sui address of an Ed25519 public key: ``0x`` + blake2b-256(0x00 || key), hex."""
    if len(ed25519_public) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return "0x" + _blake2b256(bytes([ED25519_FLAG]) + bytes(ed25519_public)).hex()


def personal_message_digest(message: bytes) -> bytes:
    """The 32 bytes Sui signs for a personal message.

    ``blake2b-256([3, 0, 0] || uleb128(len(message)) || message)``: the intent, then the
    message BCS-encoded as ``vector<u8>``.
    """
    data = _bytes_arg("the message", message)
    return _blake2b256(_INTENT_PERSONAL_MESSAGE + uleb128(len(data)) + data)


def transaction_digest(tx_bytes: bytes) -> bytes:
    """The 32 bytes Sui signs for transaction data: ``blake2b-256([0, 0, 0] || tx_bytes)``."""
    return _blake2b256(_INTENT_TRANSACTION + _bytes_arg("the transaction bytes", tx_bytes))


def _verify_sui_signature(digest: bytes, sui_signature: bytes) -> str:
    signer = check_signature(_bytes_arg("a Sui signature", sui_signature), digest)
    if signer.node_check is not None:
        raise NeedsSuiNode(
            "a zkLogin signature's proof is verified by a Sui node, which this check has "
            "not: it proves nothing here"
        )
    return signer.address


def verify_personal_message(message: bytes, sui_signature: bytes) -> str:
    """Check a Sui personal-message signature and return the signer's Sui address.

    ``sui_signature`` is the serialized form Sui wallets produce (base64-decoded), of
    any scheme :mod:`dtp.identity._schemes` checks: Ed25519 (``0x00 || sig || pubkey``,
    97 bytes, as :meth:`HostIdentity.sign_personal_message` makes it), Secp256k1,
    Secp256r1, passkey or multisig. Raises :class:`InvalidSignature` if it is
    malformed, of an unknown scheme, made with an Ed25519 key of small order
    (:func:`has_small_order`: anyone can sign for one; DTP refuses them in every check,
    a stricter rule than Sui's for transactions), or does not verify -- and
    :class:`NeedsSuiNode` for a zkLogin one, whose proof only a Sui node verifies;
    TypeError if ``message`` or ``sui_signature`` is not bytes-like (a wallet's base64
    string must be decoded first).
    """
    return _verify_sui_signature(personal_message_digest(message), sui_signature)


def verify_transaction(tx_bytes: bytes, sui_signature: bytes) -> str:
    """Check a Sui transaction signature (intent ``[0, 0, 0]``); return the signer's address.

    Raises :class:`InvalidSignature` and TypeError like :func:`verify_personal_message`.
    A signature a :class:`HostIdentity` of this process made over these bytes is known
    to verify: the first check of it is a lookup (:data:`_OWN_TX_SIGNATURES`).
    """
    digest = transaction_digest(tx_bytes)
    signature = _bytes_arg("a Sui signature", sui_signature)
    signer = _OWN_TX_SIGNATURES.pop((digest, signature), None)
    if signer is not None:
        return signer
    return _verify_sui_signature(digest, signature)


# -- bech32 (BIP-173), for "suiprivkey1..." strings ----------------------------------------

_BECH32_CHARSET: Final = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_GENERATOR: Final = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _bech32_polymod(values: list[int]) -> int:
    checksum = 1
    for value in values:
        top = checksum >> 25
        checksum = ((checksum & 0x1FFFFFF) << 5) ^ value
        for i, generator in enumerate(_BECH32_GENERATOR):
            if (top >> i) & 1:
                checksum ^= generator
    return checksum


def _bech32_hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert_bits(data: list[int] | bytes, from_bits: int, to_bits: int, pad: bool) -> bytes:
    acc = bits = 0
    out = bytearray()
    mask = (1 << to_bits) - 1
    for value in data:
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & mask)
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & mask)
    elif bits >= from_bits or (acc << (to_bits - bits)) & mask:
        raise ValueError("invalid bech32 padding")
    return bytes(out)


def _bech32_encode(hrp: str, payload: bytes) -> str:
    data = list(_convert_bits(payload, 8, 5, pad=True))
    polymod = _bech32_polymod([*_bech32_hrp_expand(hrp), *data, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_BECH32_CHARSET[d] for d in data + checksum)


def _bech32_decode(text: str, hrp: str) -> bytes:
    if text.lower() != text and text.upper() != text:
        raise ValueError("mixed-case bech32 string")
    text = text.lower()
    sep = text.rfind("1")
    if text[:sep] != hrp or len(text) - sep - 1 < 6:
        raise ValueError(f"not a {hrp} bech32 string")
    try:
        data = [_BECH32_CHARSET.index(c) for c in text[sep + 1 :]]
    except ValueError:
        raise ValueError("invalid bech32 character") from None
    if _bech32_polymod(_bech32_hrp_expand(hrp) + data) != 1:
        raise ValueError("bad bech32 checksum")
    return _convert_bits(data[:-6], 5, 8, pad=False)


# -- the identity ---------------------------------------------------------------------------

# Identities by their raw Noise private key, held weakly (an entry lasts as long as its
# identity). A handshake is given the raw key; building a key object from bytes derives
# the public key again, a scalar multiplication as costly as a DH, on every handshake.
_BY_NOISE_KEY: weakref.WeakValueDictionary[bytes, HostIdentity] = weakref.WeakValueDictionary()


def noise_key_object(noise_private: bytes) -> X25519PrivateKey | None:
    """The X25519 key object of a live identity whose Noise private key is
    ``noise_private`` (:meth:`HostIdentity.noise_private_bytes`), or
    None (none, or one made around the core's key: :func:`core_noise_key`)."""
    identity = _BY_NOISE_KEY.get(bytes(noise_private))
    return None if identity is None else identity._noise


def core_noise_key(noise_private: bytes) -> Any:
    """The core's Noise key object (``dtp.native._noise.NoiseKey``) a live identity
    whose Noise private key is ``noise_private`` was made around
    (:meth:`HostIdentity._around_noise_key`), or None."""
    identity = _BY_NOISE_KEY.get(bytes(noise_private))
    return None if identity is None else identity._noise_key


def _raw_public(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _raw_private(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


class HostIdentity:
    """A host's key material: the Ed25519 Sui authority key and the X25519 Noise static key.

    Instances are immutable. Make one with :meth:`generate`, :meth:`from_private_bytes`,
    :meth:`from_sui_keystring` or :meth:`load`. Two identities compare equal when their
    public keys (and therefore their private keys) are the same.
    """

    __slots__ = (
        "__weakref__",
        "_ed25519",
        "_ed25519_public",
        "_ed25519_seed",
        "_noise",
        "_noise_key",
        "_noise_public",
        "_noise_raw",
        "_sui_address",
    )

    _ed25519: Ed25519PrivateKey
    _noise: X25519PrivateKey | None  # (None: made around the core's key, _noise_key)
    _noise_key: Any  # the core's NoiseKey it was made around, or None
    _noise_raw: bytes
    _ed25519_public: bytes
    _noise_public: bytes
    _sui_address: str

    def __init__(self, ed25519_private: Ed25519PrivateKey, noise_private: X25519PrivateKey) -> None:
        """Wrap existing key objects (prefer the ``generate``/``from_*``/``load`` helpers)."""
        if not isinstance(ed25519_private, Ed25519PrivateKey):
            raise TypeError("ed25519_private must be an Ed25519PrivateKey")
        if not isinstance(noise_private, X25519PrivateKey):
            raise TypeError("noise_private must be an X25519PrivateKey")
        ed_public = _raw_public(ed25519_private.public_key())
        set_ = object.__setattr__
        set_(self, "_ed25519", ed25519_private)
        set_(self, "_noise", noise_private)
        set_(self, "_noise_key", None)
        set_(self, "_noise_raw", noise_private.private_bytes_raw())
        set_(self, "_ed25519_public", ed_public)
        set_(self, "_noise_public", _raw_public(noise_private.public_key()))
        set_(self, "_sui_address", sui_address_from_public_key(ed_public))
        _BY_NOISE_KEY[self._noise_raw] = self

    @classmethod
    def _around_noise_key(
        cls, ed25519_private: Ed25519PrivateKey, noise_private: bytes, noise_key: Any
    ) -> HostIdentity:
        """An identity whose Noise key is ``noise_key``, the core's key object made from
        the raw ``noise_private`` (``dtp.native._noise.NoiseKey``, holding its public
        half): a fresh anonymous identity's (dtp.identity._ahead), whose handshakes use
        that object as it is -- made from the bytes once more, the public half would be
        derived a second time, an X25519 scalar multiplication per anonymous connect."""
        self = cls.__new__(cls)
        ed_public = _raw_public(ed25519_private.public_key())
        set_ = object.__setattr__
        set_(self, "_ed25519", ed25519_private)
        set_(self, "_noise", None)
        set_(self, "_noise_key", noise_key)
        set_(self, "_noise_raw", bytes(noise_private))
        set_(self, "_ed25519_public", ed_public)
        set_(self, "_noise_public", bytes(noise_key.public))
        set_(self, "_sui_address", sui_address_from_public_key(ed_public))
        _BY_NOISE_KEY[self._noise_raw] = self
        return self

    @classmethod
    def _around_seed(
        cls, ed25519_seed: bytes, ed25519_public: bytes, noise_private: bytes, noise_key: Any
    ) -> HostIdentity:
        """:meth:`_around_noise_key` for the Ed25519 key of the fresh 32-byte
        ``ed25519_seed``, whose public key ``ed25519_public`` came with its first
        signature (dtp.identity._ed25519.sign_personal_with_seed): its key object is made
        at its first use (:meth:`__getattr__`), not here -- an anonymous identity signs
        its proof ahead and, most often, nothing else."""
        self = cls.__new__(cls)
        set_ = object.__setattr__
        set_(self, "_ed25519_seed", bytes(ed25519_seed))
        set_(self, "_noise", None)
        set_(self, "_noise_key", noise_key)
        set_(self, "_noise_raw", bytes(noise_private))
        set_(self, "_ed25519_public", bytes(ed25519_public))
        set_(self, "_noise_public", bytes(noise_key.public))
        set_(self, "_sui_address", sui_address_from_public_key(ed25519_public))
        _BY_NOISE_KEY[self._noise_raw] = self
        return self

    if not TYPE_CHECKING:  # (so mypy still refuses a misspelt attribute of an identity)

        def __getattr__(self, name: str) -> Any:
            # (called only for a slot not set: the key object of an identity made around
            # a seed, _around_seed, made at its first use)
            if name == "_ed25519":
                try:
                    seed = object.__getattribute__(self, "_ed25519_seed")
                except AttributeError:
                    raise AttributeError(name) from None
                key = Ed25519PrivateKey.from_private_bytes(seed)
                # fastcrypto gave the public key that _sui_sign appends: were OpenSSL's key
                # of the same seed another, every signature would fail to verify
                if _raw_public(key.public_key()) != self._ed25519_public:
                    raise CryptoError("the Ed25519 key of the seed is not the public key given")
                object.__setattr__(self, "_ed25519", key)
                return key
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("HostIdentity is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("HostIdentity is immutable")

    def __reduce__(self) -> Any:
        # Pickling would copy private keys into arbitrary places; make it explicit instead.
        raise TypeError("HostIdentity cannot be pickled; use save() or to_sui_keystring()")

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def generate(cls) -> HostIdentity:
        """A fresh identity: random Ed25519 and X25519 keys from the OS CSPRNG."""
        return cls(Ed25519PrivateKey.generate(), X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, ed25519_seed: bytes, noise_private: bytes) -> HostIdentity:
        """An identity from raw keys: the 32-byte Ed25519 seed and 32-byte X25519 key."""
        if len(ed25519_seed) != 32 or len(noise_private) != 32:
            raise ValueError("both private keys are 32 bytes")
        return cls(
            Ed25519PrivateKey.from_private_bytes(bytes(ed25519_seed)),
            X25519PrivateKey.from_private_bytes(bytes(noise_private)),
        )

    @classmethod
    def from_sui_keystring(cls, keystring: str, noise_private: bytes | None = None) -> HostIdentity:
        """An identity from a Sui private key string.

        Accepts the base64 keystring (``base64(0x00 || 32-byte seed)``, the form of
        ``sui.keystore`` and pysui's ``keypair_from_keystring``) and the bech32 form
        (``suiprivkey1...``, what ``sui keytool export`` and wallets show). Only Ed25519
        keys are accepted; anything else raises ValueError (TypeError if ``keystring``
        is not a str). ``noise_private`` (32 bytes) is the X25519 static key; when it is
        None the key is derived from the seed (``blake2b-256(seed,
        key=b"DTP/noise-static/v1")``), so the same keystring always gives the same
        identity. The derivation is one-way: the Noise key does not reveal
        the Sui key.
        """
        if not isinstance(keystring, str):
            raise TypeError(f"a Sui keystring is a str, not {type(keystring).__name__}")
        text = keystring.strip()
        if text.lower().startswith(_SUI_BECH32_HRP + "1"):
            raw = _bech32_decode(text, _SUI_BECH32_HRP)
        else:
            try:
                raw = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("not a base64 or suiprivkey1 Sui keystring") from None
        if len(raw) != 33:
            raise ValueError("a Sui keystring holds 33 bytes (flag || 32-byte key)")
        if raw[0] != ED25519_FLAG:
            raise ValueError(f"only Ed25519 Sui keys are supported (flag 0x{raw[0]:02x})")
        seed = raw[1:]
        if noise_private is None:
            noise_private = hashlib.blake2b(
                seed, key=_NOISE_DERIVATION_KEY, digest_size=32
            ).digest()
        return cls.from_private_bytes(seed, noise_private)

    def to_sui_keystring(self) -> str:
        """The Ed25519 key as a Sui base64 keystring (the Noise key is not included)."""
        return base64.b64encode(bytes([ED25519_FLAG]) + _raw_private(self._ed25519)).decode()

    def to_sui_bech32(self) -> str:
        """The Ed25519 key as a ``suiprivkey1...`` string (the Noise key is not included)."""
        return _bech32_encode(_SUI_BECH32_HRP, bytes([ED25519_FLAG]) + _raw_private(self._ed25519))

    # -- public parts ---------------------------------------------------------------------

    @property
    def sui_address(self) -> str:
        """The authority's Sui address, ``0x`` + 64 lowercase hex digits."""
        return self._sui_address

    @property
    def ed25519_public(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return self._ed25519_public

    @property
    def noise_public(self) -> bytes:
        """The raw 32-byte X25519 public key (the Noise static key published on chain)."""
        return self._noise_public

    def noise_private_bytes(self) -> bytes:
        """The raw 32-byte X25519 private key, for the Noise handshake. Keep it secret."""
        # (each handshake asks for it: the identity is put in _BY_NOISE_KEY when made,
        # and again here if another identity of the same key, made and dropped since,
        # took its weak entry with it; a dict look-up when it is there)
        raw = self._noise_raw
        if _BY_NOISE_KEY.get(raw) is not self:
            _BY_NOISE_KEY[raw] = self
        return raw

    # -- signing --------------------------------------------------------------------------

    def sign(self, message: bytes) -> bytes:
        """A raw 64-byte Ed25519 signature over ``message`` (no Sui intent, no hashing)."""
        return self._ed25519.sign(_bytes_arg("the message", message))

    def _sui_sign(self, digest: bytes) -> bytes:
        return bytes([ED25519_FLAG]) + self._ed25519.sign(digest) + self._ed25519_public

    def sign_digest(self, digest: bytes) -> bytes:
        """A serialized Sui signature (97 bytes) over a 32-byte intent digest, as a
        wallet's member of a multisig or a zkLogin account's ephemeral key signs
        (:mod:`dtp.identity.wallets`)."""
        return self._sui_sign(_bytes_arg("the digest", digest))

    def sign_personal_message(self, message: bytes) -> bytes:
        """A serialized Sui signature (97 bytes) over a personal message.

        Signs ``blake2b-256([3, 0, 0] || uleb128(len(message)) || message)``, as Sui
        wallets do; verify with :func:`verify_personal_message`.
        """
        return self._sui_sign(personal_message_digest(message))

    def sign_transaction(self, tx_bytes: bytes) -> bytes:
        """A serialized Sui signature (97 bytes) over BCS transaction data (intent [0, 0, 0]).

        Same bytes as pysui's ``new_sign_secure`` (base64-decoded).
        """
        digest = transaction_digest(tx_bytes)
        signature = self._sui_sign(digest)
        if type(self) is HostIdentity:
            # only this class's own signing is known to verify: a subclass may sign
            # otherwise (another key, a changed bit) and its signatures are checked
            _remember_own_signature(digest, signature, self._sui_address)
        return signature

    # -- dunder ---------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"HostIdentity(sui_address={self._sui_address!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HostIdentity):
            return NotImplemented
        return (self._ed25519_public, self._noise_public) == (
            other._ed25519_public,
            other._noise_public,
        )

    def __hash__(self) -> int:
        return hash((self._ed25519_public, self._noise_public))

    # -- files ----------------------------------------------------------------------------

    def _header(self) -> dict[str, Any]:
        return {
            "version": IDENTITY_FILE_VERSION,
            "kind": IDENTITY_FILE_KIND,
            "sui_address": self._sui_address,
            "noise_public": self._noise_public.hex(),
        }

    def _secret_json(self) -> bytes:
        secret = {
            "sui_keystring": self.to_sui_keystring(),
            "noise_private": base64.b64encode(self.noise_private_bytes()).decode(),
        }
        return json.dumps(secret, sort_keys=True).encode()

    def save(
        self,
        path: str | os.PathLike[str],
        passphrase: str | None = None,
        *,
        overwrite: bool = False,
        allow_insecure: bool = False,
    ) -> None:
        """Write this identity to ``path`` (JSON; see the module docs for the format).

        With a ``passphrase`` the secret part is encrypted (scrypt n=2**15, r=8, p=1 →
        ChaCha20-Poly1305, the public header as associated data); without one it is stored
        base64-encoded, readable by anyone who can read the file. The file is created
        with mode 0600 and appears atomically; missing parent directories are created
        with mode 0700 (each of them). Raises :class:`KeyFileError` if the file exists
        and ``overwrite`` is false, if it cannot be written, or, on POSIX, if a
        directory on the way to it is one :meth:`load` refuses (another user's, or one
        others may write to), before anything is written: the same error load() would
        raise at the next start (``allow_insecure=True`` skips that check, as it does
        for load()); TypeError if ``passphrase`` is not a str, ValueError if it is empty
        (pass None to store the identity unencrypted) or holds a lone surrogate (no
        UTF-8 form).
        """
        _check_passphrase_type(passphrase)
        failure = _untraced(
            (KeyFileError, ValueError),
            _write_identity_file,
            self,
            Path(path),
            passphrase,
            overwrite,
            allow_insecure,
        )
        # Dropped before the raise: the traceback starts in this frame, and an error
        # reporter that records locals would show the passphrase it holds.
        del passphrase
        if failure is not None:
            raise failure  # (here, with a traceback of this frame alone: _untraced)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        passphrase: str | None = None,
        *,
        allow_insecure: bool = False,
    ) -> HostIdentity:
        """Read an identity written by :meth:`save`.

        Raises :class:`KeyFileError` when the file is missing or unreadable, is not a DTP
        identity file (or has an unknown version), is encrypted and no passphrase was
        given, cannot be decrypted (wrong passphrase or damaged file: one message for
        both), or, on POSIX, is not safe from other users: when it can be accessed by
        group or others, or when a directory on the way to it -- its own, any above
        it, and those its symlinks (a directory's too) and their targets are in --
        belongs to a user other than root and this one, or is one that others may
        write to (a shared group, or everyone) and that has no sticky bit (pass
        ``allow_insecure=True`` to accept it anyway). An empty
        passphrase is a wrong one (:meth:`save` never encrypts with it). A passphrase
        given for a plain file is ignored. Raises TypeError if ``passphrase`` is
        neither None nor a str.
        """
        _check_passphrase_type(passphrase)
        outcome = _untraced(
            (KeyFileError,), _parse_identity_file, Path(path), passphrase, allow_insecure
        )
        if isinstance(outcome, Exception):
            raise outcome  # (here, with a traceback of this frame alone: _untraced)
        return outcome


def _untraced(
    errors: tuple[type[Exception], ...], work: Callable[..., _T], *args: Any
) -> _T | Exception:
    """What ``work(*args)`` returns, or the error of ``errors`` it raised, returned
    without its traceback and context: save() and load() raise it from their own frame,
    as the frames below held the secret (the secret JSON, the file's bytes) as locals,
    which an error reporter that records locals (or a debugger) would show. (``from
    None`` only hides a context: a failed read's frames would still be linked.)"""
    try:
        return work(*args)
    except errors as exc:
        exc.__context__ = None
        return exc.with_traceback(None)


def _write_identity_file(
    identity: HostIdentity,
    target: Path,
    passphrase: str | None,
    overwrite: bool,
    allow_insecure: bool,
) -> None:
    """Check the arguments, then build the identity file's JSON and write it to
    ``target`` (KeyFileError, or ValueError for an unusable passphrase)."""
    # The cheap checks come before the secret is built, so that a refusal costs no
    # scrypt and leaves no secret in any frame.
    _check_file_name(target)
    if passphrase is not None:
        _passphrase_bytes(passphrase)
    if not overwrite and os.path.lexists(target):
        raise _exists_error(target)
    if os.name == "posix" and not allow_insecure:
        # Refused now, not by load() at the next start (a daemon's first start saves a
        # key it then fails to load on every later one).
        _check_directories_for_save(target)
    header = identity._header()
    document: dict[str, Any] = dict(header)
    secret = identity._secret_json()
    if passphrase is None:
        document["secret"] = {
            "encoding": _PLAIN,
            "data": base64.b64encode(secret).decode(),
        }
    else:
        salt = secrets.token_bytes(_SALT_SIZE)
        nonce = secrets.token_bytes(_NONCE_SIZE)
        key = _derive_key(passphrase, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
        ciphertext = ChaCha20Poly1305(key).encrypt(nonce, secret, _associated_data(header))
        document["secret"] = {
            "encoding": _ENCRYPTED,
            "kdf": {
                "name": "scrypt",
                "n": _SCRYPT_N,
                "r": _SCRYPT_R,
                "p": _SCRYPT_P,
                "salt": base64.b64encode(salt).decode(),
            },
            "nonce": base64.b64encode(nonce).decode(),
            "ciphertext": base64.b64encode(ciphertext).decode(),
        }
    data = (json.dumps(document, indent=2) + "\n").encode()
    _write_private_file(target, data, overwrite=overwrite)


def _parse_identity_file(
    target: Path, passphrase: str | None, allow_insecure: bool
) -> HostIdentity:
    """Read, check and decrypt the identity file at ``target`` (KeyFileError)."""
    raw = _read_private_file(target, allow_insecure=allow_insecure)
    document: object = _NOT_JSON
    with contextlib.suppress(UnicodeDecodeError, ValueError, RecursionError):  # (nesting)
        document = json.loads(raw)
    # Raised after the handler, not in it: there Python links the parse error as
    # __context__ (``from None`` only hides it), and its .doc / .object hold the whole
    # file, a plain secret key included.
    if document is _NOT_JSON:
        raise KeyFileError(f"{target} is not a DTP identity file (not JSON)")
    if not isinstance(document, dict) or document.get("kind") != IDENTITY_FILE_KIND:
        raise KeyFileError(f"{target} is not a DTP identity file")
    version = document.get("version")
    # (type first: true and 1.0 are == 1 in Python, but no version this writes)
    if type(version) is not int or version != IDENTITY_FILE_VERSION:
        raise KeyFileError(
            f"{target} has identity file version {version!r:.60}; "
            f"this DTP reads version {IDENTITY_FILE_VERSION}"
        )
    header = {
        "version": version,
        "kind": IDENTITY_FILE_KIND,
        "sui_address": document.get("sui_address"),
        "noise_public": document.get("noise_public"),
    }
    secret = document.get("secret")
    if not isinstance(secret, dict):
        raise KeyFileError(f"{target} is damaged (no secret part)")
    encoding = secret.get("encoding")
    if encoding == _PLAIN:
        plain = _b64(secret.get("data"), target)
    elif encoding == _ENCRYPTED:
        if passphrase is None:
            raise KeyFileError(f"{target} is encrypted; a passphrase is required")
        plain = _decrypt_secret(secret, header, passphrase, target)
    else:
        raise KeyFileError(f"{target} uses an unknown secret encoding {encoding!r:.60}")
    identity = _identity_from_secret(plain, target)
    if identity._header() != header:
        raise KeyFileError(f"{target} is damaged (keys do not match its public header)")
    return identity


# -- file helpers ---------------------------------------------------------------------------


def default_identity_path() -> Path:
    """Where the host identity lives by default: ``$XDG_DATA_HOME/dtp/identity.json``.

    ``$XDG_DATA_HOME`` falls back to ``~/.local/share`` when unset, empty or relative
    (as the XDG base directory spec says).
    """
    return data_home() / "dtp" / "identity.json"


def passphrase_from_env(name: str) -> str | None:
    """The identity passphrase the environment variable ``name`` holds; None when it is
    not set (an unencrypted identity). Set but empty is a ValueError, naming it: taken as
    no passphrase, a new identity's secret key was written unencrypted with nothing
    said (``DTP_PASSPHRASE="$UNSET"``, a secret store that gave nothing). The CLIs exit
    with status 2 on it."""
    passphrase = os.environ.get(name)
    if passphrase == "":
        raise ValueError(
            f"${name} is set but empty: set it to the identity's passphrase, or unset it "
            "for an unencrypted identity"
        )
    return passphrase


def _associated_data(header: dict[str, Any]) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def _check_passphrase_type(passphrase: object) -> None:
    if passphrase is not None and not isinstance(passphrase, str):
        raise TypeError(f"the passphrase must be a str or None, got {type(passphrase).__name__}")


def _passphrase_bytes(passphrase: str) -> bytes:
    if passphrase == "":
        raise ValueError("empty passphrase; pass None to store the identity unencrypted")
    # NFC so that the same passphrase typed on different systems gives the same key.
    text = unicodedata.normalize("NFC", passphrase)
    # A lone surrogate (bytes that were not UTF-8, decoded with surrogateescape) has no
    # UTF-8 form. Checked rather than left to encode(): its UnicodeEncodeError quotes
    # the passphrase's character and position, and carries the whole passphrase.
    if any("\ud800" <= char <= "\udfff" for char in text):
        raise ValueError("the passphrase is not valid text (it holds a lone surrogate)")
    return text.encode()


def _derive_key(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    secret = _passphrase_bytes(passphrase)
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(secret)


def _b64(value: object, path: Path) -> bytes:
    if not isinstance(value, str):
        raise KeyFileError(f"{path} is damaged (missing field)")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        pass
    # (after the handler: a decode error linked as __context__ could quote the secret)
    raise KeyFileError(f"{path} is damaged (bad base64)")


def _decrypt_secret(
    secret: dict[str, Any], header: dict[str, Any], passphrase: str, path: Path
) -> bytes:
    kdf = secret.get("kdf")
    if not isinstance(kdf, dict) or kdf.get("name") != "scrypt":
        raise KeyFileError(f"{path} is damaged (unknown key derivation)")
    n, r, p = kdf.get("n"), kdf.get("r"), kdf.get("p")
    if not (
        isinstance(n, int)
        and isinstance(r, int)
        and isinstance(p, int)
        and not any(isinstance(v, bool) for v in (n, r, p))  # JSON true is no cost
        and 2 <= n <= _SCRYPT_MAX_N
        and n & (n - 1) == 0
        and 1 <= r <= _SCRYPT_MAX_R
        and 1 <= p <= _SCRYPT_MAX_P
    ):
        raise KeyFileError(f"{path} is damaged (scrypt parameters out of range)")
    if 128 * r * n > _SCRYPT_MAX_MEMORY or n * r * p > _SCRYPT_MAX_WORK:
        raise KeyFileError(
            f"{path} asks for a costlier scrypt than DTP accepts (n={n}, r={r}, p={p}: "
            f"{128 * r * n // 2**20} MiB); at most {_SCRYPT_MAX_MEMORY // 2**20} MiB "
            f"and n*r*p <= {_SCRYPT_MAX_WORK}"
        )
    salt = _b64(kdf.get("salt"), path)
    nonce = _b64(secret.get("nonce"), path)
    ciphertext = _b64(secret.get("ciphertext"), path)
    if len(salt) < _SALT_SIZE or len(nonce) != _NONCE_SIZE:
        raise KeyFileError(f"{path} is damaged (bad salt or nonce)")
    wrong = f"cannot decrypt {path}: wrong passphrase or damaged file"
    try:
        _passphrase_bytes(passphrase)
    except ValueError:
        # empty, or not encodable: save() refuses both, so no file is encrypted with it
        usable = False
    else:
        usable = True
    if not usable:  # (raised outside the handler, which would link its error as context)
        raise KeyFileError(wrong)
    try:
        key = _derive_key(passphrase, salt, n, r, p)
    except (MemoryError, ValueError, OverflowError) as exc:
        # OpenSSL's own limits, or memory the machine does not have
        raise KeyFileError(
            f"cannot decrypt {path}: scrypt failed ({exc or 'out of memory'})"
        ) from None
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, _associated_data(header))
    except InvalidTag:
        pass
    raise KeyFileError(wrong)


def _identity_from_secret(plain: bytes, path: Path) -> HostIdentity:
    try:
        secret = json.loads(plain)
        keystring = secret["sui_keystring"]
        noise = base64.b64decode(secret["noise_private"], validate=True)
        if not isinstance(keystring, str):
            raise ValueError
        return HostIdentity.from_sui_keystring(keystring, noise)
    except (ValueError, TypeError, KeyError, UnicodeDecodeError, binascii.Error, RecursionError):
        pass
    # Raised after the handler, not in it: inside, Python links the handled error as
    # __context__ even with ``from None`` (which only hides it from tracebacks), and a
    # JSONDecodeError's .doc or a UnicodeDecodeError's .object is the decrypted secret.
    raise KeyFileError(f"{path} is damaged (bad secret part)")


def _read_private_file(path: Path, *, allow_insecure: bool) -> bytes:
    _check_file_name(path)
    try:
        # O_NONBLOCK: a FIFO planted at the path must not hang us (no effect on files).
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise KeyFileError(f"no identity file at {path}") from None
    except OSError as exc:
        raise KeyFileError(f"cannot open {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"{path} is not a regular file")
        if os.name == "posix" and not allow_insecure:
            _check_private_file(path, info)
        chunks = []
        size = 0
        while chunk := os.read(fd, 65536):
            size += len(chunk)
            if size > _MAX_IDENTITY_FILE_SIZE:  # (st_size can lie: /proc, a growing file)
                raise KeyFileError(f"{path} is too large to be a DTP identity file")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _check_private_file(path: Path, info: os.stat_result) -> None:
    """Refuse (KeyFileError) the identity file at ``path``, whose status is ``info``,
    unless only its owner may access it and others may not replace it (the directories
    on the way: :func:`_check_directories`). POSIX only; what ``allow_insecure`` skips.
    A file another user owns passes (root reading a user's key: as ssh, only the mode
    counts -- though its directory must be root's, see :func:`_check_directories`)."""
    if info.st_mode & 0o077:
        mode = stat.S_IMODE(info.st_mode)
        raise KeyFileError(
            f"permissions {mode:04o} for {path} are too open: the identity must not be "
            f"accessible by group or others (run: chmod 600 {path}, or, from Python, load "
            "it with allow_insecure=True)"
        )
    _check_directories(path)


def _check_directories_for_save(path: Path) -> None:
    """:func:`_check_directories` for a file :meth:`HostIdentity.save` is about to
    write at ``path``, with its error: the directories that exist on the way (the
    missing ones save makes, 0700 and this user's), the last name not followed (the
    rename replaces a symlink there, not its target). A lookup that fails is a
    KeyFileError, as the write would have failed."""
    try:
        _check_directories(path, creating=True)
    except OSError as exc:
        raise KeyFileError(f"cannot write {path}: {exc.strerror}") from None


def _check_directories(path: Path, *, creating: bool = False) -> None:
    """Refuse (KeyFileError) the directories an identity file at ``path`` depends on
    (:func:`_directories_above`: its own -- and, through a symlink, its target's --,
    each holding a symlink on the way, and every one above them) unless each is
    owned by root or this (effective) user and is writable by no one else -- group
    write only for the user's own private group (umask 002 systems) -- or has the
    sticky bit (as /tmp: only a file's owner may then remove or rename it). Whoever may
    write to a directory, or owns it (and may chmod it), may rename the entry below it
    and put a file or tree of their own, with their own key, in its place: as
    OpenSSH's check of authorized_keys' directories. ``creating`` as for
    :func:`_directories_above`. Raises OSError where a lookup on the way failed."""
    me = os.geteuid()
    seen: set[tuple[int, int]] = set()
    for directory in _directories_above(path, creating=creating):
        where = os.stat(directory)
        if (where.st_dev, where.st_ino) in seen:
            continue
        seen.add((where.st_dev, where.st_ino))
        if not stat.S_ISDIR(where.st_mode):
            # (save only: a file where a directory is due, which the write reports)
            continue
        # Before the sticky bit: a sticky directory's owner may still rename any entry.
        if where.st_uid not in (0, me):
            owner = _user_name(where.st_uid)
            raise KeyFileError(
                f"{directory}, which holds {path}, belongs to {owner}, neither to you "
                "nor to root: that user could replace the identity; keep it in a "
                "directory of your own, or, from Python, accept the risk with allow_insecure=True"
            )
        if where.st_mode & stat.S_ISVTX:
            continue
        mode = stat.filemode(where.st_mode)
        if where.st_mode & 0o002:
            raise KeyFileError(
                f"{directory}, which holds {path}, is writable by others "
                f"(mode {mode}): they could replace the identity; move it, remove their "
                "write permission, or, from Python, accept the risk with allow_insecure=True"
            )
        if where.st_mode & 0o020 and not _private_group(where.st_gid):
            # (said apart from the above: "others" reads as chmod's o, and a directory
            # such as Debian's /usr/local, 2775 root:staff, has no o+w)
            gid, name = where.st_gid, _group_name(where.st_gid)
            group = (
                f"group {name!r} (gid {gid}; mode {mode})" if name else f"gid {gid} (mode {mode})"
            )
            raise KeyFileError(
                f"{directory}, which holds {path}, is group-writable by {group}: the "
                "group's members could replace the identity; run "
                f"chmod g-w {shlex.quote(str(directory))}, keep the key in a directory "
                "only you may write to, or, from Python, accept the risk with allow_insecure=True"
            )


def _user_name(uid: int) -> str:
    """``uid`` for a message: ``user 'name' (uid N)``, or ``uid N`` with no name."""
    try:
        import pwd

        return f"user {pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _group_name(gid: int) -> str | None:
    """The name of the group ``gid``; None when it has none."""
    try:
        import grp

        return grp.getgrgid(gid).gr_name
    except (ImportError, KeyError):
        return None


def _directories_above(path: Path, *, creating: bool = False) -> Iterator[Path]:
    """The directories a key file at ``path`` depends on, each resolved, the nearest to
    the file first: every one a name on the way is looked up in -- the one holding the
    file's name, the one holding each symlink met (a directory's too), those the links'
    targets go through -- and every directory above each of them up to the root. A
    relative ``path`` starts at the working directory. Whoever may write to one of these
    may change what the path opens (a symlinked directory's own directory included:
    ``shared/keys -> private`` depends on ``shared``).

    The path is resolved as the kernel resolves it, a name at a time (a symlink's target
    spliced in where it was met, so ``link/..`` is the parent of the link's target): one
    lstat per name, not a resolution of each prefix anew (quadratic in the path's
    length). Raises OSError -- ELOOP past as many symlinks as Linux follows, or what an
    lstat raised -- where the open would have failed too.

    ``creating``: ``path`` names a file :meth:`HostIdentity.save` is about to rename into
    its directory: its last name is not followed (the rename replaces a symlink there);
    a missing directory on the way is one save makes (this user's, 0700), neither given
    nor checked, but walked through by name (a ".." after it leads back to directories
    that exist); a name that is no directory ends the walk (the write fails there)."""
    start = os.fspath(path)
    resolved = "/" if os.path.isabs(start) else os.getcwd()
    pending = [part for part in reversed(start.split("/")) if part not in ("", ".")]
    looked_in: list[str] = []  # the directory each name was looked up in, in order
    links = 0
    absent = 0  # (creating) how many names deep ``resolved`` is in directories save makes
    while pending:
        part = pending.pop()
        if not absent:  # (names looked up in a directory save makes are its own)
            looked_in.append(resolved)
        if part == "..":
            resolved = os.path.dirname(resolved)  # ("/.." is "/")
            absent = max(absent - 1, 0)
            continue
        if creating and not pending:
            break  # (the name save renames its file to: looked up in ``resolved``)
        entry = os.path.join(resolved, part)
        if absent:
            resolved, absent = entry, absent + 1
            continue
        try:
            mode = os.lstat(entry).st_mode
        except FileNotFoundError:
            if not creating:
                raise
            # Save makes it, a plain directory: the walk goes on through it by name, as
            # the write's lookups will, for a ".." may lead back out of it to directories
            # that exist (``new/../shared/identity.json``: ending here left ``shared``
            # unchecked, and load() refused the key save wrote there).
            resolved, absent = entry, 1
            continue
        except NotADirectoryError:
            if creating:
                break  # (the write fails there)
            raise
        if not stat.S_ISLNK(mode):
            resolved = entry
            continue
        links += 1
        if links > _MAX_SYMLINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), entry)
        target = os.readlink(entry)
        if os.path.isabs(target):
            resolved = "/"
        # (a relative target goes on from the link's own directory: ``resolved``)
        pending.extend(name for name in reversed(target.split("/")) if name not in ("", "."))
    given: set[str] = set()
    for directory in reversed(looked_in):
        # up to the root, or to one given already (its parents were given with it)
        while directory not in given:
            given.add(directory)
            yield Path(directory)
            directory = os.path.dirname(directory)  # (the root's is itself: given)


def _private_group(gid: int) -> bool:
    """Whether ``gid`` is this user's own group: our effective group, with no other
    member listed, and no other user's primary group (a user private group, as umask
    002 systems give each user). A group that cannot be looked up is not. (As Debian's
    OpenSSH: a group the users share as their login group, such as ``users``, lists
    none of them as members, and each of them may write where it may.)"""
    if gid != os.getegid():
        return False
    try:
        import grp
        import pwd

        members = set(grp.getgrgid(gid).gr_mem)
        me = pwd.getpwuid(os.geteuid())
        primary = [user for user in pwd.getpwall() if user.pw_gid == gid]
    except (ImportError, KeyError):
        return False
    return members <= {me.pw_name} and all(user.pw_uid == me.pw_uid for user in primary)


def _make_private_directories(directory: Path) -> None:
    """Create ``directory`` and every missing parent with mode 0700 (Path.mkdir with
    parents=True gives the mode to the last one only, the others get 0777 - umask)."""
    missing: list[Path] = []
    while not os.path.isdir(directory) and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    for each in reversed(missing):
        try:
            each.mkdir(mode=0o700)
        except FileExistsError:
            if not each.is_dir():  # else another process made it meanwhile
                raise


def _check_file_name(path: Path) -> None:
    # os would raise a bare ValueError ("embedded null byte") from somewhere inside
    if "\0" in str(path):
        raise KeyFileError(f"{str(path)!r} is not a file name (it holds a NUL character)")


def _exists_error(path: Path) -> KeyFileError:
    """The error for a save over an existing file without ``overwrite``."""
    return KeyFileError(f"{path} already exists; pass overwrite=True to replace it")


def _write_private_file(path: Path, data: bytes, *, overwrite: bool) -> None:
    _check_file_name(path)
    directory = path.parent
    try:
        _make_private_directories(directory)
    except OSError as exc:
        raise KeyFileError(f"cannot create {directory}: {exc.strerror}") from None
    # Checked again: the file may have appeared since save() looked, and the link below
    # only refuses to clobber where the file system has hard links.
    if not overwrite and os.path.lexists(path):
        raise _exists_error(path)
    # The target's name in the temporary one tells whoever finds a leftover what it is;
    # cut short, so that a name near the file system's limit (255 bytes) still leaves
    # room for the rest.
    tmp = directory / f".{path.name[:32]}.{secrets.token_hex(8)}.tmp"
    created = False
    try:
        # O_EXCL: never reuse someone else's file; 0o600 from the first instant (the umask
        # can only remove bits), fchmod in case the platform ignored the mode.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        created = True
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_no_clobber(tmp, path)
        _fsync_directory(directory)
    except FileExistsError:
        raise _exists_error(path) from None
    except OSError as exc:
        raise KeyFileError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        # Only a file of ours, and quietly: an error here (ENAMETOOLONG, EACCES...)
        # would replace the KeyFileError on its way out with a bare OSError.
        if created:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _link_no_clobber(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path`` atomically, failing with FileExistsError if ``path`` exists."""
    try:
        os.link(tmp, path)  # atomic and never replaces an existing file
    except FileExistsError:
        raise
    except OSError:
        # Filesystems without hard links: the exists check above is the best we can do.
        if os.path.lexists(path):
            raise FileExistsError(path) from None
        os.replace(tmp, path)
