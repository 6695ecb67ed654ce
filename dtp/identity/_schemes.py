"""Sui user signatures of every scheme, checked as DTP checks them: the serialized
signature a Sui wallet makes over a 32-byte intent digest -- a personal message's (the
identity proof) or a transaction's (LocalLedger's check) -- and the Sui address it
proves. docs/protocol.md 8.4, "Schemes", says each scheme's form, rules and address.

A zkLogin signature is checked here in everything but its Groth16 proof, which only a
Sui node (its JWKs and verifying key) can check: the result carries a :class:`NodeCheck`
for that (dtp.identity._zklogin asks the node). Every check refuses with
:class:`InvalidSignature` saying which rule failed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature as _CryptoInvalid
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from dtp.errors import DTPError
from dtp.identity import _ed25519
from dtp.identity._bcs import BcsError, BcsReader
from dtp.identity._ed25519 import has_small_order

__all__ = [
    "ED25519_FLAG",
    "MAX_MULTISIG_MEMBERS",
    "MULTISIG_FLAG",
    "PASSKEY_FLAG",
    "SCHEMES",
    "SECP256K1_FLAG",
    "SECP256R1_FLAG",
    "ZKLOGIN_FLAG",
    "InvalidSignature",
    "NodeCheck",
    "SuiSigner",
    "address_of_key",
    "check_signature",
    "ecdsa_low_s",
    "iss_of_claim",
    "multisig_address",
    "zklogin_address",
]

ED25519_FLAG: Final = 0x00
SECP256K1_FLAG: Final = 0x01
SECP256R1_FLAG: Final = 0x02
MULTISIG_FLAG: Final = 0x03
ZKLOGIN_FLAG: Final = 0x05
PASSKEY_FLAG: Final = 0x06

#: Each flag's scheme, by the name DTP reports it under.
SCHEMES: Final[dict[int, str]] = {
    ED25519_FLAG: "ed25519",
    SECP256K1_FLAG: "secp256k1",
    SECP256R1_FLAG: "secp256r1",
    MULTISIG_FLAG: "multisig",
    ZKLOGIN_FLAG: "zklogin",
    PASSKEY_FLAG: "passkey",
}
#: Sui's bound on a multisig's members (``MAX_SIGNER_IN_MULTISIG``).
MAX_MULTISIG_MEMBERS: Final = 10

#: The group orders of the two ECDSA curves.
_ORDERS: Final = {
    SECP256K1_FLAG: 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141,
    SECP256R1_FLAG: 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
}
_CURVES: Final[dict[int, ec.EllipticCurve]] = {
    SECP256K1_FLAG: ec.SECP256K1(),
    SECP256R1_FLAG: ec.SECP256R1(),
}
#: A simple signature's size by flag: flag, signature, public key.
_SIMPLE_SIZES: Final = {ED25519_FLAG: 97, SECP256K1_FLAG: 98, SECP256R1_FLAG: 98}
#: A multisig member's kind (the BCS enum tag of ``PublicKey`` and ``CompressedSignature``,
#: in the same order) -> its scheme flag, and the size of its key (None: a vector).
_MEMBER_FLAGS: Final = (ED25519_FLAG, SECP256K1_FLAG, SECP256R1_FLAG, ZKLOGIN_FLAG, PASSKEY_FLAG)
_MEMBER_KEY_SIZES: Final[tuple[int | None, ...]] = (32, 33, 33, None, 33)
#: The compressed signatures of the simple kinds are 64 bytes; zkLogin's and passkey's
#: are their whole serialized signatures, as vectors.
_MEMBER_SIG_SIZES: Final[tuple[int | None, ...]] = (64, 64, 64, None, None)
_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]*")
_DECIMAL: Final = re.compile(r"0|[1-9][0-9]*")


class InvalidSignature(DTPError):
    """A Sui signature is malformed, uses an unsupported scheme, or does not verify."""


@dataclass(frozen=True)
class NodeCheck:
    """What only a Sui node can check of a signature: the Groth16 proofs of its zkLogin
    parts (a zkLogin signature, or a multisig with zkLogin members). Everything else of
    the signature checked out already."""

    signature: bytes
    """The whole serialized signature, as the node is sent it."""
    address: str
    """The address it proves, which the node is asked to confirm."""
    max_epochs: tuple[int, ...]
    """Each zkLogin part's last epoch: none may be past (dtp.identity._zklogin)."""


@dataclass(frozen=True)
class SuiSigner:
    """Who a signature proves: its address and scheme, and what stands for its key."""

    address: str
    """The Sui address, ``0x`` and 64 hex digits."""
    scheme: str
    """The scheme's name (:data:`SCHEMES`)."""
    public_key: bytes
    """The key the address is made from, without its flag: Ed25519's 32 bytes, a
    Secp256k1, Secp256r1 or passkey key's 33, a multisig's BCS ``MultiSigPublicKey``,
    a zkLogin public identifier (``len(iss) || iss || address seed``)."""
    node_check: NodeCheck | None = None
    """None when the signature is wholly verified; else what a Sui node must confirm."""


def _blake2b256(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def address_of_key(flag: int, public_key: bytes) -> str:
    """The Sui address of a key of the scheme ``flag``: ``blake2b-256(flag || key)``."""
    return "0x" + _blake2b256(bytes((flag,)) + public_key).hex()


# -- ECDSA and Ed25519 ------------------------------------------------------------------------


def ecdsa_low_s(flag: int, r: int, s: int) -> tuple[int, int]:
    """``(r, s)`` with ``s`` in the lower half of the curve's order (what a signer
    sends: ``s`` and ``n - s`` both verify, and Sui takes only the lower one)."""
    order = _ORDERS[flag]
    return r, (order - s if s > order // 2 else s)


def _verify_ecdsa(flag: int, public_key: bytes, signature: bytes, message: bytes) -> None:
    """ECDSA over SHA-256 of ``message``: ``signature`` is ``r || s`` (32 bytes each,
    big-endian) with ``s`` low, ``public_key`` a compressed point."""
    name = SCHEMES[flag]
    order = _ORDERS[flag]
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not (0 < r < order and 0 < s < order):
        raise InvalidSignature(f"a {name} signature whose r or s is out of range")
    if s > order // 2:
        raise InvalidSignature(f"a {name} signature with a high s (Sui takes only low-s ones)")
    if len(public_key) != 33 or public_key[0] not in (2, 3):
        raise InvalidSignature(f"a {name} public key is a 33-byte compressed point")
    if _FASTCRYPTO is not None and _FASTCRYPTO(flag, public_key, signature, message):
        return  # (a refusal is explained below, by OpenSSL's checks)
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[flag], public_key)
    except ValueError:
        raise InvalidSignature(f"the {name} public key is not a point of the curve") from None
    try:
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    except _CryptoInvalid:
        raise InvalidSignature(f"the {name} signature does not verify") from None


def _fastcrypto_ecdsa() -> Callable[[int, bytes, bytes, bytes], bool] | None:
    """ECDSA over SHA-256 by fastcrypto (pysui's native module, the library Sui validators
    verify with) when it is installed: several times OpenSSL's speed for Secp256k1. Its
    verdicts are OpenSSL's (tests/identity/test_signature_schemes.py pins it); the range
    and low-s checks come before either."""
    try:
        import pysui_fastcrypto
    except ImportError:  # pragma: no cover - pysui brings it
        return None
    verify_pubk = pysui_fastcrypto.verify_pubk

    def verify(flag: int, public_key: bytes, signature: bytes, message: bytes) -> bool:
        try:
            ok: bool = verify_pubk(
                flag,
                public_key,
                base64.b64encode(message).decode(),
                base64.b64encode(signature).decode(),
            )
        except (ValueError, TypeError):  # a key that is no point
            return False
        return ok

    return verify


_FASTCRYPTO: Final = _fastcrypto_ecdsa()


def _verify_ed25519(public_key: bytes, signature: bytes, digest: bytes) -> None:
    if has_small_order(public_key):
        raise InvalidSignature("the signing key is of small order (it proves no one)")
    if not _ed25519.verify(public_key, signature, digest):
        raise InvalidSignature("Sui signature does not verify")  # (the words of version 1)


def _check_simple(signature: bytes, digest: bytes, what: str = "signature") -> SuiSigner:
    """An Ed25519, Secp256k1 or Secp256r1 signature: ``flag || sig || key``."""
    flag = signature[0]
    size = _SIMPLE_SIZES.get(flag)
    if size is None:
        raise InvalidSignature(f"a {what} of scheme flag 0x{flag:02x}, not a simple one")
    if len(signature) != size:
        raise InvalidSignature(f"a {SCHEMES[flag]} {what} is {size} bytes, got {len(signature)}")
    raw, public = signature[1:65], signature[65:]
    if flag == ED25519_FLAG:
        _verify_ed25519(public, raw, digest)
    else:
        _verify_ecdsa(flag, public, raw, digest)
    return SuiSigner(address_of_key(flag, public), SCHEMES[flag], public)


# -- passkey --------------------------------------------------------------------------------


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidSignature(f"a JSON object with the key {key!r} twice")
        out[key] = value
    return out


def _base64url_unpadded(text: str) -> bytes:
    """RFC 4648's base64url without padding, strictly: nothing outside the alphabet,
    and the unused bits of the last character zero."""
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        raise InvalidSignature("a WebAuthn challenge that is not unpadded base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode() != text:
        raise InvalidSignature("a WebAuthn challenge that is not unpadded base64url")
    return data


def _check_passkey(signature: bytes, digest: bytes) -> SuiSigner:
    """A WebAuthn assertion: ``BCS(authenticator_data: vector<u8>, client_data_json:
    String, user_signature: vector<u8>)``, the last a Secp256r1 signature (98 bytes)
    over ``authenticator_data || SHA-256(client_data_json)``; the client data is a
    ``webauthn.get`` whose challenge is the digest."""
    reader = BcsReader(signature[1:])
    try:
        authenticator_data = reader.vector()
        client_data = reader.string()
        user_signature = reader.vector()
        reader.done()
    except BcsError as exc:
        raise InvalidSignature(f"a malformed passkey signature: {exc}") from None
    if len(user_signature) != 98 or user_signature[0] != SECP256R1_FLAG:
        raise InvalidSignature("a passkey's signature is a 98-byte Secp256r1 signature")
    try:
        collected = json.loads(client_data, object_pairs_hook=_no_duplicate_keys)
    except ValueError:
        raise InvalidSignature("a passkey's client data is not JSON") from None
    if not isinstance(collected, dict):
        raise InvalidSignature("a passkey's client data is not a JSON object")
    if collected.get("type") != "webauthn.get":
        raise InvalidSignature("a passkey's client data is not of type webauthn.get")
    challenge, origin = collected.get("challenge"), collected.get("origin")
    if not isinstance(challenge, str) or not isinstance(origin, str):
        raise InvalidSignature("a passkey's client data without its challenge or origin")
    if _base64url_unpadded(challenge) != digest:
        raise InvalidSignature("a passkey's challenge is not the signed digest")
    public = user_signature[65:]
    _verify_ecdsa(
        SECP256R1_FLAG,
        public,
        user_signature[1:65],
        authenticator_data + hashlib.sha256(client_data.encode()).digest(),
    )
    return SuiSigner(address_of_key(PASSKEY_FLAG, public), "passkey", public)


# -- zkLogin --------------------------------------------------------------------------------


def iss_of_claim(value: str, index_mod_4: int) -> str:
    """The ``iss`` a zkLogin proof's ``iss_base64_details`` reveals: a run of the JWT's
    base64url payload starting at a position ``index_mod_4`` (mod 4) into a base64
    quantum, cut to whole bytes, is ``"iss":"<value>",`` (or ends with ``}``)."""
    if len(value) < 2 or not _BASE64URL.fullmatch(value):
        raise InvalidSignature("a zkLogin issuer claim that is not base64url")
    bits = "".join(
        format("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(c), "06b")
        for c in value
    )
    if index_mod_4 not in (0, 1, 2):
        raise InvalidSignature("a zkLogin issuer claim at an impossible offset")
    bits = bits[2 * index_mod_4 :]
    last = (index_mod_4 + len(value) - 1) % 4
    if last == 0:
        raise InvalidSignature("a zkLogin issuer claim at an impossible offset")
    bits = bits[: len(bits) - 2 * (3 - last)]
    if len(bits) % 8:
        raise InvalidSignature("a zkLogin issuer claim that is not whole bytes")
    try:
        claim = int(bits, 2).to_bytes(len(bits) // 8, "big").decode("utf-8")
    except (UnicodeDecodeError, ValueError):
        raise InvalidSignature("a zkLogin issuer claim that is not UTF-8") from None
    if not claim.endswith(("}", ",")):
        raise InvalidSignature("a zkLogin issuer claim that does not end a JSON member")
    try:
        member = json.loads("{" + claim[:-1] + "}", object_pairs_hook=_no_duplicate_keys)
    except ValueError:
        raise InvalidSignature("a zkLogin issuer claim that is not a JSON member") from None
    iss = member.get("iss") if isinstance(member, dict) else None
    if not isinstance(iss, str) or len(member) != 1:
        raise InvalidSignature('a zkLogin issuer claim that is not "iss"')
    if len(iss.encode()) > 255:
        raise InvalidSignature("a zkLogin issuer longer than 255 bytes")
    return iss


def _zklogin_identifier(iss: str, address_seed: int) -> bytes:
    """A zkLogin public identifier: ``len(iss) || iss || address seed`` (32 bytes,
    big-endian, zero-padded on the left)."""
    raw = iss.encode()
    return bytes((len(raw),)) + raw + address_seed.to_bytes(32, "big")


def zklogin_address(iss: str, address_seed: int) -> str:
    """The address a zkLogin signature proves in DTP: ``blake2b-256(0x05 || len(iss) ||
    iss || address seed as 32 bytes)`` -- the address seed zero-padded, as Sui derives
    it today (its older, unpadded form differs for seeds whose first byte is zero)."""
    return address_of_key(ZKLOGIN_FLAG, _zklogin_identifier(iss, address_seed))


def _decimal(text: str, what: str) -> int:
    if not _DECIMAL.fullmatch(text) or len(text) > 78:
        raise InvalidSignature(f"a zkLogin {what} that is not a canonical decimal number")
    value = int(text)
    if value >> 256:
        raise InvalidSignature(f"a zkLogin {what} above 256 bits")
    return value


def _zklogin_parts(signature: bytes, digest: bytes) -> tuple[bytes, int]:
    """Check a zkLogin signature's shape and its ephemeral key's signature over
    ``digest``: its public identifier and last epoch."""
    reader = BcsReader(signature[1:])
    try:
        for _ in range(reader.uleb128()):  # proof point a: vector<String>
            _decimal(reader.string(), "proof point")
        for _ in range(reader.uleb128()):  # b: vector<vector<String>>
            for _ in range(reader.uleb128()):
                _decimal(reader.string(), "proof point")
        for _ in range(reader.uleb128()):  # c
            _decimal(reader.string(), "proof point")
        claim = reader.string()
        index_mod_4 = reader.uint(1)
        reader.string()  # the JWT header: the node checks it with the proof
        address_seed = _decimal(reader.string(), "address seed")
        max_epoch = reader.uint(8)
        user_signature = reader.vector()
        reader.done()
    except BcsError as exc:
        raise InvalidSignature(f"a malformed zkLogin signature: {exc}") from None
    if not user_signature:
        raise InvalidSignature("a zkLogin signature without its ephemeral key's signature")
    _check_simple(user_signature, digest, "zkLogin ephemeral signature")
    return _zklogin_identifier(iss_of_claim(claim, index_mod_4), address_seed), max_epoch


def _check_zklogin(signature: bytes, digest: bytes) -> SuiSigner:
    identifier, max_epoch = _zklogin_parts(signature, digest)
    address = address_of_key(ZKLOGIN_FLAG, identifier)
    return SuiSigner(
        address, "zklogin", identifier, NodeCheck(bytes(signature), address, (max_epoch,))
    )


# -- multisig -------------------------------------------------------------------------------


def multisig_address(members: list[tuple[int, bytes, int]], threshold: int) -> str:
    """A multisig's address: ``blake2b-256(0x03 || threshold (u16 LE) || each member's
    flag || key || weight (u8))``, members in their order; ``members`` holds (flag,
    key, weight)."""
    data = bytearray((MULTISIG_FLAG,)) + threshold.to_bytes(2, "little")
    for flag, key, weight in members:
        data += bytes((flag,)) + key + bytes((weight,))
    return "0x" + _blake2b256(bytes(data)).hex()


def _member_part(reader: BcsReader, sizes: tuple[int | None, ...], what: str) -> tuple[int, bytes]:
    """A member's key or signature: its kind's tag, then its bytes (a fixed size, or a
    vector)."""
    tag = reader.uleb128()
    if tag >= len(_MEMBER_FLAGS):
        raise InvalidSignature(f"a multisig {what} of unknown kind {tag}")
    size = sizes[tag]
    return tag, reader.vector() if size is None else reader.take(size)


def _check_member(tag: int, key: bytes, signature: bytes, digest: bytes) -> int | None:
    """One member's signature over ``digest``: the zkLogin part's last epoch (its
    proof is the node's to check), else None."""
    flag = _MEMBER_FLAGS[tag]
    if flag in (ED25519_FLAG, SECP256K1_FLAG, SECP256R1_FLAG):
        _check_simple(bytes((flag,)) + signature + key, digest, "multisig member's signature")
        return None
    if not signature or signature[0] != flag:
        raise InvalidSignature(f"a multisig {SCHEMES[flag]} member's signature without its flag")
    if flag == PASSKEY_FLAG:
        if _check_passkey(signature, digest).public_key != key:
            raise InvalidSignature("a multisig passkey member signed with another key")
        return None
    identifier, max_epoch = _zklogin_parts(signature, digest)
    if identifier != key:
        raise InvalidSignature("a multisig zkLogin member's proof is for another identifier")
    return max_epoch


def _check_multisig(signature: bytes, digest: bytes) -> SuiSigner:
    """``BCS(MultiSig { sigs: vector<CompressedSignature>, bitmap: u16, multisig_pk:
    MultiSigPublicKey { pk_map: vector<(PublicKey, u8)>, threshold: u16 } })``."""
    reader = BcsReader(signature[1:])
    try:
        signatures = [
            _member_part(reader, _MEMBER_SIG_SIZES, "signature") for _ in range(reader.uleb128())
        ]
        bitmap = reader.uint(2)
        key_start = reader.position  # (the MultiSigPublicKey: the rest of the bytes)
        members = [
            (*_member_part(reader, _MEMBER_KEY_SIZES, "member"), reader.uint(1))
            for _ in range(reader.uleb128())
        ]
        threshold = reader.uint(2)
        reader.done()
    except BcsError as exc:
        raise InvalidSignature(f"a malformed multisig signature: {exc}") from None
    if not 1 <= len(members) <= MAX_MULTISIG_MEMBERS:
        raise InvalidSignature(f"a multisig of {len(members)} members (1 to 10)")
    if threshold == 0 or any(weight == 0 for _, _, weight in members):
        raise InvalidSignature("a multisig whose threshold or a member's weight is 0")
    if sum(weight for _, _, weight in members) < threshold:
        raise InvalidSignature("a multisig whose members' weights cannot reach its threshold")
    if len({(tag, key) for tag, key, _ in members}) != len(members):
        raise InvalidSignature("a multisig with a member twice")
    if bitmap >> len(members):
        raise InvalidSignature("a multisig bitmap naming a member it does not have")
    signers = [i for i in range(len(members)) if bitmap >> i & 1]
    if not signatures or len(signatures) != len(signers):
        raise InvalidSignature(
            f"a multisig of {len(signatures)} signatures whose bitmap names {len(signers)}"
        )
    weight, max_epochs = 0, []
    for index, (tag, member_signature) in zip(signers, signatures, strict=True):
        member_tag, key, member_weight = members[index]
        if tag != member_tag:
            raise InvalidSignature("a multisig signature of another kind than its member")
        max_epoch = _check_member(tag, key, member_signature, digest)
        if max_epoch is not None:
            max_epochs.append(max_epoch)
        weight += member_weight
    if weight < threshold:
        raise InvalidSignature(
            f"a multisig signed with weight {weight}, under its threshold {threshold}"
        )
    address = multisig_address([(_MEMBER_FLAGS[tag], key, w) for tag, key, w in members], threshold)
    public_key = bytes(signature[1 + key_start :])
    check = NodeCheck(bytes(signature), address, tuple(max_epochs)) if max_epochs else None
    return SuiSigner(address, "multisig", public_key, check)


# -- any scheme -----------------------------------------------------------------------------


def check_signature(signature: bytes, digest: bytes) -> SuiSigner:
    """Check a serialized Sui signature of any scheme over a 32-byte intent ``digest``;
    who it proves. :class:`InvalidSignature` if it is malformed, of an unknown scheme,
    or does not verify. A zkLogin part is checked in all but its proof: the result's
    :attr:`SuiSigner.node_check` says what a Sui node must confirm."""
    if not signature:
        raise InvalidSignature("an empty Sui signature")
    flag = signature[0]
    if flag in _SIMPLE_SIZES:
        return _check_simple(signature, digest)
    if flag == PASSKEY_FLAG:
        return _check_passkey(signature, digest)
    if flag == MULTISIG_FLAG:
        return _check_multisig(signature, digest)
    if flag == ZKLOGIN_FLAG:
        return _check_zklogin(signature, digest)
    raise InvalidSignature(f"unsupported Sui signature scheme flag 0x{flag:02x}")
