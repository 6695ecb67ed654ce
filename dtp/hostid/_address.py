"""DTP service addresses: ``dtp://0x<host id>:<port>``, the DTP counterpart of
``<ip>:<port>``.

A host is named by its Sui object ID (``0x`` + 64 hex digits; shorter forms are
zero-padded, as Sui does) and a service by a 16-bit port on that host.
"""

from __future__ import annotations

from dataclasses import dataclass

from dtp.errors import InvalidObjectId
from dtp.ledger._objects import normalize_id

SCHEME = "dtp://"


class InvalidAddress(InvalidObjectId):
    """Not a DTP address (``dtp://0x<host id>:<port>``)."""


@dataclass(frozen=True, order=True)
class HostAddress:
    """A service on a DTP host: the host's object ID and a port."""

    host_id: str
    """``0x`` + 64 lowercase hex digits."""
    port: int

    def __post_init__(self) -> None:
        try:
            host_id = normalize_id(self.host_id, "host ID")
        except InvalidObjectId as exc:  # the error parse() gives for it
            raise InvalidAddress(str(exc)) from None
        object.__setattr__(self, "host_id", host_id)
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise InvalidAddress(f"a port must be an integer, got {self.port!r}")
        if not 0 <= self.port <= 0xFFFF:
            raise InvalidAddress(f"port {self.port} is outside 0..65535")

    def __str__(self) -> str:
        return f"{SCHEME}{self.host_id}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> HostAddress:
        """``dtp://0x…:port`` or ``0x…:port``; raises :class:`InvalidAddress`."""
        if not isinstance(text, str):
            raise InvalidAddress(f"a DTP address must be a string, got {type(text).__name__}")
        body = text.strip()
        if body.lower().startswith(SCHEME):
            body = body[len(SCHEME) :]
        host, sep, port = body.rpartition(":")
        # whitespace is stripped around the address alone: inside it ("dtp:// 0x1:80",
        # "0x1\t:80") the host ID took it (normalize_id strips its value) but the port
        # refused it -- one or the other. No address has it, as no URL has.
        if not sep or not port.isdigit() or not port.isascii() or host != host.strip():
            raise InvalidAddress(
                f"{text!r} is not a DTP address (expected dtp://0x<host id>:<port>)"
            )
        digits = port.lstrip("0") or "0"
        if len(digits) > 5:
            # out of range anyway, and int() raises ValueError past 4300 digits
            raise InvalidAddress(f"port {digits[:12]}... is outside 0..65535")
        try:
            host_id = normalize_id(host, "host ID")
        except InvalidObjectId as exc:
            raise InvalidAddress(f"{text!r} is not a DTP address: {exc}") from None
        return cls(host_id, int(digits))


def is_dtp_address(value: object) -> bool:
    """True for a string that parses as a DTP address (or a HostAddress)."""
    if isinstance(value, HostAddress):
        return True
    try:
        HostAddress.parse(value)  # type: ignore[arg-type]
    except InvalidObjectId:
        return False
    return True
