"""The Noise handshakes of the C core (dtp_core/noise.c) and its twin
(dtp/native/reference/_noise.py): byte for byte what ``noiseprotocol`` makes for IK and
XX, both roles, and the same typed error, with the state left as it was, for every bad
message."""

from __future__ import annotations

import hashlib
import threading
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection

from dtp.errors import ErrorCode, HandshakeError
from dtp.native import core
from dtp.native import reference as _reference  # noqa: F401  (the package's import order)
from dtp.native.reference import _noise as ref

BACKENDS: list[tuple[str, Any, Any]] = [("python", ref.NoiseKey, ref.NoiseState)]
if core.HAVE_NATIVE:
    from dtp.native import _noise as native

    BACKENDS.insert(0, ("c", native.NativeNoiseKey, native.NativeNoiseState))

NAMES = {
    ref.NOISE_IK: b"Noise_IK_25519_ChaChaPoly_BLAKE2s",
    ref.NOISE_XX: b"Noise_XX_25519_ChaChaPoly_BLAKE2s",
}
MESSAGES = {ref.NOISE_IK: 2, ref.NOISE_XX: 3}
backends = pytest.mark.parametrize(("name", "Key", "State"), BACKENDS, ids=[b[0] for b in BACKENDS])
patterns = pytest.mark.parametrize("pattern", [ref.NOISE_IK, ref.NOISE_XX], ids=["IK", "XX"])


def test_both_backends_are_here() -> None:
    """The C core is built wherever these tests run (CI builds it): otherwise the
    comparisons below would quietly cover the twin alone."""
    assert [b[0] for b in BACKENDS] == ["c", "python"]


def _key(tag: str) -> bytes:
    return hashlib.blake2s(tag.encode()).digest()


def _public(private: bytes) -> bytes:
    return ref.NoiseKey(private).public


def _oracle(
    pattern: int, initiator: bool, prologue: bytes, s: bytes, e: bytes, rs: bytes | None
) -> Any:
    conn = NoiseConnection.from_name(NAMES[pattern])
    conn.set_prologue(prologue)
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_keypair_from_private_bytes(Keypair.STATIC, s)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (a fixed ephemeral key: "OK for testing")
        conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, e)
        if rs is not None:
            conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, rs)
        conn.start_handshake()
    return conn


class Pair:
    """Client and server of one backend and of noiseprotocol, on the same keys."""

    def __init__(
        self, Key: Any, State: Any, pattern: int, seed: str, prologue: bytes = b"DTP/1"
    ) -> None:
        self.keys = {n: _key(seed + n) for n in ("cs", "ce", "ss", "se")}
        self.pattern = pattern
        rs = _public(self.keys["ss"]) if pattern == ref.NOISE_IK else None
        self.server_public = _public(self.keys["ss"])
        self.client = State(pattern, True, prologue, Key(self.keys["cs"]), Key(self.keys["ce"]), rs)
        self.server = State(pattern, False, prologue, Key(self.keys["ss"]), Key(self.keys["se"]))
        self.oracle_client = _oracle(pattern, True, prologue, self.keys["cs"], self.keys["ce"], rs)
        self.oracle_server = _oracle(
            pattern, False, prologue, self.keys["ss"], self.keys["se"], None
        )

    def sides(self, i: int) -> tuple[Any, Any, Any, Any]:
        """(writer, reader, oracle writer, oracle reader) of message i (from 0)."""
        if i % 2 == 0:
            return self.client, self.server, self.oracle_client, self.oracle_server
        return self.server, self.client, self.oracle_server, self.oracle_client

    def run(self, payloads: list[bytes]) -> list[bytes]:
        messages = []
        for i, payload in enumerate(payloads):
            writer, reader, o_writer, o_reader = self.sides(i)
            message = writer.write_message(payload)
            assert message == bytes(o_writer.write_message(payload))
            assert reader.read_message(message) == payload
            assert bytes(o_reader.read_message(message)) == payload
            messages.append(message)
        return messages

    def check_end(self) -> None:
        assert self.client.complete and self.server.complete
        digest = bytes(self.oracle_client.get_handshake_hash())
        assert self.client.handshake_hash() == self.server.handshake_hash() == digest
        proto = self.oracle_client.noise_protocol
        send, recv = bytes(proto.cipher_state_encrypt.k), bytes(proto.cipher_state_decrypt.k)
        assert self.client.split() == (send, recv)
        assert self.server.split() == (recv, send)
        assert self.client.remote_static == self.server_public
        assert self.server.remote_static == _public(self.keys["cs"])


@backends
@patterns
@pytest.mark.parametrize("prologue", [b"", b"DTP/1", bytes(range(256)) * 3])
def test_fixed_vectors_match_noiseprotocol(
    name: str, Key: Any, State: Any, pattern: int, prologue: bytes
) -> None:
    pair = Pair(Key, State, pattern, "fixed", prologue)
    payloads = [b"", b"hello", bytes(1000)][: MESSAGES[pattern]]
    pair.run(payloads)
    pair.check_end()


# BLAKE2s of the "pinned" IK transcript (both messages, then the handshake hash), as
# noiseprotocol 0.3.1 made it
PINNED_IK = "4b6767bee2b230d95bbdc9961de62e6821f32636ee0f00a0ad204a6835e47176"


@backends
def test_fixed_vector_bytes(name: str, Key: Any, State: Any) -> None:
    """One IK transcript pinned by its digest, so that a change in both the core and
    noiseprotocol (a dependency update) cannot pass unseen."""
    pair = Pair(Key, State, ref.NOISE_IK, "pinned")
    messages = pair.run([b"one", b"two"])
    digest = hashlib.blake2s(b"".join(messages) + pair.client.handshake_hash()).hexdigest()
    assert digest == PINNED_IK


@given(
    pattern=st.sampled_from([ref.NOISE_IK, ref.NOISE_XX]),
    seed=st.text(max_size=8),
    prologue=st.binary(max_size=64),
    payloads=st.lists(st.binary(max_size=300), min_size=3, max_size=3),
)
def test_random_handshakes_match_noiseprotocol(
    pattern: int, seed: str, prologue: bytes, payloads: list[bytes]
) -> None:
    for _, Key, State in BACKENDS:
        pair = Pair(Key, State, pattern, seed, prologue)
        pair.run(payloads[: MESSAGES[pattern]])
        pair.check_end()


def _code(call: Callable[[], Any]) -> int:
    with pytest.raises(HandshakeError) as info:
        call()
    assert isinstance(info.value, ref.NoiseError)
    assert type(info.value.code) is ErrorCode
    return info.value.code


def _flip(message: bytes, index: int) -> bytes:
    data = bytearray(message)
    data[index % len(data)] ^= 0x01
    return bytes(data)


# (name, how to spoil message i, the code every backend must give)
BAD: list[tuple[str, Callable[[bytes], bytes], int]] = [
    ("truncated", lambda m: m[:-1], ref.DECRYPT),
    ("empty", lambda m: b"", ref.NOISE_SIZE),
    ("oversized", lambda m: m + bytes(ref.MAX_MESSAGE), ref.NOISE_SIZE),
    ("last bit", lambda m: _flip(m, -1), ref.DECRYPT),
]


@backends
@patterns
@pytest.mark.parametrize(("bad", "spoil", "code"), BAD, ids=[b[0] for b in BAD])
def test_bad_messages_fail_typed_and_change_nothing(
    name: str,
    Key: Any,
    State: Any,
    pattern: int,
    bad: str,
    spoil: Callable[[bytes], bytes],
    code: int,
) -> None:
    payloads = [b"p1", b"p2", b"p3"][: MESSAGES[pattern]]
    for i in range(len(payloads)):
        pair = Pair(Key, State, pattern, f"bad{i}")
        pair.run(payloads[:i])
        writer, reader, o_writer, o_reader = pair.sides(i)
        message = writer.write_message(payloads[i])
        o_writer.write_message(payloads[i])
        spoiled = spoil(message)
        if pattern == ref.NOISE_XX and i == 0 and bad in ("truncated", "last bit"):
            continue  # XX message 1 is e and a clear payload: nothing to check
        assert _code(lambda r=reader, m=spoiled: r.read_message(m)) == code
        assert reader.done == i  # as it was: the genuine message still completes it
        assert reader.read_message(message) == payloads[i]
        o_reader.read_message(message)
        for j in range(i + 1, len(payloads)):
            w, r, ow, orr = pair.sides(j)
            m = w.write_message(payloads[j])
            assert m == bytes(ow.write_message(payloads[j]))
            assert r.read_message(m) == payloads[j]
            orr.read_message(m)
        pair.check_end()


@backends
@patterns
def test_every_flipped_bit_of_an_authenticated_message_is_refused(
    name: str, Key: Any, State: Any, pattern: int
) -> None:
    pair = Pair(Key, State, pattern, "flips")
    pair.run([b"x"])
    message = pair.server.write_message(b"answer")
    for index in range(len(message)):
        code = _code(lambda i=index: pair.client.read_message(_flip(message, i)))
        assert code in (ref.DECRYPT, ref.NOISE_DH)
        assert pair.client.done == 1
    assert pair.client.read_message(message) == b"answer"


@backends
def test_out_of_turn(name: str, Key: Any, State: Any) -> None:
    pair = Pair(Key, State, ref.NOISE_XX, "turns")
    assert _code(lambda: pair.server.write_message(b"")) == ref.NOISE_TURN
    assert _code(lambda: pair.client.read_message(bytes(48))) == ref.NOISE_TURN
    assert _code(pair.client.handshake_hash) == ref.NOISE_TURN
    assert _code(pair.client.split) == ref.NOISE_TURN
    pair.run([b"", b"", b""])
    assert _code(lambda: pair.client.write_message(b"")) == ref.NOISE_TURN
    assert _code(lambda: pair.server.read_message(bytes(100))) == ref.NOISE_TURN
    assert _code(pair.client.overhead) == ref.NOISE_TURN
    pair.check_end()
    assert _code(pair.client.split) == ref.NOISE_TURN  # split once


@backends
def test_wrong_server_key_in_ik(name: str, Key: Any, State: Any) -> None:
    """A client that used another server key: the server cannot read message 1 (the
    static key it carries is encrypted under es with the server's real key)."""
    server = State(ref.NOISE_IK, False, b"", Key(_key("s")), Key(_key("se")))
    client = State(ref.NOISE_IK, True, b"", Key(_key("c")), Key(_key("ce")), _public(_key("other")))
    assert _code(lambda: server.read_message(client.write_message(b"hi"))) == ref.DECRYPT
    assert server.done == 0 and server.remote_static is None


@backends
@patterns
def test_low_order_ephemeral_key(name: str, Key: Any, State: Any, pattern: int) -> None:
    """An all-zero (low-order) ephemeral key: the first DH with it fails NOISE_DH."""
    server = State(pattern, False, b"", Key(_key("s")), Key(_key("se")))
    message = bytes(32) + (bytes(48 + 16) if pattern == ref.NOISE_IK else b"")
    if pattern == ref.NOISE_IK:
        assert _code(lambda: server.read_message(message)) == ref.NOISE_DH
        assert server.done == 0
    else:
        assert server.read_message(message) == b""
        assert _code(lambda: server.write_message(b"")) == ref.NOISE_DH
        assert server.done == 1


@backends
def test_dh_results_given_ahead_are_used(name: str, Key: Any, State: Any) -> None:
    """A client's es and ss made ahead (dtp.identity._ahead) give the same message; a
    wrong one gives another (so the given result is really the one used)."""
    server_public = _public(_key("s"))
    cs, ce = Key(_key("c")), Key(_key("ce"))
    plain = State(ref.NOISE_IK, True, b"", cs, ce, server_public).write_message(b"m")
    given = State(ref.NOISE_IK, True, b"", cs, ce, server_public)
    given.give_dh(ref.DH_ES, ce.dh(server_public))
    given.give_dh(ref.DH_SS, cs.dh(server_public))
    assert given.write_message(b"m") == plain
    wrong = State(ref.NOISE_IK, True, b"", cs, ce, server_public)
    wrong.give_dh(ref.DH_SS, bytes(32))
    assert wrong.write_message(b"m") != plain


@backends
def test_kept_static_results_give_the_same_handshake(name: str, Key: Any, State: Any) -> None:
    server_key = Key(_key("s"), keep_results=True)
    results = []
    for _ in range(3):  # the second and third take the kept ss
        client = State(ref.NOISE_IK, True, b"", Key(_key("c")), Key(_key("ce")), server_key.public)
        server = State(ref.NOISE_IK, False, b"", server_key, Key(_key("se")))
        assert server.read_message(client.write_message(b"a")) == b"a"
        assert client.read_message(server.write_message(b"b")) == b"b"
        results.append((server.handshake_hash(), server.split()))
    assert results[0] == results[1] == results[2]


@backends
def test_ephemeral_key_set_later(name: str, Key: Any, State: Any) -> None:
    started = State(ref.NOISE_XX, True, b"", Key(_key("c")))
    assert _code(lambda: started.write_message(b"")) == ref.ARG
    assert started.done == 0
    started.set_ephemeral(Key(_key("ce")))
    full = State(ref.NOISE_XX, True, b"", Key(_key("c")), Key(_key("ce")))
    assert started.write_message(b"z") == full.write_message(b"z")
    assert _code(lambda: started.set_ephemeral(Key(_key("x")))) == ref.ARG


@backends
def test_misuse_is_refused(name: str, Key: Any, State: Any) -> None:
    s = Key(_key("s"))
    assert _code(lambda: Key(bytes(31))) == ref.ARG
    assert _code(lambda: State(3, True, b"", s)) == ref.ARG
    assert _code(lambda: State(ref.NOISE_IK, True, b"", s)) == ref.ARG  # IK needs rs
    assert _code(lambda: State(ref.NOISE_XX, True, b"", s, None, bytes(32))) == ref.ARG
    assert _code(lambda: State(ref.NOISE_IK, False, b"", s, None, bytes(32))) == ref.ARG
    hs = State(ref.NOISE_XX, True, b"", s, Key(_key("e")))
    assert _code(lambda: hs.give_dh(7, bytes(32))) == ref.ARG
    assert _code(lambda: hs.give_dh(ref.DH_EE, bytes(31))) == ref.ARG
    assert _code(lambda: s.dh(bytes(32))) == ref.NOISE_DH
    too_big = bytes(ref.MAX_MESSAGE - 32 + 1)
    assert _code(lambda: hs.write_message(too_big)) == ref.NOISE_SIZE
    assert len(hs.write_message(too_big[:-1])) == ref.MAX_MESSAGE


@backends
def test_kept_results_are_bounded_oldest_first(name: str, Key: Any, State: Any) -> None:
    """A static key keeps the ss of its last 256 peers: the oldest goes first."""
    server_key = Key(_key("bounded"), keep_results=True)
    peers = [Key(_key(f"peer{i}")) for i in range(257)]
    for peer in peers:
        client = State(ref.NOISE_IK, True, b"", peer, Key(_key("e")), server_key.public)
        server = State(ref.NOISE_IK, False, b"", server_key, Key(_key("se")))
        server.read_message(client.write_message(b""))
    assert not server_key.kept(peers[0].public)
    assert all(server_key.kept(peer.public) for peer in peers[1:])
    assert not Key(_key("plain")).kept(peers[1].public)  # a key made without keeps none


def _failure(call: Callable[[], Any]) -> Any:
    """What ``call`` raised: its type, and its code for a NoiseError."""
    try:
        call()
    except ref.NoiseError as exc:
        return ("NoiseError", exc.code)
    except Exception as exc:
        return type(exc).__name__
    return None


def test_both_backends_refuse_bad_arguments_alike() -> None:
    """Wrong types and out-of-range ints: the same exception (and code) on both."""
    cases: dict[str, Callable[[Any, Any], Any]] = {
        "key of ints": lambda K, S: K(list(_key("x"))),
        "key of 31 bytes": lambda K, S: K(bytes(31)),
        "dh with ints": lambda K, S: K(_key("x")).dh(list(bytes(32))),
        "kept with a str": lambda K, S: K(_key("x"), keep_results=True).kept("x" * 32),
        "prologue an int": lambda K, S: S(ref.NOISE_XX, True, 5, K(_key("x"))),
        "prologue of ints": lambda K, S: S(ref.NOISE_XX, True, [1, 2], K(_key("x"))),
        "rs of ints": lambda K, S: S(ref.NOISE_IK, True, b"", K(_key("x")), None, list(bytes(32))),
        "e a str": lambda K, S: S(ref.NOISE_XX, True, b"", K(_key("x")), "e"),
        "s bytes": lambda K, S: S(ref.NOISE_XX, True, b"", _key("x")),
        "pattern huge": lambda K, S: S(2**32 + 1, True, b"", K(_key("x"))),
        "set_ephemeral a str": lambda K, S: S(ref.NOISE_XX, True, b"", K(_key("x"))).set_ephemeral(
            "e"
        ),
        "token huge": lambda K, S: _xx(K, S).give_dh(2**40, bytes(32)),
        "token negative": lambda K, S: _xx(K, S).give_dh(-1, bytes(32)),
        "secret of ints": lambda K, S: _xx(K, S).give_dh(ref.DH_EE, list(bytes(32))),
        "payload of ints": lambda K, S: _xx(K, S).write_message([1, 2, 3]),
        "payload a str": lambda K, S: _xx(K, S).write_message("abc"),
        "message of ints": lambda K, S: _xx(K, S, False).read_message(list(bytes(32))),
    }
    for what, case in cases.items():
        outcomes = {name: _failure(lambda c=case, K=K, S=S: c(K, S)) for name, K, S in BACKENDS}
        assert len(set(outcomes.values())) == 1, (what, outcomes)
        assert None not in outcomes.values(), what


def _xx(Key: Any, State: Any, initiator: bool = True) -> Any:
    return State(ref.NOISE_XX, initiator, b"", Key(_key("s")), Key(_key("e")))


@backends
def test_a_wiped_state_is_refused_everywhere(name: str, Key: Any, State: Any) -> None:
    pair = Pair(Key, State, ref.NOISE_XX, "wiped")
    message = pair.client.write_message(b"x")
    pair.server.read_message(message)  # (the server now holds ck and a DH result)
    pair.server.wipe()
    assert pair.server.done == 0 and not pair.server.complete
    for call in (
        lambda: pair.server.write_message(b""),
        lambda: pair.server.read_message(message),
        lambda: pair.server.give_dh(ref.DH_EE, bytes(32)),
        lambda: pair.server.set_ephemeral(Key(_key("e2"))),
        lambda: pair.server.remote_static,
        pair.server.overhead,
        pair.server.handshake_hash,
        pair.server.split,
    ):
        assert _code(call) == ref.ARG
    if name == "c":
        assert bytes(native.ffi.buffer(pair.server._hs)) == bytes(native.ffi.sizeof("dtp_noise"))


def test_a_failed_handshake_wipes_its_noise_state() -> None:
    from dtp.identity._noise import Handshake

    client = Handshake.initiator(_key("c"), _key("ce"), _public(_key("s")))
    server = Handshake.responder(_key("s"), _key("se"))
    server.read_message(client.write_message(b"hello"))
    noise = client._noise  # (holds ck and the es and ss results now)
    assert noise is not None and noise.done == 1
    with pytest.raises(HandshakeError):
        client.read_message(bytes(100))  # (a forged message 2: the client's handshake dies)
    assert client.failed
    assert _code(noise.overhead) == ref.ARG  # wiped, not merely dropped
    assert noise.done == 0


@backends
def test_protocol_names_agree(name: str, Key: Any, State: Any) -> None:
    """The names the core hashes are the twin's and dtp.identity's (h after
    Initialize: HASH(HASH(name) || prologue), then IK's pre-message key)."""
    from dtp.identity._noise import PATTERN_IK, PATTERN_XX, PROTOCOL_NAMES

    assert PROTOCOL_NAMES == ref.PROTOCOL_NAMES == NAMES
    assert (PATTERN_IK, PATTERN_XX) == (ref.NOISE_IK, ref.NOISE_XX)
    if name != "c":
        return
    s = Key(_key("s"))
    for pattern, nm in NAMES.items():
        h = hashlib.blake2s(hashlib.blake2s(nm).digest() + b"P").digest()
        if pattern == ref.NOISE_IK:
            h = hashlib.blake2s(h + s.public).digest()
        state = State(pattern, False, b"P", s)
        assert bytes(native.ffi.buffer(state._hs.h)) == h


@backends
def test_one_result_keeping_key_serves_many_threads(name: str, Key: Any, State: Any) -> None:
    """The per-key derive context and the kept results are the only C state handshakes
    share: 4 threads of IK handshakes on one server key, all keys matching."""
    server_key = Key(_key("shared server"), keep_results=True)
    clients = [Key(_key(f"client {i}")) for i in range(6)]  # (kept ss: hits and misses)
    rounds = 200 if name == "c" else 25
    failures: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for i in range(rounds):
                tag = f"{index}.{i}"
                client = State(
                    ref.NOISE_IK, True, b"", clients[(index + i) % len(clients)],
                    Key(_key("ce" + tag)), server_key.public,
                )  # fmt: skip
                server = State(ref.NOISE_IK, False, b"", server_key, Key(_key("se" + tag)))
                assert server.read_message(client.write_message(b"a")) == b"a"
                assert client.read_message(server.write_message(b"b")) == b"b"
                send, recv = client.split()
                assert server.split() == (recv, send)
        except BaseException as exc:  # (reported by the main thread)
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert all(server_key.kept(c.public) for c in clients)
