"""Each rule of docs/protocol.md 8.4 for the proofs of every Sui scheme
(dtp.identity._schemes), one proof made to break it at a time: ECDSA's low s, ranges
and compressed keys; the passkey's client data; the multisig's members, weights,
threshold, bitmap and signatures (Ed25519 members of small order included); zkLogin's
numbers, issuer claim and ephemeral signature; and that a transaction signed by any of
these wallets but zkLogin is checked as its personal messages are."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable

import pytest

from dtp.identity._bcs import bcs_vector, uleb128
from dtp.identity._schemes import (
    MULTISIG_FLAG,
    PASSKEY_FLAG,
    SECP256K1_FLAG,
    SECP256R1_FLAG,
    InvalidSignature,
    address_of_key,
    check_signature,
    iss_of_claim,
    zklogin_address,
)
from dtp.identity.keys import (
    HostIdentity,
    NeedsSuiNode,
    personal_message_digest,
    transaction_digest,
    verify_transaction,
)
from dtp.identity.wallets import (
    MultiSigWallet,
    Secp256k1Wallet,
    Secp256r1Wallet,
    SoftwarePasskey,
    ZkLoginWallet,
)
from tests.support.vectors import load_vectors

MESSAGE = b"DTP-AUTH-V1" + bytes(range(32))
DIGEST = personal_message_digest(MESSAGE)
K1 = Secp256k1Wallet(bytes([0x11] * 32))
R1 = Secp256r1Wallet(bytes([0x22] * 32))
ED = HostIdentity.from_private_bytes(bytes(range(32)), bytes(32))
ORDERS = {
    SECP256K1_FLAG: 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141,
    SECP256R1_FLAG: 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
}
#: An Ed25519 point of small order (the identity, y = 1).
SMALL_ORDER = (1).to_bytes(32, "little")


def refused(proof: bytes, words: str, digest: bytes = DIGEST) -> None:
    with pytest.raises(InvalidSignature, match=words):
        check_signature(proof, digest)


# -- ECDSA ----------------------------------------------------------------------------------


@pytest.mark.parametrize("wallet", [K1, R1], ids=["secp256k1", "secp256r1"])
def test_ecdsa_proofs_take_a_low_s_only(wallet: Secp256k1Wallet) -> None:
    proof = wallet.sign_personal_message(MESSAGE)
    n = ORDERS[proof[0]]
    s = int.from_bytes(proof[33:65], "big")
    assert s <= n // 2  # (the wallet sends the low one)
    assert check_signature(proof, DIGEST).address == wallet.sui_address
    high = proof[:33] + (n - s).to_bytes(32, "big") + proof[65:]
    refused(high, "high s")
    for r, s_ in ((0, s), (n, s), (1, 0)):
        bad = proof[:1] + r.to_bytes(32, "big") + s_.to_bytes(32, "big") + proof[65:]
        refused(bad, "out of range")


@pytest.mark.parametrize("wallet", [K1, R1], ids=["secp256k1", "secp256r1"])
def test_ecdsa_proofs_need_a_compressed_point_of_the_curve(wallet: Secp256k1Wallet) -> None:
    proof = wallet.sign_personal_message(MESSAGE)
    refused(proof[:65] + b"\x04" + proof[66:], "compressed point")
    refused(proof[:66] + b"\xff" * 32, "not a point")  # x above the field's prime
    refused(proof + b"\x00", "98 bytes, got 99")
    refused(proof[:-1], "98 bytes, got 97")
    # the other parity: another point, whose address is another's
    flipped = proof[:65] + bytes([proof[65] ^ 1]) + proof[66:]
    refused(flipped, "does not verify")
    refused(wallet.sign_personal_message(MESSAGE + b"!"), "does not verify")


def test_an_unknown_flag_and_an_empty_proof_are_refused() -> None:
    refused(b"", "empty")
    for flag in (0x04, 0x07, 0xFF):
        refused(bytes([flag]) + K1.sign_personal_message(MESSAGE)[1:], "unsupported")


# -- passkey ----------------------------------------------------------------------------------


def _passkey(client: dict[str, object] | str, key: Secp256r1Wallet = R1) -> bytes:
    """A passkey proof of ``client`` (its client data), signed by ``key``."""
    data = (client if isinstance(client, str) else json.dumps(client)).encode()
    authenticator = hashlib.sha256(b"example.org").digest() + b"\x05\x00\x00\x00\x01"
    signature = key.signature_of(authenticator + hashlib.sha256(data).digest())
    user = bytes([SECP256R1_FLAG]) + signature + key.public_key
    return bytes([PASSKEY_FLAG]) + bcs_vector(authenticator) + bcs_vector(data) + bcs_vector(user)


def _challenge(digest: bytes = DIGEST) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def test_a_passkey_proof_is_a_webauthn_get_of_the_digest() -> None:
    good = {"type": "webauthn.get", "challenge": _challenge(), "origin": "https://a.example"}
    signer = check_signature(_passkey(good), DIGEST)
    assert signer.scheme == "passkey"
    assert signer.address == address_of_key(PASSKEY_FLAG, R1.public_key) != R1.sui_address
    refused(_passkey({**good, "type": "webauthn.create"}), "webauthn.get")
    refused(_passkey({**good, "challenge": _challenge(bytes(32))}), "not the signed digest")
    refused(_passkey({**good, "challenge": _challenge() + "="}), "unpadded base64url")
    refused(_passkey({**good, "challenge": _challenge()[:-1] + "B"}), "unpadded base64url")
    refused(_passkey({k: v for k, v in good.items() if k != "origin"}), "origin")
    twice = json.dumps(good)[:-1] + ', "type": "webauthn.get"}'
    refused(_passkey(twice), "twice")
    refused(_passkey("[1]"), "not a JSON object")
    refused(_passkey(good) + b"\x00", "after the value")
    # the user signature must be a Secp256r1 one over authenticator data || SHA-256(JSON)
    proof = _passkey(good)
    refused(proof[:-98] + bytes([SECP256K1_FLAG]) + proof[-97:], "98-byte Secp256r1")
    n = ORDERS[SECP256R1_FLAG]
    s = int.from_bytes(proof[-66:-34], "big")
    refused(proof[:-66] + (n - s).to_bytes(32, "big") + proof[-34:], "high s")


# -- multisig ---------------------------------------------------------------------------------


def _multisig(
    signers: list[object], threshold: int = 2, members: list[tuple[int, bytes, int]] | None = None
) -> bytes:
    if members is None:
        members = [(*MultiSigWallet.member_of(w), 1) for w in (ED, K1, R1)]
    return MultiSigWallet(members, threshold, signers).sign_personal_message(MESSAGE)


def test_a_multisig_of_enough_weight_proves_its_own_address() -> None:
    wallet = MultiSigWallet([(*MultiSigWallet.member_of(w), 1) for w in (ED, K1, R1)], 2, [K1, ED])
    signer = check_signature(wallet.sign_personal_message(MESSAGE), DIGEST)
    assert signer.address == wallet.sui_address and signer.scheme == "multisig"
    assert signer.public_key == wallet.public_key_bytes()
    # a member's own weight counts: one of weight 2 is enough alone
    heavy = [(*MultiSigWallet.member_of(ED), 2), (*MultiSigWallet.member_of(K1), 1)]
    assert check_signature(_multisig([ED], 2, heavy), DIGEST).node_check is None


def test_a_multisig_under_its_threshold_is_refused() -> None:
    refused(_multisig([R1]), "weight 1, under its threshold 2")


def _multisig_parts(proof: bytes) -> tuple[bytes, int, bytes]:
    """(the signatures' BCS, the bitmap, the MultiSigPublicKey's BCS) of a proof whose
    signatures are simple ones."""
    count = proof[1]
    at = 2 + count * 65
    return proof[2:at], int.from_bytes(proof[at : at + 2], "little"), proof[at + 2 :]


def _rebuilt(sigs: bytes, count: int, bitmap: int, key: bytes) -> bytes:
    return bytes([MULTISIG_FLAG]) + uleb128(count) + sigs + bitmap.to_bytes(2, "little") + key


def test_the_multisig_bitmap_names_exactly_the_signatures() -> None:
    proof = _multisig([K1, R1])  # members 1 and 2: bitmap 0b110
    sigs, bitmap, key = _multisig_parts(proof)
    assert bitmap == 0b110
    assert check_signature(_rebuilt(sigs, 2, bitmap, key), DIGEST)
    # a bit to spare (which Sui's validators would take), a bit short, a bit past the members
    refused(_rebuilt(sigs, 2, 0b111, key), "2 signatures whose bitmap names 3")
    refused(_rebuilt(sigs, 2, 0b100, key), "2 signatures whose bitmap names 1")
    refused(_rebuilt(sigs, 2, 0b1000_0110, key), "naming a member it does not have")
    refused(_rebuilt(b"", 0, 0, key), "0 signatures")
    # the signatures out of the bits' order: each checked against the other's key
    refused(_rebuilt(sigs[65:] + sigs[:65], 2, bitmap, key), "another kind")
    refused(proof + b"\x00", "1 bytes after the value")


def test_multisig_members_and_weights_follow_suis_rules() -> None:
    one = (*MultiSigWallet.member_of(K1), 1)
    for members, threshold, words in (
        ([one, one], 1, "a member twice"),
        ([one], 2, "cannot reach its threshold"),
        ([(*MultiSigWallet.member_of(R1), 0), one], 1, "weight is 0"),
        ([one], 0, "threshold or a member's weight is 0"),
    ):
        sigs = bytes([1]) + K1.sign_personal_message(MESSAGE)[1:65]
        key = uleb128(len(members)) + b"".join(
            bytes([{SECP256K1_FLAG: 1, SECP256R1_FLAG: 2}[f]]) + k + bytes([w])
            for f, k, w in members
        )
        refused(_rebuilt(sigs, 1, 1, key + threshold.to_bytes(2, "little")), words)
    # eleven members are too many
    keys = [Secp256k1Wallet(bytes([i + 1] * 32)) for i in range(11)]
    many = uleb128(11) + b"".join(bytes([1]) + w.public_key + b"\x01" for w in keys)
    sig = bytes([1]) + keys[0].sign_personal_message(MESSAGE)[1:65]
    refused(_rebuilt(sig, 1, 1, many + b"\x01\x00"), "11 members")


def test_an_ed25519_member_of_small_order_proves_nothing() -> None:
    # the all-zero signature of the identity point: what anyone can "sign" for it
    members = [(0x00, SMALL_ORDER, 1), (*MultiSigWallet.member_of(K1), 1)]
    key = MultiSigWallet(members, 1).public_key_bytes()
    refused(_rebuilt(bytes([0]) + bytes(64), 1, 1, key), "small order")


def test_a_passkey_member_signs_with_its_own_key() -> None:
    passkey = SoftwarePasskey(bytes([0x33] * 32))
    other = SoftwarePasskey(bytes([0x44] * 32))
    members = [(*MultiSigWallet.member_of(passkey), 1), (*MultiSigWallet.member_of(K1), 1)]
    good = MultiSigWallet(members, 1, [passkey])
    assert check_signature(good.sign_personal_message(MESSAGE), DIGEST).address == good.sui_address
    # the member's slot, another passkey's signature
    forged = MultiSigWallet(members, 1, [])
    body = other.sign_personal_message(MESSAGE)
    proof = (
        bytes([MULTISIG_FLAG, 1, 4])
        + bcs_vector(body)
        + (1).to_bytes(2, "little")
        + forged.public_key_bytes()
    )
    refused(proof, "another key")


# -- zkLogin ----------------------------------------------------------------------------------

(ZK,) = [v for v in load_vectors("identity-proof-scheme") if v["name"] == "identity-proof-zklogin"]


def _zklogin(
    change: Callable[[dict[str, object]], None] | None = None, epoch: int = 10
) -> ZkLoginWallet:
    inputs = json.loads(json.dumps(ZK["inputs"]))
    if change is not None:
        change(inputs)
    ephemeral = HostIdentity.from_private_bytes(
        bytes.fromhex(ZK["ephemeral_ed25519_seed"]), bytes(32)
    )
    return ZkLoginWallet(inputs, epoch, ephemeral)


def test_a_zklogin_proof_is_checked_in_all_but_its_groth16_proof() -> None:
    wallet = _zklogin()
    signer = check_signature(wallet.sign_personal_message(MESSAGE), DIGEST)
    assert signer.scheme == "zklogin" and signer.address == wallet.sui_address
    assert signer.node_check is not None and signer.node_check.max_epochs == (10,)
    # the address binds the issuer and the seed, padded to 32 bytes
    assert wallet.sui_address == zklogin_address("https://id.twitch.tv/oauth2", wallet.address_seed)
    small = zklogin_address("https://id.twitch.tv/oauth2", 5)
    assert small == address_of_key(
        0x05, bytes([27]) + b"https://id.twitch.tv/oauth2" + (5).to_bytes(32, "big")
    )


def test_zklogin_numbers_are_canonical_decimals() -> None:
    def seed(value: str) -> Callable[[dict[str, object]], None]:
        def change(inputs: dict[str, object]) -> None:
            inputs["addressSeed"] = value

        return change

    good = _zklogin()
    proof = good.sign_personal_message(MESSAGE)
    text = ZK["inputs"]["addressSeed"].encode()
    # the seed's string, edited in place in the BCS
    at = proof.index(bytes([len(text)]) + text)
    for bad in (b"0" + text[1:], b"+" + text[1:], str((1 << 256) + 1).encode()):
        mangled = proof[:at] + bytes([len(bad)]) + bad + proof[at + 1 + len(text) :]
        refused(mangled, "canonical decimal|above 256 bits")


def test_the_zklogin_issuer_is_read_as_sui_reads_it() -> None:
    claim = ZK["inputs"]["issBase64Details"]
    assert iss_of_claim(claim["value"], claim["indexMod4"]) == "https://id.twitch.tv/oauth2"
    with pytest.raises(InvalidSignature, match="impossible offset"):
        iss_of_claim(claim["value"], 3)
    with pytest.raises(InvalidSignature):
        iss_of_claim(claim["value"], 0)  # read from the wrong bit: no JSON member
    for member in ('"aud":"x",', '"iss":5,', '"iss":"a","iss":"b",'):
        value = base64.urlsafe_b64encode(member.encode()).rstrip(b"=").decode()
        with pytest.raises(InvalidSignature, match=r'not "iss"|twice|not a JSON'):
            iss_of_claim(value, 0)


def test_a_zklogin_proof_needs_its_ephemeral_keys_signature() -> None:
    proof = _zklogin().sign_personal_message(MESSAGE)
    # the ephemeral signature is the last 97 bytes: one of another message
    other = _zklogin().sign_personal_message(MESSAGE + b"!")
    refused(proof[:-97] + other[-97:], "does not verify")
    refused(proof + b"\x00", "after the value")


# -- transactions ------------------------------------------------------------------------------


def test_a_transaction_of_any_offline_scheme_verifies_as_its_sender() -> None:
    tx = bytes(range(50))
    for wallet in (K1, R1, SoftwarePasskey(bytes([0x33] * 32))):
        signature = wallet.sign_transaction(tx)
        assert verify_transaction(tx, signature) == wallet.sui_address
        with pytest.raises(InvalidSignature):
            verify_transaction(tx + b"!", signature)
    multisig = MultiSigWallet([(*MultiSigWallet.member_of(w), 1) for w in (ED, K1)], 1, [ED])
    assert verify_transaction(tx, multisig.sign_transaction(tx)) == multisig.sui_address
    # a personal-message signature is no transaction's (another intent, another digest)
    assert transaction_digest(tx) != personal_message_digest(tx)
    with pytest.raises(InvalidSignature):
        verify_transaction(tx, K1.sign_personal_message(tx))


def test_a_zklogin_transaction_needs_a_sui_node() -> None:
    tx = bytes(range(50))
    with pytest.raises(NeedsSuiNode, match="verified by a Sui node"):
        verify_transaction(tx, _zklogin().sign_transaction(tx))


@pytest.mark.parametrize("wallet", [K1, R1], ids=["secp256k1", "secp256r1"])
def test_fastcrypto_and_openssl_give_the_same_ecdsa_verdicts(wallet: Secp256k1Wallet) -> None:
    """The two ECDSA verifiers of _schemes (fastcrypto first, when pysui brings it, then
    OpenSSL's, which explains a refusal) agree, signature by signature."""
    from cryptography.exceptions import InvalidSignature as Refused
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    from dtp.identity import _schemes

    fast = _schemes._FASTCRYPTO
    if fast is None:
        pytest.skip("fastcrypto (pysui_fastcrypto) is not installed")
    flag = wallet.sign_digest(bytes(32))[0]
    curve = ec.SECP256K1() if flag == SECP256K1_FLAG else ec.SECP256R1()

    def openssl(public: bytes, signature: bytes, message: bytes) -> bool:
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(curve, public).verify(
                encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256())
            )
        except (Refused, ValueError):
            return False
        return True

    other = (
        Secp256k1Wallet(bytes([0x55] * 32))
        if flag == SECP256K1_FLAG
        else Secp256r1Wallet(bytes([0x55] * 32))
    )
    for i in range(40):
        message = bytes([i]) * (i + 1)
        signature = wallet.signature_of(message)
        flipped = bytes([message[0] ^ 1]) + message[1:]
        for public, sig, msg in (
            (wallet.public_key, signature, message),
            (wallet.public_key, signature, flipped),
            (other.public_key, signature, message),
            (wallet.public_key, signature[:32] + bytes(32), message),
            (b"\x02" + b"\xff" * 32, signature, message),
        ):
            assert fast(flag, public, sig, msg) == openssl(public, sig, msg)
