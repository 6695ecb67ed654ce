"""Gun's user spaces: the rules a GunDB relay applies to SEA's souls. docs/graph.md,
"Gun user spaces", says them: the signed ``{":": value, "~": signature}`` strings of
``~<pub>`` souls and what the signature covers, the alias lists, content-addressed
souls, and which souls are user spaces (:func:`sea_pub`).

These are the checks of gun's ``sea/index.js`` (``check``, gun 0.2020.1241) as a relay
runs them, with the same error texts and three differences, each refusing what gun
would take: a value naming another signer (``"*"``: gun takes it on that key's word
when no certificate comes with it), SEA's pre-2019 fallback (signatures over
``[object Object]``), and a signed value Gun does not hold in a field.

Public keys are parsed once (a small cache) and so are signatures found valid: the Gun
endpoint checks an update before it merges it, and the merge checks it again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from dtp.errors import DTPError, ErrorCode, LocalProtocolError
from dtp.graph import namespace
from dtp.graph._batch import filter_souls
from dtp.graph.values import (
    GraphValueError,
    GunValue,
    decode_value,
    js_number,
    link_soul,
    value_text,
)
from dtp.native.types import HamUpdate

#: gun's ``pubcut``: anything but ASCII letters, digits, ``_`` and ``-`` ends a part
#: of a public key in a soul (JavaScript's ``\\w`` is ASCII only).
_PUBCUT = re.compile(r"[^A-Za-z0-9_-]")
_COORDINATE = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 bytes in unpadded base64url

# the reasons an update is refused (keys of Graph.stats["refused_by_reason"]), and the
# error texts gun's relay sends for them
ALIAS = "sea_alias"
ACCOUNT = "sea_account"
UNVERIFIED = "sea_unverified"
HASH = "sea_hash"
CERTIFICATE = "sea_certificate"
MESSAGES = {
    ALIAS: "Alias not same!",
    ACCOUNT: "Account not same!",
    UNVERIFIED: "Unverified data.",
    HASH: "Data hash not same as hash!",
    CERTIFICATE: "Certificates are not supported: a value signed by another key than "
    "the owner's is refused.",
}


@dataclass(frozen=True)
class SeaRefusal:
    """Why an update breaks a SEA rule: :attr:`reason` (a key of
    ``Graph.stats["refused_by_reason"]``) and :attr:`message` (gun's error text)."""

    reason: str
    message: str


def _refuse(reason: str, message: str | None = None) -> SeaRefusal:
    return SeaRefusal(reason, message or MESSAGES[reason])


def sea_pub(soul: str) -> str | None:
    """The public key ``x.y`` a soul belongs to under SEA's rule (gun's
    ``SEA.opt.pub``), or None for a soul outside every user space.

    The text after the soul's first ``~`` (up to a second one) is cut at each
    character that is not an ASCII letter, digit, ``_`` or ``-``; a soul of at least
    two such parts, the first not starting with ``@``, is the user space of the key
    made of its first two: ``~K.Y`` and ``~K.Y/profile`` are ``K.Y``'s, and so is
    ``a~K.Y`` (``~bob``, one part, is nobody's).
    """
    parts = soul.split("~")
    if len(parts) < 2 or not parts[1]:
        return None
    pieces = _PUBCUT.split(parts[1])
    if len(pieces) < 2:
        return None
    if pieces[0].startswith("@"):  # (cannot be: '@' cuts; kept as gun has it)
        return None
    return pieces[0] + "." + pieces[1]


def is_guarded(soul: str) -> bool:
    """True when a soul falls under a SEA rule: a user space, an alias list (``~@``,
    ``~@<alias>``) or a content-addressed soul (holding ``#``)."""
    return soul.startswith("~@") or sea_pub(soul) is not None or "#" in soul


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@lru_cache(maxsize=4096)
def public_key(pub: str) -> ec.EllipticCurvePublicKey | None:
    """The P-256 key of a SEA public key ``x.y`` (unpadded base64url coordinates), or
    None when it is not one (malformed, or not a point of the curve)."""
    x, _, y = pub.partition(".")
    if _COORDINATE.fullmatch(x) is None or _COORDINATE.fullmatch(y) is None:
        return None
    try:
        numbers = ec.EllipticCurvePublicNumbers(
            int.from_bytes(_b64url(x), "big"), int.from_bytes(_b64url(y), "big"), ec.SECP256R1()
        )
        return numbers.public_key()
    except ValueError:  # not on the curve
        return None


def signed_text(soul: str, field: str, value: GunValue, state: float) -> str:
    """The text whose SHA-256 digest SEA signs for a field (see the module docstring);
    GraphValueError when ``value`` is not a Gun value or ``state`` not finite."""
    return (
        '{"#":'
        + value_text(soul)
        + ',".":'
        + value_text(field)
        + ',":":'
        + value_text(value)
        + ',">":'
        + js_number(state)
        + "}"
    )


def _signature(text: str) -> bytes | None:
    """A signature's 64 bytes from its base64 (either alphabet, as node's Buffer reads
    it), or None."""
    cleaned = text.strip().replace("-", "+").replace("_", "/").rstrip("=")
    try:
        raw = base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 64 else None


# signatures found valid lately: (soul, field, state, stored text) -> True
# (a pure function of the key, so one cache serves every graph; sync sessions check in
# threads of their own)
_VERIFIED: OrderedDict[tuple[str, str, float, str], bool] = OrderedDict()
_VERIFIED_MAX = 4096
_VERIFIED_LOCK = threading.Lock()


def verify_signature(pub: str, text: str, signature: str) -> bool:
    """True when ``signature`` (base64 of r || s) is ``pub``'s ECDSA P-256 signature
    of the SHA-256 digest of ``text`` (as SEA signs: WebCrypto hashes that digest again
    as it signs)."""
    key = public_key(pub)
    raw = _signature(signature)
    if key is None or raw is None:
        return False
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    try:
        key.verify(der, digest, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _parse_envelope(value: GunValue) -> dict[str, object] | None:
    """The object SEA packs a signed value in (``{":": v, "~": sig}``, possibly led by
    ``SEA``), or None when ``value`` is no such thing."""
    if not isinstance(value, str):
        return None
    text = value[3:] if value.startswith("SEA{") else value
    if not text.startswith("{"):
        return None
    try:
        parsed = json.loads(text, parse_int=float)
    except (ValueError, RecursionError):
        return None
    return parsed if isinstance(parsed, dict) else None


def _check_pub(soul: str, field: str, value: GunValue, state: float, pub: str) -> SeaRefusal | None:
    if field == "pub" and soul == "~" + pub:
        return None if value == pub else _refuse(ACCOUNT)
    envelope = _parse_envelope(value)
    if envelope is None or ":" not in envelope or not envelope.get("~"):
        return _refuse(UNVERIFIED)
    if ("*" in envelope and envelope["*"] != pub) or "+" in envelope:
        return _refuse(CERTIFICATE)
    signature = envelope["~"]
    inner = envelope[":"]
    if not isinstance(signature, str) or not isinstance(value, str) or state == 0:
        # (gun packs nothing to verify for a state of 0: its check fails)
        return _refuse(UNVERIFIED)
    key = (soul, field, state, value)
    with _VERIFIED_LOCK:
        if key in _VERIFIED:
            return None
    try:
        text = signed_text(soul, field, inner, state)  # type: ignore[arg-type]
    except GraphValueError:
        return _refuse(UNVERIFIED, "Unverified data: the signed value is not a Gun value.")
    if not verify_signature(pub, text, signature):
        return _refuse(UNVERIFIED)
    with _VERIFIED_LOCK:
        _VERIFIED[key] = True
        if len(_VERIFIED) > _VERIFIED_MAX:
            _VERIFIED.popitem(last=False)
    return None


def _check_hash(field: str, value: GunValue) -> SeaRefusal | None:
    text = value if isinstance(value, str) else value_text(value)
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    claimed = field.split("#")[-1]
    if claimed == base64.b64encode(digest).decode():
        return None
    if len(claimed) == 64:
        try:
            if bytes.fromhex(claimed) == digest:
                return None
        except ValueError:
            pass
    return _refuse(HASH)


def check(soul: str, field: str, value: GunValue, state: float) -> SeaRefusal | None:
    """Why an update breaks a SEA rule (a :class:`SeaRefusal`), or None when it keeps
    them all (and for souls no rule covers). ``value`` is the field's value as read
    from its Gun text; ``state`` a finite number."""
    if soul == "~@":
        if not value:
            return _refuse(ALIAS, "Data must exist!")
        return None if link_soul(value) == "~@" + field else _refuse(ALIAS)
    if soul.startswith("~@"):
        if not value:
            return _refuse(ALIAS, "Alias must exist!")
        return None if link_soul(value) == field else _refuse(ALIAS)
    pub = sea_pub(soul)
    if pub is not None:
        return _check_pub(soul, field, value, state, pub)
    if "#" in soul:
        return _check_hash(field, value)
    return None


def check_stored(soul: bytes, field: bytes, state: float, stored: bytes) -> SeaRefusal | None:
    """:func:`check` on an update as the HAM table holds it (UTF-8 names, the value's
    Gun text); names or values that are not text are refused under a guarded soul.
    dtp's own user space (``~0x<64 hex>``, :mod:`dtp.graph.namespace`) has its own
    rule and passes here."""
    if b"~" not in soul and b"#" not in soul:
        return None  # (no rule covers it: the common case, decided without decoding)
    if namespace.is_user_space(soul):
        return None
    try:
        soul_text = soul.decode()
    except UnicodeDecodeError:
        return None  # (no Gun peer names such a soul, and reads leave it out)
    if not is_guarded(soul_text):
        return None
    try:
        field_text = field.decode()
    except UnicodeDecodeError:
        return _refuse(UNVERIFIED, "Unverified data: a field name is not UTF-8.")
    try:
        value = decode_value(stored)
    except DTPError:
        return _refuse(UNVERIFIED, "Unverified data: the value is not JSON.")
    if isinstance(value, list) or (isinstance(value, dict) and link_soul(value) is None):
        return _refuse(UNVERIFIED, "Unverified data: the value is not a Gun value.")
    return check(soul_text, field_text, value, state)


def filter_batch(
    batch: bytes,
    held: Callable[[list[HamUpdate]], list[bool]] | None = None,
    details: list[tuple[HamUpdate, str, str]] | None = None,
) -> tuple[bytes, dict[str, int]]:
    """Drop the updates of a peer's batch that break a SEA rule, as
    :func:`dtp.graph.namespace.filter_batch` does for dtp's own user space.

    The updates looked at are those whose soul starts with ``~`` (user spaces and
    alias lists; dtp's ``~0x<64 hex>`` souls are left to their own rule) or with ``#``
    (content-addressed); a batch holding neither byte passes untouched. (Souls with a
    ``~`` or ``#`` further in, which gun also guards, are checked where a Gun peer
    writes them: the Gun endpoint.)
    """
    return filter_souls(
        batch, (b"~", b"#"), lambda soul: not namespace.is_user_space(soul), _judge, held, details
    )


def _judge(update: HamUpdate) -> tuple[str, str] | None:
    refusal = check_stored(update.soul, update.field, update.state, update.value)
    return None if refusal is None else (refusal.reason, refusal.message)


class SeaPair:
    """A SEA key pair for signing into a Gun user space from Python (tests, tools, a
    Python peer writing as a Gun user): :attr:`pub` is the ``x.y`` text SEA uses."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise LocalProtocolError("a SEA key is an ECDSA P-256 key", ErrorCode.ARG)
        self._key = private_key
        numbers = private_key.public_key().public_numbers()
        self.pub = _coordinate(numbers.x) + "." + _coordinate(numbers.y)

    @classmethod
    def generate(cls) -> SeaPair:
        """A new random pair."""
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @property
    def soul(self) -> str:
        """The user's root soul, ``~<pub>``."""
        return "~" + self.pub

    def sign(self, soul: str, field: str, value: GunValue, state: float) -> str:
        """The value SEA stores for ``value`` in field ``field`` of ``soul`` at
        ``state``: the JSON text ``{":": value, "~": signature}`` (GraphValueError when
        ``value`` is not a Gun value or ``state`` is not finite)."""
        text = signed_text(soul, field, value, state)
        der = self._key.sign(
            hashlib.sha256(text.encode("utf-8")).digest(), ec.ECDSA(hashes.SHA256())
        )
        r, s = decode_dss_signature(der)
        signature = base64.b64encode(r.to_bytes(32, "big") + s.to_bytes(32, "big")).decode()
        return '{":":' + value_text(value) + ',"~":' + value_text(signature) + "}"


def _coordinate(n: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()


__all__ = [
    "ACCOUNT",
    "ALIAS",
    "CERTIFICATE",
    "HASH",
    "MESSAGES",
    "UNVERIFIED",
    "SeaPair",
    "SeaRefusal",
    "check",
    "check_stored",
    "filter_batch",
    "is_guarded",
    "public_key",
    "sea_pub",
    "signed_text",
    "verify_signature",
]
