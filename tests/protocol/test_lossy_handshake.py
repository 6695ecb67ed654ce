"""A forged or damaged handshake message on a lossy carrier is dropped: the handshake is
left exactly as it was, and the genuine message (or its retransmission) completes it.
On a reliable carrier the same message still fails the handshake.

On a lossy carrier, a message 1 that Noise reads but whose payload is refused is
dropped, not fatal.

The keep_state read drops a forged or damaged handshake message so that the genuine one
(or its resend) can still complete the handshake -- but only when Noise itself refuses
it. XX message 1 is not authenticated at all, and an IK one only shows that its sender
knows the server's key: a damaged transport-parameter payload in either read cleanly,
and then failed the connection at once (a bit flipped in an XX message 1's payload,
"peer speaks DTP transport version 0"). The server now forgets such
a message 1 (Handshake.unread_first_message) and waits for the genuine one. Over TCP it
still ends the connection."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from dtp.errors import HandshakeError
from dtp.identity._noise import MAX_MESSAGE_SIZE, PATTERN_IK, PATTERN_XX, Handshake
from dtp.identity.keys import HostIdentity
from dtp.native import core as _core
from dtp.native.types import REC_HS_INIT
from dtp.protocol.connection import CloseCode, Connection, ConnState
from dtp.transport.carriers._memory import MemoryLink
from tests.support.pairs import SERVER_ID, Side, carries_both_ways, establish, make_pair

CLIENT = HostIdentity.generate()
SERVER = HostIdentity.generate()
OTHER = HostIdentity.generate()


def _pair(pattern: int) -> tuple[Handshake, Handshake]:
    remote = SERVER.noise_public if pattern == PATTERN_IK else None
    initiator = Handshake.initiator(CLIENT.noise_private_bytes(), os.urandom(32), remote)
    responder = Handshake.responder(SERVER.noise_private_bytes(), os.urandom(32))
    return initiator, responder


def _flip_last(message: bytes) -> bytes:
    return message[:-1] + bytes([message[-1] ^ 1])


def _random_same_size(message: bytes) -> bytes:
    # keeps the pattern byte of message 1, so the forgery gets as far as Noise
    return message[:1] + os.urandom(len(message) - 1)


def _other_server_ik(message: bytes) -> bytes:
    # a genuine IK message 1, but to another server's key: fails Noise at ``es``
    initiator = Handshake.initiator(
        CLIENT.noise_private_bytes(), os.urandom(32), OTHER.noise_public
    )
    return initiator.write_message(b"forged")


FORGERIES: dict[str, Callable[[bytes], bytes]] = {
    "bit-flip": _flip_last,
    "random": _random_same_size,
    "truncated": lambda m: m[:-17],
    "extended": lambda m: m + b"\0",
    "empty": lambda m: b"",
    "oversized": lambda m: m[:1] + bytes(MAX_MESSAGE_SIZE),
}

# (pattern, message number read): XX message 1 is not authenticated at all, so only
# what Noise can refuse of it is tested (a wrong length, not a changed byte)
READS = [(PATTERN_IK, 1), (PATTERN_IK, 2), (PATTERN_XX, 2), (PATTERN_XX, 3)]


@pytest.mark.parametrize(("pattern", "index"), READS)
@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_a_failed_read_with_keep_state_changes_nothing(
    pattern: int, index: int, forgery: str
) -> None:
    initiator, responder = _pair(pattern)
    sides = (initiator, responder)
    turn = 1
    while not (initiator.complete and responder.complete):
        writer, reader = sides[(turn - 1) % 2], sides[turn % 2]
        message = writer.write_message(b"payload %d" % turn)
        if turn == index:
            before = repr(reader)
            with pytest.raises(HandshakeError):
                reader.read_message(FORGERIES[forgery](message), keep_state=True)
            assert not reader.failed and repr(reader) == before
            assert not reader.wants_write
        assert reader.read_message(message, keep_state=True) == b"payload %d" % turn
        turn += 1
    assert initiator.transport_keys() == responder.transport_keys()[::-1]
    assert initiator.handshake_hash == responder.handshake_hash
    assert initiator.remote_static == SERVER.noise_public
    assert responder.remote_static == CLIENT.noise_public


def test_ik_message_1_to_another_server_is_dropped_then_the_genuine_one_reads() -> None:
    initiator, responder = _pair(PATTERN_IK)
    for _ in range(3):  # several in a row, each leaving the responder untouched
        with pytest.raises(HandshakeError):
            responder.read_message(_other_server_ik(b""), keep_state=True)
        assert responder.pattern is None and not responder.failed
    responder.read_message(initiator.write_message(b"hi"), keep_state=True)
    assert responder.pattern == PATTERN_IK
    initiator.read_message(responder.write_message(b""))
    assert initiator.transport_keys() == responder.transport_keys()[::-1]
    assert responder.auth_binding == initiator.auth_binding


def test_without_keep_state_a_failed_read_still_kills_the_handshake() -> None:
    initiator, responder = _pair(PATTERN_IK)
    message = initiator.write_message(b"")
    with pytest.raises(HandshakeError):
        responder.read_message(_flip_last(message))
    assert responder.failed
    with pytest.raises(HandshakeError, match="already failed"):
        responder.read_message(message)


# -- end to end: two connections over the in-memory carrier ----------------------------


def _forge_first(conn: Connection, kind: int, forge: Callable[[bytes], bytes]) -> list[int]:
    """Have ``conn`` receive a forged copy of the first handshake record of ``kind``
    just before the genuine one; returns a list that counts the forgeries made."""
    genuine = conn.receive_datagram if not conn.config.reliable_carrier else conn.receive_data
    made: list[int] = []

    def receive(data: bytes, now: float) -> None:
        if not made and data[:1] == bytes([kind]):
            body = forge(bytes(data[12:]))
            made.append(kind)
            genuine(_core.write_record_header(kind, 0, len(body), 0) + body, now)
            if conn.closed:
                return
        genuine(data, now)

    if conn.config.reliable_carrier:
        conn.receive_data = receive  # type: ignore[method-assign]
    else:
        conn.receive_datagram = receive  # type: ignore[method-assign]
    return made


def _open(
    ik: bool, reliable: bool, target: str, kind: int, forge: Callable[[bytes], bytes]
) -> tuple[Side, Side, MemoryLink, list[int]]:
    client, server = make_pair(ik=ik, reliable_carrier=reliable)
    made = _forge_first(client if target == "client" else server, kind, forge)
    c, s, link = establish(client, server)
    return c, s, link, made


# (IK?, who receives the forgery, record kind): HS_INIT 1, HS_RESP 2, HS_FINAL 3
E2E = [(True, "server", 1), (True, "client", 2), (False, "client", 2), (False, "server", 3)]


@pytest.mark.parametrize(("ik", "target", "kind"), E2E)
@pytest.mark.parametrize("forgery", ["bit-flip", "random"])
def test_lossy_carrier_drops_a_forged_handshake_message_and_opens(
    ik: bool, target: str, kind: int, forgery: str
) -> None:
    c, s, link, made = _open(ik, False, target, kind, FORGERIES[forgery])
    assert made == [kind]
    assert c.conn.established and s.conn.established, (c.conn.termination, s.conn.termination)
    carries_both_ways(link, c, s)


@pytest.mark.parametrize(("ik", "target", "kind"), E2E)
def test_reliable_carrier_still_fails_on_a_forged_handshake_message(
    ik: bool, target: str, kind: int
) -> None:
    c, s, _, made = _open(ik, True, target, kind, _flip_last)
    assert made == [kind]
    victim = c.conn if target == "client" else s.conn
    assert victim.closed
    assert victim.termination is not None
    assert victim.termination.error_code == CloseCode.HANDSHAKE_FAILED


# datagrams whose record header does not parse: a zero or oversized length, an unknown
# kind, a header cut short
MALFORMED = [
    bytes([1, 0, 0, 0]) + bytes(8),
    bytes([1, 0]) + (5000).to_bytes(2, "little") + bytes(8) + bytes(5000),
    bytes([9, 0, 10, 0]) + bytes(8) + bytes(10),
]


def _inject_before_first(conn: Connection, datagrams: list[bytes]) -> list[int]:
    genuine = conn.receive_datagram
    made: list[int] = []

    def receive(data: bytes, now: float) -> None:
        if not made:
            made.append(1)
            for datagram in datagrams:
                genuine(datagram, now)
                assert not conn.closed, conn.termination
        genuine(data, now)

    conn.receive_datagram = receive  # type: ignore[method-assign]
    return made


@pytest.mark.parametrize("ik", [True, False], ids=["IK", "XX"])
@pytest.mark.parametrize("target", ["client", "server"])
def test_lossy_carrier_drops_datagrams_that_do_not_parse_during_the_handshake(
    ik: bool, target: str
) -> None:
    client, server = make_pair(ik=ik, reliable_carrier=False)
    made = _inject_before_first(client if target == "client" else server, MALFORMED)
    establish(client, server)
    assert client.established and server.established
    assert made == [1]


def test_reliable_carrier_still_fails_on_a_record_that_does_not_parse() -> None:
    _, server = make_pair(reliable_carrier=True)
    server.receive_data(MALFORMED[0], 0.0)
    assert server.closed
    assert server.termination is not None
    assert server.termination.error_code == CloseCode.FRAME_ENCODING_ERROR


@pytest.mark.parametrize("pattern", [PATTERN_IK, PATTERN_XX])
def test_the_overhead_the_payload_cap_is_checked_with_is_exact(pattern: int) -> None:
    # the cap is checked on the message size before Noise reads it (a failed read must
    # change nothing): it relies on knowing what Noise adds to each message, which the
    # reader's Noise state tells (NoiseState.overhead)
    initiator, responder = _pair(pattern)
    sides = (initiator, responder)
    number = 1
    while not (initiator.complete and responder.complete):
        writer, reader = sides[(number - 1) % 2], sides[number % 2]
        payload = os.urandom(number * 7)
        overhead = writer._noise.overhead()
        message = writer.write_message(payload)
        pattern_byte = 1 if number == 1 else 0
        assert len(message) - pattern_byte - len(payload) == overhead
        if reader._noise is not None:  # (a responder starts its state on message 1)
            assert reader._noise.overhead() == overhead
        assert reader.read_message(message) == payload
        number += 1


#: a byte of XX message 1's payload (after the 12-byte record header, the pattern id and
#: the 32-byte ephemeral key): flipped, the transport parameters no longer parse
PAYLOAD_BYTE = 12 + 1 + 32 + 3


def _damaged(message: bytes) -> bytes:
    bad = bytearray(message)
    bad[PAYLOAD_BYTE] ^= 0x01
    return bytes(bad)


def test_a_damaged_xx_message_1_is_dropped_on_a_lossy_carrier() -> None:
    client, server = make_pair(ik=False, reliable_carrier=False)
    (m1,) = client.datagrams_to_send(0.0)
    server.receive_datagram(_damaged(m1), 0.0)
    assert server.state is ConnState.SERVER_WAIT and not server.closed
    assert server.datagrams_to_send(0.0) == []  # not answered
    server.receive_datagram(m1, 0.0)
    assert server.state is ConnState.SERVER_FINAL
    for datagram in server.datagrams_to_send(0.0):
        client.receive_datagram(datagram, 0.0)
    assert not client.closed and client.state is not ConnState.CLIENT_HELLO  # message 2 read


def test_the_same_message_ends_a_tcp_handshake() -> None:
    client, server = make_pair(ik=False)
    server.receive_data(_damaged(client.data_to_send(0.0)), 0.0)
    term = server.termination
    assert term is not None and term.error_code == CloseCode.HANDSHAKE_FAILED


def test_an_ik_message_1_without_its_proof_is_dropped_on_a_lossy_carrier() -> None:
    genuine, server = make_pair(reliable_carrier=False)
    # what anyone holding the server's key can send: valid Noise, no identity proof (the
    # server's own parameters: no "auth")
    forger = Handshake.initiator(
        os.urandom(32), os.urandom(32), remote_static=SERVER_ID.noise_public
    )
    body = forger.write_message(server._transport_params())
    forged = bytes([REC_HS_INIT, 0]) + len(body).to_bytes(2, "little") + bytes(8) + body
    server.receive_datagram(forged, 0.0)
    assert server.state is ConnState.SERVER_WAIT and not server.closed
    (m1,) = genuine.datagrams_to_send(0.0)
    server.receive_datagram(m1, 0.0)
    assert server.state is ConnState.SERVER_DECIDING
    assert server.peer_address == genuine.config.identity.sui_address


def test_unread_first_message_only_after_message_1() -> None:
    responder = Handshake.responder(SERVER_ID.noise_private_bytes(), os.urandom(32))
    with pytest.raises(HandshakeError):
        responder.unread_first_message()  # nothing read
    initiator = Handshake.initiator(
        os.urandom(32), os.urandom(32), remote_static=SERVER_ID.noise_public
    )
    m1 = initiator.write_message(b"")
    with pytest.raises(HandshakeError):
        initiator.unread_first_message()  # not a responder
    responder.read_message(m1)
    assert responder.remote_static is not None
    responder.unread_first_message()
    assert responder.remote_static is None and responder.pattern is None
    again = Handshake.initiator(
        os.urandom(32), os.urandom(32), remote_static=SERVER_ID.noise_public
    )
    assert responder.read_message(again.write_message(b"hello")) == b"hello"
    responder.write_message(b"")
    assert responder.complete
    with pytest.raises(HandshakeError):
        responder.unread_first_message()  # wrote message 2 already
