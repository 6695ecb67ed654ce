"""A connect by host ID over the ledger carrier whose config cannot run on a lossy
carrier is refused before any money moves (the config used to be made fit for the
ledger carrier only after the deposit, and failed there)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp.aio
import dtp.socket
from dtp.chain.local import LocalLedger
from dtp.chain.objects import EventFilter, Sla
from dtp.connection import MAX_STREAM_FRAME_OVERHEAD, ConnectionConfig
from tests.ledger_server import identity_from_seed

SERVER = identity_from_seed(0x61)
CLIENT = identity_from_seed(0x62)
PORT = 7
DEPOSIT = 5000


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[tuple[LocalLedger, str]]:
    """A host that publishes no endpoint (the ledger carrier), and a funded client."""
    ledger = LocalLedger(tmp_path / "ledger.db")
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "echo", Sla(10, 5, 1000))
    ledger.faucet(CLIENT.sui_address, 1_000_000)
    try:
        yield ledger, host_id
    finally:
        ledger.close()


# fit for TCP, not for a lossy carrier
UNFIT = [
    {"stream_window": 0},
    {"max_record_plaintext": MAX_STREAM_FRAME_OVERHEAD},
]


def _untouched(ledger: LocalLedger, before: int) -> None:
    assert ledger.balance(CLIENT.sui_address) == before
    for kind in ("ConnectionOpened", "SpendingCapCreated"):
        events, _ = ledger.events(filter=EventFilter(type=kind), limit=10)
        assert events == [], kind


@pytest.mark.parametrize("unfit", UNFIT, ids=lambda d: next(iter(d)))
def test_blocking_connect_refuses_the_config_before_the_deposit(
    ledger: tuple[LocalLedger, str], unfit: dict[str, int]
) -> None:
    chain, host_id = ledger
    config = ConnectionConfig(identity=CLIENT, is_client=True, **unfit)
    before = chain.balance(CLIENT.sui_address)
    with pytest.raises(ValueError, match=next(iter(unfit))):
        dtp.socket.create_connection(
            f"dtp://{host_id}:{PORT}",
            ledger=chain,
            identity=CLIENT,
            deposit=DEPOSIT,
            config=config,
            timeout=5,
        )
    _untouched(chain, before)


@pytest.mark.parametrize("unfit", UNFIT, ids=lambda d: next(iter(d)))
def test_asyncio_connect_refuses_the_config_before_the_deposit(
    ledger: tuple[LocalLedger, str], unfit: dict[str, int]
) -> None:
    chain, host_id = ledger
    config = ConnectionConfig(identity=CLIENT, is_client=True, **unfit)
    before = chain.balance(CLIENT.sui_address)

    async def main() -> None:
        with pytest.raises(ValueError, match=next(iter(unfit))):
            await asyncio.wait_for(
                dtp.aio.open_connection(
                    f"dtp://{host_id}:{PORT}",
                    ledger=chain,
                    identity=CLIENT,
                    deposit=DEPOSIT,
                    config=config,
                ),
                10,
            )

    asyncio.run(main())
    _untouched(chain, before)


# the adapters' own arguments, of another type: refused before the spending cap and the
# deposit (a wrong metering escaped after the deposit, the connection never abandoned)
WRONG_OPTIONS = [
    {"metering": {"every_bytes": 1}},
    {"ledger_options": {"poll_interval": 1}},
]


@pytest.mark.parametrize("wrong", WRONG_OPTIONS, ids=lambda d: next(iter(d)))
def test_blocking_connect_refuses_options_of_another_type_before_the_cap(
    ledger: tuple[LocalLedger, str], wrong: dict[str, object]
) -> None:
    chain, host_id = ledger
    before = chain.balance(CLIENT.sui_address)
    with pytest.raises(TypeError, match=next(iter(wrong))):
        dtp.socket.create_connection(
            f"dtp://{host_id}:{PORT}",
            ledger=chain,
            identity=CLIENT,
            deposit=DEPOSIT,
            timeout=5,
            **wrong,
        )
    _untouched(chain, before)


@pytest.mark.parametrize("wrong", WRONG_OPTIONS, ids=lambda d: next(iter(d)))
def test_asyncio_connect_refuses_options_of_another_type_before_the_cap(
    ledger: tuple[LocalLedger, str], wrong: dict[str, object]
) -> None:
    chain, host_id = ledger
    before = chain.balance(CLIENT.sui_address)

    async def main() -> None:
        with pytest.raises(TypeError, match=next(iter(wrong))):
            await asyncio.wait_for(
                dtp.aio.open_connection(
                    f"dtp://{host_id}:{PORT}",
                    ledger=chain,
                    identity=CLIENT,
                    deposit=DEPOSIT,
                    **wrong,
                ),
                10,
            )

    asyncio.run(main())
    _untouched(chain, before)


def test_a_pinned_server_key_the_host_does_not_publish_is_refused_before_the_cap(
    ledger: tuple[LocalLedger, str],
) -> None:
    # expected_server_key was dropped on the host-ID path: the host's published key was
    # used whatever the pin said, and the deposit paid a host whose key had changed
    chain, host_id = ledger
    before = chain.balance(CLIENT.sui_address)
    other = identity_from_seed(0x63).noise_public
    with pytest.raises(ValueError, match="differs from the Noise key host"):
        dtp.socket.create_connection(
            f"dtp://{host_id}:{PORT}",
            ledger=chain,
            identity=CLIENT,
            deposit=DEPOSIT,
            expected_server_key=other,
            timeout=5,
        )

    async def main() -> None:
        with pytest.raises(ValueError, match="differs from the Noise key host"):
            await dtp.aio.open_connection(
                f"dtp://{host_id}:{PORT}",
                ledger=chain,
                identity=CLIENT,
                deposit=DEPOSIT,
                expected_server_key=other,
            )
        with pytest.raises(ValueError, match="server_key and expected_server_key differ"):
            await dtp.aio.open_connection(
                f"dtp://{host_id}:{PORT}",
                ledger=chain,
                identity=CLIENT,
                deposit=DEPOSIT,
                server_key=SERVER.noise_public,
                expected_server_key=other,
            )

    asyncio.run(main())
    _untouched(chain, before)


def test_a_config_pinning_another_server_key_is_refused_before_the_cap(
    ledger: tuple[LocalLedger, str],
) -> None:
    chain, host_id = ledger
    before = chain.balance(CLIENT.sui_address)
    config = ConnectionConfig(
        identity=CLIENT,
        is_client=True,
        expected_server_static=identity_from_seed(0x63).noise_public,
    )
    with pytest.raises(ValueError, match="expected_server_static differs"):
        dtp.socket.create_connection(
            f"dtp://{host_id}:{PORT}",
            ledger=chain,
            identity=CLIENT,
            deposit=DEPOSIT,
            config=config,
            timeout=5,
        )
    _untouched(chain, before)
