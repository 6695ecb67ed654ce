"""The checks of a caller's arguments to the messaging calls: what we send (method names,
timeouts, meta) and how long we wait. A bad argument is the caller's mistake, a
TypeError / ValueError / OverflowError, never the wire's MalformedMessage."""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any

from dtp.messaging.protocol_messages import MAX_METHOD_LENGTH


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
