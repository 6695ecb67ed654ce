"""Identities for tests: made from a number (the same number, the same keys, in every
run and on every machine) and funded on a ledger.

    alice = identity(1)                       # HostIdentity, deterministic
    bob, carol = identities(2, start=2)
    fund(ledger, [alice, bob], 10_000)        # LocalLedger.faucet / the node's faucet
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from typing import Protocol

from dtp.identity.keys import HostIdentity

__all__ = ["Faucet", "fund", "identities", "identity"]

# The BLAKE2b key of the derivation: a fixed label, not a module's name. Changed, it
# would change the keys and Sui address of every identity(n) that tests pin.
_DOMAIN = b"dtp.testing.identity"


def identity(number: int) -> HostIdentity:
    """The identity numbered ``number`` (any int): its Ed25519 seed and X25519 key are
    BLAKE2b hashes of the number, so a test that names ``identity(3)`` gets the same
    Sui address in every run. Not for anything but tests: anyone can derive the keys.

    The same number gives the same (immutable) object: state machines make their
    worlds' identities at every run, and deriving the keys is most of that."""
    if isinstance(number, bool) or not isinstance(number, int):
        raise TypeError(f"an identity's number is an int, got {type(number).__name__}")
    return _derive(number)


@functools.lru_cache(maxsize=4096)
def _derive(number: int) -> HostIdentity:
    raw = str(number).encode()
    seed = hashlib.blake2b(raw, digest_size=32, person=b"dtp-ed25519", key=_DOMAIN).digest()
    noise = hashlib.blake2b(raw, digest_size=32, person=b"dtp-x25519", key=_DOMAIN).digest()
    return HostIdentity.from_private_bytes(seed, noise)


def identities(count: int, *, start: int = 0) -> list[HostIdentity]:
    """``count`` identities numbered from ``start`` (:func:`identity`)."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return [identity(n) for n in range(start, start + count)]


class Faucet(Protocol):
    """What :func:`fund` pays from: :class:`~dtp.ledger.local.LocalLedger` and the Sui node
    stand-in both have a ``faucet(address, amount)``."""

    def faucet(self, address: str, amount: int) -> object: ...


def fund(
    faucet: Faucet, who: HostIdentity | str | Iterable[HostIdentity | str], amount: int
) -> None:
    """Give each of ``who`` (identities or Sui addresses) ``amount`` MIST from
    ``faucet`` (a LocalLedger, or a :class:`~dtp.testing.sui_node.SuiNodeStandIn`)."""
    many: Sequence[HostIdentity | str] = [who] if isinstance(who, HostIdentity | str) else list(who)
    for one in many:
        faucet.faucet(one if isinstance(one, str) else one.sui_address, amount)
