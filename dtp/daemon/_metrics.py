"""The daemon's Prometheus metrics (``[daemon] metrics_listen``, docs/daemon.md
"Metrics and the status page"), in the exposition format ``prometheus_client`` writes.

One custom collector reads, at each scrape, what the daemon counts anyway -- the status
book's counters, the gas watch, the ledger calls' figures, the listener's handshakes,
the forwards' states -- from the daemon's own event loop (the HTTP server runs there):
nothing is counted twice, and no increment anywhere pays for the metrics.

Names follow Prometheus's conventions: ``dtp_`` first, counters end in ``_total``,
amounts in base units (bytes, seconds; fees in MIST, SUI's base unit), one label per
dimension (``service``, ``forward``, ``direction``, ``reason``, ``operation``).
``prometheus_client`` is the ``dtp[metrics]`` extra: this module is imported only when
metrics are asked for (:func:`dtp.daemon._web.load_metrics` names the extra when it is
missing).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

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
except ImportError as exc:  # the dtp[metrics] extra (dtp._extras)
    raise missing("metrics", "The daemon's metrics (metrics_listen)", exc) from None

from dtp import __version__
from dtp.daemon._ledger_calls import BUCKETS
from dtp.daemon._state import FORWARD_DENIALS, SERVICE_DENIALS, ForwardStats, ServiceStats
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
        rows = sorted(self.daemon.book.services.items())
        host = self.daemon.services

        def counter(name: str, doc: str, read: Callable[[ServiceStats], int]) -> Metric:
            family = CounterMetricFamily(name, doc, labels=["service"])
            for service, row in rows:
                family.add_metric([service], read(row))
            return family

        def gauge(name: str, doc: str, values: dict[str, int]) -> Metric:
            family = GaugeMetricFamily(name, doc, labels=["service"])
            for service, _ in rows:
                family.add_metric([service], values.get(service, 0))
            return family

        def by(name: str, doc: str, label: str, values: dict[str, dict[str, int]]) -> Metric:
            family = CounterMetricFamily(name, doc, labels=["service", label])
            for service, _ in rows:
                for key, value in values[service].items():
                    family.add_metric([service, key], value)
            return family

        open_now: dict[str, int] = {}
        owed: dict[str, int] = {}
        if host is not None:
            for conn in host.conns.values():
                open_now[conn.service.name] = open_now.get(conn.service.name, 0) + 1
            if host.host_id and host.fees_ready:
                owed = host.settlements.owed()
        yield counter(
            "dtp_service_connections_total",
            "DTP connections admitted to a service.",
            lambda r: r.connections,
        )
        yield gauge(
            "dtp_service_connections_open", "DTP connections of a service served now.", open_now
        )
        yield counter(
            "dtp_service_tunnels_total",
            "Tunnels (TCP streams; UDP flows) a service served.",
            lambda r: r.tunnels,
        )
        yield gauge(
            "dtp_service_tunnels_active",
            "Tunnels and UDP flows open now.",
            {s: r.active_tunnels for s, r in rows},
        )
        yield by(
            "dtp_service_bytes_total",
            "Tunnel bytes: in = client to backend, out = backend to client.",
            "direction",
            {s: {"in": r.bytes_in, "out": r.bytes_out} for s, r in rows},
        )
        yield by(
            "dtp_service_datagrams_total",
            "UDP datagrams relayed: in = client to backend, out = backend to client.",
            "direction",
            {s: {"in": r.datagrams_in, "out": r.datagrams_out} for s, r in rows},
        )
        yield by(
            "dtp_service_datagrams_dropped_total",
            "UDP datagrams dropped, by reason.",
            "reason",
            {s: _by_reason(r.datagrams_dropped, DROPPED) for s, r in rows},
        )
        yield by(
            "dtp_service_denials_total",
            "Connections refused and tunnels cut, by reason.",
            "reason",
            {s: _by_reason(r.denied, SERVICE_DENIALS) for s, r in rows},
        )
        yield counter(
            "dtp_service_backend_errors_total",
            "Backend connects that failed (another backend may have taken over).",
            lambda r: r.backend_errors,
        )
        yield counter(
            "dtp_service_no_backend_total",
            "Tunnels refused because no backend answered.",
            lambda r: r.unavailable,
        )
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
        yield counter(
            "dtp_service_receipts_total",
            "Receipts accepted and kept on disk.",
            lambda r: r.receipts,
        )
        yield gauge(
            "dtp_service_receipts_held",
            "Connections holding a receipt not claimed yet.",
            {s: r.receipts_held for s, r in rows},
        )
        yield counter(
            "dtp_service_fees_earned_mist_total",
            "MIST covered by accepted receipts.",
            lambda r: r.fees_earned,
        )
        yield gauge(
            "dtp_service_fees_owed_mist",
            "MIST the receipts held can still claim (connections served, ends waiting "
            "for a batch or a retry).",
            owed,
        )
        yield counter(
            "dtp_service_fees_claimed_mist_total",
            "MIST claimed on the ledger.",
            lambda r: r.fees_claimed,
        )
        yield counter(
            "dtp_service_refunded_mist_total",
            "MIST refunded to clients at settlement.",
            lambda r: r.refunded,
        )
        yield counter(
            "dtp_service_claims_total", "Settlements that claimed a fee.", lambda r: r.claims
        )
        yield counter(
            "dtp_service_claim_failures_total",
            "Settlements that failed (each try; tried again later).",
            lambda r: r.claim_failures,
        )
        yield counter(
            "dtp_service_ends_left_total",
            "Connection ends left to their clients: their fee was below the gas of claiming it.",
            lambda r: r.ends_left,
        )
        yield counter(
            "dtp_service_fees_left_mist_total",
            "MIST of fees those ends gave up.",
            lambda r: r.fees_left,
        )

    def _listener(self) -> Iterator[Metric]:
        host = self.daemon.services
        if host is None:
            return
        settlements = host.settlements
        yield GaugeMetricFamily(
            "dtp_settlements_retrying",
            "Failed settlements waiting to be tried again.",
            value=len(settlements.retries),
        )
        yield GaugeMetricFamily(
            "dtp_settlements_batched",
            "Connection ends waiting to be settled together.",
            value=len(settlements.deferred),
        )
        yield CounterMetricFamily(
            "dtp_settlement_failures_unplaced_total",
            "Failed settlements whose service could not be told.",
            value=settlements.unplaced_failures,
        )
        yield GaugeMetricFamily(
            "dtp_admissions_in_progress",
            "Handshakes whose admission waits on the ledger now.",
            value=host.admitting,
        )
        yield CounterMetricFamily(
            "dtp_admissions_no_service_total",
            "Connections refused because they named no configured service.",
            value=host.no_service,
        )
        server = host.server
        if server is None:
            return
        yield GaugeMetricFamily(
            "dtp_handshakes_in_progress",
            "Handshakes of the service listener in progress now.",
            value=server.handshakes_in_progress,
        )
        yield GaugeMetricFamily(
            "dtp_handshakes_waiting",
            "Connections waiting for a handshake slot.",
            value=server.handshakes_waiting,
        )
        yield GaugeMetricFamily(
            "dtp_handshakes_unproven",
            "Connections waiting for their first complete handshake record.",
            value=server.unproven,
        )
        yield CounterMetricFamily(
            "dtp_handshakes_failed_total",
            "Handshakes that failed (replays refused included).",
            value=server.handshakes_failed,
        )
        yield CounterMetricFamily(
            "dtp_handshakes_replayed_total",
            "Replayed first handshake messages refused.",
            value=server.replays_refused,
        )
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
        rows = sorted(self.daemon.book.forwards.items())
        running = sorted(self.daemon.forwarders.items())

        def counter(name: str, doc: str, read: Callable[[ForwardStats], int]) -> Metric:
            family = CounterMetricFamily(name, doc, labels=["forward"])
            for forward, row in rows:
                family.add_metric([forward], read(row))
            return family

        def gauge(name: str, doc: str, read: Callable[[Any], int]) -> Metric:
            family = GaugeMetricFamily(name, doc, labels=["forward"])
            for forward, fwd in running:
                family.add_metric([forward], read(fwd))
            return family

        def by(name: str, doc: str, label: str, values: dict[str, dict[str, int]]) -> Metric:
            family = CounterMetricFamily(name, doc, labels=["forward", label])
            for forward, _ in rows:
                for key, value in values[forward].items():
                    family.add_metric([forward, key], value)
            return family

        yield counter(
            "dtp_forward_connections_total",
            "DTP connections a forward opened on the ledger.",
            lambda r: r.connections,
        )
        yield gauge(
            "dtp_forward_connections_open",
            "DTP connections of a forward open now.",
            lambda f: f.open_connections,
        )
        yield gauge(
            "dtp_forward_opens_in_flight",
            "New DTP connections being opened now (probe, ledger open, handshake).",
            lambda f: f.opens_in_flight,
        )
        yield gauge(
            "dtp_forward_target_up",
            "0 while the forward's target does not answer its probe, else 1.",
            lambda f: 0 if f.backoff.outage else 1,
        )
        yield counter(
            "dtp_forward_tunnels_total",
            "Tunnels (local TCP connections; UDP flows) a forward carried.",
            lambda r: r.tunnels,
        )
        active = GaugeMetricFamily(
            "dtp_forward_tunnels_active",
            "Tunnels and UDP flows of a forward open now.",
            labels=["forward"],
        )
        for forward, row in rows:
            active.add_metric([forward], row.active_tunnels)
        yield active
        yield by(
            "dtp_forward_bytes_total",
            "Tunnel bytes: in = local client to the tunnel, out = back to local clients.",
            "direction",
            {f: {"in": r.bytes_in, "out": r.bytes_out} for f, r in rows},
        )
        yield by(
            "dtp_forward_datagrams_total",
            "UDP datagrams: in = local client to the tunnel, out = back to local clients.",
            "direction",
            {f: {"in": r.datagrams_in, "out": r.datagrams_out} for f, r in rows},
        )
        yield by(
            "dtp_forward_datagrams_dropped_total",
            "UDP datagrams a forward dropped, by reason.",
            "reason",
            {f: _by_reason(r.datagrams_dropped, DROPPED) for f, r in rows},
        )
        yield by(
            "dtp_forward_denials_total",
            "Connections the target or its ledger refused, by reason.",
            "reason",
            {f: _by_reason(r.denied, FORWARD_DENIALS) for f, r in rows},
        )
        yield counter("dtp_forward_errors_total", "Tunnels that failed.", lambda r: r.errors)
        yield counter(
            "dtp_forward_receipts_total", "Receipts signed and sent.", lambda r: r.receipts_sent
        )
        yield counter(
            "dtp_forward_fees_paid_mist_total",
            "MIST covered by the receipts sent.",
            lambda r: r.fees_paid,
        )

    def _refunds(self) -> Iterator[Metric]:
        """The forwarders' own connections, settled by the daemon where their server
        did not (:mod:`dtp.daemon._refunds`): counted by this run."""
        refunds = self.daemon.refunds
        yield CounterMetricFamily(
            "dtp_refunds_settled_total",
            "The forwarders' connections this run settled itself after their half-close "
            "timeout (their server never did).",
            value=refunds.settled,
        )
        yield CounterMetricFamily(
            "dtp_refunded_mist_total",
            "MIST those settlements gave back.",
            value=refunds.refunded,
        )
        yield CounterMetricFamily(
            "dtp_refunds_skipped_total",
            "The forwarders' connections left on the ledger: their refund was below the "
            "gas of taking it back (dtp refund takes it back by hand).",
            value=refunds.skipped,
        )
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
