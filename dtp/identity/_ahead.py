"""Keys made ahead of need: each connection's fresh key material, generated while the
previous connect waits on the network instead of on the next connect's critical path.

A connection needs a fresh Noise ephemeral key (its public half is an X25519 scalar
multiplication) and, for an anonymous client, a fresh :class:`~dtp.identity.keys.HostIdentity`
(an Ed25519 and an X25519 key pair). Both are made by :func:`prepare_ephemeral_key` /
:func:`prepare_anonymous_identity` whenever a side is idle (e.g. a client waiting for
the server's handshake reply) and taken by the next connection.

A client that names the server it will likely connect to next (the one it connects to
now) also gets the two X25519 results its first handshake message needs (Noise IK
``es`` and ``ss``: its ephemeral and its static key with the server's static key)
computed ahead; :func:`take_shared_secret` hands each out once, to the handshake that
uses exactly that key pair. A DH result depends on nothing but the two keys, so one made
ahead is the one the handshake would compute.

Nothing here weakens freshness: every key is taken at most once (a deque pop), a few
at most are held, and a forked child drops what its parent made (the two processes
would otherwise both hand out the same keys).
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from dtp.identity.keys import HostIdentity
from dtp.native._noise import NoiseError, NoiseKey

__all__ = [
    "anonymous_identities_wanted",
    "forget_shared_secrets",
    "make_ephemeral_key",
    "new_anonymous_identity",
    "new_anonymous_noise_key",
    "new_ephemeral_key",
    "next_ephemeral_public",
    "offer_anonymous_identity",
    "offer_ephemeral_key",
    "prepare_anonymous_identity",
    "prepare_ephemeral_key",
    "prepare_static_secret",
    "take_anonymous_identity",
    "take_ephemeral_keypair",
    "take_shared_secret",
]

#: Most keys of each kind held ready; a burst of connects beyond it makes its own.
MAX_AHEAD: Final = 4
# Handed-out ephemeral keys whose handshake has not picked up the key pair yet. A
# Handshake takes its entry when it is made, right after new_ephemeral_key(); the
# bound only matters for callers that take a key and never start a handshake.
_MAX_HANDED: Final = 64

_ephemeral: deque[tuple[bytes, Any]] = deque()  # (private bytes, the core's NoiseKey)
_handed: dict[bytes, Any] = {}
_identities: deque[HostIdentity] = deque()
# X25519 results made ahead: (our private key, their public key) -> shared secret
_shared: dict[tuple[bytes, bytes], bytes] = {}
_MAX_SHARED: Final = 16


def _bounded_put(table: dict[Any, Any], key: Any, value: Any, limit: int) -> None:
    if len(table) >= limit:
        # the oldest: its caller never used it (another thread may be changing the
        # dict: then leave the trimming to a later call)
        with contextlib.suppress(RuntimeError, StopIteration, KeyError):
            del table[next(iter(table))]
    table[key] = value


def _share_ahead(private: bytes, key: Any, peer_static: bytes | None) -> None:
    """Compute the DH of ``key`` (an X25519 private key object, or the core's NoiseKey,
    of the private key ``private``) with ``peer_static`` for a later handshake."""
    if peer_static is None or len(peer_static) != 32:
        return
    try:
        if isinstance(key, X25519PrivateKey):
            secret = key.exchange(X25519PublicKey.from_public_bytes(peer_static))
        else:
            secret = key.dh(bytes(peer_static))
    except (ValueError, NoiseError):
        return  # a low-order key: the handshake itself fails on it, as it should
    _bounded_put(_shared, (private, bytes(peer_static)), secret, _MAX_SHARED)


def take_shared_secret(private: bytes, public: bytes) -> bytes | None:
    """The X25519 result of the raw private key ``private`` with ``public`` if it was
    made ahead (once); else None (the caller computes it)."""
    if not _shared:
        return None
    return _shared.pop((private, public), None)


def forget_shared_secrets(private: bytes) -> None:
    """Drop every X25519 result made ahead with the raw private key ``private``: the
    handshake that had that ephemeral key has started, and a result it did not take
    (made for a server the connect did not go to) would hold the key on, long after
    the session."""
    if not _shared:
        return
    for key in list(_shared):  # (a copy: other threads may add or take meanwhile)
        if key[0] == private:
            _shared.pop(key, None)


def prepare_ephemeral_key(peer_static: bytes | None = None) -> None:
    """Make one Noise ephemeral key pair for a later handshake (unless
    :data:`MAX_AHEAD` are ready already), and its DH with ``peer_static`` (the server's
    Noise key, when the next handshake is likely to be with it: IK's ``es``)."""
    made = make_ephemeral_key()
    if made is not None:
        offer_ephemeral_key(made, peer_static)


def make_ephemeral_key() -> tuple[bytes, Any] | None:
    """:func:`prepare_ephemeral_key`'s first half, one scalar multiplication: a fresh
    key pair (private bytes, the core's NoiseKey), not offered to any handshake until
    :func:`offer_ephemeral_key`; None when :data:`MAX_AHEAD` are ready already."""
    if len(_ephemeral) >= MAX_AHEAD:
        return None
    private = os.urandom(32)
    return private, NoiseKey(private)


def offer_ephemeral_key(made: tuple[bytes, Any], peer_static: bytes | None = None) -> None:
    """:func:`prepare_ephemeral_key`'s second half: the DH of the key pair ``made``
    (:func:`make_ephemeral_key`'s) with ``peer_static``, then the pair offered to the
    next handshake. The DH comes first, so that no handshake takes the key without it
    or before it is put by (a result put by after a handshake took the key would keep
    the key alive past it); the pair is dropped if :data:`MAX_AHEAD` were made
    meanwhile."""
    if len(_ephemeral) >= MAX_AHEAD:
        return
    private, key = made
    _share_ahead(private, key, peer_static)
    _ephemeral.append(made)


def next_ephemeral_public() -> bytes | None:
    """The public half of the ephemeral key :func:`new_ephemeral_key` hands out next
    (None when none is made ahead): what a later handshake's IK identity proof binds,
    so it can be signed ahead too (:func:`dtp.identity._noise.prepare_auth_proof`)."""
    try:
        public: bytes = _ephemeral[0][1].public
    except IndexError:
        return None
    return public


def new_ephemeral_key() -> bytes:
    """32 fresh random bytes for a handshake's ephemeral key: one made ahead if there is
    one (its key pair then waits for :func:`take_ephemeral_keypair`), else
    ``os.urandom(32)``. Never the same bytes twice."""
    try:
        private, keypair = _ephemeral.popleft()
    except IndexError:
        return os.urandom(32)
    _bounded_put(_handed, private, keypair, _MAX_HANDED)
    return private


def take_ephemeral_keypair(private: bytes) -> Any:
    """The key object (the core's NoiseKey) made ahead for ``private`` (from
    :func:`new_ephemeral_key`), once; None for any other key (the caller derives the
    public half itself)."""
    return _handed.pop(private, None)


def prepare_anonymous_identity(peer_static: bytes | None = None) -> HostIdentity | None:
    """Make one anonymous client identity for a later connect (unless
    :data:`MAX_AHEAD` are ready already: then None), and its static key's DH with
    ``peer_static`` (IK's ``ss``, as for :func:`prepare_ephemeral_key`)."""
    if len(_identities) >= MAX_AHEAD:
        return None
    identity = new_anonymous_identity()
    return identity if offer_anonymous_identity(identity, peer_static) else None


def offer_anonymous_identity(identity: HostIdentity, peer_static: bytes | None = None) -> bool:
    """:func:`prepare_anonymous_identity`'s second half, for an ``identity`` made by
    :func:`new_anonymous_identity` and handed to no one: its static key's DH with
    ``peer_static``, then the identity offered to the next anonymous connect (the DH
    first, as in :func:`offer_ephemeral_key`); whether it was (not when
    :data:`MAX_AHEAD` were made meanwhile)."""
    if len(_identities) >= MAX_AHEAD:
        return False
    _share_ahead(identity.noise_private_bytes(), identity._noise_key, peer_static)
    _identities.append(identity)
    return True


def anonymous_identities_wanted() -> bool:
    """Whether :func:`prepare_anonymous_identity` would make one (fewer than
    :data:`MAX_AHEAD` are ready)."""
    return len(_identities) < MAX_AHEAD


def new_anonymous_noise_key() -> tuple[bytes, Any]:
    """:func:`new_anonymous_identity`'s first scalar multiplication, on its own: 32
    random bytes and the core's key object made from them (its public half derived)."""
    private = os.urandom(32)
    # (keep_results: its handshake's ss, made ahead with the key, is kept in it)
    return private, NoiseKey(private, keep_results=True)


def new_anonymous_identity(noise: tuple[bytes, Any] | None = None) -> HostIdentity:
    """A fresh identity whose Noise key is the core's key object (made from 32 random
    bytes, its public half derived there once; or ``noise``, fresh from
    :func:`new_anonymous_noise_key` and used for nothing else), which its handshakes
    then use as it is (:meth:`HostIdentity._around_noise_key`); one made with
    :meth:`HostIdentity.generate` derived that public half twice, once for the identity
    and once for the core."""
    private, key = new_anonymous_noise_key() if noise is None else noise
    return HostIdentity._around_noise_key(Ed25519PrivateKey.generate(), private, key)


def prepare_static_secret(identity: HostIdentity, peer_static: bytes | None) -> None:
    """Make IK's ``ss`` (``identity``'s Noise key with ``peer_static``) for the next
    handshake of this identity with that server."""
    key = identity._noise_key if identity._noise is None else identity._noise
    _share_ahead(identity.noise_private_bytes(), key, peer_static)


def take_anonymous_identity() -> HostIdentity:
    """A fresh anonymous identity, used by no one before: one made ahead if there is
    one, else a new one."""
    try:
        return _identities.popleft()
    except IndexError:
        return new_anonymous_identity()


def _forget_all() -> None:
    _ephemeral.clear()
    _handed.clear()
    _identities.clear()
    _shared.clear()


os.register_at_fork(after_in_child=_forget_all)
