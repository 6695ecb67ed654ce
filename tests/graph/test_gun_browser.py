"""A real browser on the demo page: headless Chromium (Debian's ``chromium``, installed
by scripts/bootstrap.sh) loads the chat page from a dtp graph node
(``python -m dtp.graph gun``, its own process), whose only Gun peer it is; what the page
writes reaches a Python peer on the far side of a DTP sync, and what that peer writes
appears on the page, live. Screenshots of the page go into the test log (the files'
paths, under build/screenshots/)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import gun_peer
from dtp.graph import Graph
from dtp.graph.values import link_soul
from tests.support.browser import Chromium, Page, need, need_chromium
from tests.support.graph_sync import following
from tests.support.paths import ROOT

SHOTS = ROOT / "build" / "screenshots"
ROOM = "dtp-demo/chat"
#: the page has loaded and gun.js reached its relay peer
CONNECTED = "document.getElementById('status')?.textContent === 'connected'"


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[gun_peer.EndpointProcess]:
    need_chromium()
    need("node and npm", gun_peer.available())
    gun_dir = gun_peer.install()
    with gun_peer.EndpointProcess(
        "--db", str(tmp_path / "relay.db"), "--sync", "127.0.0.1:0", "--gun-dir", str(gun_dir)
    ) as proc:
        yield proc


@pytest.fixture
def python_peer(endpoint: gun_peer.EndpointProcess) -> Iterator[Graph]:
    """A graph in this process, synced live with the endpoint's over DTP."""
    with following(endpoint.info) as graph:
        yield graph


def _messages(graph: Graph) -> dict[str, dict[str, object]]:
    """The chat's messages as a Python peer reads them: field -> the linked node."""
    out: dict[str, dict[str, object]] = {}
    for key, value in (graph.get(ROOM) or {}).items():
        soul = link_soul(value)
        node = graph.get(soul) if soul else None
        if node:
            out[key] = node
    return out


def _wait(what: str, test: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not test():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


def _shot(page: Page, name: str, capsys: pytest.CaptureFixture[str]) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = page.screenshot(SHOTS / f"gun-demo-{name}.png")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 2000  # a page, not a blank
    with capsys.disabled():
        print(f"\n[screenshot] {path}")
    return path


def _visible(page: Page) -> str:
    """The text of the message list as rendered (innerText: what a reader sees)."""
    return str(page.evaluate("document.getElementById('messages').innerText"))


def test_a_browser_and_a_python_peer_chat_through_dtp(
    endpoint: gun_peer.EndpointProcess,
    python_peer: Graph,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    with Chromium() as browser:
        page = browser.new_page()
        page.goto(endpoint.url, ready=CONNECTED)
        assert page.evaluate("document.getElementById('peer').textContent") == endpoint.url + "gun"
        _shot(page, "1-connected", capsys)

        # the page writes: the message lands in the endpoint's graph, crosses DTP sync
        page.evaluate(
            "document.getElementById('who').value = 'ann';"
            "document.getElementById('text').value = 'hello from chromium';"
            "document.getElementById('send').click()"
        )
        page.wait_for("document.body.dataset.messages === '1'")
        _wait(
            "the page's message at the Python peer",
            lambda: any(
                m.get("text") == "hello from chromium" for m in _messages(python_peer).values()
            ),
        )
        (mine,) = _messages(python_peer).values()
        assert mine["who"] == "ann" and isinstance(mine["at"], int | float)

        # the Python peer writes: it crosses DTP sync and reaches the page live
        python_peer.put(
            ROOM,
            {
                "2100-01-01T00:00:00.000Z-python": {
                    "who": "python",
                    "text": "hello from the far side of DTP",
                    "at": time.time() * 1000 + 1,
                }
            },
        )
        page.wait_for("document.body.dataset.messages === '2'")
        text = _visible(page)
        assert "hello from chromium" in text and "hello from the far side of DTP" in text
        assert text.index("hello from chromium") < text.index("far side")  # in time order
        assert page.evaluate("document.getElementById('status').textContent") in (
            "sent",
            "connected",
        )
        _shot(page, "2-both-messages", capsys)

        # a second browser tab, a peer of its own, gets the whole conversation
        other = browser.new_page()
        other.goto(endpoint.url, ready=CONNECTED)
        other.wait_for("document.body.dataset.messages === '2'")
        assert "far side of DTP" in _visible(other)
        _shot(other, "3-second-tab", capsys)

    # both messages are in the endpoint's SQLite file, as a Python peer reads them
    endpoint.close()
    with Graph(tmp_path / "relay.db") as stored:
        texts = sorted(str(m["text"]) for m in _messages(stored).values())
    assert texts == ["hello from chromium", "hello from the far side of DTP"]
