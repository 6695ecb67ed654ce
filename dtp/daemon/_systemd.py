"""The service manager's notify protocol (``sd_notify``, systemd.service(5)
``Type=notify``): what the daemon sends and when, docs/daemon.md "Running under
systemd". The watchdog's pings go from the daemon's event loop, so a loop that hangs
stops them and the manager restarts the daemon. Outside a service manager (no
``$NOTIFY_SOCKET``) every call does nothing; a failed send is logged once, never fatal:
the daemon serves on.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

from dtp.daemon._logs import kv

__all__ = ["Notifier"]

logger = logging.getLogger("dtp.daemon")


class Notifier:
    """Tells the service manager how the daemon is doing (see the module docs)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        """Where messages go (None: not under a service manager)."""
        self.watchdog: float | None = _watchdog(env)
        """Seconds between two ``WATCHDOG=1`` (half the manager's), or None."""
        self._sock: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send one message of ``lines``; whether it went."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                logger.warning(
                    "cannot notify the service manager", extra=kv(error=str(exc), lines=lines)
                )
            return False
        if self._failed:
            self._failed = False
            logger.info("the service manager is notified again")
        return True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        # (MONOTONIC_USEC: systemd 253's Type=notify-reload matches the reload by it)
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def reloaded(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def stopping(self, status: str = "draining") -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def ping(self) -> bool:
        """Send ``WATCHDOG=1`` (when the manager watches); whether it went. The daemon's
        loop calls it every :attr:`watchdog` seconds."""
        return self.watchdog is not None and self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _address(value: str) -> str | None:
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]  # (an abstract socket's name)
    return value if value.startswith("/") else None


def _watchdog(env: Mapping[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None  # (meant for another process: the one that started us)
    return int(usec) / 2_000_000
