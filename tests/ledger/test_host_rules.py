"""LocalLedger's host and admission rules (docs/escrow.md §2)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from dtp.errors import HostConfigError
from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger

P = 2**255 - 19
# Small-order u-coordinates of Curve25519: 0, 1, the two points of order 8, p - 1, p, p + 1.
LOW_ORDER = [
    v.to_bytes(32, "little")
    for v in (
        0,
        1,
        int.from_bytes(
            bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
            "little",
        ),
        int.from_bytes(
            bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
            "little",
        ),
        P - 1,
        P,
        P + 1,
    )
]
# X25519 ignores the top bit of the last byte: the same points with it set.
LOW_ORDER += [key[:31] + bytes([key[31] | 0x80]) for key in LOW_ORDER]


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


SERVER = ident(0x33)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LocalLedger]:
    led = LocalLedger(tmp_path / "ledger.db", clock_ms=0)
    yield led
    led.close()


def test_the_list_is_what_x25519_refuses() -> None:
    """Each refused key really makes every Diffie-Hellman with it fail (so no client could
    ever complete a handshake), and a random key does not."""
    private = X25519PrivateKey.generate()
    for key in LOW_ORDER:
        with pytest.raises(ValueError):
            private.exchange(X25519PublicKey.from_public_bytes(key))
    private.exchange(X25519PublicKey.from_public_bytes(HostIdentity.generate().noise_public))


@pytest.mark.parametrize("key", LOW_ORDER, ids=lambda k: k.hex()[:8] + ".." + k.hex()[-2:])
def test_create_host_refuses_a_low_order_noise_key(ledger: LocalLedger, key: bytes) -> None:
    before = ledger.dump()
    with pytest.raises(HostConfigError) as info:
        ledger.create_host(SERVER, key, ["tcp://127.0.0.1:7000"])
    assert info.value.name == "EInvalidNoiseKey" and "low-order" in str(info.value)
    assert ledger.dump() == before


def test_set_noise_static_key_refuses_a_low_order_key(ledger: LocalLedger) -> None:
    host = ledger.create_host(SERVER, SERVER.noise_public)
    for key in (bytes(32), LOW_ORDER[-1]):
        with pytest.raises(HostConfigError) as info:
            ledger.set_noise_static_key(SERVER, host, key)
        assert info.value.name == "EInvalidNoiseKey"
    assert ledger.get_host(host).noise_static_key == SERVER.noise_public
    # ordinary keys, including ones that differ from a low-order point by one byte, pass
    for key in (HostIdentity.generate().noise_public, b"\x02" + bytes(31), b"\x01" * 32):
        ledger.set_noise_static_key(SERVER, host, key)
        assert ledger.get_host(host).noise_static_key == key
