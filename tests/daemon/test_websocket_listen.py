"""``[daemon] websocket_listen`` and ``websocket_origins``: the daemon's services over the
WebSocket carrier (docs/protocol.md §13) beside TCP, through the same admission.

An in-process daemon on a LocalLedger file: a client reaches its echo service by host
ID over WebSocket (its ledger connection opened and paid as over TCP) and tunnels
through it; a client the service denies is refused with the reason; a page whose
origin is not listed is refused at the upgrade; and the keys' errors."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

import dtp.aio
from dtp.daemon._config import load_config, parse_config
from dtp.daemon._runner import Daemon
from dtp.errors import ConnectionRefused, DaemonConfigError
from dtp.identity.keys import HostIdentity
from dtp.ledger.local._ledger import LocalLedger
from tests.daemon.inproc import BOUND, echo_backend, service, tunnel, write_config

HEAD = '[daemon]\nledger = "l.sqlite"\nidentity = "k.key"\n'
SVC = '\n[[service]]\nname = "a"\nport = 80\nbackends = ["127.0.0.1:8080"]\n'


def error_of(text: str) -> str:
    with pytest.raises(DaemonConfigError) as info:
        parse_config(text, Path("dtp.toml"))
    return str(info.value)


def test_the_keys_parse() -> None:
    config = parse_config(
        f'{HEAD}websocket_listen = "127.0.0.1:8443"\n'
        f'websocket_origins = ["https://app.example", "http://localhost:5173"]\n{SVC}',
        Path("dtp.toml"),
    )
    assert config.daemon.websocket_listen is not None
    assert (config.daemon.websocket_listen.host, config.daemon.websocket_listen.port) == (
        "127.0.0.1",
        8443,
    )
    assert config.daemon.websocket_origins == ("https://app.example", "http://localhost:5173")
    plain = parse_config(HEAD + SVC, Path("dtp.toml"))
    assert plain.daemon.websocket_listen is None and plain.daemon.websocket_origins == ()


@pytest.mark.parametrize(
    ("lines", "says"),
    [
        (
            'websocket_origins = ["*"]',
            "dtp.toml:4: daemon.websocket_origins: needs websocket_listen",
        ),
        (
            'websocket_listen = "127.0.0.1:1"\nwebsocket_origins = "https://a.example"',
            "dtp.toml:5: daemon.websocket_origins: expected a list of origins",
        ),
        (
            'websocket_listen = "127.0.0.1:1"\nwebsocket_origins = ["app.example"]',
            "dtp.toml:5: daemon.websocket_origins: 'app.example' is not an origin",
        ),
        (
            'websocket_listen = "127.0.0.1:1"\nwebsocket_origins = ["https://a.example/page"]',
            "is not an origin",
        ),
        ('websocket_listen = "nowhere"', "dtp.toml:4: daemon.websocket_listen: expected"),
    ],
)
def test_the_keys_errors(lines: str, says: str) -> None:
    assert says in error_of(f"{HEAD}{lines}\n{SVC}")


def test_the_daemons_services_over_websocket(tmp_path: Path) -> None:
    user, denied = HostIdentity.generate(), HostIdentity.generate()

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            backend = await stack.enter_async_context(echo_backend())
            config = write_config(
                tmp_path,
                'websocket_listen = "127.0.0.1:0"\n'
                'websocket_origins = ["https://app.example"]\n'
                + service(7000, backend, f'deny = ["{denied.sui_address}"]'),
            )
            daemon = Daemon(load_config(config))
            ready = await daemon.start()
            stack.push_async_callback(lambda: asyncio.wait_for(daemon.drain(), 4 * BOUND))
            url = f"ws://{ready['websocket']}/"
            assert daemon.services is not None and daemon.services.server is not None
            assert daemon.services.server.websocket_addresses
            ledger = LocalLedger(tmp_path / "ledger.sqlite")
            stack.callback(ledger.close)
            for who in (user, denied):
                await asyncio.to_thread(ledger.faucet, who.sui_address, 10**9)
            host = ready["host_id"]
            _, writer = await dtp.aio.open_connection(
                f"dtp://{host}:7000",
                ledger=ledger,
                identity=user,
                deposit=1_000_000,
                websocket=url,
                origin="https://app.example",
                timeout=BOUND,
            )
            assert await tunnel(writer, b"through the daemon") == b"through the daemon"
            writer.close()
            await writer.wait_closed()
            denial = "firewall of service svc7000 denies"
            with pytest.raises(ConnectionRefused, match=denial) as refused:
                await dtp.aio.open_connection(
                    f"dtp://{host}:7000",
                    ledger=ledger,
                    identity=denied,
                    deposit=1_000_000,
                    websocket=url,
                    timeout=BOUND,
                )
            # refused by the service's own deny list, after the handshake, not the upgrade
            assert denied.sui_address in str(refused.value)
            with pytest.raises(ConnectionRefused, match="403"):
                await dtp.aio.open_connection(
                    f"dtp://{host}:7000",
                    ledger=ledger,
                    identity=user,
                    deposit=1_000_000,
                    websocket=url,
                    origin="https://elsewhere.example",
                    timeout=BOUND,
                )

    asyncio.run(asyncio.wait_for(main(), 8 * BOUND))
