"""The checks of what callers pass to a graph and its sync sessions, and souls' and field
names' two forms: the str the API takes and the UTF-8 bytes the HAM table keys on."""

from __future__ import annotations

from dtp.errors import ErrorCode, LocalProtocolError


def check_int(what: str, value: object, low: int) -> None:
    """An int argument (of a Graph method or of a sync session), at least ``low``:
    TypeError for a bool, a float or a str (``True`` would pass for 1, NaN for no cap
    at all), ValueError below ``low`` -- a local error, not one blamed on a peer later."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < low:
        raise ValueError(f"{what} must be an int >= {low}, not {value}")


def name_text(name: bytes) -> str | None:
    """A soul or field name from the table as text, or None when it is not UTF-8.

    Peers may write any bytes, but the API names souls and fields by str (UTF-8): a name
    that is not UTF-8 cannot be asked for, and read with ``errors="replace"`` it would
    pose as another (``b"x\\xff"`` as the field ``"x\\ufffd"``) -- so reads leave it out.
    """
    try:
        return name.decode()
    except UnicodeDecodeError:
        return None


def check_names(soul: object, field: object) -> None:
    """A subscription's soul and optional field: what put() could write (an empty name
    would be a subscription no change can ever reach)."""
    if not utf8_name(soul, "a soul"):
        raise LocalProtocolError("a soul is a non-empty string", ErrorCode.ARG)
    if field is not None and not utf8_name(field, "a field name"):
        raise LocalProtocolError("field names are non-empty strings", ErrorCode.ARG)


def check_listener(listener: object) -> None:
    """A listener that is not callable would fail only at the next merge, in the thread
    that made it (that of a sync session), rather than here where the mistake is."""
    if not callable(listener):
        raise LocalProtocolError(
            f"a listener must be callable, not {type(listener).__name__}", ErrorCode.ARG
        )


def utf8_name(text: object, what: str) -> bytes:
    """A soul or field name as the UTF-8 bytes the table keys on; LocalProtocolError for
    anything else (a lone surrogate has no UTF-8 form)."""
    if not isinstance(text, str):
        raise LocalProtocolError(f"{what} must be a str, not {type(text).__name__}", ErrorCode.ARG)
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise LocalProtocolError(
            f"{what} is not valid Unicode (lone surrogate): {text[:64]!r}", ErrorCode.ARG
        ) from None
