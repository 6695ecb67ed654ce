"""A paid client's check of a write on its lent stream (DTPSocket.sendall's fast path)
counts what other streams have queued. A loan that may take credit in the lane began
with nothing queued on any stream, and anything queued ends it, so its check reads the
usage alone; a loan lent while another stream's bytes wait (take_credit 0) may not
skip them: those bytes go out later, on what the deposit pays.

The hook here stands for the client's payment (dtp.hostid's ClientPayment): it pays up
to ``payable_bytes`` of usage and refuses a write past it, what is queued included, as
ConnectionHook.refuse_write says. The server grants a stream window smaller than
stream T's write, so T's bytes wait for its credit while the connection's credit
leaves stream S free to send."""

from __future__ import annotations

import math

import pytest

import dtp.socket
from dtp.errors import CLOSE_PAYMENT_REQUIRED, PaymentRequired
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import Connection, ConnectionConfig
from dtp.transport._hooks import ConnectionHook

SERVER_ID = HostIdentity.generate()
STREAM_WINDOW = 1024  # T's credit: less than its write, so the rest waits


class Deposit:
    """Pays the usage up to ``payable_bytes``, and refuses a write past it."""

    max_timer_wait = 5.0
    close_wait = 0.05
    keeps_clean_close = False
    quiet_bytes = 1 << 62
    quiet_until = math.inf

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.payable_bytes = 1 << 62
        self.refused: list[int] = []

    def refuse_write(self, nbytes: int, requests: int) -> str | None:
        if self.conn.used_bytes() + nbytes <= self.payable_bytes:
            return None
        self.refused.append(nbytes)
        return "the deposit cannot pay for this write"

    def on_output(self, now: float) -> None:
        pass

    def before_close(self) -> None:
        pass

    def after_close(self) -> None:
        pass


def _as_hook(deposit: Deposit) -> ConnectionHook:
    return deposit  # (mypy: a Deposit is a ConnectionHook)


def test_a_lent_write_is_checked_with_the_bytes_other_streams_queued() -> None:
    config = ConnectionConfig(
        identity=SERVER_ID,
        is_client=False,
        stream_window=STREAM_WINDOW,
        keepalive_interval=None,
        idle_timeout=3600,
    )
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID, config=config) as srv:
        s_client = dtp.socket.create_connection(
            srv.address, timeout=10, server_key=SERVER_ID.noise_public
        )
        s_server, _ = srv.accept(timeout=10)
        with s_client, s_server:
            s_server.settimeout(10)
            conn = s_client._engine.conn
            deposit = Deposit(conn)
            s_client.layer.set_hook(_as_hook(deposit), lambda receipt: None)
            s_client.sendall(b"s")
            assert s_server.recv(1) == b"s"
            t_client = s_client.open_stream()
            t_client.sendall(b"t" * (4 * STREAM_WINDOW))
            queued = conn.send_buffered()
            assert queued > 0  # T waits for its credit
            assert s_client.send(b"x") == 1  # S lent again, T's bytes still queued
            assert conn.lent_stream_id == s_client.stream_id
            assert not conn.lent_lane.flow.take_credit
            used = conn.used_bytes()
            piece = 100
            # the usage and the piece are paid; with T's queued bytes they are not
            deposit.payable_bytes = used + queued + piece - 1
            lent = conn.lent_stream_id == s_client.stream_id
            with pytest.raises(PaymentRequired) as refused:
                s_client.sendall(b"y" * piece)
            assert lent  # (the refused write's check was the lent one)
            assert refused.value.code == CLOSE_PAYMENT_REQUIRED
            assert deposit.refused == [queued + piece]
            assert conn.used_bytes() == used  # nothing of it went out
            got = b""
            with pytest.raises(PaymentRequired):  # (the server reads the client's CLOSE)
                while data := s_server.recv(100):
                    got += data
            assert got == b"x"
