"""zkLogin proofs verified by a real Sui full node (docs/protocol.md 8.4), where the tests
are pointed at one (``DTP_SUI_RPC``, ``DTP_SUI_PACKAGE``, ``DTP_SUI_KEY``:
scripts/sui-localnet.sh; skipped otherwise, saying so). The proof is section 8.4's
zkLogin vector: Mysten's test issuer's, verifiable on a node with the development
verifying key (a localnet or testnet) when it is given that issuer's key (``jwks``).
The node confirms it, refuses it with a proof point changed, and a DTP server whose
verifier asks that node serves the client -- or refuses it as expired, once the
network is past the proof's last epoch (10)."""

from __future__ import annotations

import json
import os

import pytest

from dtp.identity._zklogin import NodeVerifier
from dtp.identity.keys import HostIdentity
from dtp.identity.wallets import ZkLoginWallet
from dtp.ledger.sui._client import SuiNode
from tests.identity.zklogin_servers import connect, refused, serve_aio
from tests.support.sui_network import real_node_configured
from tests.support.vectors import load_vectors

(ZK,) = [v for v in load_vectors("identity-proof-scheme") if v["name"] == "identity-proof-zklogin"]
#: The key (JWK) of Mysten's test issuer, which the vector's proof was made under.
JWK = {
    "iss": "https://id.twitch.tv/oauth2",
    "kid": "1",
    "kty": "RSA",
    "e": "AQAB",
    "alg": "RS256",
    "n": "6lq9MQ-q6hcxr7kOUp-tHlHtdcDsVLwVIw13iXUCvuDOeCi0VSuxCCUY6UmMjy53dX00ih2E4Y4UvlrmmurK"
    "0eG26b-HMNNAvCGsVXHU3RcRhVoHDaOwHwU72j7bpHn9XbP3Q3jebX6KIfNbei2MiR0Wyb8RZHE-aZhRYO8_-k9G"
    "2GycTpvc-2GBsP8VHLUKKfAs2B6sW3q3ymU6M0L-cFXkZ9fHkn9ejs-sqZPhMJxtBPBxoUIUQFTgv4VXTSv914f_"
    "YkNw-EjuwbgwXMvpyr06EyfImxHoxsZkFYB-qBYHtaMxTnFsZBr6fn8Ha2JqT1hoP7Z5r5wxDu3GQhKkHw",
}


@pytest.fixture
def node() -> SuiNode:
    if not real_node_configured():
        pytest.skip(
            "no Sui node here: DTP_SUI_RPC, DTP_SUI_PACKAGE and DTP_SUI_KEY name one "
            "(scripts/sui-localnet.sh starts a localnet and sets them)"
        )
    return SuiNode(os.environ["DTP_SUI_RPC"], timeout=30.0)


def _wallet() -> ZkLoginWallet:
    ephemeral = HostIdentity.from_private_bytes(
        bytes.fromhex(ZK["ephemeral_ed25519_seed"]), bytes(32)
    )
    return ZkLoginWallet(json.loads(json.dumps(ZK["inputs"])), ZK["max_epoch"], ephemeral)


def test_a_sui_node_confirms_the_vectors_zklogin_proof(node: SuiNode) -> None:
    try:
        message, proof = bytes.fromhex(ZK["message"]), bytes.fromhex(ZK["proof"])
        assert node.verify_signature(message, proof, ZK["address"], jwks=[JWK]) == (True, "")
        # a proof point changed ("1" -> "2", the last of point a): the Groth16 proof fails
        changed = proof.replace(b"\x011\x03", b"\x012\x03", 1)
        assert changed != proof
        valid, reason = node.verify_signature(message, changed, ZK["address"], jwks=[JWK])
        assert not valid and reason
        # and another address than the proof's
        valid, _ = node.verify_signature(message, proof, "0x" + "ab" * 32, jwks=[JWK])
        assert not valid
    finally:
        node.close()


def test_a_server_asking_a_sui_node_serves_or_refuses_by_the_epoch(node: SuiNode) -> None:
    try:
        epoch, _ = node.epoch_info()
        verifier = NodeVerifier(node, jwks=[JWK])
        if epoch <= ZK["max_epoch"]:
            seen, stop = serve_aio(verifier)
            try:
                assert connect(stop.port, _wallet()) == b"hello"  # type: ignore[attr-defined]
            finally:
                stop()
            assert seen == [ZK["address"]]
        else:
            refused(verifier, f"lasted to epoch 10, and the network is in epoch {epoch}")
    finally:
        node.close()
