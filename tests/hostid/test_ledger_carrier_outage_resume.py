"""A ledger-carrier connection rides out a ledger that stops answering for a while
(``LedgerUnavailable``: on Sui, one failed or timed-out RPC to the node): what could
not be posted meanwhile is lost as on a lossy link and retransmitted by the connection,
and reading resumes where it stopped. Only an outage longer than
``LedgerCarrierOptions.outage_timeout`` ends the connection, with the ledger's error as
the cause; a single failed call does not."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import dtp.socket
from dtp.errors import ChainError, ConnectionLost
from dtp.hostid.ledger_carrier._bridge import LedgerCarrierOptions
from dtp.ledger.interface import Ledger
from tests.hostid.outages import AbortingEcho, says_why
from tests.support.ledger_carrier_world import CLIENT, DEPOSIT, Host, host, server_in_thread
from tests.support.reads import recv_exactly

__all__ = ["host"]  # (the fixture, imported)


class _Flaky:
    """A ledger whose calls fail as an unreachable node's do while ``down`` is set."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self.down = threading.Event()
        self.failed = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._ledger, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kw: Any) -> Any:
            if self.down.is_set():
                self.failed += 1
                raise ChainError("the node does not answer", name="LedgerUnavailable")
            return attr(*args, **kw)

        return call


def _options(outage_timeout: float) -> tuple[LedgerCarrierOptions, list[_Flaky]]:
    made: list[_Flaky] = []

    def wrap(ledger: Ledger) -> Ledger:
        made.append(_Flaky(ledger))
        return made[-1]  # type: ignore[return-value]

    options = LedgerCarrierOptions(
        ledger_filter=wrap, peer_close_grace=0.2, outage_timeout=outage_timeout
    )
    return options, made


@contextlib.contextmanager
def _echo_connection(
    host: Host, options: LedgerCarrierOptions, timeout: float
) -> Iterator[dtp.socket.DTPSocket]:
    """A ledger-carrier connection (ours with ``options``) to an echo server in a
    thread; the server's side is aborted at the end (our ledger may be down: its
    bridge would wait for the idle timeout)."""
    echo = AbortingEcho()
    with (
        server_in_thread(host, echo),
        dtp.socket.create_connection(
            host.address,
            ledger=host.ledger,
            identity=CLIENT,
            deposit=DEPOSIT,
            timeout=timeout,
            ledger_options=options,
        ) as sock,
    ):
        try:
            yield sock
        finally:
            echo.abort()


def test_a_short_outage_loses_nothing(host: Host) -> None:
    options, made = _options(outage_timeout=20.0)
    with _echo_connection(host, options, 30) as sock:
        sock.sendall(b"hi")
        assert recv_exactly(sock, 2) == b"hi"
        flaky = made[0]
        flaky.down.set()
        # written while the client's ledger is down: nothing can be posted or read
        message = os.urandom(3000)
        sock.sendall(message)
        deadline = time.monotonic() + 10
        while flaky.failed < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert flaky.failed >= 5  # the bridge kept trying
        time.sleep(0.3)  # (an outage of a while: the bridge must keep riding it)
        flaky.down.clear()
        assert recv_exactly(sock, len(message)) == message
        sock.sendall(b"after")
        assert recv_exactly(sock, 5) == b"after"


def test_an_outage_past_the_timeout_ends_the_connection_with_the_cause(host: Host) -> None:
    options, made = _options(outage_timeout=0.5)
    with _echo_connection(host, options, 15) as sock:
        sock.sendall(b"hi")
        assert recv_exactly(sock, 2) == b"hi"
        made[0].down.set()
        started = time.monotonic()
        with pytest.raises(ConnectionLost) as lost:
            sock.recv(2)
        assert time.monotonic() - started >= 0.45  # it waited out the timeout first
    says_why(lost.value)  # (ChainError LedgerUnavailable as the cause)


@pytest.mark.parametrize("bad", [-1.0, float("inf"), float("nan")])
def test_outage_timeout_is_checked(bad: float) -> None:
    with pytest.raises(ValueError, match="outage_timeout"):
        LedgerCarrierOptions(outage_timeout=bad)
