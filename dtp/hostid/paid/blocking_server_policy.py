"""The blocking paid server's refresh of the host's policy
(:class:`~dtp.hostid.paid.blocking_server.PaidServer` is made of this part and others):
the Host re-read every ``refresh_interval`` in a thread of its own, its new limits
applied to the open connections, a client the firewall now denies closed, and the
connections due for a look at their state on the ledger closed when it ended there.
The decisions are the core's (:meth:`~dtp.hostid.paid.server_core.PaidServerCore.refresh`);
the twin of :mod:`dtp.hostid.paid.asyncio_server_policy`."""

from __future__ import annotations

import logging
import time

from dtp.hostid.paid.blocking_server_state import PaidServerState
from dtp.hostid.paid.server_steps import (
    ended_connections,
    ended_subscriptions,
    host_to_refresh,
    refresh_failed,
    refused_clients,
)

# the server's own logger, where an operator filters for its lines
# (tests/paid/test_policy_loop.py)
logger = logging.getLogger("dtp.hostid.paid.blocking_server")


class HostPolicyRefresh(PaidServerState):
    """Re-reading the Host and applying it to the open connections (a part of
    :class:`~dtp.hostid.paid.blocking_server.PaidServer`)."""

    def _policy_loop(self) -> None:
        while not self._closed.wait(self.policy.refresh_interval):
            try:
                self.refresh_policy()
            except Exception:  # (not the end of the loop: see refresh_failed)
                refresh_failed(self.host_id, self.policy.refresh_interval, logger)

    def refresh_policy(self) -> None:
        """Read the Host now and apply its firewall to open connections."""
        host = host_to_refresh(self.ledger, self.host_id, logger)
        if host is None:
            return
        # (a connection served from now on was admitted by a firewall read after this)
        with self._live_lock:
            clients = frozenset(paid.client for paid in self.core.live())
        denied = refused_clients(self.ledger, host, clients, logger)
        now = time.monotonic()
        with self._live_lock, self._limit_lock:
            refresh = self.core.refresh(host, now, denied)
        for paid in refresh.denied:
            paid.deny()
        ended = ended_connections(self.ledger, refresh.ledger_checks, logger)
        for paid in ended:
            paid.closed_on_ledger()
        # a connection opened with a subscription ends with it (docs/escrow.md §13)
        open_ones = [paid for paid in refresh.ledger_checks if paid not in ended]
        for paid, why in ended_subscriptions(self.ledger, open_ones, logger):
            paid.subscription_ended(why)

    @property
    def open_connections(self) -> int:
        with self._live_lock:
            return self.core.open_connections
