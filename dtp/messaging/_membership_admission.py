"""Who may join a group, and the check at each connection (docs/messaging.md §6.2,
"Admission"), shared by both member nodes.

A :class:`GroupAdmission` names the group's members by what a DTP handshake proves of a
peer -- its Sui address and its Noise static key, checked by the server's ``admit`` hook
once the handshake proved them, before the connection is accepted, so a stranger's is
refused there (it reads ConnectionRefused with the reason) -- and by a secret every
member holds, a *group key*:
the member opening a connection sends, as its first frame, an HMAC under the key of the
connection's Noise handshake hash, which the member it connects to checks before it reads
anything else. The hash is the same at both ends of one connection and of no other, so a
proof seen once proves nothing elsewhere; every membership message is one-way, from the
member that opened the connection, so every message a member reads comes from a peer
that passed every check the group names. What a :class:`Gate` refuses never reaches the
engine; it is counted in its ``refused``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from dtp.errors import DTPError
from dtp.ledger._objects import normalize_id
from dtp.messaging._framing import Oversized, decode_body, encode_frame

if TYPE_CHECKING:
    from dtp.messaging.coordination import Registry
    from dtp.transport._hooks import PeerInfo

__all__ = ["GroupAdmission"]

logger = logging.getLogger("dtp.messaging._membership")

#: What the group key's HMAC covers before the handshake hash.
_DOMAIN: Final = b"DTP-MEMBERSHIP-GROUP-V1\x00"
#: The proof frame: ``[2, 0, hmac]`` (wire version 2, kind 0).
_PROOF_KIND: Final = 0
_MIN_KEY: Final = 16


@dataclass(frozen=True)
class GroupAdmission:
    """Who may join a group: a peer must pass every check given (none: anyone may).

    ``keys``: group keys (secrets of at least 16 bytes that every member holds); a member
    proves the first on every connection it opens and accepts a proof under any of them
    (so a new key can be rolled out before the old one goes). ``addresses``: the Sui
    addresses allowed (any spelling Sui accepts). ``noise_keys``: the Noise static keys
    allowed (32 bytes each). ``registry``: a ledger :class:`~dtp.messaging.coordination.
    Registry` whose owner and members are allowed, read again at most every ``refresh``
    seconds (a read that fails keeps the last list; with none, peers are refused)."""

    keys: tuple[bytes, ...] = ()
    addresses: frozenset[str] | None = None
    noise_keys: frozenset[bytes] | None = None
    registry: Registry | None = None
    refresh: float = 5.0

    def __post_init__(self) -> None:
        # (any iterable in, kept as a tuple or frozenset: a list would be shared and
        # could change under a running node)
        keys = tuple(self.keys)
        for key in keys:
            if not isinstance(key, bytes) or len(key) < _MIN_KEY:
                raise ValueError(f"a group key is bytes, at least {_MIN_KEY} of them")
        addresses = self.addresses
        if addresses is not None:
            if isinstance(addresses, str):
                raise TypeError("addresses is a collection of Sui addresses, not one")
            addresses = frozenset(map(normalize_id, addresses))
        noise = None if self.noise_keys is None else frozenset(self.noise_keys)
        if noise is not None and not all(isinstance(k, bytes) and len(k) == 32 for k in noise):
            raise ValueError("a Noise static key is 32 bytes")
        if type(self.refresh) not in (int, float) or not 0 <= self.refresh < math.inf:
            raise ValueError("refresh must be a finite number of seconds, at least 0")
        object.__setattr__(self, "keys", keys)
        object.__setattr__(self, "addresses", addresses)
        object.__setattr__(self, "noise_keys", noise)

    @property
    def checks_peers(self) -> bool:
        """Whether the handshake's hook has anything to check (an address or a key)."""
        return (
            self.addresses is not None or self.noise_keys is not None or self.registry is not None
        )


def _mac(key: bytes, handshake_hash: bytes) -> bytes:
    return hmac.new(key, _DOMAIN + handshake_hash, hashlib.sha256).digest()


class Gate:
    """One node's admission at work: the ``admit`` hook for its server, the proof it
    sends on the connections it opens, the check of the proof on those it accepts."""

    def __init__(
        self,
        admission: GroupAdmission | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if admission is not None and not isinstance(admission, GroupAdmission):
            raise TypeError(f"admission is a GroupAdmission, not {type(admission).__name__!r}")
        self.admission = admission or GroupAdmission()
        self._clock = clock
        self._lock = threading.Lock()
        self._read = threading.Lock()  # (one registry read at a time)
        self._listed: frozenset[str] | None = None  # the registry's, as last read
        self._listed_at = -math.inf
        #: Peers refused: at the handshake (not on the group's lists) or at their first
        #: frame (no proof of the group key).
        self.refused = 0

    @property
    def hook(self) -> Callable[[PeerInfo], str | None] | None:
        """The server's ``admit`` hook, None when the group names no address or key."""
        return self.admit if self.admission.checks_peers else None

    @property
    def proves(self) -> bool:
        """Whether connections carry a proof of the group key."""
        return bool(self.admission.keys)

    def admit(self, peer: PeerInfo) -> str | None:
        """None for a peer the group's lists admit, else why it is refused (counted)."""
        reason = self._verdict(peer)
        if reason is not None:
            self.count()
            logger.info("membership: refused %s: %s", peer.address, reason)
        return reason

    def _verdict(self, peer: PeerInfo) -> str | None:
        policy = self.admission
        if policy.addresses is not None and peer.address not in policy.addresses:
            return "not a member of this group (its address is not on the group's list)"
        if policy.noise_keys is not None and peer.public_key not in policy.noise_keys:
            return "not a member of this group (its key is not on the group's list)"
        if policy.registry is not None:
            listed = self._registry_members()
            if listed is None:
                return "this group's registry could not be read"
            if peer.address not in listed:
                return "not a member of this group (not a member of its registry)"
        return None

    def _registry_members(self) -> frozenset[str] | None:
        """The registry's owner and members, read at most every ``refresh`` seconds."""
        policy = self.admission
        assert policy.registry is not None
        with self._read:
            now = self._clock()
            if self._listed is not None and now - self._listed_at < policy.refresh:
                return self._listed
            try:
                state = policy.registry.state()
            except DTPError as exc:
                logger.warning("membership: the group's registry could not be read: %s", exc)
                return self._listed
            self._listed = frozenset((state.owner, *state.members))
            self._listed_at = now
            return self._listed

    def proof(self, handshake_hash: bytes | None) -> bytes:
        """The first frame of a connection this member opens: its proof of the group key."""
        assert handshake_hash is not None
        return encode_frame([2, _PROOF_KIND, _mac(self.admission.keys[0], handshake_hash)])

    def check(self, body: bytes | Oversized, handshake_hash: bytes | None) -> bool:
        """Whether the first frame of a connection this member accepted proves a group key
        for that connection (a peer that fails is counted; the caller drops it)."""
        ok = False
        if isinstance(body, bytes) and handshake_hash is not None:
            try:
                fields = decode_body(body)
            except DTPError:
                fields = None
            if (
                isinstance(fields, list)
                and len(fields) == 3
                and fields[:2] == [2, _PROOF_KIND]
                and isinstance(fields[2], bytes)
            ):
                ok = any(
                    hmac.compare_digest(fields[2], _mac(key, handshake_hash))
                    for key in self.admission.keys
                )
        if not ok:
            self.count()
            logger.info("membership: refused a peer that proved no group key")
        return ok

    def count(self) -> None:
        with self._lock:
            self.refused += 1
