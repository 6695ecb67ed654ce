"""The one place the strategies import hypothesis, with the error a user without it reads."""

from __future__ import annotations

try:
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "dtp.testing's strategies and state machines need hypothesis: "
        "pip install 'dtp[testing]' (or hypothesis itself)"
    ) from exc

__all__ = ["st"]
