"""The one place the strategies import hypothesis, with the error a user without it reads
(:class:`~dtp.errors.MissingExtra` naming the ``testing`` extra)."""

from __future__ import annotations

from dtp._extras import missing

try:
    from hypothesis import strategies as st
except ImportError as exc:
    raise missing("testing", "dtp.testing.strategies", exc) from None

__all__ = ["st"]
