"""The other direction of the browser interop: this implementation's client against the
JavaScript server side (web/dtp-client/src/server.js, the Noise responder written from
docs/protocol.md alone). A page cannot listen on a port, so the JS server is reached
through a WebSocket relay (tests/web/ws_relay.py; src/relay.js on the JS side), run here
by node: dtp.aio's client connects to the relay's URL over the WebSocket carrier, in IK
and in XX, echoes on the first stream and on a second one (1 MiB: many records, credit
both ways), closes; and a wallet the JS server's decide hook denies is refused with its
reason. The JS server reports the address it proved from the Python client's proof, of
any offline Sui scheme. The same runs with the server in a page (demo/serve.html) in
headless Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import urllib.parse
from collections.abc import AsyncIterator

import pytest
from websockets.typing import Subprotocol

import dtp.aio
from dtp.errors import ConnectionRefused, HandshakeError
from dtp.identity.keys import HostIdentity
from dtp.identity.wallets import MultiSigWallet, Secp256k1Wallet, Secp256r1Wallet, SoftwarePasskey
from dtp.protocol.connection import ConnectionConfig
from dtp.testing._loops import LoopThread
from tests.identity.zklogin_servers import zklogin_wallet
from tests.support.browser import Chromium, need_chromium
from tests.support.paths import ROOT
from tests.transport.half_handshakes import first_record
from tests.web.browser_client import need_client, node_command, served_package
from tests.web.ws_relay import Relay

SHOTS = ROOT / "build" / "screenshots"

BIG = 1024 * 1024 + 77


async def _line(proc: asyncio.subprocess.Process) -> dict[str, object]:
    assert proc.stdout is not None
    raw = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert raw, "the node server ended early"
    line: dict[str, object] = json.loads(raw)
    return line


@contextlib.asynccontextmanager
async def _js_echo_server(
    server_identity: HostIdentity, *, denied: list[str] | None = None
) -> AsyncIterator[tuple[Relay, asyncio.subprocess.Process, str]]:
    """The relay, and the JS echo server (scripts/echo-server.mjs) listening through it as
    "echo" with ``server_identity``'s key, its decide hook denying the ``denied``
    addresses: the relay, the node process (its reports: :func:`_line`) and the relay's
    base URL, once the server said it listens. On exit the server is told to end (its
    stdin closed; killed after 30 s), then the relay stops."""
    relay = Relay(wait=30)
    base = await relay.start()
    job: dict[str, object] = {
        "relay": f"{base}/listen/echo",
        "staticKey": server_identity.noise_private_bytes().hex(),
    }
    if denied is not None:
        job["denied"] = denied
    try:
        proc = await asyncio.create_subprocess_exec(
            *node_command("scripts/echo-server.mjs"),
            json.dumps(job),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert await _line(proc) == {"listening": True}
            yield relay, proc, base
        finally:
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    finally:
        await relay.stop()


async def _echo(url: str, server_key: bytes, identity: HostIdentity, *, ik: bool) -> bytes:
    reader, writer = await dtp.aio.open_connection(
        url,
        server_key=server_key if ik else None,
        expected_server_key=None if ik else server_key,
        identity=identity,
        timeout=30,
    )
    try:
        writer.write(b"hello over " + (b"IK" if ik else b"XX"))
        writer.write_eof()
        first = await asyncio.wait_for(reader.read(), 30)
        r2, w2 = await writer.open_stream()
        payload = os.urandom(BIG)
        w2.write(payload)
        await w2.drain()
        w2.write_eof()
        echoed = await asyncio.wait_for(r2.readexactly(BIG), 60)
        assert echoed == payload
    finally:
        writer.close()
        await writer.wait_closed()
    return first


def test_the_python_client_talks_to_the_js_server_through_a_relay() -> None:
    need_client()
    server_identity = HostIdentity.generate()
    client = HostIdentity.generate()
    denied = HostIdentity.generate()

    async def main() -> tuple[list[bytes], list[dict[str, object]], int]:
        async with _js_echo_server(server_identity, denied=[denied.sui_address]) as (
            relay,
            proc,
            base,
        ):
            url = f"{base}/echo"
            firsts = [
                await _echo(url, server_identity.noise_public, client, ik=True),
                await _echo(url, server_identity.noise_public, client, ik=False),
            ]
            reports = [await _line(proc), await _line(proc)]
            with pytest.raises(ConnectionRefused) as refused:
                await dtp.aio.open_connection(
                    url, server_key=server_identity.noise_public, identity=denied, timeout=30
                )
            assert "this wallet is not on the allow list" in str(refused.value)
            reports.append(await _line(proc))
            return firsts, reports, relay.paired

    firsts, reports, paired = asyncio.run(main())
    assert firsts == [b"hello over IK", b"hello over XX"]
    for report, pattern in zip(reports[:2], ("IK", "XX"), strict=True):
        assert report == {
            "address": client.sui_address,
            "pattern": pattern,
            "streams": [[0, len(f"hello over {pattern}")], [2, BIG]],
            "closed": 0,
        }
    assert reports[2] == {"error": "this wallet is not on the allow list", "code": 11}
    assert paired == 3


class _RelayThread:
    """The relay on an event loop of its own, for a test that blocks (a browser driven
    over DevTools): ``with _RelayThread() as (relay, base_url)``."""

    def __init__(self) -> None:
        self.thread = LoopThread()
        self.relay = Relay(wait=30)

    def __enter__(self) -> tuple[Relay, str]:
        return self.relay, self.thread.run(self.relay.start())

    def __exit__(self, *exc: object) -> None:
        try:
            self.thread.run(self.relay.stop())
        finally:
            self.thread.close(cancel=True)


def test_the_python_client_talks_to_a_server_in_a_chromium_page(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The same echo with the server in demo/serve.html, in headless Chromium."""
    need_chromium()
    need_client()
    server_identity = HostIdentity.generate()
    client = HostIdentity.generate()
    denied = HostIdentity.generate()
    with served_package() as base, _RelayThread() as (relay, relay_url), Chromium() as browser:
        query = urllib.parse.urlencode(
            {
                "relay": f"{relay_url}/listen/echo",
                "staticKey": server_identity.noise_private_bytes().hex(),
                "denied": denied.sui_address,
            }
        )
        page = browser.new_page()
        page.goto(f"{base}/demo/serve.html?{query}")
        page.wait_for("document.body.dataset.listening", timeout=60)
        assert page.evaluate("document.body.dataset.listening") == "ok", page.evaluate(
            "window.reports"
        )

        async def clients() -> list[bytes]:
            url = f"{relay_url}/echo"
            firsts = [
                await _echo(url, server_identity.noise_public, client, ik=True),
                await _echo(url, server_identity.noise_public, client, ik=False),
            ]
            with pytest.raises(ConnectionRefused, match="not on the allow list"):
                await dtp.aio.open_connection(
                    url, server_key=server_identity.noise_public, identity=denied, timeout=30
                )
            return firsts

        firsts = asyncio.run(clients())
        page.wait_for("window.reports.length >= 4", timeout=60)
        reports = page.evaluate("window.reports")
        SHOTS.mkdir(parents=True, exist_ok=True)
        shot = page.screenshot(SHOTS / "dtp-client-serve.png")
        with capsys.disabled():
            print(f"\n[screenshot] {shot}")
    assert firsts == [b"hello over IK", b"hello over XX"]
    assert reports[0] == {"listening": True}
    by_pattern = {r.get("pattern"): r for r in reports[1:] if "pattern" in r}
    for pattern in ("IK", "XX"):
        assert by_pattern[pattern] == {
            "address": client.sui_address,
            "pattern": pattern,
            "streams": [[0, len(f"hello over {pattern}")], [2, BIG]],
            "closed": 0,
        }
    assert {"error": "this wallet is not on the allow list", "code": 11} in reports
    assert relay.paired == 3
    assert shot.read_bytes().startswith(b"\x89PNG")


async def _first_answer(url: str, record: bytes) -> list[bytes]:
    """Sends ``record`` (a client's first handshake record) on a WebSocket of its own to
    ``url`` and returns what comes back until the server closes it, or 2 messages came."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    got: list[bytes] = []
    async with connect(url, subprotocols=[Subprotocol("dtp.v1")], open_timeout=30) as ws:
        await ws.send(record)
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            while len(got) < 2:
                got.append(bytes(await asyncio.wait_for(ws.recv(), 30)))
    return got


def test_the_js_server_refuses_a_replayed_ik_first_message_of_the_python_client() -> None:
    """The Python client's IK message 1, sent again, is refused by the JS server's replay
    guard (src/replay-guard.js, the rule of docs/protocol.md section 8) before its decide
    hook: no message 2 for the replayer, and the server reports HANDSHAKE_FAILED."""
    need_client()
    server_identity = HostIdentity.generate()
    client = HostIdentity.generate()
    record = first_record(server_identity.noise_public, client)

    async def main() -> tuple[list[bytes], list[bytes], list[dict[str, object]]]:
        async with _js_echo_server(server_identity) as (_, proc, base):
            original = await _first_answer(f"{base}/echo", record)
            first_report = await _line(proc)
            replayed = await _first_answer(f"{base}/echo", record)
            return original, replayed, [first_report, await _line(proc)]

    original, replayed, reports = asyncio.run(main())
    # the original: message 2 (HS_RESP), then the ACCEPT (a DATA record); its client
    # went away without a record of its own
    assert [m[0] for m in original] == [2, 16]
    assert reports[0]["address"] == client.sui_address
    assert reports[0]["pattern"] == "IK"
    # the replay: authenticated again, refused before the verdict, with nothing sent
    assert replayed == []
    assert reports[1] == {"error": "a replayed handshake first message", "code": 10}


def test_the_js_server_proves_wallets_of_every_offline_scheme() -> None:
    """The JS server checks proofs of every scheme as 8.4 says: the Python client's
    Secp256k1, Secp256r1, passkey and multisig wallets are proven as their own
    addresses, in IK and XX; a zkLogin proof, which this server has no Sui node to
    confirm, fails the handshake saying so."""
    need_client()
    server_identity = HostIdentity.generate()
    client = HostIdentity.generate()
    k1, r1 = Secp256k1Wallet(bytes([0x11] * 32)), Secp256r1Wallet(bytes([0x22] * 32))
    wallets = [
        k1,
        r1,
        SoftwarePasskey(bytes([0x33] * 32)),
        MultiSigWallet([(*MultiSigWallet.member_of(w), 1) for w in (k1, r1)], 2, [r1, k1]),
    ]

    async def hello(url: str, wallet: object, ik: bool) -> bytes:
        config = ConnectionConfig(identity=client, is_client=True, wallet=wallet)  # type: ignore[arg-type]
        reader, writer = await dtp.aio.open_connection(
            url,
            server_key=server_identity.noise_public if ik else None,
            identity=client,
            config=config,
            timeout=30,
        )
        try:
            writer.write(b"hello")
            writer.write_eof()
            return await asyncio.wait_for(reader.read(), 30)
        finally:
            writer.close()
            await writer.wait_closed()

    async def main() -> tuple[list[bytes], list[dict[str, object]], str]:
        async with _js_echo_server(server_identity) as (_relay, proc, base):
            url = f"{base}/echo"
            echoes, reports = [], []
            for wallet in wallets:
                for ik in (True, False):
                    echoes.append(await hello(url, wallet, ik))
                    reports.append(await _line(proc))
            with pytest.raises(HandshakeError) as failed:
                await hello(url, zklogin_wallet(), ik=False)
            return echoes, reports, str(failed.value)

    echoes, reports, zk_failure = asyncio.run(main())
    assert echoes == [b"hello"] * 8
    assert [r["address"] for r in reports] == [w.sui_address for w in wallets for _ in (1, 2)]
    assert [r["pattern"] for r in reports] == ["IK", "XX"] * 4
    assert "verified by a Sui node" in zk_failure
