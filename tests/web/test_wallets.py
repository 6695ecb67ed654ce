"""The JS client's wallets of every Sui scheme (web/dtp-client/demo/wallets.js: Mysten's
SDK signers -- Ed25519, Secp256k1, Secp256r1, a passkey, a multisig, a zkLogin account)
prove who they are to a Python dtp.aio echo server on the WebSocket carrier, in IK and
XX, from node and from headless Chromium; the server sees each wallet's own address
(the addresses of docs/protocol.md 8.4's vectors). A proof by another key, under a wrong
scheme flag, or of a multisig under its threshold is refused: HANDSHAKE_FAILED and the
reason in XX, no answer in IK. The zkLogin proof goes to the server's verifier (a node
that confirms it: what a real node says of it is tests/identity/test_zklogin_live.py's).
In Chromium the passkey may be the browser's own: a WebAuthn credential of a virtual
authenticator (DevTools' WebAuthn domain), signing through the SDK's
BrowserPasskeyProvider."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
from typing import Any

import pytest

from dtp.cli._chromium import BrowserError
from dtp.identity._zklogin import NodeVerifier
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig
from tests.identity.zklogin_servers import Node
from tests.support.browser import Chromium, need_chromium
from tests.support.vectors import load_vectors
from tests.web.browser_client import (
    EchoService,
    ServedEcho,
    need_client,
    node_command,
    served_package,
)

VECTORS = {v["scheme"]: v for v in load_vectors("identity-proof-scheme")}
MULTISIG = next(
    v for v in load_vectors("identity-proof-scheme") if v["name"] == "identity-proof-multisig"
)
ED25519 = HostIdentity.from_private_bytes(bytes(range(32)), bytes(32)).sui_address
#: Each wallet's address: the vectors' (the same keys), Ed25519's from section 8.4's seed.
ADDRESSES = {
    "ed25519": ED25519,
    "secp256k1": VECTORS["secp256k1"]["address"],
    "secp256r1": VECTORS["secp256r1"]["address"],
    "passkey": VECTORS["passkey"]["address"],
    "multisig": MULTISIG["address"],
    "zklogin": VECTORS["zklogin"]["address"],
}


def _serve(**options: Any) -> tuple[EchoService, HostIdentity, ServedEcho, Node]:
    identity = HostIdentity.generate()
    node = Node()
    config = ConnectionConfig(
        identity=identity, is_client=False, zklogin_verifier=NodeVerifier(node)
    )
    service = EchoService()
    return service, identity, ServedEcho(service, identity, config=config, **options), node


def _check(
    report: dict[str, Any], service: EchoService, node: Node, addresses: dict[str, str]
) -> None:
    assert "error" not in report, report
    schemes = report["schemes"]
    assert set(schemes) == set(addresses)
    for name, run in schemes.items():
        assert run["address"] == addresses[name], name
        for pattern in ("IK", "XX"):
            assert run[pattern]["pattern"] == pattern
            assert run[pattern]["echo"] == f"hello from {name} over {pattern}"
    # what the server proved, connection by connection: each wallet's address, twice
    assert sorted(service.seen) == sorted(a for a in addresses.values() for _ in range(2))
    assert [asked[2] for asked in node.asked] == [addresses["zklogin"]] * 2
    refused = report["refused"]
    for name, words in (
        ("another-key", "does not verify"),
        ("wrong-flag", "secp256r1"),
        ("multisig-threshold", "under its threshold 3"),
    ):
        failure = refused[name]
        assert failure["name"] == "HandshakeError" and failure["code"] == 10, failure
        assert "identity proof rejected" in failure["message"] and words in failure["message"]
    assert refused["another-key-ik"]["name"] == "HandshakeError"  # (no reason in IK)


def test_wallets_of_every_scheme_connect_from_node() -> None:
    need_client()
    service, identity, served, node = _serve()
    with served as url:
        job = {"url": url, "serverKey": identity.noise_public.hex()}
        out = subprocess.run(
            node_command("scripts/wallets-client.mjs"),
            input=json.dumps(job).encode(),
            capture_output=True,
            timeout=180,
        )
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    _check(json.loads(out.stdout), service, node, ADDRESSES)


def test_wallets_of_every_scheme_connect_from_chromium(capsys: pytest.CaptureFixture[str]) -> None:
    need_chromium()
    need_client()
    with served_package() as base:
        # the page at localhost (a WebAuthn relying party is a domain, not an address)
        base = base.replace("127.0.0.1", "localhost")
        service, identity, served, node = _serve(origins=[base])
        with served as url, Chromium() as browser:
            page = browser.new_page()
            # a platform authenticator that verifies its user at once, as a phone's would
            page.send("WebAuthn.enable", {"enableUI": False})
            page.send(
                "WebAuthn.addVirtualAuthenticator",
                {
                    "options": {
                        "protocol": "ctap2",
                        "transport": "internal",
                        "hasResidentKey": True,
                        "hasUserVerification": True,
                        "isUserVerified": True,
                        "automaticPresenceSimulation": True,
                    }
                },
            )
            job = {"url": url, "serverKey": identity.noise_public.hex(), "webauthn": True}
            page.goto(f"{base}/demo/wallets.html#{urllib.parse.quote(json.dumps(job))}")
            try:
                page.wait_for("document.body.dataset.done", timeout=120)
            except BrowserError as exc:
                text = page.evaluate("document.body.innerText")
                raise AssertionError(f"{exc}; the page shows:\n{str(text)[:3000]}") from exc
            report = page.evaluate("window.report")
    assert "error" not in report, report
    # the passkey was the browser's: a key the virtual authenticator made, not the vector's
    browser_passkey = report["schemes"]["passkey"]["address"]
    assert browser_passkey != ADDRESSES["passkey"]
    assert report["passkeyCreated"] is True
    _check(report, service, node, {**ADDRESSES, "passkey": browser_passkey})
    with capsys.disabled():
        print(f"\n[passkey of the browser] {browser_passkey}")
