"""The running daemon's live status: the counters as they are now, with what only the
running process knows (the ledger's health, each backend up or down, the handshakes in
flight, the fees owed), and a short history of them for the status page's charts.

``status.json`` trails the counters and holds nothing else (docs/daemon.md, "How it
works", "Status"): :func:`live_status` is what ``dtp status`` reads over the daemon's
control socket and the status page over HTTP (:mod:`dtp.daemon._web`), the file only
when the daemon does not answer.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any

from dtp import __version__

if TYPE_CHECKING:
    from dtp.daemon._view import DaemonView

__all__ = ["HISTORY_SAMPLES", "HISTORY_STEP", "History", "live_status"]

HISTORY_STEP = 2.0
"""Seconds between two samples of the history."""

HISTORY_SAMPLES = 300
"""Samples kept: ten minutes at :data:`HISTORY_STEP`."""

SERVICE_FIELDS = (
    "connections_open",
    "active_tunnels",
    "bytes",
    "datagrams",
    "fees_earned",
    "fees_claimed",
    "denials",
)
"""What a history sample holds of each service (``bytes``: both ways; cumulative
counters, which the page turns into rates)."""

FORWARD_FIELDS = ("connections_open", "active_tunnels", "bytes", "datagrams", "fees_paid")
"""What a history sample holds of each forward."""


def live_status(daemon: DaemonView) -> dict[str, Any]:
    """The status record as ``status.json`` holds it, taken now, plus ``live`` (True),
    ``version``, ``ledger`` (its health: :meth:`LedgerCalls.health`), ``listener``
    (the DTP listener's handshakes), ``settlements``, and in each service's row
    ``backends`` (each ``up`` or ``down``), ``connections_open`` and ``fees_owed``, in
    each forward's ``state`` (``ok``, ``backing_off``, ``unreachable``),
    ``connections_open`` and ``opens_in_flight``."""
    daemon.refresh_live()
    status = daemon.book.to_json()
    status["live"] = True
    status["version"] = __version__
    ledger = daemon.ledger_calls.health()
    ledger["spec"] = daemon.config.daemon.ledger.describe()
    status["ledger"] = ledger
    services: dict[str, dict[str, Any]] = status["services"]
    host = daemon.services
    if host is not None:
        open_by_name: dict[str, int] = {}
        for conn in host.conns.values():
            open_by_name[conn.service.name] = open_by_name.get(conn.service.name, 0) + 1
        owed = host.settlements.owed() if host.host_id and host.fees_ready else {}
        for name, row in services.items():
            row["connections_open"] = open_by_name.get(name, 0)
            row["fees_owed"] = owed.get(name, 0)
        for port, service in host.services.items():
            served = services.get(service.name)
            if served is None:
                continue
            pool = host.pools.get(port)
            served["protocol"] = service.protocol
            served["backends"] = {
                str(b): ("up" if pool.healthy.get(b, False) else "down")
                if pool is not None
                else "unchecked"
                for b in service.backends
            }
        server = host.server
        status["listener"] = {
            "admissions_in_progress": host.admitting,
            "refused_no_service": host.no_service,
            **(
                {
                    "handshakes_in_progress": server.handshakes_in_progress,
                    "handshakes_waiting": server.handshakes_waiting,
                    "unproven": server.unproven,
                    "handshakes_failed": server.handshakes_failed,
                    "refused": server.refused,
                    "busy_refused": server.busy_refused,
                    "replays_refused": server.replays_refused,
                }
                if server is not None
                else {}
            ),
        }
        status["settlements"] = {
            "retrying": len(host.settlements.retries),
            "batched": len(host.settlements.deferred),
            "unplaced_failures": host.settlements.unplaced_failures,
        }
    forwards: dict[str, dict[str, Any]] = status["forwards"]
    for name, fwd in daemon.forwarders.items():
        forward = forwards.get(name)
        if forward is None:
            continue
        backoff = fwd.backoff
        forward["protocol"] = fwd.config.protocol
        forward["state"] = (
            "unreachable" if backoff.outage else "backing_off" if backoff.failure else "ok"
        )
        forward["connections_open"] = fwd.open_connections
        forward["opens_in_flight"] = fwd.opens_in_flight
    return status


class History:
    """The last :data:`HISTORY_SAMPLES` samples of each service's and forward's counters,
    one every :data:`HISTORY_STEP` seconds (:meth:`sample`, from the daemon's loop)."""

    def __init__(self, step: float = HISTORY_STEP, size: int = HISTORY_SAMPLES) -> None:
        self.step = step
        self.samples: deque[dict[str, Any]] = deque(maxlen=size)
        self._due = 0.0

    def sample(self, daemon: DaemonView, now: float | None = None) -> bool:
        """Take a sample when one is due (``now``: monotonic seconds); whether it did."""
        now = time.monotonic() if now is None else now
        if now < self._due:
            return False
        self._due = now + self.step
        status = live_status(daemon)
        self.samples.append(
            {
                "t": round(status["updated"], 3),
                "services": {
                    name: [_field(row, f) for f in SERVICE_FIELDS]
                    for name, row in status["services"].items()
                },
                "forwards": {
                    name: [_field(row, f) for f in FORWARD_FIELDS]
                    for name, row in status["forwards"].items()
                },
            }
        )
        return True

    def to_json(self) -> dict[str, Any]:
        """The samples, oldest first, with the names of their fields."""
        return {
            "step": self.step,
            "service_fields": list(SERVICE_FIELDS),
            "forward_fields": list(FORWARD_FIELDS),
            "samples": list(self.samples),
        }


def _field(row: dict[str, Any], name: str) -> int:
    if name == "bytes":
        return int(row.get("bytes_in", 0)) + int(row.get("bytes_out", 0))
    if name == "datagrams":
        return int(row.get("datagrams_in", 0)) + int(row.get("datagrams_out", 0))
    value = row.get(name, 0)
    return value if isinstance(value, int) else 0
