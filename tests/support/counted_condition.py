"""A condition whose ``notify_all`` calls are counted: how tests show a wake-up made
only when a thread waits (the receipt writer, the receipt store, LocalLedger)."""

from __future__ import annotations

import threading


class CountedCondition:
    """``cond`` with its ``notify_all`` calls counted in :attr:`notified`; every other
    use passes through."""

    def __init__(self, cond: threading.Condition) -> None:
        self._cond = cond
        self.notified = 0

    def notify_all(self) -> None:
        self.notified += 1
        self._cond.notify_all()

    def __enter__(self) -> bool:
        return self._cond.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._cond.__exit__(*exc)

    def __getattr__(self, name: str) -> object:
        return getattr(self._cond, name)
