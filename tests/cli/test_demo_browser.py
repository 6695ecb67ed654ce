"""The browser step of ``dtp demo`` (dtp/cli/_demo_browser.py): headless Chromium on the
Gun endpoint's chat page and a Python peer across DTP sync write to the same graph; the
browser's part is checked by what the Python peer receives from the page and by the
screenshot the step saves (build/screenshots/, its path in the test log). A person who
opens the printed address is seen and answered; a terminal's Enter ends the wait, and
with no terminal only time does. Without gun's files or chromium the step says what it
lacks and the demo goes on; an interrupt in the step leaves no browser and no files."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import dtp.cli._demo as demo
from bench import gun_peer, yjs_edges
from dtp.cli import _demo_browser as demo_browser
from dtp.cli._demo_browser import (
    NOTE_END,
    PAGE_NOTE,
    PAGE_TEXT,
    PYTHON_NOTE,
    PYTHON_TEXT,
    BrowserStepResult,
    run_browser_step,
    wait_for_person,
)
from tests.support.browser import Chromium, need, need_chromium
from tests.support.interrupts import dtp_main, left_under, processes_under, run_until
from tests.support.paths import ROOT

SHOTS = ROOT / "build" / "screenshots"
DEMO = dtp_main("demo", "--quick", "--browser-wait", "60")


@pytest.fixture
def browser_ready(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Chromium and gun's files are here (gun installed on first use), and Yjs's for
    the shared note; the gun folder."""
    need_chromium()
    need("node and npm", gun_peer.available())
    gun_dir = gun_peer.install()
    monkeypatch.setenv("DTP_GUN_DIR", str(gun_dir))
    monkeypatch.setenv("DTP_YJS_DIR", str(yjs_edges.install()))
    return gun_dir


def _run(wait: float, screenshots: Path | None = None) -> tuple[BrowserStepResult, list[str]]:
    """The step, with no terminal; what it said (what it checked marked ✓)."""
    lines: list[str] = []
    result = run_browser_step(
        lines.append, lambda text: lines.append("✓ " + text), wait=wait, screenshots=screenshots
    )
    return result, lines


def _closed(url: str) -> bool:
    """Nothing answers at ``url`` any more."""
    try:
        urllib.request.urlopen(url, timeout=2).close()
    except OSError:
        return True
    return False


def test_the_page_and_the_python_peer_see_each_others_messages(
    browser_ready: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.time()
    result, lines = _run(wait=0, screenshots=SHOTS)
    text = "\n".join(lines)
    assert result.skipped is None and result.headless is None, text

    # what the Python peer received from the page, over the Gun endpoint and DTP sync
    assert result.from_page is not None
    assert result.from_page["who"] == "chromium" and result.from_page["text"] == PAGE_TEXT
    assert isinstance(result.from_page["at"], int | float)
    assert abs(float(result.from_page["at"]) / 1000 - started) < 60  # the page's Date.now()
    received = next(line for line in lines if "the Python peer received it over DTP sync" in line)
    assert json.loads(received.split(": ", 1)[1]) == result.from_page
    # ... and what the page lists once the Python peer answered: both, in time order
    assert result.page_shows == [("chromium", PAGE_TEXT), ("python", PYTHON_TEXT)]
    assert result.python_sees == result.page_shows
    assert f'    chromium: "{PAGE_TEXT}"' in lines and f'    python: "{PYTHON_TEXT}"' in lines
    # both are in the node's SQLite file, read back after the node closed
    assert result.stored == sorted([PAGE_TEXT, PYTHON_TEXT])
    assert result.exchanged

    # the shared note: the page (Yjs) and the Python peer (pycrdt) typed into it at once,
    # one keystroke a record, each on its line; both hold one text, every keystroke of
    # each in its place
    assert result.note_skipped is None, text
    assert result.note_page == result.note_python == NOTE_END, (
        result.note_page,
        result.note_python,
    )
    assert f"page: {PAGE_NOTE}\npython: {PYTHON_NOTE}" == NOTE_END
    assert result.note_merged
    assert any(line.startswith("✓ both show the same note") for line in lines)

    # the screenshot: a page, saved in this run, where the step said
    assert result.screenshot == SHOTS / "demo-browser-chat.png"
    data = result.screenshot.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 2000
    assert result.screenshot.stat().st_mtime >= started - 1
    assert f"a screenshot of the page: {result.screenshot}" in lines
    with capsys.disabled():
        print(f"\n[screenshot] {result.screenshot}")

    # the address printed is the page's; not kept up (--browser-wait 0), and now closed
    assert result.url is not None and re.fullmatch(r"http://127\.0\.0\.1:\d+/", result.url)
    assert f"the page: {result.url} (not kept up: --browser-wait 0)" in lines
    assert result.waited == "" and _closed(result.url)


def _person(url: str, name: str, said: str, done: threading.Event, errors: list[str]) -> None:
    """Someone opening the printed address in a browser of their own, writing, and
    reading the Python peer's answer on the page."""
    try:
        with Chromium() as browser:
            page = browser.new_page()
            page.goto(
                f"{url}?name={name}",
                ready="document.getElementById('status')?.textContent === 'connected'",
            )
            page.evaluate(
                f"document.getElementById('text').value = {json.dumps(said)};"
                "document.getElementById('send').click()"
            )
            page.wait_for(
                "document.getElementById('messages').innerText"
                f".includes({json.dumps(f'python read {name}')})"
            )
    except Exception as exc:  # (reported by the test, not lost in a thread)
        errors.append(repr(exc))
    finally:
        done.set()


def test_a_person_on_the_printed_address_is_seen_and_answered_until_enter(
    browser_ready: Path,
) -> None:
    master, slave = pty.openpty()  # a terminal: the step waits for Enter
    terminal = os.fdopen(slave, "r")
    done = threading.Event()
    errors: list[str] = []
    lines: list[str] = []
    started: list[float] = []

    def say(text: str) -> None:
        lines.append(text)
        if text.startswith("open http://"):
            started.append(time.monotonic())
            url = text.split()[1]
            args = (url, "ann", "hi from a person", done, errors)
            threading.Thread(target=_person, args=args, daemon=True).start()
        if "press Enter" in text:
            # Enter once the person has read the answer (not before: the step ends there)
            def enter() -> None:
                done.wait(60)
                os.write(master, b"\n")

            threading.Thread(target=enter, daemon=True).start()

    try:
        result = run_browser_step(say, say, wait=None, stdin=terminal)
    finally:
        terminal.close()
        os.close(master)
    assert errors == []
    assert result.from_people == [("ann", "hi from a person")]
    assert 'the Python peer sees: ann: "hi from a person"' in lines
    assert result.waited == "enter"
    assert time.monotonic() - started[0] < 60  # Enter ended it, not PERSON_WAIT
    assert "python read ann's message over DTP" in result.stored
    assert "hi from a person" in result.stored


def test_with_no_terminal_only_time_ends_the_wait() -> None:
    ticks: list[float] = []
    read, write = os.pipe()
    with os.fdopen(read, "r") as pipe:
        start = time.monotonic()
        assert wait_for_person(0.5, None, lambda: ticks.append(time.monotonic())) == "time"
        took = time.monotonic() - start
        os.close(write)  # (a pipe at its end would have ended a wait on it at once)
        assert wait_for_person(5.0, pipe, lambda: None) == "enter"
    assert 0.45 <= took < 3.0
    assert len(ticks) >= 3  # the Python peer looks for people's messages as it waits


def test_enter_ends_the_wait_at_a_terminal() -> None:
    master, slave = pty.openpty()
    with os.fdopen(slave, "r") as terminal:
        threading.Timer(0.3, os.write, (master, b"\n")).start()
        start = time.monotonic()
        assert wait_for_person(30.0, terminal, lambda: None) == "enter"
        assert time.monotonic() - start < 10
    os.close(master)


def test_a_demo_without_a_terminal_or_in_ci_does_not_wait_for_enter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "r") as keys, os.fdopen(os.dup(slave), "w") as screen:
            monkeypatch.setattr(sys, "stdin", keys)
            monkeypatch.setattr(sys, "stdout", screen)
            monkeypatch.delenv("CI", raising=False)
            assert demo_browser.interactive()
            monkeypatch.setenv("CI", "true")
            assert not demo_browser.interactive()
            monkeypatch.delenv("CI")
            with open(os.devnull) as nothing:
                monkeypatch.setattr(sys, "stdin", nothing)
                assert not demo_browser.interactive()
    finally:
        os.close(master)


def test_without_node_and_npm_the_step_says_so_and_the_demo_goes_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo_browser, "find_gun_dir", lambda: None)
    monkeypatch.setattr(demo_browser.shutil, "which", lambda name: None)
    assert demo.run_demo(quick=True, browser_wait=0) == 0
    out = capsys.readouterr().out
    assert "[7/12] A browser on the graph" in out
    assert "skipped: node and npm are not installed" in out
    assert "apt-get install nodejs npm" in out and "the rest of the demo goes on" in out
    assert "[12/12]" in out and "Summary" in out
    assert "browser: skipped (node, npm and the gun package are needed)" in out
    # the dApp step after it: no chromium and no node either (no program is found), so
    # its page is served for a person and the step says why it makes no calls
    assert "[8/12] A dApp: a wallet-identified page calls a paid JSON-RPC backend" in out
    assert "the calls are skipped: no headless browser" in out or "skipped: the browser" in out
    assert "dapp: skipped (" in out


def test_without_the_gun_package_the_step_says_how_to_fetch_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(demo_browser, "find_gun_dir", lambda: None)
    monkeypatch.setattr(demo_browser.shutil, "which", lambda name: f"/usr/bin/{name}")
    result, lines = _run(wait=0)
    assert result.url is None
    assert result.skipped is not None and "the gun npm package is not installed" in result.skipped
    assert "tools/gun-peer/run.sh --install" in lines[0]


def test_without_chromium_the_page_is_served_for_a_person(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    need("node and npm", gun_peer.available())
    monkeypatch.setenv("DTP_GUN_DIR", str(gun_peer.install()))
    monkeypatch.setattr(demo_browser, "chromium_path", lambda: None)
    pages: list[bytes] = []

    def say(text: str) -> None:
        if text.startswith("open http://"):  # the page is up while the step waits
            url = text.split()[1]
            for path in ("", "gun.js"):
                with urllib.request.urlopen(url + path, timeout=10) as answer:
                    pages.append(answer.read())

    result = run_browser_step(say, say, wait=0.3)
    assert result.headless is not None and "chromium is not installed" in result.headless
    assert result.from_page is None and result.screenshot is None
    assert b"Shared chat" in pages[0] and len(pages[1]) > 10_000  # the page and gun.js
    # the Python peer's message is in the node's graph, for the person to read
    assert result.python_sees == [("python", PYTHON_TEXT)]
    assert result.stored == [PYTHON_TEXT] and result.waited == "time"


def test_a_chromium_that_cannot_start_is_said_and_left(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    need("node and npm", gun_peer.available())
    monkeypatch.setenv("DTP_GUN_DIR", str(gun_peer.install()))
    monkeypatch.setenv("DTP_CHROMIUM", str(tmp_path / "no-such-chromium"))
    monkeypatch.setattr(demo_browser.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    result, lines = _run(wait=0)
    assert result.headless is not None and "chromium could not start here" in result.headless
    assert any("the headless part is skipped" in line for line in lines)
    assert result.stored == [PYTHON_TEXT]
    assert list((tmp_path / "tmp").iterdir()) == []  # no profile left behind


@pytest.mark.parametrize(
    ("signum", "after"),
    [
        # Ctrl-C: while the browser is up, the exchange to come
        (signal.SIGINT, "headless Chromium opened the page"),
        # Ctrl-C, and the terminal closed, while the page is kept up for a person
        (signal.SIGINT, "open http://"),
        (signal.SIGHUP, "open http://"),
    ],
)
def test_an_interrupt_in_the_browser_step_leaves_no_browser_and_no_files(
    browser_ready: Path, tmp_path: Path, signum: int, after: str
) -> None:
    with run_until(DEMO, tmp_path, after) as proc:
        assert list(tmp_path.iterdir()), "the step's files are in TMPDIR"
        if "Chromium" in after:
            assert processes_under(tmp_path), "the browser runs, its profile in TMPDIR"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode != 0
        assert "Interrupted in step 7/12 (A browser on the graph" in err
        assert left_under(tmp_path) == []
        assert list(tmp_path.iterdir()) == []


def test_a_demo_run_under_nohup_goes_on_after_a_hangup(browser_ready: Path, tmp_path: Path) -> None:
    with run_until(DEMO, tmp_path, "open http://", hup="SIG_IGN") as proc:
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert proc.poll() is None  # still keeping the page up
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
        assert list(tmp_path.iterdir()) == []


def test_the_address_shows_through_a_pipe_while_the_page_is_up(browser_ready: Path) -> None:
    """`bash scripts/demo.sh | tee log`: stdout is block-buffered, and the address came
    out only after the wait it was printed for."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONUNBUFFERED", None)  # (as a user's shell has it)
    # (SIGINT is Python's default in the child: a shell that starts the suite in the
    # background has it ignored, and the interrupt below must end the child's wait)
    code = (
        "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from dtp.cli._demo_browser import run_browser_step; "
        "run_browser_step(print, print, wait=30)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    try:
        start = time.monotonic()
        for line in proc.stdout:
            if line.startswith("open http://"):
                break
        took = time.monotonic() - start
        assert proc.poll() is None  # still waiting, the page up
        url = line.split()[1]
        with urllib.request.urlopen(url, timeout=10) as answer:
            assert b"Shared chat" in answer.read()
        assert took < 25
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


def test_without_websockets_the_step_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """An install without websockets (dtp-sui[gun]: the Gun endpoint's and the driver's): the
    step is skipped with the extra to install, not a traceback that ends the demo."""
    for name in list(sys.modules):
        if name == "websockets" or name.startswith(("websockets.", "dtp.graph.gun")):
            monkeypatch.delitem(sys.modules, name)
    for name in ("dtp.cli._demo_browser", "dtp.cli._chromium"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "websockets", None)  # (import websockets: not found)
    lines: list[str] = []
    tour = demo.Tour()
    tour.say = lines.append  # type: ignore[method-assign]
    demo.demo_browser(tour, wait=0)
    assert len(lines) == 1 and lines[0].startswith("skipped: "), lines
    assert "pip install 'dtp-sui[gun]'" in lines[0] and "websockets" in lines[0]
    assert lines[0].endswith("; the rest of the demo goes on")
    assert tour.summary == ["browser: skipped (the 'gun' extra is needed)"]
