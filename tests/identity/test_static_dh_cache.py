"""X25519 results of a live identity's static key are kept (dtp.identity._noise._static_key:
the core's NoiseKey made with keep_results): a server answering IK from the same client
again and again computes its ``ss`` once.

Checked: the handshakes agree with each other and with a fresh computation, a second
handshake from the same client takes the kept ``ss`` (a kept value that were wrong would
fail the handshake), nothing made with an ephemeral key is ever kept, and the tables
stay within their bounds.
"""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from dtp.identity import _noise as crypto
from dtp.identity._noise import PATTERN_IK, Handshake, static_secret_kept
from dtp.identity.keys import HostIdentity
from dtp.native._noise import NOISE_IK, NoiseKey, NoiseState
from dtp.native.reference._noise import NoiseKey as ReferenceKey


@pytest.fixture(autouse=True)
def _fresh_tables() -> None:
    with crypto._static_lock:
        crypto._STATIC_KEYS.clear()


def _handshake(client: HostIdentity, server: HostIdentity) -> tuple[Handshake, Handshake]:
    initiator = Handshake.initiator(
        client.noise_private_bytes(), os.urandom(32), server.noise_public
    )
    responder = Handshake.responder(server.noise_private_bytes(), os.urandom(32))
    responder.read_message(initiator.write_message(b"one"))
    initiator.read_message(responder.write_message(b"two"))
    assert initiator.complete and responder.complete
    assert initiator.pattern == responder.pattern == PATTERN_IK
    assert initiator.handshake_hash == responder.handshake_hash
    sent, received = initiator.transport_keys()
    assert responder.transport_keys() == (received, sent)
    return initiator, responder


def _ss(a: HostIdentity, b: HostIdentity) -> bytes:
    return X25519PrivateKey.from_private_bytes(a.noise_private_bytes()).exchange(
        X25519PublicKey.from_public_bytes(b.noise_public)
    )


def test_a_returning_client_finds_its_ss_kept_and_the_sessions_agree() -> None:
    client, server = HostIdentity.generate(), HostIdentity.generate()
    assert not static_secret_kept(server, client.noise_public)
    _handshake(client, server)
    # both sides keep their ss: the server for the client's next handshake, the client
    # for its next connect to this server
    assert static_secret_kept(server, client.noise_public)
    assert static_secret_kept(client, server.noise_public)
    hashes = {_handshake(client, server)[0].handshake_hash for _ in range(5)}
    assert len(hashes) == 5  # fresh ephemeral keys: five different sessions
    # a kept result is the right one: a handshake on it agrees with one that computes
    # it (a key of the same private bytes with nothing kept), byte for byte, on the
    # same ephemeral keys
    key = crypto._static_key(server.noise_private_bytes())
    assert key is crypto._static_key(server.noise_private_bytes())  # one object per identity
    assert key.kept(client.noise_public)
    fresh = NoiseKey(server.noise_private_bytes())
    assert not fresh.kept(client.noise_public)
    ce, se = os.urandom(32), os.urandom(32)
    outcomes = []
    for server_key in (key, fresh):
        c = NoiseState(
            NOISE_IK, True, b"p", NoiseKey(client.noise_private_bytes()), NoiseKey(ce),
            server.noise_public,
        )  # fmt: skip
        s = NoiseState(NOISE_IK, False, b"p", server_key, NoiseKey(se))
        message1 = c.write_message(b"one")
        assert s.read_message(message1) == b"one"  # (the kept key: its ss taken as kept)
        message2 = s.write_message(b"two")
        assert c.read_message(message2) == b"two"
        outcomes.append((message1, message2, s.handshake_hash(), s.split()))
    assert outcomes[0] == outcomes[1]
    assert ReferenceKey(server.noise_private_bytes()).dh(client.noise_public) == _ss(server, client)


def test_nothing_an_ephemeral_key_made_is_kept() -> None:
    client, server = HostIdentity.generate(), HostIdentity.generate()
    for _ in range(4):
        initiator = Handshake.initiator(
            client.noise_private_bytes(), os.urandom(32), server.noise_public
        )
        responder = Handshake.responder(server.noise_private_bytes(), os.urandom(32))
        message1 = initiator.write_message(b"")
        responder.read_message(message1)
        message2 = responder.write_message(b"")
        initiator.read_message(message2)
        # the server's static key met the client's ephemeral key (es), the client's
        # static key the server's ephemeral key (se): neither result is kept
        client_ephemeral, server_ephemeral = message1[1:33], message2[:32]
        assert not crypto._static_key(server.noise_private_bytes()).kept(client_ephemeral)
        assert not crypto._static_key(client.noise_private_bytes()).kept(server_ephemeral)
    assert crypto._static_key(server.noise_private_bytes()).kept(client.noise_public)
    assert len(crypto._STATIC_KEYS) == 2  # the two identities' keys, nothing else


def test_another_identity_never_takes_a_kept_secret() -> None:
    client, server, other = (HostIdentity.generate() for _ in range(3))
    _handshake(client, server)
    # the same client against another server: its own ss, the handshake succeeds
    _handshake(client, other)
    assert static_secret_kept(other, client.noise_public)
    assert _ss(other, client) != _ss(server, client)
    assert not static_secret_kept(other, server.noise_public)


def test_a_key_that_is_no_identity_keeps_nothing() -> None:
    server = HostIdentity.generate()
    raw = os.urandom(32)
    client_public = X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()
    for _ in range(2):
        initiator = Handshake.initiator(raw, os.urandom(32), server.noise_public)
        responder = Handshake.responder(server.noise_private_bytes(), os.urandom(32))
        responder.read_message(initiator.write_message(b""))
        initiator.read_message(responder.write_message(b""))
    assert crypto._static_key(raw) is not crypto._static_key(raw)  # made anew each time
    assert not crypto._static_key(raw).kept(server.noise_public)
    assert static_secret_kept(server, client_public)  # the server's key is an identity's


def test_the_tables_stay_bounded() -> None:
    server = HostIdentity.generate()
    for _ in range(crypto._MAX_STATIC_KEYS + 40):
        _handshake(HostIdentity.generate(), server)
    assert len(crypto._STATIC_KEYS) <= crypto._MAX_STATIC_KEYS
