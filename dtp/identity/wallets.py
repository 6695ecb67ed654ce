"""Sui wallets of every signature scheme, for Python clients: what signs a connection's
identity proof (``ConnectionConfig(wallet=...)``, docs/protocol.md 8.4) and, where the
ledger takes it, its transactions.

A wallet is any object with a ``sui_address`` and ``sign_personal_message(message) ->
bytes`` (the serialized Sui signature; :class:`SuiWallet`). A
:class:`~dtp.identity.keys.HostIdentity` is one (Ed25519). Here are the others:

- :class:`Secp256k1Wallet`, :class:`Secp256r1Wallet`: an ECDSA key, as ``sui keytool``
  and Mysten's SDKs make them (``suiprivkey1...`` strings load);
- :class:`SoftwarePasskey`: a passkey (Secp256r1 behind WebAuthn) whose authenticator is
  this process -- a browser's passkey lives in the browser, and the page signs with it;
- :class:`MultiSigWallet`: a Sui multisig, signing with the members it holds keys of;
- :class:`ZkLoginWallet`: a zkLogin account, from the inputs a zkLogin prover gave for
  an ephemeral key and that key.

Each signs as Mysten's SDKs do (the vectors of docs/protocol.md 8.4 check it), ECDSA with
a low s, which Sui requires.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from dtp.identity._bcs import bcs_vector, uleb128
from dtp.identity._schemes import (
    ED25519_FLAG,
    MAX_MULTISIG_MEMBERS,
    MULTISIG_FLAG,
    PASSKEY_FLAG,
    SECP256K1_FLAG,
    SECP256R1_FLAG,
    ZKLOGIN_FLAG,
    address_of_key,
    ecdsa_low_s,
    iss_of_claim,
    multisig_address,
    zklogin_address,
)
from dtp.identity.keys import _bech32_decode, personal_message_digest, transaction_digest

__all__ = [
    "MultiSigWallet",
    "Secp256k1Wallet",
    "Secp256r1Wallet",
    "SoftwarePasskey",
    "SuiWallet",
    "ZkLoginWallet",
]

#: BCS enum tags of a multisig member's key and signature, by scheme flag.
_MEMBER_TAGS: Final = {
    ED25519_FLAG: 0,
    SECP256K1_FLAG: 1,
    SECP256R1_FLAG: 2,
    ZKLOGIN_FLAG: 3,
    PASSKEY_FLAG: 4,
}


@runtime_checkable
class SuiWallet(Protocol):
    """What signs a client's identity proof: a Sui address and the wallet's
    personal-message signing."""

    @property
    def sui_address(self) -> str:
        """The wallet's Sui address, ``0x`` and 64 hex digits."""
        ...

    def sign_personal_message(self, message: bytes) -> bytes:
        """The serialized Sui signature of ``message`` as a personal message."""
        ...


class _DigestSigner:
    """A wallet that signs an intent digest; personal messages and transactions follow."""

    sui_address: str

    def sign_digest(self, digest: bytes) -> bytes:
        """The serialized Sui signature of a 32-byte intent digest."""
        raise NotImplementedError

    def sign_personal_message(self, message: bytes) -> bytes:
        """The serialized Sui signature of ``message`` as a personal message."""
        return self.sign_digest(personal_message_digest(message))

    def sign_transaction(self, tx_bytes: bytes) -> bytes:
        """The serialized Sui signature of BCS transaction data."""
        return self.sign_digest(transaction_digest(tx_bytes))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sui_address={self.sui_address!r})"


def _ecdsa_key(curve: ec.EllipticCurve, secret: bytes | None) -> ec.EllipticCurvePrivateKey:
    if secret is None:
        return ec.generate_private_key(curve)
    if len(secret) != 32:
        raise ValueError("an ECDSA secret key is 32 bytes")
    return ec.derive_private_key(int.from_bytes(secret, "big"), curve)


class _EcdsaWallet(_DigestSigner):
    _flag: int
    _curve: ec.EllipticCurve

    def __init__(self, secret: bytes | None = None) -> None:
        """A wallet of the 32-byte ``secret`` key (a fresh random key when None)."""
        self._key = _ecdsa_key(self._curve, None if secret is None else bytes(secret))
        self.public_key = self._key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
        )
        self.sui_address = address_of_key(self._flag, self.public_key)

    @classmethod
    def from_sui_keystring(cls, keystring: str) -> _EcdsaWallet:
        """A wallet from a Sui private key string: ``suiprivkey1...`` (bech32) or base64,
        ``flag || 32-byte key``, of this scheme."""
        text = keystring.strip()
        if text.lower().startswith("suiprivkey1"):
            raw = _bech32_decode(text, "suiprivkey")
        else:
            raw = base64.b64decode(text, validate=True)
        if len(raw) != 33 or raw[0] != cls._flag:
            raise ValueError(f"not a {cls.__name__} key string")
        return cls(raw[1:])

    def signature_of(self, data: bytes) -> bytes:
        """``r || s`` (low s) of ECDSA over SHA-256 of ``data``."""
        r, s = decode_dss_signature(self._key.sign(data, ec.ECDSA(hashes.SHA256())))
        r, s = ecdsa_low_s(self._flag, r, s)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def sign_digest(self, digest: bytes) -> bytes:
        return bytes((self._flag,)) + self.signature_of(digest) + self.public_key


class Secp256k1Wallet(_EcdsaWallet):
    """A Secp256k1 Sui key (flag ``0x01``)."""

    _flag = SECP256K1_FLAG
    _curve = ec.SECP256K1()


class Secp256r1Wallet(_EcdsaWallet):
    """A Secp256r1 Sui key (flag ``0x02``)."""

    _flag = SECP256R1_FLAG
    _curve = ec.SECP256R1()


def _base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class SoftwarePasskey(_DigestSigner):
    """A Sui passkey account (flag ``0x06``) whose WebAuthn authenticator is this
    process: each signature is an assertion for ``origin`` (user present and verified,
    a counter), its challenge the digest, as a browser's authenticator makes it."""

    def __init__(self, secret: bytes | None = None, origin: str = "https://wallet.example.org"):
        self._key = Secp256r1Wallet(secret)
        self.public_key = self._key.public_key
        self.origin = origin
        self.counter = 0
        self.sui_address = address_of_key(PASSKEY_FLAG, self.public_key)

    def sign_digest(self, digest: bytes) -> bytes:
        self.counter += 1
        host = self.origin.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
        authenticator_data = (
            hashlib.sha256(host.encode()).digest() + b"\x05" + self.counter.to_bytes(4, "big")
        )
        client_data = json.dumps(
            {
                "type": "webauthn.get",
                "challenge": _base64url(digest),
                "origin": self.origin,
                "crossOrigin": False,
            },
            separators=(",", ":"),
        ).encode()
        signature = self._key.signature_of(
            authenticator_data + hashlib.sha256(client_data).digest()
        )
        user_signature = bytes((SECP256R1_FLAG,)) + signature + self.public_key
        return (
            bytes((PASSKEY_FLAG,))
            + bcs_vector(authenticator_data)
            + bcs_vector(client_data)
            + bcs_vector(user_signature)
        )


@dataclass(frozen=True)
class _Member:
    flag: int
    key: bytes
    weight: int


class MultiSigWallet(_DigestSigner):
    """A Sui multisig (flag ``0x03``): its members' keys and weights and its threshold,
    and the wallets of the members that sign (in any order: their signatures go in the
    members' order, as Sui requires)."""

    def __init__(
        self,
        members: Sequence[tuple[int, bytes, int]],
        threshold: int,
        signers: Sequence[Any] = (),
    ) -> None:
        """``members``: (scheme flag, public key, weight) each, the key without its flag
        (a zkLogin member's is its public identifier); ``signers``: wallets of some of
        them (anything :meth:`member_of` knows)."""
        self.members = tuple(_Member(f, bytes(k), w) for f, k, w in members)
        if not 1 <= len(self.members) <= MAX_MULTISIG_MEMBERS:
            raise ValueError(f"a multisig has 1 to {MAX_MULTISIG_MEMBERS} members")
        if not 0 < threshold <= sum(m.weight for m in self.members):
            raise ValueError("a multisig's threshold is 1 to its members' weight")
        if any(not 0 < m.weight < 256 or m.flag not in _MEMBER_TAGS for m in self.members):
            raise ValueError(
                "a member's weight is 1 to 255, its scheme a simple, passkey or zkLogin one"
            )
        self.threshold = threshold
        self.signers = list(signers)
        self.sui_address = multisig_address(
            [(m.flag, m.key, m.weight) for m in self.members], threshold
        )

    @staticmethod
    def member_of(wallet: Any) -> tuple[int, bytes]:
        """(flag, key) a wallet is a member as: a HostIdentity (Ed25519), an ECDSA
        wallet, a passkey or a zkLogin wallet."""
        if isinstance(wallet, SoftwarePasskey):
            return PASSKEY_FLAG, wallet.public_key
        if isinstance(wallet, ZkLoginWallet):
            return ZKLOGIN_FLAG, wallet.public_identifier
        if isinstance(wallet, _EcdsaWallet):
            return wallet._flag, wallet.public_key
        return ED25519_FLAG, bytes(wallet.ed25519_public)

    def public_key_bytes(self) -> bytes:
        """The BCS ``MultiSigPublicKey``: members (kind, key, weight), then threshold."""
        out = bytearray(uleb128(len(self.members)))
        for m in self.members:
            out += uleb128(_MEMBER_TAGS[m.flag])
            out += bcs_vector(m.key) if m.flag == ZKLOGIN_FLAG else m.key
            out.append(m.weight)
        return bytes(out + self.threshold.to_bytes(2, "little"))

    def sign_digest(self, digest: bytes) -> bytes:
        index = {(m.flag, m.key): i for i, m in enumerate(self.members)}
        signed: dict[int, bytes] = {}
        for wallet in self.signers:
            flag, key = self.member_of(wallet)
            i = index.get((flag, key))
            if i is None:
                raise ValueError(f"{wallet!r} is not a member of this multisig")
            full = wallet.sign_digest(digest)
            # (a simple member's signature goes without its flag and key; a passkey's
            # or a zkLogin's whole, as a vector)
            body = bcs_vector(full) if flag in (PASSKEY_FLAG, ZKLOGIN_FLAG) else full[1:65]
            signed[i] = uleb128(_MEMBER_TAGS[flag]) + body
        bitmap = sum(1 << i for i in signed)
        return (
            bytes((MULTISIG_FLAG,))
            + uleb128(len(signed))
            + b"".join(signed[i] for i in sorted(signed))
            + bitmap.to_bytes(2, "little")
            + self.public_key_bytes()
        )


class ZkLoginWallet(_DigestSigner):
    """A zkLogin account (flag ``0x05``): the inputs a zkLogin prover returned for
    ``ephemeral`` (its proof points, ``iss_base64_details``, ``header_base64`` and
    ``address_seed``, in the prover's JSON names, camelCase or snake_case), the epoch the
    proof lasts to, and the ephemeral key's wallet (any simple one), which signs."""

    def __init__(self, inputs: Mapping[str, Any], max_epoch: int, ephemeral: Any) -> None:
        def field(*names: str) -> Any:
            for name in names:
                if name in inputs:
                    return inputs[name]
            raise ValueError(f"zkLogin inputs without {names[0]}")

        points = field("proofPoints", "proof_points")
        claim = field("issBase64Details", "iss_base64_details")
        self.claim = (claim["value"], int(claim.get("indexMod4", claim.get("index_mod_4"))))
        self.points = (list(points["a"]), [list(p) for p in points["b"]], list(points["c"]))
        self.header = str(field("headerBase64", "header_base64"))
        self.address_seed = int(field("addressSeed", "address_seed"))
        self.max_epoch = int(max_epoch)
        self.ephemeral = ephemeral
        self.iss = iss_of_claim(*self.claim)
        raw = self.iss.encode()
        self.public_identifier = bytes((len(raw),)) + raw + self.address_seed.to_bytes(32, "big")
        self.sui_address = zklogin_address(self.iss, self.address_seed)

    def sign_digest(self, digest: bytes) -> bytes:
        user = self.ephemeral.sign_digest(digest)

        def strings(values: Sequence[Any]) -> bytes:
            return uleb128(len(values)) + b"".join(bcs_vector(str(v).encode()) for v in values)

        a, b, c = self.points
        body = (
            strings(a)
            + uleb128(len(b))
            + b"".join(strings(pair) for pair in b)
            + strings(c)
            + bcs_vector(self.claim[0].encode())
            + bytes((self.claim[1],))
            + bcs_vector(self.header.encode())
            + bcs_vector(str(self.address_seed).encode())
            + self.max_epoch.to_bytes(8, "little")
            + bcs_vector(user)
        )
        return bytes((ZKLOGIN_FLAG,)) + body
