"""The old path of :func:`~dtp.errors.finite_float` and :func:`~dtp.errors.shown`, which
live in :mod:`dtp.errors` now, for type checkers only: at run time ``dtp.MOVED`` makes
``dtp._checks`` the module ``dtp.errors`` itself, and this file is never run. Type
checkers see files, not import hooks."""

# still imported by modules moving in other stage-1 branches; removed when they repoint
from dtp.errors import finite_float, shown

__all__ = ["finite_float", "shown"]
