"""prepare_host_connection's checks before any ledger write: a ``config`` that is no
ConnectionConfig was found only by the ``replace()`` that makes the client config, after
the ledger writes -- the spending cap created and, paying through a sponsor pool (whose
open is not deferred), the deposit moved into escrow, with nothing half-closed (the
failure came out of the preparation itself, so no caller had a connection to abandon).
It is refused now with the other argument checks, before any ledger write.

A connect by host ID refuses, before any ledger write, what it would otherwise find
only after the spending cap or the deposit: a sponsor pool without the unpledged funds
to pledge its share of the deposit, a config whose ``server_static`` is not the key the
host publishes (it was replaced by that key unseen), and a server key that is not 32
bytes (refused only as one that "differs", a hex string or an int included).

A connect by host ID refuses before any money moves what it found only after the
deposit: a config that cannot run on the lossy ledger carrier (made fit for it only
after the deposit, it failed there), a config / metering / ledger_options of another
type, and a server key pinned (argument or config) that the host does not publish (the
pin was dropped: the handshake ran to the published key)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dtp.errors import PaymentModelError, SponsorUnfunded
from dtp.hostid._connect import pinned_host_key
from dtp.ledger.local import LocalLedger
from dtp.protocol.connection import MAX_STREAM_FRAME_OVERHEAD, ConnectionConfig
from tests.hostid.money import (
    ADAPTERS,
    CLIENT,
    OTHER_KEY,
    PORT,
    SERVER,
    connect,
    paid_host,
    untouched,
)
from tests.support.sponsor_lanes import pool_totals

#: not a ConnectionConfig: what a caller may pass by mistake (its fields as a dict)
NOT_A_CONFIG: Any = {"stream_window": 1 << 20}


@pytest.fixture
def tcp_host(tmp_path: Path) -> Iterator[tuple[LocalLedger, str]]:
    """A host that publishes a TCP endpoint (a listener that never answers: the connect
    must not get that far), and a funded client."""
    with paid_host(tmp_path, tcp=True) as found:
        yield found


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("sponsored", [False, True], ids=["deposit", "sponsored"])
def test_a_config_of_another_type_is_refused_before_the_cap(
    tcp_host: tuple[LocalLedger, str], adapter: str, sponsored: bool
) -> None:
    # The sponsored open is not deferred: it ran before the replace() that failed, and
    # the deposit stayed in escrow on an open connection nobody half-closed.
    chain, host_id = tcp_host
    extra: dict[str, object] = {}
    if sponsored:
        pool = chain.create_sponsor_pool(SERVER, host_id, PORT, share_bps=2_500, max_pledge=10**9)
        chain.fund_sponsor_pool(SERVER, pool, 100_000)
        extra["sponsor_pool"] = pool
    before = chain.balance(CLIENT.sui_address)
    with pytest.raises(TypeError, match="config must be a ConnectionConfig"):
        connect(adapter, chain, host_id, config=NOT_A_CONFIG, **extra)
    untouched(chain, before)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[tuple[LocalLedger, str]]:
    """A host that publishes no endpoint (the ledger carrier), and a funded client."""
    with paid_host(tmp_path) as found:
        yield found


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_an_unfunded_sponsor_pool_is_refused_before_the_spending_cap(
    ledger: tuple[LocalLedger, str], adapter: str
) -> None:
    # the pool pledges half of the deposit (2500) and holds 2000 unpledged, 1000 in each
    # of its lanes: the open aborted with ESponsorUnfunded after the cap was made for it
    # (a pool whose lanes together hold the pledge is refused too: each pledges alone)
    chain, host_id = ledger
    pool = chain.create_sponsor_pool(SERVER, host_id, PORT, 5000, max_pledge=10**9, lanes=2)
    chain.fund_sponsor_pool(SERVER, pool, 2000)
    before = chain.balance(CLIENT.sui_address)
    with pytest.raises(SponsorUnfunded, match="must pledge 2500 MIST"):
        connect(adapter, chain, host_id, sponsor_pool=pool)
    untouched(chain, before)
    assert pool_totals(chain, pool) == (2000, 0)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_bounded_pledge_is_checked_as_the_ledger_bounds_it(
    ledger: tuple[LocalLedger, str], adapter: str
) -> None:
    # half of the deposit is 2500, but the pool pledges at most 1001 to a connection:
    # that is what the check weighs against the 1000 unpledged (weighing the 2500, it
    # would refuse a pool that covers a bound pledge of 1000)
    chain, host_id = ledger
    pool = chain.create_sponsor_pool(SERVER, host_id, PORT, 5000, max_pledge=1001, lanes=1)
    chain.fund_sponsor_pool(SERVER, pool, 1000)
    before = chain.balance(CLIENT.sui_address)
    with pytest.raises(SponsorUnfunded, match="must pledge 1001 MIST"):
        connect(adapter, chain, host_id, sponsor_pool=pool)
    untouched(chain, before)
    assert chain.get_sponsor_pool(pool).pledge_for(5000) == 1001


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_pool_of_a_former_authority_is_refused_before_the_spending_cap(
    ledger: tuple[LocalLedger, str], adapter: str
) -> None:
    # the host changed hands: the pool sponsors no new connection (EProviderChanged),
    # which the open found only after the cap was made for it
    chain, host_id = ledger
    pool = chain.create_sponsor_pool(SERVER, host_id, PORT, 5000, max_pledge=10**9)
    chain.fund_sponsor_pool(SERVER, pool, 10_000)
    chain.set_authority(SERVER, host_id, CLIENT.sui_address)
    before = chain.balance(CLIENT.sui_address)
    with pytest.raises(PaymentModelError, match="sponsors no new connections") as info:
        connect(adapter, chain, host_id, sponsor_pool=pool)
    assert info.value.qualified_name == "sponsor::EProviderChanged"
    untouched(chain, before)
    assert pool_totals(chain, pool) == (10_000, 0)


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


REFUSED = [
    # fit for TCP, not for a lossy carrier
    pytest.param(
        {"config": ConnectionConfig(identity=CLIENT, is_client=True, stream_window=0)},
        ValueError,
        "stream_window",
        id="stream_window",
    ),
    pytest.param(
        {
            "config": ConnectionConfig(
                identity=CLIENT, is_client=True, max_record_plaintext=MAX_STREAM_FRAME_OVERHEAD
            )
        },
        ValueError,
        "max_record_plaintext",
        id="max_record_plaintext",
    ),
    # the adapters' own arguments, of another type (a wrong metering escaped after the
    # deposit, the connection never abandoned)
    pytest.param({"metering": {"every_bytes": 1}}, TypeError, "metering", id="metering"),
    pytest.param(
        {"ledger_options": {"poll_interval": 1}}, TypeError, "ledger_options", id="options"
    ),
    # a pin the host does not publish (the deposit paid a host whose key had changed)
    pytest.param(
        {"expected_server_key": OTHER_KEY},
        ValueError,
        "differs from the Noise key host",
        id="expected_server_key",
    ),
    pytest.param(
        {"server_key": SERVER.noise_public, "expected_server_key": OTHER_KEY},
        ValueError,
        "server_key and expected_server_key differ",
        id="key_and_pin",
    ),
    pytest.param(
        {
            "config": ConnectionConfig(
                identity=CLIENT, is_client=True, expected_server_static=OTHER_KEY
            )
        },
        ValueError,
        "expected_server_static differs",
        id="config_pin",
    ),
]


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize(("kwargs", "error", "match"), REFUSED)
def test_refused_before_the_spending_cap_and_the_deposit(
    ledger: tuple[LocalLedger, str],
    adapter: str,
    kwargs: dict[str, object],
    error: type[Exception],
    match: str,
) -> None:
    chain, host_id = ledger
    before = chain.balance(CLIENT.sui_address)
    with pytest.raises(error, match=match):
        connect(adapter, chain, host_id, **kwargs)
    untouched(chain, before)
