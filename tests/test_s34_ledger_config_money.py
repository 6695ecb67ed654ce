"""A connect by host ID refuses before any money moves what it found only after the
deposit: a config that cannot run on the lossy ledger carrier (made fit for it only
after the deposit, it failed there), a config / metering / ledger_options of another
type, and a server key pinned (argument or config) that the host does not publish (the
pin was dropped: the handshake ran to the published key)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dtp.chain.local import LocalLedger
from dtp.connection import MAX_STREAM_FRAME_OVERHEAD, ConnectionConfig
from tests.hostid_money import ADAPTERS, CLIENT, OTHER_KEY, SERVER, connect, paid_host, untouched


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[tuple[LocalLedger, str]]:
    """A host that publishes no endpoint (the ledger carrier), and a funded client."""
    with paid_host(tmp_path) as found:
        yield found


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
