"""A forward's way to a new DTP connection through an outage of its target: nothing is
spent on the ledger until the target's endpoint answers, and while it does not, the
tries back off (docs/daemon.md, "Tunnels").

- :class:`OpenBackoff` (sans I/O: every call is given ``now``): when the next open may
  be tried, what local clients coming before then are refused with, and whether an
  outage began or ended (logged once each, not per client).
- :func:`probe_target`: the cheap look before any transaction -- the Host read (a
  ledger read, no gas) and a TCP connect to its published endpoints, closed at once.

An open that fails after the probe passed has cost a spending cap, the deposit in
escrow and the half-close (on Sui about 11 M MIST of gas): it backs off longer
(:data:`SPENT_BACKOFF_FIRST`), and its deposit comes back through the forwarder's own
settlement once the half-close timeout has passed (:mod:`dtp.daemon._refunds`).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from dtp.errors import DTPError, TunnelError
from dtp.hostid._address import HostAddress
from dtp.hostid._connect import tcp_endpoints
from dtp.ledger.interface import Ledger

__all__ = [
    "OPEN_BACKOFF_FIRST",
    "OPEN_BACKOFF_MAX",
    "PROBE_TIMEOUT",
    "SPENT_BACKOFF_FIRST",
    "SPENT_BACKOFF_MAX",
    "BackingOff",
    "OpenBackoff",
    "TargetUnreachable",
    "probe_target",
]

OPEN_BACKOFF_FIRST = 0.5
"""Seconds after a failed open (or probe) before the next is tried; doubled after each
further failure, up to :data:`OPEN_BACKOFF_MAX`, and reset once a tunnel opened (a
connection opened with a deposit too small for one tunnel fails too)."""
OPEN_BACKOFF_MAX = 8.0
"""The longest wait after failures that spent nothing (a probe refused, a ledger read
failing): a target back from an outage is reached within it, for a TCP connect's
worth of probing meanwhile."""
SPENT_BACKOFF_FIRST = 30.0
"""The least wait after an open that failed once its transactions went through (the
target answered the probe, then refused the DTP connection): each such try locks a
deposit until the half-close timeout and costs the gas of three transactions."""
SPENT_BACKOFF_MAX = 300.0
"""The longest wait after such failures."""
PROBE_TIMEOUT = 5.0
"""Seconds a probe's TCP connect to one endpoint may take (within the forward's
``open_timeout``): a silent host is an outage too."""


class TargetUnreachable(TunnelError):
    """The probe found none of the target host's endpoints answering: nothing was
    spent on the ledger."""


class BackingOff(TunnelError):
    """A local client refused at once during the backoff after a failure (which it
    names): the failure was logged once, not once per client."""


@dataclass
class OpenBackoff:
    """One forward's backoff between tries of a new connection. Sans I/O: ``now`` is the
    caller's clock (the event loop's), in seconds."""

    failure: BaseException | None = None
    """The last try's failure, while its backoff runs (None: the next try may go)."""
    delay: float = 0.0
    """Seconds the last failure made the next try wait (0: none failed since a tunnel
    opened)."""
    retry_at: float = 0.0
    """When the next try may go."""
    failures: int = 0
    """Tries failed in a row."""
    outage: bool = False
    """The target did not answer the last probe, and has not answered one since."""

    def refusal(self, now: float) -> BackingOff | None:
        """What a local client coming at ``now`` is refused with: the last failure,
        while its backoff runs (None: a try may go, one at a time -- the caller holds
        the others back until it ends)."""
        failure = self.failure
        if failure is None or now >= self.retry_at:
            return None
        wait = self.retry_at - now
        error = BackingOff(f"{failure} (tried again in {wait:.1f} s)")
        error.__cause__ = failure
        return error

    def failed(self, now: float, error: BaseException, *, spent: bool = False) -> float:
        """A try failed at ``now`` with ``error``: returns the seconds until the next.
        ``spent``: its transactions went through (the deposit is in escrow), which
        backs off at least :data:`SPENT_BACKOFF_FIRST`."""
        self.failure = error
        self.failures += 1
        if spent:
            self.delay = min(max(2 * self.delay, SPENT_BACKOFF_FIRST), SPENT_BACKOFF_MAX)
        else:
            self.delay = min(2 * self.delay, OPEN_BACKOFF_MAX) or OPEN_BACKOFF_FIRST
        self.retry_at = now + self.delay
        return self.delay

    def unreachable(self, now: float, error: BaseException) -> tuple[float, bool]:
        """The probe found the target not answering at ``now``: the failure, and whether
        this begins an outage (the first in a row: the caller logs it once)."""
        began = not self.outage
        self.outage = True
        return self.failed(now, error), began

    def reached(self) -> bool:
        """The probe found the target answering: whether this ends an outage."""
        ended, self.outage = self.outage, False
        return ended

    def opened(self) -> None:
        """A connection opened: the next try may go at once should it be needed, but
        the delay stays until a tunnel opened on it (:meth:`tunnel_opened`)."""
        self.failure = None

    def tunnel_opened(self) -> None:
        """A tunnel opened: the backoff starts over."""
        self.failure = None
        self.delay = 0.0
        self.failures = 0


async def probe_target(ledger: Ledger, target: HostAddress, timeout: float) -> bool:
    """Whether ``target``'s host answers on one of its published TCP endpoints (tried
    in order, ``timeout`` seconds each): the Host is read (in a thread), then a TCP
    connect, closed at once. Nothing is written to the ledger. False when the host
    publishes no TCP endpoint (it is reached over the ledger carrier, which no probe
    can look at: the open goes ahead). Raises :class:`TargetUnreachable` naming every
    endpoint when none answers, and what the Host's read raises (the ledger away)."""
    host = await asyncio.to_thread(ledger.get_host, target.host_id)
    endpoints = tcp_endpoints(host)
    if not endpoints:
        return False
    failures = []
    for address, port in endpoints:
        try:
            async with asyncio.timeout(timeout):
                _reader, writer = await asyncio.open_connection(address, port)
        except TimeoutError:
            failures.append(f"{address}:{port}: no answer within {timeout:g} s")
            continue
        except OSError as exc:
            failures.append(f"{address}:{port}: {exc.strerror or exc}")
            continue
        writer.close()
        with contextlib.suppress(OSError, DTPError):
            await writer.wait_closed()
        return True
    raise TargetUnreachable(
        f"cannot reach {target}: host {target.host_id} does not answer "
        f"({'; '.join(failures)}); nothing was spent on the ledger"
    )
