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
import sqlite3
from typing import Final


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
    """A DTP protocol rule was broken; :attr:`code` says which."""

    code: ErrorCode = ErrorCode.ARG

    def __init__(self, message: str | None = None, code: ErrorCode | None = None) -> None:
        if code is not None:
            self.code = code
        super().__init__(message or describe(self.code))


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
    """A feature whose Python packages come with an extra of the ``dtp`` distribution
    that is not installed (:mod:`dtp._extras`: ``sui``, ``lan``, ``gun``, ``metrics``,
    ``testing``). The message names the feature, the missing module and the command that
    installs the extra, ``pip install 'dtp[sui]'``. Also an :class:`ImportError`, as the
    import it replaces (``name`` is the missing module): code that tried an import and
    caught that goes on catching it."""

    def __init__(self, extra: str, feature: str, module: str) -> None:
        self.extra = extra
        self.feature = feature
        super().__init__(
            f"{feature} needs the {extra!r} extra of dtp, which is not installed "
            f"(no module named {module!r}): pip install 'dtp[{extra}]'",
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
    ended, the subscription being over on the ledger: it no longer covers the epoch, or
    its offer was withdrawn. Nothing is owed on such a connection; the server settles
    it. ``code`` is :data:`CLOSE_SUBSCRIPTION_ENDED`. Renew the subscription (or pay by
    the byte) and connect again."""


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
#: subscription over on the ledger while it is served (expired, or its offer
#: withdrawn): the client raises :class:`SubscriptionEnded`, and the server settles it
#: at once (nothing is owed on it).
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


class LedgerUnavailable(ChainError):
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

    name = "LedgerUnavailable"
    module = "ledger"


class FaucetError(ChainError):
    """A faucet (the Sui faucet service of a localnet or devnet, ``dtp fund``) refused
    a request, with its reason, or could not be reached, or answered something that is
    no faucet's answer. The message names the faucet's URL. Nothing was received."""

    name = "FaucetError"
    module = "sui"


class SuiConfigError(ChainError):
    """``SuiLedger`` is not configured (missing or invalid settings); the message names
    the setting."""

    name = "SuiNotConfigured"
    module = "sui"


class LedgerSpecError(SuiConfigError, DaemonConfigError):
    """A ledger spec (``--ledger``, ``$DTP_LEDGER``, ``ledger`` in a daemon config,
    :func:`dtp.ledger.open_ledger`), the package ID it resolves to, the ``dtp deploy``
    record it reads or the Sui CLI keystore it falls back to cannot be used (docs/sui.md,
    "Ledger specs"). Raised before anything runs; the message is one sentence naming
    the setting. Both a :class:`SuiConfigError` and a :class:`DaemonConfigError`, as
    the errors it stands for were."""


class ObjectNotFound(ChainError):
    """No object with this ID exists (or it exists with another type, or was deleted)."""

    name = "ObjectNotFound"
    module = "sui"


class InvalidObjectId(ChainError, ValueError):
    """An object ID or address is malformed (not ``0x`` followed by hex of 32 bytes)."""

    name = "InvalidObjectId"
    module = "sui"


class InvalidArgument(ChainError, ValueError):
    """A call argument cannot be encoded (e.g. an integer outside u64, a port outside u16)."""

    name = "InvalidArgument"
    module = "sui"


class InvalidTransaction(ChainError):
    """Transaction bytes are malformed, or reuse a nonce the sender already used."""

    name = "InvalidTransaction"
    module = "sui"


class NotAuthorized(ChainError):
    """The sender may not do this (not the authority, cap owner, server, client,
    participant or broadcaster)."""


class WrongSigner(NotAuthorized):
    """The transaction signature does not match its sender, or the transaction uses an
    object owned by another address."""

    name = "InvalidSignature"
    module = "sui"


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


class MalformedReceipt(InvalidReceipt):
    """Receipt bytes received in-band cannot be decoded."""

    name = "MalformedReceipt"
    module = "escrow"


class UnsupportedReceiptVersion(MalformedReceipt):
    """A receipt in-band is of a format version this DTP does not speak (its first
    byte): a peer of another release, e.g. one signing version-1 receipts, which bind
    the connection alone (docs/escrow.md §6). :attr:`version` is the one received."""

    name = "UnsupportedReceiptVersion"
    module = "escrow"

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


class HostConfigError(ChainError):
    """A host or service setting is invalid (Noise key, endpoints, firewall mode, port in
    use, firewall list full)."""


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
    """The sponsor pool has too little unpledged money."""


class SponsorNotSettled(PaymentModelError, ConnectionStateError):
    """The sponsor pool cannot reimburse a connection that is not settled yet (a payment
    model's state error, and a connection's)."""


class AlreadyRefunded(PaymentModelError):
    """The refund or reimbursement was already paid."""


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


_MOVE_ERROR_ROWS: tuple[tuple[str, str, int, type[ChainError], str], ...] = (
    ("host", "ENotAuthority", 1, NotAuthorized, "Sender is not the host's authority"),
    ("host", "EServiceNotFound", 2, ServiceNotFound, "No service on this port"),
    ("host", "EServiceExists", 3, HostConfigError, "A service already uses this port"),
    (
        "host",
        "EInvalidNoiseKey",
        5,
        HostConfigError,
        "Noise static key must be 32 bytes and not a low-order point",
    ),
    (
        "host",
        "ETooManyEndpoints",
        6,
        HostConfigError,
        "Too many endpoints or an endpoint is too long",
    ),
    (
        "host",
        "EInvalidFirewallMode",
        7,
        HostConfigError,
        "Firewall mode must be 0 (allow-all) or 1 (allow-listed)",
    ),
    ("host", "EFirewallDenied", 8, FirewallDenied, "The host's firewall denies this client"),
    ("host", "EMaxConnections", 9, ConnectionLimitReached, "Connection limit reached"),
    (
        "host",
        "EFirewallListFull",
        10,
        HostConfigError,
        "The firewall list already holds its maximum of addresses",
    ),
    ("spending_cap", "ENotCapOwner", 20, NotAuthorized, "Only the cap's owner can change it"),
    (
        "spending_cap",
        "ESpendingCapExceeded",
        21,
        SpendingCapExceeded,
        "Payment would exceed the client's spending cap for this epoch",
    ),
    ("escrow", "ENotServer", 30, NotAuthorized, "Only the connection's server can do this"),
    ("escrow", "ENotClient", 31, NotAuthorized, "Only the connection's client can do this"),
    (
        "escrow",
        "EBadSignature",
        32,
        InvalidReceipt,
        "Receipt signature does not verify against the client's key",
    ),
    (
        "escrow",
        "EReplayedReceipt",
        33,
        ReplayedReceipt,
        "Receipt nonce is not greater than the last claimed nonce",
    ),
    ("escrow", "EReceiptExceedsDeposit", 34, InvalidReceipt, "Receipt amount exceeds the deposit"),
    (
        "escrow",
        "EReceiptNotCumulative",
        35,
        InvalidReceipt,
        "Receipt amount is below what was already claimed",
    ),
    (
        "escrow",
        "EAmountMismatch",
        36,
        InvalidReceipt,
        "Receipt amount does not match the connection's fees",
    ),
    ("escrow", "EEscrowSettled", 37, ConnectionStateError, "Escrow is already settled"),
    (
        "escrow",
        "EWrongSpendingCap",
        38,
        WrongObject,
        "Not the spending cap this escrow is bound to",
    ),
    ("escrow", "EInvalidPublicKey", 39, InvalidReceipt, "Ed25519 public key must be 32 bytes"),
    (
        "escrow",
        "EKeyMismatch",
        40,
        InvalidReceipt,
        "Public key does not belong to the client's address",
    ),
    (
        "transport_control",
        "EInsufficientDeposit",
        50,
        InsufficientFunds,
        "Deposit is below the service's minimum",
    ),
    (
        "transport_control",
        "ENotParticipant",
        51,
        NotAuthorized,
        "Sender is neither the client nor the server of this connection",
    ),
    (
        "transport_control",
        "EConnectionClosed",
        52,
        ConnectionStateError,
        "Connection is already closed",
    ),
    (
        "transport_control",
        "EAlreadyHalfClosed",
        53,
        ConnectionStateError,
        "Sender already closed its side; wait for the peer or the timeout",
    ),
    (
        "transport_control",
        "ENotHalfClosed",
        54,
        ConnectionStateError,
        "Connection is not half-closed",
    ),
    (
        "transport_control",
        "ETimeoutNotReached",
        55,
        ConnectionStateError,
        "Half-close timeout has not elapsed",
    ),
    (
        "transport_control",
        "EConnectionOpen",
        56,
        ConnectionStateError,
        "Connection must be closed (or half-closed) first, or settled by the server",
    ),
    ("transport_control", "EWrongEscrow", 58, WrongObject, "Not this connection's escrow"),
    (
        "transport_control",
        "EAlreadySettled",
        59,
        ConnectionStateError,
        "Connection is already settled",
    ),
    ("pipe", "EInvalidInnerCount", 70, PipeError, "A pipe has between 1 and 8 inner pipes"),
    ("pipe", "EInnerNotFound", 71, PipeError, "No inner pipe with this index"),
    ("inner_pipe", "EDataTooLarge", 72, PipeError, "Record data exceeds the per-record limit"),
    (
        "inner_pipe",
        "EAckBeyondSent",
        73,
        PipeError,
        "Acknowledged sequence number was never sent",
    ),
    (
        "inner_pipe",
        "EAckRegressed",
        74,
        PipeError,
        "Acknowledged sequence number went backwards",
    ),
    (
        "broadcast",
        "ENotBroadcaster",
        90,
        BroadcastNotAuthorized,
        "Only the broadcaster can do this",
    ),
    (
        "broadcast",
        "ENotOnAir",
        91,
        BroadcastError,
        "Listeners' contributions do not cover the current slot",
    ),
    ("broadcast", "EBroadcastCancelled", 92, BroadcastError, "Broadcast is cancelled"),
    (
        "broadcast",
        "ENotCancelled",
        93,
        BroadcastError,
        "Refunds open only after the broadcast is cancelled",
    ),
    ("broadcast", "ENoContribution", 94, BroadcastError, "Sender has no contribution to withdraw"),
    (
        "broadcast",
        "EInvalidSlot",
        95,
        BroadcastError,
        "Slot price and slot length must be positive",
    ),
    ("broadcast", "EZeroAmount", 96, BroadcastError, "Contribution must be positive"),
    (
        "broadcast",
        "EDataTooLarge",
        97,
        BroadcastError,
        "Broadcast data exceeds the per-message limit",
    ),
    (
        "broadcast",
        "ENotOrganizer",
        98,
        NotAuthorized,
        "Only the ticket sale's organizer can broadcast for it",
    ),
    (
        "broadcast",
        "EBroadcastLive",
        99,
        BroadcastError,
        "The broadcast has not been idle long enough to leave",
    ),
    (
        "broadcast",
        "EContributionTooSmall",
        100,
        BroadcastError,
        "Contribution buys no share at the pool's current value",
    ),
    ("mailbox", "EEmptyPayload", 160, InvalidArgument, "Mail payload is empty"),
    (
        "mailbox",
        "EPayloadTooLarge",
        161,
        InvalidArgument,
        "Mail payload exceeds the per-message limit",
    ),
    (
        "response_escrow",
        "ENotServer",
        170,
        NotAuthorized,
        "Only the response escrow's server can do this",
    ),
    (
        "response_escrow",
        "ENotRequester",
        171,
        NotAuthorized,
        "Only the response escrow's requester can do this",
    ),
    (
        "response_escrow",
        "EEscrowClosed",
        172,
        ConnectionStateError,
        "Response escrow is already paid or refunded",
    ),
    (
        "response_escrow",
        "EBadSignature",
        173,
        InvalidReceipt,
        "Acknowledgement does not verify against the requester's key",
    ),
    (
        "response_escrow",
        "EDeadlinePassed",
        174,
        ConnectionStateError,
        "The response deadline has passed",
    ),
    (
        "response_escrow",
        "EDeadlineNotReached",
        175,
        ConnectionStateError,
        "The response deadline has not passed yet",
    ),
    ("response_escrow", "EZeroAmount", 176, InvalidArgument, "Response fee must be positive"),
    (
        "response_escrow",
        "EInvalidPublicKey",
        177,
        InvalidReceipt,
        "Ed25519 public key must be 32 bytes",
    ),
    (
        "response_escrow",
        "EKeyMismatch",
        178,
        InvalidReceipt,
        "Public key does not belong to the requester's address",
    ),
    ("response_escrow", "ERequestIdTooLong", 179, InvalidArgument, "Request id exceeds 64 bytes"),
    (
        "response_escrow",
        "EDeadlineInPast",
        180,
        InvalidArgument,
        "Deadline must be after the current time",
    ),
    ("response_escrow", "EInvalidHash", 181, InvalidArgument, "Response hash must be 32 bytes"),
    (
        "response_escrow",
        "EResponseTooLarge",
        182,
        InvalidArgument,
        "Response exceeds the per-message limit",
    ),
    (
        "response_escrow",
        "EEmptyResponse",
        183,
        InvalidArgument,
        "A delivered response must not be empty",
    ),
    # -- payment models (docs/escrow.md §13-16) --
    (
        "subscription",
        "ENotProvider",
        185,
        NotAuthorized,
        "Only the offer's provider (the host's authority) can do this",
    ),
    (
        "subscription",
        "ENotHolder",
        186,
        NotAuthorized,
        "Only the subscription's holder can do this",
    ),
    (
        "subscription",
        "EInvalidTerms",
        187,
        InvalidArgument,
        "Price per epoch and period must be positive",
    ),
    (
        "subscription",
        "EInvalidEpochs",
        188,
        InvalidArgument,
        "Epochs must be a positive multiple of the offer's period",
    ),
    (
        "subscription",
        "EWrongPayment",
        189,
        InvalidArgument,
        "Payment must be epochs times the price per epoch",
    ),
    ("subscription", "EOfferWithdrawn", 190, PaymentModelError, "The offer is withdrawn"),
    (
        "subscription",
        "ESubscriptionExpired",
        191,
        SubscriptionExpired,
        "The subscription is not live in this epoch",
    ),
    ("subscription", "EWrongOffer", 192, WrongObject, "Not this subscription's offer"),
    ("subscription", "EWrongHost", 193, WrongObject, "Not the offer's host"),
    (
        "subscription",
        "ENotWithdrawn",
        194,
        PaymentModelError,
        "Refunds open only after the offer is withdrawn",
    ),
    (
        "subscription",
        "EAlreadyRefunded",
        195,
        AlreadyRefunded,
        "The subscription was already refunded",
    ),
    (
        "subscription",
        "ENotSubscribed",
        196,
        WrongObject,
        "The connection was not opened with this subscription",
    ),
    (
        "subscription",
        "ESubscriptionLive",
        197,
        PaymentModelError,
        "The subscription still covers its connections",
    ),
    (
        "sponsor",
        "ENotProvider",
        200,
        NotAuthorized,
        "Only the pool's provider (the host's authority) can do this",
    ),
    (
        "sponsor",
        "EInvalidShare",
        201,
        InvalidArgument,
        "Share must be between 1 and 10000 basis points",
    ),
    (
        "sponsor",
        "ESponsorUnfunded",
        202,
        SponsorUnfunded,
        "The sponsor pool has too little unpledged money",
    ),
    ("sponsor", "EWrongHost", 203, WrongObject, "Not the pool's host"),
    ("sponsor", "ENotSettled", 204, SponsorNotSettled, "The connection is not settled yet"),
    (
        "sponsor",
        "EAlreadyReimbursed",
        205,
        AlreadyRefunded,
        "The connection was already reimbursed",
    ),
    (
        "sponsor",
        "ENotSponsored",
        206,
        WrongObject,
        "The connection was not opened through this pool",
    ),
    ("sponsor", "EZeroAmount", 207, InvalidArgument, "Amount must be positive"),
    ("sponsor", "EWrongEscrow", 208, WrongObject, "Not this connection's escrow"),
    (
        "sponsor",
        "EProviderChanged",
        209,
        PaymentModelError,
        "The host's authority is no longer the pool's provider: it sponsors no new connections",
    ),
    ("tickets", "ENotOrganizer", 210, NotAuthorized, "Only the organizer can do this"),
    (
        "tickets",
        "EInvalidTerms",
        211,
        InvalidArgument,
        "Price and threshold must be positive, the cap at least the threshold, the deadline ahead",
    ),
    (
        "tickets",
        "EWrongPayment",
        212,
        InvalidArgument,
        "Payment must be a positive number of tickets times the price",
    ),
    ("tickets", "ESoldOut", 213, PaymentModelError, "Not that many tickets are left"),
    ("tickets", "ESaleClosed", 214, PaymentModelError, "The sale's deadline has passed"),
    (
        "tickets",
        "EThresholdNotMet",
        215,
        PaymentModelError,
        "Fewer tickets sold than the threshold",
    ),
    ("tickets", "EAlreadyOnAir", 216, PaymentModelError, "The event is already on air"),
    (
        "tickets",
        "ERefundNotOpen",
        217,
        PaymentModelError,
        "Refunds open only after a cancel or a missed deadline",
    ),
    ("tickets", "ENoTickets", 218, AlreadyRefunded, "Sender holds no tickets to refund"),
    ("tickets", "ECancelled", 219, PaymentModelError, "The sale is cancelled"),
    (
        "retention",
        "ENotProvider",
        220,
        NotAuthorized,
        "Only the host's authority can set retention terms",
    ),
    (
        "retention",
        "EWrongConnection",
        221,
        WrongObject,
        "The pipe does not belong to this connection",
    ),
    (
        "retention",
        "EWrongTerms",
        222,
        WrongObject,
        "The terms are not those of the connection's service",
    ),
    (
        "retention",
        "EWrongDeposit",
        223,
        InvalidArgument,
        "Deposit must be the data length times the storage price per byte",
    ),
    (
        "retention",
        "ENotReceiver",
        224,
        NotAuthorized,
        "Only the record's receiver can confirm consumption",
    ),
    ("retention", "EAlreadyConsumed", 225, PaymentModelError, "Consumption was already confirmed"),
    ("retention", "ENotSender", 226, NotAuthorized, "Only the record's sender can delete it"),
    (
        "retention",
        "ENotConsumed",
        227,
        PaymentModelError,
        "The receiver has not confirmed consumption and the reclaim time has not come",
    ),
    (
        "retention",
        "ERetentionNotElapsed",
        228,
        PaymentModelError,
        "The retention time has not elapsed",
    ),
    (
        "retention",
        "ETermsRetired",
        229,
        PaymentModelError,
        "The provider retired these retention terms",
    ),
    (
        "retention",
        "EConnectionNotOpen",
        240,
        ConnectionStateError,
        "Records are sent only on an Open connection",
    ),
    (
        "retention",
        "EInvalidTerms",
        241,
        InvalidArgument,
        "Retention time exceeds the maximum of 30 days",
    ),
    ("payment", "EZeroPayment", 230, InvalidArgument, "Payment must be positive"),
    ("payment", "EMemoTooLong", 231, InvalidArgument, "Memo exceeds 256 bytes"),
    ("registry", "ENotRegistryOwner", 130, NotAuthorized, "Only the registry's owner can do this"),
    ("registry", "ENotMember", 131, NotAuthorized, "Sender is not a member of the registry"),
    (
        "registry",
        "EInvalidDuration",
        132,
        InvalidArgument,
        "A lease lasts from 1 ms to MAX_LEASE_MS",
    ),
    ("registry", "ELeaseHeld", 133, LeaseHeld, "The lease is held until it expires"),
    (
        "registry",
        "EStaleToken",
        134,
        FencedOut,
        "The fencing token is not the lease's current one",
    ),
    ("registry", "ENotHolder", 135, NotAuthorized, "Only the lease's holder can do this"),
    ("registry", "ELeaseExpired", 136, FencedOut, "The lease has expired or was released"),
    (
        "registry",
        "EInvalidEntry",
        137,
        InvalidArgument,
        "A name or key is 1 to 64 bytes, a holder at most 64, a value at most 512",
    ),
    (
        "registry",
        "ERegistryFull",
        138,
        CoordinationError,
        "The registry already holds its most names, keys or members",
    ),
    ("registry", "ENoLease", 139, FencedOut, "No lease of this name exists"),
)

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
