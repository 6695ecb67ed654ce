"""Broadcast stations over real DTP connections on a LocalLedger: on/off air as the pool
runs out and is topped up (with the slot math of docs/escrow.md §9 and conservation
checked by ``audit()``), signed messages (a forged or replayed one is rejected and
counted), tips and requests, and cancel → pooled refunds."""

from __future__ import annotations

import threading
import time

import pytest

import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.messaging import errors as E
from dtp.messaging._framing import encode_frame
from dtp.messaging.broadcast import (
    AIR,
    MESSAGE,
    AirChange,
    BroadcastListener,
    BroadcastMessage,
    BroadcastStation,
    signed_message,
    verify_message,
)
from tests.messaging.broadcast_world import (
    PRICE,
    SLOT_MS,
    World,
    hello_frame,
    station_and_listener,
)
from tests.support.polling import wait_for


def next_item(listener: BroadcastListener, timeout: float = 10.0) -> BroadcastMessage | AirChange:
    return listener.get(timeout=timeout)


def test_on_and_off_air_with_slot_math(world: World) -> None:
    w = world
    station, listener = station_and_listener(w)
    try:
        assert not station.check()
        with pytest.raises(E.OffAir):
            station.send(b"too early")
        listener.contribute(250)  # covers slots 0 and 1 (and half of 2)
        assert station.check()
        assert next_item(listener) == AirChange(True, "covered", 1)
        assert station.send(b"slot 0") == 1
        msg = next_item(listener)
        assert isinstance(msg, BroadcastMessage)
        assert (msg.channel, msg.seq, msg.payload, msg.missed_before) == ("radio", 1, b"slot 0", 0)

        w.ledger.advance_clock(SLOT_MS)  # slot 1: slot 0 paid, pool 150 covers it
        assert station.send(b"slot 1") == 2
        assert next_item(listener).payload == b"slot 1"  # type: ignore[union-attr]

        w.ledger.advance_clock(SLOT_MS)  # slot 2: slot 1 paid, pool 50 < price
        with pytest.raises(E.OffAir):
            station.send(b"slot 2")
        assert next_item(listener) == AirChange(False, "pool exhausted", 3)
        assert not listener.on_air
        assert station.claim() == 2 * PRICE
        b = w.ledger.get_broadcast(w.broadcast_id)
        assert (b.paid_slots, b.pool, b.earned) == (2, 50, 0)
        w.conserved()

        # three slots pass off air: never charged
        w.ledger.advance_clock(3 * SLOT_MS)
        listener.contribute(100)  # pool 150 covers slot 5
        assert station.send(b"slot 5") == 3
        assert next_item(listener) == AirChange(True, "covered", 3)
        assert next_item(listener).payload == b"slot 5"  # type: ignore[union-attr]
        w.ledger.advance_clock(SLOT_MS)  # slot 6: slot 5 paid, pool 50
        assert station.claim() == PRICE
        b = w.ledger.get_broadcast(w.broadcast_id)
        assert (b.paid_slots, b.pool, b.total_contributed) == (3, 50, 350)
        assert w.ledger.balance(w.caster.sui_address) == 3 * PRICE
        assert w.ledger.balance(w.fans[0].sui_address) == 10_000 - 350
        w.conserved()
    finally:
        station.close()


def test_monitor_tells_listeners_when_the_pool_runs_out(world: World) -> None:
    w = world
    station, listener = station_and_listener(w)
    try:
        listener.contribute(PRICE)
        station.start_monitor(0.02)
        assert next_item(listener) == AirChange(True, "covered", 1)
        w.ledger.advance_clock(SLOT_MS)
        assert next_item(listener) == AirChange(False, "pool exhausted", 1)
    finally:
        station.close()


def test_forged_and_replayed_messages_rejected(world: World) -> None:
    w = world
    impostor = HostIdentity.generate()
    s_side, l_side = w.pair()
    listener = BroadcastListener(l_side, ledger=w.ledger, broadcast_id=w.broadcast_id)
    pub = w.caster.ed25519_public
    session = b"\x01" * 16

    def frame(seq: int, payload: bytes, signer: HostIdentity) -> bytes:
        sig = signer.sign(signed_message(w.broadcast_id, "radio", session, seq, payload))
        return encode_frame([MESSAGE, "radio", seq, payload, sig])

    good = frame(1, b"real", w.caster)
    s_side.sendall(hello_frame(w.caster, w.broadcast_id, session))
    s_side.sendall(frame(1, b"fake", impostor))  # forged
    s_side.sendall(good)
    s_side.sendall(good)  # replayed
    s_side.sendall(frame(3, b"later", w.caster))  # seq 2 missed
    s_side.sendall(frame(2, b"late", w.caster))  # out of order
    s_side.sendall(encode_frame([AIR, False, "pool exhausted", 4]))
    assert next_item(listener).payload == b"real"  # type: ignore[union-attr]
    later = next_item(listener)
    assert isinstance(later, BroadcastMessage) and later.missed_before == 1
    assert next_item(listener) == AirChange(False, "pool exhausted", 4)
    assert (listener.forged, listener.replayed, listener.received) == (1, 2, 2)
    assert isinstance(listener.last_error, E.ReplayedBroadcast)

    with pytest.raises(E.ForgedBroadcast):
        verify_message(pub, w.broadcast_id, "radio", session, 1, b"fake", b"\x00" * 64)
    # the same signature under another broadcast ID is not valid (domain separation)
    sig = w.caster.sign(signed_message(w.broadcast_id, "radio", session, 1, b"x"))
    with pytest.raises(E.ForgedBroadcast):
        verify_message(pub, "0x" + "ab" * 32, "radio", session, 1, b"x", sig)


def test_impostor_station_rejected(world: World) -> None:
    w = world
    impostor = HostIdentity.generate()
    s_side, l_side = w.pair()
    listener = BroadcastListener(l_side, ledger=w.ledger, broadcast_id=w.broadcast_id)
    s_side.sendall(hello_frame(impostor, w.broadcast_id))
    assert listener.closed.wait(10)
    assert not listener.hello.is_set() and listener.forged == 1
    with pytest.raises(E.StationError):
        BroadcastStation(w.ledger, impostor, w.broadcast_id)


def test_tips_and_requests(world: World) -> None:
    w = world
    station, listener = station_and_listener(w)
    try:
        listener.request("play the blues")
        req = station.requests.get(timeout=10)
        assert (req.listener, req.text) == ("fan0", "play the blues")
        tip_id = listener.tip(300, "great show")
        tip = station.tips.get(timeout=10)
        assert (tip.address, tip.amount, tip.message, tip.tip_id) == (
            w.fans[0].sui_address,
            300,
            "great show",
            tip_id,
        )
        assert w.ledger.get_broadcast(w.broadcast_id).pool == 300
        # a tip not covered by contributions (sent without paying) is refused
        from dtp.messaging.broadcast import TIP, signed_tip

        fake_id = b"\x05" * 16
        assert listener.session == station.session
        sig = w.fans[0].sign(signed_tip(w.broadcast_id, station.session, fake_id, 1, "free"))
        listener._send([TIP, fake_id, 1, "free", w.fans[0].ed25519_public, sig])
        listener._send([TIP, tip_id, 1, "bad sig", w.fans[0].ed25519_public, sig])
        listener.request("sync")
        assert station.requests.get(timeout=10).text == "sync"
        assert station.invalid_tips == 2 and station.tips.empty()
        with pytest.raises(E.PayloadTooLarge):
            listener.tip(1, "x" * 300)
    finally:
        station.close()


def test_cancel_refunds_pooled(world: World) -> None:
    w = world
    station, first = station_and_listener(w, 0)
    s_side, l_side = w.pair()
    second = BroadcastListener(
        l_side, ledger=w.ledger, identity=w.fans[1], broadcast_id=w.broadcast_id
    )
    station.attach(s_side, "fan1")
    assert second.wait_hello(10)
    try:
        first.contribute(300)
        second.contribute(100)
        assert station.check()
        w.ledger.advance_clock(SLOT_MS + SLOT_MS // 2)  # slot 0 paid; slot 1 in progress
        station.cancel()
        for listener in (first, second):
            items = [next_item(listener) for _ in range(2)]
            assert items[-1] == AirChange(False, "cancelled", 1)
        with pytest.raises(E.OffAir):
            station.send(b"after cancel")
        # pool 300 after one paid slot; refunds in proportion 3:1, the last one out
        # takes the remainder
        assert first.withdraw() == 300 * 300 // 400
        assert second.withdraw() == 300 - 300 * 300 // 400
        assert station.claim() == PRICE
        assert w.ledger.balance(w.fans[0].sui_address) == 10_000 - 300 + 225
        assert w.ledger.balance(w.fans[1].sui_address) == 10_000 - 100 + 75
        w.conserved()
        assert w.ledger.audit()["broadcasts"] == 0
    finally:
        station.close()


def test_slow_listener_does_not_stall_the_station(world: World) -> None:
    w = world
    station = BroadcastStation(w.ledger, w.caster, w.broadcast_id, link_queue=4)
    s_side, _l_side = w.pair()  # nobody reads it
    station.attach(s_side, "stuck")
    w.ledger.broadcast_contribute(w.fans[0], w.broadcast_id, PRICE)
    done = threading.Event()

    def blast() -> None:
        for _ in range(2000):
            station.send(b"x" * 4096)
        done.set()

    threading.Thread(target=blast, daemon=True).start()
    try:
        assert done.wait(30)
    finally:
        station.close()


def blocked_get(listener: BroadcastListener) -> tuple[threading.Thread, list[BaseException]]:
    """A thread waiting in ``listener.get()`` (no timeout); what it raised goes in the list."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            listener.get()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    threading.Event().wait(0.1)
    assert thread.is_alive()
    return thread, raised


def test_get_wakes_when_the_station_vanishes(world: World) -> None:
    w = world
    station, listener = station_and_listener(w)
    try:
        listener.contribute(250)
        assert station.check()
        station.send(b"last words")
        assert isinstance(next_item(listener), AirChange)
        assert next_item(listener).payload == b"last words"  # type: ignore[union-attr]
        thread, raised = blocked_get(listener)
        w.socks[-1].abort("station gone")  # the station's side
        thread.join(10)
        assert not thread.is_alive() and isinstance(raised[0], E.StationError)
        assert listener.closed.is_set() and listener.close_reason is not None
        with pytest.raises(E.StationError):
            listener.get(timeout=5)
    finally:
        station.close()


def test_listener_close_wakes_get_after_the_queue_drains(world: World) -> None:
    w = world
    station, listener = station_and_listener(w)
    try:
        listener.contribute(250)
        assert station.check()
        assert isinstance(next_item(listener), AirChange)
        thread, raised = blocked_get(listener)
        listener.close()
        thread.join(5)
        assert not thread.is_alive() and isinstance(raised[0], E.StationError)
        # the closed listener's reader ends at the next bytes, delivering none of them
        reader = listener._reader
        station.send(b"nobody listens")
        reader.join(10)
        assert not reader.is_alive()
        with pytest.raises(E.StationError):
            listener.get(timeout=5)
        assert listener.received == 0
    finally:
        station.close()

    # a queue that was full when the listener closed: its items come first
    station = BroadcastStation(w.ledger, w.caster, w.broadcast_id)
    s_side, l_side = w.pair()
    full = BroadcastListener(l_side, ledger=w.ledger, broadcast_id=w.broadcast_id, queue_size=2)
    station.attach(s_side, "full")
    try:
        assert full.wait_hello(10)
        assert station.check()  # an AIR frame, then two messages for a queue of two
        station.send(b"kept")
        station.send(b"dropped")
        assert wait_for(lambda: full.dropped == 1)
        full.close()
        assert isinstance(next_item(full), AirChange)
        assert next_item(full).payload == b"kept"  # type: ignore[union-attr]
        with pytest.raises(E.StationError):
            full.get(timeout=5)
    finally:
        station.close()
    with pytest.raises(ValueError):
        BroadcastListener(l_side, queue_size=0)


def test_send_takes_only_bytes_like_payloads(world: World) -> None:
    # bytes(5) made send(5) broadcast five zero bytes
    w = world
    station, listener = station_and_listener(w)
    try:
        listener.contribute(250)
        assert station.check()
        for bad in (5, "text", None):
            with pytest.raises(TypeError, match="a bytes-like object is required"):
                station.send(bad)  # type: ignore[arg-type]
        assert station.send(bytearray(b"ok")) == 1
        assert isinstance(next_item(listener), AirChange)
        assert next_item(listener).payload == b"ok"  # type: ignore[union-attr]
    finally:
        station.close()


# -- a ticketed broadcast admits only ticket holders (docs/escrow.md §9) -------------------


def next_message(listener: BroadcastListener) -> BroadcastMessage:
    """The next message, past air changes."""
    while not isinstance(item := next_item(listener), BroadcastMessage):
        pass
    return item


def test_a_ticketed_station_admits_holders_and_refuses_the_others(world: World) -> None:
    w = world
    holder, stranger = w.fans
    sale = w.ledger.create_ticket_sale(w.caster, "launch", 50, 1, 0, 10_000)
    w.ledger.buy_tickets(holder, sale, 1)
    b_id = w.ledger.create_ticketed_broadcast(w.caster, sale, "radio", PRICE, SLOT_MS)
    station = BroadcastStation(w.ledger, w.caster, b_id)
    assert station.ticket_sale == sale

    def connect(fan: HostIdentity) -> tuple[dtp.socket.DTPSocket, BroadcastListener]:
        """A listener connected as ``fan`` (its DTP connection proves its address)."""
        client = dtp.socket.create_connection(
            w.server.address, server_key=w.caster.noise_public, identity=fan, timeout=10
        )
        s_side, _ = w.server.accept(timeout=10)
        w.socks += [client, s_side]
        assert s_side.peer_address == fan.sui_address
        listener = BroadcastListener(client, ledger=w.ledger, identity=fan, broadcast_id=b_id)
        return s_side, listener

    s_side, hearing = connect(holder)
    station.attach(s_side, "holder")
    assert hearing.wait_hello(10)
    w.ledger.broadcast_contribute(holder, b_id, PRICE * 3)
    assert station.check()
    station.send(b"welcome")
    assert next_message(hearing).payload == b"welcome"

    s_side, refused = connect(stranger)
    with pytest.raises(E.NoTicket):
        station.attach(s_side, "stranger")
    assert not refused.wait_hello(10)
    with pytest.raises(E.NoTicket, match="holds no ticket"):
        refused.get(timeout=10)
    assert isinstance(refused.refusal, E.StationError)  # a StationError as the others
    assert station.listeners == 1 and station.refused_listeners == 1
    # once it holds a ticket (after the station's short trust of its read), it is let in
    w.ledger.buy_tickets(stranger, sale, 2)
    time.sleep(0.25)
    s_side, late = connect(stranger)
    station.attach(s_side, "late")
    assert late.wait_hello(10)
    station.send(b"both")
    for listener in (hearing, late):
        assert next_message(listener).payload == b"both"
    station.close()
    w.conserved()


def test_a_ticketed_station_whose_sale_was_deleted_admits_nobody(world: World) -> None:
    """The sale aired, its holder gave its ticket back and the organizer deleted it
    (docs/escrow.md §15): the station reads it as a sale nobody holds a ticket of, and
    refuses with NoTicket rather than a ledger error."""
    w = world
    holder, _ = w.fans
    sale = w.ledger.create_ticket_sale(w.caster, "launch", 50, 1, 0, 10_000)
    w.ledger.buy_tickets(holder, sale, 1)
    b_id = w.ledger.create_ticketed_broadcast(w.caster, sale, "radio", PRICE, SLOT_MS)
    station = BroadcastStation(w.ledger, w.caster, b_id)
    w.ledger.go_on_air(w.caster, sale)
    assert w.ledger.leave_ticket_sale(holder, sale) == 1
    w.ledger.destroy_ticket_sale(w.caster, sale)
    client = dtp.socket.create_connection(
        w.server.address, server_key=w.caster.noise_public, identity=holder, timeout=10
    )
    s_side, _ = w.server.accept(timeout=10)
    w.socks += [client, s_side]
    with pytest.raises(E.NoTicket, match="holds no ticket"):
        station.attach(s_side, "former holder")
    assert station.refused_listeners == 1
    station.close()
    w.conserved()


def test_an_open_broadcast_admits_anyone(world: World) -> None:
    station, listener = station_and_listener(world, fan=1)
    assert station.ticket_sale is None and station.refused_listeners == 0
    assert listener.refusal is None
    station.close()
