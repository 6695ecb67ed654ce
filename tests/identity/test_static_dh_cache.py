"""X25519 results of a live identity's static key are kept (dtp.identity._noise._static_dh): a
server answering IK from the same client again and again computes its ``ss`` once.

Checked: the handshakes agree with each other and with a fresh computation, a second
handshake from the same client takes the kept ``ss`` (the table holds one entry for
it, and a handshake whose kept value were wrong would fail), nothing made with an
ephemeral key is ever kept, and the tables stay within their bounds.
"""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from dtp.identity import _noise as crypto
from dtp.identity._noise import PATTERN_IK, Handshake
from dtp.identity.keys import HostIdentity, noise_key_object


@pytest.fixture(autouse=True)
def _fresh_tables() -> None:
    with crypto._static_lock:
        crypto._STATIC_SECRETS.clear()
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


def _kept(private: HostIdentity, public: bytes) -> bytes | None:
    key = noise_key_object(private.noise_private_bytes())
    assert key is not None
    entry = crypto._STATIC_SECRETS.get((id(key), public))
    return None if entry is None else entry[1]


def test_a_returning_client_finds_its_ss_kept_and_the_sessions_agree() -> None:
    client, server = HostIdentity.generate(), HostIdentity.generate()
    _handshake(client, server)
    ss = _kept(server, client.noise_public)
    expected = X25519PrivateKey.from_private_bytes(server.noise_private_bytes()).exchange(
        X25519PublicKey.from_public_bytes(client.noise_public)
    )
    assert ss == expected
    size = len(crypto._STATIC_SECRETS)
    hashes = {_handshake(client, server)[0].handshake_hash for _ in range(5)}
    assert len(hashes) == 5  # fresh ephemeral keys: five different sessions
    assert _kept(server, client.noise_public) == expected
    # each later handshake added what its fresh keys made (never asked for again), and
    # no second entry for the ss it took from the table
    keys = list(crypto._STATIC_SECRETS)
    assert len(keys) == len(set(keys))
    assert len(crypto._STATIC_SECRETS) <= size + 5 * 3


def test_nothing_an_ephemeral_key_made_is_kept() -> None:
    client, server = HostIdentity.generate(), HostIdentity.generate()
    for _ in range(4):
        _handshake(client, server)
    statics = {id(noise_key_object(i.noise_private_bytes())) for i in (client, server)}
    assert crypto._STATIC_SECRETS
    for (key_id, _public), (key, _secret) in crypto._STATIC_SECRETS.items():
        assert key_id in statics and id(key) == key_id


def test_another_identity_never_takes_a_kept_secret() -> None:
    client, server, other = (HostIdentity.generate() for _ in range(3))
    _handshake(client, server)
    # the same client against another server: its own ss, the handshake succeeds
    _handshake(client, other)
    assert _kept(other, client.noise_public) != _kept(server, client.noise_public)


def test_the_tables_stay_bounded() -> None:
    server = HostIdentity.generate()
    for _ in range(crypto._MAX_STATIC_SECRETS + 40):
        _handshake(HostIdentity.generate(), server)
    assert len(crypto._STATIC_SECRETS) <= crypto._MAX_STATIC_SECRETS
    assert len(crypto._STATIC_KEYS) <= crypto._MAX_STATIC_KEYS
