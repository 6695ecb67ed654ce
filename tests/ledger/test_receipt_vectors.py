"""The receipt vectors (format version 2) checked without the code that made them: the
message of docs/escrow.md §6 against an independent BCS encoder (pysui's), its signature
and every fixed signature of the Move tests against an independent RFC 8032 signer
(written out below from the RFC), and the Move fixtures' messages against the layout."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from pysui.sui.sui_bcs import bcs

from dtp.identity.keys import HostIdentity
from dtp.ledger.receipt import Receipt, ReceiptScope, receipt_message

ROOT = Path(__file__).resolve().parents[2]
ESCROW_DOC = ROOT / "docs" / "escrow.md"
MOVE_TESTS = ROOT / "move" / "dtp" / "tests"

CLIENT_SEED, MALLORY_SEED = b"\x11" * 32, b"\x22" * 32
DOCS_PACKAGE = "0x" + bytes(range(32)).hex()
ESCROW = "0x" + "0" * 59 + "decaf"
CONNECTION = "0x" + "0" * 58 + "c0ffee"
#: The package's address in Move unit tests (Move.toml: dtp = "0x0").
MOVE_TEST_PACKAGE = "0x0"


# -- RFC 8032 section 5.1, Ed25519 signing, from the RFC's text ------------------------------

_P = 2**255 - 19
_Q = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, -1, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _add(p: tuple[int, ...], q: tuple[int, ...]) -> tuple[int, ...]:
    a = (p[1] - p[0]) * (q[1] - q[0]) % _P
    b = (p[1] + p[0]) * (q[1] + q[0]) % _P
    c = 2 * p[3] * q[3] * _D % _P
    d = 2 * p[2] * q[2] % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _mul(s: int, p: tuple[int, ...]) -> tuple[int, ...]:
    q: tuple[int, ...] = (0, 1, 1, 0)
    while s:
        if s & 1:
            q = _add(q, p)
        p, s = _add(p, p), s >> 1
    return q


def _compress(p: tuple[int, ...]) -> bytes:
    zinv = pow(p[2], _P - 2, _P)
    x, y = p[0] * zinv % _P, p[1] * zinv % _P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def _base() -> tuple[int, ...]:
    y = 4 * pow(5, -1, _P) % _P
    x2 = (y * y - 1) * pow(_D * y * y + 1, -1, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if x & 1:
        x = _P - x
    return (x, y, 1, x * y % _P)


def rfc8032_public(seed: bytes) -> bytes:
    h = hashlib.sha512(seed).digest()
    a = int.from_bytes(h[:32], "little") & ((1 << 254) - 8) | 1 << 254
    return _compress(_mul(a, _base()))


def rfc8032_sign(seed: bytes, message: bytes) -> bytes:
    h = hashlib.sha512(seed).digest()
    a = int.from_bytes(h[:32], "little") & ((1 << 254) - 8) | 1 << 254
    public = _compress(_mul(a, _base()))
    r = int.from_bytes(hashlib.sha512(h[32:] + message).digest(), "little") % _Q
    big_r = _compress(_mul(r, _base()))
    k = int.from_bytes(hashlib.sha512(big_r + public + message).digest(), "little") % _Q
    return big_r + ((r + k * a) % _Q).to_bytes(32, "little")


# -- an independent BCS encoding of the message ----------------------------------------------


class _ReceiptMessage(bcs.canoser.Struct):  # type: ignore[misc]
    _fields = [  # noqa: RUF012 (canoser's declaration)
        ("domain", [bcs.canoser.Uint8]),
        ("package", bcs.Address),
        ("escrow", bcs.Address),
        ("connection", bcs.Address),
        ("total_bytes", bcs.canoser.Uint64),
        ("total_requests", bcs.canoser.Uint64),
        ("total_amount", bcs.canoser.Uint64),
        ("nonce", bcs.canoser.Uint64),
    ]


def bcs_message(package: str, b: int, r: int, amount: int, nonce: int) -> bytes:
    fields = (bcs.Address.from_str(x) for x in (package, ESCROW, CONNECTION))
    raw: bytes = _ReceiptMessage(list(b"DTP-RECEIPT-V2"), *fields, b, r, amount, nonce).serialize()
    return raw


def _docs_vector() -> dict[str, bytes]:
    """The ``message``/``signature``/``encoded`` lines of docs/escrow.md §6."""
    text = ESCROW_DOC.read_text()
    section = text[text.index("### Receipt message (what the client signs)") :]
    block = section[section.index("```text") : section.index("```", section.index("```text") + 7)]
    found = dict(re.findall(r"^(message|signature|encoded)\s+([0-9a-f]+)$", block, re.M))
    assert set(found) == {"message", "signature", "encoded"}, block
    return {k: bytes.fromhex(v) for k, v in found.items()}


def test_the_independent_signer_is_rfc8032() -> None:
    """RFC 8032 section 7.1, test 1 (empty message) and test 2 (one byte)."""
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    assert rfc8032_public(seed).hex() == (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    )
    assert rfc8032_sign(seed, b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    seed = bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
    assert rfc8032_sign(seed, b"\x72").hex() == (
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
    )


def test_the_docs_vector() -> None:
    vector = _docs_vector()
    message = bcs_message(DOCS_PACKAGE, 10240, 4, 120, 1)
    assert len(message) == 143
    assert vector["message"] == message
    assert rfc8032_public(CLIENT_SEED).hex().startswith("d04ab232")
    assert vector["signature"] == rfc8032_sign(CLIENT_SEED, message)
    # and the code agrees with both (the vector was made with it)
    scope = ReceiptScope(DOCS_PACKAGE, ESCROW, CONNECTION)
    assert receipt_message(scope, 10240, 4, 120, 1) == message
    client = HostIdentity.from_private_bytes(CLIENT_SEED, CLIENT_SEED)
    receipt = Receipt(scope, 10240, 4, 120, 1).sign(client)
    assert receipt.signature == vector["signature"]
    # the encoding: the version byte, the message without its tag, the signature
    assert vector["encoded"] == b"\x02" + message[15:] + vector["signature"]
    assert receipt.encode() == vector["encoded"]
    assert Receipt.decode(vector["encoded"]) == receipt


def _move_constants(*files: str) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for name in files:
        text = (MOVE_TESTS / name).read_text()
        for const, value in re.findall(r'const (\w+): vector<u8> = x"([0-9a-f]*)";', text):
            found[const] = bytes.fromhex(value)
    return found


# name -> (signer seed, package, total_bytes, total_requests, total_amount, nonce), as
# test_helpers.move, rule_tests.move and economics_scenario_tests.move document them
MOVE_RECEIPTS = {
    "R1_SIG": (CLIENT_SEED, MOVE_TEST_PACKAGE, 10240, 4, 120, 1),
    "R2_SIG": (CLIENT_SEED, MOVE_TEST_PACKAGE, 51200, 10, 550, 2),
    "RBIG_SIG": (CLIENT_SEED, MOVE_TEST_PACKAGE, 204800, 0, 2000, 3),
    "RMISMATCH_SIG": (CLIENT_SEED, MOVE_TEST_PACKAGE, 10240, 4, 999, 1),
    "RZERO_SIG": (CLIENT_SEED, MOVE_TEST_PACKAGE, 0, 0, 0, 5),
    "R1_BY_MALLORY_SIG": (MALLORY_SEED, MOVE_TEST_PACKAGE, 10240, 4, 120, 1),
    "RFREE_SIG": (CLIENT_SEED, MOVE_TEST_PACKAGE, 10240, 4, 0, 1),
    "DOCS_R1_SIG": (CLIENT_SEED, DOCS_PACKAGE, 10240, 4, 120, 1),
}


@pytest.mark.parametrize("name", sorted(MOVE_RECEIPTS))
def test_the_move_tests_fixed_signatures(name: str) -> None:
    constants = _move_constants(
        "test_helpers.move", "rule_tests.move", "economics_scenario_tests.move"
    )
    seed, package, b, r, amount, nonce = MOVE_RECEIPTS[name]
    assert constants[name] == rfc8032_sign(seed, bcs_message(package, b, r, amount, nonce))


def test_the_move_tests_messages_and_keys() -> None:
    constants = _move_constants("test_helpers.move", "rule_tests.move")
    assert constants["R1_MSG"] == bcs_message(MOVE_TEST_PACKAGE, 10240, 4, 120, 1)
    assert constants["DOCS_R1_MSG"] == _docs_vector()["message"]
    assert constants["CLIENT_PK"] == rfc8032_public(CLIENT_SEED)
    assert constants["MALLORY_PK"] == rfc8032_public(MALLORY_SEED)
    helpers = (MOVE_TESTS / "test_helpers.move").read_text()
    assert "const CONNECTION: address = @0xc0ffee;" in helpers
    assert "const ESCROW: address = @0xdecaf;" in helpers
    assert 'dtp = "0x0"' in (ROOT / "move" / "dtp" / "Move.toml").read_text()


# -- response acknowledgements (docs/escrow.md §12, version 2) --------------------------------


class _AckMessage(bcs.canoser.Struct):  # type: ignore[misc]
    _fields = [  # noqa: RUF012 (canoser's declaration)
        ("domain", [bcs.canoser.Uint8]),
        ("package", bcs.Address),
        ("escrow", bcs.Address),
    ]


def _ack_vector() -> dict[str, bytes]:
    """The ``body``/``hash``/``message``/``signature`` lines of docs/escrow.md §12."""
    text = ESCROW_DOC.read_text()
    section = text[text.index("Acknowledgement message (112 bytes") :]
    block = section[section.index("```text") : section.index("```", section.index("```text") + 7)]
    found = dict(re.findall(r"^(body|hash|message|signature)\s+([0-9a-f]+)$", block, re.M))
    assert set(found) == {"body", "hash", "message", "signature"}, block
    return {k: bytes.fromhex(v) for k, v in found.items()}


def test_the_acknowledgement_vector() -> None:
    """The docs' acknowledgement: its body is msgpack ``[1, 7, "answer", nil]``, its hash
    BLAKE2b-256 of it, its message the independent BCS encoding (tag, package, escrow)
    followed by the hash, its signature RFC 8032's; the code and the Move test's
    constants agree with all of them."""
    from dtp.ledger.interface import response_ack_message
    from dtp.messaging.rpc import response_hash

    vector = _ack_vector()
    assert vector["body"] == b"\x94\x01\x07\xa6answer\xc0"
    assert vector["hash"] == hashlib.blake2b(vector["body"], digest_size=32).digest()
    fields = (bcs.Address.from_str(x) for x in (DOCS_PACKAGE, ESCROW))
    head: bytes = _AckMessage(list(b"DTP-RESPONSE-V2"), *fields).serialize()
    message = head + vector["hash"]
    assert len(message) == 112 and vector["message"] == message
    assert vector["signature"] == rfc8032_sign(CLIENT_SEED, message)
    assert response_ack_message(DOCS_PACKAGE, ESCROW, response_hash(vector["body"])) == message
    constants = _move_constants("rule_tests.move")
    assert constants["DOCS_ACK_HASH"] == vector["hash"]
    assert constants["DOCS_ACK_MSG"] == message
    assert constants["DOCS_ACK_SIG"] == vector["signature"]
