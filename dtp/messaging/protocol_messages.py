"""The RPC message format (docs/messaging.md §2): the kinds, the limits, and the checks
of what the peer sends (a message read that breaks them is the peer's fault:
:class:`~dtp.messaging.errors.MalformedMessage`)."""

from __future__ import annotations

import struct
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
