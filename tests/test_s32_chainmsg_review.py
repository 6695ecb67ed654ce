"""Review of the local ledger's messages, the messaging and ledger-carrier argument
checks, and the replay guard; each test fails on the old code:

- LocalLedger wrote the package of a foreign abort (``std::string``'s EInvalidUTF8) as
  ``0x1``; Sui gives an abort's location with the full package ID, 64 hex digits.
- The ledger methods whose Move side takes a ``vector<u8>`` through ``string::utf8``
  (ticket title, service kind, broadcast channel) take bytes too, but said ``str``.
- The messaging waits refused an infinite timeout with ValueError; ``socket.settimeout``
  raises OverflowError for it (and for -inf), as for any value past TIMEOUT_MAX.
- LedgerCarrierOptions (and the carrier) refused a wrong type with ValueError, where the
  messaging checks raise TypeError.
- The replay guard held a key whose admission was still being decided in the unaccepted
  pool, so a flood of throw-away handshakes in that window pushed it out and its replay
  came through.
"""

from __future__ import annotations

import inspect
import math
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui_prot
import pytest

import dtp.socket
from dtp._state import ConnState
from dtp.carriers.ledger_bridge import LedgerCarrierOptions
from dtp.chain.local import LocalLedger
from dtp.chain.objects import Sla
from dtp.chain.sui import execution_error
from dtp.connection import Connection, ConnectionConfig
from dtp.crypto import PATTERN_IK
from dtp.errors import ChainError, ConnectionRefused
from dtp.keys import HostIdentity
from dtp.messaging.protocol import _check_wait
from dtp.replay_guard import ReplayGuard
from tests.polling import wait_for
from tests.transport.test_handshake_slots import CLIENT, SERVER
from tests.transport.test_replay_guard import Recorder, closed_within, replay

BOUND = 30.0
STD = "0x" + "0" * 63 + "1"  # the Move standard library's package, as Sui writes it
PACKAGE = "0x" + "ab" * 32


# -- 1. a foreign abort names its package as Sui does ---------------------------------------------


def test_a_foreign_abort_names_the_full_package_id_as_sui_does(tmp_path: Path) -> None:
    signer = HostIdentity.from_private_bytes(b"\x33" * 32, b"\x33" * 32)
    ledger = LocalLedger(tmp_path / "ledger.sqlite", clock_ms=0)
    try:
        ledger.faucet(signer.sui_address, 100_000)
        with pytest.raises(ChainError) as info:
            ledger.create_ticket_sale(signer, b"\xff\xfe", 10, 1, 0, 1000)
    finally:
        ledger.close()
    error = sui_prot.ExecutionError(
        kind=sui_prot.ExecutionErrorExecutionErrorKind.MOVE_ABORT,
        abort=sui_prot.MoveAbort(
            abort_code=1, location=sui_prot.MoveLocation(package=STD, module="string")
        ),
    )
    sui = execution_error(error, [PACKAGE], "tickets::create")
    where = f"Transaction aborted in {STD}::string with code 1: "
    assert str(sui).startswith(where)
    assert str(info.value).startswith(where), str(info.value)  # was "0x1::string"
    assert (info.value.name, info.value.module, info.value.code) == ("MoveAbort", "string", 1)


# -- 2. utf8 arguments say they take bytes ---------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "argument"),
    [("create_ticket_sale", "title"), ("add_service", "kind"), ("create_broadcast", "channel")],
)
def test_the_utf8_arguments_of_the_local_ledger_say_they_take_bytes(
    method: str, argument: str
) -> None:
    annotation = inspect.signature(getattr(LocalLedger, method)).parameters[argument].annotation
    assert annotation == "str | bytes"


def test_bytes_given_for_a_kind_and_a_channel_are_taken_or_abort_in_std_string(
    tmp_path: Path,
) -> None:
    signer = HostIdentity.from_private_bytes(b"\x33" * 32, b"\x33" * 32)
    ledger = LocalLedger(tmp_path / "ledger.sqlite", clock_ms=0)
    try:
        ledger.faucet(signer.sui_address, 100_000)
        host = ledger.create_host(signer, b"\x01" * 32)
        ledger.add_service(signer, host, 7, "café".encode(), Sla(10, 5, 1000))
        assert ledger.get_host(host).services[7].kind == "café"
        for call in (
            lambda: ledger.add_service(signer, host, 8, b"\xff", Sla(10, 5, 1000)),
            lambda: ledger.create_broadcast(signer, b"\xff", 10, 1000),
        ):
            with pytest.raises(ChainError) as info:
                call()
            assert str(info.value).startswith(f"Transaction aborted in {STD}::string")
    finally:
        ledger.close()


# -- 3. the messaging waits refuse a timeout as a socket does --------------------------------------


WAITS: list[Any] = [
    math.inf,
    -math.inf,
    math.nan,
    -1,
    -0.5,
    threading.TIMEOUT_MAX * 2,
    2**64,
    -(2**64),
    threading.TIMEOUT_MAX,
    0,
    1.5,
]


def _raised(call: Callable[[], object]) -> type[BaseException] | None:
    try:
        call()
    except Exception as exc:
        return type(exc)
    return None


def test_a_messaging_wait_refuses_a_timeout_as_socket_settimeout_does() -> None:
    with socket.socket() as sock:
        expected = {repr(t): _raised(lambda t=t: sock.settimeout(t)) for t in WAITS}
    got = {repr(t): _raised(lambda t=t: _check_wait(t)) for t in WAITS}
    assert got == expected  # (inf and -inf: ValueError before)
    assert expected["inf"] is OverflowError


# -- 4. carrier options: TypeError for a wrong type, ValueError out of range ----------------------


WRONG_TYPES: list[dict[str, Any]] = [
    {"inner_count": 2.5},
    {"inner_count": True},
    {"sync_every": "4"},
    {"max_payload": 1000.5},
    {"poll_min": "0.1"},
    {"gap_timeout": None},
    {"outage_timeout": True},
]
OUT_OF_RANGE: list[dict[str, Any]] = [
    {"inner_count": 9},
    {"sync_every": 0},
    {"max_payload": 10},
    {"poll_min": math.nan},
]


def test_carrier_options_of_a_wrong_type_are_a_type_error_out_of_range_a_value_error() -> None:
    for bad in WRONG_TYPES:
        with pytest.raises(TypeError, match=next(iter(bad))):  # (ValueError before)
            LedgerCarrierOptions(**bad)
    for bad in OUT_OF_RANGE:
        with pytest.raises(ValueError, match=next(iter(bad))):
            LedgerCarrierOptions(**bad)


# -- 5. a key under decision survives a flood ------------------------------------------------------


class _Conn:
    """What the guard reads of a server connection: its state and its message 1."""

    def __init__(self, key: bytes) -> None:
        self.state = ConnState.SERVER_DECIDING
        self.first_handshake_message = bytes([PATTERN_IK]) + key + b"rest of message 1"


def _sight(guard: ReplayGuard, conn: _Conn) -> bool:
    """Whether the guard refuses ``conn`` as a replay."""
    return guard.is_replay(cast(Connection, conn))


def test_a_key_under_decision_survives_a_flood_and_its_replay_is_refused() -> None:
    capacity = 4
    guard = ReplayGuard(capacity=capacity)
    held = _Conn(b"h" * 32)
    assert not _sight(guard, held)
    held.state = ConnState.AUTHENTICATING  # message 2 went out; the ledger decides
    flood = [_Conn(i.to_bytes(32, "big")) for i in range(10 * capacity)]
    for conn in flood:
        assert not _sight(guard, conn)
        conn.state = ConnState.CLOSED  # refused
    # the old guard had pushed the held key out of its unaccepted pool by now
    assert _sight(guard, _Conn(b"h" * 32))
    # accepted at last: kept among the accepted keys, which no refused flood pushes out
    held.state = ConnState.ESTABLISHED
    guard.accepted(cast(Connection, held))
    for i in range(10 * capacity):
        conn = _Conn((1000 + i).to_bytes(32, "big"))
        assert not _sight(guard, conn)
        conn.state = ConnState.CLOSED
    assert _sight(guard, _Conn(b"h" * 32))
    assert guard.refused == 2
    # the refused ones went on to the unaccepted pool: its capacity bounds them again
    assert len(guard) <= 1 + capacity + 2 * 1 + 2


def test_keys_under_decision_stay_about_the_admissions_in_progress() -> None:
    guard = ReplayGuard(capacity=8)
    deciding = [_Conn(b"d" + bytes([i]) * 31) for i in range(5)]
    for conn in deciding:
        assert not _sight(guard, conn)
    for i in range(1000):
        conn = _Conn(i.to_bytes(32, "big"))
        assert not _sight(guard, conn)
        conn.state = ConnState.CLOSED
        # (those in progress now: the five, and this one until the next comes)
        assert len(guard._deciding) <= 2 * (len(deciding) + 1) + 2
    for conn in deciding:  # none was pushed out meanwhile
        assert _sight(guard, _Conn(conn.first_handshake_message[1:33]))
    # a refused one, decided, is forgotten with the unaccepted pool as before
    deciding[0].state = ConnState.CLOSED
    for i in range(100):
        _sight(guard, _Conn((5000 + i).to_bytes(32, "big")))
    assert not _sight(guard, _Conn(deciding[0].first_handshake_message[1:33]))


def test_a_connection_gone_undecided_leaves_the_keys_under_decision() -> None:
    guard = ReplayGuard(capacity=8)
    gone = _Conn(b"g" * 32)
    assert not _sight(guard, gone)
    del gone  # (no reference kept by the guard: its key leaves for the unaccepted pool)
    assert not _sight(guard, _Conn(b"n" * 32))
    assert list(guard._deciding) == [b"n" * 32]
    assert _sight(guard, _Conn(b"g" * 32))  # still remembered


@pytest.fixture
def server() -> Iterator[tuple[dtp.socket.DTPServer, threading.Event, threading.Event]]:
    """A blocking server with a small guard whose accept hook holds CLIENT's admission
    (``entered`` set, until ``release``) and refuses every other identity."""
    entered, release = threading.Event(), threading.Event()

    def hook(address: str) -> str | None:
        if address != CLIENT.sui_address:
            return "a throw-away identity"
        entered.set()
        release.wait(BOUND)
        return None

    def echo(sock: dtp.socket.DTPSocket) -> None:
        sock.sendall(sock.recv(100))

    config = ConnectionConfig(
        identity=SERVER, is_client=False, handshake_timeout=BOUND, idle_timeout=BOUND
    )
    server = dtp.socket.DTPServer(("127.0.0.1", 0), SERVER, config=config, accept=hook)
    server._replays = ReplayGuard(capacity=2)
    thread = threading.Thread(target=server.serve_forever, args=(echo,), daemon=True)
    thread.start()
    try:
        yield server, entered, release
    finally:
        release.set()
        server.close()
        thread.join(BOUND)


def _throwaway(address: tuple[str, int]) -> None:
    with pytest.raises(ConnectionRefused):
        dtp.socket.create_connection(
            address, timeout=BOUND, server_key=SERVER.noise_public, identity=HostIdentity.generate()
        ).close()


def test_a_flood_while_a_client_is_admitted_does_not_unlock_its_replay(
    server: tuple[dtp.socket.DTPServer, threading.Event, threading.Event],
) -> None:
    srv, entered, release = server
    recorder = Recorder(srv.address)
    replies: list[bytes] = []

    def client() -> None:
        with dtp.socket.create_connection(
            recorder.address, timeout=BOUND, server_key=SERVER.noise_public, identity=CLIENT
        ) as sock:
            sock.sendall(b"held")
            replies.append(sock.recv(100))

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    replayed: list[socket.socket] = []
    try:
        assert entered.wait(BOUND)  # its admission runs, its message 1 recorded
        message = recorder.first_messages[0]
        for _ in range(3):  # more than the guard's capacity
            _throwaway(srv.address)
        assert wait_for(lambda: srv.refused >= 3, BOUND)
        replayed.append(replay(srv.address, message))
        # (the old guard let it through to the hook, where it waited with the original)
        assert wait_for(lambda: srv.replays_refused == 1, 5.0)
        assert closed_within(replayed[0])
        release.set()
        thread.join(BOUND)
        assert replies == [b"held"]
        for _ in range(3):
            _throwaway(srv.address)
        replayed.append(replay(srv.address, message))
        assert closed_within(replayed[1])
        assert srv.replays_refused == 2
    finally:
        release.set()
        for sock in replayed:
            sock.close()
        thread.join(BOUND)
        recorder.close()
