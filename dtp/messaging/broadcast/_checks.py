"""The checks of what a station's and a listener's callers pass in (amounts, text,
streams) and the comparison of IDs, made before anything is paid or sent."""

from __future__ import annotations

from dtp.errors import InvalidObjectId
from dtp.ledger._objects import normalize_id


def _check_amount(amount: object) -> None:
    """An amount of MIST: an int (a bool or a float is a TypeError, not a count the
    ledger may round or take as 1) in 0..2**64-1 (ValueError), checked before anything
    is paid or sent."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise TypeError(f"an amount is an int of MIST, not {type(amount).__name__!r}")
    if not 0 <= amount < 1 << 64:
        raise ValueError(f"an amount is 0..2**64-1 MIST, not {amount!r}")


def _utf8(text: object, what: str) -> bytes:
    """The UTF-8 of ``text``: TypeError when it is not a str, ValueError when it is not
    valid text (a lone surrogate; ``str.encode`` raised AttributeError or
    UnicodeEncodeError), checked before anything is paid or sent."""
    if not isinstance(text, str):
        raise TypeError(f"{what} is a str, not {type(text).__name__!r}")
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid text (a lone surrogate)") from None


def _check_stream(stream: object, what: str) -> None:
    """A station's or listener's stream has what the link threads use (``recv``,
    ``sendall``), as :meth:`PubSubNode.attach <dtp.messaging.pubsub.PubSubNode.attach>`
    checks: None or a bytes object was taken, then the reader thread died with an
    AttributeError and the listener said the station's stream had ended."""
    if not all(callable(getattr(stream, m, None)) for m in ("recv", "sendall")):
        raise TypeError(f"{what} needs a stream (recv, sendall), not {type(stream).__name__!r}")


def _same_id(a: str, b: str) -> bool:
    """Whether two IDs or addresses are the same one, as the ledger compares them (any
    case, short forms); text that is no ID is the same as nothing."""
    try:
        return normalize_id(a) == normalize_id(b)
    except InvalidObjectId:
        return False
