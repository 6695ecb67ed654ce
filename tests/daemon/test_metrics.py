"""The daemon's Prometheus metrics (``[daemon] metrics_listen``), scraped over real HTTP
while real traffic flows through a provider's and a client's daemons, on a LocalLedger
file and on the Sui node stand-in: the counters move with the traffic, the fees and
claims follow the receipts, the ledger's calls are timed, the gas is shown; every
scrape parses with prometheus_client's own parser."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon.metrics_scrape import METRICS, get, metered_pair, scrape, streaming, value
from tests.daemon.test_udp_services import PRICED, exchange, udp_service
from tests.daemon.tunnel_setup import PAID, Setup, echo_roundtrip, service
from tests.support.daemon_procs import ENV, ROOT, wait_until
from tests.support.udp_backends import EchoBackend


@pytest.mark.parametrize("setup", ["local", "sui"], indirect=True)
def test_a_scrape_follows_the_traffic_the_fees_and_the_ledger(setup: Setup) -> None:
    backend = setup.backend()
    pair = metered_pair(setup, service([backend.info["port"]], extra=PAID), "deposit = 50000000")
    provider, forwarder = pair.provider_metrics, pair.forwarder_metrics
    svc = {"service": "svc7000"}
    fwd = {"forward": "svc"}
    with streaming(pair.address) as stream:
        wait_until(lambda: stream.received > 1 << 20, 60, "a MiB through the tunnel")
        first = scrape(provider)
        assert value(first, "dtp_service_connections_open", **svc) == 1
        assert value(first, "dtp_service_tunnels_active", **svc) == 1
        assert value(first, "dtp_service_connections_total", **svc) == 1
        bytes_in = value(first, "dtp_service_bytes_total", direction="in", **svc)
        assert bytes_in >= 1 << 20
        assert value(first, "dtp_backend_up", backend=f"127.0.0.1:{backend.info['port']}", **svc)
        client = scrape(forwarder)
        assert value(client, "dtp_forward_connections_open", **fwd) == 1
        assert value(client, "dtp_forward_tunnels_active", **fwd) == 1
        assert value(client, "dtp_forward_target_up", **fwd) == 1
        assert value(client, "dtp_forward_bytes_total", direction="out", **fwd) >= 1 << 20
        # live: a scrape a moment later has counted the bytes that flowed meanwhile
        wait_until(
            lambda: (
                value(scrape(provider), "dtp_service_bytes_total", direction="in", **svc)
                > bytes_in + (1 << 20)
            ),
            60,
            "the bytes counted as they flow",
        )
        paid = scrape(provider)
        assert value(paid, "dtp_service_receipts_total", **svc) >= 1
        earned = value(paid, "dtp_service_fees_earned_mist_total", **svc)
        assert earned > 0
        # a served connection's receipts can still claim all they cover
        assert value(paid, "dtp_service_fees_owed_mist", **svc) > 0
        assert value(scrape(forwarder), "dtp_forward_fees_paid_mist_total", **fwd) > 0
    assert stream.received == stream.sent
    # the forwarder stopped: its connection ends, the provider claims and settles it
    assert pair.forwarder.stop() == 0
    settled = wait_until(
        lambda: (s := scrape(provider)) and value(s, "dtp_service_claims_total", **svc) >= 1 and s,
        60,
        "the claim",
    )
    assert value(settled, "dtp_service_connections_open", **svc) == 0
    assert value(settled, "dtp_service_fees_claimed_mist_total", **svc) > 0
    assert value(settled, "dtp_service_fees_owed_mist", **svc) == 0
    assert value(settled, "dtp_service_claim_failures_total", **svc) == 0
    assert value(settled, "dtp_service_refunded_mist_total", **svc) > 0
    assert value(settled, "dtp_service_denials_total", reason="ledger", **svc) == 0
    # every ledger call timed: the admission's reads, the settlement
    counts = {
        dict(labels)["operation"]: v
        for (name, labels), v in settled.items()
        if name == "dtp_ledger_request_duration_seconds_count"
    }
    assert counts.get("settle_with_receipt", 0) >= 1, counts
    assert value(settled, "dtp_ledger_up") == 1
    assert value(settled, "dtp_gas_balance_mist") > 0
    assert value(settled, "dtp_gas_state", dtp_gas_state="ok") == 1
    info = [labels for (name, labels), _ in settled.items() if name == "dtp_daemon_info"]
    assert dict(info[0])["host_id"].startswith("0x")
    if setup.node is not None:
        # on Sui: the gas budget, and what the Host's set-up and the settlement cost
        assert value(settled, "dtp_gas_budget_mist") > 0
        assert value(settled, "dtp_gas_spent_mist_total", kind="ends") > 0
        assert value(settled, "dtp_gas_spent_mist_total", kind="host") > 0
        assert value(settled, "dtp_gas_transactions_total") >= 2
        # its reads took round trips to the node: more than nothing
        total = sum(
            v
            for (name, _), v in settled.items()
            if name == "dtp_ledger_request_duration_seconds_sum"
        )
        assert total > 0


def test_denials_are_counted_by_reason(setup: Setup) -> None:
    """A client the service's own deny list refuses: one denial, reason ``firewall``, at
    the provider; at the forwarder, a refusal by the remote daemon."""
    backend = setup.backend()
    deny = f'deny = ["{setup.client.sui_address}"]'
    pair = metered_pair(setup, service([backend.info["port"]], extra=deny))
    provider, forwarder = pair.provider_metrics, pair.forwarder_metrics
    assert echo_roundtrip(pair.address, b"no") == b""
    svc = {"service": "svc7000"}
    samples = wait_until(
        lambda: (
            (s := scrape(provider))
            and value(s, "dtp_service_denials_total", reason="firewall", **svc) >= 1
            and s
        ),
        30,
        "the denial",
    )
    assert value(samples, "dtp_service_denials_total", reason="ledger", **svc) == 0
    assert value(samples, "dtp_service_connections_total", **svc) == 0
    client = scrape(forwarder)
    assert value(client, "dtp_forward_denials_total", forward="svc", reason="refused") >= 1
    assert value(client, "dtp_forward_errors_total", forward="svc") >= 1


def test_the_endpoint_answers_only_what_it_serves(setup: Setup) -> None:
    backend = setup.backend()
    provider = metered_pair(setup, service([backend.info["port"]])).provider_metrics
    code, headers, body = get(provider, "/")
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    # nothing from elsewhere: the page loads no script, style or font, and its policy
    # forbids any
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert b"<script src" not in body and b"<link" not in body and b"@import" not in body
    code, _, body = get(provider, "/healthz")
    assert (code, body) == (200, b"serving\n")
    code, _, body = get(provider, "/nothing-here")
    assert code == 404
    code, _, body = get(provider, "/status.json")
    assert code == 200 and b'"live":true' in body


def test_metrics_without_prometheus_client_name_the_extra(tmp_path: Path) -> None:
    """``metrics_listen`` set where prometheus_client is not installed: exit 2, the key
    and the extra named, nothing created."""
    config = tmp_path / "dtp.toml"
    config.write_text(
        f'[daemon]\nledger = "l.sqlite"\nidentity = "k.key"\nstate_dir = "state"\n{METRICS}\n'
        + service([9])
    )
    hide = (
        "import sys; sys.modules['prometheus_client'] = None; "
        "from dtp.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", hide, "daemon", "--config", str(config)],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "daemon.metrics_listen" in done.stderr
    assert "pip install 'dtp-sui[metrics]'" in done.stderr
    assert not (tmp_path / "state").exists()
    assert not (tmp_path / "k.key").exists()
    assert not (tmp_path / "l.sqlite").exists()


def test_a_metrics_address_in_use_is_a_config_error(setup: Setup) -> None:
    backend = setup.backend()
    provider = setup.daemon(setup.write_daemon(service([backend.info["port"]]), extra=METRICS))
    taken = provider.info["metrics"]
    config = setup.write_daemon(
        service([backend.info["port"]]),
        extra=f'metrics_listen = "{taken}"',
        name="second",
    )
    done = subprocess.run(
        [sys.executable, "-m", "dtp.cli", "daemon", "--config", str(config)],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert f"daemon.metrics_listen: cannot listen on {taken}" in done.stderr
    assert provider.stop(signal.SIGTERM) == 0


def test_udp_datagrams_are_counted_both_ways(setup: Setup) -> None:
    """A UDP service and forward: the datagrams relayed each way, the flow open, the
    receipts (per datagram)."""
    echo = EchoBackend()
    try:
        provider = setup.daemon(
            setup.write_daemon(udp_service("svc", 5300, [echo.port], PRICED), extra=METRICS)
        )
        config = setup.write_forwarder(provider.info["host_id"], 5300, 'protocol = "udp"')
        config.write_text(config.read_text().replace("[[forward]]", f"{METRICS}\n\n[[forward]]", 1))
        forwarder = setup.daemon(config)
        host, port = forwarder.info["forwards"]["svc"].rsplit(":", 1)
        assert exchange((host, int(port)), 40) == 40
        svc, fwd = {"service": "svc"}, {"forward": "svc"}
        served = wait_until(
            lambda: (
                (s := scrape(provider.info["metrics"]))
                and value(s, "dtp_service_datagrams_total", direction="out", **svc) >= 40
                and s
            ),
            30,
            "the replies counted",
        )
        assert value(served, "dtp_service_datagrams_total", direction="in", **svc) == 40
        assert value(served, "dtp_service_tunnels_active", **svc) == 1  # the flow
        assert value(served, "dtp_service_datagrams_dropped_total", reason="unpaid", **svc) == 0
        client = wait_until(
            lambda: (
                (s := scrape(forwarder.info["metrics"]))
                and value(s, "dtp_forward_datagrams_total", direction="out", **fwd) >= 40
                and s
            ),
            30,
            "the forward's datagrams",
        )
        assert value(client, "dtp_forward_datagrams_total", direction="in", **fwd) == 40
        assert value(client, "dtp_forward_connections_open", **fwd) == 1
        assert value(client, "dtp_forward_receipts_total", **fwd) >= 1
    finally:
        echo.close()
