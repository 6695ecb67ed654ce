"""Whether a file a setting names can be created where it is named, as far as a look
tells: one wording for ``dtp daemon --check``, the daemon's start and the CLI commands
that write an identity or ledger file."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["not_creatable", "under_a_file"]


def _nearest_existing(path: Path) -> Path | None:
    return next((p for p in path.parents if p.exists()), None)


def under_a_file(path: Path) -> str | None:
    """Why ``path`` cannot be created when its nearest existing parent is not a
    directory (None: it is one). Said before the write, whose own error comes from
    making the missing folders ("File exists: PARENT") and names neither the path nor
    the cause."""
    parent = _nearest_existing(path)
    if parent is not None and not parent.is_dir():
        return f"{path} cannot be created: {parent} is not a directory"
    return None


def not_creatable(path: Path) -> str | None:
    """Why ``path`` cannot be created (None: it can, as far as a look tells): its
    nearest existing parent must be a directory this user may write to."""
    why = under_a_file(path)
    if why is not None:
        return why
    parent = _nearest_existing(path)
    if parent is None or not os.access(parent, os.W_OK):
        return f"{path} cannot be created here"
    return None
