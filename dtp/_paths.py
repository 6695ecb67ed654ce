"""Where DTP keeps its files by default: the user's data directory (XDG base directories)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["data_home"]


def data_home(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_DATA_HOME``, or ``~/.local/share`` when it is unset, empty or relative (as
    the XDG base directory spec says). DTP's files go in its ``dtp`` directory: the
    identity, the embedded ledger, the ``dtp deploy`` records."""
    base = (os.environ if env is None else env).get("XDG_DATA_HOME", "")
    return Path(base) if base and os.path.isabs(base) else Path.home() / ".local" / "share"
