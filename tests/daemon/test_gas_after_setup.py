"""The gas `dtp status` shows once the daemon is ready is what it holds after its Host's
set-up, not what it held before paying for it (a stale balance for up to GAS_CHECK,
30 s, after the ready line: issue "one vocabulary and honest exit codes")."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dtp.daemon._state import read_status
from dtp.testing.sui_node import SuiNodeStandIn
from tests.daemon.inproc import echo_backend, running
from tests.daemon.test_on_sui import node, quick_retries, service, write_config  # noqa: F401


def test_the_gas_shown_at_ready_is_read_after_the_hosts_set_up(
    node: SuiNodeStandIn,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with echo_backend() as port:
            config = write_config(tmp_path, node, "provider", service(port))
            async with running(config) as daemon:
                address = daemon.identity.sui_address
                held = daemon.ledger.gas_balance(address)
                shown = daemon.book.info["gas"]
                saved = read_status(tmp_path / "provider-state")
        assert saved is not None
        # the Host's creation and its service were paid for before the ready line
        assert held < 10 * 1_000_000_000
        assert shown["balance"] == held, (shown, held)
        assert saved["gas"]["balance"] == held

    asyncio.run(main())
