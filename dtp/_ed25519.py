"""Ed25519 verification for the checks made the way Sui makes them: LocalLedger's check
of every transaction's signature, and receipt signatures (a paid server's check of each
receipt and the escrow claim rule's).

With fastcrypto when it is installed (``pysui_fastcrypto``, pysui's native module, which
pysui brings): the library Sui validators verify with, at about half the cost of OpenSSL
here; else with cryptography's OpenSSL. Both refuse every malformed key or signature and
every changed bit (tests/test_ed25519.py pins that they agree).
"""

from __future__ import annotations

import base64
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["verify"]

_FASTCRYPTO_ED25519 = 0  # fastcrypto's scheme number for Ed25519 (Sui's flag)


def verify_openssl(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` over ``message`` verifies under ``public_key`` (OpenSSL)."""
    if len(public_key) != 32 or len(signature) != 64:
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
        if len(public_key) != 32 or len(signature) != 64:
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

verify: Callable[[bytes, bytes, bytes], bool] = verify_fastcrypto or verify_openssl
"""``verify(public_key, signature, message)``: True when the 64-byte ``signature`` over
``message`` verifies under the 32-byte ``public_key``; False otherwise (never raises)."""
