"""A spending cap lowered while paid connections are open, and the server's cap refresh
between the lowering and the clients' final receipts.

A lowering pauses service (the server extends no more credit on it), but the claims of
a connection open before it keep the limit the connection opened under: the ledger
charges them against that (docs/escrow.md §4), so what was served is paid. The server's
gates judged receipts against the serving limit all the same: once a refresh of the
caps (the policy's, or the one after another connection on the cap settles) had read
the lowering, the final receipt -- for usage served before it -- was refused as above
the cap, and the settlement claimed an older one (CI: 40604 claimed of 40966 served).
Real LocalLedger file, real DTP connections on 127.0.0.1, servers in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.chain.local import LocalLedger
from dtp.escrow import fee
from dtp.metering import MeteringConfig
from dtp.paid import PaidServer
from dtp.paid_aio import PaidAioServer
from tests.paid_twins import loop_in_thread, stop
from tests.polling import wait_for
from tests.test_s14_cap_lowering import (
    CLIENT,
    DEPOSIT,
    POLICY,
    PORT,
    SERVED,
    SERVER,
    SLA,
    _serve_until_eof,
    _serve_until_eof_aio,
)
from tests.test_s14_cap_lowering import ledger as ledger  # the funded ledger fixture

EXTRA = 10_000  # bytes the client sends last, well within the 64 KiB receipt cadence


@contextlib.contextmanager
def paid_server(kind: str, host_id: str, tmp_path: Path) -> Any:
    """The blocking or asyncio paid server; yields a function that runs its refresh of
    the Host and the caps now."""
    if kind == "blocking":
        server: PaidServer = dtp.socket.serve(
            host_id,
            PORT,
            _serve_until_eof,
            ledger=LocalLedger(tmp_path / "ledger.db"),
            identity=SERVER,
            receipts=tmp_path / "receipts.db",
            policy=POLICY,
        )
        with server:
            yield server.refresh_policy
        return
    server_ledger = LocalLedger(tmp_path / "ledger.db")
    with loop_in_thread() as loop:
        aio: PaidAioServer = asyncio.run_coroutine_threadsafe(
            dtp.aio.serve(
                host_id,
                PORT,
                _serve_until_eof_aio,
                ledger=server_ledger,
                identity=SERVER,
                receipts=tmp_path / "receipts.db",
                policy=POLICY,
            ),
            loop,
        ).result(10)

        def refresh() -> None:
            asyncio.run_coroutine_threadsafe(aio.refresh_policy(), loop).result(10)

        try:
            yield refresh
        finally:
            asyncio.run_coroutine_threadsafe(stop(aio), loop).result(30)
            server_ledger.close()


@pytest.mark.parametrize("kind", ["blocking", "asyncio"])
@pytest.mark.parametrize("connections", [1, 2])
def test_receipts_for_service_before_a_lowering_are_paid_after_a_refresh(
    ledger: LocalLedger, tmp_path: Path, kind: str, connections: int
) -> None:
    """The client lowers its cap to 0 with ``connections`` open on it, the server
    refreshes the caps, the client closes: each connection is paid in full for what it
    was served (its final receipt claimed). Before: the refresh left each gate a limit
    of what it had claimed, the final receipts were refused, older ones claimed."""
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "caps", SLA)
    cap = ledger.create_spending_cap(CLIENT, 100_000 * connections)
    with paid_server(kind, host_id, tmp_path) as refresh, contextlib.ExitStack() as stack:
        socks = [
            stack.enter_context(
                dtp.socket.create_connection(
                    f"dtp://{host_id}:{PORT}",
                    timeout=20,
                    ledger=ledger,
                    identity=CLIENT,
                    deposit=DEPOSIT,
                    cap_id=cap,
                    metering=MeteringConfig(every_bytes=64 << 10),
                )
            )
            for _ in range(connections)
        ]
        cids = [sock.connection_id for sock in socks]
        for sock in socks:
            sock.sendall(b"go")
        for sock in socks:
            got = 0
            while got < SERVED:
                got += len(sock.recv(1 << 16))
            # usage below the receipt cadence: only the final receipt pays for it
            sock.sendall(b"y" * EXTRA)
        ledger.set_max_per_epoch(CLIENT, cap, 0)
        refresh()  # the server reads the lowering before the final receipts come
        stack.close()
        settled: Callable[[], bool] = lambda: all(  # noqa: E731
            ledger.get_connection(c).settled for c in cids
        )
        assert wait_for(settled, timeout=30)
    claimed = [ledger.get_escrow(ledger.get_connection(c).escrow).claimed for c in cids]
    assert claimed == [fee(SLA, SERVED + 2 + EXTRA, 1)] * connections
    assert ledger.get_cap(cap).spent == sum(claimed)
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
