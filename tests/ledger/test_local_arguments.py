"""LocalLedger refuses wrong-typed call arguments as the Sui transaction builders do;
its handle refuses a bad path or clock before creating anything, survives fork() and
fails typed after close(); events() honours its limit and refuses malformed cursors.

An int is never taken for that many zero bytes (an all-zero Noise key published on the
host), nor a str given as the whole endpoint list for one endpoint per character:
sui_tx refuses both, so a program tested against LocalLedger works on Sui.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dtp.errors import ChainError, InvalidArgument
from dtp.ledger.local import LocalLedger
from dtp.ledger.sui import _tx as sui_tx
from dtp.payments.receipts import Receipt
from tests.support.object_world import CLIENT, SERVER, SLA, World

# what sui_tx.encode_bytes refuses; bytes(32) == 32 zero bytes is the case that mattered
NOT_BYTES: list[Any] = [32, 0, None, 1.5, True, [1, 2], (b"a",)]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    ledger = LocalLedger(tmp_path / "ledger.sqlite", clock_ms=0)
    try:
        yield World(ledger)
    finally:
        ledger.close()


def refused(world: World, call: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    """``call`` raises InvalidArgument and leaves the ledger as it was; returns the text."""
    before = world.ledger.dump()
    with pytest.raises(InvalidArgument) as info:
        call(*args, **kwargs)
    assert world.ledger.dump() == before
    return str(info.value)


def byte_calls(w: World, bad: Any) -> dict[str, Callable[[], Any]]:
    """Every LocalLedger call with a ``vector<u8>`` argument, given ``bad`` there."""
    L = w.ledger
    r = Receipt(L.receipt_scope(w.connection), 1024, 0, 10, 1).sign(CLIENT)
    calls = {
        "create_host noise_static_key": lambda: L.create_host(SERVER, bad),
        "create_host endpoint": lambda: L.create_host(SERVER, SERVER.noise_public, [bad]),
        "set_noise_static_key": lambda: L.set_noise_static_key(SERVER, w.host, bad),
        "set_endpoints endpoint": lambda: L.set_endpoints(SERVER, w.host, ["a", bad]),
        "add_service kind": lambda: L.add_service(SERVER, w.host, 8, bad, SLA),
        "open_connection key": lambda: L.open_connection(CLIENT, w.host, 7, w.cap, 1000, bad),
        "claim signature": lambda: L.claim(
            SERVER, w.escrow, Receipt(L.receipt_scope(w.connection), 1024, 0, 10, 1, bad)
        ),
        "settle_with_receipt signature": lambda: L.settle_with_receipt(
            SERVER, w.connection, Receipt(L.receipt_scope(r.connection_id), 1024, 0, 10, 1, bad)
        ),
        "pipe_send data": lambda: L.pipe_send(CLIENT, w.pipe, 0, bad),
        "create_broadcast channel": lambda: L.create_broadcast(SERVER, bad, 1, 1000),
        "broadcast_transmit data": lambda: L.broadcast_transmit(SERVER, w.broadcast, bad),
        "mailbox_send payload": lambda: L.mailbox_send(CLIENT, w.host, bad),
        "response_escrow_deposit request_id": lambda: L.response_escrow_deposit(
            CLIENT, SERVER.sui_address, bad, 10, 10**6
        ),
        "response_escrow_deposit key": lambda: L.response_escrow_deposit(
            CLIENT, SERVER.sui_address, b"r", 10, 10**6, bad
        ),
        "response_escrow_claim hash": lambda: L.response_escrow_claim(
            SERVER, w.response, bad, bytes(64)
        ),
        "response_escrow_claim signature": lambda: L.response_escrow_claim(
            SERVER, w.response, bytes(32), bad
        ),
        "response_escrow_deliver response": lambda: L.response_escrow_deliver(
            SERVER, w.response, bad
        ),
        "create_ticket_sale title": lambda: L.create_ticket_sale(SERVER, bad, 1, 1, 2, 10**6),
        "send_retained data": lambda: L.send_retained(CLIENT, w.pipe, w.terms, 0, bad),
        "open_subscribed_connection key": lambda: L.open_subscribed_connection(
            CLIENT, w.subscription, w.cap, 0, bad
        ),
        "open_sponsored_connection key": lambda: L.open_sponsored_connection(
            CLIENT, w.pool, w.cap, 1000, bad
        ),
    }
    if bad is None:  # None is the default of the optional keys: the signer's own key
        calls = {name: call for name, call in calls.items() if not name.endswith(" key")}
    return calls


@pytest.mark.parametrize("bad", NOT_BYTES, ids=repr)
def test_byte_arguments_that_are_not_bytes_or_text_are_refused(world: World, bad: Any) -> None:
    # the Sui builders refuse the same values (the reference for LocalLedger)
    with pytest.raises(InvalidArgument, match="must be bytes or text"):
        sui_tx.encode_bytes(bad, "x")
    for name, call in byte_calls(world, bad).items():
        text = refused(world, call)
        assert "must be bytes or text" in text, (name, text)
        assert type(bad).__name__ in text, (name, text)


def test_an_int_key_is_not_published_as_zero_bytes(world: World) -> None:
    # the reported case: 32 was stored as an all-zero Noise key
    text = refused(world, world.ledger.create_host, SERVER, 32)
    assert text == "noise_static_key must be bytes or text, got int."
    refused(world, world.ledger.set_noise_static_key, SERVER, world.host, 32)
    assert world.ledger.get_host(world.host).noise_static_key == SERVER.noise_public


@pytest.mark.parametrize("single", ["127.0.0.1:7000", b"127.0.0.1:7000", bytearray(b"x")])
def test_a_single_endpoint_is_not_a_list_of_endpoints(world: World, single: Any) -> None:
    with pytest.raises(InvalidArgument, match="single value"):
        sui_tx.encode_vec_bytes(single)
    L = world.ledger
    text = refused(world, L.create_host, SERVER, SERVER.noise_public, single)
    assert text == "Expected a sequence of endpoints, got a single value."
    refused(world, L.set_endpoints, SERVER, world.host, single)
    assert L.get_host(world.host).endpoints == (b"tcp://127.0.0.1:7000",)


def test_endpoints_that_are_no_sequence_are_refused(world: World) -> None:
    refused(world, world.ledger.create_host, SERVER, SERVER.noise_public, 5)
    refused(world, world.ledger.set_endpoints, SERVER, world.host, None)


def test_what_sui_tx_accepts_is_accepted(world: World) -> None:
    # text and every buffer type encode as sui_tx encodes them
    L = world.ledger
    host = L.create_host(
        SERVER, bytearray(SERVER.noise_public), ("a:1", b"b:2", bytearray(b"c:3"), memoryview(b"d"))
    )
    assert L.get_host(host).endpoints == (b"a:1", b"b:2", b"c:3", b"d")
    L.set_endpoints(SERVER, host, (e for e in ["x:1"]))  # any iterable, as sui_tx
    assert L.get_host(host).endpoints == (b"x:1",)
    L.set_noise_static_key(SERVER, host, memoryview(bytes(range(32))))
    assert L.get_host(host).noise_static_key == bytes(range(32))
    L.add_service(SERVER, host, 8, b"echo", SLA)  # sui_tx takes bytes for kind
    assert L.get_host(host).services[8].kind == "echo"
    L.create_broadcast(SERVER, b"chan", 1, 1000)
    L.create_ticket_sale(SERVER, b"title", 1, 1, 2, 10**6)
    assert L.pipe_send(CLIENT, world.pipe, 0, "hi") >= 0


def test_sla_and_receipt_of_the_wrong_type_are_refused(world: World) -> None:
    L = world.ledger
    assert "must be an Sla" in refused(world, L.add_service, SERVER, world.host, 9, "x", (1, 1, 1))
    refused(world, L.update_service, SERVER, world.host, 7, None)
    assert "must be a Receipt" in refused(world, L.claim, SERVER, world.escrow, None)
    refused(world, L.settle_with_receipt, SERVER, world.connection, (1, 2, 3))


@pytest.mark.parametrize("mode", [True, False, 1.0, "1", 256, -1])
def test_set_firewall_mode_takes_a_u8_and_no_bool(world: World, mode: Any) -> None:
    with pytest.raises(InvalidArgument):
        sui_tx.encode_u8(mode, "The firewall mode")
    refused(world, world.ledger.set_firewall_mode, SERVER, world.host, mode)


# -- the handle: its path, fork(), close() --------------------------------------------------


@pytest.mark.parametrize("path", [None, 5, b"ledger.sqlite", 1.5])
def test_a_path_that_is_not_text_is_refused_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: Any
) -> None:
    monkeypatch.chdir(tmp_path)  # str(path) made files named ./None and ./5 here
    with pytest.raises(TypeError, match="ledger path"):
        LocalLedger(path)
    assert list(tmp_path.iterdir()) == []


def test_an_empty_path_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidArgument, match="empty"):
        LocalLedger("")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("clock_ms", [-1, 1.5, True, "0", 2**64])
def test_a_bad_clock_is_refused_before_the_file_is_created(tmp_path: Path, clock_ms: Any) -> None:
    path = tmp_path / "sub" / "ledger.sqlite"
    with pytest.raises(InvalidArgument, match="clock_ms"):
        LocalLedger(path, clock_ms=clock_ms)
    assert not (tmp_path / "sub").exists()


def test_a_pathlike_path_is_taken(tmp_path: Path) -> None:
    with LocalLedger(tmp_path / "ledger.sqlite", clock_ms=5) as ledger:
        assert ledger.path == str(tmp_path / "ledger.sqlite")
        assert ledger.clock_ms() == 5


def _in_child(call: Callable[[], str]) -> str:
    """Run ``call`` in a forked child; its result, or raise with the child's error."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running pytest's teardown
        code = 1
        try:
            os.write(w, b"ok:" + call().encode())
            code = 0
        except BaseException as exc:
            os.write(w, f"{type(exc).__name__}: {exc}".encode()[:1000])
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as out:
        text = out.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert text.startswith("ok:"), text
    return text[3:]


def test_a_handle_carried_across_fork_works_in_child_and_parent(tmp_path: Path) -> None:
    with LocalLedger(tmp_path / "ledger.sqlite") as ledger:
        ledger.faucet(CLIENT.sui_address, 10**6)
        first = ledger.create_spending_cap(CLIENT, 1)  # in use before the fork
        child_cap = _in_child(lambda: ledger.create_spending_cap(CLIENT, 2))
        # the child drew fresh nonces: the parent's next one is no replay of its
        # (before: InvalidTransaction "replayed transaction" here)
        parent_cap = ledger.create_spending_cap(CLIENT, 3)
        caps = {first: 1, child_cap: 2, parent_cap: 3}
        assert {c: ledger.get_cap(c).max_per_epoch for c in caps} == caps
        # the child's own connection is its own to close; the parent's goes on
        _in_child(lambda: str(ledger.close()))
        assert ledger.get_cap(child_cap).max_per_epoch == 2
        ledger.create_spending_cap(CLIENT, 4)


def test_a_memory_ledger_carried_across_fork_is_the_childs_own_copy() -> None:
    with LocalLedger(":memory:") as ledger:
        ledger.faucet(CLIENT.sui_address, 10**6)
        cap = ledger.create_spending_cap(CLIENT, 1)

        def child() -> str:
            assert ledger.get_cap(cap).max_per_epoch == 1
            return ledger.create_spending_cap(CLIENT, 2)

        child_cap = _in_child(child)
        assert [ref.object_id for ref in ledger.objects("SpendingCap")] == [cap]
        assert child_cap != cap
        ledger.create_spending_cap(CLIENT, 3)


def test_calls_after_close_raise_a_typed_error(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    ledger.close()
    for call in (ledger.epoch, lambda: ledger.faucet(CLIENT.sui_address, 1), ledger.events):
        with pytest.raises(ChainError, match="is closed") as info:
            call()
        assert info.value.name == "LedgerUnavailable"
    ledger.close()  # again: nothing happens
    with LocalLedger(tmp_path / "ledger.sqlite") as again:
        pass
    with pytest.raises(ChainError, match="is closed"):
        again.clock_ms()


# -- events ------------------------------------------------------------------------------------


def test_events_returns_at_most_limit(world: World) -> None:
    L = world.ledger
    cursor = L.head_cursor()
    assert cursor is not None and int(cursor) > 3
    for limit in (0, -5):
        # before: one event whatever the limit
        assert L.events(None, None, limit) == ([], None)
        assert L.events("1", None, limit) == ([], "1")
    events, after = L.events(None, None, 2)
    assert len(events) == 2 and after == events[-1].cursor
    with pytest.raises(InvalidArgument):
        L.events(None, None, 1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("cursor", [str(2**70), str(2**63), " 3 ", "-0", "1_0", "x", "٣", 3])
def test_a_malformed_cursor_is_refused(world: World, cursor: Any) -> None:
    with pytest.raises(InvalidArgument, match="not a LocalLedger event cursor"):
        world.ledger.events(cursor)


def test_a_cursor_past_the_last_event_returns_nothing(world: World) -> None:
    assert world.ledger.events(str(2**63 - 1)) == ([], str(2**63 - 1))


@pytest.mark.parametrize("timeout", ["1", None, True, float("nan")], ids=repr)
def test_wait_events_takes_a_number_of_seconds(world: World, timeout: Any) -> None:
    with pytest.raises(InvalidArgument, match="timeout"):
        world.ledger.wait_events(None, timeout)
    assert world.ledger.wait_events(world.ledger.head_cursor(), 0)[0] == []


def test_setting_the_clock_back_is_a_typed_error(world: World) -> None:
    world.ledger.set_clock(100)
    with pytest.raises(InvalidArgument, match="cannot go back"):
        world.ledger.set_clock(99)
    assert world.ledger.clock_ms() == 100
