"""Reading a stored value as the HAM table holds it (docs/graph.md, "Reading stored
values"): what ``graph.snapshot()``, ``graph.stored_node(soul)`` and ``graph.export()``
give -- a signed envelope in a ``~0x`` space, a private space's ``"dtp/p1:..."``
string, gun's own SEA string -- checked as a merge checks it and opened, with no batch
decoder::

    from dtp.graph.stored import open_stored

    for (soul, field), (state, stored) in graph.snapshot().items():
        value = open_stored(soul, field, state, stored)
        print(value.tier, value.author, value.value)

A value that does not verify raises :class:`StoredValueError`, whose ``reason`` is the
one ``graph.stats["refused_by_reason"]`` counts a merge's refusal under.
"""

from __future__ import annotations

from dataclasses import dataclass

from dtp.errors import DTPError, ErrorCode, RemoteProtocolError
from dtp.graph import _private as private
from dtp.graph import namespace, sea
from dtp.graph._tiers import PRIVATE, PROTECTED, PUBLIC
from dtp.graph.rules import _unwrap_sea
from dtp.graph.values import JSON, decode_value
from dtp.native.types import HamUpdate

SEA = "sea"
"""The tier of a Gun user space ``~<pub>`` (only SEA's owner signs there)."""


class StoredValueError(RemoteProtocolError):
    """A stored value that does not verify (its signature, its key, its soul's form),
    or whose text is not a value: :attr:`reason` says which, as a merge would have
    refused it (``bad_signature``, ``wrong_key``, ``private_bad_signature``,
    ``sea_unverified``, ..., or ``not_a_value``)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message, ErrorCode.HAM_MALFORMED)
        self.reason = reason


@dataclass(frozen=True)
class StoredValue:
    """One stored value, verified and opened (:func:`open_stored`)."""

    tier: str
    """``"public"``, ``"protected"`` (``~0x<address>/...``), ``"private"``
    (``%0x<address>/...``) or ``"sea"`` (``~<pub>...``)."""
    author: str | None
    """The signer, whose signature was just verified: the Sui address of a protected or
    private space, the SEA key ``x.y`` of a Gun user space; None for a public soul."""
    text: bytes
    """The value's Gun text: the stored bytes without dtp's envelope (a private field's
    text is its ``"dtp/p1:..."`` string: the value encrypted)."""
    value: JSON
    """The value, as a rule sees it (:class:`~dtp.graph.rules.Update`): ``text``
    decoded, and in a Gun user space the value inside SEA's signed envelope. A private
    value stays encrypted here: ``graph.private(path, identity, author=...)`` reads
    it with a reader's key."""


def _name(name: str | bytes, what: str) -> bytes:
    if isinstance(name, bytes | bytearray):
        return bytes(name)
    if isinstance(name, str):
        try:
            return name.encode()
        except UnicodeEncodeError:
            pass
    raise TypeError(f"{what} is a str or UTF-8 bytes, not {type(name).__name__}")


def open_stored(soul: str | bytes, field: str | bytes, state: float, stored: bytes) -> StoredValue:
    """The value a field stores, checked as every peer checks it on the way in --
    dtp's signed spaces, private spaces and Gun's user spaces -- and opened.

    ``soul`` and ``field`` as str or as the table's UTF-8 bytes, ``state`` the field's
    HAM state (signatures cover it), ``stored`` the stored bytes. Raises
    :class:`StoredValueError` for a value that does not verify or is not JSON."""
    s, f = _name(soul, "soul"), _name(field, "field")
    if isinstance(state, bool) or not isinstance(state, int | float):
        raise TypeError(f"state is a number, not {type(state).__name__}")
    if not isinstance(stored, bytes | bytearray):
        raise TypeError(f"stored is bytes, not {type(stored).__name__}")
    update = HamUpdate(s, f, float(state), bytes(stored))
    for judge in (namespace._judge, sea._judge, private._judge):
        verdict = judge(update)
        if verdict is not None:
            reason, message = verdict
            raise StoredValueError(f"{s[:80]!r}.{f[:64]!r} does not verify: {message}", reason)
    text = update.value
    author: str | None = None
    tier = PUBLIC
    if namespace.is_user_space(s):
        tier, author, text = PROTECTED, namespace.owner_of(s), namespace.open_envelope(text)
    elif private.is_private(s):
        parsed = private.parse_soul(s)
        tier, author = PRIVATE, None if parsed is None else parsed.author
    else:
        try:
            pub = sea.sea_pub(s.decode())
        except UnicodeDecodeError:
            pub = None
        if pub is not None:
            tier, author = SEA, pub
    try:
        value = decode_value(text)
    except DTPError as exc:
        raise StoredValueError(
            f"{s[:80]!r}.{f[:64]!r} holds no value: {exc}", "not_a_value"
        ) from None
    return StoredValue(tier, author, text, _unwrap_sea(value) if tier == SEA else value)


__all__ = ["SEA", "StoredValue", "StoredValueError", "open_stored"]
