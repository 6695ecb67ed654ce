"""A ledger carrier that creates its pipe does not read it back: the read failing (the
ledger unavailable for a moment) left the new pipe behind, and the listener's retry
created a second one -- an orphan the host paid to store, which the client also took
for a pipe of its peer (found by a second reader)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dtp.carriers.ledger_bridge import LedgerCarrierOptions, LedgerListener
from dtp.chain.local import LocalLedger
from dtp.chain.objects import EventFilter
from dtp.errors import ChainError
from tests.test_ledger_carrier_sockets import CLIENT, DEPOSIT, PORT, SERVER, SLA


class _Flaky:
    """The ledger, whose next ``get_pipe`` fails as an unavailable node's does."""

    def __init__(self, ledger: LocalLedger) -> None:
        self._ledger = ledger
        self.fails = 1

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._ledger, name)
        if name != "get_pipe":
            return attr

        def get_pipe(*args: Any, **kwargs: Any) -> Any:
            if self.fails:
                self.fails -= 1
                raise ChainError("node does not answer", name="LedgerUnavailable")
            return attr(*args, **kwargs)

        return get_pipe


def test_one_host_pipe_per_connection_when_a_read_fails(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.db")
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "echo", SLA)
    ledger.faucet(CLIENT.sui_address, 1_000_000)
    cap = ledger.create_spending_cap(CLIENT, DEPOSIT)
    cid = ledger.open_connection(CLIENT, host_id, PORT, cap, DEPOSIT).connection_id
    accepted: list[Any] = []
    listener = LedgerListener(
        ledger,
        SERVER,
        host_id,
        PORT,
        accepted.append,
        options=LedgerCarrierOptions(ledger_filter=_Flaky),
        poll=0.02,
    )
    try:
        ledger.create_pipe(CLIENT, cid, 4)  # the client reaches the host over the ledger
        deadline = time.monotonic() + 10
        while not accepted and time.monotonic() < deadline:
            time.sleep(0.02)
        assert accepted
        time.sleep(0.3)  # (a retry, had there been one, made its pipe by now)
        created, _ = ledger.events(filter=EventFilter(type="PipeCreated"), limit=100)
        host_pipes = [e["pipe"] for e in created if e["owner"] == SERVER.sui_address]
        assert len(host_pipes) == 1, host_pipes
    finally:
        for bridge in accepted:
            bridge.socket.close()
            bridge.join(5)
        listener.close()
    destroyed, _ = ledger.events(filter=EventFilter(type="PipeDestroyed"), limit=100)
    assert sum(1 for e in destroyed if e["pipe"] in host_pipes) == 1
    ledger.close()
