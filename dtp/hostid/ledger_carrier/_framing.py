"""The ledger carrier's payload framing (docs/protocol.md §7): the payload kinds, the
fragment header, and :func:`frame_record`, which cuts a record into payloads."""

from __future__ import annotations

import struct

from dtp.ledger._objects import MAX_DATA_LENGTH

#: Largest ``data`` one ``pipe::send`` accepts (``inner_pipe::MAX_DATA_LENGTH``).
MAX_PIPE_DATA = MAX_DATA_LENGTH
KIND_RECORD = 0x00
KIND_FRAGMENT = 0x01
KIND_SYNC = 0x02
_FRAG_HEADER = struct.Struct("<BIBB")  # kind, id, index, count
_MAX_FRAGMENTS = 255
#: The largest DTP record (docs/protocol.md §2): a 12-byte header, then at most 16 KiB
#: of plaintext and its 16-byte tag (``max_record`` of the carriers under connections).
MAX_DTP_RECORD = 12 + 16_384 + 16


def frame_record(record: bytes, fragment_id: int, limit: int = MAX_PIPE_DATA) -> list[bytes]:
    """The payloads that carry ``record``: one RECORD payload when it fits in ``limit``
    bytes, otherwise FRAGMENT payloads with id ``fragment_id`` (mod 2**32)."""
    if len(record) + 1 <= limit:
        return [bytes([KIND_RECORD]) + record]
    chunk = limit - _FRAG_HEADER.size
    count = -(-len(record) // chunk)
    if count > _MAX_FRAGMENTS:
        raise ValueError(f"a {len(record)}-byte record needs more than {_MAX_FRAGMENTS} payloads")
    fid = fragment_id & 0xFFFFFFFF
    return [
        _FRAG_HEADER.pack(KIND_FRAGMENT, fid, i, count) + record[i * chunk : (i + 1) * chunk]
        for i in range(count)
    ]
