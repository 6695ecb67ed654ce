"""A connect by host ID refuses, before any ledger write, what it would otherwise find
only after the spending cap or the deposit: a sponsor pool without the unpledged funds
to pledge its share of the deposit, a config whose ``server_static`` is not the key the
host publishes (it was replaced by that key unseen), and a server key that is not 32
bytes (refused only as one that "differs", a hex string or an int included)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dtp.admission import pinned_host_key
from dtp.chain.local import LocalLedger
from dtp.connection import ConnectionConfig
from dtp.errors import SponsorUnfunded
from tests.hostid_money import (
    ADAPTERS,
    CLIENT,
    OTHER_KEY,
    PORT,
    SERVER,
    connect,
    paid_host,
    untouched,
)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[tuple[LocalLedger, str]]:
    """A host that publishes no endpoint (the ledger carrier), and a funded client."""
    with paid_host(tmp_path) as found:
        yield found


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_an_unfunded_sponsor_pool_is_refused_before_the_spending_cap(
    ledger: tuple[LocalLedger, str], adapter: str
) -> None:
    # the pool pledges half of the deposit (2500) and holds 1000 unpledged: the open
    # aborted with ESponsorUnfunded after the cap was made for it
    chain, host_id = ledger
    pool = chain.create_sponsor_pool(SERVER, host_id, PORT, 5000)
    chain.fund_sponsor_pool(SERVER, pool, 1000)
    before = chain.balance(CLIENT.sui_address)
    with pytest.raises(SponsorUnfunded, match="must pledge 2500 MIST"):
        connect(adapter, chain, host_id, sponsor_pool=pool)
    untouched(chain, before)
    assert chain.get_sponsor_pool(pool).reserved == 0


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize(
    ("keys", "error", "words"),
    [
        # (it was replaced by the published key: the deposit paid a host whose key was
        # not the one the caller named)
        (
            {"config": ConnectionConfig(identity=CLIENT, is_client=True, server_static=OTHER_KEY)},
            ValueError,
            "the config's server_static differs",
        ),
        ({"expected_server_key": SERVER.noise_public[:31]}, ValueError, "must be 32 bytes"),
        ({"server_key": SERVER.noise_public + b"\0"}, ValueError, "must be 32 bytes"),
        ({"server_key": SERVER.noise_public.hex()}, TypeError, "server_key must be 32 bytes"),
        ({"expected_server_key": 32}, TypeError, "expected_server_key must be 32 bytes"),
    ],
    ids=["config-key", "pin-31", "key-33", "key-hex", "pin-int"],
)
def test_a_server_key_that_is_not_the_hosts_32_bytes_is_named_before_the_cap(
    ledger: tuple[LocalLedger, str],
    adapter: str,
    keys: dict[str, object],
    error: type[Exception],
    words: str,
) -> None:
    chain, host_id = ledger
    before = chain.balance(CLIENT.sui_address)
    with pytest.raises(error, match=words):
        connect(adapter, chain, host_id, **keys)
    untouched(chain, before)


def test_pinned_host_key_takes_any_bytes_like_key_as_bytes() -> None:
    key = SERVER.noise_public
    assert type(pinned_host_key(bytearray(key), memoryview(key))) is bytes
    assert pinned_host_key(None, bytearray(key)) == key
    with pytest.raises(ValueError, match="differ"):
        pinned_host_key(key, OTHER_KEY)
    with pytest.raises(TypeError, match="expected_server_key must be 32 bytes"):
        pinned_host_key(key, key.hex())  # type: ignore[arg-type]
