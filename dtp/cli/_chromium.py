"""Headless Chromium driven over the DevTools protocol: the demo's browser step
(``dtp demo``) and the tests that need a real browser (tests/support/browser.py) load
pages with it. It needs Debian's ``chromium`` (scripts/bootstrap.sh installs it).

    with Chromium() as browser:
        page = browser.new_page()
        page.goto("http://127.0.0.1:8765/")
        page.wait_for("document.body.dataset.messages === '1'")
        page.screenshot(path)

Chromium runs with the flags this machine needs (no sandbox as root, no GPU, and no
background networking: the network is closed and its attempts only fail), in a fresh
profile that is deleted afterwards, in a process group of its own that :meth:`close`
ends whole (its renderer and helper processes with it). It listens for the protocol on
a port it picks itself and writes to ``DevToolsActivePort`` in the profile; each command
is a JSON message over that WebSocket (``websockets``' blocking client), its answer
matched by ``id``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dtp._extras import missing

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
    "--window-size=900,700",
]


def chromium_path() -> str | None:
    """The Chromium binary (``$DTP_CHROMIUM``, else ``chromium`` on the PATH), or None."""
    return os.environ.get("DTP_CHROMIUM") or shutil.which("chromium")


# Chromium's lock socket is $TMPDIR/.org.chromium.Chromium.XXXXXX/SingletonSocket, and a
# socket's path holds 107 bytes: under a longer temporary directory it refuses to start
# ("Socket path too long")
_SOCKET_PATH = len("/.org.chromium.Chromium.XXXXXX/SingletonSocket")
_SUN_PATH = 107


def _environment() -> dict[str, str]:
    """Chromium's environment: this one, with a temporary directory short enough for
    its lock socket (/tmp where the process's own is too long)."""
    env = dict(os.environ)
    if len(os.fsencode(tempfile.gettempdir())) + _SOCKET_PATH > _SUN_PATH:
        env["TMPDIR"] = "/tmp"
    return env


class BrowserError(RuntimeError):
    """Chromium did not start, answered a command with an error, or did not answer in
    time."""


class Chromium:
    """One headless Chromium process and its DevTools connection (``timeout``: seconds
    for it to start, and for each command's answer; ``flags``: more command-line flags,
    after :data:`FLAGS`)."""

    def __init__(self, timeout: float = 30.0, flags: Sequence[str] = ()) -> None:
        binary = chromium_path()
        if binary is None:
            raise BrowserError("chromium is not installed (apt-get install -y chromium)")
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="dtp-chromium-")
        self._log = open(Path(self._profile) / "chromium.log", "wb")  # noqa: SIM115
        self._next_id = 0
        self._ws: ClientConnection | None = None
        try:
            self.process = subprocess.Popen(
                [binary, *FLAGS, *flags, f"--user-data-dir={self._profile}", "about:blank"],
                stdout=self._log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_environment(),
                # a group of its own: close() ends the renderers and helpers with it, and
                # a terminal's Ctrl-C reaches only the program, which closes it
                start_new_session=True,
            )
        except OSError as exc:
            self._log.close()
            shutil.rmtree(self._profile, ignore_errors=True)
            raise BrowserError(f"chromium could not be started: {exc}") from exc
        try:
            # (imported here: the DevTools client is dtp[gun]'s websockets, and a base
            # install imports this module without it)
            try:
                from websockets.sync.client import connect
            except ImportError as exc:
                raise missing("gun", "driving headless Chromium", exc) from exc
            self._ws = connect(
                self._devtools_url(), max_size=64 << 20, open_timeout=timeout
            ).__enter__()
        except BaseException:
            self.close()
            raise

    def _devtools_url(self) -> str:
        marker = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrowserError(f"chromium exited at start: {self.log_tail()}")
            with contextlib.suppress(OSError):
                lines = marker.read_text().split()
                if len(lines) >= 2:
                    return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            time.sleep(0.05)
        raise BrowserError(f"chromium did not open its DevTools port: {self.log_tail()}")

    def log_tail(self, size: int = 2000) -> str:
        """The end of Chromium's own output."""
        with contextlib.suppress(ValueError):  # (closed)
            self._log.flush()
        try:
            return (Path(self._profile) / "chromium.log").read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> Any:
        """Run one DevTools command and return its result (events on the way are
        dropped: callers poll the page instead)."""
        if self._ws is None:
            raise BrowserError(f"{method}: the browser is closed")
        self._next_id += 1
        msg_id = self._next_id
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self._ws.send(json.dumps(message))
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"no answer to {method} in {self.timeout} s")
            try:
                answer = json.loads(self._ws.recv(timeout=left))
            except TimeoutError:
                continue
            if answer.get("id") != msg_id:
                continue
            if "error" in answer:
                raise BrowserError(f"{method}: {answer['error']}")
            return answer.get("result", {})

    def new_page(self) -> Page:
        """A new tab, attached."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        page = Page(self, session)
        page.send("Page.enable")
        page.send("Runtime.enable")
        return page

    def close(self) -> None:
        """End the browser (its whole process group) and delete its profile
        (idempotent)."""
        if self._ws is not None:
            # asked to close, it ends its renderers and removes its temporary files (a
            # SIGTERM left shared-memory files in the temporary directory)
            with contextlib.suppress(Exception):
                self._ws.send(json.dumps({"id": 0, "method": "Browser.close"}))
                self.process.wait(5)
            with contextlib.suppress(Exception):
                self._ws.close()
            self._ws = None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        # helpers that outlived the browser (a crash handler, a renderer being torn down)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Page:
    """One tab: navigate, evaluate JavaScript, wait for a condition, screenshot."""

    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser = browser
        self.session = session

    def send(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return self.browser.send(method, params, self.session)

    def goto(self, url: str) -> None:
        """Load ``url`` and wait until its document has loaded."""
        self.send("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete'")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 20.0) -> Any:
        """Poll ``expression`` until it is truthy; its value (BrowserError on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"still false after {timeout} s: {expression}")
            time.sleep(0.05)

    def screenshot(self, path: str | os.PathLike[str]) -> Path:
        """A PNG of the page, written to ``path``."""
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        out = Path(path)
        out.write_bytes(base64.b64decode(data))
        return out


__all__ = ["FLAGS", "BrowserError", "Chromium", "Page", "chromium_path"]
