"""zkLogin proofs, which only a Sui node verifies (docs/protocol.md 8.4): what a server
asks of its ledger's node, and how the answer, or its absence, becomes the verdict on a
client's identity proof within the handshake's time.

A zkLogin signature (or a multisig with zkLogin members) is checked offline in all but
its Groth16 proof (:mod:`dtp.identity._schemes`: its shape, its address, its ephemeral
key's signature); that proof binds the account's issuer, address seed, ephemeral key and
last epoch, and is checked against the issuer's current key (JWK) by a Sui full node:
gRPC ``sui.rpc.v2.SignatureVerificationService/VerifySignature``. The node does not
compare the last epoch with the current one: the verifier does, from the same node
(:func:`epoch_refusal`).

A :class:`ZkLoginVerifier` is what a server is given for this
(``ConnectionConfig.zklogin_verifier``): a :class:`~dtp.ledger.sui.SuiLedger` is one (it
asks its node); a :class:`~dtp.ledger.local.LocalLedger` is one that refuses
(:class:`~dtp.errors.ZkLoginUnsupported`: it has no node).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

from dtp.errors import ChainError, DTPError, ZkLoginRefused

__all__ = [
    "MAX_EPOCH_AHEAD",
    "NodeVerifier",
    "SuiNodeLike",
    "ZkLoginCheck",
    "ZkLoginVerifier",
    "epoch_refusal",
    "node_refusal",
    "node_refusal_async",
]

logger = logging.getLogger(__name__)

#: How many epochs past the current one a zkLogin proof's last epoch may be: Sui's
#: ``zklogin_max_epoch_upper_bound_delta`` (30 on its networks).
MAX_EPOCH_AHEAD: Final = 30
#: Node calls made for handshakes at once, at most (each holds a thread while it waits).
_MAX_CALLS: Final = 8


@dataclass(frozen=True)
class ZkLoginCheck:
    """What a Sui node is asked to confirm of a client's identity proof."""

    message: bytes
    """The personal message the proof signs (``context || bound``, docs/protocol.md 8.4)."""
    signature: bytes
    """The whole proof, a serialized zkLogin (or multisig) signature."""
    address: str
    """The address the proof proves, which the node must derive from it too."""
    max_epochs: tuple[int, ...]
    """Each zkLogin part's last epoch."""


@runtime_checkable
class ZkLoginVerifier(Protocol):
    """Asks a Sui node about zkLogin signatures (a server's ledger)."""

    def verify_zklogin(self, check: ZkLoginCheck) -> None:
        """Return once the node confirmed ``check``; raise
        :class:`~dtp.errors.ZkLoginRefused` when it did not (or an epoch is past),
        :class:`~dtp.errors.ZkLoginUnsupported` when there is no node to ask, and
        :class:`~dtp.errors.LedgerUnavailable` when the node did not answer."""
        ...


def epoch_refusal(max_epochs: tuple[int, ...], epoch: int) -> str | None:
    """Why a proof whose zkLogin parts last to ``max_epochs`` is refused in ``epoch``,
    or None: each last epoch must be the current one or later, and at most
    :data:`MAX_EPOCH_AHEAD` epochs ahead (Sui's rules for zkLogin signatures)."""
    for last in max_epochs:
        if last < epoch:
            return f"the zkLogin proof lasted to epoch {last}, and the network is in epoch {epoch}"
        if last > epoch + MAX_EPOCH_AHEAD:
            return (
                f"the zkLogin proof lasts to epoch {last}, more than {MAX_EPOCH_AHEAD} epochs "
                f"after the current one ({epoch})"
            )
    return None


class SuiNodeLike(Protocol):
    """What :class:`NodeVerifier` asks of a Sui node (``dtp.ledger.sui._client.SuiNode``)."""

    endpoint: str

    def epoch_info(self) -> tuple[int, int]:
        """``(current epoch, reference gas price)``."""
        ...

    def verify_signature(
        self,
        message: bytes,
        signature: bytes,
        address: str,
        *,
        jwks: Sequence[Mapping[str, str]] = (),
    ) -> tuple[bool, str]:
        """The node's ``VerifySignature`` of a personal message: (valid, its reason)."""
        ...


class NodeVerifier:
    """A :class:`ZkLoginVerifier` that asks one Sui node: its current epoch (each
    zkLogin part's last epoch against it: :func:`epoch_refusal`), then its
    ``VerifySignature`` of the proof for the address DTP derived. ``jwks``: the issuers'
    keys to check proofs against (each ``{iss, kid, kty, e, n, alg}``); none, the
    node's on-chain ones -- a network's (a test issuer's keys are for a localnet)."""

    def __init__(self, node: SuiNodeLike, jwks: Sequence[Mapping[str, str]] = ()) -> None:
        self.node = node
        self.jwks = tuple(dict(jwk) for jwk in jwks)

    def verify_zklogin(self, check: ZkLoginCheck) -> None:
        """See :meth:`ZkLoginVerifier.verify_zklogin`."""
        epoch, _ = self.node.epoch_info()
        why = epoch_refusal(check.max_epochs, epoch)
        if why is not None:
            raise ZkLoginRefused(why)
        valid, reason = self.node.verify_signature(
            check.message, check.signature, check.address, jwks=self.jwks
        )
        if not valid:
            said = reason or "invalid"
            raise ZkLoginRefused(f"the Sui node {self.node.endpoint} refused the proof: {said}")


def _ask(verifier: ZkLoginVerifier | None, check: ZkLoginCheck) -> str | None:
    """The node's verdict, now (blocking): None, or why the proof is refused."""
    if verifier is None:
        return (
            "a zkLogin proof is verified by a Sui node, and this server has none "
            "(ConnectionConfig.zklogin_verifier)"
        )
    try:
        verifier.verify_zklogin(check)
    except ChainError as exc:
        return f"{exc.name or type(exc).__name__}: {exc}"
    except DTPError as exc:
        return str(exc)
    except Exception:
        logger.exception("the zkLogin verifier failed for %s", check.address)
        return "the zkLogin verifier failed"
    return None


_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _calls() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(_MAX_CALLS, "dtp-zklogin")
        return _pool


def _forget_pool() -> None:
    global _pool
    _pool = None  # (a child process starts its own: the parent's threads are not its own)


os.register_at_fork(after_in_child=_forget_pool)


def _late(timeout: float) -> str:
    return f"no answer from the Sui node about the zkLogin proof within {timeout:.1f} s"


def node_refusal(
    verifier: ZkLoginVerifier | None, check: ZkLoginCheck, timeout: float
) -> str | None:
    """Ask ``verifier`` about ``check``, waiting at most ``timeout`` seconds (what is left
    of the handshake): None when the node confirmed it, else why the proof is refused
    (no verifier, the node's refusal, no answer in time). A call still running at the
    timeout finishes in its thread, its answer dropped."""
    future = _calls().submit(_ask, verifier, check)
    try:
        return future.result(timeout=max(timeout, 0.0))
    except concurrent.futures.TimeoutError:
        return _late(timeout)


async def node_refusal_async(
    verifier: ZkLoginVerifier | None, check: ZkLoginCheck, timeout: float
) -> str | None:
    """:func:`node_refusal` for an event loop: the node call runs in a thread."""
    future = asyncio.wrap_future(_calls().submit(_ask, verifier, check))
    try:
        return await asyncio.wait_for(future, max(timeout, 0.0))
    except TimeoutError:
        return _late(timeout)
