"""Keys made ahead of need: each connection's fresh key material, generated while the
previous connect waits on the network instead of on the next connect's critical path.

A connection needs a fresh Noise ephemeral key (its public half is an X25519 scalar
multiplication) and, for an anonymous client, a fresh :class:`~dtp.keys.HostIdentity`
(an Ed25519 and an X25519 key pair). Both are made by :func:`prepare_ephemeral_key` /
:func:`prepare_anonymous_identity` whenever a side is idle (e.g. a client waiting for
the server's handshake reply) and taken by the next connection.

Nothing here weakens freshness: every key is taken at most once (a deque pop), a few
at most are held, and a forked child drops what its parent made (the two processes
would otherwise both hand out the same keys).
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from typing import Any, Final

from noise.backends.default.keypairs import KeyPair25519

from dtp.keys import HostIdentity

__all__ = [
    "new_ephemeral_key",
    "prepare_anonymous_identity",
    "prepare_ephemeral_key",
    "take_anonymous_identity",
    "take_ephemeral_keypair",
]

#: Most keys of each kind held ready; a burst of connects beyond it makes its own.
MAX_AHEAD: Final = 4
# Handed-out ephemeral keys whose handshake has not picked up the key pair yet. A
# Handshake takes its entry when it is made, right after new_ephemeral_key(); the
# bound only matters for callers that take a key and never start a handshake.
_MAX_HANDED: Final = 64

_ephemeral: deque[tuple[bytes, Any]] = deque()  # (private bytes, noise KeyPair25519)
_handed: dict[bytes, Any] = {}
_identities: deque[HostIdentity] = deque()


def prepare_ephemeral_key() -> None:
    """Make one Noise ephemeral key pair for a later handshake (unless
    :data:`MAX_AHEAD` are ready already)."""
    if len(_ephemeral) < MAX_AHEAD:
        private = os.urandom(32)
        _ephemeral.append((private, KeyPair25519.from_private_bytes(private)))


def new_ephemeral_key() -> bytes:
    """32 fresh random bytes for a handshake's ephemeral key: one made ahead if there is
    one (its key pair then waits for :func:`take_ephemeral_keypair`), else
    ``os.urandom(32)``. Never the same bytes twice."""
    try:
        private, keypair = _ephemeral.popleft()
    except IndexError:
        return os.urandom(32)
    if len(_handed) >= _MAX_HANDED:
        # the oldest: its caller never used it (another thread may be changing the
        # dict: then leave the trimming to a later call)
        with contextlib.suppress(RuntimeError, StopIteration):
            _handed.pop(next(iter(_handed)), None)
    _handed[private] = keypair
    return private


def take_ephemeral_keypair(private: bytes) -> Any:
    """The key pair made ahead for ``private`` (from :func:`new_ephemeral_key`), once;
    None for any other key (the caller derives the public half itself)."""
    return _handed.pop(private, None)


def prepare_anonymous_identity() -> None:
    """Make one anonymous client identity for a later connect (unless
    :data:`MAX_AHEAD` are ready already)."""
    if len(_identities) < MAX_AHEAD:
        _identities.append(HostIdentity.generate())


def take_anonymous_identity() -> HostIdentity:
    """A fresh anonymous identity, used by no one before: one made ahead if there is
    one, else a new one."""
    try:
        return _identities.popleft()
    except IndexError:
        return HostIdentity.generate()


def _forget_all() -> None:
    _ephemeral.clear()
    _handed.clear()
    _identities.clear()


os.register_at_fork(after_in_child=_forget_all)
