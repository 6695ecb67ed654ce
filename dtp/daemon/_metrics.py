"""The daemon's Prometheus metrics (``[daemon] metrics_listen``; each one, and the
naming conventions they follow: docs/daemon.md "Metrics and the status page"), in the
exposition format ``prometheus_client`` writes.

One custom collector reads, at each scrape, what the daemon counts anyway, from the
daemon's own event loop (the HTTP server runs there): nothing is counted twice, and no
increment anywhere pays for the metrics. ``prometheus_client`` is the
``dtp-sui[metrics]`` extra: this module is imported only when metrics are asked for
(:func:`dtp.daemon._web.load_metrics` names the extra when it is missing).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from dtp._extras import missing

try:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        InfoMetricFamily,
        StateSetMetricFamily,
    )
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.metrics_core import Metric
except ImportError as exc:  # the dtp-sui[metrics] extra (dtp._extras)
    raise missing("metrics", "The daemon's metrics (metrics_listen)", exc) from None

from dtp import __version__
from dtp.daemon._ledger_calls import BUCKETS
from dtp.daemon._state import FORWARD_DENIALS, SERVICE_DENIALS
from dtp.daemon._udp_flows import DROPPED

if TYPE_CHECKING:
    from dtp.daemon._view import DaemonView

__all__ = ["DaemonCollector", "Metrics"]


class DaemonCollector:
    """The collector of one daemon (see the module docs); ``collect`` runs on the
    daemon's event loop."""

    def __init__(self, daemon: DaemonView) -> None:
        self.daemon = daemon

    def describe(self) -> list[Metric]:
        # (no names up front: the registry then never calls collect() outside a scrape)
        return []

    def collect(self) -> Iterator[Metric]:
        self.daemon.refresh_live()
        yield from self._daemon()
        yield from self._services()
        yield from self._listener()
        yield from self._forwards()
        yield from self._refunds()
        yield from self._ledger()
        yield from self._gas()

    def _daemon(self) -> Iterator[Metric]:
        daemon = self.daemon
        info = InfoMetricFamily("dtp_daemon", "The daemon: its version, address, Host and ledger.")
        info.add_metric(
            [],
            {
                "version": __version__,
                "address": daemon.identity.sui_address,
                "host_id": daemon.host_id or "",
                "ledger": daemon.config.daemon.ledger.describe(),
            },
        )
        yield info
        started = daemon.book.info.get("started")
        if isinstance(started, int | float):
            yield GaugeMetricFamily(
                "dtp_daemon_start_time_seconds",
                "When the daemon became ready (Unix time).",
                value=started,
            )

    # -- services -------------------------------------------------------------------------

    def _services(self) -> Iterator[Metric]:
        rows = self.daemon.book.services
        host = self.daemon.services
        open_now: dict[str, int] = {}
        owed: dict[str, int] = {}
        if host is not None:
            for conn in host.conns.values():
                open_now[conn.service.name] = open_now.get(conn.service.name, 0) + 1
            if host.host_id and host.fees_ready:
                owed = host.settlements.owed()
        given = {"open_now": open_now, "owed": owed}
        yield from _per_row("service", rows, _SERVICE_TRAFFIC, given)
        backends = GaugeMetricFamily(
            "dtp_backend_up",
            "1 when a TCP backend passed its last health check, else 0.",
            labels=["service", "backend"],
        )
        if host is not None:
            for port, service in sorted(host.services.items()):
                pool = host.pools.get(port)
                for backend in service.backends if pool is not None else ():
                    up = pool is not None and pool.healthy.get(backend, False)
                    backends.add_metric([service.name, str(backend)], 1 if up else 0)
        yield backends
        yield from _per_row("service", rows, _SERVICE_FEES, given)

    def _listener(self) -> Iterator[Metric]:
        host = self.daemon.services
        if host is None:
            return
        yield from _one_series(_HOST, host)
        server = host.server
        if server is None:
            return
        yield from _one_series(_SERVER, server)
        refused = CounterMetricFamily(
            "dtp_listener_refused_total",
            "Connections the listener refused: admission (the daemon said no) or busy "
            "(no handshake slot in time).",
            labels=["reason"],
        )
        refused.add_metric(["admission"], server.refused)
        refused.add_metric(["busy"], server.busy_refused)
        yield refused

    # -- forwards -------------------------------------------------------------------------

    def _forwards(self) -> Iterator[Metric]:
        rows = self.daemon.book.forwards
        yield from _per_row("forward", rows, _FORWARD_OPENED)
        yield from _per_row("forward", self.daemon.forwarders, _FORWARDERS)
        yield from _per_row("forward", rows, _FORWARD_TRAFFIC)

    def _refunds(self) -> Iterator[Metric]:
        """The forwarders' own connections, settled by the daemon where their server
        did not (:mod:`dtp.daemon._refunds`): counted by this run."""
        refunds = self.daemon.refunds
        yield from _one_series(_REFUNDS, refunds)
        try:
            waiting = refunds.waiting()
        except sqlite3.Error:
            return  # (the book's file failing: the task's log says it; not shown)
        yield GaugeMetricFamily(
            "dtp_refunds_waiting",
            "The forwarders' connections not known settled: in use, or waiting for "
            "their server's settlement or their half-close timeout.",
            value=waiting,
        )

    # -- the ledger and the gas -----------------------------------------------------------

    def _ledger(self) -> Iterator[Metric]:
        calls = self.daemon.ledger_calls
        histogram = HistogramMetricFamily(
            "dtp_ledger_request_duration_seconds",
            "How long the daemon's ledger calls took, by operation (the Ledger method).",
            labels=["operation"],
        )
        errors = CounterMetricFamily(
            "dtp_ledger_errors_total",
            "Ledger calls that raised, by operation and error name.",
            labels=["operation", "error"],
        )
        for operation, stats in sorted(calls.snapshot().items()):
            cumulative, buckets = 0, []
            for bound, count in zip(BUCKETS, stats.buckets, strict=True):
                cumulative += count
                buckets.append((repr(float(bound)), float(cumulative)))
            buckets.append(("+Inf", float(stats.count)))
            histogram.add_metric([operation], buckets, stats.seconds)
            for error, count in sorted(stats.errors.items()):
                errors.add_metric([operation, error], count)
        yield histogram
        yield errors
        up = calls.up
        if up is not None:
            yield GaugeMetricFamily(
                "dtp_ledger_up",
                "1 when the ledger answered the latest calls, 0 while it does not answer.",
                value=1 if up else 0,
            )
        if calls.last_ok is not None:
            yield GaugeMetricFamily(
                "dtp_ledger_last_success_timestamp_seconds",
                "When the ledger last answered a call (Unix time).",
                value=calls.last_ok,
            )

    def _gas(self) -> Iterator[Metric]:
        gas = self.daemon.gas
        if gas.balance is not None:
            yield GaugeMetricFamily(
                "dtp_gas_balance_mist",
                "What the daemon's address holds (on Sui: its gas), as last read.",
                value=gas.balance,
            )
        if gas.budget:
            yield GaugeMetricFamily(
                "dtp_gas_budget_mist",
                "One transaction's gas budget: below it no transaction can be sent.",
                value=gas.budget,
            )
            yield GaugeMetricFamily(
                "dtp_gas_low_mist",
                "The low_gas threshold: below it the gas shows as low.",
                value=gas.low,
            )
        state = StateSetMetricFamily(
            "dtp_gas_state", "The gas: ok, low, out, or unknown (not read yet).", labels=[]
        )
        state.add_metric([], {s: gas.state == s for s in ("ok", "low", "out", "unknown")})
        yield state
        spent = gas.spent_total()
        by_kind = CounterMetricFamily(
            "dtp_gas_spent_mist_total",
            "MIST of gas the daemon paid, over all runs of its state directory, by kind.",
            labels=["kind"],
        )
        for kind in ("ends", "opens", "host", "other"):
            by_kind.add_metric([kind], spent.get(kind, 0))
        yield by_kind
        yield CounterMetricFamily(
            "dtp_gas_transactions_total",
            "Transactions the daemon paid gas for, over all runs of its state directory.",
            value=spent.get("transactions", 0),
        )


class _Family(NamedTuple):
    """One family declared: a counter when its name ends in ``_total`` (the Prometheus
    convention), else a gauge. ``read``: the attribute (or the function) giving a row's
    number; a pair of attributes, its numbers by ``direction`` (in, out); with
    ``reasons``, the attribute counting by ``reason`` (those always shown)."""

    name: str
    doc: str
    read: str | tuple[str, str] | Callable[[Any], int]
    reasons: tuple[str, ...] = ()

    @property
    def by(self) -> str:
        return "direction" if isinstance(self.read, tuple) else "reason" if self.reasons else ""

    def make(self, labels: list[str]) -> CounterMetricFamily | GaugeMetricFamily:
        kind = CounterMetricFamily if self.name.endswith("_total") else GaugeMetricFamily
        return kind(self.name, self.doc, labels=labels)

    def value(self, row: Any) -> Any:
        if isinstance(self.read, tuple):
            return {"in": getattr(row, self.read[0]), "out": getattr(row, self.read[1])}
        if isinstance(self.read, str):
            value = getattr(row, self.read)
            return _by_reason(value, self.reasons) if self.reasons else value
        return self.read(row)


def _one_series(families: tuple[_Family, ...], source: Any) -> Iterator[Metric]:
    """The families of one series each, read off ``source``."""
    for family in families:
        metric = family.make([])
        metric.add_metric([], family.value(source))
        yield metric


# A service's families (a name in ``given`` reads that mapping by service name), in the
# order of the scrape: its traffic, then (after dtp_backend_up) its receipts and fees.
_SERVICE_TRAFFIC = (
    _Family(
        "dtp_service_connections_total", "DTP connections admitted to a service.", "connections"
    ),
    _Family("dtp_service_connections_open", "DTP connections of a service served now.", "open_now"),
    _Family(
        "dtp_service_tunnels_total", "Tunnels (TCP streams; UDP flows) a service served.", "tunnels"
    ),
    _Family("dtp_service_tunnels_active", "Tunnels and UDP flows open now.", "active_tunnels"),
    _Family(
        "dtp_service_bytes_total",
        "Tunnel bytes: in = client to backend, out = backend to client.",
        ("bytes_in", "bytes_out"),
    ),
    _Family(
        "dtp_service_datagrams_total",
        "UDP datagrams relayed: in = client to backend, out = backend to client.",
        ("datagrams_in", "datagrams_out"),
    ),
    _Family(
        "dtp_service_datagrams_dropped_total",
        "UDP datagrams dropped, by reason.",
        "datagrams_dropped",
        DROPPED,
    ),
    _Family(
        "dtp_service_denials_total",
        "Connections refused and tunnels cut, by reason.",
        "denied",
        SERVICE_DENIALS,
    ),
    _Family(
        "dtp_service_backend_errors_total",
        "Backend connects that failed (another backend may have taken over).",
        "backend_errors",
    ),
    _Family(
        "dtp_service_no_backend_total",
        "Tunnels refused because no backend answered.",
        "unavailable",
    ),
)
_SERVICE_FEES = (
    _Family("dtp_service_receipts_total", "Receipts accepted and kept on disk.", "receipts"),
    _Family(
        "dtp_service_receipts_held",
        "Connections holding a receipt not claimed yet.",
        "receipts_held",
    ),
    _Family(
        "dtp_service_fees_earned_mist_total", "MIST covered by accepted receipts.", "fees_earned"
    ),
    _Family(
        "dtp_service_fees_owed_mist",
        "MIST the receipts held can still claim (connections served, ends waiting "
        "for a batch or a retry).",
        "owed",
    ),
    _Family("dtp_service_fees_claimed_mist_total", "MIST claimed on the ledger.", "fees_claimed"),
    _Family(
        "dtp_service_refunded_mist_total", "MIST refunded to clients at settlement.", "refunded"
    ),
    _Family("dtp_service_claims_total", "Settlements that claimed a fee.", "claims"),
    _Family(
        "dtp_service_claim_failures_total",
        "Settlements that failed (each try; tried again later).",
        "claim_failures",
    ),
    _Family(
        "dtp_service_ends_left_total",
        "Connection ends left to their clients: their fee was below the gas of claiming it.",
        "ends_left",
    ),
    _Family("dtp_service_fees_left_mist_total", "MIST of fees those ends gave up.", "fees_left"),
)
# The service listener's: its settlements and admissions, then its server's handshakes.
_HOST = (
    _Family(
        "dtp_settlements_retrying",
        "Failed settlements waiting to be tried again.",
        lambda host: len(host.settlements.retries),
    ),
    _Family(
        "dtp_settlements_batched",
        "Connection ends waiting to be settled together.",
        lambda host: len(host.settlements.deferred),
    ),
    _Family(
        "dtp_settlement_failures_unplaced_total",
        "Failed settlements whose service could not be told.",
        lambda host: host.settlements.unplaced_failures,
    ),
    _Family(
        "dtp_admissions_in_progress",
        "Handshakes whose admission waits on the ledger now.",
        "admitting",
    ),
    _Family(
        "dtp_admissions_no_service_total",
        "Connections refused because they named no configured service.",
        "no_service",
    ),
)
_SERVER = (
    _Family(
        "dtp_handshakes_in_progress",
        "Handshakes of the service listener in progress now.",
        "handshakes_in_progress",
    ),
    _Family(
        "dtp_handshakes_waiting", "Connections waiting for a handshake slot.", "handshakes_waiting"
    ),
    _Family(
        "dtp_handshakes_unproven",
        "Connections waiting for their first complete handshake record.",
        "unproven",
    ),
    _Family(
        "dtp_handshakes_failed_total",
        "Handshakes that failed (replays refused included).",
        "handshakes_failed",
    ),
    _Family(
        "dtp_handshakes_replayed_total",
        "Replayed first handshake messages refused.",
        "replays_refused",
    ),
)
# A forward's: the connections it opened; the forwarders running now; its traffic.
_FORWARD_OPENED = (
    _Family(
        "dtp_forward_connections_total",
        "DTP connections a forward opened on the ledger.",
        "connections",
    ),
)
_FORWARDERS = (
    _Family(
        "dtp_forward_connections_open", "DTP connections of a forward open now.", "open_connections"
    ),
    _Family(
        "dtp_forward_opens_in_flight",
        "New DTP connections being opened now (probe, ledger open, handshake).",
        "opens_in_flight",
    ),
    _Family(
        "dtp_forward_target_up",
        "0 while the forward's target does not answer its probe, else 1.",
        lambda f: 0 if f.backoff.outage else 1,
    ),
)
_FORWARD_TRAFFIC = (
    _Family(
        "dtp_forward_tunnels_total",
        "Tunnels (local TCP connections; UDP flows) a forward carried.",
        "tunnels",
    ),
    _Family(
        "dtp_forward_tunnels_active",
        "Tunnels and UDP flows of a forward open now.",
        "active_tunnels",
    ),
    _Family(
        "dtp_forward_bytes_total",
        "Tunnel bytes: in = local client to the tunnel, out = back to local clients.",
        ("bytes_in", "bytes_out"),
    ),
    _Family(
        "dtp_forward_datagrams_total",
        "UDP datagrams: in = local client to the tunnel, out = back to local clients.",
        ("datagrams_in", "datagrams_out"),
    ),
    _Family(
        "dtp_forward_datagrams_dropped_total",
        "UDP datagrams a forward dropped, by reason.",
        "datagrams_dropped",
        DROPPED,
    ),
    _Family(
        "dtp_forward_denials_total",
        "Connections the target or its ledger refused, by reason.",
        "denied",
        FORWARD_DENIALS,
    ),
    _Family("dtp_forward_errors_total", "Tunnels that failed.", "errors"),
    _Family("dtp_forward_receipts_total", "Receipts signed and sent.", "receipts_sent"),
    _Family("dtp_forward_fees_paid_mist_total", "MIST covered by the receipts sent.", "fees_paid"),
)
# The forwarders' own connections the daemon settled (:mod:`dtp.daemon._refunds`).
_REFUNDS = (
    _Family(
        "dtp_refunds_settled_total",
        "The forwarders' connections this run settled itself after their half-close "
        "timeout (their server never did).",
        "settled",
    ),
    _Family("dtp_refunded_mist_total", "MIST those settlements gave back.", "refunded"),
    _Family(
        "dtp_refunds_skipped_total",
        "The forwarders' connections left on the ledger: their refund was below the "
        "gas of taking it back (dtp refund takes it back by hand).",
        "skipped",
    ),
)


def _per_row(
    label: str,
    rows: Mapping[str, Any],
    families: tuple[_Family, ...],
    given: Mapping[str, Mapping[str, int]] = {},
) -> Iterator[Metric]:
    """The families of one series per service or per forward (``label``), in the order
    of their names, each read off a row (a stats row, a forwarder), or out of a mapping
    ``given`` by name (0 for a name it lacks)."""
    for family in families:
        metric = family.make([label, family.by] if family.by else [label])
        for key, row in sorted(rows.items()):
            if family.by:
                for value_key, value in family.value(row).items():
                    metric.add_metric([key, value_key], value)
            elif isinstance(family.read, str) and family.read in given:
                metric.add_metric([key], given[family.read].get(key, 0))
            else:
                metric.add_metric([key], family.value(row))
        yield metric


def _by_reason(counted: dict[str, int], known: tuple[str, ...]) -> dict[str, int]:
    """The counts of every reason ``known`` (a zero shows the series exists), and of
    any other counted."""
    return {
        reason: counted.get(reason, 0) for reason in (*known, *sorted(set(counted) - set(known)))
    }


class Metrics:
    """The ``/metrics`` endpoint of one daemon: a registry holding its collector."""

    def __init__(self, daemon: DaemonView) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DaemonCollector(daemon))

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The metrics in the format the scraper's ``Accept`` header asks for
        (Prometheus text, or OpenMetrics): the body and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
