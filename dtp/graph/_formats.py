"""Graph files of format 1, migrated to format 2 when they are opened: docs/graph.md,
"Format versions", says what changed, what is respelled and what is kept as it was.

A format 1 log is replayed update by update with every value *respelled* -- read, then
written again by :func:`~dtp.graph.values.encode_value` -- and merged under the new
rules; the table is then written back as the new log, with the format, in one
transaction: a failure leaves the file of format 1, and the next open migrates it
again. Respelling is a function of the soul and the stored bytes alone, so replicas
that held the same update hold the same one after migrating.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dtp.errors import RemoteProtocolError
from dtp.graph import namespace
from dtp.graph.values import GraphValueError, decode_value, encode_value
from dtp.native.core import decode_ham_batch, encode_ham_batch
from dtp.native.reference._limits import HAM_BATCH_VERSION
from dtp.native.types import HamUpdate

logger = logging.getLogger(__name__)

#: The HAM batch version a format 1 log holds (laid out as version 2 batches are: only
#: the order of values at a tie differs).
FORMAT1_BATCH_VERSION = 1


@dataclass
class Migration:
    """What migrating a format 1 log did, update by update."""

    updates: int = 0
    """Updates read from the log."""
    respelled: int = 0
    """Values whose stored bytes changed (``1.0`` to ``1``, ``1e-06`` to ``0.000001``)."""
    signed_kept: int = 0
    """User-space values kept as they were (their signature covers the old bytes) that
    would otherwise have been respelled."""
    not_gun_kept: int = 0
    """Values a Gun peer cannot hold, kept as they were (arrays, objects, big ints)."""


def respell(soul: bytes, value: bytes, report: Migration) -> bytes:
    """The format 2 bytes of a value stored by format 1 (see the module docstring)."""
    try:
        stored = namespace.open_envelope(value) if namespace.is_user_space(soul) else value
        text = encode_value(decode_value(stored))
    except (RemoteProtocolError, GraphValueError):
        report.not_gun_kept += 1
        return value
    if text == stored:
        return value
    if namespace.is_user_space(soul):
        report.signed_kept += 1
        return value
    report.respelled += 1
    return text


def migrate_batch(batch: bytes, report: Migration) -> bytes:
    """A batch of a format 1 log as a version 2 batch, every value respelled
    (RemoteProtocolError when it is not a valid version 1 batch)."""
    if batch[:1] != bytes([FORMAT1_BATCH_VERSION]):
        raise RemoteProtocolError("a log entry of a format 1 graph is not a version 1 batch")
    updates = decode_ham_batch(bytes([HAM_BATCH_VERSION]) + batch[1:])
    report.updates += len(updates)
    return encode_ham_batch(
        [HamUpdate(s, f, state, respell(s, v, report)) for s, f, state, v in updates]
    )


__all__ = ["FORMAT1_BATCH_VERSION", "Migration", "migrate_batch", "respell"]
