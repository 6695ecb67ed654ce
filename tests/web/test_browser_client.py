"""The JavaScript client (web/dtp-client, written from docs/protocol.md alone) against
this implementation's server, over real sockets: a dtp.aio echo server on the WebSocket
carrier, and the client run by node -- IK and XX handshakes with the identity proof
signed by an Ed25519 key standing in for a wallet, echo on the connection's first stream
and on a second one (3 MiB: many records, and flow-control credit both ways), a clean
close; and a wallet the server's accept hook denies, refused with its reason. The
package's own tests (node --test: the vectors and transcripts of docs/protocol.md) run
here too."""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest

from dtp.identity.keys import HostIdentity, sui_address_from_public_key
from dtp.protocol.connection import ConnectionConfig
from tests.web.browser_client import PACKAGE, EchoService, need_client, node_command, start_echo

SEED = bytes(range(32))
DENIED_SEED = bytes([7] * 32)


def _address(seed: bytes) -> str:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    return sui_address_from_public_key(public.public_bytes(Encoding.Raw, PublicFormat.Raw))


@pytest.mark.parametrize("window", [None, 64 * 1024], ids=["default-windows", "small-windows"])
def test_the_js_client_handshakes_echoes_and_closes_over_websocket(window: int | None) -> None:
    """With the server's small windows (64 KiB) the client's 3 MiB stays within the
    server's credit only by waiting for its MAX_DATA and MAX_STREAM_DATA."""
    need_client()
    server_identity = HostIdentity.generate()
    service = EchoService(denied={_address(DENIED_SEED)})
    options: dict[str, object] = {}
    if window is not None:
        options["config"] = ConnectionConfig(
            identity=server_identity,
            is_client=False,
            stream_window=window,
            connection_window=window,
        )

    async def main() -> dict[str, object]:
        server, url = await start_echo(service, server_identity, **options)
        job = {
            "url": url,
            "serverKey": server_identity.noise_public.hex(),
            "seed": SEED.hex(),
            "deniedSeed": DENIED_SEED.hex(),
        }
        try:
            proc = await asyncio.create_subprocess_exec(
                *node_command("scripts/echo-client.mjs"),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(json.dumps(job).encode()), 120)
            assert proc.returncode == 0, err.decode()
            report: dict[str, object] = json.loads(out)
            return report
        finally:
            server.close()
            await server.wait_closed()

    report = asyncio.run(main())
    address = _address(SEED)
    for pattern in ("IK", "XX"):
        run = report[pattern.lower()]
        assert isinstance(run, dict)
        assert run["pattern"] == pattern
        assert run["address"] == address
        assert run["serverKey"] == server_identity.noise_public.hex()
        assert run["echo"] == f"hello over {pattern}"
        assert run["firstStream"] == 0
        assert run["bigStream"] == 2
        assert run["bigEchoed"] is True
        assert run["bigLength"] == 3 * 1024 * 1024 + 123
        assert run["closed"] == 0
    # the server proved the same wallet address both times, from the proof
    assert service.seen == [address, address]
    assert report["denied"] == {
        "refused": True,
        "code": 11,
        "reason": "this wallet is not on the allow list",
    }
    assert service.refused == [_address(DENIED_SEED)]


def test_the_js_client_package_tests_pass() -> None:
    """node --test over the package's tests: every docs/protocol.md vector it uses and
    section 12's transcripts, client side, byte for byte."""
    need_client()
    tests = sorted(str(p) for p in (PACKAGE / "test").glob("*.test.js"))
    assert len(tests) >= 2
    out = subprocess.run(
        [*node_command("")[:-1], "--test", *tests],
        cwd=PACKAGE,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "# fail 0" in out.stdout
