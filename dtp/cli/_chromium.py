"""Headless Chromium driven over the DevTools protocol: the demo's browser step
(``dtp demo``) and the tests that need a real browser (tests/support/browser.py) load
pages with it. It needs Debian's ``chromium`` (scripts/bootstrap.sh installs it).

    with Chromium() as browser:
        page = browser.new_page()
        page.goto("http://127.0.0.1:8765/", ready="document.body.dataset.started")
        page.wait_for("document.body.dataset.messages === '1'")
        page.screenshot(path)

:meth:`Page.goto` loads the page again where its load lost a fetch: Chromium ends every
request in flight (``net::ERR_NETWORK_CHANGED``) when an interface or address of the host
comes or goes, and a module lost so leaves a page that never starts. It watches the
DevTools Network domain's events for that load until the page says it is ready.

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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

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
        #: the Network events of the sessions being watched (Page.goto), by session
        self._events: dict[str, list[dict[str, Any]]] = {}
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
            # (imported here: the DevTools client is dtp-sui[gun]'s websockets, and a base
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
        dropped, but for the Network events of a page loading: callers poll the page)."""
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
            if "id" not in answer:
                watched = self._events.get(answer.get("sessionId", ""))
                if watched is not None and answer.get("method", "").startswith("Network."):
                    watched.append(answer)
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


#: Loads of a page before :meth:`Page.goto` gives up on it.
LOAD_TRIES = 5
#: What a page is ready at unless told otherwise: its document and the scripts it
#: loads as it parses (modules and their imports) loaded and run.
LOADED = "document.readyState === 'complete'"
#: The requests that make up a page (DevTools resource types): one of these lost leaves
#: the page half loaded. The page's own calls (fetch, XHR, WebSocket, EventSource ...)
#: are its business: loading it again would repeat what they did.
_PAGE_PARTS = frozenset(
    {"Document", "Script", "Stylesheet", "Font", "Image", "Manifest", "Media", "TextTrack"}
)


class LoadFailed(BrowserError):
    """A page did not load: every load lost a fetch or failed, or one did not get ready
    in time (the message says what happened to each load)."""


class _Load:
    """One load's requests, from the Network events of its navigation (``loader``): the
    fetches it lost, and those not answered yet."""

    def __init__(self, url: str, loader: str | None) -> None:
        parts = urlsplit(url)
        self.origin = (parts.scheme, parts.netloc)
        self.loader = loader
        self.requests: dict[str, tuple[str, str]] = {}  # id: (type, url)
        self.open: set[str] = set()
        self.lost: list[str] = []

    def note(self, event: dict[str, Any]) -> None:
        method, params = event["method"], event.get("params", {})
        rid = params.get("requestId", "")
        if method == "Network.requestWillBeSent":
            if self.loader is not None and params.get("loaderId") != self.loader:
                return  # (the page before, or another frame's document)
            url = params.get("request", {}).get("url", "")
            kind = params.get("type", "Other")
            if kind not in _PAGE_PARTS or url.endswith("/favicon.ico"):
                return  # (the icon: the browser asks for it by itself)
            self.requests[rid] = (kind, url)
            self.open.add(rid)
        elif rid not in self.requests:
            return
        elif method == "Network.responseReceived":
            status = params.get("response", {}).get("status", 0)
            kind, url = self.requests[rid]
            if status >= 400 and self._own(url):
                self.open.discard(rid)  # (answered: not also "not answered yet")
                self.lost.append(f"{status} {kind} {url}")
        elif method == "Network.loadingFinished":
            self.open.discard(rid)
        elif method == "Network.loadingFailed":
            self.open.discard(rid)
            kind, url = self.requests[rid]
            error = params.get("errorText", "")
            # (a request the page itself cancelled is no loss; one the network change
            # ended is, wherever it went)
            if not params.get("canceled") and (self._own(url) or "ERR_NETWORK_CHANGED" in error):
                self.lost.append(f"{error} {kind} {url}")

    def _own(self, url: str) -> bool:
        parts = urlsplit(url)
        return (parts.scheme, parts.netloc) == self.origin

    def report(self) -> str:
        waiting = sorted(self.requests[rid][1] for rid in self.open)
        return (
            f"{len(self.requests)} requests; lost: {self.lost or 'none'}; "
            f"not answered yet: {waiting or 'none'}"
        )


class Page:
    """One tab: navigate, evaluate JavaScript, wait for a condition, screenshot."""

    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser = browser
        self.session = session

    def send(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return self.browser.send(method, params, self.session)

    def goto(
        self,
        url: str,
        ready: str = LOADED,
        *,
        failed: str | None = None,
        timeout: float = 20.0,
        tries: int = LOAD_TRIES,
        report: Callable[[], str] | None = None,
    ) -> None:
        """Load ``url`` and wait until the JavaScript ``ready`` is truthy in it: the page
        has loaded (by default its document and its scripts), before what it goes on to
        do. A load that lost its navigation or a part of the page (a document, script,
        stylesheet, font or image of the page's own origin that failed or answered 400
        or more, or any that a network change ended; never the page's own fetch, XHR or
        socket calls, which a new load would repeat) before then is loaded again, up to
        ``tries`` loads; so is one where the JavaScript ``failed``
        is truthy, the page's own word that it could not start (the lost fetches are
        then left to it). A load that is neither ready nor lost in ``timeout`` seconds is
        not loaded again. :class:`LoadFailed` says what each load came to (with
        ``report()``'s text, for what the caller saw of it)."""
        path = urlsplit(url).path or url
        failures: list[str] = []
        for _ in range(max(1, tries)):
            outcome = self._load(url, path, ready, failed, timeout, again=bool(failures))
            if outcome is None:
                return
            why, lost = outcome
            if report is not None:
                why += f"\n{report()}"
            failures.append(why)
            if not lost:
                break  # (a wait that long is no lost fetch)
        raise LoadFailed("\n".join(f"(load {i}) {why}" for i, why in enumerate(failures, 1)))

    def _load(
        self, url: str, path: str, ready: str, failed: str | None, timeout: float, again: bool
    ) -> tuple[str, bool] | None:
        """One load of ``url``: None once it is ready, else what went wrong and whether
        the load was lost (False: it did not get ready in time)."""
        if again:
            # (from a blank page: the same address with a fragment would only scroll)
            self.send("Page.navigate", {"url": "about:blank"})
        events = self.browser._events.setdefault(self.session, [])
        events.clear()
        self.send("Network.enable")
        try:
            navigated = self.send("Page.navigate", {"url": url})
            if navigated.get("errorText"):
                return f"{path} did not load: {navigated['errorText']}", True
            load = _Load(url, navigated.get("loaderId"))
            deadline = time.monotonic() + timeout
            while True:
                is_ready, threw = self._ask(ready)
                said = self._ask(failed)[0] if failed is not None and not is_ready else None
                for event in events:
                    load.note(event)
                events.clear()
                # A page's own sign of being ready wins over what it lost by then (that
                # may have come after the sign: the page's business). The default sign
                # does not: a document completes although a module of it failed.
                if is_ready and (ready != LOADED or not load.lost):
                    return None
                if said:
                    return f"{path} failed: {said}\n{self._state(load)}", True
                if load.lost and failed is None:
                    return f"{path} lost a fetch\n{self._state(load)}", True
                if time.monotonic() > deadline:
                    return (
                        f"{path} did not start: still false after {timeout} s: {ready}"
                        f"{f' (it threw {threw})' if threw else ''}\n{self._state(load)}",
                        False,
                    )
                time.sleep(0.05)
        finally:
            # (what the page fetches once ready is its own business: not watched)
            self.browser._events.pop(self.session, None)
            with contextlib.suppress(BrowserError):
                self.send("Network.disable")

    def _ask(self, expression: str) -> tuple[Any, str | None]:
        """``expression``'s value, or None and what it threw: the document it reads can
        still be parsing (an element not there yet)."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            return None, details.get("exception", {}).get("description") or details.get("text")
        return result.get("result", {}).get("value"), None

    def _state(self, load: _Load) -> str:
        try:
            seen = self.evaluate("({href: location.href, state: document.readyState})")
        except BrowserError as exc:
            seen = {"error": str(exc)}
        return f"the page: {json.dumps(seen)}; {load.report()}"

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


__all__ = [
    "FLAGS",
    "LOADED",
    "LOAD_TRIES",
    "BrowserError",
    "Chromium",
    "LoadFailed",
    "Page",
    "chromium_path",
]
