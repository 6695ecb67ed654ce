"""The DTP handshake: Noise IK/XX between two in-memory sides, keys that pair up and
work, every kind of bad message failing with HandshakeError only, and the Sui-signed
channel binding.

A client that pins the server's key in XX (``expected_server_static``) checks the key
message 2 reveals before it writes message 3, which carries its own static key: an
impostor learns nothing of the client."""

from __future__ import annotations

import hashlib
import struct
import warnings
from collections.abc import Callable

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection

from dtp.errors import HandshakeError
from dtp.identity._noise import (
    AUTH_PROOF_SIZE,
    MAX_MESSAGE_SIZE,
    MAX_PAYLOAD_SIZE,
    PATTERN_IK,
    PATTERN_XX,
    PROTOCOL_NAMES,
    Handshake,
    make_auth_proof,
    verify_auth_proof,
)
from dtp.identity.keys import HostIdentity, noise_key_object
from dtp.protocol.connection import CloseCode
from tests.support.pairs import make_pair

KEYS = st.binary(min_size=32, max_size=32)
PATTERNS = st.sampled_from([PATTERN_IK, PATTERN_XX])

CLIENT = HostIdentity.from_private_bytes(bytes([1]) * 32, bytes([2]) * 32)
SERVER = HostIdentity.from_private_bytes(bytes([3]) * 32, bytes([4]) * 32)
E_CLIENT = bytes([5]) * 32
E_SERVER = bytes([6]) * 32


def pair(
    pattern: int,
    client: HostIdentity = CLIENT,
    server: HostIdentity = SERVER,
    e_client: bytes = E_CLIENT,
    e_server: bytes = E_SERVER,
    server_key: bytes | None = None,
    prologue: bytes = b"DTP/1",
) -> tuple[Handshake, Handshake]:
    """A fresh (initiator, responder) pair; IK uses ``server_key`` or the real one."""
    remote = (server_key or server.noise_public) if pattern == PATTERN_IK else None
    initiator = Handshake.initiator(client.noise_private_bytes(), e_client, remote, prologue)
    responder = Handshake.responder(server.noise_private_bytes(), e_server, prologue)
    return initiator, responder


def run(
    initiator: Handshake, responder: Handshake, payloads: list[bytes] | None = None
) -> tuple[list[bytes], list[bytes]]:
    """Drive both sides to completion; return (messages sent, payloads received)."""
    payloads = list(payloads or [])
    messages: list[bytes] = []
    received: list[bytes] = []
    sides = (initiator, responder)
    turn = 0
    while not (initiator.complete and responder.complete):
        writer, reader = sides[turn % 2], sides[(turn + 1) % 2]
        assert writer.wants_write and not reader.wants_write
        message = writer.write_message(payloads[turn] if turn < len(payloads) else b"")
        assert len(message) <= MAX_MESSAGE_SIZE
        messages.append(message)
        received.append(reader.read_message(message))
        turn += 1
    return messages, received


def message_count(pattern: int) -> int:
    return 2 if pattern == PATTERN_IK else 3


def nonce(counter: int) -> bytes:
    return b"\x00" * 4 + struct.pack("<Q", counter)


def assert_paired(initiator: Handshake, responder: Handshake) -> None:
    i_send, i_recv = initiator.transport_keys()
    r_send, r_recv = responder.transport_keys()
    assert i_send == r_recv and i_recv == r_send
    assert i_send != i_recv
    assert all(len(k) == 32 for k in (i_send, i_recv))
    assert initiator.handshake_hash == responder.handshake_hash
    assert len(initiator.handshake_hash) == 32


# -- happy paths --------------------------------------------------------------------------


@settings(max_examples=30)
@given(
    pattern=PATTERNS,
    seeds=st.tuples(KEYS, KEYS, KEYS, KEYS),
    ephemerals=st.tuples(KEYS, KEYS),
    payloads=st.lists(st.binary(max_size=300), min_size=3, max_size=3),
)
def test_handshake_completes_with_paired_keys(
    pattern: int,
    seeds: tuple[bytes, bytes, bytes, bytes],
    ephemerals: tuple[bytes, bytes],
    payloads: list[bytes],
) -> None:
    client = HostIdentity.from_private_bytes(seeds[0], seeds[1])
    server = HostIdentity.from_private_bytes(seeds[2], seeds[3])
    initiator, responder = pair(pattern, client, server, *ephemerals)
    assert initiator.pattern == pattern and responder.pattern is None
    messages, received = run(initiator, responder, payloads)
    assert len(messages) == message_count(pattern)
    assert messages[0][0] == pattern
    assert received == payloads[: len(messages)]
    assert responder.pattern == pattern
    assert initiator.complete and responder.complete
    assert not initiator.wants_write and not responder.wants_write
    assert_paired(initiator, responder)
    assert initiator.remote_static == server.noise_public
    assert responder.remote_static == client.noise_public


@pytest.mark.parametrize("pattern", [PATTERN_IK, PATTERN_XX])
def test_transport_keys_work_both_ways(pattern: int) -> None:
    initiator, responder = pair(pattern)
    run(initiator, responder)
    i_send, i_recv = initiator.transport_keys()
    r_send, r_recv = responder.transport_keys()
    for counter in (0, 1, 2, 2**32 + 5, 2**64 - 2):
        sealed = ChaCha20Poly1305(i_send).encrypt(nonce(counter), b"to server", b"hdr")
        assert ChaCha20Poly1305(r_recv).decrypt(nonce(counter), sealed, b"hdr") == b"to server"
        sealed = ChaCha20Poly1305(r_send).encrypt(nonce(counter), b"to client", None)
        assert ChaCha20Poly1305(i_recv).decrypt(nonce(counter), sealed, None) == b"to client"
    # A record sealed for one direction does not open in the other.
    sealed = ChaCha20Poly1305(i_send).encrypt(nonce(0), b"x", None)
    with pytest.raises(InvalidTag):
        ChaCha20Poly1305(i_recv).decrypt(nonce(0), sealed, None)


@pytest.mark.parametrize("pattern", [PATTERN_IK, PATTERN_XX])
def test_keys_match_noiseprotocol_transport(pattern: int) -> None:
    """Our transport keys are Noise's: a raw noiseprotocol peer can talk to them."""
    name = PROTOCOL_NAMES[pattern]
    peer = NoiseConnection.from_name(name)
    peer.set_as_responder()
    peer.set_prologue(b"DTP/1")
    peer.set_keypair_from_private_bytes(Keypair.STATIC, SERVER.noise_private_bytes())
    peer.set_keypair_from_private_bytes(Keypair.EPHEMERAL, E_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer.start_handshake()
    initiator, _ = pair(pattern)
    assert peer.read_message(initiator.write_message(b"hi")[1:]) == b"hi"
    initiator.read_message(bytes(peer.write_message(b"")))
    if pattern == PATTERN_XX:
        peer.read_message(initiator.write_message())
    assert initiator.complete and peer.handshake_finished
    send, recv = initiator.transport_keys()
    assert peer.decrypt(ChaCha20Poly1305(send).encrypt(nonce(0), b"ping", None)) == b"ping"
    assert ChaCha20Poly1305(recv).decrypt(nonce(0), peer.encrypt(b"pong"), None) == b"pong"


@pytest.mark.parametrize("pattern", [PATTERN_IK, PATTERN_XX])
def test_remote_static_learned_when_the_pattern_reveals_it(pattern: int) -> None:
    initiator, responder = pair(pattern)
    assert responder.remote_static is None
    assert initiator.remote_static == (SERVER.noise_public if pattern == PATTERN_IK else None)
    first = initiator.write_message()
    responder.read_message(first)
    assert responder.remote_static == (CLIENT.noise_public if pattern == PATTERN_IK else None)
    initiator.read_message(responder.write_message())
    assert initiator.remote_static == SERVER.noise_public
    if pattern == PATTERN_XX:
        assert not initiator.complete
        responder.read_message(initiator.write_message())
    assert responder.remote_static == CLIENT.noise_public


def test_max_payload_fits_every_message() -> None:
    for pattern in (PATTERN_IK, PATTERN_XX):
        big = bytes(range(256)) * (MAX_PAYLOAD_SIZE // 256) + b"z" * (MAX_PAYLOAD_SIZE % 256)
        assert len(big) == MAX_PAYLOAD_SIZE
        messages, received = run(*pair(pattern), [big] * 3)
        assert received == [big] * message_count(pattern)
        assert max(map(len, messages)) <= MAX_MESSAGE_SIZE


def test_deterministic_transcript() -> None:
    transcripts = {}
    for pattern in (PATTERN_IK, PATTERN_XX):
        one = run(*pair(pattern), [b"a", b"b", b"c"])[0]
        initiator, responder = pair(pattern)
        two = run(initiator, responder, [b"a", b"b", b"c"])[0]
        assert one == two
        transcripts[pattern] = (one, initiator.handshake_hash)
    # Sizes follow the Noise patterns: IK = 1 + 32 + 48 + (1 + 16), 32 + (1 + 16);
    # XX = 1 + 32 + 1, 32 + 48 + (1 + 16), 48 + (1 + 16).
    assert [len(m) for m in transcripts[PATTERN_IK][0]] == [98, 49]
    assert [len(m) for m in transcripts[PATTERN_XX][0]] == [34, 97, 65]
    # Pinned: any change here breaks interop with deployed peers.
    digest = hashlib.sha256()
    for messages, handshake_hash in transcripts.values():
        for message in messages:
            digest.update(message)
        digest.update(handshake_hash)
    assert digest.hexdigest() == PINNED_TRANSCRIPT_SHA256


PINNED_TRANSCRIPT_SHA256 = "20316883b10ab8840978e4c651ca22b92d231a5ac0f0b8229e145476f329e0e1"


@pytest.mark.parametrize("pattern", [PATTERN_IK, PATTERN_XX])
def test_transcript_is_plain_noise_after_the_pattern_byte(pattern: int) -> None:
    """Same keys through raw noiseprotocol give the same bytes, minus our pattern byte."""

    def noise_side(initiator: bool) -> NoiseConnection:
        conn = NoiseConnection.from_name(PROTOCOL_NAMES[pattern])
        conn.set_prologue(b"DTP/1")
        who, eph = (CLIENT, E_CLIENT) if initiator else (SERVER, E_SERVER)
        if initiator:
            conn.set_as_initiator()
            if pattern == PATTERN_IK:
                conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, SERVER.noise_public)
        else:
            conn.set_as_responder()
        conn.set_keypair_from_private_bytes(Keypair.STATIC, who.noise_private_bytes())
        conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, eph)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            conn.start_handshake()
        return conn

    ours = run(*pair(pattern), [b"1", b"2", b"3"])[0]
    a, b = noise_side(True), noise_side(False)
    theirs = []
    for i in range(message_count(pattern)):
        writer, reader = (a, b) if i % 2 == 0 else (b, a)
        message = bytes(writer.write_message(str(i + 1).encode()))
        reader.read_message(message)
        theirs.append(message)
    assert ours == [bytes([pattern]) + theirs[0], *theirs[1:]]


# -- failures -----------------------------------------------------------------------------


def test_wrong_server_key_fails_on_the_responder() -> None:
    impostor_key = HostIdentity.generate().noise_public
    initiator, responder = pair(PATTERN_IK, server_key=impostor_key)
    first = initiator.write_message(b"secret-ish")
    with pytest.raises(HandshakeError, match="invalid handshake message 1"):
        responder.read_message(first)
    assert responder.failed and not responder.complete
    with pytest.raises(HandshakeError, match="already failed"):
        responder.write_message()
    # The initiator is left waiting for a reply that never comes.
    assert not initiator.complete and not initiator.wants_write and not initiator.failed


def test_reply_from_anyone_but_the_real_server_fails_on_the_initiator() -> None:
    impostor = HostIdentity.generate()
    initiator, _ = pair(PATTERN_IK)
    initiator.write_message()
    # The impostor runs its own IK session (as if the client had asked for its key) and
    # sends its reply to our client.
    other_i, other_r = pair(PATTERN_IK, server=impostor)
    other_r.read_message(other_i.write_message())
    with pytest.raises(HandshakeError):
        initiator.read_message(other_r.write_message())
    assert initiator.failed


def test_xx_reveals_the_impostor_through_remote_static() -> None:
    impostor = HostIdentity.generate()
    initiator, responder = pair(PATTERN_XX, server=impostor)
    run(initiator, responder)
    # XX completes with anyone; the connection must compare this with the Host object.
    assert initiator.remote_static == impostor.noise_public != SERVER.noise_public


@pytest.mark.parametrize("pattern", [PATTERN_IK, PATTERN_XX])
def test_prologue_mismatch_fails(pattern: int) -> None:
    initiator = Handshake.initiator(
        CLIENT.noise_private_bytes(),
        E_CLIENT,
        SERVER.noise_public if pattern == PATTERN_IK else None,
        prologue=b"DTP/1",
    )
    responder = Handshake.responder(SERVER.noise_private_bytes(), E_SERVER, prologue=b"DTP/2")
    with pytest.raises(HandshakeError):
        run(initiator, responder)
    assert not (initiator.complete and responder.complete)


def replay_with(pattern: int, index: int, change: Callable[[bytes], bytes]) -> str:
    """Run a handshake, altering message ``index``; say which side failed first."""
    initiator, responder = pair(pattern)
    sides = (initiator, responder)
    for turn in range(message_count(pattern)):
        writer, reader = sides[turn % 2], sides[(turn + 1) % 2]
        message = writer.write_message(b"payload")
        if turn == index:
            message = change(message)
        try:
            reader.read_message(message)
        except HandshakeError:
            assert reader.failed and not reader.complete
            return "initiator" if reader is initiator else "responder"
    return "none"


@pytest.mark.parametrize(("pattern", "index"), [(1, 0), (1, 1), (2, 0), (2, 1), (2, 2)])
def test_every_tampered_byte_is_caught(pattern: int, index: int) -> None:
    length = len(run(*pair(pattern), [b"payload"] * 3)[0][index])
    for position in range(length):
        for mask in (0x01, 0x80, 0xFF):

            def flip(message: bytes, p: int = position, m: int = mask) -> bytes:
                changed = bytearray(message)
                changed[p] ^= m
                return bytes(changed)

            failed = replay_with(pattern, index, flip)
            if pattern == PATTERN_XX and index == 0 and position > 0:
                # XX message 1 is unauthenticated (e and a clear payload); the change
                # surfaces when the initiator reads message 2.
                assert failed in ("responder", "initiator")
            else:
                expected = "responder" if index % 2 == 0 else "initiator"
                assert failed == expected, (position, mask)


@pytest.mark.parametrize(("pattern", "index"), [(1, 0), (1, 1), (2, 0), (2, 1), (2, 2)])
def test_truncated_and_extended_messages_fail(pattern: int, index: int) -> None:
    full = run(*pair(pattern), [b"payload"] * 3)[0][index]
    expected = "responder" if index % 2 == 0 else "initiator"
    for cut in range(len(full)):
        failed = replay_with(pattern, index, lambda m, c=cut: m[:c])
        assert failed != "none", cut
        if not (pattern == PATTERN_XX and index == 0 and cut >= 33):
            assert failed == expected, cut
    for extra in (b"\x00", b"garbage" * 10):
        assert replay_with(pattern, index, lambda m, x=extra: m + x) != "none"


def test_xx_first_message_truncation_without_payload_fails_at_once() -> None:
    initiator, _ = pair(PATTERN_XX)
    full = initiator.write_message()
    assert len(full) == 33
    for cut in range(33):
        _, fresh = pair(PATTERN_XX)
        with pytest.raises(HandshakeError):
            fresh.read_message(full[:cut])


@pytest.mark.parametrize("pattern_id", [0, 3, 4, 0x7F, 0xFF])
def test_unknown_pattern_id(pattern_id: int) -> None:
    initiator, responder = pair(PATTERN_IK)
    first = initiator.write_message()
    with pytest.raises(HandshakeError, match=f"unknown handshake pattern id {pattern_id}"):
        responder.read_message(bytes([pattern_id]) + first[1:])
    assert responder.pattern is None and responder.failed


def test_oversized_message_and_payload() -> None:
    _, responder = pair(PATTERN_XX)
    with pytest.raises(HandshakeError, match="exceeds 4096"):
        responder.read_message(bytes([PATTERN_XX]) + bytes(MAX_MESSAGE_SIZE))
    assert responder.failed

    # A sender that ignores the payload cap: XX message 1 is e || clear payload, so a
    # 4000-byte payload fits in 4096 bytes but breaks MAX_PAYLOAD_SIZE.
    initiator, responder = pair(PATTERN_XX)
    first = initiator.write_message()
    with pytest.raises(HandshakeError, match="payload of 4000 bytes"):
        responder.read_message(first + bytes(4000))

    # Writing an oversized payload is refused and leaves the handshake usable.
    initiator, responder = pair(PATTERN_IK)
    with pytest.raises(HandshakeError, match="exceeds"):
        initiator.write_message(bytes(MAX_PAYLOAD_SIZE + 1))
    assert not initiator.failed
    run(initiator, responder)
    assert_paired(initiator, responder)


def test_out_of_turn() -> None:
    initiator, responder = pair(PATTERN_XX)
    with pytest.raises(HandshakeError, match="out of turn"):
        responder.write_message()
    assert not responder.failed  # our own misuse; nothing changed
    with pytest.raises(HandshakeError, match="out of turn"):
        initiator.read_message(b"\x02" + bytes(40))
    assert initiator.failed  # a message arrived when none may: the handshake is over

    initiator, responder = pair(PATTERN_XX)
    first = initiator.write_message()
    with pytest.raises(HandshakeError, match="out of turn"):
        initiator.write_message()
    responder.read_message(first)
    with pytest.raises(HandshakeError, match="out of turn"):
        responder.read_message(first)  # a replayed message 1 where message 3 belongs
    assert responder.failed


@pytest.mark.parametrize("pattern", [PATTERN_IK, PATTERN_XX])
def test_after_completion(pattern: int) -> None:
    initiator, responder = pair(pattern)
    messages, _ = run(initiator, responder)
    for side in (initiator, responder):
        with pytest.raises(HandshakeError, match="already complete"):
            side.write_message()
        with pytest.raises(HandshakeError, match="already complete"):
            side.read_message(messages[-1])
        assert side.complete and not side.failed
    assert_paired(initiator, responder)


def test_results_only_after_completion() -> None:
    initiator, responder = pair(PATTERN_IK)
    for side in (initiator, responder):
        with pytest.raises(HandshakeError):
            side.transport_keys()
        with pytest.raises(HandshakeError):
            _ = side.handshake_hash


def test_low_order_points_rejected() -> None:
    # All-zero X25519 public keys make the DH output zero; cryptography refuses them.
    initiator = Handshake.initiator(CLIENT.noise_private_bytes(), E_CLIENT, bytes(32))
    with pytest.raises(HandshakeError):
        initiator.write_message()
    _, responder = pair(PATTERN_IK)
    with pytest.raises(HandshakeError):
        responder.read_message(bytes([PATTERN_IK]) + bytes(96))
    initiator, responder = pair(PATTERN_XX)
    responder.read_message(initiator.write_message())
    reply = responder.write_message()
    with pytest.raises(HandshakeError):
        initiator.read_message(bytes(32) + reply[32:])


def test_bad_constructor_arguments() -> None:
    good = bytes(32)
    with pytest.raises(ValueError):
        Handshake.initiator(bytes(31), good)
    with pytest.raises(ValueError):
        Handshake.initiator(good, bytes(33))
    with pytest.raises(ValueError):
        Handshake.initiator(good, good, bytes(16))
    with pytest.raises(TypeError):
        Handshake.responder("key" * 11, good)  # type: ignore[arg-type]
    initiator, _ = pair(PATTERN_IK)
    with pytest.raises(TypeError):
        initiator.write_message(5)  # type: ignore[arg-type]


def test_reusing_an_identity_key_object_changes_no_byte() -> None:
    # The same static keys, first as bare bytes (key objects built from them), then
    # handed out by live identities (their own key objects reused): same handshake.
    client_raw, server_raw = bytes(range(1, 33)), bytes(range(33, 65))
    server_public = HostIdentity.from_private_bytes(bytes(32), server_raw).noise_public

    def handshake() -> tuple[object, ...]:
        initiator = Handshake.initiator(client_raw, E_CLIENT, server_public)
        responder = Handshake.responder(server_raw, E_SERVER)
        messages, received = run(initiator, responder, [b"one", b"two"])
        return (
            messages,
            received,
            initiator.handshake_hash,
            initiator.transport_keys(),
            responder.transport_keys(),
            responder.remote_static,
        )

    assert noise_key_object(client_raw) is None and noise_key_object(server_raw) is None
    cold = handshake()
    client = HostIdentity.from_private_bytes(bytes(32), client_raw)
    server = HostIdentity.from_private_bytes(bytes(32), server_raw)
    assert client.noise_private_bytes() == client_raw
    assert server.noise_private_bytes() == server_raw
    assert noise_key_object(client_raw) is not None
    assert noise_key_object(server_raw) is not None
    assert handshake() == cold
    assert cold[5] == client.noise_public


def test_repr_has_no_keys() -> None:
    initiator, responder = pair(PATTERN_IK)
    run(initiator, responder)
    text = repr(initiator) + repr(responder)
    assert "IK" in text and "complete" in text
    for secret in (*initiator.transport_keys(), CLIENT.noise_private_bytes(), E_CLIENT):
        assert secret.hex() not in text


# -- fuzz: anything the peer sends either parses or raises HandshakeError -----------------


def fresh_reader(stage: str) -> Handshake:
    if stage == "responder-1":
        return pair(PATTERN_IK)[1]
    pattern = PATTERN_IK if stage == "initiator-ik-2" else PATTERN_XX
    initiator, responder = pair(pattern)
    first = initiator.write_message()
    if stage in ("initiator-ik-2", "initiator-xx-2"):
        return initiator
    responder.read_message(first)
    initiator.read_message(responder.write_message())
    initiator.write_message()
    return responder  # waiting for XX message 3


STAGES = st.sampled_from(["responder-1", "initiator-ik-2", "initiator-xx-2", "responder-xx-3"])


def only_handshake_errors(reader: Handshake, data: bytes) -> None:
    try:
        payload = reader.read_message(data)
    except HandshakeError:
        assert reader.failed
    else:
        assert isinstance(payload, bytes)


@settings(max_examples=300)
@given(stage=STAGES, data=st.binary(max_size=MAX_MESSAGE_SIZE + 10))
def test_fuzz_random_bytes(stage: str, data: bytes) -> None:
    only_handshake_errors(fresh_reader(stage), data)


@settings(max_examples=300)
@given(
    stage=STAGES,
    first=st.sampled_from([PATTERN_IK, PATTERN_XX, 0, 9]),
    data=st.binary(min_size=0, max_size=200),
)
def test_fuzz_plausible_first_messages(stage: str, first: int, data: bytes) -> None:
    only_handshake_errors(fresh_reader(stage), bytes([first]) + data)


@settings(max_examples=300)
@given(
    pattern=PATTERNS,
    index=st.integers(0, 2),
    edits=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1),
    cut=st.integers(0, 300),
)
def test_fuzz_mutated_real_messages(
    pattern: int, index: int, edits: list[tuple[int, int]], cut: int
) -> None:
    index %= message_count(pattern)

    def mutate(message: bytes) -> bytes:
        changed = bytearray(message)
        for position, value in edits:
            if changed:
                changed[position % len(changed)] = value
        return bytes(changed[:cut])

    # Either some side raises HandshakeError, or the mutation was a no-op/was in XX's
    # clear first payload; nothing else may escape.
    replay_with(pattern, index, mutate)


# -- channel binding ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def session_hash() -> bytes:
    initiator, responder = pair(PATTERN_IK)
    run(initiator, responder)
    return initiator.handshake_hash


def test_auth_proof_round_trip(session_hash: bytes) -> None:
    proof = make_auth_proof(CLIENT, session_hash)
    assert len(proof) == AUTH_PROOF_SIZE == 97
    assert verify_auth_proof(proof, session_hash) == CLIENT.sui_address


def test_auth_proof_is_bound_to_the_session(session_hash: bytes) -> None:
    proof = make_auth_proof(CLIENT, session_hash)
    other_initiator, other_responder = pair(PATTERN_IK, e_client=bytes([9]) * 32)
    run(other_initiator, other_responder)
    assert other_responder.handshake_hash != session_hash
    with pytest.raises(HandshakeError, match="identity proof rejected"):
        verify_auth_proof(proof, other_responder.handshake_hash)


def test_auth_proof_is_domain_separated(session_hash: bytes) -> None:
    # A personal-message signature over the bare hash is not a proof.
    with pytest.raises(HandshakeError):
        verify_auth_proof(CLIENT.sign_personal_message(session_hash), session_hash)


def test_every_bit_flip_of_a_proof_fails(session_hash: bytes) -> None:
    proof = make_auth_proof(CLIENT, session_hash)
    for position in range(len(proof)):
        for mask in (0x01, 0x80):
            forged = bytearray(proof)
            forged[position] ^= mask
            with pytest.raises(HandshakeError):
                verify_auth_proof(bytes(forged), session_hash)


@pytest.mark.parametrize("length", [0, 1, 64, 96, 98, 200])
def test_malformed_proofs(session_hash: bytes, length: int) -> None:
    proof = (make_auth_proof(CLIENT, session_hash) * 3)[:length]
    with pytest.raises(HandshakeError):
        verify_auth_proof(proof, session_hash)


@settings(max_examples=20)
@given(seed=KEYS, handshake_hash=KEYS)
def test_proof_yields_its_signers_address(seed: bytes, handshake_hash: bytes) -> None:
    someone = HostIdentity.from_private_bytes(seed, bytes(32))
    proof = make_auth_proof(someone, handshake_hash)
    assert verify_auth_proof(proof, handshake_hash) == someone.sui_address
    # Swapping in another key makes it fail rather than yield another address.
    with pytest.raises(HandshakeError):
        verify_auth_proof(proof[:65] + CLIENT.ed25519_public, handshake_hash)


def test_bad_handshake_hash_length() -> None:
    with pytest.raises(ValueError):
        make_auth_proof(CLIENT, bytes(31))
    with pytest.raises(ValueError):
        verify_auth_proof(bytes(97), bytes(33))


@pytest.mark.parametrize("pattern", [PATTERN_IK, PATTERN_XX])
def test_handshakes_started_ahead_give_the_same_bytes_and_are_used_once(pattern: int) -> None:
    from dtp.identity import _noise as crypto

    crypto._forget_started()
    expected = run(*pair(pattern), [b"a", b"b", b"c"])
    expected_hash = pair(pattern)[0]
    remote = SERVER.noise_public if pattern == PATTERN_IK else None
    crypto.prepare_handshake(CLIENT.noise_private_bytes(), remote, initiator=True)
    crypto.prepare_handshake(SERVER.noise_private_bytes(), initiator=False)
    initiator, responder = pair(pattern)
    # the initiator took its state at once; a responder prepared for IK only
    assert sum(map(len, crypto._STARTED.values())) == 1
    assert run(initiator, responder, [b"a", b"b", b"c"]) == expected
    run(expected_hash, pair(pattern)[1], [b"a", b"b", b"c"])
    assert initiator.handshake_hash == expected_hash.handshake_hash
    assert initiator.transport_keys() == expected_hash.transport_keys()
    left = sum(map(len, crypto._STARTED.values()))
    assert left == (1 if pattern == PATTERN_XX else 0)  # IK took the responder's too


def test_handshakes_started_ahead_only_serve_their_own_keys() -> None:
    from dtp.identity import _noise as crypto

    crypto._forget_started()
    other = HostIdentity.from_private_bytes(bytes([7]) * 32, bytes([8]) * 32)
    crypto.prepare_handshake(CLIENT.noise_private_bytes(), other.noise_public, initiator=True)
    crypto.prepare_handshake(
        CLIENT.noise_private_bytes(), SERVER.noise_public, initiator=True, prologue=b"other"
    )
    crypto.prepare_handshake(other.noise_private_bytes(), initiator=False)
    before = {key: len(ready) for key, ready in crypto._STARTED.items()}
    assert run(*pair(PATTERN_IK), [b"x", b"y"])[1] == [b"x", b"y"]
    assert {key: len(ready) for key, ready in crypto._STARTED.items()} == before
    for _ in range(20):
        crypto.prepare_handshake(other.noise_private_bytes(), initiator=False)
    assert sum(map(len, crypto._STARTED.values())) <= crypto._MAX_STARTED
    with pytest.raises(ValueError):
        crypto.prepare_handshake(bytes(31), initiator=False)
    crypto._forget_started()


# -- the IK identity proof in message 1 (early=True) -----------------------------------------


def test_auth_binding_agrees_on_both_sides_and_follows_the_spec() -> None:
    initiator, responder = pair(PATTERN_IK)
    binding = initiator.auth_binding  # known before message 1 is written
    responder.read_message(initiator.write_message(b""))
    assert responder.auth_binding == binding
    e_public = noise_key_object(E_CLIENT)
    assert e_public is None  # E_CLIENT is no live identity's key: derive it here
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    e_pub = X25519PrivateKey.from_private_bytes(E_CLIENT).public_key().public_bytes_raw()
    name = PROTOCOL_NAMES[PATTERN_IK]
    expected = hashlib.blake2s(name + b"\x05\x00" + b"DTP/1" + SERVER.noise_public + e_pub)
    assert binding == expected.digest()


def test_auth_binding_differs_per_ephemeral_key_server_and_prologue() -> None:
    base = pair(PATTERN_IK)[0].auth_binding
    assert pair(PATTERN_IK, e_client=bytes([7]) * 32)[0].auth_binding != base
    other = HostIdentity.generate()
    assert pair(PATTERN_IK, server_key=other.noise_public)[0].auth_binding != base
    assert pair(PATTERN_IK, prologue=b"DTP/2")[0].auth_binding != base


def test_auth_binding_exists_only_in_ik() -> None:
    initiator, responder = pair(PATTERN_XX)
    with pytest.raises(HandshakeError):
        _ = initiator.auth_binding
    responder.read_message(initiator.write_message(b""))
    with pytest.raises(HandshakeError):
        _ = responder.auth_binding
    _, ik_responder = pair(PATTERN_IK)
    with pytest.raises(HandshakeError):
        _ = ik_responder.auth_binding  # before message 1


def test_early_proof_round_trip_and_its_own_domain() -> None:
    binding = pair(PATTERN_IK)[0].auth_binding
    proof = make_auth_proof(CLIENT, binding, early=True)
    assert len(proof) == AUTH_PROOF_SIZE
    assert verify_auth_proof(proof, binding, early=True) == CLIENT.sui_address
    # an early proof is no XX proof over the same 32 bytes, nor the other way round
    with pytest.raises(HandshakeError):
        verify_auth_proof(proof, binding)
    with pytest.raises(HandshakeError):
        verify_auth_proof(make_auth_proof(CLIENT, binding), binding, early=True)
    other = pair(PATTERN_IK, e_client=bytes([7]) * 32)[0].auth_binding
    with pytest.raises(HandshakeError):
        verify_auth_proof(proof, other, early=True)


@pytest.mark.parametrize("reliable", [True, False], ids=["reliable", "lossy"])
def test_pinned_xx_client_sends_no_message_3_to_an_impostor(reliable: bool) -> None:
    expected = HostIdentity.generate().noise_public  # the server is not its holder
    client, impostor = make_pair(
        ik=False, expected_server_static=expected, reliable_carrier=reliable
    )
    impostor.receive_data(client.data_to_send(0.0), 0.0)
    client.receive_data(impostor.data_to_send(0.0), 0.0)
    assert client.closed
    term = client.termination
    assert term is not None and term.error_code == CloseCode.HANDSHAKE_FAILED
    assert "expected" in term.reason
    sent = client.data_to_send(0.0)
    assert sent == b""  # no HS_FINAL (record kind 3) with the client's static key
    timer = client.get_timer()
    if timer is not None:  # nor later, from a resend timer
        client.handle_timer(timer)
    assert client.data_to_send(1e9) == b""
    assert impostor._hs.remote_static is None and not impostor._hs.complete
