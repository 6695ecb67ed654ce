"""Python clients whose wallets are Secp256k1, Secp256r1, a passkey or a multisig connect
over TCP to the asyncio server (dtp.socket's client, ConnectionConfig's ``wallet``), in IK
and XX, and are served as their wallets' addresses; a proof by another key, under a wrong
scheme flag, or of a multisig under its threshold is refused (HandshakeError: the
reason in XX, none in IK) and serves nobody."""

from __future__ import annotations

from typing import Any

import pytest

from dtp.errors import HandshakeError
from dtp.identity.wallets import MultiSigWallet, Secp256k1Wallet, Secp256r1Wallet, SoftwarePasskey
from tests.identity.zklogin_servers import CLIENT, connect, serve_aio
from tests.support.polling import wait_for

K1 = Secp256k1Wallet(bytes([0x11] * 32))
R1 = Secp256r1Wallet(bytes([0x22] * 32))
MEMBERS = [(*MultiSigWallet.member_of(w), weight) for w, weight in ((CLIENT, 1), (K1, 1), (R1, 2))]
WALLETS: dict[str, Any] = {
    "secp256k1": K1,
    "secp256r1": R1,
    "passkey": SoftwarePasskey(bytes([0x33] * 32)),
    "multisig": MultiSigWallet(MEMBERS, 3, [R1, K1]),
}


class _Altered:
    """A wallet sending another's proof, changed."""

    def __init__(self, wallet: Any, change: Any) -> None:
        self.wallet, self.change = wallet, change
        self.sui_address = wallet.sui_address

    def sign_personal_message(self, message: bytes) -> bytes:
        return bytes(self.change(self.wallet.sign_personal_message(message)))


OTHER = Secp256k1Wallet(bytes([0x44] * 32))
FORGED: dict[str, tuple[Any, str]] = {
    "another key": (_Altered(K1, lambda p: p[:65] + OTHER.public_key), "does not verify"),
    "wrong flag": (_Altered(K1, lambda p: b"\x02" + p[1:]), "secp256r1"),
    "under threshold": (MultiSigWallet(MEMBERS, 3, [K1]), "under its threshold 3"),
}


def test_wallets_of_every_offline_scheme_are_served_as_themselves() -> None:
    seen, stop = serve_aio(None)
    try:
        for wallet in WALLETS.values():
            for ik in (True, False):
                assert connect(stop.port, wallet, ik) == b"hello"  # type: ignore[attr-defined]
    finally:
        stop()
    assert seen == [w.sui_address for w in WALLETS.values() for _ in (1, 2)]


@pytest.mark.parametrize("name", sorted(FORGED))
def test_a_forged_proof_is_refused(name: str) -> None:
    wallet, words = FORGED[name]
    seen, stop = serve_aio(None)
    try:
        with pytest.raises(HandshakeError, match=words):
            connect(stop.port, wallet, ik=False)
        with pytest.raises(HandshakeError):  # (IK: no reply, so no reason)
            connect(stop.port, wallet, ik=True)
        # (counted as the server's handshake task ends: maybe after the client saw it)
        server = stop.server  # type: ignore[attr-defined]
        assert wait_for(lambda: server.handshakes_failed == 2, timeout=10)
    finally:
        stop()
    assert seen == []
