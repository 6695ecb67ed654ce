"""A second reader's find in prepare_host_connection: a ``config`` that is no
ConnectionConfig was found only by the ``replace()`` that makes the client config, after
the ledger writes -- the spending cap created and, paying through a sponsor pool (whose
open is not deferred), the deposit moved into escrow, with nothing half-closed (the
failure came out of the preparation itself, so no caller had a connection to abandon).
It is refused now with the other argument checks, before any ledger write."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dtp.chain.local import LocalLedger
from tests.hostid_money import ADAPTERS, CLIENT, PORT, SERVER, connect, paid_host, untouched

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
        pool = chain.create_sponsor_pool(SERVER, host_id, PORT, share_bps=2_500)
        chain.fund_sponsor_pool(SERVER, pool, 100_000)
        extra["sponsor_pool"] = pool
    before = chain.balance(CLIENT.sui_address)
    with pytest.raises(TypeError, match="config must be a ConnectionConfig"):
        connect(adapter, chain, host_id, config=NOT_A_CONFIG, **extra)
    untouched(chain, before)
