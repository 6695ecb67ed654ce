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
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """Error codes shared by the C core, its Python twin and the wire (CLOSE frames)."""

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


class HandshakeError(DTPError):
    """The Noise handshake or the client's identity proof failed (wrong server key,
    bad signature, malformed handshake message, peer gone during the handshake)."""


class ConnectionRefused(DTPError, ConnectionRefusedError):
    """The server refused this client (accept hook, firewall); ``reason`` says why."""

    def __init__(self, reason: str = "refused by the server", code: int = 0) -> None:
        self.reason = reason
        self.code = code
        super().__init__(reason)


class ConnectionLost(DTPError, ConnectionResetError):
    """The peer or the carrier went away without a clean close."""


class ConnectionClosed(DTPError):
    """The connection was closed (by either side) with ``code`` and ``reason``."""

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
