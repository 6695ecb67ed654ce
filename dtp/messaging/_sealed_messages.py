"""Sealing and opening messages to a host (docs/messaging.md §3), and sending them:
:func:`seal` / :func:`open_sealed` are pure functions of their inputs (keys and
randomness are passed in); :func:`send_sealed` delivers directly or through the ledger
mailbox. (:mod:`dtp.messaging.sealed` is the public face, with the inbox.)"""

from __future__ import annotations

import hashlib
import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import msgpack
from noise.connection import Keypair, NoiseConnection

from dtp.errors import InvalidArgument
from dtp.identity.keys import sui_address_from_public_key
from dtp.ledger._objects import MAX_PURE_BYTES
from dtp.messaging import errors as E
from dtp.messaging._framing import bytes_like
from dtp.messaging._protocol import _check_our_timeout

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.interface import Ledger
    from dtp.messaging.rpc import RpcClient

VERSION: Final = 1
PATTERN_N: Final = 1
PATTERN_X: Final = 2
_NAMES: Final = {
    PATTERN_N: b"Noise_N_25519_ChaChaPoly_BLAKE2s",
    PATTERN_X: b"Noise_X_25519_ChaChaPoly_BLAKE2s",
}
PROLOGUE: Final = b"DTP-SEALED-V1"
SIGN_DOMAIN: Final = b"DTP-SEALED-SENDER-V1"
#: Largest sealed message (it must fit one ``mailbox::send``).
MAX_SEALED: Final = MAX_PURE_BYTES  # dtp.ledger.interface.MAX_MAIL_PAYLOAD
#: Largest body: the sealed size minus the worst-case overhead (X header, address,
#: signature, ids and msgpack framing).
MAX_BODY: Final = MAX_SEALED - 512
_ID_SIZE: Final = 16
_CURSOR_LINE: Final = b"c:"  # a journal line holding the cursor, not an id


@dataclass(frozen=True)
class OpenedMessage:
    """A sealed message after opening."""

    #: 16 random bytes chosen by the sender: the de-duplication key.
    message_id: bytes
    body: bytes
    #: Sender's clock (ms since the epoch) when sealing; informational only.
    sent_ms: int
    #: The recipient host ID the sender addressed (None if not given).
    recipient_host: str | None
    #: ``X`` only: the sender's Noise static key (authenticated by the handshake).
    sender_static: bytes | None = None
    #: ``X`` only: the sender's Sui address (proven by its signature).
    sender_address: str | None = None
    #: ``X`` only: the host the sender says it is (checked against the ledger when one is
    #: given to :func:`open_sealed`); an object ID as the ledger spells it (``0x`` + 64
    #: lower-case hex), whatever the sender's spelling.
    sender_host: str | None = None
    #: How it arrived: "direct" or "mailbox" (set by :class:`~dtp.messaging.sealed.SealedInbox`).
    via: str = ""

    @property
    def anonymous(self) -> bool:
        """True for ``N`` messages."""
        return self.sender_static is None


def _noise(pattern: int) -> Any:
    return NoiseConnection.from_name(_NAMES[pattern])


def _sender_message(
    recipient_static: bytes, sender_static: bytes, message_id: bytes, body: bytes, host: str
) -> bytes:
    return b"".join(
        [
            SIGN_DOMAIN,
            recipient_static,
            sender_static,
            message_id,
            hashlib.blake2b(body, digest_size=32).digest(),
            host.encode(),
        ]
    )


def seal(
    recipient_static: bytes,
    body: bytes,
    *,
    sender: HostIdentity | None = None,
    sender_host: str | None = None,
    recipient_host: str | None = None,
    message_id: bytes | None = None,
    ephemeral: bytes | None = None,
    now_ms: int | None = None,
) -> bytes:
    """Seal ``body`` to ``recipient_static`` (32-byte X25519 key). With ``sender`` the
    pattern is ``X`` (sender proven), else ``N`` (anonymous). ``message_id`` and
    ``ephemeral`` (X25519 private bytes) default to fresh randomness, ``now_ms`` (the
    message's date, ms since the epoch, sealed inside it) to the wall clock. Pass
    ``ephemeral`` for test vectors only: the message's key and nonce follow from it and
    the recipient's key, so two messages sealed with one ephemeral to one recipient share
    a ChaCha20 keystream and a Poly1305 key (each reveals the other's plaintext, and
    forgeries become possible).

    Raises :class:`~dtp.messaging.errors.PayloadTooLarge` when the body exceeds
    :data:`MAX_BODY` or the sealed message :data:`MAX_SEALED` (long host IDs count),
    TypeError or ValueError for arguments :func:`open_sealed` would refuse or that cannot
    be sealed (a host ID that is not text, ``now_ms`` out of range...), and
    :class:`~dtp.errors.InvalidArgument` (a ValueError) for ``sender_host`` without
    ``sender``: only an ``X`` message carries the sender's host (docs/messaging.md §3)."""
    if sender_host is not None and sender is None:
        # an N message has no field for it (it is anonymous, and nothing could prove the
        # claim): sealing it would drop the host the caller asked to send
        raise InvalidArgument(
            "sender_host needs sender: only a sender-proven (X) message names the sender's host"
        )
    recipient_static = bytes_like(recipient_static)
    body = bytes_like(body)
    if len(recipient_static) != 32:
        raise ValueError("the recipient's static key is 32 bytes")
    # checked here, not left to msgpack or noise (UnicodeEncodeError, OverflowError,
    # NoiseValueError), nor sealed into a message open_sealed refuses (a bytes host ID)
    for what, host_id in (("recipient_host", recipient_host), ("sender_host", sender_host)):
        if host_id is not None:
            if not isinstance(host_id, str):
                raise TypeError(f"{what} must be a str, not {type(host_id).__name__!r}")
            try:
                host_id.encode()
            except UnicodeEncodeError:
                raise ValueError(f"{what} is not valid text (a lone surrogate)") from None
    if now_ms is None:
        now_ms = time.time_ns() // 1_000_000
    elif isinstance(now_ms, bool) or not isinstance(now_ms, int | float):
        # (int() took "123" and True: a date sealed from a str or a flag)
        raise TypeError(
            f"now_ms must be an int (ms since the epoch), not {type(now_ms).__name__!r}"
        )
    if isinstance(now_ms, float) and not math.isfinite(now_ms):
        raise ValueError(f"now_ms must be finite, not {now_ms!r}")
    if not -(1 << 63) <= int(now_ms) < 1 << 64:  # what msgpack encodes
        raise ValueError("now_ms is out of range (ms since the epoch)")
    if ephemeral is not None:
        ephemeral = bytes_like(ephemeral)
    if ephemeral is not None and len(ephemeral) != 32:
        raise ValueError("an X25519 private key is 32 bytes")
    if len(body) > MAX_BODY:
        raise E.PayloadTooLarge(f"sealed body of {len(body)} bytes exceeds {MAX_BODY}")
    # (a 16-character str passed the length check and sealed a message open_sealed
    # refuses: its id must be bytes)
    message_id = os.urandom(_ID_SIZE) if message_id is None else bytes_like(message_id)
    if len(message_id) != _ID_SIZE:
        raise ValueError("a message id is 16 bytes")
    pattern = PATTERN_N if sender is None else PATTERN_X
    fields: list[Any] = [message_id, int(now_ms), recipient_host, bytes(body)]
    if sender is not None:
        host = sender_host or ""
        proof = sender.sign(
            _sender_message(recipient_static, sender.noise_public, message_id, body, host)
        )
        fields += [sender.ed25519_public, proof, sender_host]
    plaintext = msgpack.packb(fields, use_bin_type=True)
    noise = _noise(pattern)
    noise.set_prologue(PROLOGUE)
    noise.set_as_initiator()
    if sender is not None:
        noise.set_keypair_from_private_bytes(Keypair.STATIC, sender.noise_private_bytes())
    noise.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, bytes(recipient_static))
    if ephemeral is None:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        ephemeral = X25519PrivateKey.generate().private_bytes_raw()
    noise.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="One of ephemeral keypairs")
        noise.start_handshake()
    try:
        message = bytes([VERSION, pattern]) + bytes(noise.write_message(plaintext))
    except ValueError:
        # cryptography refuses a Diffie-Hellman whose result is all zeros ("Error
        # computing shared key."), which only a low-order recipient key gives: the
        # sender's keys are X25519 private keys, which any 32 bytes are
        raise ValueError(
            "the recipient's static key is not a usable X25519 public key (a low-order point)"
        ) from None
    # MAX_BODY leaves room for the fixed fields only: host IDs are free text, and a
    # message above MAX_SEALED would be refused by open_sealed and the mailbox
    if len(message) > MAX_SEALED:
        raise E.PayloadTooLarge(
            f"the sealed message is {len(message)} bytes, above {MAX_SEALED}"
            " (shorten the body or the host IDs)"
        )
    return message


def open_sealed(
    identity: HostIdentity, data: bytes, *, ledger: Ledger | None = None
) -> OpenedMessage:
    """Open a sealed message addressed to ``identity``'s Noise key.

    Raises :class:`~dtp.messaging.errors.MalformedSealed` for bytes that are not a sealed
    message, :class:`~dtp.messaging.errors.SealedDecryptError` when it is not for us or was
    altered, :class:`~dtp.messaging.errors.ForgedSender` when an ``X`` message's sender
    proof fails or (with ``ledger``) its claimed host does not exist or publishes another
    Noise key. Any other :class:`~dtp.errors.ChainError` of the ledger (unreachable...)
    propagates: it says nothing about the message, which may be opened again later.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise E.MalformedSealed("a sealed message is bytes")
    # the size before the copy: a huge buffer was copied whole, only to be refused
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if size < 2 + 32 + 16 or size > MAX_SEALED:
        raise E.MalformedSealed(f"a sealed message is 50..{MAX_SEALED} bytes, got {size}")
    data = bytes(data)
    version, pattern = data[0], data[1]
    if version != VERSION or pattern not in _NAMES:
        raise E.MalformedSealed(f"unknown sealed version {version} / pattern {pattern}")
    noise = _noise(pattern)
    noise.set_prologue(PROLOGUE)
    noise.set_as_responder()
    noise.set_keypair_from_private_bytes(Keypair.STATIC, identity.noise_private_bytes())
    noise.start_handshake()
    state = noise.noise_protocol.handshake_state
    try:
        plaintext = bytes(noise.read_message(data[2:]))
    except Exception:
        raise E.SealedDecryptError() from None
    sender_static = None
    if pattern == PATTERN_X:
        remote = getattr(state.rs, "public_bytes", None)
        if remote is None:
            raise E.SealedDecryptError()
        sender_static = bytes(remote)
    try:
        fields = msgpack.unpackb(plaintext, raw=False, use_list=True)
    except Exception:
        raise E.MalformedSealed("the sealed plaintext is not msgpack") from None
    expected = 4 if pattern == PATTERN_N else 7
    if not isinstance(fields, list) or len(fields) != expected:
        raise E.MalformedSealed("wrong number of sealed fields")
    message_id, sent_ms, recipient_host, body = fields[:4]
    if (
        not isinstance(message_id, bytes)
        or len(message_id) != _ID_SIZE
        or type(sent_ms) is not int
        or not isinstance(body, bytes)
        or not (recipient_host is None or isinstance(recipient_host, str))
    ):
        raise E.MalformedSealed("invalid sealed fields")
    if sender_static is None:
        return OpenedMessage(message_id, body, sent_ms, recipient_host)
    public_key, proof, sender_host = fields[4:]
    if (
        not isinstance(public_key, bytes)
        or len(public_key) != 32
        or not isinstance(proof, bytes)
        or not (sender_host is None or isinstance(sender_host, str))
    ):
        raise E.MalformedSealed("invalid sender fields")
    from dtp.identity._ed25519 import verify_memoized

    signed = _sender_message(
        identity.noise_public, sender_static, message_id, body, sender_host or ""
    )
    if not verify_memoized(public_key, proof, signed):
        raise E.ForgedSender("the sender's signature does not bind its key to this message")
    address = sui_address_from_public_key(public_key)
    if sender_host is not None:
        # as the ledger spells it (after the proof, which signs the sender's spelling):
        # the ledger takes "0X00AB" for "0xab", and an application compares the host it
        # is given with its lists of hosts (blocked, allowed) in the canonical spelling
        sender_host = _canonical(sender_host)
    if sender_host is not None and ledger is not None:
        from dtp.errors import InvalidObjectId, ObjectNotFound

        # only "no such host" proves the claim false: a ledger that cannot be reached
        # (LedgerUnavailable...) must not make a genuine message a forgery, dropped for good
        try:
            host = ledger.get_host(sender_host)
        except (ObjectNotFound, InvalidObjectId):
            raise E.ForgedSender(
                f"the sender claims host {sender_host}, which does not exist"
            ) from None
        if host.noise_static_key != sender_static or host.authority != address:
            raise E.ForgedSender(
                f"host {sender_host} publishes other keys than the ones that sealed this message"
            )
    return OpenedMessage(
        message_id, body, sent_ms, recipient_host, sender_static, address, sender_host
    )


def _canonical(host_id: str) -> str:
    """``host_id`` as the ledger spells object IDs (``0x`` + 64 lower-case hex); other
    text (not an object ID) as it is."""
    from dtp.errors import InvalidObjectId
    from dtp.ledger._objects import normalize_id

    try:
        return normalize_id(host_id, "host ID")
    except InvalidObjectId:
        return host_id


def send_sealed(
    data: bytes,
    *,
    recipient_host: str,
    client: RpcClient | None = None,
    ledger: Ledger | None = None,
    signer: HostIdentity | None = None,
    timeout: float = 5.0,
) -> str:
    """Deliver sealed bytes: directly through ``client`` (an RPC client on a stream to the
    recipient) when given and it answers, else into the recipient's ledger mailbox
    (``ledger`` and ``signer`` pay for the transaction). Returns ``"direct"`` or
    ``"mailbox"``.

    A recipient that read the message and refused it (not for it, altered, forged:
    :class:`~dtp.messaging.errors.InvalidParams`) is no reason to try the mailbox, where it
    would refuse it again: that error is raised.

    Arguments that cannot make a delivery are refused before anything is sent or paid
    for: ``data`` not bytes-like or ``recipient_host`` not a str (TypeError), an empty
    host ID or a ``timeout`` that is not finite seconds above 0 (ValueError), ``data``
    over :data:`MAX_SEALED` (:class:`~dtp.messaging.errors.PayloadTooLarge`), a
    ``ledger`` without the ``signer`` who pays for ``mailbox::send`` and no ``client``
    (ValueError). With a ``client``, such a mailbox is no fallback: when the direct
    delivery fails, that ValueError is raised (from the delivery's error)."""
    data = bytes_like(data)
    if len(data) > MAX_SEALED:
        # the recipient and the mailbox refuse it anyway, after the direct try or the fee
        raise E.PayloadTooLarge(f"a sealed message is at most {MAX_SEALED} bytes, not {len(data)}")
    if not isinstance(recipient_host, str):
        raise TypeError(f"recipient_host must be a str, not {type(recipient_host).__name__!r}")
    if not recipient_host:
        raise ValueError("recipient_host is empty")
    _check_our_timeout(timeout)
    # a ledger without a signer cannot pay for the mailbox: said here, not after the
    # direct try as "no ledger mailbox was given" (one was: the signer is what is
    # missing). Without a client it is refused before anything is done; with one, the
    # direct delivery may still go (a caller may pass the ledger along out of habit)
    no_signer = ledger is not None and signer is None
    if no_signer and client is None:
        raise ValueError("send_sealed(ledger=...) needs signer=, who pays for mailbox::send")
    if client is not None:
        try:
            client.call("sealed.deliver", data, timeout=timeout)
            return "direct"
        except E.InvalidParams:
            raise  # refused by the recipient: the mailbox copy would be paid for, then dropped
        except (E.RpcError, OSError) as exc:
            if ledger is None:
                raise
            if no_signer:
                raise ValueError(
                    "the direct delivery failed, and send_sealed(ledger=...) needs signer= "
                    "to use the mailbox"
                ) from exc
    if ledger is None or signer is None:
        # (only without a client: a failed direct try without a ledger raises its own
        # error above)
        raise E.SealedError("neither a client (direct delivery) nor a ledger mailbox was given")
    ledger.mailbox_send(signer, recipient_host, data)
    return "mailbox"
