"""Keys made ahead of need (dtp.identity._ahead): each is handed out once, the key pair made
ahead is the one the handshake uses, a forked child never reuses its parent's keys, and
a connect makes the next one's keys while it waits."""

from __future__ import annotations

import os
import threading

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

import dtp.socket
from dtp.errors import CryptoError
from dtp.identity import _ahead as keys_ahead
from dtp.identity._ed25519 import sign_personal_with_seed, verify
from dtp.identity._noise import PATTERN_IK, Handshake, _static_key
from dtp.identity.keys import (
    ED25519_FLAG,
    HostIdentity,
    core_noise_key,
    personal_message_digest,
)
from tests.support.procs import server_process

SERVER = HostIdentity.generate()
CLIENT = HostIdentity.generate()


@pytest.fixture(autouse=True)
def empty_pools() -> None:
    keys_ahead._forget_all()


def _public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def _the_handshake_takes_its_one_proof_made(identity: HostIdentity) -> None:
    """One identity proof made ahead, for the ephemeral key the next connect takes: the
    handshake with that key takes it, and the server's check takes it as ``identity``'s."""
    from dtp.identity import _noise as crypto

    assert len(crypto._PROOFS_AHEAD) == 1
    client = Handshake.initiator(
        identity.noise_private_bytes(), keys_ahead.new_ephemeral_key(), SERVER.noise_public
    )
    proof = crypto.make_auth_proof(identity, client.auth_binding, early=True)
    assert not crypto._PROOFS_AHEAD
    assert crypto.verify_auth_proof(proof, client.auth_binding, early=True) == identity.sui_address


def test_prepared_ephemeral_keys_are_handed_out_once_then_fresh_ones() -> None:
    for _ in range(keys_ahead.MAX_AHEAD + 3):  # more than the pool holds
        keys_ahead.prepare_ephemeral_key()
    assert len(keys_ahead._ephemeral) == keys_ahead.MAX_AHEAD
    keys = [keys_ahead.new_ephemeral_key() for _ in range(keys_ahead.MAX_AHEAD + 2)]
    assert all(len(k) == 32 for k in keys)
    assert len(set(keys)) == len(keys)
    # the prepared ones wait for their handshake; the two made on the spot have no pair
    assert sum(keys_ahead._handed.get(k) is not None for k in keys) == keys_ahead.MAX_AHEAD
    first = keys[0]
    pair = keys_ahead.take_ephemeral_keypair(first)
    assert pair.public == _public(first)
    assert keys_ahead.take_ephemeral_keypair(first) is None  # once only


def test_handshake_uses_the_prepared_key_pair_and_completes() -> None:
    keys_ahead.prepare_ephemeral_key()
    keys_ahead.prepare_ephemeral_key()
    client_e = keys_ahead.new_ephemeral_key()
    server_e = keys_ahead.new_ephemeral_key()
    client = Handshake.initiator(CLIENT.noise_private_bytes(), client_e, SERVER.noise_public)
    server = Handshake.responder(SERVER.noise_private_bytes(), server_e)
    assert not keys_ahead._handed  # both handshakes took their pairs when made
    m1 = client.write_message(b"hello")
    assert m1[0] == PATTERN_IK
    assert m1[1:33] == _public(client_e)  # IK message 1 opens with e, in clear
    assert server.read_message(m1) == b"hello"
    m2 = server.write_message(b"world")
    assert m2[:32] == _public(server_e)
    assert client.read_message(m2) == b"world"
    assert client.handshake_hash == server.handshake_hash
    send, recv = client.transport_keys()
    assert server.transport_keys() == (recv, send)


def test_unused_handed_keys_are_bounded() -> None:
    for _ in range(keys_ahead._MAX_HANDED + 10):
        keys_ahead.prepare_ephemeral_key()
        keys_ahead.new_ephemeral_key()
    assert len(keys_ahead._handed) == keys_ahead._MAX_HANDED


def test_anonymous_identities_are_distinct_and_used_once() -> None:
    keys_ahead.prepare_anonymous_identity()
    prepared = keys_ahead._identities[0]
    first = keys_ahead.take_anonymous_identity()
    assert first is prepared
    second = keys_ahead.take_anonymous_identity()  # pool empty: a new one
    assert second.sui_address != first.sui_address
    assert second.noise_public != first.noise_public


def test_forked_child_does_not_reuse_the_parents_keys() -> None:
    keys_ahead.prepare_anonymous_identity()
    keys_ahead.prepare_ephemeral_key()
    parent_identity = keys_ahead._identities[0]
    parent_key = keys_ahead._ephemeral[0][0]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it would hand out, then leave at once
        try:
            identity = keys_ahead.take_anonymous_identity()
            key = keys_ahead.new_ephemeral_key()
            os.write(write_end, identity.noise_public + key)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        got = pipe.read()
    os.waitpid(pid, 0)
    assert len(got) == 64
    assert got[:32] != parent_identity.noise_public
    assert got[32:] != parent_key
    # the parent's own keys are still there for it
    assert keys_ahead.take_anonymous_identity() is parent_identity


def test_concurrent_takers_never_share_a_key() -> None:
    for _ in range(keys_ahead.MAX_AHEAD):
        keys_ahead.prepare_ephemeral_key()
    got: list[bytes] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(50):
            key = keys_ahead.new_ephemeral_key()
            with lock:
                got.append(key)
            keys_ahead.prepare_ephemeral_key()

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(got) == 200
    assert len(set(got)) == 200


def test_connect_makes_the_next_connects_keys_and_each_is_fresh() -> None:
    addresses: list[str] = []

    def handler(sock: dtp.socket.DTPSocket) -> None:
        sock.sendall(sock.recv(100))

    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER) as server:
        threading.Thread(target=server.serve_forever, args=(handler,), daemon=True).start()
        for i in range(3):
            with dtp.socket.create_connection(
                server.address, timeout=10, server_key=server.noise_public_key
            ) as sock:
                sock.sendall(b"anon %d" % i)
                assert sock.recv(100) == b"anon %d" % i
                addresses.append(sock._engine.conn.config.identity.sui_address)
            # this connect left the next one an identity and ephemeral keys
            assert len(keys_ahead._identities) == 1
            assert keys_ahead._ephemeral
        # a named identity is not replaced, and leaves no anonymous one behind
        keys_ahead._forget_all()
        with dtp.socket.create_connection(
            server.address, timeout=10, server_key=server.noise_public_key, identity=CLIENT
        ) as sock:
            sock.sendall(b"named")
            assert sock.recv(100) == b"named"
            assert sock._engine.conn.config.identity is CLIENT
        assert not keys_ahead._identities
    assert len(set(addresses)) == 3  # a new anonymous identity per connection
    assert CLIENT.sui_address not in addresses


def test_an_anonymous_identity_is_made_around_the_core_key_its_handshakes_use() -> None:
    """A fresh anonymous identity holds the core's Noise key object, and its handshake
    takes that object as it is (its public half is derived once, not again from the
    bytes); the identity is a whole one: its keys match, it saves and loads."""
    identity = keys_ahead.new_anonymous_identity()
    raw = identity.noise_private_bytes()
    assert identity.noise_public == _public(raw)
    made = core_noise_key(raw)
    assert made is not None and made.public == identity.noise_public
    assert _static_key(raw) is made  # (the handshake's static key: no second derivation)
    again = HostIdentity.from_sui_keystring(identity.to_sui_keystring(), raw)
    assert again == identity and again.sui_address == identity.sui_address
    client = Handshake.initiator(raw, keys_ahead.new_ephemeral_key(), SERVER.noise_public)
    server = Handshake.responder(SERVER.noise_private_bytes(), keys_ahead.new_ephemeral_key())
    assert server.read_message(client.write_message(b"one")) == b"one"
    assert client.read_message(server.write_message(b"two")) == b"two"
    assert server.remote_static == identity.noise_public


def test_shared_secrets_made_ahead_are_the_handshakes_and_used_once() -> None:
    keys_ahead.prepare_anonymous_identity(SERVER.noise_public)
    keys_ahead.prepare_ephemeral_key(SERVER.noise_public)
    assert len(keys_ahead._shared) == 2  # IK's ss and es with this server
    identity = keys_ahead.take_anonymous_identity()
    client = Handshake.initiator(
        identity.noise_private_bytes(), keys_ahead.new_ephemeral_key(), SERVER.noise_public
    )
    server = Handshake.responder(SERVER.noise_private_bytes(), keys_ahead.new_ephemeral_key())
    m1 = client.write_message(b"one")
    assert not keys_ahead._shared  # both taken by message 1
    assert server.read_message(m1) == b"one"  # so they were the right ones
    assert client.read_message(server.write_message(b"two")) == b"two"
    assert client.handshake_hash == server.handshake_hash


def test_shared_secrets_for_another_server_are_left_alone() -> None:
    other = HostIdentity.generate()
    keys_ahead.prepare_static_secret(CLIENT, other.noise_public)
    keys_ahead.prepare_ephemeral_key(other.noise_public)
    made = dict(keys_ahead._shared)
    ephemeral = keys_ahead.new_ephemeral_key()
    client = Handshake.initiator(CLIENT.noise_private_bytes(), ephemeral, SERVER.noise_public)
    server = Handshake.responder(SERVER.noise_private_bytes(), bytes(range(32)))
    assert server.read_message(client.write_message(b"x")) == b"x"
    # keyed by both keys: nothing taken; the ephemeral key's DH with `other` is dropped
    # (that key is this handshake's now, never another's), the static key's is left
    assert (ephemeral, other.noise_public) in made
    assert keys_ahead._shared == {k: v for k, v in made.items() if k[0] != ephemeral}
    assert (CLIENT.noise_private_bytes(), other.noise_public) in keys_ahead._shared
    for _ in range(keys_ahead._MAX_SHARED + 5):
        keys_ahead.prepare_static_secret(HostIdentity.generate(), other.noise_public)
    assert len(keys_ahead._shared) == keys_ahead._MAX_SHARED
    # no secret for a malformed or low-order key
    keys_ahead._forget_all()
    keys_ahead.prepare_static_secret(CLIENT, bytes(32))
    keys_ahead.prepare_static_secret(CLIENT, b"short")
    assert not keys_ahead._shared


def test_each_connect_uses_the_secrets_the_previous_one_made() -> None:
    # the server in a process of its own: in this one it would take ephemeral keys the
    # client made (for its handshakes, where the client's es is of no use)
    with server_process("echo", deny=[]) as srv:
        made: set[tuple[bytes, bytes]] = set()
        for i in range(3):
            with dtp.socket.create_connection(srv.endpoint, timeout=10, server_key=srv.key) as sock:
                sock.sendall(b"%d" % i)
                assert sock.recv(100) == b"%d" % i
            assert not made & set(keys_ahead._shared)  # the last connect's were taken
            made = set(keys_ahead._shared)
            assert len(made) == 2  # and it left two for the next


def test_an_identity_proof_made_ahead_is_the_one_made_then_and_taken_once() -> None:
    from dtp.identity import _noise as crypto

    crypto._PROOFS_AHEAD.clear()
    keys_ahead.prepare_ephemeral_key(SERVER.noise_public)
    ephemeral = keys_ahead.next_ephemeral_public()
    assert ephemeral is not None
    crypto.prepare_auth_proof(CLIENT, SERVER.noise_public, ephemeral)
    assert len(crypto._PROOFS_AHEAD) == 1
    client = Handshake.initiator(
        CLIENT.noise_private_bytes(), keys_ahead.new_ephemeral_key(), SERVER.noise_public
    )
    binding = client.auth_binding
    proof = crypto.make_auth_proof(CLIENT, binding, early=True)
    assert not crypto._PROOFS_AHEAD  # taken
    # the same bytes a signing now gives, and the server's check takes it
    assert proof == CLIENT.sign_personal_message(crypto._auth_message(binding, True))
    assert crypto.verify_auth_proof(proof, binding, early=True) == CLIENT.sui_address
    # not served for another identity, another context, or an identity of a subclass
    crypto.prepare_auth_proof(CLIENT, SERVER.noise_public, ephemeral)
    other = HostIdentity.generate()
    assert crypto.make_auth_proof(other, binding, early=True) != proof
    assert crypto.make_auth_proof(CLIENT, binding) != proof  # XX's context
    assert len(crypto._PROOFS_AHEAD) == 1

    class Signer(HostIdentity):
        pass

    crypto._PROOFS_AHEAD.clear()
    sub = Signer.from_private_bytes(bytes([7]) * 32, bytes([8]) * 32)
    crypto.prepare_auth_proof(sub, SERVER.noise_public, ephemeral)
    assert not crypto._PROOFS_AHEAD


def test_a_connect_leaves_the_next_one_its_identity_proof_and_the_server_takes_it() -> None:
    from dtp.identity import _noise as crypto

    crypto._PROOFS_AHEAD.clear()
    # the server in a process of its own (in this one it would take the ephemeral keys
    # made for the client's next connect)
    with server_process("echo", deny=[]) as srv:
        made: list[tuple[bytes, bytes]] = []
        for i in range(3):
            with dtp.socket.create_connection(
                srv.endpoint, timeout=10, server_key=srv.key, identity=CLIENT
            ) as sock:
                # the one the previous connection made, taken (its own waits may have
                # made the next one's already)
                assert not set(made) & set(crypto._PROOFS_AHEAD)
                sock.sendall(b"%d" % i)
                assert sock.recv(100) == b"%d" % i
            # made in the connection's waits (for the reply, the close): for the
            # ephemeral key the next connect takes
            ephemeral = keys_ahead.next_ephemeral_public()
            assert ephemeral is not None
            binding = crypto._early_binding(crypto.DEFAULT_PROLOGUE, srv.key, ephemeral)
            message = crypto._auth_message(binding, True)
            assert list(crypto._PROOFS_AHEAD) == [(CLIENT.ed25519_public, message)]
            made = list(crypto._PROOFS_AHEAD)


def test_a_key_made_in_one_step_is_offered_only_with_its_dh() -> None:
    # the connect makes its next keys in steps of one scalar multiplication each, so
    # that the server's reply waits on one at most; between the key's step and its DH's
    # no handshake may take the key (it would go without the DH, and the DH put by
    # after it would keep the key alive past the handshake)
    made = keys_ahead.make_ephemeral_key()
    assert made is not None
    assert not keys_ahead._ephemeral and not keys_ahead._shared
    assert keys_ahead.new_ephemeral_key() != made[0]  # (not handed out: a fresh one)
    keys_ahead.offer_ephemeral_key(made, SERVER.noise_public)
    assert keys_ahead._ephemeral[0] is made
    assert (made[0], SERVER.noise_public) in keys_ahead._shared
    noise = keys_ahead.new_anonymous_noise_key()
    identity = keys_ahead.new_anonymous_identity(noise)
    assert identity.noise_private_bytes() == noise[0] and identity.noise_public == noise[1].public
    assert not keys_ahead._identities
    assert keys_ahead.offer_anonymous_identity(identity, SERVER.noise_public)
    assert keys_ahead.take_anonymous_identity() is identity


def test_keys_made_past_the_limit_meanwhile_drop_the_one_being_made() -> None:
    made = keys_ahead.make_ephemeral_key()
    identity = keys_ahead.new_anonymous_identity()
    assert made is not None
    for _ in range(keys_ahead.MAX_AHEAD):
        keys_ahead.prepare_ephemeral_key()
        keys_ahead.prepare_anonymous_identity()
    assert keys_ahead.make_ephemeral_key() is None
    assert not keys_ahead.anonymous_identities_wanted()
    keys_ahead.offer_ephemeral_key(made, SERVER.noise_public)
    assert not keys_ahead.offer_anonymous_identity(identity, SERVER.noise_public)
    assert all(private != made[0] for private, _key in keys_ahead._ephemeral)
    assert identity not in keys_ahead._identities
    assert not any(
        private in (made[0], identity.noise_private_bytes()) for private, _ in keys_ahead._shared
    )


@pytest.mark.skipif(sign_personal_with_seed is None, reason="needs fastcrypto")
def test_fastcryptos_seed_signature_is_the_identitys_own() -> None:
    # one call for a fresh key and its first signature: the same 97 bytes (deterministic
    # Ed25519) the identity of that seed signs through OpenSSL, ending in its public key
    assert sign_personal_with_seed is not None
    for size in (0, 1, 46, 200):
        seed, message = os.urandom(32), os.urandom(size)
        identity = HostIdentity.from_private_bytes(seed, os.urandom(32))
        signature = sign_personal_with_seed(seed, message)
        assert signature == identity.sign_personal_message(message)
        assert signature[-32:] == identity.ed25519_public


@pytest.mark.skipif(sign_personal_with_seed is None, reason="needs fastcrypto")
def test_an_anonymous_identity_made_with_its_proof_is_whole_and_its_proof_taken() -> None:
    from dtp.identity import _noise as crypto

    crypto._PROOFS_AHEAD.clear()
    keys_ahead.prepare_ephemeral_key(SERVER.noise_public)
    ephemeral = keys_ahead.next_ephemeral_public()
    assert ephemeral is not None
    noise = keys_ahead.new_anonymous_noise_key()
    identity = crypto.anonymous_identity_proving(noise, SERVER.noise_public, ephemeral)
    assert identity is not None and type(identity) is HostIdentity
    _the_handshake_takes_its_one_proof_made(identity)
    # a whole identity: its key object, made at first use, is the seed's (the public
    # key the signature gave), it signs anew, saves and loads
    signature = identity.sign_personal_message(b"again")
    assert signature[0] == ED25519_FLAG
    assert verify(identity.ed25519_public, signature[1:65], personal_message_digest(b"again"))
    again = HostIdentity.from_sui_keystring(identity.to_sui_keystring(), noise[0])
    assert again == identity and again.sui_address == identity.sui_address
    assert identity.noise_public == noise[1].public


@pytest.mark.skipif(sign_personal_with_seed is None, reason="needs fastcrypto")
def test_an_anonymous_identity_whose_seed_is_not_its_public_key_refuses_to_sign(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # were fastcrypto's public key not the seed's, the identity's signatures (which end
    # with that key) would never verify: its key object, made at first use, refuses
    from dtp.identity import _noise as crypto

    sign = sign_personal_with_seed
    assert sign is not None
    other = HostIdentity.generate().ed25519_public
    monkeypatch.setattr(crypto, "sign_personal_with_seed", lambda s, m: sign(s, m)[:-32] + other)
    crypto._PROOFS_AHEAD.clear()
    identity = crypto.anonymous_identity_proving(
        keys_ahead.new_anonymous_noise_key(), SERVER.noise_public, os.urandom(32)
    )
    crypto._PROOFS_AHEAD.clear()
    assert identity is not None and identity.ed25519_public == other
    for _ in range(2):  # (the key refused is not kept)
        with pytest.raises(CryptoError):
            identity.sign_personal_message(b"again")
    with pytest.raises(CryptoError):
        identity.to_sui_keystring()


def test_next_connect_keys_leave_an_anonymous_identity_with_its_proof_made() -> None:
    from dtp.identity import _noise as crypto
    from dtp.protocol.connection import ConnectionConfig
    from dtp.transport.blocking import _connect as blocking_connect

    crypto._PROOFS_AHEAD.clear()
    anonymous = keys_ahead.new_anonymous_identity()
    cfg = ConnectionConfig(identity=anonymous, is_client=True, server_static=SERVER.noise_public)
    keys = blocking_connect.NextConnectKeys(cfg, anonymous=True)
    assert keys.make() and keys.done
    identity = keys_ahead.take_anonymous_identity()
    assert identity is not anonymous and not keys_ahead._identities
    _the_handshake_takes_its_one_proof_made(identity)


@pytest.mark.parametrize("signer", ["missing", "failing", "not_ed25519"])
def test_without_fastcryptos_signature_the_next_keys_make_the_identity_and_proof_apart(
    monkeypatch: pytest.MonkeyPatch, signer: str
) -> None:
    from dtp.identity import _noise as crypto
    from dtp.protocol.connection import ConnectionConfig
    from dtp.transport.blocking import _connect as blocking_connect

    def failing(seed: bytes, message: bytes) -> bytes:
        raise ValueError("no")

    replacement = {
        "missing": None,
        "failing": failing,
        "not_ed25519": lambda seed, message: b"\x01" + bytes(96),
    }[signer]
    monkeypatch.setattr(crypto, "sign_personal_with_seed", replacement)
    crypto._PROOFS_AHEAD.clear()
    keys_ahead.prepare_ephemeral_key(SERVER.noise_public)
    ephemeral = keys_ahead.next_ephemeral_public()
    assert ephemeral is not None
    noise = keys_ahead.new_anonymous_noise_key()
    assert crypto.anonymous_identity_proving(noise, SERVER.noise_public, ephemeral) is None
    assert not crypto._PROOFS_AHEAD
    # the connect's steps still leave an identity and its proof, made the usual way
    keys_ahead._forget_all()
    anonymous = keys_ahead.new_anonymous_identity()
    cfg = ConnectionConfig(identity=anonymous, is_client=True, server_static=SERVER.noise_public)
    keys = blocking_connect.NextConnectKeys(cfg, anonymous=True)
    assert keys.make() and keys.done
    identity = keys_ahead.take_anonymous_identity()
    assert [key for key, _message in crypto._PROOFS_AHEAD] == [identity.ed25519_public]
