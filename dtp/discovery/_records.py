"""The DNS-SD record of a DTP endpoint on the LAN (docs/messaging.md §6.1), sans-I/O.

Every DTP endpoint -- a server of :mod:`dtp.socket` / :mod:`dtp.aio`, a graph peer, a
service of the services daemon -- is one DNS-SD service instance of the one type
:data:`SERVICE_TYPE`, ``_dtp._tcp.local.``: its SRV record names the carrier's TCP
port, its A/AAAA records the addresses, and its TXT record (RFC 6763 §6) says what it
is::

    txtvers=1  dtp=1  key=<Noise static public key, base64url, 43 chars>
    [host=0x<64 hex>]  [svc=<service name>]  [port=<DTP port>]
    [graph=<graph namespace>  sync=<graph sync version>]

A TXT record is not authenticated: anyone on the LAN can send one. Nothing in it is
trusted but as a claim; ``key`` is what a connection holds the peer to (the Noise IK
handshake with that key fails unless the peer owns it), so a forged record makes a
connection fail, never reach a key the record did not name.

This module reads and writes the record's bytes only (:func:`encode_txt`,
:func:`decode_txt`); :mod:`dtp.discovery._mdns` sends and receives them.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Final

from dtp.discovery.errors import LanRecordError
from dtp.ledger._objects import normalize_id

__all__ = [
    "KEY_LEN",
    "MAX_NAME",
    "MAX_TXT",
    "SERVICE_TYPE",
    "TXT_VERSION",
    "LanRecord",
    "decode_txt",
    "encode_txt",
    "instance_name",
]

SERVICE_TYPE: Final = "_dtp._tcp.local."
"""The DNS-SD service type of every DTP endpoint (RFC 6763 §7: ``_<name>._tcp``, the
carrier being TCP)."""

TXT_VERSION: Final = 1
"""``txtvers`` of this format (RFC 6763 §6.7). A record of another version is refused."""

KEY_LEN: Final = 32
"""Bytes of a Noise static public key (X25519)."""

MAX_NAME: Final = 63
"""Bytes (UTF-8) of a service name or a graph namespace at most: one DNS label's worth."""

MAX_TXT: Final = 1300
"""Bytes of a TXT record's data at most (RFC 6763 §6.2: it should fit one packet with
the rest of the answer; ours are under 300)."""

_MAX_INT_DIGITS: Final = 19  # (2**62 has 19 digits)
_HOST_ID = re.compile(r"0x[0-9a-f]{64}")
_INT = re.compile(r"0|[1-9][0-9]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# RFC 6763 §6.4: a key is printable US-ASCII but "=", compared case-insensitively
_KEY = re.compile(rb"[\x20-\x3c\x3e-\x7e]{1,9}")


@dataclass(frozen=True)
class LanRecord:
    """What a DTP endpoint says of itself in its TXT record.

    ``key``: its Noise static public key, the one a connection will require.
    ``dtp``: the highest transport version it speaks (docs/protocol.md §8.2).
    ``host_id``: the Host object on the ledger it claims to be (a claim only: check it
    against the ledger's Host before paying it anything). ``service`` / ``port``: the
    service of that host this endpoint serves and its DTP port. ``graph`` /
    ``graph_sync``: a graph peer's namespace (peers sync with peers of the same one) and
    the version of the graph sync protocol it speaks (docs/graph.md, "Sync protocol").
    """

    key: bytes
    dtp: int = 1
    host_id: str | None = None
    service: str | None = None
    port: int | None = None
    graph: str | None = None
    graph_sync: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes) or len(self.key) != KEY_LEN:
            raise ValueError(f"key must be {KEY_LEN} bytes (a Noise static public key)")
        _check_int("dtp", self.dtp, 1, (1 << 62) - 1)
        if self.host_id is not None:
            object.__setattr__(self, "host_id", normalize_id(self.host_id, "host ID"))
        if self.service is not None:
            _check_name("service", self.service)
        if self.port is not None:
            _check_int("port", self.port, 0, 65535)
        if self.graph is not None:
            _check_name("graph", self.graph)
            if self.graph_sync is None:
                raise ValueError("a graph peer's record needs graph_sync (its sync version)")
        if self.graph_sync is not None:
            if self.graph is None:
                raise ValueError("graph_sync is given with graph (the namespace) only")
            _check_int("graph_sync", self.graph_sync, 1, (1 << 62) - 1)

    @property
    def key_text(self) -> str:
        """:attr:`key` as the record writes it (base64url, no padding)."""
        return base64.urlsafe_b64encode(self.key).rstrip(b"=").decode("ascii")


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be {low}..{high}, not {value}")


def _check_name(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{name} {value!r} is not valid Unicode text") from None
    if not 1 <= size <= MAX_NAME or _CONTROL.search(value):
        raise ValueError(
            f"{name} must be 1..{MAX_NAME} bytes of UTF-8 without control characters, not {value!r}"
        )


def encode_txt(record: LanRecord) -> bytes:
    """The TXT record's data (RFC 1035 §3.3.14: each string prefixed by its length) in
    the order of the module's picture."""
    items = [
        ("txtvers", str(TXT_VERSION)),
        ("dtp", str(record.dtp)),
        ("key", record.key_text),
    ]
    if record.host_id is not None:
        items.append(("host", record.host_id))
    if record.service is not None:
        items.append(("svc", record.service))
    if record.port is not None:
        items.append(("port", str(record.port)))
    if record.graph is not None:
        items.append(("graph", record.graph))
        items.append(("sync", str(record.graph_sync)))
    out = bytearray()
    for key, value in items:
        entry = f"{key}={value}".encode()
        out.append(len(entry))  # (every entry is under 255 bytes: names are <= 63)
        out += entry
    return bytes(out)


def _strings(data: bytes) -> list[bytes]:
    strings = []
    at = 0
    while at < len(data):
        size = data[at]
        if at + 1 + size > len(data):
            raise LanRecordError("truncated", "TXT record: a string runs past the record's end")
        strings.append(data[at + 1 : at + 1 + size])
        at += 1 + size
    return strings


def decode_txt(data: bytes) -> LanRecord:
    """The record in a TXT record's data; :class:`LanRecordError` when it is not one.

    Keys are matched without regard to case and unknown keys are skipped (RFC 6763
    §6.4: a later version may add some); of a key given twice only the first counts
    (§6.4 too). ``txtvers``, ``dtp`` and ``key`` are required; every value must be in
    its canonical form (one encoding per record)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"data must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_TXT:
        raise LanRecordError("size", f"TXT record of {len(data)} bytes (at most {MAX_TXT})")
    fields: dict[str, str] = {}
    for entry in _strings(data):
        key, equals, raw = entry.partition(b"=")
        if not _KEY.fullmatch(key):
            continue  # an empty string (an empty record is one), or not a key of any version
        name = key.decode("ascii").lower()
        if name in fields or name not in _KNOWN:
            continue
        if not equals:
            raise LanRecordError("value", f"TXT record: {name} has no value")
        try:
            fields[name] = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise LanRecordError("value", f"TXT record: {name} is not UTF-8") from None
    if "txtvers" not in fields:
        raise LanRecordError("missing", "TXT record: no txtvers")
    # (the version first: a record of another version need not have our keys)
    version = _int(fields, "txtvers")
    if version != TXT_VERSION:
        raise LanRecordError(
            "version", f"TXT record version {version} (this program reads {TXT_VERSION})"
        )
    for required in ("dtp", "key"):
        if required not in fields:
            raise LanRecordError("missing", f"TXT record: no {required}")
    key = _key(fields["key"])
    host_id = fields.get("host")
    if host_id is not None and not _HOST_ID.fullmatch(host_id):
        raise LanRecordError("value", f"TXT record: host {host_id[:80]!r} is not 0x + 64 hex")
    try:
        return LanRecord(
            key=key,
            dtp=_int(fields, "dtp"),
            host_id=host_id,
            service=fields.get("svc"),
            port=_int(fields, "port") if "port" in fields else None,
            graph=fields.get("graph"),
            graph_sync=_int(fields, "sync") if "sync" in fields else None,
        )
    except (TypeError, ValueError) as exc:
        raise LanRecordError("value", f"TXT record: {exc}") from None


_KNOWN: Final = frozenset({"txtvers", "dtp", "key", "host", "svc", "port", "graph", "sync"})


def _int(fields: dict[str, str], name: str) -> int:
    text = fields[name]
    if len(text) > _MAX_INT_DIGITS or not _INT.fullmatch(text):
        raise LanRecordError("value", f"TXT record: {name} {text[:40]!r} is not a number")
    return int(text)


def _key(text: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        key = b""
    # (canonical only: the decoder takes stray characters and other spellings of a key)
    if len(key) != KEY_LEN or LanRecord(key).key_text != text:
        raise LanRecordError(
            "key", f"TXT record: key {text[:60]!r} is not {KEY_LEN} bytes in base64url"
        )
    return key


def instance_name(key: bytes, port: int, label: str | None = None) -> str:
    """The DNS-SD instance name of an endpoint: ``label`` or, by default,
    ``dtp-<the key's first 8 bytes in hex>-<port>`` (unique on the LAN as long as keys
    are), under :data:`SERVICE_TYPE`."""
    if label is None:
        label = f"dtp-{key[:8].hex()}-{port}"
    _check_name("name", label)
    if "." in label:
        # (zeroconf splits names at dots: such an instance could not be resolved)
        raise ValueError(f"name must not contain a dot, not {label!r}")
    return f"{label}.{SERVICE_TYPE}"
