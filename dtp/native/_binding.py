"""The C core's extension, loaded once: ``ffi`` and ``lib`` (None under
``DTP_PUREPYTHON=1`` without a built core), and the two helpers every wrapper module of
``dtp.native`` uses to call it. A module of its own so that the wrappers (core.py,
_ham.py, _noise.py, _datagrams.py, _udpio.py) import it and never each other."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from dtp.errors import error_for

PUREPYTHON = os.environ.get("DTP_PUREPYTHON") == "1"


def _load_extension() -> tuple[Any, Any] | None:
    path = os.environ.get("DTP_CORE_LIB")
    if path and not os.path.exists(path):
        raise ImportError(f"DTP_CORE_LIB={path!r} does not exist")
    try:
        if path:
            spec = importlib.util.spec_from_file_location("dtp._dtp_core", path)
            if spec is None or spec.loader is None:
                raise ImportError(f"DTP_CORE_LIB={path!r} is not a loadable extension")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module("dtp._dtp_core")
    except ImportError:
        if PUREPYTHON:
            return None
        raise ImportError(
            "DTP's C core (dtp._dtp_core) is not built: install the package with "
            "'pip install -e .' (needs gcc and libssl-dev), or set DTP_PUREPYTHON=1 "
            "to use the pure-Python core."
        ) from None
    return module.ffi, module.lib


_ext = _load_extension()
HAVE_NATIVE = _ext is not None
if _ext is not None:
    ffi, lib = _ext
else:  # pragma: no cover - only without a built extension
    ffi = lib = None


def _check(rc: int, *, remote: bool | None = None, context: str = "") -> int:
    if rc < 0:
        raise error_for(rc, remote=remote, context=context)
    return rc


def _from(data: bytes | bytearray | memoryview) -> Any:
    """``data``'s bytes for a C call. Its ``len()`` is the size in bytes: take lengths
    from it, not from ``data`` (an ``array('I')`` or a memoryview of another format has
    fewer items than bytes). It holds an export of ``data`` while it lives: drop it
    (``del``) before raising, or a caller's bytearray cannot be resized in its except
    clause (the traceback keeps the frame's locals)."""
    return ffi.from_buffer("uint8_t[]", data)
