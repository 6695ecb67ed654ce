"""A connect by host ID refuses, before any ledger write, what it would otherwise find
only after the spending cap or the deposit: a sponsor pool without the unpledged funds
to pledge its share of the deposit, a config whose ``server_static`` is not the key the
host publishes (it was replaced by that key unseen), and a server key that is not 32
bytes (refused only as one that "differs", a hex string or an int included)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp.aio
import dtp.socket
from dtp.admission import pinned_host_key
from dtp.chain.local import LocalLedger
from dtp.chain.objects import EventFilter, Sla
from dtp.connection import ConnectionConfig
from dtp.errors import SponsorUnfunded
from tests.ledger_server import identity_from_seed

SERVER = identity_from_seed(0x71)
CLIENT = identity_from_seed(0x72)
OTHER_KEY = identity_from_seed(0x73).noise_public
PORT = 7
DEPOSIT = 5000


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[tuple[LocalLedger, str]]:
    """A host that publishes no endpoint (the ledger carrier), and a funded client."""
    ledger = LocalLedger(tmp_path / "ledger.db")
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "echo", Sla(10, 5, 1000))
    ledger.faucet(CLIENT.sui_address, 1_000_000)
    ledger.faucet(SERVER.sui_address, 1_000_000)
    try:
        yield ledger, host_id
    finally:
        ledger.close()


def _untouched(ledger: LocalLedger, before: int) -> None:
    assert ledger.balance(CLIENT.sui_address) == before
    for kind in ("ConnectionOpened", "SpendingCapCreated"):
        events, _ = ledger.events(filter=EventFilter(type=kind), limit=10)
        assert events == [], kind


def test_an_unfunded_sponsor_pool_is_refused_before_the_spending_cap(
    ledger: tuple[LocalLedger, str],
) -> None:
    # the pool pledges half of the deposit (2500) and holds 1000 unpledged: the open
    # aborted with ESponsorUnfunded after the cap was made for it
    chain, host_id = ledger
    pool = chain.create_sponsor_pool(SERVER, host_id, PORT, 5000)
    chain.fund_sponsor_pool(SERVER, pool, 1000)
    before = chain.balance(CLIENT.sui_address)
    args = {"ledger": chain, "identity": CLIENT, "deposit": DEPOSIT, "sponsor_pool": pool}
    with pytest.raises(SponsorUnfunded, match="must pledge 2500 MIST"):
        dtp.socket.create_connection(f"dtp://{host_id}:{PORT}", 5, **args)

    async def main() -> None:
        with pytest.raises(SponsorUnfunded, match="must pledge 2500 MIST"):
            await asyncio.wait_for(
                dtp.aio.open_connection(f"dtp://{host_id}:{PORT}", timeout=5, **args), 10
            )

    asyncio.run(main())
    _untouched(chain, before)
    assert chain.get_sponsor_pool(pool).reserved == 0


def test_a_config_whose_server_static_is_another_key_is_refused_before_the_cap(
    ledger: tuple[LocalLedger, str],
) -> None:
    # (it was replaced by the published key: the deposit paid a host whose key was not
    # the one the caller named)
    chain, host_id = ledger
    before = chain.balance(CLIENT.sui_address)
    config = ConnectionConfig(identity=CLIENT, is_client=True, server_static=OTHER_KEY)
    with pytest.raises(ValueError, match="the config's server_static differs"):
        dtp.socket.create_connection(
            f"dtp://{host_id}:{PORT}",
            1,
            ledger=chain,
            identity=CLIENT,
            deposit=DEPOSIT,
            config=config,
        )
    _untouched(chain, before)


@pytest.mark.parametrize(
    ("keys", "error", "words"),
    [
        ({"expected_server_key": SERVER.noise_public[:31]}, ValueError, "must be 32 bytes"),
        ({"server_key": SERVER.noise_public + b"\0"}, ValueError, "must be 32 bytes"),
        ({"server_key": SERVER.noise_public.hex()}, TypeError, "server_key must be 32 bytes"),
        ({"expected_server_key": 32}, TypeError, "expected_server_key must be 32 bytes"),
    ],
    ids=["pin-31", "key-33", "key-hex", "pin-int"],
)
def test_a_server_key_that_is_not_32_bytes_is_named_before_the_cap(
    ledger: tuple[LocalLedger, str],
    keys: dict[str, object],
    error: type[Exception],
    words: str,
) -> None:
    chain, host_id = ledger
    before = chain.balance(CLIENT.sui_address)
    args = {"ledger": chain, "identity": CLIENT, "deposit": DEPOSIT, **keys}
    with pytest.raises(error, match=words):
        dtp.socket.create_connection(f"dtp://{host_id}:{PORT}", 1, **args)

    async def main() -> None:
        with pytest.raises(error, match=words):
            await dtp.aio.open_connection(f"dtp://{host_id}:{PORT}", timeout=1, **args)

    asyncio.run(main())
    _untouched(chain, before)


def test_pinned_host_key_takes_any_bytes_like_key_as_bytes() -> None:
    key = SERVER.noise_public
    assert type(pinned_host_key(bytearray(key), memoryview(key))) is bytes
    assert pinned_host_key(None, bytearray(key)) == key
    with pytest.raises(ValueError, match="differ"):
        pinned_host_key(key, OTHER_KEY)
    with pytest.raises(TypeError, match="expected_server_key must be 32 bytes"):
        pinned_host_key(key, key.hex())  # type: ignore[arg-type]
