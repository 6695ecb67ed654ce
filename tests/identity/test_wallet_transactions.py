"""A wallet of any offline Sui scheme signs LocalLedger transactions as Sui takes them
(LocalLedger.execute checks the sender's signature with dtp.identity.keys): Secp256k1,
Secp256r1, passkey and multisig wallets open a connection whose receipts a session key
signs (``transport_control::open_with_session_key``, docs/escrow.md 6.2), the
connection's client being the wallet's address -- the address its identity proof
proves; conservation holds to the MIST. Another wallet's signature, or a zkLogin one
(whose proof only a Sui node verifies), is refused with WrongSigner."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dtp.errors import WrongSigner
from dtp.identity._noise import make_auth_proof, verify_auth_proof
from dtp.identity.keys import HostIdentity
from dtp.identity.wallets import (
    MultiSigWallet,
    Secp256k1Wallet,
    Secp256r1Wallet,
    SoftwarePasskey,
    ZkLoginWallet,
)
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.ledger.local._tx import Address
from tests.support.vectors import load_vectors

SERVER = HostIdentity.from_private_bytes(bytes([0x61] * 32), bytes([0x62] * 32))
SESSION = HostIdentity.generate()  # the page's session key: an Ed25519 key of its own
SLA = Sla(price_per_kib=0, price_per_request=25, min_deposit=100)
FUNDS = 1_000_000
DEPOSIT = 1_000
K1 = Secp256k1Wallet(bytes([0x11] * 32))
WALLETS: dict[str, Any] = {
    "secp256k1": K1,
    "secp256r1": Secp256r1Wallet(bytes([0x22] * 32)),
    "passkey": SoftwarePasskey(bytes([0x33] * 32)),
    "multisig": MultiSigWallet(
        [
            (*MultiSigWallet.member_of(K1), 1),
            (*MultiSigWallet.member_of(Secp256r1Wallet(bytes([0x22] * 32))), 1),
        ],
        1,
        [K1],
    ),
}


def _ledger(wallet: Any) -> tuple[LocalLedger, str]:
    ledger = LocalLedger(":memory:", clock_ms=0)
    ledger.faucet(SERVER.sui_address, FUNDS)
    ledger.faucet(wallet.sui_address, FUNDS)
    host = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host, 8, "jsonrpc", SLA)
    ledger.set_firewall_mode(SERVER, host, 1)
    ledger.allow(SERVER, host, wallet.sui_address)
    return ledger, host


def _transact(ledger: LocalLedger, wallet: Any, module: str, function: str, args: list[Any]) -> Any:
    tx = ledger.build_tx(wallet.sui_address, module, function, args)
    return ledger.execute(tx, wallet.sign_transaction(tx))


@pytest.mark.parametrize("name", sorted(WALLETS))
def test_a_wallet_opens_with_a_session_key_and_proves_the_same_address(name: str) -> None:
    wallet = WALLETS[name]
    ledger, host = _ledger(wallet)
    try:
        cap = _transact(ledger, wallet, "spending_cap", "create", [10 * DEPOSIT]).value
        opened = _transact(
            ledger,
            wallet,
            "transport_control",
            "open_with_session_key",
            [Address(host), 8, Address(cap), SESSION.ed25519_public, DEPOSIT],
        )
        connection = ledger.get_connection(opened.value)
        escrow = ledger.get_escrow(connection.escrow)
        assert connection.client == escrow.client == wallet.sui_address
        assert escrow.client_public_key == SESSION.ed25519_public  # signs the receipts
        assert escrow.deposited == DEPOSIT
        assert ledger.balance(wallet.sui_address) + escrow.balance == FUNDS  # to the MIST
        # the identity proof of the same wallet proves the connection's client
        proof = make_auth_proof(wallet, bytes(32))
        assert verify_auth_proof(proof, bytes(32)) == connection.client
    finally:
        ledger.close()


def test_another_wallets_signature_or_a_zklogin_one_is_refused() -> None:
    ledger, _host = _ledger(K1)
    try:
        tx = ledger.build_tx(K1.sui_address, "spending_cap", "create", [DEPOSIT])
        other = Secp256k1Wallet(bytes([0x44] * 32))
        with pytest.raises(WrongSigner, match=f"signed by {other.sui_address}"):
            ledger.execute(tx, other.sign_transaction(tx))
        (zk,) = [
            v
            for v in load_vectors("identity-proof-scheme")
            if v["name"] == "identity-proof-zklogin"
        ]
        ephemeral = HostIdentity.from_private_bytes(
            bytes.fromhex(zk["ephemeral_ed25519_seed"]), bytes(32)
        )
        account = ZkLoginWallet(json.loads(json.dumps(zk["inputs"])), zk["max_epoch"], ephemeral)
        ledger.faucet(account.sui_address, FUNDS)
        tx = ledger.build_tx(account.sui_address, "spending_cap", "create", [DEPOSIT])
        with pytest.raises(WrongSigner, match="verified by a Sui node"):
            ledger.execute(tx, account.sign_transaction(tx))
        assert ledger.balance(account.sui_address) == FUNDS  # nothing ran
    finally:
        ledger.close()
