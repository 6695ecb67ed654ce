"""The C core's Python side: :mod:`dtp.native.core` wraps the cffi extension
``dtp._dtp_core`` (the only module touching its ``lib`` and ``ffi``),
:mod:`dtp.native.types` holds the constants and types both backends share, and
:mod:`dtp.native.reference` is the pure-Python twin of every C entry point
(``DTP_PUREPYTHON=1`` selects it)."""
