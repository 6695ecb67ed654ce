"""Sealed messages: Noise N and X round trips, tampering, forged senders, the ledger
mailbox for an offline host (delivered exactly once after it returns, across restarts),
direct delivery over DTP, and the mailbox rules (size caps, conservation).

The messaging byte layer (framing) and sealed messages: caps that are not
ints, a stream that ends inside a frame, a sealed message to an unusable key, and a
size checked before the bytes are copied."""

from __future__ import annotations

import random
import struct
import threading
import tracemalloc
from pathlib import Path

import pytest

import dtp.socket
from dtp.errors import ChainError, InvalidArgument, ObjectNotFound, RemoteProtocolError
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import EventFilter
from dtp.ledger.interface import MAX_MAIL_PAYLOAD
from dtp.ledger.local import LocalLedger
from dtp.messaging import errors as E
from dtp.messaging._framing import FrameDecoder, encode_frame, read_frames
from dtp.messaging.rpc import RpcClient, RpcServer
from dtp.messaging.sealed import (
    MAX_BODY,
    MAX_SEALED,
    OpenedMessage,
    SealedInbox,
    open_sealed,
    seal,
    send_sealed,
)
from tests.messaging.rpc_world import PROMPT, Served
from tests.messaging.sealed_world import sealed_world


@pytest.fixture
def world() -> tuple[LocalLedger, HostIdentity, HostIdentity, str, str]:
    ledger = LocalLedger(":memory:", clock_ms=0)
    alice, bob = HostIdentity.generate(), HostIdentity.generate()
    ha = ledger.create_host(alice, alice.noise_public)
    hb = ledger.create_host(bob, bob.noise_public)
    return ledger, alice, bob, ha, hb


def test_anonymous_and_proven_round_trips(world: tuple) -> None:
    ledger, alice, bob, ha, hb = world
    anon = open_sealed(bob, seal(bob.noise_public, b"hello", recipient_host=hb))
    assert anon.body == b"hello" and anon.anonymous and anon.sender_address is None
    proven = open_sealed(
        bob,
        seal(bob.noise_public, b"from alice", sender=alice, sender_host=ha, now_ms=42),
        ledger=ledger,
    )
    assert proven.sender_address == alice.sui_address
    assert proven.sender_static == alice.noise_public and proven.sender_host == ha
    assert proven.sent_ms == 42 and not proven.anonymous


def test_deterministic_with_given_randomness(world: tuple) -> None:
    _, _, bob, _, _ = world
    # (and a given date: by default seal() dates a message with the clock)
    args = dict(message_id=b"\x01" * 16, ephemeral=b"\x07" * 32, now_ms=1_700_000_000_000)
    assert seal(bob.noise_public, b"x", **args) == seal(bob.noise_public, b"x", **args)


def test_not_for_us_and_tampering_fail_without_detail(world: tuple) -> None:
    _, alice, bob, _, _ = world
    sealed = seal(bob.noise_public, b"secret")
    with pytest.raises(E.SealedDecryptError) as info:
        open_sealed(alice, sealed)
    assert str(info.value) == "sealed message failed to open"
    rng = random.Random(2)
    for _ in range(20):
        i = rng.randrange(2, len(sealed))
        bad = bytearray(sealed)
        bad[i] ^= 1 << rng.randrange(8)
        with pytest.raises(E.SealedDecryptError):
            open_sealed(bob, bytes(bad))


@pytest.mark.parametrize(
    "data", [b"", b"\x01", b"\x02\x01" + b"\x00" * 60, b"\x01\x09" + b"\x00" * 60, 5]
)
def test_malformed_sealed_bytes(world: tuple, data: object) -> None:
    _, _, bob, _, _ = world
    with pytest.raises(E.MalformedSealed):
        open_sealed(bob, data)  # type: ignore[arg-type]


def test_forged_sender_rejected(world: tuple) -> None:
    ledger, alice, bob, ha, hb = world
    mallory = HostIdentity.generate()
    # mallory claims to be alice's host: her keys are not the ones alice's host publishes
    forged = seal(bob.noise_public, b"pay mallory", sender=mallory, sender_host=ha)
    with pytest.raises(E.ForgedSender):
        open_sealed(bob, forged, ledger=ledger)
    # a proof made for another message does not carry over
    genuine = seal(bob.noise_public, b"a", sender=alice, sender_host=ha)
    assert open_sealed(bob, genuine, ledger=ledger).sender_host == ha
    with pytest.raises(E.ForgedSender):
        open_sealed(
            bob,
            seal(bob.noise_public, b"x", sender=mallory, sender_host="0x" + "ab" * 32),
            ledger=ledger,
        )
    inbox = SealedInbox(bob, hb, ledger)
    with pytest.raises(E.ForgedSender):
        inbox.accept(forged)
    assert inbox.rejected == {"ForgedSender": 1}


def test_size_caps(world: tuple) -> None:
    ledger, alice, bob, ha, hb = world
    with pytest.raises(E.PayloadTooLarge):
        seal(bob.noise_public, b"x" * (MAX_BODY + 1))
    biggest = seal(bob.noise_public, b"x" * MAX_BODY, sender=alice, sender_host=ha)
    assert len(biggest) <= MAX_MAIL_PAYLOAD
    ledger.mailbox_send(alice, hb, biggest)
    with pytest.raises(ChainError) as too_big:
        ledger.mailbox_send(alice, hb, b"x" * (MAX_MAIL_PAYLOAD + 1))
    assert too_big.value.qualified_name == "mailbox::EPayloadTooLarge"
    assert too_big.value.code == 161
    with pytest.raises(ChainError) as empty:
        ledger.mailbox_send(alice, hb, b"")
    assert empty.value.qualified_name == "mailbox::EEmptyPayload"
    with pytest.raises(ObjectNotFound):
        ledger.mailbox_send(alice, "0x" + "cd" * 32, b"x")


def test_offline_host_gets_each_message_once_after_it_returns(world: tuple, tmp_path: Path) -> None:
    ledger, alice, bob, ha, hb = world
    state = tmp_path / "inbox.json"
    sealed = [
        seal(bob.noise_public, f"m{i}".encode(), sender=alice, sender_host=ha, recipient_host=hb)
        for i in range(5)
    ]
    for s in sealed:  # bob is offline: everything goes to the mailbox
        assert send_sealed(s, recipient_host=hb, ledger=ledger, signer=alice) == "mailbox"
    ledger.mailbox_send(alice, hb, sealed[0])  # a resend of the same message
    ledger.mailbox_send(alice, hb, b"\x01\x01garbage" + b"\x00" * 60)  # junk mail
    other = ledger.create_host(alice, alice.noise_public)
    ledger.mailbox_send(alice, other, seal(alice.noise_public, b"not bob's"))
    # bob returns
    inbox = SealedInbox(bob, hb, ledger, state_path=state)
    got = inbox.fetch()
    assert [m.body for m in got] == [f"m{i}".encode() for i in range(5)]
    assert all(m.via == "mailbox" and m.sender_address == alice.sui_address for m in got)
    assert inbox.duplicates == 1 and inbox.fetch() == []
    # restart: the saved cursor and ids mean nothing is seen twice
    inbox.close()
    again = SealedInbox(bob, hb, ledger, state_path=state)
    assert again.fetch() == []
    ledger.mailbox_send(alice, hb, sealed[3])  # replayed later: still a duplicate
    assert again.fetch() == [] and again.duplicates == 1
    fresh = seal(bob.noise_public, b"new")
    ledger.mailbox_send(alice, hb, fresh)
    assert [m.body for m in again.fetch(wait=1.0)] == [b"new"]
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


def test_direct_delivery_and_fallback(world: tuple) -> None:
    ledger, alice, bob, ha, hb = world
    inbox = SealedInbox(bob, hb, ledger)
    received: list[OpenedMessage] = []
    rpc = RpcServer()
    inbox.register(rpc, received.append)
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=bob)
    thread = threading.Thread(target=rpc.serve_forever, args=(server,), daemon=True)
    thread.start()
    sock = dtp.socket.create_connection(server.address, server_key=bob.noise_public, timeout=5)
    try:
        client = RpcClient(sock, timeout=5)
        message = seal(bob.noise_public, b"online", sender=alice, sender_host=ha, recipient_host=hb)
        assert send_sealed(message, recipient_host=hb, client=client) == "direct"
        assert client.call("sealed.deliver", message) is False  # duplicate
        with pytest.raises(E.InvalidParams):
            client.call("sealed.deliver", b"\x01\x01" + b"\x00" * 80)
        assert [m.body for m in received] == [b"online"] and received[0].via == "direct"
        # the same message later also found in the mailbox is not delivered again
        ledger.mailbox_send(alice, hb, message)
        assert inbox.fetch() == []
    finally:
        sock.close()
        server.close()
        rpc.close()
    # bob is gone: delivery falls back to the mailbox
    dead = RpcClient(sock, timeout=1)
    late = seal(bob.noise_public, b"offline now")
    assert (
        send_sealed(late, recipient_host=hb, client=dead, ledger=ledger, signer=alice) == "mailbox"
    )
    assert [m.body for m in inbox.fetch()] == [b"offline now"]
    with pytest.raises(E.SealedError):
        send_sealed(late, recipient_host=hb)


def test_a_message_whose_handler_failed_is_delivered_when_resent(world: tuple) -> None:
    # the id is marked seen only once on_message returned: when it raised, the sender's
    # retry is delivered, not answered "duplicate"
    _, _, bob, _, hb = world
    inbox = SealedInbox(bob, hb)
    received: list[bytes] = []
    failures = [RuntimeError("database busy")]
    entered = threading.Event()
    release = threading.Event()

    def on_message(message: OpenedMessage) -> None:
        if message.body == b"slow":
            entered.set()
            assert release.wait(10)
        if failures:
            raise failures.pop()
        received.append(message.body)

    rpc = RpcServer(workers=4)
    inbox.register(rpc, on_message)
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=bob)
    thread = threading.Thread(target=rpc.serve_forever, args=(server,), daemon=True)
    thread.start()
    socks = [
        dtp.socket.create_connection(server.address, server_key=bob.noise_public, timeout=5)
        for _ in range(2)
    ]
    try:
        first, second = (RpcClient(sock, timeout=10) for sock in socks)
        message = seal(bob.noise_public, b"important")
        with pytest.raises(E.InternalError):
            first.call("sealed.deliver", message)
        assert received == [] and inbox.duplicates == 0
        assert first.call("sealed.deliver", message) is True
        assert first.call("sealed.deliver", message) is False
        assert received == [b"important"] and inbox.duplicates == 1
        # two copies at once: the second waits for the first's outcome, and takes over
        # when that failed
        failures.append(RuntimeError("database busy"))
        slow = seal(bob.noise_public, b"slow")
        outcome: list[object] = []

        def deliver_first() -> None:
            try:
                outcome.append(first.call("sealed.deliver", slow))
            except E.RemoteError as exc:
                outcome.append(exc)

        caller = threading.Thread(target=deliver_first)
        caller.start()
        assert entered.wait(10)
        threading.Timer(0.2, release.set).start()
        assert second.call("sealed.deliver", slow) is True
        caller.join(10)
        assert isinstance(outcome[0], E.InternalError)
        assert received == [b"important", b"slow"]
        # and when the first succeeds, the concurrent copy is a duplicate
        release.clear()
        entered.clear()
        outcome.clear()
        slow_ok = seal(bob.noise_public, b"slow")
        caller = threading.Thread(
            target=lambda: outcome.append(first.call("sealed.deliver", slow_ok))
        )
        caller.start()
        assert entered.wait(10)
        threading.Timer(0.2, release.set).start()
        assert second.call("sealed.deliver", slow_ok) is False
        caller.join(10)
        assert outcome == [True] and received == [b"important", b"slow", b"slow"]
    finally:
        for sock in socks:
            sock.close()
        server.close()
        rpc.close()


def test_seal_refuses_what_open_sealed_would(world: tuple) -> None:
    # only the body was checked: a full body plus long host IDs sealed to 20 KB, which
    # open_sealed and the mailbox refuse
    _, alice, bob, _, _ = world
    long_host = "0x" + "a" * 2000
    with pytest.raises(E.PayloadTooLarge):
        seal(
            bob.noise_public,
            b"x" * MAX_BODY,
            sender=alice,
            sender_host=long_host,
            recipient_host=long_host,
        )
    fits = seal(bob.noise_public, b"x" * (MAX_BODY - 4000), recipient_host=long_host)
    assert open_sealed(bob, fits).recipient_host == long_host
    for bad in ("text", 5, None):
        with pytest.raises(TypeError, match="a bytes-like object is required"):
            seal(bob.noise_public, bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="a bytes-like object is required"):
            seal(bad, b"x")  # type: ignore[arg-type]
    assert open_sealed(bob, seal(bytearray(bob.noise_public), memoryview(b"view"))).body == b"view"


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'{"seen": ["zz"]}',
        b'{"seen": ["00"]}',
        b'{"seen": "00"}',
        b'{"cursor": 5}',
        b'{"seen": [5]}',
    ],
)
def test_corrupt_inbox_state_file_is_a_typed_error(
    world: tuple, tmp_path: Path, content: bytes
) -> None:
    _, _, bob, _, hb = world
    state = tmp_path / "inbox.json"
    state.write_bytes(content)
    with pytest.raises(E.SealedError, match=r"inbox\.json"):
        SealedInbox(bob, hb, state_path=state)


class _Reads:
    """A blocking stream's ``recv`` over fixed chunks; b"" (the end) after them."""

    def __init__(self, chunks: list[bytes], stop: threading.Event | None = None) -> None:
        self._chunks = list(chunks)
        self._stop = stop

    def recv(self, size: int) -> bytes:
        if not self._chunks:
            if self._stop is not None:
                self._stop.set()  # a local stop, as _PatientReads ends the reads
            return b""
        return self._chunks.pop(0)


@pytest.mark.parametrize("cap", [float("nan"), True, 1.5, 2.0, "10", None])
def test_frame_decoder_cap_must_be_an_int(cap: object) -> None:
    # a NaN cap compared False with every length: no frame was ever over it, and a peer
    # announcing 4 GiB made the decoder buffer everything it sent
    with pytest.raises(TypeError, match="max_size"):
        FrameDecoder(cap)  # type: ignore[arg-type]


@pytest.mark.parametrize("cap", [float("nan"), True, 1.5, "10", None])
def test_encode_frame_cap_must_be_an_int(cap: object) -> None:
    # (NaN let any message through, True capped it at one byte)
    with pytest.raises(TypeError, match="max_size"):
        encode_frame(b"x", cap)  # type: ignore[arg-type]


@pytest.mark.parametrize("cap", [0, -1])
def test_encode_frame_cap_out_of_range_is_a_value_error(cap: int) -> None:
    # not PayloadTooLarge: the message is not too large, the cap is not a cap
    with pytest.raises(ValueError, match="max_size") as info:
        encode_frame(b"x", cap)
    assert not isinstance(info.value, E.PayloadTooLarge)


@pytest.mark.parametrize(
    "tail",
    [
        encode_frame([1, 2, 3])[:-1],  # a body cut short
        b"\x00\x00",  # a header cut short
        struct.pack(">I", 1000) + b"x" * 10,  # an oversized frame being skipped
    ],
    ids=["body", "header", "skipping"],
)
def test_read_frames_end_inside_a_frame_is_an_error(tail: bytes) -> None:
    first = encode_frame("whole")
    frames = read_frames(_Reads([first + tail]), 100, threading.Event())
    assert next(frames) == first[4:]
    # the peer went away mid-frame: a truncated stream, not a clean end
    with pytest.raises(E.MalformedMessage, match="inside a frame") as info:
        next(frames)
    assert isinstance(info.value, RemoteProtocolError)
    # a stream that ends between frames still ends quietly, as does a local stop
    assert list(read_frames(_Reads([first]), 100, threading.Event())) == [first[4:]]
    stop = threading.Event()
    assert list(read_frames(_Reads([first + tail], stop), 100, stop)) == [first[4:]]


@pytest.mark.parametrize(
    ("chunk", "error"), [(0, ValueError), (-1, ValueError), (True, TypeError), (1.5, TypeError)]
)
def test_read_frames_chunk_is_checked(chunk: object, error: type[Exception]) -> None:
    # recv(0) returns b"": the stream looked ended, and its frames were never read
    with pytest.raises(error, match="chunk"):
        next(read_frames(_Reads([encode_frame(1)]), 100, threading.Event(), chunk))  # type: ignore[arg-type]


def test_seal_to_a_low_order_key_names_the_key() -> None:
    # the all-zero point makes every shared secret zero: cryptography's "Error computing
    # shared key." said nothing of which argument was wrong
    for sender in (None, HostIdentity.generate()):
        with pytest.raises(ValueError, match="recipient"):
            seal(b"\x00" * 32, b"hi", sender=sender)


def test_open_sealed_checks_the_size_before_copying() -> None:
    identity = HostIdentity.generate()
    big = memoryview(bytearray(32 * MAX_SEALED))
    tracemalloc.start()
    try:
        with pytest.raises(E.MalformedSealed):
            open_sealed(identity, big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_SEALED


ALICE = HostIdentity.from_private_bytes(bytes([0x41]) * 32, bytes([0x41]) * 32)


BOB = HostIdentity.from_private_bytes(bytes([0x42]) * 32, bytes([0x42]) * 32)


HOST = "0x" + "ab" * 32


def test_seal_refuses_a_sender_host_without_a_sender() -> None:
    # an N message has no field for the host: it was sealed and the host silently lost
    with pytest.raises(InvalidArgument, match="sender_host needs sender") as caught:
        seal(BOB.noise_public, b"hi", sender_host=HOST)
    assert isinstance(caught.value, ValueError)


def test_seal_still_carries_the_sender_host_with_a_sender_and_none_without() -> None:
    proven = open_sealed(BOB, seal(BOB.noise_public, b"hi", sender=ALICE, sender_host=HOST))
    assert proven.sender_host == HOST and proven.sender_address == ALICE.sui_address
    anonymous = open_sealed(BOB, seal(BOB.noise_public, b"hi"))
    assert anonymous.anonymous and anonymous.sender_host is None


def test_send_sealed_with_a_ledger_but_no_signer_is_refused_up_front(tmp_path: Path) -> None:
    with sealed_world(tmp_path) as (ledger, alice, bob, hb):
        ledger.faucet(alice.sui_address, 10**9)
        message = seal(bob.noise_public, b"hi", recipient_host=hb)
        with pytest.raises(ValueError, match="signer"):
            send_sealed(message, recipient_host=hb, ledger=ledger)
        events, _ = ledger.events(None, EventFilter(type="MailDeposited"), 10)
        assert events == []
        # given a signer, the same call goes to the mailbox
        assert send_sealed(message, recipient_host=hb, ledger=ledger, signer=alice) == "mailbox"


def test_send_sealed_says_the_signer_is_missing_when_the_direct_delivery_fails(
    tmp_path: Path,
) -> None:
    with sealed_world(tmp_path) as (ledger, _alice, bob, hb):
        served = Served(RpcServer())
        client = served.connect(timeout=PROMPT)
        served.close()  # bob is gone: the direct delivery fails
        message = seal(bob.noise_public, b"hi", recipient_host=hb)
        with pytest.raises(ValueError, match="signer") as caught:
            send_sealed(message, recipient_host=hb, client=client, ledger=ledger, timeout=5)
        assert isinstance(caught.value.__cause__, E.RpcError | OSError)
        events, _ = ledger.events(None, EventFilter(type="MailDeposited"), 10)
        assert events == []
        client.close()
