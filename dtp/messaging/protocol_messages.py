"""The RPC message format (docs/messaging.md §2): the kinds, the limits, and the checks
of what the peer sends (a message read that breaks them is the peer's fault:
:class:`~dtp.messaging.errors.MalformedMessage`)."""

from __future__ import annotations

import math
import struct
import threading
from collections.abc import Mapping
from typing import Any, Final

import msgpack

from dtp.messaging import errors as E

# Message kinds: the first element of every message array.
REQUEST: Final = 0  # [0, id, method, params, timeout_ms, meta]
RESPONSE: Final = 1  # [1, id, result, meta]
ERROR: Final = 2  # [2, id | nil, code, message, data]
NOTIFY: Final = 3  # [3, method, params, meta]
CANCEL: Final = 4  # [4, id]
ACK: Final = 5  # [5, id, signature]

#: Longest method name (UTF-8 bytes).
MAX_METHOD_LENGTH: Final = 256
#: Largest request id (ids are 1..2**63-1).
MAX_ID: Final = 2**63 - 1
#: Longest relative timeout a request may carry (ms; about 49 days).
MAX_TIMEOUT_MS: Final = 2**32 - 1
_MISSING: Any = object()
#: The first bytes of a RESPONSE's and a REQUEST's body: their array and kind.
_RESPONSE_HEAD: Final = b"\x94\x01"
_REQUEST_HEAD: Final = b"\x96\x00"


_unpackb = msgpack.unpackb
_frame_length = struct.Struct(">I").unpack_from
#: Method names this short are within MAX_METHOD_LENGTH whatever their characters (at
#: most 4 UTF-8 bytes each), so they need no encoding to be checked.
_SHORT_METHOD: Final = MAX_METHOD_LENGTH // 4
#: Most complaints (ERROR frames with a nil id, about frames whose request id could not be
#: read) one protocol sends; later bad frames are only counted. A complaint is larger
#: than the frame it is about, so answering each would let a peer that sends junk and
#: never reads make us queue and send without bound.
MAX_COMPLAINTS: Final = 64


class _IdInProgress(E.MalformedMessage):
    """A REQUEST reusing the id of one still in progress: refused, the first kept."""


def _unencodable(exc: Exception) -> str:
    """The text of an answer whose result cannot be encoded: msgpack's own reason for its
    TypeError / ValueError / OverflowError, only the type name of anything else (a
    mapping whose ``items()`` fails, a dict another thread changes meanwhile...), whose
    text stays private as a handler's exception's does."""
    if isinstance(exc, TypeError | ValueError | OverflowError):
        return f"result not encodable: {exc}"
    return f"result not encodable ({type(exc).__name__})"


def _valid_id(value: Any) -> bool:
    return type(value) is int and 0 < value <= MAX_ID


def _check_meta(value: Any) -> Mapping[str, Any] | None:
    if value is None or isinstance(value, dict):
        return value
    raise E.MalformedMessage("meta must be a map or nil")


def _check_method(value: Any) -> str:
    if (
        not isinstance(value, str)
        or not value
        or (len(value) > _SHORT_METHOD and len(value.encode()) > MAX_METHOD_LENGTH)
    ):
        raise E.MalformedMessage(f"method must be text of 1..{MAX_METHOD_LENGTH} bytes")
    return value


def _peek_kind_and_id(head: bytes) -> tuple[Any, int | None]:
    """The kind and request id of a message from the first bytes of its body (for
    oversized frames): ``(kind, id)``, ``(kind, None)`` or ``(None, None)``."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(head)
    try:
        if unpacker.read_array_header() < 2:
            return None, None
        kind, request_id = unpacker.unpack(), unpacker.unpack()
    except Exception:
        return None, None
    if type(kind) is not int:  # (a bool is no kind: ``true`` would pass for RESPONSE)
        return None, None
    return kind, request_id if _valid_id(request_id) else None


# -- the checks of a caller's arguments: what we send (method names, timeouts, meta) and how
# long we wait. A bad argument is the caller's mistake, a TypeError / ValueError /
# OverflowError, never the wire's MalformedMessage.


def _check_our_method(value: Any) -> None:
    """A method name we send: the caller's mistake is a TypeError / ValueError here,
    not the MalformedMessage (the peer's fault, by the wire's code) of one we read."""
    if not isinstance(value, str):
        raise TypeError(f"a method name is a str, not {type(value).__name__!r}")
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        # a lone surrogate: the codec's bare UnicodeEncodeError came out here, while
        # begin_request (the blocking client's quiet path) said NotEncodable, a TypeError
        size = 0
    if not 0 < size <= MAX_METHOD_LENGTH:
        raise ValueError(
            f"a method name is 1..{MAX_METHOD_LENGTH} bytes of UTF-8, got {value!r:.80}"
        )


def _check_our_timeout(timeout: Any) -> None:
    """A request's timeout we send: seconds above 0, finite (None: no deadline)."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"a timeout is a number of seconds or None, not {type(timeout).__name__!r}")
    if not 0 < timeout < math.inf:
        raise ValueError(f"a timeout must be a finite number of seconds above 0, not {timeout!r}")


def _check_wait(timeout: Any) -> None:
    """A local wait's ``timeout`` (not None), refused as ``socket.settimeout`` refuses
    it (the messaging waits' one check): ValueError for NaN, OverflowError past
    ``threading.TIMEOUT_MAX`` either way, infinities included, ValueError below 0. Not
    a number (a str, and a bool here) is a TypeError.

    Left to the waits, a NaN deadline never passed (queue's and Condition's own checks
    let it through), inf overflowed a lock's wait with a bare "timestamp out of range"
    from inside queue (the OverflowError here has ``DTPSocket.settimeout``'s words), and
    a str failed deep inside the wait."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"a timeout is a number of seconds, not {type(timeout).__name__!r}")
    if timeout != timeout:
        raise ValueError("a timeout must be 0 or more seconds, not nan")
    # (the socket's order: out of range before negative, so -inf overflows as well)
    if abs(timeout) > threading.TIMEOUT_MAX:
        raise OverflowError(f"timeout out of range (at most {threading.TIMEOUT_MAX:.0f} s)")
    if timeout < 0:
        raise ValueError(f"a timeout must be 0 or more seconds, not {timeout!r}")


def _check_count(what: str, value: object, low: int) -> None:
    """``value`` is an int (TypeError for a bool, a float or a str: not a count) of at
    least ``low`` (ValueError)."""
    if type(value) is not int:
        raise TypeError(f"{what} must be an int, not {type(value).__name__!r}")
    if value < low:
        raise ValueError(f"{what} must be at least {low}, not {value}")


def _check_our_meta(meta: Any) -> None:
    if meta is not None and not isinstance(meta, Mapping):
        raise TypeError(f"meta is a mapping or None, not {type(meta).__name__!r}")
