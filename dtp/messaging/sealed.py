"""Sealed messages to a host: one-way Noise to the recipient's static key
(docs/messaging.md §3).

- ``N`` (anonymous): only the recipient can read the message; the sender stays unknown.
- ``X`` (sender proven): Noise ``X`` authenticates the sender's static X25519 key, and the
  plaintext carries the sender's Sui address with an Ed25519 signature binding it to that
  key, the recipient's key, the message id and the body. A message claiming someone else's
  address, or a host whose published Noise key is not the one that sealed it, is refused
  with :class:`~dtp.messaging.errors.ForgedSender`.

Delivery: directly over any DTP stream (:class:`SealedInbox` registers an RPC method
``sealed.deliver``) when the recipient is online, or through the ledger mailbox
(``mailbox::send`` → ``MailDeposited`` events) when it is not; :meth:`SealedInbox.fetch`
reads the mailbox from a saved cursor. Each message id is delivered to the application
once, whichever way (and however often) it arrived.

:func:`seal` / :func:`open_sealed` are pure functions of their inputs (keys and randomness
are passed in).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgpack
from noise.connection import Keypair, NoiseConnection

from dtp.errors import InvalidArgument
from dtp.identity.files import companion, lock_exclusive
from dtp.identity.keys import sui_address_from_public_key
from dtp.ledger.objects import MAX_PURE_BYTES
from dtp.messaging import errors as E
from dtp.messaging.framing import bytes_like
from dtp.messaging.protocol import _check_our_timeout

if TYPE_CHECKING:
    from collections.abc import Callable

    from dtp.identity.keys import HostIdentity
    from dtp.ledger.interface import Ledger
    from dtp.messaging.rpc import RpcClient, RpcServer

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_BODY",
    "MAX_SEALED",
    "PATTERN_N",
    "PATTERN_X",
    "OpenedMessage",
    "SealedInbox",
    "open_sealed",
    "seal",
    "send_sealed",
]

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
    #: How it arrived: "direct" or "mailbox" (set by :class:`SealedInbox`).
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
    from dtp.identity.ed25519 import verify_memoized

    signed = _sender_message(
        identity.noise_public, sender_static, message_id, body, sender_host or ""
    )
    if not verify_memoized(public_key, proof, signed):
        raise E.ForgedSender("the sender's signature does not bind its key to this message")
    address = sui_address_from_public_key(public_key)
    if sender_host is not None:
        # as the ledger spells it (after the proof, which signs the sender's spelling):
        # the ledger takes "0X00AB" for "0xab", and an application comparing the host it
        # was given with a list of hosts (blocked, allowed) was told "0X00AB"
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
    from dtp.ledger.objects import normalize_id

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
        # (only without a client: a failed direct try without a ledger raised its error)
        raise E.SealedError("neither a client (direct delivery) nor a ledger mailbox was given")
    ledger.mailbox_send(signer, recipient_host, data)
    return "mailbox"


def _real_path(path: Path) -> Path:
    """``path`` with its symlinks resolved: the snapshot replaced a link to the state
    file with a file of its own, and the journal went next to the link, so the next
    inbox opened by the file's real name read a state that knew none of it."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (reading it fails)
        return path


#: How many times ``max_seen`` ids an inbox with ``max_age`` keeps while they are too
#: young to forget (see SealedInbox._evict).
_PROTECTED_SEEN: Final = 4


class SealedInbox:
    """A host's inbox for sealed messages: opens them, drops duplicates, and remembers
    the mailbox cursor (in ``state_path``, a small JSON file, when given) so that each
    message reaches the application once — across restarts too.

    ``max_seen`` bounds the remembered message ids (oldest forgotten first). Ids seen
    between two saves of the cursor are appended to a journal next to the state file
    (``<state_path>.log``). A state file or journal that is not what the inbox writes
    raises :class:`~dtp.messaging.errors.SealedError` naming it. ``host_id`` and the recipient a
    message names are compared as object IDs (``0xAB`` is ``0x00…ab``); with a ``ledger``,
    ``host_id`` must be one (ValueError), as the mailbox is read by it.

    ``max_age`` (seconds, None: no limit) refuses messages dated earlier than that, or
    more than ``max_age`` ahead of this host's clock
    (:class:`~dtp.messaging.errors.SealedExpired`, counted in :attr:`rejected`): a copy
    of an old message, which anyone may post to the mailbox again, is then refused even
    after its id has left the last ``max_seen`` (a message dated far ahead, by a sender
    whose clock is wrong, would not grow old for years). Choose it shorter than half
    the time ``max_seen`` messages take to arrive, and longer than a message may wait
    in the mailbox (and than the senders' clocks may be off).

    One inbox per state file: it holds an exclusive lock (``flock``) on
    ``<state_path>-lock`` until :meth:`close` (or until it is garbage-collected), and a
    second inbox on the same file, in this process or another, is a SealedError -- two
    would each deliver every message once, and overwrite each other's cursor. A closed
    inbox delivers nothing more (SealedError, ``sealed.deliver`` included), and a
    :meth:`fetch` or :meth:`accept` under way when it closes delivers nothing either
    (SealedError; nothing is saved: those messages are the next inbox's). A state file
    reached through a symlink is the file it links to.

    Any thread may call :meth:`accept` and :meth:`fetch` (fetches take turns, so the
    cursor only moves forward); :attr:`rejected` and :attr:`duplicates` count under
    the inbox's lock.

    A state write that fails (a full disk...) raises its OSError; the messages it was
    for are not taken as seen (for ``sealed.deliver``, whose handler has them, only in
    memory), so a copy or the next :meth:`fetch` delivers them. A new snapshot is
    flushed to the disk (fsync, then its directory) before the journal is emptied; the
    journal's lines are not (one per delivery): a power cut, unlike a crash of the
    process, can forget the last ids delivered.
    """

    def __init__(
        self,
        identity: HostIdentity,
        host_id: str,
        ledger: Ledger | None = None,
        *,
        state_path: str | os.PathLike[str] | None = None,
        max_seen: int = 100_000,
        verify_hosts: bool = True,
        max_age: float | None = None,
    ) -> None:
        if max_age is not None and (
            not isinstance(max_age, int | float)
            or isinstance(max_age, bool)
            or not 0 < max_age < float("inf")
        ):
            raise ValueError(
                f"max_age must be a positive number of seconds or None, not {max_age!r}"
            )
        count: object = max_seen  # (typed int, but callers pass what they have)
        if isinstance(count, float) and count.is_integer():
            count = int(count)  # 1e5
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            # (-1 raised KeyError from an empty dict, "10" TypeError, at the first message)
            raise ValueError(f"max_seen must be a number of ids (an int >= 0), not {max_seen!r}")
        self.max_age = max_age
        self.identity = identity
        if not isinstance(host_id, str):
            raise TypeError(f"host_id must be a str, not {type(host_id).__name__!r}")
        if ledger is not None:
            from dtp.errors import InvalidObjectId
            from dtp.ledger.objects import normalize_id

            # fetch reads the mailbox by it: with anything but an object ID it skipped
            # all the mail, moving (and saving) the cursor past it
            try:
                normalize_id(host_id, "host ID")
            except InvalidObjectId:
                raise ValueError(f"host_id {host_id!r} is not an object ID (0x + hex)") from None
        self.host_id = _canonical(host_id)
        self.ledger = ledger
        self.verify_hosts = verify_hosts
        self.max_seen = count
        self._path = _real_path(Path(state_path)) if state_path is not None else None
        # seen ids, oldest first, each with when (monotonic) it was delivered -- or
        # loaded from the state file: see _evict
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()
        # ids being handed to register()'s on_message: marked seen only once it
        # returned, and a concurrent copy waits for that outcome (see _claim); the
        # value is the delivering thread's ident
        self._pending: dict[bytes, int] = {}
        self._settled = threading.Condition(self._lock)
        # fetches take turns (the thread whose fetch reads and settles the mailbox now):
        # two at once each read from the cursor they saw, and the later to end wrote its
        # older cursor over the newer one
        self._fetcher: int | None = None
        # thread -> (the thread it waits for, whether for a fetch's turn): waits that
        # would close a cycle are not taken (see _cycle)
        self._waits: dict[int, tuple[int, bool]] = {}
        self.cursor: str | None = None
        self._journaled = 0  # lines in the state file's journal (<state_path>.log)
        # the snapshot's token, which the journal's cursor lines carry: a line with
        # another (a journal a stop left behind a newer snapshot, or beside a snapshot
        # written by hand or by an earlier version) is not this snapshot's to move on
        self._epoch: str | None = None
        self._rejected: dict[str, int] = {}
        self.duplicates = 0
        self._unlock: weakref.finalize[[int], SealedInbox] | None = None
        self._closed = False
        self._key_checked = False  # the host publishes our Noise key (see fetch)
        if self._path is not None:
            try:
                fd = lock_exclusive(companion(self._path))
            except BlockingIOError:
                raise E.SealedError(
                    f"inbox state file {str(self._path)!r} is in use by another SealedInbox "
                    "(this process or another): one state file serves one inbox at a time"
                ) from None
            except OSError as exc:
                raise E.SealedError(
                    f"cannot lock inbox state file {str(self._path)!r}: {exc}"
                ) from exc
            if fd is not None:
                self._unlock = weakref.finalize(self, os.close, fd)
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    @property
    def rejected(self) -> dict[str, int]:
        """Messages refused (undecryptable, malformed, forged, expired...), by reason: a
        snapshot, counted under the inbox's lock (threads deliver at once)."""
        with self._lock:
            return dict(self._rejected)

    def _reject(self, reason: str) -> None:
        with self._lock:
            self._rejected[reason] = self._rejected.get(reason, 0) + 1

    def close(self) -> None:
        """Release the state file's lock (idempotent). Everything delivered is saved
        already: the inbox writes its state as it goes. A closed inbox delivers nothing
        more (:meth:`accept`, :meth:`fetch` and ``sealed.deliver`` raise SealedError): it
        would deliver again what the next inbox on the file delivers, and write over
        its state."""
        with self._lock:
            self._closed = True
        if self._unlock is not None:
            self._unlock()

    def __enter__(self) -> SealedInbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- persistence -----------------------------------------------------------------------

    def _load(self) -> None:
        if self._path is None:
            return
        if self._path.exists():
            self._load_snapshot(self._path)
            self._load_journal(self._path.with_suffix(self._path.suffix + ".log"))
            if self._epoch is None:
                # an earlier version's snapshot (or one written by hand) has no token:
                # cursor lines appended for it would be taken by no later start, which
                # went back to its cursor and delivered evicted mail again
                self._save()
        else:
            # a snapshot at once: it names the host, which the journal's cursor lines
            # do not (another host's inbox on this file took them over, and skipped its
            # own earlier mail); a journal without one is an earlier version's, folded in
            self._load_journal(self._path.with_suffix(self._path.suffix + ".log"))
            self._save()
        self._evict()

    def _load_snapshot(self, path: Path) -> None:
        try:
            state = json.loads(path.read_bytes())
            if not isinstance(state, dict):
                raise ValueError("not a JSON object")
            cursor = state.get("cursor")
            seen = state.get("seen", [])
            host = state.get("host")  # (absent from the files of earlier versions)
            epoch = state.get("journal")  # (likewise)
            if (
                not (cursor is None or isinstance(cursor, str))
                or not isinstance(seen, list)
                or not (host is None or isinstance(host, str))
                or not (epoch is None or isinstance(epoch, str))
            ):
                raise ValueError("host, cursor, journal or seen of the wrong type")
            ids = [bytes.fromhex(hex_id) for hex_id in seen]
            if any(len(m) != _ID_SIZE for m in ids):
                raise ValueError("a seen id is not 16 bytes")
        except (ValueError, TypeError, RecursionError) as exc:  # JSON and UTF-8 errors too
            raise E.SealedError(
                f"inbox state file {str(path)!r} is corrupt ({exc}); move it away to start over"
            ) from None
        if host is not None and host != self.host_id:
            # its cursor is a position in the ledger's whole event stream: taken over, it
            # would skip this host's mail that arrived before it, silently
            raise E.SealedError(
                f"inbox state file {str(path)!r} belongs to host {host}, not {self.host_id}"
            )
        self.cursor = cursor
        self._epoch = epoch
        self._see(ids)

    def _load_journal(self, path: Path) -> None:
        """Add the ids appended after the last snapshot (one hex id per line) and take
        the newest cursor appended for this snapshot (``c:``, the snapshot's token,
        ``:`` and the cursor's UTF-8 in hex); a last line without its newline was being
        written when the process stopped: cut off."""
        if not path.exists():
            return
        data = path.read_bytes()
        lines = data.split(b"\n")
        torn = lines.pop()  # b"" after a complete last line
        cursor = None
        try:
            ids = []
            for line in lines:
                if line.startswith(_CURSOR_LINE):
                    epoch, hex_cursor = line[len(_CURSOR_LINE) :].split(b":")
                    moved = bytes.fromhex(hex_cursor.decode("ascii")).decode()
                    if epoch.decode("ascii") == self._epoch:
                        cursor = moved
                else:
                    ids.append(bytes.fromhex(line.decode("ascii")))
            if any(len(m) != _ID_SIZE for m in ids):
                raise ValueError("a seen id is not 16 bytes")
        except ValueError as exc:  # UnicodeDecodeError too
            raise E.SealedError(
                f"inbox journal {str(path)!r} is corrupt ({exc}); move it away to start over"
            ) from None
        if torn:
            # cut it off: the next id appended would join it into one corrupt line, and
            # the inbox would refuse to open at the next start
            os.truncate(path, len(data) - len(torn))
        self._see(ids)
        if cursor is not None:
            self.cursor = cursor
        self._journaled = len(lines)

    def _save(self) -> None:
        """Write the whole state (cursor and ids) and empty the journal."""
        if self._path is None:
            return
        from dtp.identity.keys import _fsync_directory

        epoch = os.urandom(8).hex()
        state = {
            "host": self.host_id,
            "cursor": self.cursor,
            "journal": epoch,
            "seen": [m.hex() for m in self._seen],
        }
        data = memoryview(json.dumps(state).encode())
        tmp = self._path.with_suffix(self._path.suffix + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            while data:
                data = data[os.write(fd, data) :]
            # on the disk before it takes the old one's place: after a power cut the
            # rename could be there and not the data (an empty state file, which the
            # inbox refuses to open)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._path)
        self._epoch = epoch
        try:
            # the rename on the disk before the journal is emptied: else a power cut could
            # leave the old snapshot with an empty journal, the ids in neither
            _fsync_directory(self._path.parent)
            # (a stop right here leaves journaled ids that are in the snapshot too)
            journal = self._path.with_suffix(self._path.suffix + ".log")
            if self._journaled or journal.exists():
                # (not created when there is none yet: the snapshot an inbox writes at
                # its first start; emptied when there is one even with no line counted:
                # a failed append whose undo failed too left part of a line there)
                journal.write_bytes(b"")
        except OSError as exc:
            # the new state is in place: raised, the caller would undo in memory what the
            # file already holds (its cursor moved on), and the messages it did not hand
            # over would be lost at the next start. A journal left as it was only repeats
            # ids the snapshot has; the journal is emptied at the next snapshot.
            logger.warning("inbox state %s written, then: %s", self._path, exc)
            return
        self._journaled = 0

    def _remember(self, message_ids: list[bytes], cursor_moved: bool = False) -> None:
        """(lock held) Persist newly seen ids, and the cursor when it moved: appended to
        the journal, so a delivery costs a line, not a rewrite of up to ``4 *
        max_seen`` ids (86 ms at 100 000; a fetch moves the cursor past other hosts'
        mail too, and rewrote the snapshot for each); the journal is folded into the
        snapshot once it holds more lines than the snapshot ids. The cursor line comes
        after the ids: cut short by a stop, the journal never has the cursor past mail
        whose ids it lacks. Raises the OSError of a write that failed, having undone
        it."""
        if self._path is None or not (message_ids or cursor_moved):
            return
        lines = [m.hex().encode() + b"\n" for m in message_ids]
        if cursor_moved and self.cursor is not None:
            epoch, cursor = (self._epoch or "").encode(), self.cursor.encode().hex().encode()
            lines.append(b"%s%s:%s\n" % (_CURSOR_LINE, epoch, cursor))
        journaled = self._journaled + len(lines)
        # (once the journal outgrows the snapshot: rewrites stay O(1) per line amortized)
        if journaled > max(1024, len(self._seen) - journaled):
            self._save()
            return
        data = memoryview(b"".join(lines))
        path = self._path.with_suffix(self._path.suffix + ".log")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            try:
                while data:
                    data = data[os.write(fd, data) :]
            except BaseException:
                # a part of a line (the disk is full...) would join the next id appended
                # into one corrupt line, and the inbox would refuse to open at next start
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, end)
                raise
        finally:
            os.close(fd)
        self._journaled = journaled

    # -- receiving ----------------------------------------------------------------------------

    def accept(self, data: bytes, via: str = "direct") -> OpenedMessage | None:
        """Open ``data``; returns the message, or None for a duplicate. Raises the typed
        errors of :func:`open_sealed` (and counts them in :attr:`rejected`), SealedError
        once the inbox is closed."""
        self._check_open()  # (before opening: a closed inbox looks at nothing)
        message = self._open(data, via)
        if not self._claim(message.message_id):
            return None
        self._settle(message.message_id, delivered=True)
        return message

    def _open(self, data: bytes, via: str) -> OpenedMessage:
        try:
            ledger = self.ledger if self.verify_hosts else None
            message = open_sealed(self.identity, data, ledger=ledger)
        except E.SealedError as exc:
            self._reject(type(exc).__name__)
            raise
        if message.recipient_host is not None and _canonical(message.recipient_host) != (
            self.host_id
        ):
            self._reject("WrongRecipient")
            raise E.SealedDecryptError()
        if self.max_age is not None:
            now_ms = time.time_ns() // 1_000_000
            window = int(self.max_age * 1000)
            if not now_ms - window <= message.sent_ms <= now_ms + window:
                # a copy of a message delivered long ago, whose id may be forgotten; or
                # one dated so far ahead that its copies would be taken until that date
                self._reject("SealedExpired")
                which = "older than" if message.sent_ms < now_ms else "ahead of now by more than"
                raise E.SealedExpired(
                    f"sealed message dated {message.sent_ms} ms, {which} max_age ({self.max_age} s)"
                )
        return OpenedMessage(**{**message.__dict__, "via": via})

    def _claim(self, message_id: bytes) -> bool:
        """Take ``message_id`` for delivery: False (a counted duplicate) if it was seen.
        While another thread is delivering it, wait for that to end: seen if it
        succeeded, ours to deliver if it failed. While this thread is (an on_message
        handler calling :meth:`fetch` or :meth:`accept`), or one that waits for this
        thread's own deliveries to end, it is a duplicate: that wait would never end."""
        me = threading.get_ident()
        with self._settled:
            while message_id in self._pending:
                cycle = self._cycle(self._pending[message_id])
                if cycle is not None and not any(cycle):
                    self.duplicates += 1
                    return False
                # (a cycle through a fetch's turn is broken by the fetch waiting for its
                # turn: it gives up once woken, see _take_turn)
                self._waits[me] = (self._pending[message_id], False)
                if cycle is not None:
                    self._settled.notify_all()
                try:
                    self._settled.wait()
                finally:
                    del self._waits[me]
            self._check_open()
            if message_id in self._seen:
                self.duplicates += 1
                return False
            self._pending[message_id] = me
            return True

    def _cycle(self, owner: int) -> list[bool] | None:
        """(lock held) Whether waiting for thread ``owner`` would wait for this thread:
        the kinds of the waits from ``owner`` back to it (True: for a fetch's turn; []
        when ``owner`` is this thread), or None when it would not."""
        me = threading.get_ident()
        kinds: list[bool] = []
        thread = owner
        while thread != me:
            if thread not in self._waits or len(kinds) > len(self._waits):
                return None  # (the second: a cycle not through us, which cannot form)
            thread, turn = self._waits[thread]
            kinds.append(turn)
        return kinds

    def _see(self, message_ids: list[bytes]) -> None:
        """(lock held, or loading) Mark ``message_ids`` seen, now (see :meth:`_evict`)."""
        now = time.monotonic()
        for message_id in message_ids:
            self._seen[message_id] = now

    def _evict(self) -> None:
        """(lock held, or loading) Forget the oldest seen ids beyond ``max_seen`` --
        except, with ``max_age``, those delivered (or loaded) less than twice ``max_age``
        ago, whose copies the age check could still let through: anyone can seal a
        message to us, and a flood of them pushed out the id of a message still young,
        whose copy was then delivered again as from its sender. Those are kept up to
        :data:`_PROTECTED_SEEN` times ``max_seen`` ids (beyond that, the oldest go)."""
        seen = self._seen
        excess = len(seen) - self.max_seen
        if excess <= 0:
            return
        young_after = math.inf if self.max_age is None else time.monotonic() - 2 * self.max_age
        over_bound = len(seen) - _PROTECTED_SEEN * self.max_seen
        while excess > 0:
            if next(iter(seen.values())) > young_after and over_bound <= 0:
                break  # (delivered in order: every id after it is younger still)
            seen.popitem(last=False)
            excess -= 1
            over_bound -= 1

    def _check_open(self) -> None:
        if self._closed:
            raise E.SealedError("this SealedInbox is closed")

    def _settle(self, message_id: bytes, delivered: bool) -> None:
        """End a :meth:`_claim`: remember the id if the message was delivered."""
        self._settle_all([message_id], delivered)

    def _settle_all(
        self,
        message_ids: list[bytes],
        delivered: bool,
        cursor: str | None = None,
        *,
        handed_over: bool = False,
    ) -> None:
        """End the :meth:`_claim` of each of ``message_ids``: remember them if they were
        delivered, and then ``cursor`` when given; the state file is written once.

        When writing the state fails (a full disk...), its OSError propagates, and the
        ids and the cursor are forgotten again: the caller did not hand the messages
        over, so the next copy or ``fetch`` delivers them. ``handed_over``: the
        application has them already, and they stay seen (in memory).

        Once the inbox is closed its state file is the next inbox's: nothing is written,
        and (unless ``handed_over``) SealedError is raised, the messages left for the
        next inbox to deliver."""
        with self._settled:
            try:
                for message_id in message_ids:
                    self._pending.pop(message_id, None)
                if not delivered:
                    return
                if self._closed:
                    # a fetch or an accept that was under way when close() released the
                    # state file: writing it now would overwrite the next inbox's state
                    # (its cursor moved back, its ids forgotten), and the messages would
                    # reach the application twice, from this inbox and from the next
                    if not handed_over:
                        raise E.SealedError(
                            "this SealedInbox was closed while it delivered: nothing was "
                            "delivered (the next inbox on its state file delivers it)"
                        )
                    self._see(message_ids)
                    return
                old_cursor = self.cursor
                self._see(message_ids)
                try:
                    moved = cursor is not None and cursor != self.cursor
                    if moved:
                        self.cursor = cursor
                    self._remember(message_ids, moved)  # the ids, then the cursor
                except BaseException:
                    if not handed_over:
                        self.cursor = old_cursor
                        for message_id in message_ids:
                            self._seen.pop(message_id, None)
                    raise
                # (after the write: what a failed one forgets is only what it added)
                self._evict()
            finally:
                # whatever happened: a thread waiting in _claim for one of these ids
                # would otherwise wait for ever
                self._settled.notify_all()

    def fetch(
        self,
        limit: int = 1000,
        *,
        wait: float = 0.0,
        on_message: Callable[[OpenedMessage], object] | None = None,
    ) -> list[OpenedMessage]:
        """Read the ledger mailbox after the saved cursor (waiting up to ``wait`` seconds
        for something new); returns the new messages. Bad mail is skipped and counted.

        Without ``on_message`` the batch is taken as delivered (its ids and the cursor
        saved) before it is returned: a process that stops before it has stored the
        messages loses them. With ``on_message`` each new message is handed to it first,
        in mailbox order, and its id is saved once it returned (the cursor once the
        whole batch was): a stop while a handler runs leaves that message, and the rest
        of the batch, to the next fetch, after a restart too. If the handler raises, the
        messages it took stay seen, the rest are not, the cursor stays, and the error
        propagates. (A stop between the handler's return and the saving of its id
        delivers that message again: a handler that stores it should do so keyed by its
        ``message_id``.)

        The batch is all or nothing: when reading or checking it fails (the ledger is
        unreachable...), the error propagates and neither the cursor nor the messages'
        ids are remembered, so the next call reads the same mail again.

        Fetches in several threads take turns, each reading from where the last one
        ended; the wait for something new is not part of a turn. A fetch from an
        ``on_message`` handler (see :meth:`register`) while another fetch waits for that
        handler's message returns [] at once: the other fetch delivers the mail."""
        from dtp.ledger.objects import EventFilter

        if self.ledger is None:
            raise E.SealedError("this inbox has no ledger")
        self._check_open()
        if not self._key_checked:
            # (once per inbox) with another identity than the host's, every mail failed to
            # open and was skipped, the cursor moving (and saved) past all of it for good
            published = self.ledger.get_host(self.host_id).noise_static_key
            if published != self.identity.noise_public:
                raise E.SealedError(
                    f"host {self.host_id} publishes another Noise key than this inbox's "
                    "identity: none of its mail would open (the mail is left unread)"
                )
            self._key_checked = True
        flt = EventFilter(type="MailDeposited", object_id=self.host_id)
        deadline = time.monotonic() + wait if wait > 0 else None
        while True:
            if not self._take_turn():
                return []
            try:
                cursor = self.cursor
                events, after = self.ledger.events(cursor, flt, limit)
                out = self._take_batch(events, after, on_message)
            finally:
                with self._settled:
                    self._fetcher = None
                    self._settled.notify_all()
            remaining = 0.0 if deadline is None else deadline - time.monotonic()
            if events or remaining <= 0:
                return out
            # nothing yet: wait outside the turn (a handler's fetch, another thread's,
            # would otherwise wait behind this one's wait), then read in turn again
            self.ledger.wait_events(after, remaining, flt, limit)

    def _take_turn(self) -> bool:
        """Wait for the fetch under way in another thread to end, and start this one's:
        False (this fetch gives up) when that fetch waits, itself or through others, for
        this thread -- an ``on_message`` handler whose message it came upon."""
        me = threading.get_ident()
        with self._settled:
            while self._fetcher is not None:
                if self._cycle(self._fetcher) is not None:
                    return False
                self._waits[me] = (self._fetcher, True)
                try:
                    self._settled.wait()
                finally:
                    del self._waits[me]
            self._check_open()
            self._fetcher = me
            return True

    def _take_batch(
        self,
        events: list[Any],
        cursor: str | None,
        on_message: Callable[[OpenedMessage], object] | None = None,
    ) -> list[OpenedMessage]:
        """(in this thread's fetch turn) Open and claim the batch read from the mailbox,
        then remember its ids and ``cursor``, the batch's end, all or nothing; with
        ``on_message``, hand each message over first (see :meth:`fetch`)."""
        out: list[OpenedMessage] = []
        claimed: dict[bytes, None] = {}  # in mailbox order (the oldest seen go first)
        try:
            for event in events:
                if event.fields.get("recipient_host") != self.host_id:
                    continue
                payload = event.fields.get("payload")
                if not isinstance(payload, bytes):
                    continue
                try:
                    message = self._open(payload, "mailbox")
                except E.SealedError:
                    continue
                if not self._claim(message.message_id):
                    continue
                claimed[message.message_id] = None
                out.append(message)
        except BaseException:
            # nothing was handed over: forget the claims, keep the old cursor
            self._settle_all(list(claimed), delivered=False)
            raise
        if on_message is None:
            self._settle_all(list(claimed), delivered=True, cursor=cursor)
        else:
            self._hand_over(out, on_message)
            # (each id is saved already; closed by now, the cursor is left to the next
            # inbox, which reads this batch again and finds it seen)
            self._settle_all([], delivered=True, cursor=cursor, handed_over=True)
        return out

    def _hand_over(
        self, messages: list[OpenedMessage], on_message: Callable[[OpenedMessage], object]
    ) -> None:
        """Give each claimed message to ``on_message``, saving its id once it returned:
        the ids are saved before the cursor, so a stop at any point leaves what was not
        handed over in the mailbox after the old cursor, for the next fetch."""
        for index, message in enumerate(messages):
            try:
                # (closed: the next inbox owns the state file and delivers the rest)
                self._check_open()
                on_message(message)
            except BaseException:
                self._settle_all([m.message_id for m in messages[index:]], delivered=False)
                raise
            try:
                self._settle_all([message.message_id], delivered=True, handed_over=True)
            except BaseException:
                # (the handler has this one: it stays seen in memory, see _settle_all)
                self._settle_all([m.message_id for m in messages[index + 1 :]], delivered=False)
                raise

    def register(self, server: RpcServer, on_message: Any) -> None:
        """Serve ``sealed.deliver`` on ``server``: each new message goes to
        ``on_message(message)``; the caller gets True (new) or False (duplicate), or a
        typed error for bad bytes. A message counts as seen only once ``on_message``
        returned: if it raises, the caller gets an internal error and the message is
        delivered again when resent."""

        def deliver(params: Any) -> bool:
            if not isinstance(params, bytes):
                raise E.InvalidParams("sealed.deliver takes the sealed bytes")
            # (before opening: a closed inbox looks at nothing, and answers -32603, not
            # InvalidParams, whatever the bytes: send_sealed then uses the mailbox)
            self._check_open()
            try:
                message = self._open(params, "direct")
            except E.SealedError as exc:
                raise E.InvalidParams(f"refused: {type(exc).__name__}") from None
            if not self._claim(message.message_id):
                return False
            delivered = False
            try:
                on_message(message)
                delivered = True
            finally:
                self._settle_all([message.message_id], delivered, handed_over=True)
            return True

        server.register("sealed.deliver", deliver)
