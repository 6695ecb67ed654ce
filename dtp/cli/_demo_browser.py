"""The browser step of ``dtp demo``: a gun.js page in headless Chromium and a Python
peer edit the same graph -- a chat, and a shared note both type into at once.

:func:`run_browser_step` starts, in a temporary directory: a graph node (its SQLite
file) with the Gun endpoint serving the demo chat page (:mod:`dtp.graph.gun`) and DTP
graph sync beside it; a Python peer, a graph of its own, following the node live over
DTP; and headless Chromium (:mod:`dtp.cli._chromium`) on the page. The page writes a
message through gun.js, the Python peer receives it over DTP sync and writes one back,
and the page shows it live. Then both type into the page's shared note at the same
time -- a collaborative text (:mod:`dtp.graph.collab`: Yjs in the page, pycrdt in the
Python peer, records in the graph) -- and both end with the same text, holding what
each typed. Then the page's address is printed for a person to open,
and the page stays up for them (:func:`wait_for_person`): what they write, the Python
peer prints and answers.

What the step needs beyond dtp -- gun's browser files, from the ``gun`` npm package
(node and npm fetch it; ``bash scripts/demo.sh`` installs them), and Debian's
``chromium`` -- it checks first. Without gun.js the page cannot run: the step says so
and is skipped. Without chromium the node and the Python peer still run, for a person
to open the page. The shared note also needs Yjs's modules (the ``yjs`` npm package:
``tools/yjs/run.sh --install``) and the ``collab`` extra (pycrdt); without them the
note is skipped, saying which is missing, and the chat goes on.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from dtp import _extras
from dtp.cli._chromium import BrowserError, Chromium, Page, chromium_path
from dtp.cli._person import PERSON_WAIT, SHORT_WAIT, interactive, wait_for_person
from dtp.errors import DTPError
from dtp.graph._store import Graph
from dtp.graph.gun._server import find_gun_dir, serve_in_thread
from dtp.graph.gun._yjs import find_yjs_dir
from dtp.graph.sync import GraphServer, connect
from dtp.graph.values import link_soul
from dtp.identity.keys import HostIdentity

__all__ = [
    "PERSON_WAIT",
    "ROOM",
    "SHORT_WAIT",
    "BrowserStepResult",
    "interactive",
    "run_browser_step",
    "wait_for_person",
]

ROOM = "dtp-demo/chat"
"""The chat's node: the demo page's default room (dtp/graph/gun/demo/demo.js)."""
EXCHANGE_TIMEOUT = 20.0
"""Seconds each hop of the exchange may take before the step fails."""
PAGE_TEXT = "hello from a browser (gun.js in headless Chromium)"
PYTHON_TEXT = "hello back from a Python peer, over DTP sync"
NOTE = ("dtp-demo/note", "body")
"""The shared note: a collaborative text in this node's field (dtp/graph/gun/demo/collab.mjs)."""
NOTE_START = "page: \npython: "
"""What the Python peer writes first: a line for each editor to type on."""
PAGE_NOTE = "typed in the page"
PYTHON_NOTE = "typed by the Python peer"
NOTE_END = f"page: {PAGE_NOTE}\npython: {PYTHON_NOTE}"
"""The note once both typed: each on its own line, every keystroke in its place."""
_TOOL = Path(__file__).resolve().parents[2] / "tools" / "gun-peer" / "run.sh"


@dataclass
class BrowserStepResult:
    """What the step did, for the demo's checks and summary (and the tests)."""

    url: str | None = None
    """The page's address (None: the step was skipped)."""
    skipped: str | None = None
    """Why the step did not run at all (what is missing), or None."""
    headless: str | None = None
    """Why the headless browser's part did not run (None: it ran)."""
    from_page: dict[str, object] | None = None
    """The page's message as the Python peer received it over DTP sync."""
    page_shows: list[tuple[str, str]] = field(default_factory=list)
    """(who, text) of each message the page lists, in its order, after the reply."""
    python_sees: list[tuple[str, str]] = field(default_factory=list)
    """The same, as the Python peer's replica holds them (in time order)."""
    stored: list[str] = field(default_factory=list)
    """The texts in the node's SQLite file, read back after the node closed."""
    to_python_seconds: float = 0.0
    to_page_seconds: float = 0.0
    screenshot: Path | None = None
    from_people: list[tuple[str, str]] = field(default_factory=list)
    """(who, text) of the messages people wrote while the page stayed up."""
    waited: str = ""
    """How the wait for a person ended: ``"enter"``, ``"time"`` or ``""`` (no wait)."""
    note_skipped: str | None = None
    """Why the shared note was not typed into (what is missing), or None."""
    note_page: str | None = None
    """The shared note's text as the page shows it, once both typed."""
    note_python: str | None = None
    """The same, as the Python peer's replica holds it."""
    note_seconds: float = 0.0

    @property
    def note_merged(self) -> bool:
        """The page and the Python peer hold one text, with what each typed in it."""
        return self.note_page == self.note_python == NOTE_END

    @property
    def exchanged(self) -> bool:
        """The page's message reached the Python peer, and its reply the page."""
        texts = [text for _, text in self.page_shows]
        return (
            self.from_page is not None
            and self.from_page.get("text") == PAGE_TEXT
            and PAGE_TEXT in texts
            and PYTHON_TEXT in texts
        )


def _messages(graph: Graph) -> dict[str, dict[str, object]]:
    """The chat's messages in ``graph``: field name -> the node it links to."""
    out: dict[str, dict[str, object]] = {}
    for key, value in (graph.get(ROOM) or {}).items():
        soul = link_soul(value)
        node = graph.get(soul) if soul else None
        if node and isinstance(node.get("text"), str):
            out[key] = dict(node)
    return out


def _in_order(messages: dict[str, dict[str, object]]) -> list[tuple[str, str]]:
    """(who, text) by time, then by key: the page's own order."""

    def at(item: tuple[str, dict[str, object]]) -> tuple[float, str]:
        value = item[1].get("at")
        return (float(value) if isinstance(value, int | float) else 0.0, item[0])

    return [
        (str(m.get("who", "someone")), str(m["text"])) for _, m in sorted(messages.items(), key=at)
    ]


def _quote(text: str, limit: int = 120) -> str:
    """Text someone typed, safe to print: JSON-quoted (no terminal control codes)."""
    if len(text) > limit:
        text = text[:limit] + "…"
    return json.dumps(text, ensure_ascii=False)


def _key(at_ms: int, tag: str) -> str:
    """A message's field name as the page makes one: ``<ISO time>-<tag>``."""
    when = datetime.fromtimestamp(at_ms / 1000, UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at_ms % 1000:03d}Z-{tag}"


def _write(graph: Graph, tag: str, text: str) -> str:
    """The Python peer writes a message as the page does; its field name."""
    at = int(time.time() * 1000)
    key = _key(at, tag)
    graph.put(ROOM, {key: {"who": "python", "text": text, "at": at}})
    return key


def _wait_until(what: str, test: Callable[[], object], timeout: float = EXCHANGE_TIMEOUT) -> float:
    """Poll ``test`` until it is true; the seconds it took (RuntimeError on timeout)."""
    start = time.monotonic()
    while not test():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"the browser step went wrong: {what}, not within {timeout:.0f} s")
        time.sleep(0.02)
    return time.monotonic() - start


def missing_gun() -> str | None:
    """Why the page cannot run here (gun's browser files are missing), or None."""
    if find_gun_dir() is not None:
        return None
    if shutil.which("node") is None or shutil.which("npm") is None:
        return (
            "node and npm are not installed: the page runs gun.js, from the gun npm package "
            "(bash scripts/demo.sh installs them on Debian; or apt-get install nodejs npm)"
        )
    how = (
        f"{_TOOL.relative_to(_TOOL.parents[2])} --install" if _TOOL.is_file() else "npm install gun"
    )
    return f"the gun npm package is not installed: the page runs gun.js ({how} fetches it)"


class _Follower:
    """The Python peer: a graph of its own in memory, synced live with the node over
    DTP in a thread until :meth:`close`."""

    def __init__(self, address: tuple[str, int], key: bytes) -> None:
        self.graph = Graph(None)
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(address, key), name="demo-python-peer", daemon=True
        )
        self._thread.start()

    def _run(self, address: tuple[str, int], key: bytes) -> None:
        try:
            connect(self.graph, address, server_key=key, until_synced=False, timeout=20)
        except (DTPError, OSError) as exc:
            self.error = exc  # (also how a live session ends when the graph closes)

    def close(self) -> None:
        with contextlib.suppress(DTPError):
            self.graph.close()  # the live session ends within a tick
        self._thread.join(10)


def _page_list(page: Page) -> list[tuple[str, str]]:
    """(who, text) of each message the page lists, in its order (what a reader sees)."""
    rows = page.evaluate(
        "Array.from(document.querySelectorAll('#messages li'))"
        ".map(li => [li.children[0].textContent, li.children[1].textContent])"
    )
    return [(str(who), str(text)) for who, text in rows or []]


def _headless(
    url: str,
    peer: _Follower,
    result: BrowserStepResult,
    say: Callable[[str], None],
    ok: Callable[[str], None],
    screenshots: Path | None,
) -> None:
    """The headless browser's part: the page writes, the Python peer answers."""
    try:
        browser = Chromium()
    except BrowserError as exc:
        result.headless = f"chromium could not start here ({str(exc)[:200]})"
        say(f"{result.headless}: the headless part is skipped")
        return
    with browser:
        page = browser.new_page()
        page.goto(url, ready="document.getElementById('status')?.textContent === 'connected'")
        relay_url = page.evaluate("document.getElementById('peer').textContent")
        say(f"headless Chromium opened the page: gun.js connected to its relay peer {relay_url}")
        page.evaluate(
            "document.getElementById('who').value = 'chromium';"
            f"document.getElementById('text').value = {json.dumps(PAGE_TEXT)};"
            "document.getElementById('send').click()"
        )
        say(f"the page writes (gun.js, over the WebSocket): chromium: {_quote(PAGE_TEXT)}")

        def arrived() -> dict[str, object] | None:
            for message in _messages(peer.graph).values():
                if message.get("text") == PAGE_TEXT:
                    return message
            return None

        result.to_python_seconds = _wait_until(
            "the page's message did not reach the Python peer", arrived
        )
        result.from_page = arrived()
        shown = {k: v for k, v in sorted((result.from_page or {}).items())}
        ok(
            f"the Python peer received it over DTP sync in {result.to_python_seconds:.2f} s: "
            f"{json.dumps(shown, ensure_ascii=False)}"
        )
        _write(peer.graph, "python", PYTHON_TEXT)
        say(f"the Python peer writes back: python: {_quote(PYTHON_TEXT)}")
        result.to_page_seconds = _wait_until(
            "the Python peer's reply did not reach the page",
            lambda: PYTHON_TEXT in page.evaluate("document.getElementById('messages').innerText"),
        )
        result.page_shows = _page_list(page)
        ok(f"the page shows it live, {result.to_page_seconds:.2f} s later; the page lists:")
        for who, text in result.page_shows:
            say(f"    {who}: {_quote(text)}")
        _note(page, peer, result, say, ok)
        if screenshots is not None:
            screenshots.mkdir(parents=True, exist_ok=True)
            result.screenshot = page.screenshot(screenshots / "demo-browser-chat.png")
            say(f"a screenshot of the page: {result.screenshot}")


def missing_note() -> str | None:
    """Why the shared note cannot run here, or None."""
    if not _extras.installed("collab"):
        return "the collab extra is not installed (pip install 'dtp-sui[collab]': pycrdt)"
    if find_yjs_dir() is None:
        return "the yjs npm package is not installed (tools/yjs/run.sh --install fetches it)"
    return None


def _note(
    page: Page,
    peer: _Follower,
    result: BrowserStepResult,
    say: Callable[[str], None],
    ok: Callable[[str], None],
) -> None:
    """The page and the Python peer type into the shared note at once, each on a line of
    its own (the page at the end of the first, the Python peer at the end of the note);
    both end with one text holding every keystroke of each, in its place."""
    result.note_skipped = missing_note()
    if result.note_skipped is not None:
        say(f"the shared note is skipped: {result.note_skipped}")
        return
    _wait_until("the page's shared note did not start", lambda: page.evaluate("!!window.dtpNote"))
    note = peer.graph.text(*NOTE)
    note.insert(0, NOTE_START)
    _wait_until(
        "the note's first lines did not reach the page",
        lambda: page.evaluate("window.dtpNote.value()") == NOTE_START,
    )
    say(
        "the page (Yjs) and the Python peer (pycrdt) type into the shared note at once, "
        "one character a keystroke, each a record of the graph:"
    )
    say(f"    the page types {_quote(PAGE_NOTE)}, the Python peer {_quote(PYTHON_NOTE)}")
    start = time.monotonic()

    def type_python() -> None:
        for ch in PYTHON_NOTE:
            note.append(ch)

    typing = threading.Thread(target=type_python, name="demo-python-typist", daemon=True)
    typing.start()
    page.evaluate(
        f"window.dtpNote.type({json.dumps(PAGE_NOTE)}, window.dtpNote.value().indexOf('\\n'))"
    )
    typing.join(EXCHANGE_TIMEOUT)

    def merged() -> bool:
        result.note_page = str(page.evaluate("window.dtpNote.value()"))
        result.note_python = note.value
        return result.note_merged

    _wait_until("the page and the Python peer did not end with one note", merged)
    result.note_seconds = time.monotonic() - start
    note.close()
    ok(
        f"both show the same note {result.note_seconds:.2f} s after the first keystroke, "
        f"no keystroke lost: {_quote(result.note_page or '')}"
    )


def run_browser_step(
    say: Callable[[str], None],
    ok: Callable[[str], None] | None = None,
    *,
    wait: float | None = None,
    stdin: TextIO | None = None,
    screenshots: str | os.PathLike[str] | None = None,
) -> BrowserStepResult:
    """Run the step (see the module docs), narrating through ``say`` (and ``ok`` for
    what was checked). ``wait``: seconds the page stays up for a person after the
    exchange (None: until Enter on ``stdin``, at most :data:`PERSON_WAIT`, when there is
    one, else :data:`SHORT_WAIT`). ``stdin``: a person's terminal, or None when nobody
    can answer. ``screenshots``: a folder for a PNG of the page (None: none)."""
    tick = ok or say
    result = BrowserStepResult()
    result.skipped = missing_gun()
    if result.skipped is not None:
        say(f"skipped: {result.skipped}; the rest of the demo goes on")
        return result
    if chromium_path() is None:
        result.headless = "chromium is not installed (bash scripts/demo.sh installs it on Debian)"
    shots = Path(screenshots) if screenshots is not None else None
    with tempfile.TemporaryDirectory(prefix="dtp-browser-demo-") as tmp:
        db = Path(tmp) / "node.db"
        relay = Graph(db)
        sync: GraphServer | None = None
        peer: _Follower | None = None
        gun = None
        try:
            sync = GraphServer(relay, ("127.0.0.1", 0), HostIdentity.generate())
            gun = serve_in_thread(relay, "127.0.0.1", 0)
            result.url = gun.url
            say(f"a graph node (SQLite) serves Gun's wire and the demo chat page at {gun.url}")
            say(
                f"it serves DTP graph sync at 127.0.0.1:{sync.address[1]}; a Python peer, "
                "a graph of its own, follows it there live"
            )
            peer = _Follower(sync.address, sync.noise_public_key)
            if result.headless is None:
                _headless(gun.url, peer, result, say, tick, shots)
            else:
                say(f"no headless browser: {result.headless}")
            if result.headless is not None:  # (for a person to read on the page)
                _write(peer.graph, "python", PYTHON_TEXT)
                say(f"the Python peer writes: python: {_quote(PYTHON_TEXT)}")
                result.note_skipped = missing_note()
                if result.note_skipped is None:
                    with peer.graph.text(*NOTE) as note:
                        note.insert(0, NOTE_START + PYTHON_NOTE)
                    say(f"and types into the shared note: {_quote(PYTHON_NOTE)}")
            _wait_until(
                "the node and the Python peer did not converge",
                lambda: _messages(relay) == _messages(peer.graph) and _messages(relay),
            )
            result.python_sees = _in_order(_messages(peer.graph))
            if result.headless is None:
                if not result.exchanged:
                    raise RuntimeError(f"the browser step went wrong: {result}")
                tick(
                    "the node's graph and the Python peer's replica hold the same "
                    f"{len(result.python_sees)} messages: "
                    + "; ".join(f"{who}: {_quote(text, 40)}" for who, text in result.python_sees)
                )
            _person(gun.url, peer, result, say, tick, wait, stdin)
        except RuntimeError as exc:
            if peer is None or peer.error is None:
                raise
            raise RuntimeError(f"{exc} (the Python peer's sync ended: {peer.error!r})") from exc
        finally:
            if peer is not None:
                peer.close()
            if gun is not None:
                gun.close()
            if sync is not None:
                sync.close()
            with contextlib.suppress(DTPError):
                relay.close()
        with Graph(db) as stored:
            result.stored = sorted(str(m["text"]) for m in _messages(stored).values())
    return result


def _person(
    url: str,
    peer: _Follower,
    result: BrowserStepResult,
    say: Callable[[str], None],
    tick: Callable[[str], None],
    wait: float | None,
    stdin: TextIO | None,
) -> None:
    """Print the page's address and keep it up for a person: what they write, the
    Python peer prints and answers."""
    if wait is None:
        wait = PERSON_WAIT if stdin is not None else SHORT_WAIT
    if wait <= 0:
        say(f"the page: {url} (not kept up: --browser-wait 0)")
        return
    port = url.rstrip("/").rsplit(":", 1)[1]
    say(f"open {url} in a browser: you are one more peer of the same graph")
    say(
        f"  (from another machine: ssh -L {port}:127.0.0.1:{port} <this host>, then the "
        "same address)"
    )
    if stdin is not None:
        say("  what you write, the Python peer prints here and answers; press Enter to go on")
    else:
        say(f"  what you write in the next {wait:.0f} s, the Python peer prints here and answers")
    seen = set(_messages(peer.graph))

    def on_tick() -> None:
        for key, message in sorted(_messages(peer.graph).items()):
            if key in seen:
                continue
            seen.add(key)
            who, text = str(message.get("who", "someone")), str(message["text"])
            if who == "python":  # (its own answer, back from the node)
                continue
            result.from_people.append((who, text))
            tick(f"the Python peer sees: {who}: {_quote(text)}")
            seen.add(_write(peer.graph, "python", f"python read {who}'s message over DTP"))

    result.waited = wait_for_person(wait, stdin, on_tick)
