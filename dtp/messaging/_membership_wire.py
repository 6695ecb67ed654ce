"""A member's record and the membership messages that carry records, as they are on the
wire (docs/messaging.md §6.2, "Wire"): wire versions 1 and 2, encoded and checked.

A message is a frame of msgpack ``[version, kind, sender, seq, target, records]``.
Version 1 records are ``[id, host, port, key, incarnation, state]``; version 2 adds the
*accuser* of a suspect record (the member whose own probe of it failed) as a seventh
field, and a seventh kind, NACK. A member speaking version 2 sends version 1 to members
it has not heard speak 2 (members of version 1 refuse anything else), and says it
speaks 2 in the ``target`` of its version-1 messages of the kinds that name no target.
The engine (:mod:`dtp.messaging._membership`) decides which version goes to whom; this
module only encodes and checks."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final

from dtp.messaging import errors as E
from dtp.messaging._framing import decode_body, encode_body

__all__ = [
    "ACK",
    "MAX_MESSAGE",
    "NACK",
    "NOTICE",
    "PING",
    "PING_REQ",
    "SYNC",
    "SYNC_REPLY",
    "VERSION",
    "Member",
    "MemberState",
    "Message",
    "Seed",
    "check_member",
    "decode_message",
    "encode_message",
    "pack_record",
]

#: Message kinds (docs/messaging.md §6.2).
PING: Final = 1
ACK: Final = 2
PING_REQ: Final = 3
SYNC: Final = 4
SYNC_REPLY: Final = 5
NOTICE: Final = 6
#: Version 2: a helper could not reach the member a PING-REQ named in time.
NACK: Final = 7
#: The highest wire version this implementation speaks.
VERSION: Final = 2
#: The kinds that name no target: in version 1 their ``target`` is where a member says
#: which version it speaks (members of version 1 ignore it there).
UNTARGETED: Final = frozenset({ACK, SYNC, SYNC_REPLY, NOTICE})
_LAST_KIND: Final = {1: NOTICE, 2: NACK}
_RECORD_FIELDS: Final = {1: 6, 2: 7}
_MAX_ID: Final = 128
_MAX_HOST: Final = 255
#: Largest membership message (a SYNC of the whole table fits: ~110 bytes a record).
MAX_MESSAGE: Final = 1 << 20
_U63: Final = 1 << 63


class MemberState(enum.IntEnum):
    """A member's state; at one incarnation a higher state wins."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


@dataclass(frozen=True, slots=True)
class Member:
    """One member as a view holds it."""

    #: The member's name, unique in the group (1..128 characters).
    id: str
    #: Where its DTP server listens.
    host: str
    port: int
    #: Its Noise static public key (32 bytes): connections to it are Noise IK to this key.
    key: bytes
    #: Raised by the member itself to refute a suspicion or a death.
    incarnation: int
    state: MemberState

    @property
    def live(self) -> bool:
        """Alive or suspect: part of the live member list."""
        return self.state <= MemberState.SUSPECT


@dataclass(frozen=True, slots=True)
class Seed:
    """An address to join through: a member's ``host`` and ``port``, and its Noise
    static key (``key``, 32 bytes) when known, for Noise IK; None connects with XX,
    trusting whoever answers there. A member's ``seed()`` gives one; from another
    process, pass the three along (the key as hex, say) and build it again."""

    host: str
    port: int
    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded membership message."""

    version: int
    kind: int
    sender: Member
    seq: int
    target: str | None
    #: Each record with its accuser (version 2, suspect records only; else None).
    records: list[tuple[Member, str | None]]

    @property
    def speaks(self) -> int | None:
        """The highest wire version the sender says it speaks, when the message tells: a
        version-2 message, or a version-1 one of a kind that names no target (whose
        ``target`` then holds the version, null from a member of version 1)."""
        if self.version >= 2:
            return self.version
        if self.kind not in UNTARGETED:
            return None
        target = self.target
        if target is not None and target.isdecimal() and len(target) < 4:
            return max(1, int(target))
        return 1


def check_member(m: Member) -> None:
    """DiscoveryError for a record no member may hold."""
    if not isinstance(m.id, str) or not 0 < len(m.id) <= _MAX_ID:
        raise E.DiscoveryError(f"a member id is 1..{_MAX_ID} characters")
    if not isinstance(m.host, str) or not 0 < len(m.host) <= _MAX_HOST:
        raise E.DiscoveryError("a member's host is 1..255 characters")
    if type(m.port) is not int or not 0 < m.port <= 0xFFFF:
        raise E.DiscoveryError("a member's port is 1..65535")
    if not isinstance(m.key, bytes) or len(m.key) != 32:
        raise E.DiscoveryError("a member's key is 32 bytes")
    if type(m.incarnation) is not int or not 0 <= m.incarnation < _U63:
        raise E.DiscoveryError("an incarnation is an int in 0..2**63-1")


def _wire(m: Member) -> list[object]:
    return [m.id, m.host, m.port, m.key, m.incarnation, int(m.state)]


def pack_record(m: Member, accuser: str | None, version: int) -> bytes:
    """The msgpack of one record in ``version``'s form (the accuser only in version 2, and
    only on a suspect record): what a message's records are assembled from, and what
    the piggyback budget counts."""
    fields = _wire(m)
    if version >= 2:
        fields.append(accuser if m.state is MemberState.SUSPECT else None)
    return encode_body(fields)


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def encode_message(
    version: int,
    kind: int,
    sender: Member,
    seq: int,
    target: str | None,
    records: list[bytes],
) -> bytes:
    """The frame of one message; ``records`` packed by :func:`pack_record` in the same
    ``version``. :class:`~dtp.messaging.errors.PayloadTooLarge` past MAX_MESSAGE."""
    sender_fields = _wire(sender) + ([None] if version >= 2 else [])
    head = encode_body([version, kind, sender_fields, seq, target])
    # the same bytes as packing the six fields at once: the five packed above, after
    # their array header, then the records' array (0x95 -> 0x96: five fields -> six)
    body = b"".join((b"\x96", head[1:], _array_header(len(records)), *records))
    if len(body) > MAX_MESSAGE:
        raise E.PayloadTooLarge(f"membership message of {len(body)} bytes")
    return len(body).to_bytes(4, "big") + body


def _record(fields: Any, version: int) -> tuple[Member, str | None]:
    width = _RECORD_FIELDS[version]
    if not (isinstance(fields, list) and len(fields) == width):
        raise E.MalformedMessage(
            "a member record is [id, host, port, key, incarnation, state"
            + (", accuser]" if version >= 2 else "]")
        )
    member_id, host, port, key, incarnation, state = fields[:6]
    if type(state) is not int or not 0 <= state <= 3:
        raise E.MalformedMessage("a member's state is 0..3")
    m = Member(member_id, host, port, key, incarnation, MemberState(state))
    try:
        check_member(m)
    except E.DiscoveryError as exc:
        raise E.MalformedMessage(str(exc)) from None
    accuser = fields[6] if version >= 2 else None
    if accuser is not None:
        if m.state is not MemberState.SUSPECT:
            raise E.MalformedMessage("only a suspect record names an accuser")
        if not isinstance(accuser, str) or not 0 < len(accuser) <= _MAX_ID:
            raise E.MalformedMessage(f"an accuser is a member id of 1..{_MAX_ID} characters")
    return m, accuser


def decode_message(data: bytes, speaks: int = VERSION) -> Message:
    """Check and decode one message (a frame's body) of a version up to ``speaks``:
    :class:`~dtp.messaging.errors.MalformedMessage` for anything else (a member of
    version 1 refused every other version as not a membership message)."""
    if len(data) > MAX_MESSAGE:
        raise E.MalformedMessage("membership message too large")
    fields: Any = decode_body(data)
    if not (isinstance(fields, list) and len(fields) == 6 and type(fields[0]) is int):
        raise E.MalformedMessage("not a membership message")
    version = fields[0]
    if not 1 <= version <= speaks:
        raise E.MalformedMessage(
            f"membership wire version {version} is not spoken here (1..{speaks})"
        )
    kind, sender, seq, target, records = fields[1:]
    if not (
        type(kind) is int
        and PING <= kind <= _LAST_KIND[version]
        and type(seq) is int
        and 0 <= seq < _U63
        and (target is None or isinstance(target, str))
        and isinstance(records, list)
    ):
        raise E.MalformedMessage("not a membership message")
    sender_record, _ = _record(sender, version)
    if sender_record.state is not MemberState.ALIVE and kind != NOTICE:
        raise E.MalformedMessage("only a NOTICE comes from a member that is not alive")
    return Message(
        version, kind, sender_record, seq, target, [_record(r, version) for r in records]
    )
