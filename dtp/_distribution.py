"""The name pip installs this package under: ``pip install dtp-sui``, ``import dtp``.

The import package and the ``dtp`` command keep the protocol's name; the distribution
on a package index cannot, as ``dtp`` there is another project's. pyproject.toml's
``name`` says it for the build; this is the copy the code reads (the installed
version's metadata, the install command a missing extra's error gives), and
tests/project/test_packaging.py holds the two together.
"""

from __future__ import annotations

from typing import Final

__all__ = ["NAME"]

#: the distribution's name, as pyproject.toml gives it and ``importlib.metadata`` finds it
NAME: Final = "dtp-sui"
