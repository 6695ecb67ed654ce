"""Ed25519 verification for the checks made the way Sui makes them: LocalLedger's check
of every transaction's signature, and receipt signatures (a paid server's check of each
receipt and the escrow claim rule's).

With fastcrypto when it is installed (``pysui_fastcrypto``, which pysui brings: the
library Sui validators verify with, at about half the cost of OpenSSL here); else with
cryptography's OpenSSL. Both refuse every malformed key or signature and every changed
bit (tests/identity/test_ed25519.py pins that they agree). They verify by different
rules (ZIP-215's cofactored equation, RFC 8032's cofactorless one), which part on
points of small order: both verifiers here refuse a public key or an R of small order
(:func:`has_small_order`) before either library sees it, as docs/protocol.md 8.4 asks.
What still parts them, a "mixed order" point, only the holder of the private key can
make: it lets no one sign for another's key.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from dtp.identity._bcs import uleb128

__all__ = ["has_small_order", "sign_personal_with_seed", "verify", "verify_memoized"]

_FASTCRYPTO_ED25519 = 0  # fastcrypto's scheme number for Ed25519 (Sui's flag)
_ED25519_P: Final = 2**255 - 19


def _small_order_ys() -> frozenset[int]:
    """The y coordinates of Ed25519's eight points of small order (1, 2, 4, 8), worked
    out from the curve -x^2 + y^2 = 1 + d x^2 y^2: y = 1 (the identity), p - 1
    (order 2), 0 (order 4), and the two ±y of the order-8 points, which double to the
    order-4 points (y(2P) = 0 means y^2 = -x^2, so d x^4 - 2 x^2 - 1 = 0)."""
    p, d = _ED25519_P, (-121665 * pow(121666, -1, _ED25519_P)) % _ED25519_P

    def sqrt(a: int) -> int | None:  # p = 5 mod 8 (RFC 8032, 5.1.3)
        x = pow(a % p, (p + 3) // 8, p)
        if (x * x - a) % p:
            x = x * pow(2, (p - 1) // 4, p) % p
        return x if (x * x - a) % p == 0 else None

    ys = {0, 1, p - 1}
    root = sqrt(1 + d)
    assert root is not None
    for x2 in ((1 + root) * pow(d, -1, p) % p, (1 - root) * pow(d, -1, p) % p):
        y = sqrt(-x2)
        if y is not None:
            ys |= {y, p - y}
    assert len(ys) == 5
    return frozenset(ys)


_SMALL_ORDER_YS: Final = _small_order_ys()


def has_small_order(point: bytes) -> bool:
    """True if the 32-byte encoded Ed25519 point (a public key, or a signature's R)
    is one of the eight of small order, canonically encoded or not.

    For a public key of small order valid-looking signatures can be made without any
    private key (under Sui's ZIP-215 verification every all-zero signature verifies
    for the all-zero key), so it proves no one.
    """
    y = int.from_bytes(point, "little") & ((1 << 255) - 1)
    return y % _ED25519_P in _SMALL_ORDER_YS


def _refused(public_key: bytes, signature: bytes) -> bool:
    """Whether ``public_key`` and ``signature`` are refused before any library checks
    them: wrong sizes, or a public key or R (the signature's first half) of small
    order, on which the two libraries' rules differ (see the module docs)."""
    return (
        len(public_key) != 32
        or len(signature) != 64
        or has_small_order(public_key)
        or has_small_order(signature[:32])
    )


def verify_openssl(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` over ``message`` verifies under ``public_key`` (OpenSSL)."""
    if _refused(public_key, signature):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes(public_key)).verify(
            bytes(signature), bytes(message)
        )
    except (InvalidSignature, ValueError):
        return False
    return True


def _fastcrypto() -> Callable[[bytes, bytes, bytes], bool] | None:
    try:
        import pysui_fastcrypto
    except ImportError:  # pragma: no cover - pysui brings it
        return None
    verify_pubk = pysui_fastcrypto.verify_pubk
    b64 = base64.b64encode

    def verify_fastcrypto(public_key: bytes, signature: bytes, message: bytes) -> bool:
        """Whether ``signature`` over ``message`` verifies under ``public_key``
        (fastcrypto)."""
        if _refused(public_key, signature):
            return False
        try:
            ok: bool = verify_pubk(
                _FASTCRYPTO_ED25519,
                bytes(public_key),
                b64(bytes(message)).decode(),
                b64(bytes(signature)).decode(),
            )
        except (ValueError, TypeError):  # a malformed key or signature
            return False
        return ok

    return verify_fastcrypto


verify_fastcrypto = _fastcrypto()


def _fastcrypto_signer() -> Callable[[bytes, bytes], bytes] | None:
    try:
        import pysui_fastcrypto
    except ImportError:  # pragma: no cover - pysui brings it
        return None
    sign_digest = pysui_fastcrypto.sign_digest
    b64 = base64.b64encode
    personal = bytes([3, 0, 0])  # (Sui's intent of a personal message)

    def sign_personal_fastcrypto(seed: bytes, message: bytes) -> bytes:
        """The 97-byte Sui signature (flag, signature, public key) of the Ed25519 key
        of the 32-byte ``seed`` over the personal message ``message`` (fastcrypto)."""
        data = b64(uleb128(len(message)) + message).decode()
        return bytes(sign_digest(_FASTCRYPTO_ED25519, seed, data, personal))

    return sign_personal_fastcrypto


sign_personal_with_seed: Callable[[bytes, bytes], bytes] | None = _fastcrypto_signer()
"""``sign_personal_with_seed(seed, message)``: the Sui personal-message signature
(:meth:`dtp.identity.keys.HostIdentity.sign_personal_message`'s 97 bytes, which end with
the public key) of the Ed25519 key of ``seed``, its key derived and the message signed
in one call, at about half the cost of OpenSSL's key generation and signature
(tests/identity/test_keys_ahead.py holds the two to the same bytes); None without
fastcrypto. For a fresh key's first signature, whose public key the signature gives."""

verify: Callable[[bytes, bytes, bytes], bool] = verify_fastcrypto or verify_openssl
"""``verify(public_key, signature, message)``: True when the 64-byte ``signature`` over
``message`` verifies under the 32-byte ``public_key``; False otherwise, and always for a
public key or R of small order (never raises)."""


# Signatures this process has verified: a paid server checks a connection's final
# receipt when it arrives and the ledger's claim rule checks it again at settlement, in
# the same process (LocalLedger). Ed25519 verification is deterministic, so a success for
# the exact (key, signature, message) bytes holds for good; only successes are kept, and
# only of short messages (receipts are 143 bytes), so the memo stays small.
_VERIFIED_MAX: Final = 1024
_MEMO_MESSAGE_MAX: Final = 256
_verified: dict[tuple[bytes, bytes, bytes], None] = {}
_verified_lock = threading.Lock()


def verify_memoized(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """:data:`verify`, remembering the successes of short messages (receipts, identity
    proofs), which are often checked twice in one process (tests/hostid/test_memoized_checks.py)."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    key = (bytes(public_key), bytes(signature), bytes(message))
    if key in _verified:
        return True
    if not verify(*key):
        return False
    if len(message) > _MEMO_MESSAGE_MAX:
        return True
    with _verified_lock:
        _verified[key] = None
        if len(_verified) > _VERIFIED_MAX:
            del _verified[next(iter(_verified))]  # the oldest
    return True
