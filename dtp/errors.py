"""Every exception DTP raises, under one root: :class:`DTPError`.

The tree follows what users catch:

- :class:`ProtocolError` carries an :class:`ErrorCode`; it splits into
  :class:`LocalProtocolError` (this program misused the API) and
  :class:`RemoteProtocolError` (the peer sent something invalid).
- :class:`DecryptionError` is deliberately detail-free: any AEAD failure looks the same,
  so an attacker learns nothing from which check failed.
- Connection-level, chain and money errors are added by the layers that raise them,
  always as subclasses of :class:`DTPError`.

The numeric codes mirror the ``DTP_ERR_*`` constants of ``dtp_core/dtp_core.h``; the
C wrappers and the pure-Python twins raise the same type with the same code.

At the end, the checks of values users pass in (:func:`finite_float`, :func:`shown`),
which the modules that take settings share to raise these errors with clear messages.
"""

from __future__ import annotations

import enum
import errno
import math
import re
import sqlite3
from typing import Any, ClassVar, Final

from dtp._distribution import NAME as DISTRIBUTION


class ErrorCode(enum.IntEnum):
    """Status codes of the C core and its Python twin: every ``DTP_ERR_*`` of
    dtp_core/dtp_core.h but the lanes' ``DTP_ERR_IO`` and ``DTP_ERR_QUEUE``, which
    :mod:`dtp.native.core` turns into an OSError or a partial send before Python sees
    them (tests/native/test_error_codes.py holds the two tables together). Local only:
    a CLOSE frame carries a :class:`dtp.protocol._state.CloseCode`, never one of these."""

    BUFFER = -1
    ARG = -2
    NOMEM = -3
    VARINT = -10
    FRAME_TYPE = -11
    FRAME_SIZE = -12
    FRAME_TRUNCATED = -13
    FRAME_VALUE = -14
    RECORD_KIND = -20
    RECORD_FLAGS = -21
    RECORD_SIZE = -22
    DECRYPT = -30
    REPLAY = -31
    COUNTER = -32
    CRYPTO = -33
    REASM_WINDOW = -40
    REASM_FRAGMENTED = -41
    HAM_MALFORMED = -50
    HAM_STATE = -51
    HAM_SIZE = -52
    NOISE_TURN = -70
    NOISE_SIZE = -71
    NOISE_DH = -72


_DESCRIPTIONS: dict[ErrorCode, str] = {
    ErrorCode.BUFFER: "output buffer too small",
    ErrorCode.ARG: "invalid argument",
    ErrorCode.NOMEM: "out of memory",
    ErrorCode.VARINT: "varint value out of range (must be < 2**62)",
    ErrorCode.FRAME_TYPE: "unknown frame type",
    ErrorCode.FRAME_SIZE: "frame length exceeds its limit",
    ErrorCode.FRAME_TRUNCATED: "frame runs past the end of its record",
    ErrorCode.FRAME_VALUE: "invalid frame field value",
    ErrorCode.RECORD_KIND: "unknown record kind",
    ErrorCode.RECORD_FLAGS: "reserved record flags set",
    ErrorCode.RECORD_SIZE: "record length out of range",
    ErrorCode.DECRYPT: "record failed authentication",
    ErrorCode.REPLAY: "record replayed or older than the replay window",
    ErrorCode.COUNTER: "record counter space exhausted",
    ErrorCode.CRYPTO: "internal cryptographic failure",
    ErrorCode.REASM_WINDOW: "data beyond the reassembly window",
    ErrorCode.REASM_FRAGMENTED: "too many disjoint ranges buffered",
    ErrorCode.HAM_MALFORMED: "malformed HAM batch",
    ErrorCode.HAM_STATE: "HAM state is not a finite number",
    ErrorCode.HAM_SIZE: "HAM soul, field, value or count beyond its limit",
    ErrorCode.NOISE_TURN: "Noise message out of turn",
    ErrorCode.NOISE_SIZE: "Noise message of the wrong size for this step",
    ErrorCode.NOISE_DH: "X25519 with a low-order public key",
}


def describe(code: ErrorCode) -> str:
    """One human sentence fragment for ``code``."""
    return _DESCRIPTIONS[code]


class DTPError(Exception):
    """Root of every error DTP raises."""


class ProtocolError(DTPError):
    """A DTP protocol rule was broken; :attr:`code` says which. Without a message, its
    class's :attr:`default_message` says what, else the code's description."""

    code: ErrorCode = ErrorCode.ARG
    default_message: ClassVar[str] = ""

    def __init__(self, message: str | None = None, code: ErrorCode | None = None) -> None:
        if code is not None:
            self.code = code
        super().__init__(message or self.default_message or describe(self.code))


class LocalProtocolError(ProtocolError):
    """This program misused the API (wrong argument, buffer, state)."""


class SocketClosed(LocalProtocolError, OSError):
    """An operation on a DTP socket or server this program closed. Also an OSError with
    errno EBADF, as the same call on a closed :class:`socket.socket` raises: code
    written for sockets (``except OSError``) catches it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.EBADF
        self.strerror = message


class SendAfterShutdown(LocalProtocolError, BrokenPipeError):
    """A send on a stream this program shut for writing (``shutdown(SHUT_WR)``). Also a
    BrokenPipeError with errno EPIPE, as the same send on a :class:`socket.socket`
    raises: code written for sockets (``except OSError``) catches it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.EPIPE
        self.strerror = message


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol."""


class DecryptionError(RemoteProtocolError):
    """A record failed AEAD authentication. Carries no detail on purpose."""

    code = ErrorCode.DECRYPT

    def __init__(self, message: str | None = None, code: ErrorCode | None = None) -> None:
        super().__init__("record failed authentication", ErrorCode.DECRYPT)


class ReplayError(RemoteProtocolError):
    """A record's counter was already accepted, or is older than the replay window."""

    code = ErrorCode.REPLAY


class CryptoError(DTPError):
    """The crypto library failed internally (not the peer's fault, not ours)."""


_REMOTE_BY_DEFAULT = {
    ErrorCode.VARINT,
    ErrorCode.FRAME_TYPE,
    ErrorCode.FRAME_SIZE,
    ErrorCode.FRAME_TRUNCATED,
    ErrorCode.FRAME_VALUE,
    ErrorCode.RECORD_KIND,
    ErrorCode.RECORD_FLAGS,
    ErrorCode.RECORD_SIZE,
    ErrorCode.REASM_WINDOW,
    ErrorCode.REASM_FRAGMENTED,
    ErrorCode.HAM_MALFORMED,
    ErrorCode.HAM_STATE,
    ErrorCode.HAM_SIZE,
}


def error_for(rc: int, *, remote: bool | None = None, context: str = "") -> DTPError | MemoryError:
    """Map a negative core return code to the exception to raise.

    ``remote`` says whose bytes were being processed: decoders pass True (the peer's
    input), encoders pass False (our own input). None picks the code's usual side.
    """
    try:
        code = ErrorCode(rc)
    except ValueError:
        return LocalProtocolError(f"unexpected core status {rc}", ErrorCode.ARG)
    if code is ErrorCode.NOMEM:
        return MemoryError(describe(code))
    if code is ErrorCode.DECRYPT:
        return DecryptionError()
    if code is ErrorCode.REPLAY:
        return ReplayError()
    if code is ErrorCode.CRYPTO:
        return CryptoError(describe(code))
    message = describe(code) + (f" ({context})" if context else "")
    if remote is None:
        remote = code in _REMOTE_BY_DEFAULT
    cls = RemoteProtocolError if remote else LocalProtocolError
    return cls(message, code)


# -- connection layer --------------------------------------------------------------------


class HandshakeError(DTPError, ConnectionError):
    """The Noise handshake or the client's identity proof failed (wrong server key,
    bad signature, malformed handshake message, peer gone during the handshake). A
    ConnectionError, as a TLS handshake's failure is an OSError: code written for
    sockets (``except OSError``) catches it."""

    @classmethod
    def server_closed(cls) -> HandshakeError:
        """The server closed the carrier before the handshake completed (what the
        blocking and asyncio clients raise for a ConnectionLost then)."""
        return cls(
            "the server closed the connection during the handshake (wrong server key, not "
            "a DTP server, or too many handshakes from this address in progress there?)"
        )

    @classmethod
    def for_client(cls, error: BaseException | None) -> BaseException:
        """What a client raises when its handshake ended with ``error`` (the error of its
        session, None when there is none): a carrier that closed, or bytes that are not
        DTP at all (an HTTP, TLS or SSH server on that port), become a HandshakeError
        that says so; anything else (a refusal, a timeout, a handshake the server
        failed) is raised as it is."""
        if isinstance(error, ConnectionLost):
            return cls.server_closed()
        if isinstance(error, RemoteProtocolError) and not isinstance(
            error, DecryptionError | ReplayError
        ):
            # (a client reports a protocol error only for bytes it read itself)
            failure = cls(
                f"the server's reply is not DTP ({error}): not a DTP server, or the wrong port?"
            )
            failure.__cause__ = error
            return failure
        return error or cls("the handshake did not complete")


class ConnectionRefused(DTPError, ConnectionRefusedError):
    """The server refused this client (accept hook, firewall); ``reason`` says why."""

    def __init__(self, reason: str = "refused by the server", code: int = 0) -> None:
        self.reason = reason
        self.code = code
        super().__init__(reason)


class ConnectionLost(DTPError, ConnectionResetError):
    """The peer or the carrier went away without a clean close."""


class CarrierRefused(ConnectionLost, ConnectionRefusedError):
    """Nothing took the carrier's connect (a closed port: ECONNREFUSED). A
    ConnectionRefusedError, as :func:`socket.create_connection` raises (retry code
    written for sockets catches it), and a ConnectionLost, as it was before."""


class ConnectionClosed(DTPError, ConnectionError):
    """The connection was closed (by either side) with ``code`` and ``reason``. A
    ConnectionError, as a write to a closed TCP connection fails with one: code written
    for sockets (``except OSError``) catches it."""

    def __init__(self, reason: str = "connection closed", code: int = 0) -> None:
        self.reason = reason
        self.code = code
        super().__init__(f"{reason} (code {code})" if code else reason)


class StreamReset(DTPError, ConnectionResetError):
    """The peer reset the stream with an application error ``code``."""

    def __init__(self, stream_id: int, code: int) -> None:
        self.stream_id = stream_id
        self.code = code
        super().__init__(f"stream {stream_id} reset by peer (code {code})")


class DTPTimeoutError(DTPError, TimeoutError):
    """An operation did not finish within its timeout."""


class KeyFileError(DTPError):
    """A key file could not be read, decrypted, or has unsafe permissions."""


class MissingExtra(DTPError, ImportError):
    """A feature whose Python packages come with an extra of the ``dtp-sui`` distribution
    that is not installed (:mod:`dtp._extras`: ``sui``, ``lan``, ``gun``, ``metrics``,
    ``testing``). The message names the feature, the missing module and the command that
    installs the extra, ``pip install 'dtp-sui[sui]'`` (the distribution's name, not the
    import package's: :mod:`dtp._distribution`). Also an :class:`ImportError`, as the
    import it replaces (``name`` is the missing module): code that tried an import and
    caught that goes on catching it."""

    def __init__(self, extra: str, feature: str, module: str) -> None:
        self.extra = extra
        self.feature = feature
        super().__init__(
            f"{feature} needs the {extra!r} extra of {DISTRIBUTION}, which is not installed "
            f"(no module named {module!r}): pip install '{DISTRIBUTION}[{extra}]'",
            name=module,
        )


class DaemonConfigError(DTPError, ValueError):
    """A services daemon config file is invalid; the message names file:line: key."""


class TunnelError(DTPError):
    """A tunnel through the services daemon could not be set up (no healthy backend,
    unknown service, unpaid usage)."""


class ReceiptStoreError(DTPError, sqlite3.DatabaseError):
    """A paid server's receipt store (:mod:`dtp.payments.receipt_store`) cannot be opened, read
    or written, or is closed; the message names the file, :attr:`path` holds it. Also a
    :class:`sqlite3.DatabaseError`, as the bare error it replaces: code that caught
    ``sqlite3.Error`` goes on catching it."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class AccessDenied(DTPError, PermissionError):
    """A provider's rule refuses this client what it asked: a method its method rules
    do not allow it (:class:`dtp.messaging.errors.MethodNotAllowed`), or a login or
    session (:class:`dtp.messaging.errors.LoginRefused` and its subclasses). A
    PermissionError, so that ``except PermissionError`` catches it too."""


class PaymentError(DTPError):
    """A paid service refused to go on for want of payment. The base of both
    :class:`PaymentRequired` here (a paid connection closed: no receipt covered the
    usage) and :class:`dtp.messaging.errors.PaymentRequired` (one RPC request refused:
    its fee not covered), so that one ``except PaymentError`` handles either."""


class PaymentRequired(ConnectionClosed, PaymentError):
    """A paid server closed the connection: no receipt covered the usage in time, or a
    receipt was invalid (docs/escrow.md §6.1)."""


class SubscriptionEnded(ConnectionClosed):
    """A connection opened with a subscription (docs/escrow.md §13) that its paid server
    ended, the subscription being over on the ledger: it no longer covers the epoch, its
    offer was withdrawn, or its offer was sold with the host (whose new authority's
    server serves none of its connections). Nothing is owed on such a connection; the
    server settles it (after a sale: withdraws the offer and ends it). ``code`` is
    :data:`CLOSE_SUBSCRIPTION_ENDED`. Renew the subscription (or pay by the byte) and
    connect again."""


class SubscriptionRefused(SubscriptionEnded, ConnectionRefusedError):
    """A paid server refused, at its handshake, a connection opened with a subscription
    that is over on the ledger (its reason is :func:`subscription_refusal`'s). A
    :class:`SubscriptionEnded`, and a ConnectionRefusedError as
    :class:`ConnectionRefused` is. The client ends the ledger connection at once
    (``subscription::end_connection``: nothing owed, the deposit back)."""


# The CLOSE codes of paid connections (application range, docs/escrow.md "Close codes").
# Here, in the bottom layer, because both sides need them and may not import each other:
# the protocol maps a peer's 0x1402 to PaymentRequired, and payments (dtp.payments._gate
# re-exports them) decide when to close with them.

#: CLOSE code a paid server uses when receipts stop covering usage.
CLOSE_PAYMENT_REQUIRED: Final = 0x1402
#: CLOSE code a paid server uses when the host's firewall now denies the client.
CLOSE_FIREWALL_DENIED: Final = 0x1403
#: CLOSE code a paid server uses when the connection is no longer Open on the ledger
#: while it is served (the client half-closed it there): the server settles it at once,
#: as once the half-close timeout passed the client could settle first and take the
#: whole escrow back, the usage served meanwhile unpaid.
CLOSE_LEDGER_CLOSED: Final = 0x1404
#: CLOSE code a paid server uses when a connection opened with a subscription finds the
#: subscription over on the ledger while it is served (expired, its offer withdrawn, or
#: sold with the host): the client raises :class:`SubscriptionEnded`, and the server
#: settles it at once (nothing is owed on it).
CLOSE_SUBSCRIPTION_ENDED: Final = 0x1405

#: The start of a paid server's refusal of a connection whose subscription is over
#: (:func:`subscription_refusal`), which the client raises as :class:`SubscriptionRefused`.
SUBSCRIPTION_OVER: Final = "The subscription is over"


# -- graph privacy tiers (dtp.graph._tiers, docs/graph.md "Privacy tiers") -----------------


class GraphAccessError(DTPError, PermissionError):
    """A graph tier's rule forbids what was asked: writing into another author's space,
    reading a private value without its key. A PermissionError too."""


class NotTheAuthor(GraphAccessError):
    """A write, or a change of readers, in a protected or private space by someone other
    than its author (only the author's key signs there; peers refuse the rest at merge)."""


class NotAReader(GraphAccessError):
    """A private value read with an identity that holds no key for it: never a reader,
    or removed before the value was written."""


class PrivateDataError(RemoteProtocolError):
    """A private value or wrapped key that does not authenticate: damaged, or made for
    another soul, field or state. Carries no plaintext."""

    code = ErrorCode.DECRYPT


# -- chain ---------------------------------------------------------------------------------
#
# Errors of the control plane (dtp.ledger, dtp.payments). Every abort of the Move package
# `move/dtp` has one row in MOVE_ERRORS (module, constant name, numeric code of its
# `#[error(code = N)]` attribute, the class raised), so that LocalLedger and SuiLedger
# raise the same class with the same `.name` for the same rule.


class ChainError(DTPError):
    """A ledger call failed. ``name`` is the Move error constant (e.g. ``"EFirewallDenied"``)
    or, for failures outside the Move code (signatures, balances, unknown objects), a
    descriptive name; ``module`` is the Move module (``"host"``, ``"escrow"``…) or
    ``"sui"`` / ``"ledger"`` for those; ``code`` is the Move error code, when there is one."""

    name: str = ""
    module: str = ""
    code: int | None = None

    def __init_subclass__(
        cls, *, name: str | None = None, module: str | None = None, **kwargs: Any
    ) -> None:
        # (``class E(ChainError, name="EName", module="sui")``: a class's own name and module)
        super().__init_subclass__(**kwargs)
        if name is not None:
            cls.name = name
        if module is not None:
            cls.module = module

    def __init__(
        self,
        message: str,
        *,
        name: str | None = None,
        module: str | None = None,
        code: int | None = None,
    ) -> None:
        if name is not None:
            self.name = name
        if module is not None:
            self.module = module
        if code is not None:
            self.code = code
        super().__init__(message)

    @property
    def qualified_name(self) -> str:
        """``module::EName`` as the scenario tables write it (just ``name`` without a module)."""
        return f"{self.module}::{self.name}" if self.module else self.name


class LedgerUnavailable(ChainError, name="LedgerUnavailable", module="ledger"):
    """The ledger did not answer, or its storage failed: a Sui node that cannot be
    reached, times out, is overloaded or rate limiting, or was closed during the call; a
    LocalLedger that is closed, whose file cannot be opened, is not a ledger (or one a
    newer version wrote), is damaged or stayed locked by another writer past the busy
    timeout. The message names the node or the file. An outage (a node down, a file
    locked) may pass, so trying again later makes sense; a closed ledger, a damaged or a
    foreign file do not mend themselves.

    Whether the call took effect: a read changes nothing, and a LocalLedger transaction
    that raises this changed nothing either (it runs as one SQLite transaction, rolled
    back). Only a transaction sent to a Sui node may have executed before its answer was
    lost; the message then says so, and its outcome must be read before it is sent again.

    :attr:`name` stays ``"LedgerUnavailable"``, for code that tells it by name."""


class FaucetError(ChainError, name="FaucetError", module="sui"):
    """A faucet (the Sui faucet service of a localnet or devnet, ``dtp fund``) refused
    a request, with its reason, or could not be reached, or answered something that is
    no faucet's answer. The message names the faucet's URL. Nothing was received."""


class ZkLoginRefused(ChainError, name="ZkLoginRefused", module="sui"):
    """A Sui node was asked about a zkLogin signature (docs/protocol.md 8.4) and said it
    does not hold: its proof, its issuer's key (JWK), its ephemeral key's signature or
    its address -- or its last epoch is past, or further ahead than Sui allows. The
    message gives the node's reason."""


class ZkLoginUnsupported(ChainError, name="ZkLoginUnsupported", module="ledger"):
    """A zkLogin signature is verified by a Sui node (its Groth16 proof and its issuer's
    key), and this ledger has none: LocalLedger cannot verify one, so a zkLogin proof is
    refused there, as a zkLogin-signed transaction is (docs/protocol.md 8.4)."""


class SuiConfigError(ChainError, name="SuiNotConfigured", module="sui"):
    """``SuiLedger`` is not configured (missing or invalid settings); the message names
    the setting."""


class LedgerSpecError(SuiConfigError, DaemonConfigError):
    """A ledger spec (``--ledger``, ``$DTP_LEDGER``, ``ledger`` in a daemon config,
    :func:`dtp.ledger.open_ledger`), the package ID it resolves to, the ``dtp deploy``
    record it reads or the Sui CLI keystore it falls back to cannot be used (docs/sui.md,
    "Ledger specs"). Raised before anything runs; the message is one sentence naming
    the setting. Both a :class:`SuiConfigError` and a :class:`DaemonConfigError`, as
    the errors it stands for were."""


class ObjectNotFound(ChainError, name="ObjectNotFound", module="sui"):
    """No object with this ID exists (or it exists with another type, or was deleted)."""


class InvalidObjectId(ChainError, ValueError, name="InvalidObjectId", module="sui"):
    """An object ID or address is malformed (not ``0x`` followed by hex of 32 bytes)."""


class InvalidArgument(ChainError, ValueError, name="InvalidArgument", module="sui"):
    """A call argument cannot be encoded (e.g. an integer outside u64, a port outside u16)."""


class InvalidTransaction(ChainError, name="InvalidTransaction", module="sui"):
    """Transaction bytes are malformed, or reuse a nonce the sender already used."""


class NotAuthorized(ChainError):
    """The sender may not do this (not the authority, cap owner, server, client,
    participant or broadcaster)."""


class WrongSigner(NotAuthorized, name="InvalidSignature", module="sui"):
    """The transaction signature does not match its sender, or the transaction uses an
    object owned by another address."""


class ServiceNotFound(ChainError):
    """The host publishes no service on this port."""


class FirewallDenied(ChainError):
    """The host's firewall refuses this client."""


class ConnectionLimitReached(ChainError, ConnectionRefusedError):
    """The service's or the per-client connection limit the Host publishes is reached.
    The host's admission enforces them off-chain (docs/escrow.md §2): a connection
    beyond one is refused at its handshake with :func:`refusal_error`'s reason, so this
    is also a ConnectionRefusedError, as :class:`ConnectionRefused` is."""


class InsufficientFunds(ChainError):
    """Not enough SUI for a deposit, top-up or contribution, or a deposit below the
    service's minimum."""


class InvalidReceipt(ChainError):
    """A receipt is refused: bad signature, wrong amount, beyond the deposit, not
    cumulative, or the client's key is invalid."""


class ReplayedReceipt(InvalidReceipt):
    """A receipt's nonce is not above the last claimed one."""


class MalformedReceipt(InvalidReceipt, name="MalformedReceipt", module="escrow"):
    """Receipt bytes received in-band cannot be decoded."""


class UnsupportedReceiptVersion(
    MalformedReceipt, name="UnsupportedReceiptVersion", module="escrow"
):
    """A receipt in-band is of a format version this DTP does not speak (its first
    byte): a peer of another release, e.g. one signing version-1 receipts, which bind
    the connection alone (docs/escrow.md §6). :attr:`version` is the one received."""

    #: The version byte received, and the one spoken here.
    version: int = 0
    expected: int = 0

    @classmethod
    def of(cls, version: int, expected: int) -> UnsupportedReceiptVersion:
        """The error for a receipt of format ``version`` where ``expected`` is spoken."""
        older = (
            " (version 1 signs the connection alone, not its escrow, package or chain)"
            if version == 1
            else ""
        )
        exc = cls(
            f"Receipt format version {version} is not supported{older}; this DTP speaks "
            f"version {expected} (docs/escrow.md §6): the peer must run a release that "
            f"does."
        )
        exc.version = version
        exc.expected = expected
        return exc


class SpendingCapExceeded(ChainError):
    """A claim would push the client's spending above its cap for this epoch."""


class ConnectionStateError(ChainError):
    """The connection or escrow is not in a state that allows this (closed, open,
    half-closed, settled, timeout not reached)."""


class WrongObject(ChainError):
    """An object was passed that does not belong with the others (host, escrow, cap)."""


class WrongVersion(WrongObject):
    """An object of another version of the package than the code called
    (``version::EWrongVersion``): after an upgrade, one not yet migrated, called through
    the new package, or one migrated, called through the old one (docs/escrow.md
    "Versions")."""


class HostConfigError(ChainError):
    """A host or service setting is invalid (Noise key, endpoints, firewall mode, port in
    use, firewall list full, a half-close timeout out of bounds)."""


class PipeError(ChainError):
    """A pipe operation is invalid (inner count, inner index, record size, acknowledgement)."""


class BroadcastError(ChainError):
    """A broadcast operation is refused (cancelled, off air, no contribution, …)."""


class BroadcastNotAuthorized(BroadcastError, NotAuthorized):
    """Only the broadcaster can do this."""


class PaymentModelError(ChainError):
    """A subscription, sponsor pool, ticket sale or retained record refuses the operation
    in its current state (docs/escrow.md §13-16)."""


class SubscriptionExpired(PaymentModelError):
    """The subscription does not cover the current epoch."""


class WrongSubscription(PaymentModelError, ValueError):
    """A subscription that cannot open this connection: another client's, or one for
    another service (checked before the ledger is asked: ``ENotHolder`` /
    ``EWrongHost``)."""


class SponsorUnfunded(PaymentModelError, InsufficientFunds):
    """The sponsor lane has too little unpledged money (each of a pool's lanes pledges
    from its own funds)."""


class SponsorNotSettled(PaymentModelError, ConnectionStateError):
    """The sponsor pool cannot reimburse a connection that is not settled yet (a payment
    model's state error, and a connection's)."""


class AlreadyRefunded(PaymentModelError):
    """The refund was already paid."""


class CoordinationError(ChainError):
    """A registry refuses a lease or a write in its current state (docs/coordination.md)."""


class LeaseHeld(CoordinationError):
    """The lease is held by someone (its holder included) until it expires."""


class FencedOut(CoordinationError):
    """The lease was lost: the fencing token is not the name's current one, or the lease
    ran out. A holder that sees it must stop acting as the holder."""


class MoveErrorInfo:
    """One row of :data:`MOVE_ERRORS`: a Move error constant and the class it raises."""

    __slots__ = ("cls", "code", "message", "module", "name")

    def __init__(
        self, module: str, name: str, code: int, cls: type[ChainError], message: str
    ) -> None:
        self.module = module
        self.name = name
        self.code = code
        self.cls = cls
        self.message = message

    def __repr__(self) -> str:
        return f"MoveErrorInfo({self.module}::{self.name}, code={self.code}, {self.cls.__name__})"

    def error(self, detail: str = "") -> ChainError:
        """The exception for this abort; ``detail`` names the objects involved."""
        text = self.message + (f": {detail}" if detail else ".")
        return self.cls(text, name=self.name, module=self.module, code=self.code)


#: The Move errors, by module: a constant's code, its name, the class raised and its
#: message, as ``#[error(code = N)] const EName: vector<u8> = b"message"`` states them in
#: move/dtp/sources (tests/ledger/test_move_errors.py holds the two equal); a long message
#: goes on over indented lines.
_MOVE_ERROR_TABLE: Final = """
host
  1 ENotAuthority NotAuthorized: Sender is not the host's authority
  2 EServiceNotFound ServiceNotFound: No service on this port
  3 EServiceExists HostConfigError: A service already uses this port
  5 EInvalidNoiseKey HostConfigError: Noise static key must be 32 bytes and not a low-order point
  6 ETooManyEndpoints HostConfigError: Too many endpoints or an endpoint is too long
  7 EInvalidFirewallMode HostConfigError: Firewall mode must be 0 (allow-all) or 1 (allow-listed)
  8 EFirewallDenied FirewallDenied: The host's firewall denies this client
  9 EMaxConnections ConnectionLimitReached: Connection limit reached
  10 EFirewallListFull HostConfigError: The firewall list already holds its maximum of addresses
  11 EInvalidHalfCloseTimeout HostConfigError: Half-close timeout must be from 10 minutes to 7 days
spending_cap
  20 ENotCapOwner NotAuthorized: Only the cap's owner can change it
  21 ESpendingCapExceeded SpendingCapExceeded: Payment would exceed the client's spending cap for
      this epoch
escrow
  30 ENotServer NotAuthorized: Only the connection's server can do this
  31 ENotClient NotAuthorized: Only the connection's client can do this
  32 EBadSignature InvalidReceipt: Receipt signature does not verify against the client's key
  33 EReplayedReceipt ReplayedReceipt: Receipt nonce is not greater than the last claimed nonce
  34 EReceiptExceedsDeposit InvalidReceipt: Receipt amount exceeds the deposit
  35 EReceiptNotCumulative InvalidReceipt: Receipt amount is below what was already claimed
  36 EAmountMismatch InvalidReceipt: Receipt amount does not match the connection's fees
  37 EEscrowSettled ConnectionStateError: Escrow is already settled
  38 EWrongSpendingCap WrongObject: Not the spending cap this escrow is bound to
  39 EInvalidPublicKey InvalidReceipt: Ed25519 public key must be 32 bytes
  40 EKeyMismatch InvalidReceipt: Public key does not belong to the client's address
transport_control
  50 EInsufficientDeposit InsufficientFunds: Deposit is below the service's minimum
  51 ENotParticipant NotAuthorized: Sender is neither the client nor the server of this connection
  52 EConnectionClosed ConnectionStateError: Connection is already closed
  53 EAlreadyHalfClosed ConnectionStateError: Sender already closed its side; wait for the peer or
      the timeout
  54 ENotHalfClosed ConnectionStateError: Connection is not half-closed
  55 ETimeoutNotReached ConnectionStateError: Half-close timeout has not elapsed
  56 EConnectionOpen ConnectionStateError: Connection must be closed (or half-closed) first, or
      settled by the server
  58 EWrongEscrow WrongObject: Not this connection's escrow
  59 EAlreadySettled ConnectionStateError: Connection is already settled
  60 ENotClient NotAuthorized: Only the connection's client can delete it
  61 ENotSettled ConnectionStateError: Connection must be settled before it is deleted
  242 ESponsored ConnectionStateError: A sponsored connection is deleted by
      sponsor::reimburse_and_destroy, which reimburses it first
pipe
  70 EInvalidInnerCount PipeError: A pipe has between 1 and 8 inner pipes
  71 EInnerNotFound PipeError: No inner pipe with this index
inner_pipe
  72 EDataTooLarge PipeError: Record data exceeds the per-record limit
  73 EAckBeyondSent PipeError: Acknowledged sequence number was never sent
  74 EAckRegressed PipeError: Acknowledged sequence number went backwards
broadcast
  90 ENotBroadcaster BroadcastNotAuthorized: Only the broadcaster can do this
  91 ENotOnAir BroadcastError: Listeners' contributions do not cover the current slot
  92 EBroadcastCancelled BroadcastError: Broadcast is cancelled
  93 ENotCancelled BroadcastError: Refunds open only after the broadcast is cancelled
  94 ENoContribution BroadcastError: Sender has no contribution to withdraw
  95 EInvalidSlot BroadcastError: Slot price and slot length must be positive
  96 EZeroAmount BroadcastError: Contribution must be positive
  97 EDataTooLarge BroadcastError: Broadcast data exceeds the per-message limit
  98 ENotOrganizer NotAuthorized: Only the ticket sale's organizer can broadcast for it
  99 EBroadcastLive BroadcastError: The broadcast has not been idle long enough to leave
  100 EContributionTooSmall BroadcastError: Contribution buys no share at the pool's current value
mailbox
  160 EEmptyPayload InvalidArgument: Mail payload is empty
  161 EPayloadTooLarge InvalidArgument: Mail payload exceeds the per-message limit
response_escrow
  170 ENotServer NotAuthorized: Only the response escrow's server can do this
  171 ENotRequester NotAuthorized: Only the response escrow's requester can do this
  172 EEscrowClosed ConnectionStateError: Response escrow is already paid or refunded
  173 EBadSignature InvalidReceipt: Acknowledgement does not verify against the requester's key
  174 EDeadlinePassed ConnectionStateError: The response deadline has passed
  175 EDeadlineNotReached ConnectionStateError: The response deadline has not passed yet
  176 EZeroAmount InvalidArgument: Response fee must be positive
  177 EInvalidPublicKey InvalidReceipt: Ed25519 public key must be 32 bytes
  178 EKeyMismatch InvalidReceipt: Public key does not belong to the requester's address
  179 ERequestIdTooLong InvalidArgument: Request id exceeds 64 bytes
  180 EDeadlineInPast InvalidArgument: Deadline must be after the current time
  181 EInvalidHash InvalidArgument: Response hash must be 32 bytes
  182 EResponseTooLarge InvalidArgument: Response exceeds the per-message limit
  183 EEmptyResponse InvalidArgument: A delivered response must not be empty
  184 EEscrowOpen ConnectionStateError: Response escrow is still open: it is deleted once paid or
      refunded
subscription
  185 ENotProvider NotAuthorized: Only the offer's provider (the host's authority) can do this
  186 ENotHolder NotAuthorized: Only the subscription's holder can do this
  187 EInvalidTerms InvalidArgument: Price per epoch and period must be positive
  188 EInvalidEpochs InvalidArgument: Epochs must be a positive multiple of the offer's period
  189 EWrongPayment InvalidArgument: Payment must be epochs times the price per epoch
  190 EOfferWithdrawn PaymentModelError: The offer is withdrawn
  191 ESubscriptionExpired SubscriptionExpired: The subscription is not live in this epoch
  192 EWrongOffer WrongObject: Not this subscription's offer
  193 EWrongHost WrongObject: Not the offer's host
  194 ENotWithdrawn PaymentModelError: Refunds open only after the offer is withdrawn
  195 EAlreadyRefunded AlreadyRefunded: The subscription was already refunded
  196 ENotSubscribed WrongObject: The connection was not opened with this subscription
  197 ESubscriptionLive PaymentModelError: The subscription still covers its connections
  198 EProviderChanged PaymentModelError: The host's authority is no longer the offer's provider:
      the offer sells nothing more
sponsor
  200 ENotProvider NotAuthorized: Only the pool's provider (the host's authority) can do this
  201 EInvalidShare InvalidArgument: Share must be between 1 and 10000 basis points
  202 ESponsorUnfunded SponsorUnfunded: The sponsor lane has too little unpledged money
  203 EWrongHost WrongObject: Not the pool's host
  204 ENotSettled SponsorNotSettled: The connection is not settled yet
  206 ENotSponsored WrongObject: The lane holds no pledge for the connection (not opened through it,
      or reimbursed)
  207 EZeroAmount InvalidArgument: Amount must be positive
  208 EWrongEscrow WrongObject: Not this connection's escrow
  209 EProviderChanged PaymentModelError: The host's authority is no longer the pool's provider: it
      sponsors no new connections
  250 EWrongLane WrongObject: Not a lane of this pool
  251 EInvalidLanes InvalidArgument: A pool has between 1 and 64 lanes
tickets
  210 ENotOrganizer NotAuthorized: Only the organizer can do this
  211 EInvalidTerms InvalidArgument: Price and threshold must be positive, the cap at least the
      threshold, the deadline ahead
  212 EWrongPayment InvalidArgument: Payment must be a positive number of tickets times the price
  213 ESoldOut PaymentModelError: Not that many tickets are left
  214 ESaleClosed PaymentModelError: The sale's deadline has passed
  215 EThresholdNotMet PaymentModelError: Fewer tickets sold than the threshold
  216 EAlreadyOnAir PaymentModelError: The event is already on air
  217 ERefundNotOpen PaymentModelError: Refunds open only after a cancel or a missed deadline
  218 ENoTickets AlreadyRefunded: Sender holds no tickets to refund
  219 ECancelled PaymentModelError: The sale is cancelled
  252 ENotOnAir PaymentModelError: Tickets are given back only once the event went on air (else
      refunded)
  253 ESaleNotOver PaymentModelError: The sale is not over: not on air, cancelled or past its
      deadline
  254 ETicketsHeld PaymentModelError: Buyers still hold tickets of the sale
retention
  220 ENotProvider NotAuthorized: Only the host's authority can set retention terms
  221 EWrongConnection WrongObject: The pipe does not belong to this connection
  222 EWrongTerms WrongObject: The terms are not those of the connection's service
  223 EWrongDeposit InvalidArgument: Deposit must be the data length times the storage price per
      byte
  224 ENotReceiver NotAuthorized: Only the record's receiver can confirm consumption
  225 EAlreadyConsumed PaymentModelError: Consumption was already confirmed
  226 ENotSender NotAuthorized: Only the record's sender can delete it
  227 ENotConsumed PaymentModelError: The receiver has not confirmed consumption and the reclaim
      time has not come
  228 ERetentionNotElapsed PaymentModelError: The retention time has not elapsed
  229 ETermsRetired PaymentModelError: The provider retired these retention terms
  240 EConnectionNotOpen ConnectionStateError: Records are sent only on an Open connection
  241 EInvalidTerms InvalidArgument: Retention time exceeds the maximum of 30 days
payment
  230 EZeroPayment InvalidArgument: Payment must be positive
  231 EMemoTooLong InvalidArgument: Memo exceeds 256 bytes
registry
  130 ENotRegistryOwner NotAuthorized: Only the registry's owner can do this
  131 ENotMember NotAuthorized: Sender is not a member of the registry
  132 EInvalidDuration InvalidArgument: A lease lasts from 1 ms to MAX_LEASE_MS
  133 ELeaseHeld LeaseHeld: The lease is held until it expires
  134 EStaleToken FencedOut: The fencing token is not the lease's current one
  135 ENotHolder NotAuthorized: Only the lease's holder can do this
  136 ELeaseExpired FencedOut: The lease has expired or was released
  137 EInvalidEntry InvalidArgument: A name or key is 1 to 64 bytes, a holder at most 64, a value at
      most 512
  138 ERegistryFull CoordinationError: The registry already holds its most names, keys or members
  139 ENoLease FencedOut: No lease of this name exists
version
  243 EWrongVersion WrongVersion: The object is of another version of the package: call the package
      of its version, or migrate it
  244 ENotUpgrade InvalidArgument: The object is already at this version of the package, or a later
      one
"""


def _move_error_rows(table: str) -> tuple[tuple[str, str, int, type[ChainError], str], ...]:
    """The rows of ``table``, written as :data:`_MOVE_ERROR_TABLE` is, as
    ``(module, name, code, class, message)``."""
    rows: list[tuple[str, str, int, type[ChainError], str]] = []
    module = ""
    for line in re.sub(r"\n {4,}", " ", table).strip().splitlines():  # long messages joined
        if not line.startswith(" "):
            module = line
        else:
            code, name, rest = line.split(maxsplit=2)
            cls_name, message = rest.split(": ", 1)
            cls = globals()[cls_name]
            if not (isinstance(cls, type) and issubclass(cls, ChainError)):
                raise TypeError(f"{cls_name} is not a ChainError")
            rows.append((module, name, int(code), cls, message))
    return tuple(rows)


_MOVE_ERROR_ROWS = _move_error_rows(_MOVE_ERROR_TABLE)

#: Every Move error of the dtp package, keyed by ``(module, name)``. Names are unique per
#: module, not across the package (``EDataTooLarge`` exists in ``inner_pipe`` and
#: ``broadcast``); codes are unique across the package.
MOVE_ERRORS: dict[tuple[str, str], MoveErrorInfo] = {
    (module, name): MoveErrorInfo(module, name, code, cls, message)
    for module, name, code, cls, message in _MOVE_ERROR_ROWS
}

#: The same rows keyed by the numeric code of ``#[error(code = N)]``.
MOVE_ERRORS_BY_CODE: dict[int, MoveErrorInfo] = {info.code: info for info in MOVE_ERRORS.values()}


def move_error(module: str, name: str, detail: str = "") -> ChainError:
    """The exception for the Move abort ``module::name``; ``detail`` names the objects."""
    return MOVE_ERRORS[(module, name)].error(detail)


def connection_limit_refusal(detail: str) -> str:
    """The refusal a host's admission gives a connection beyond one of its connection
    limits (``host::EMaxConnections``); ``detail`` says which. The client raises it as
    :class:`ConnectionLimitReached` (:func:`refusal_error`)."""
    return str(move_error("host", "EMaxConnections", detail))


def subscription_refusal(detail: str) -> str:
    """The refusal a host's admission gives a connection opened with a subscription that
    is over on the ledger; ``detail`` says which and why. The client raises it as
    :class:`SubscriptionRefused` (:func:`refusal_error`)."""
    return f"{SUBSCRIPTION_OVER}: {detail}"


def refusal_error(reason: str, code: int) -> DTPError:
    """The error for a server's refusal with ``reason`` (CLOSE ``code``):
    :class:`ConnectionLimitReached` for :func:`connection_limit_refusal`'s,
    :class:`SubscriptionRefused` for :func:`subscription_refusal`'s, else
    :class:`ConnectionRefused`."""
    info = MOVE_ERRORS[("host", "EMaxConnections")]
    if reason.startswith(info.message + ": "):
        return info.cls(reason, name=info.name, module=info.module, code=info.code)
    if reason.startswith(SUBSCRIPTION_OVER + ": "):
        return SubscriptionRefused(reason, code)
    return ConnectionRefused(reason or "refused by the server", code)


def foreign_abort(package: str, module: str, code: int, detail: str) -> ChainError:
    """The exception for an abort in a module outside the dtp package (``std::string``,
    ``sui::balance``…), as a ledger reports it: a bare :class:`ChainError` named
    ``"MoveAbort"`` with that module and its abort code, which no row of
    :data:`MOVE_ERRORS` describes. ``package`` is written as Sui gives an abort's
    location: the full ID, ``0x`` and 64 hex digits (``0x00…01`` for ``std``)."""
    return ChainError(
        f"Transaction aborted in {package}::{module} with code {code}: {detail}",
        name="MoveAbort",
        module=module or "sui",
        code=code,
    )


def move_error_from_abort_code(abort_code: int, detail: str = "") -> ChainError:
    """The exception for an on-chain abort code.

    Clever-error abort codes carry the ``#[error(code = N)]`` value in bits 48..55 when the
    top bit is set (docs/escrow.md §10); a plain small code is taken as N itself. Unknown
    codes give a bare :class:`ChainError`.
    """
    code = (abort_code >> 48) & 0xFF if abort_code >> 63 else abort_code
    info = MOVE_ERRORS_BY_CODE.get(code)
    if info is None:
        return ChainError(
            f"Transaction aborted with unknown code {abort_code}"
            + (f": {detail}" if detail else "."),
            name="UnknownAbort",
            code=code,
        )
    return info.error(detail)


# --------------------------------------------------------------------------------------
# checks of values users pass in (settings, limits, timeouts), shared by the modules
# that take them: a number made a finite float without the exceptions Python raises on
# the way, and a value shown in an error message without raising one of its own


def finite_float(value: object) -> float | None:
    """``value`` as a finite float, or None for a bool (``True`` is a mistake, not 1), a
    non-number, NaN, infinity, or an int beyond the float range (``float()`` raised
    OverflowError for it, and ``math.isfinite`` too, where the caller wanted its own
    error naming the setting)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def shown(value: object) -> str:
    """``value``'s repr for an error message, cut short: an int past Python's 4300-digit
    limit has no repr (a ValueError of its own, naming no setting), and one of hundreds
    of digits says nothing more than its first few."""
    try:
        text = repr(value)
    except ValueError:
        return "an integer of more than 4300 digits"
    return text if len(text) <= 40 else text[:37] + "..."
