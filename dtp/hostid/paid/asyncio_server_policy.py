"""The asyncio paid server's refresh of the host's policy
(:class:`~dtp.hostid.paid.asyncio_server.PaidAioServer` is made of this part and others):
the Host re-read every ``refresh_interval`` in a task of its own (the ledger read in a
thread), its new limits applied to the open connections, a client the firewall now
denies closed, and the connections due for a look at their state on the ledger closed
when it ended there (or when the subscription one was opened with is over). The
decisions are the core's (:meth:`~dtp.hostid.paid.server_core.PaidServerCore.refresh`);
the twin of :mod:`dtp.hostid.paid.blocking_server_policy`."""

from __future__ import annotations

import asyncio
import logging
import time

from dtp.hostid.paid.asyncio_server_state import PaidAioServerState
from dtp.hostid.paid.server_steps import (
    ended_connections,
    ended_subscriptions,
    host_to_refresh,
    refresh_failed,
    refused_clients,
)

# the server's own logger, where an operator filters for its lines
# (tests/paid/test_policy_loop.py)
logger = logging.getLogger("dtp.hostid.paid.asyncio_server")


class AioHostPolicyRefresh(PaidAioServerState):
    """Re-reading the Host and applying it to the open connections (a part of
    :class:`~dtp.hostid.paid.asyncio_server.PaidAioServer`)."""

    async def _policy_loop(self) -> None:
        while True:
            await asyncio.sleep(self.policy.refresh_interval)
            try:
                await self.refresh_policy()
            except Exception:  # (not the end of the task: see refresh_failed)
                # (nobody retrieves the task's exception; a cancellation passes)
                refresh_failed(self.host_id, self.policy.refresh_interval, logger)

    async def refresh_policy(self) -> None:
        """Read the Host now and apply its firewall to open connections."""
        host = await asyncio.to_thread(host_to_refresh, self.ledger, self.host_id, logger)
        if host is None:
            return
        clients = frozenset(paid.client for paid in self.core.live())
        denied = (
            await asyncio.to_thread(refused_clients, self.ledger, host, clients, logger)
            if clients
            else frozenset()
        )
        now = time.monotonic()
        refresh = self.core.refresh(host, now, denied)
        for paid in refresh.denied:
            paid.deny()
        due = refresh.ledger_checks
        if not due:
            return
        ended = await asyncio.to_thread(ended_connections, self.ledger, due, logger)
        for paid in ended:
            paid.closed_on_ledger()
        # a connection opened with a subscription ends with it (docs/escrow.md §13)
        open_ones = [paid for paid in due if paid not in ended]
        if any(paid.subscription is not None for paid in open_ones):
            over = await asyncio.to_thread(ended_subscriptions, self.ledger, open_ones, logger)
            for paid, why in over:
                paid.subscription_ended(why)

    @property
    def open_connections(self) -> int:
        return self.core.open_connections
