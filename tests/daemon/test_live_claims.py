"""The services daemon claims a served connection's receipts while it lives
(``[daemon] claim_above``, ``claim_age``, ``claim_interval``; docs/daemon.md, "Fees";
docs/escrow.md §7.1): counted in its service's ``claims`` and ``fees_claimed`` as they
land, the end's settlement then claiming only what came after. And a provider daemon
killed while a forwarder's connection is open, down past the forwarder's half-close
timeout, keeps what it claimed: the forwarder, restarted, takes back only the rest."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from dtp.daemon._config import CLAIM_AGE, CLAIM_INTERVAL, NEVER_BY_AMOUNT, parse_config
from dtp.daemon._runner import Daemon
from dtp.errors import DaemonConfigError
from dtp.ledger._connections import find_connections
from dtp.ledger._objects import HALF_CLOSE_TIMEOUT_MS, ConnectionState
from dtp.ledger.local import LocalLedger
from dtp.payments._live_claims import ClaimRule
from dtp.payments.receipt_store import ReceiptStore
from tests.daemon.daemon_configs import write_provider
from tests.daemon.inproc import DEPOSIT, FileLedgerClient, run_with_file_client, service, until
from tests.daemon.tcp_backends import Backend, serves_health_checks
from tests.support.daemon_procs import SUI, daemon, forward_address, running, wait_until
from tests.support.daemon_procs import write_forwarder as forwarder_config
from tests.support.settlements import is_settled, settled_escrow

PAID = "price_per_kib = 10\nmin_deposit = 1000\n"


def test_a_served_connection_is_claimed_while_it_lives_and_counted(tmp_path: Path) -> None:
    async def scenario(daemon: Daemon, client: FileLedgerClient, *_unused: Any) -> None:
        cid = await client.open_ledger(7000)
        receipt = client.receipt(cid)  # (40 KiB: 400 MIST)
        _, writer = await client.connect(cid, 7000)
        writer.write(receipt.encode())
        await writer.drain()
        assert daemon.fees is not None  # (the [daemon] settings reach its claims)
        assert daemon.fees.claims.rule == ClaimRule(None, CLAIM_AGE, 0.2, weigh_gas=True)
        row = daemon.book.service("svc7000")
        await until(lambda: row.fees_claimed == receipt.total_amount, "the claim while live")
        # claimed while the connection is open on the ledger: not its end's settlement
        tc = client.connection(cid)
        assert tc.state == ConnectionState.OPEN and not tc.settled
        escrow = client.ledger.get_escrow(tc.escrow)
        assert (escrow.claimed, escrow.latest_nonce) == (receipt.total_amount, receipt.nonce)
        assert row.claims == 1
        writer.close()
        await until(lambda: client.connection(cid).settled, "the end's settlement")
        await until(lambda: row.refunded == DEPOSIT - receipt.total_amount, "its refund")
        # (the end claimed nothing more: counted once)
        assert (row.fees_claimed, row.claims) == (receipt.total_amount, 1)
        escrow = client.ledger.get_escrow(tc.escrow)
        assert (escrow.claimed, escrow.refunded) == (receipt.total_amount, row.refunded)
        audit = client.ledger.audit()
        assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]

    run_with_file_client(
        tmp_path, lambda b: "claim_interval = 0.2\n" + service(7000, b, PAID), scenario
    )


def test_the_claim_settings_of_the_daemon(tmp_path: Path) -> None:
    def settings(lines: str) -> Any:
        text = (
            f'[daemon]\nledger = "ledger.sqlite"\nidentity = "k.key"\n{lines}\n'
            '[[service]]\nname = "svc"\nport = 7000\nbackends = ["127.0.0.1:9"]\n'
        )
        return parse_config(text, tmp_path / "daemon.toml").daemon

    default = settings("")
    assert (default.claim_above, default.claim_age, default.claim_interval) == (
        None,
        CLAIM_AGE,
        CLAIM_INTERVAL,
    )
    chosen = settings("claim_above = 5000000\nclaim_age = 0.25\nclaim_interval = 0")
    assert (chosen.claim_above, chosen.claim_age, chosen.claim_interval) == (5_000_000, 0.25, 0)
    never = settings("claim_above = false\nclaim_age = false")
    assert (never.claim_above, never.claim_age) == (NEVER_BY_AMOUNT, None)
    for bad in (
        "claim_above = -1",
        "claim_above = true",
        "claim_above = 1.5",
        "claim_age = 0",
        "claim_age = 1",
        "claim_age = true",
        "claim_age = nan",
        "claim_interval = -1",
        "claim_interval = 301",
    ):
        key = bad.split(" =")[0]
        with pytest.raises(DaemonConfigError, match=f"daemon.{key}"):
            settings(bad)


def _echo(sock: socket.socket) -> None:
    if serves_health_checks(sock):
        return
    sock.settimeout(10)
    while data := sock.recv(1 << 16):
        sock.sendall(data)


def test_a_provider_down_past_the_timeout_keeps_what_it_claimed_while_live(
    tmp_path: Path,
) -> None:
    backend = Backend(_echo)
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    try:
        provider = daemon(write_provider(tmp_path, backend.port, "claim_interval = 0.2", PAID))
        with running(provider):
            host_id = str(provider.info["host_id"])
            config = forwarder_config(
                tmp_path,
                host_id,
                7000,
                "deposit = 1000000\n",
                ledger=f'ledger = "ledger.sqlite"\nfaucet = {10 * SUI}\nrefund_interval = 0.2'
                "\ndrain_timeout = 2",
            )
            forwarder = daemon(config)
            with running(forwarder):
                with socket.create_connection(forward_address(forwarder), timeout=10) as s:
                    piece = b"x" * 32_768
                    for _ in range(4):
                        s.sendall(piece)
                        got = 0
                        while got < len(piece):
                            got += len(s.recv(len(piece) - got))
                    (report,) = find_connections(ledger, client=forwarder.info["address"]).reports
                    cid = report.connection.id
                    escrow_id = report.escrow.id
                    receipts = tmp_path / "daemon-state" / "receipts.sqlite"

                    def claimed_all() -> int:
                        with ReceiptStore(receipts) as store:
                            stored = store.latest(cid)
                        held = stored.receipt.total_amount if stored is not None else 0
                        claimed = ledger.get_escrow(escrow_id).claimed
                        return claimed if claimed and claimed == held else 0

                    # what the provider holds is claimed while the tunnel is still open
                    kept = wait_until(claimed_all, timeout=30, what="the claims while live")
                    provider.kill()  # the outage: it never sees the end
                wait_until(
                    lambda: ledger.get_connection(cid).state == ConnectionState.HALF_CLOSED,
                    timeout=30,
                    what="the forwarder's half-close",
                )
                assert forwarder.stop() == 0
            ledger.advance_clock(HALF_CLOSE_TIMEOUT_MS)  # past the forwarder's timeout
            again = daemon(config)  # the forwarder's next start settles it
            with running(again):
                # (its client deletes the settled connection: the settlement's event)
                wait_until(lambda: is_settled(ledger, cid), 30, "the settlement")
                assert again.stop() == 0
            back = daemon(tmp_path / "daemon.toml")  # the provider back: nothing to claim
            with running(back):
                assert back.stop() == 0
        escrow = settled_escrow(ledger, cid)
        assert escrow.settled
        assert (escrow.claimed, escrow.refunded) == (kept, escrow.deposited - kept)
        audit = ledger.audit()
        assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
    finally:
        ledger.close()
        backend.close()
