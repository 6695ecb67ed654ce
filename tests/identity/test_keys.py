"""Host identities: Sui addresses and signatures (checked against pysui and Mysten's
published vectors), keystrings, and identity files (format, encryption, permissions)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import re
import stat
import unicodedata
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from dtp.errors import DTPError, KeyFileError
from dtp.identity.keys import (
    HostIdentity,
    InvalidSignature,
    default_identity_path,
    noise_key_object,
    personal_message_digest,
    sui_address_from_public_key,
    transaction_digest,
    verify_personal_message,
    verify_transaction,
)

pysui_crypto = pytest.importorskip("pysui.sui.sui_crypto")

ADDRESS_RE = re.compile(r"^0x[0-9a-f]{64}$")
SEEDS = st.binary(min_size=32, max_size=32)

# Mysten's keytool vectors (sui crates/sui/src/unit_tests/keytool_tests.rs, also in the
# TypeScript SDK's ed25519-keypair tests): bech32 private key -> Sui address.
MYSTEN_VECTORS = [
    (
        "suiprivkey1qrwsjvr6gwaxmsvxk4cfun99ra8uwxg3c9pl0nhle7xxpe4s80y05ctazer",
        "0xa2d14fad60c56049ecf75246a481934691214ce413e6a8ae2fe6834c173a6133",
    ),
    (
        "suiprivkey1qzdvpa77ct272ultqcy20dkw78dysnfyg90fhcxkdm60el0qht9mvzlsh4j",
        "0x1ada6e6f3f3e4055096f606c746690f1108fcc2ca479055cc434a3e1d3f758aa",
    ),
    (
        "suiprivkey1qqqscjyyr64jea849dfv9cukurqj2swx0m3rr4hr7sw955jy07tzgcde5ut",
        "0xe69e896ca10f5a77732769803cc2b5707f0ab9d4407afb5e4b4464b89769af14",
    ),
]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def pysui_keypair(identity: HostIdentity):  # type: ignore[no-untyped-def]
    return pysui_crypto.keypair_from_keystring(identity.to_sui_keystring())


def identity_from(seed: bytes, noise: bytes = bytes(range(32))) -> HostIdentity:
    return HostIdentity.from_private_bytes(seed, noise)


@pytest.fixture(scope="module")
def alice() -> HostIdentity:
    return identity_from(bytes(range(1, 33)), bytes(range(100, 132)))


# -- addresses and keys -------------------------------------------------------------------


def test_generate_shapes() -> None:
    identity = HostIdentity.generate()
    assert ADDRESS_RE.match(identity.sui_address)
    assert len(identity.ed25519_public) == 32
    assert len(identity.noise_public) == 32
    assert len(identity.noise_private_bytes()) == 32
    assert identity.sui_address == (
        "0x" + hashlib.blake2b(b"\x00" + identity.ed25519_public, digest_size=32).hexdigest()
    )
    assert HostIdentity.generate() != identity


@pytest.mark.parametrize(("bech32", "address"), MYSTEN_VECTORS)
def test_mysten_keytool_vectors(bech32: str, address: str) -> None:
    identity = HostIdentity.from_sui_keystring(bech32)
    assert identity.sui_address == address
    assert identity.to_sui_bech32() == bech32
    # The same key through its base64 keystring, as pysui serializes it.
    keystring = pysui_crypto.keypair_from_keystring(bech32).serialize()
    assert identity.to_sui_keystring() == keystring
    assert HostIdentity.from_sui_keystring(keystring).sui_address == address


def test_typescript_sdk_public_key_vector() -> None:
    # Ed25519Keypair.fromSecretKey(32 x 0x08) in Mysten's TypeScript SDK tests.
    identity = identity_from(bytes([8]) * 32)
    assert b64(identity.ed25519_public) == "E5j2LG0aRXxRumpLXz29L2n8qTIWIY3ImX5Ba9F9k8o="


@settings(max_examples=25)
@given(seed=SEEDS)
def test_pysui_accepts_keystring_and_derives_same_address(seed: bytes) -> None:
    identity = identity_from(seed)
    kp = pysui_keypair(identity)
    flag_and_key = kp.public_key.scheme_and_key()
    assert flag_and_key == b"\x00" + identity.ed25519_public
    assert sui_address_from_public_key(flag_and_key[1:]) == identity.sui_address
    assert kp.serialize() == identity.to_sui_keystring()
    assert kp.to_bech32() == identity.to_sui_bech32()


def test_pysui_generated_key_round_trips() -> None:
    _, kp = pysui_crypto.create_new_keypair()
    identity = HostIdentity.from_sui_keystring(kp.serialize())
    assert b"\x00" + identity.ed25519_public == kp.public_key.scheme_and_key()
    assert identity.to_sui_keystring() == kp.serialize()


def test_keystring_noise_key_derived_deterministically_or_given() -> None:
    keystring = identity_from(bytes(32)).to_sui_keystring()
    one = HostIdentity.from_sui_keystring(keystring)
    two = HostIdentity.from_sui_keystring(keystring)
    assert one == two and one.noise_public == two.noise_public
    # The derived key is not the Ed25519 seed itself.
    assert one.noise_private_bytes() != bytes(32)
    given_key = HostIdentity.from_sui_keystring(keystring, bytes([7]) * 32)
    assert given_key.noise_private_bytes() == bytes([7]) * 32
    assert given_key.sui_address == one.sui_address


@pytest.mark.parametrize(
    "keystring",
    [
        "",
        "not base64!",
        b64(b"\x00" + bytes(31)),  # too short
        b64(b"\x00" + bytes(33)),  # too long
        b64(b"\x01" + bytes(32)),  # secp256k1: not supported
        b64(b"\x02" + bytes(32)),  # secp256r1: not supported
        "suiprivkey1qrwsjvr6gwaxmsvxk4cfun99ra8uwxg3c9pl0nhle7xxpe4s80y05ctazeq",  # checksum
        "suiprivkey1qrwsjvr6gwaxmsvxk4cfun99ra8uwxg3c9pl0nhle7xxpe4s80y05ctazeR",  # mixed case
        "suiprivkey1",
    ],
)
def test_bad_keystrings(keystring: str) -> None:
    with pytest.raises(ValueError):
        HostIdentity.from_sui_keystring(keystring)


def test_bad_raw_keys() -> None:
    with pytest.raises(ValueError):
        HostIdentity.from_private_bytes(bytes(31), bytes(32))
    with pytest.raises(ValueError):
        HostIdentity.from_private_bytes(bytes(32), bytes(33))
    with pytest.raises(TypeError):
        HostIdentity(object(), object())  # type: ignore[arg-type]


def test_repr_and_errors_never_show_secrets(alice: HostIdentity) -> None:
    secrets = [
        alice.to_sui_keystring(),
        alice.to_sui_bech32(),
        alice.noise_private_bytes().hex(),
        b64(alice.noise_private_bytes()),
        bytes(range(1, 33)).hex(),
    ]
    for text in (repr(alice), str(alice), f"{alice!r}"):
        assert alice.sui_address in text
        for secret in secrets:
            assert secret not in text


def test_immutable_and_not_picklable(alice: HostIdentity) -> None:
    with pytest.raises(AttributeError):
        alice._noise = None  # type: ignore[misc]
    with pytest.raises(AttributeError):
        alice.sui_address = "0x00"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del alice._ed25519
    with pytest.raises(TypeError):
        pickle.dumps(alice)


def test_noise_key_object_is_the_identity_key_while_it_lives() -> None:
    import gc

    identity = HostIdentity.generate()
    raw = identity.noise_private_bytes()
    key = noise_key_object(raw)
    assert key is identity._noise
    assert key.private_bytes_raw() == raw
    assert noise_key_object(bytes(32)) is None
    del identity, key
    gc.collect()
    assert noise_key_object(raw) is None  # held weakly: gone with its identity


def test_noise_key_object_survives_a_twin_identity_made_and_dropped() -> None:
    import gc

    seed, raw = bytes(range(40, 72)), bytes(range(72, 104))
    identity = identity_from(seed, raw)
    twin = identity_from(seed, raw)  # the same keys, loaded again
    del twin
    gc.collect()  # (its weak entry went with it)
    assert identity.noise_private_bytes() == raw  # what every handshake asks first
    assert noise_key_object(raw) is identity._noise


def test_equality_and_hash() -> None:
    a = identity_from(bytes(32), bytes([1]) * 32)
    b = identity_from(bytes(32), bytes([1]) * 32)
    c = identity_from(bytes(32), bytes([2]) * 32)
    assert a == b and hash(a) == hash(b)
    assert a != c  # same Sui key, different Noise key
    assert len({a, b, c}) == 2
    assert a != "not an identity"


# -- signatures ---------------------------------------------------------------------------


def test_raw_sign_is_plain_ed25519(alice: HostIdentity) -> None:
    signature = alice.sign(b"hello")
    assert len(signature) == 64
    Ed25519PublicKey.from_public_bytes(alice.ed25519_public).verify(signature, b"hello")


def test_personal_message_digest_matches_spec() -> None:
    # blake2b-256([3,0,0] || uleb128(len) || msg); 300 needs a two-byte uleb128 (ac 02).
    for message, length_prefix in [
        (b"", b"\x00"),
        (b"a" * 127, b"\x7f"),
        (b"b" * 300, b"\xac\x02"),
    ]:
        expected = hashlib.blake2b(b"\x03\x00\x00" + length_prefix + message, digest_size=32)
        assert personal_message_digest(message) == expected.digest()
    assert transaction_digest(b"tx") == hashlib.blake2b(b"\x00\x00\x00tx", digest_size=32).digest()


@settings(max_examples=40)
@given(
    seed=SEEDS,
    # pysui 1.5.1 drops zero bytes from the message before signing (its list-of-int BCS
    # path loses them); Sui itself does not, so compare on zero-free messages only.
    message=st.binary(max_size=400).map(lambda m: m.replace(b"\x00", b"\x01")),
)
def test_personal_message_signature_equals_pysui(seed: bytes, message: bytes) -> None:
    identity = identity_from(seed)
    ours = identity.sign_personal_message(message)
    theirs = base64.b64decode(pysui_keypair(identity).sign_personal_message(b64(message)))
    assert len(ours) == 97
    assert ours == theirs
    assert verify_personal_message(message, ours) == identity.sui_address


def test_personal_message_with_zero_bytes_follows_sui_not_pysui(alice: HostIdentity) -> None:
    message = b"a\x00b"
    ours = alice.sign_personal_message(message)
    # Sui's verifier hashes the message as given: uleb128(3) || 61 00 62.
    digest = hashlib.blake2b(b"\x03\x00\x00\x03a\x00b", digest_size=32).digest()
    Ed25519PublicKey.from_public_bytes(alice.ed25519_public).verify(ours[1:65], digest)
    pysui_sig = base64.b64decode(pysui_keypair(alice).sign_personal_message(b64(message)))
    assert pysui_sig != ours  # documents the pysui 1.5.1 quirk noted above
    with pytest.raises(InvalidSignature):
        verify_personal_message(message, pysui_sig)


@settings(max_examples=40)
@given(seed=SEEDS, tx=st.binary(max_size=600))
def test_transaction_signature_equals_pysui(seed: bytes, tx: bytes) -> None:
    identity = identity_from(seed)
    ours = identity.sign_transaction(tx)
    theirs = base64.b64decode(pysui_keypair(identity).new_sign_secure(b64(tx)))
    assert ours == theirs
    assert verify_transaction(tx, ours) == identity.sui_address


def test_personal_message_and_transaction_intents_do_not_mix(alice: HostIdentity) -> None:
    data = b"same bytes"
    with pytest.raises(InvalidSignature):
        verify_transaction(data, alice.sign_personal_message(data))
    with pytest.raises(InvalidSignature):
        verify_personal_message(data, alice.sign_transaction(data))


def test_verify_rejects_every_bit_flip(alice: HostIdentity) -> None:
    signature = alice.sign_personal_message(b"pay 5 SUI")
    for position in range(len(signature)):
        for mask in (0x01, 0x80):
            forged = bytearray(signature)
            forged[position] ^= mask
            with pytest.raises(InvalidSignature):
                verify_personal_message(b"pay 5 SUI", bytes(forged))


@pytest.mark.parametrize(
    "signature",
    [b"", b"\x00", b"\x00" * 96, b"\x00" * 98, b"\x01" + bytes(96), b"\x05" + bytes(96)],
)
def test_verify_rejects_malformed(signature: bytes) -> None:
    with pytest.raises(InvalidSignature):
        verify_personal_message(b"m", signature)


def test_verify_rejects_other_message_and_key_swap(alice: HostIdentity) -> None:
    bob = HostIdentity.generate()
    signature = alice.sign_personal_message(b"one")
    with pytest.raises(InvalidSignature):
        verify_personal_message(b"two", signature)
    # Alice's signature presented with Bob's public key.
    with pytest.raises(InvalidSignature):
        verify_personal_message(b"one", signature[:65] + bob.ed25519_public)
    assert issubclass(InvalidSignature, DTPError)


# -- identity files -----------------------------------------------------------------------


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_plain_round_trip(tmp_path: Path, alice: HostIdentity) -> None:
    path = tmp_path / "identity.json"
    alice.save(path)
    assert mode_of(path) == 0o600
    loaded = HostIdentity.load(path)
    assert loaded == alice
    assert loaded.noise_private_bytes() == alice.noise_private_bytes()
    assert loaded.to_sui_keystring() == alice.to_sui_keystring()
    document = json.loads(path.read_text())
    assert document["kind"] == "dtp-identity" and document["version"] == 1
    assert document["sui_address"] == alice.sui_address
    assert document["noise_public"] == alice.noise_public.hex()
    assert document["secret"]["encoding"] == "plain"
    assert HostIdentity.load(path, "ignored for plain files") == alice


def test_encrypted_round_trip(tmp_path: Path, alice: HostIdentity) -> None:
    path = tmp_path / "identity.json"
    alice.save(path, "correct horse")
    assert mode_of(path) == 0o600
    assert HostIdentity.load(path, "correct horse") == alice
    text = path.read_text()
    for secret in (alice.to_sui_keystring(), b64(alice.noise_private_bytes())):
        assert secret not in text
    secret = json.loads(text)["secret"]
    assert secret["encoding"] == "scrypt-chacha20poly1305"
    assert secret["kdf"] == {
        "name": "scrypt",
        "n": 2**15,
        "r": 8,
        "p": 1,
        "salt": secret["kdf"]["salt"],
    }
    assert len(base64.b64decode(secret["kdf"]["salt"])) == 16
    assert len(base64.b64decode(secret["nonce"])) == 12


def test_encryption_is_randomized(tmp_path: Path, alice: HostIdentity) -> None:
    alice.save(tmp_path / "a.json", "pw")
    alice.save(tmp_path / "b.json", "pw")
    a = json.loads((tmp_path / "a.json").read_text())["secret"]
    b = json.loads((tmp_path / "b.json").read_text())["secret"]
    assert a["kdf"]["salt"] != b["kdf"]["salt"]
    assert a["nonce"] != b["nonce"] and a["ciphertext"] != b["ciphertext"]


def test_passphrase_is_unicode_normalized(tmp_path: Path, alice: HostIdentity) -> None:
    path = tmp_path / "identity.json"
    alice.save(path, unicodedata.normalize("NFC", "pässwörd"))
    assert HostIdentity.load(path, unicodedata.normalize("NFD", "pässwörd")) == alice


def test_wrong_or_missing_passphrase(tmp_path: Path, alice: HostIdentity) -> None:
    path = tmp_path / "identity.json"
    alice.save(path, "right")
    with pytest.raises(KeyFileError, match="wrong passphrase or damaged file") as wrong:
        HostIdentity.load(path, "wrong")
    with pytest.raises(KeyFileError, match="passphrase is required"):
        HostIdentity.load(path)
    # The message carries no detail beyond the path.
    assert str(wrong.value) == f"cannot decrypt {path}: wrong passphrase or damaged file"


def test_empty_passphrase_refused(tmp_path: Path, alice: HostIdentity) -> None:
    with pytest.raises(ValueError):
        alice.save(tmp_path / "identity.json", "")
    assert not (tmp_path / "identity.json").exists()


def test_refuses_to_overwrite(tmp_path: Path, alice: HostIdentity) -> None:
    path = tmp_path / "identity.json"
    alice.save(path)
    other = HostIdentity.generate()
    with pytest.raises(KeyFileError, match="already exists"):
        other.save(path)
    assert HostIdentity.load(path) == alice
    other.save(path, overwrite=True)
    assert HostIdentity.load(path) == other
    assert mode_of(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["identity.json"]  # no temp files


def test_file_is_private_even_with_permissive_umask(tmp_path: Path, alice: HostIdentity) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "new" / "dir" / "identity.json"
        alice.save(path)
    finally:
        os.umask(old)
    assert mode_of(path) == 0o600
    assert mode_of(path.parent) == 0o700


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666, 0o610])
def test_insecure_permissions_refused(tmp_path: Path, alice: HostIdentity, mode: int) -> None:
    path = tmp_path / "identity.json"
    alice.save(path)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match=f"permissions {mode:04o} .* too open"):
        HostIdentity.load(path)
    assert HostIdentity.load(path, allow_insecure=True) == alice


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_owner_only_modes_accepted(tmp_path: Path, alice: HostIdentity) -> None:
    path = tmp_path / "identity.json"
    alice.save(path)
    os.chmod(path, 0o400)
    assert HostIdentity.load(path) == alice


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no identity file at"):
        HostIdentity.load(tmp_path / "nope.json")


def test_directory_is_not_an_identity(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError):
        HostIdentity.load(tmp_path)


def write_private(path: Path, content: str | bytes) -> Path:
    data = content.encode() if isinstance(content, str) else content
    path.write_bytes(data)
    os.chmod(path, 0o600)
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe not text", "not JSON"),
        ("", "not JSON"),
        ("{not json", "not JSON"),
        ("[1, 2]", "not a DTP identity file"),
        ('{"kind": "ssh-key", "version": 1}', "not a DTP identity file"),
        ('{"kind": "dtp-identity", "version": 2}', "version 2"),
        ('{"kind": "dtp-identity"}', "version None"),
        ('{"kind": "dtp-identity", "version": 1}', "damaged"),
        ('{"kind": "dtp-identity", "version": 1, "secret": {"encoding": "rot13"}}', "unknown"),
    ],
)
def test_not_an_identity_file(tmp_path: Path, content: str | bytes, message: str) -> None:
    path = write_private(tmp_path / "identity.json", content)
    with pytest.raises(KeyFileError, match=message):
        HostIdentity.load(path)


def edit(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def test_tampered_ciphertext_looks_like_wrong_passphrase(
    tmp_path: Path, alice: HostIdentity
) -> None:
    path = tmp_path / "identity.json"
    alice.save(path, "pw")
    raw = json.loads(path.read_text())["secret"]["ciphertext"]
    data = bytearray(base64.b64decode(raw))
    for position in (0, len(data) // 2, len(data) - 1):
        flipped = bytearray(data)
        flipped[position] ^= 0x01
        edit(path, lambda d, f=flipped: d["secret"].__setitem__("ciphertext", b64(bytes(f))))
        with pytest.raises(KeyFileError, match="wrong passphrase or damaged file"):
            HostIdentity.load(path, "pw")


def test_header_is_authenticated(tmp_path: Path, alice: HostIdentity) -> None:
    bob = HostIdentity.generate()
    path = tmp_path / "identity.json"
    alice.save(path, "pw")
    edit(path, lambda d: d.__setitem__("sui_address", bob.sui_address))
    with pytest.raises(KeyFileError, match="wrong passphrase or damaged file"):
        HostIdentity.load(path, "pw")


def test_plain_header_must_match_keys(tmp_path: Path, alice: HostIdentity) -> None:
    bob = HostIdentity.generate()
    path = tmp_path / "identity.json"
    alice.save(path)
    edit(path, lambda d: d.__setitem__("noise_public", bob.noise_public.hex()))
    with pytest.raises(KeyFileError, match="do not match"):
        HostIdentity.load(path)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["secret"].__setitem__("data", "!!not base64!!"),
        lambda d: d["secret"].__setitem__("data", b64(b"not json")),
        lambda d: d["secret"].__setitem__("data", b64(b'{"sui_keystring": 5}')),
        lambda d: d["secret"].__setitem__("data", b64(b'{"noise_private": "AA=="}')),
        lambda d: d["secret"].pop("data"),
    ],
)
def test_damaged_plain_secret(tmp_path: Path, alice: HostIdentity, change) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "identity.json"
    alice.save(path)
    edit(path, change)
    with pytest.raises(KeyFileError, match="damaged"):
        HostIdentity.load(path)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["secret"]["kdf"].__setitem__("n", 2**30),  # would need 1 TiB
        lambda d: d["secret"]["kdf"].__setitem__("n", 1000),  # not a power of two
        lambda d: d["secret"]["kdf"].__setitem__("r", 0),
        lambda d: d["secret"]["kdf"].__setitem__("p", "1"),
        lambda d: d["secret"]["kdf"].__setitem__("name", "argon2id"),
        lambda d: d["secret"]["kdf"].__setitem__("salt", b64(b"short")),
        lambda d: d["secret"].__setitem__("nonce", b64(bytes(8))),
        lambda d: d["secret"].pop("ciphertext"),
    ],
)
def test_damaged_encrypted_secret(tmp_path: Path, alice: HostIdentity, change) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "identity.json"
    alice.save(path, "pw")
    edit(path, change)
    with pytest.raises(KeyFileError, match="damaged"):
        HostIdentity.load(path, "pw")


def test_default_identity_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_identity_path() == tmp_path / "data" / "dtp" / "identity.json"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    expected = tmp_path / "home" / ".local" / "share" / "dtp" / "identity.json"
    assert default_identity_path() == expected
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_identity_path() == expected
